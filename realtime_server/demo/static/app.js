// realtime-server demo page: a small client of the Centrifugo client protocol v2 (JSON),
// written for this page: no SDK, no build step, nothing loaded from elsewhere.
//
// It does what the official `centrifuge` SDK does for a signing UI, in the open:
//   - connect with a connection token; the server subscribes us to user:<id> (server-side)
//   - subscribe to document:<id> with a subscription token (connect and subscribe go in one
//     frame, as the SDK sends them)
//   - answer the server's pings ({} -> {}), drop the socket if pings stop coming
//   - refresh both tokens before they expire (refresh / sub_refresh)
//   - reconnect with jittered exponential backoff, except after a terminal close code
//   - on reconnect, recover missed publications with recover/offset/epoch (for the server-side
//     user channel inside connect.subs); if recovery is impossible, reload from history
// Real applications should use the SDK (docs/CLIENTS.md); tokens come from /demo/token, which
// stands in for your backend.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const TOKEN_TTL = params.get('ttl'); // optional token lifetime (s) asked of /demo/token
  const DROP_MS = 1000 * (Number(params.get('drop')) || 5); // "network drop" duration
  const WS_URL = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
    '/connection/websocket';
  const REPLY_TIMEOUT_MS = 5000; // as the SDKs: no reply in 5 s -> reconnect
  const MAX_PING_DELAY_MS = 10000; // as the SDKs: ping interval + 10 s without a frame -> reconnect
  const MAX_EVENTS = 60;
  const MAX_NOTES = 30;

  // Close codes after which reconnecting cannot help (invalid/revoked token, limits, bad
  // request, message too big): 3500-3999 and 4500-4999, plus 1009.
  const isTerminal = (code) =>
    code === 1009 || (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);

  const $ = (id) => document.getElementById(id);
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- state --------------------------------------------------------------------------------

  let config = null; // {document: {id, title, channel}, signers: [{id, name, role}]}
  let user = '';
  let userChannel = '';
  let docChannel = '';

  let ws = null; // the current socket; events of older sockets are ignored
  let nextId = 1; // command ids keep growing across reconnects
  const pending = new Map(); // id -> {resolve, reject, timer}
  const timers = {};
  let attempts = 0;
  let holdUntil = 0; // "network drop": no reconnect before this time
  let pongWanted = false;
  let pingMs = 0;

  let userPos = null; // {offset, epoch} of user:<id>, for recovery in connect.subs
  let docPos = null; // {offset, epoch} of document:<id>, for recovery in subscribe
  const events = new Map(); // offset -> {data, how, offset}
  const notes = new Map(); // offset -> {data, how, offset}
  const viewers = new Map(); // client id -> ClientInfo
  let presenceLog = null; // join/leave seen while a presence request is in flight
  const stats = {connects: 0, refreshes: 0, subRefreshes: 0, pings: 0, recovered: 0};
  // Keys of the items on screen, per list: lists are re-rendered as a whole, and only the
  // items that were not on screen before are marked "fresh" (animated in).
  const shown = {events: new Set(), viewers: new Set(), notes: new Set()};

  function listItem(list, key, className) {
    const item = el('li', className);
    if (!shown[list].has(key)) item.classList.add('fresh');
    return item;
  }

  // --- small helpers -----------------------------------------------------------------------

  function setTimer(name, ms, fn) {
    clearTimer(name);
    timers[name] = setTimeout(() => {
      timers[name] = null;
      fn();
    }, ms);
  }

  function clearTimer(name) {
    if (timers[name]) clearTimeout(timers[name]);
    timers[name] = null;
  }

  function randomId(length) {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
    const bytes = crypto.getRandomValues(new Uint8Array(length));
    return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
  }

  function clock(ms) {
    return new Date(ms || Date.now()).toLocaleTimeString([], {hour12: false});
  }

  // Refresh a little before the token expires (the server allows a grace period too).
  const refreshDelay = (ttl) => Math.max(1, ttl - 2) * 1000;

  async function fetchToken(channel) {
    const query = new URLSearchParams({user});
    if (channel) query.set('channel', channel);
    if (TOKEN_TTL) query.set('ttl', TOKEN_TTL);
    const response = await fetch('/demo/token?' + query, {cache: 'no-store'});
    if (!response.ok) throw new Error('token endpoint answered ' + response.status);
    return (await response.json()).token;
  }

  // --- connection state ----------------------------------------------------------------------

  function setState(state, detail) {
    const badge = $('conn-state');
    badge.dataset.state = state;
    badge.textContent = state;
    $('conn-detail').textContent = detail || '';
    document.body.dataset.state = state;
    renderViewers();
  }

  function currentState() {
    return $('conn-state').dataset.state;
  }

  // --- commands and replies ------------------------------------------------------------------

  // Send commands in one frame; returns one promise per command, resolved with its reply
  // ({id, <method>: result} or {id, error}).
  function send(commands) {
    const sock = ws;
    if (!sock || sock.readyState !== WebSocket.OPEN) {
      return commands.map(() => Promise.reject(new Error('not connected')));
    }
    const lines = [];
    const promises = commands.map((command) => {
      const id = nextId++;
      lines.push(JSON.stringify({id, ...command}));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error('reply timeout'));
          if (sock === ws) dropSocket('no reply in time');
        }, REPLY_TIMEOUT_MS);
        pending.set(id, {resolve, reject, timer});
      });
    });
    sock.send(lines.join('\n'));
    return promises;
  }

  const call = (method, body) => send([{[method]: body}])[0];
  const ignore = () => {};

  function onFrame(text) {
    armPingWatchdog(); // any frame shows the connection is alive (as the JS SDK does)
    for (const line of text.split('\n')) {
      if (!line) continue;
      let message;
      try {
        message = JSON.parse(line);
      } catch (e) {
        dropSocket('unreadable frame');
        return;
      }
      if (message.id) {
        const waiter = pending.get(message.id);
        if (waiter) {
          pending.delete(message.id);
          clearTimeout(waiter.timer);
          waiter.resolve(message);
        }
      } else if (message.push) {
        onPush(message.push);
      } else {
        // No id and no push: a ping. Answer with an empty object when the server asked.
        stats.pings++;
        if (pongWanted && ws) ws.send('{}');
      }
    }
    renderStats();
  }

  function armPingWatchdog() {
    if (pingMs > 0) setTimer('ping', pingMs + MAX_PING_DELAY_MS, () => dropSocket('no ping'));
  }

  // --- connecting -----------------------------------------------------------------------------

  async function connect() {
    clearTimer('reconnect');
    if (ws) return;
    if (Date.now() < holdUntil) {
      scheduleReconnect('network drop simulated');
      return;
    }
    setState('connecting', attempts ? 'attempt ' + (attempts + 1) : '');
    let token;
    let subToken;
    try {
      [token, subToken] = await Promise.all([fetchToken(), fetchToken(docChannel)]);
    } catch (e) {
      scheduleReconnect('token request failed');
      return;
    }
    if (ws || timers.reconnect) return; // another attempt started, or a drop, meanwhile
    const sock = new WebSocket(WS_URL);
    ws = sock;
    setTimer('open', REPLY_TIMEOUT_MS, () => dropSocket('connection timeout'));
    sock.onopen = () => {
      if (sock !== ws) return;
      clearTimer('open');
      const connectBody = {token, name: 'demo-page', version: '1'};
      if (userPos) {
        // Recover the server-side user channel: tell the server where we were.
        connectBody.subs = {
          [userChannel]: {recover: true, offset: userPos.offset, epoch: userPos.epoch},
        };
      }
      const subscribeBody = {channel: docChannel, token: subToken};
      if (docPos) Object.assign(subscribeBody, {recover: true, ...docPos});
      const [connected, subscribed] = send([{connect: connectBody}, {subscribe: subscribeBody}]);
      connected.then(onConnectReply, ignore);
      subscribed.then(onSubscribeReply, ignore);
    };
    sock.onmessage = (event) => {
      if (sock === ws) onFrame(String(event.data));
    };
    sock.onclose = (event) => {
      if (sock === ws) onClose(event.code, event.reason);
    };
  }

  function onConnectReply(message) {
    if (message.error) {
      const {code, message: text, temporary} = message.error;
      // 109: token expired -> a new token on the next attempt; temporary -> try again later.
      if (code === 109 || temporary) dropSocket('connect: ' + text);
      else halt('connect refused: ' + code + ' ' + text);
      return;
    }
    const result = message.connect;
    attempts = 0;
    stats.connects++;
    pongWanted = Boolean(result.pong);
    pingMs = (result.ping || 0) * 1000;
    armPingWatchdog();
    if (result.expires) setTimer('refresh', refreshDelay(result.ttl), refreshConnection);
    setState('connected', 'client ' + String(result.client).slice(0, 8));
    const sub = result.subs && result.subs[userChannel];
    if (sub) onUserChannel(sub);
  }

  function onClose(code, reason) {
    forgetSocket();
    if (isTerminal(code)) {
      halt('closed by the server: ' + code + (reason ? ' ' + reason : ''));
      return;
    }
    scheduleReconnect(code && code !== 1006 ? 'closed ' + code + (reason ? ' ' + reason : '')
      : 'connection lost');
  }

  // Close the socket ourselves and come back later (timeouts, simulated drop).
  function dropSocket(why) {
    const sock = ws;
    forgetSocket();
    if (sock) {
      try {
        sock.close(1000);
      } catch (e) {
        // already closing
      }
    }
    scheduleReconnect(why);
  }

  function forgetSocket() {
    ws = null;
    for (const name of ['open', 'ping', 'refresh', 'subRefresh', 'resubscribe']) clearTimer(name);
    for (const waiter of pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error('disconnected'));
    }
    pending.clear();
    presenceLog = null;
  }

  function scheduleReconnect(why) {
    if (timers.reconnect) return;
    // Full jitter, 0.5 s to 20 s, as the SDKs do.
    const backoff = Math.max(500, Math.random() * Math.min(20000, 1000 * 2 ** attempts));
    attempts++;
    const wait = Math.max(backoff, holdUntil - Date.now());
    const seconds = (wait / 1000).toFixed(1);
    if (Date.now() < holdUntil) setState('disconnected', why + '; reconnecting in ' + seconds + ' s');
    else setState('connecting', why + '; retrying in ' + seconds + ' s');
    setTimer('reconnect', wait, connect);
  }

  function halt(why) {
    forgetSocket();
    clearTimer('reconnect');
    setState('disconnected', why + ' (reload the page to try again)');
  }

  // --- tokens --------------------------------------------------------------------------------

  async function refreshConnection() {
    try {
      const reply = await call('refresh', {token: await fetchToken()});
      if (reply.error) {
        if (reply.error.temporary) setTimer('refresh', 5000, refreshConnection);
        else dropSocket('refresh refused');
        return;
      }
      stats.refreshes++;
      if (reply.refresh.expires) {
        setTimer('refresh', refreshDelay(reply.refresh.ttl), refreshConnection);
      }
      renderStats();
    } catch (e) {
      if (ws) setTimer('refresh', 5000, refreshConnection);
    }
  }

  async function refreshSubscription() {
    try {
      const token = await fetchToken(docChannel);
      const reply = await call('sub_refresh', {channel: docChannel, token});
      if (reply.error) {
        setTimer('subRefresh', 5000, refreshSubscription);
        return;
      }
      stats.subRefreshes++;
      if (reply.sub_refresh.expires) {
        setTimer('subRefresh', refreshDelay(reply.sub_refresh.ttl), refreshSubscription);
      }
      renderStats();
    } catch (e) {
      if (ws) setTimer('subRefresh', 5000, refreshSubscription);
    }
  }

  // --- the document channel ------------------------------------------------------------------

  function onSubscribeReply(message) {
    if (message.error) {
      const {code, message: text, temporary} = message.error;
      if (code === 109 || temporary) {
        setTimer('resubscribe', 1000 + Math.random() * 2000, resubscribe);
      } else {
        showNote('Subscription refused: ' + code + ' ' + text);
      }
      return;
    }
    const result = message.subscribe;
    if (result.expires) setTimer('subRefresh', refreshDelay(result.ttl), refreshSubscription);
    docPos = {offset: result.offset, epoch: result.epoch};
    if (result.was_recovering && result.recovered) {
      const missed = result.publications || [];
      for (const pub of missed) addEvent(pub, 'recovered');
      stats.recovered += missed.length;
      showNote(missed.length
        ? 'Reconnected: recovered ' + missed.length + ' missed event' + (missed.length > 1 ? 's' : '')
        : 'Reconnected: nothing was missed');
    } else {
      if (result.was_recovering) {
        // The server could not fill the gap (history expired or a new epoch): reload.
        events.clear();
        showNote('Some events could not be recovered: the timeline was reloaded from history');
      }
      loadHistory();
    }
    requestPresence();
    renderDocument();
  }

  async function resubscribe() {
    if (!ws) return; // the next connect subscribes anyway
    try {
      const body = {channel: docChannel, token: await fetchToken(docChannel)};
      if (docPos) Object.assign(body, {recover: true, ...docPos});
      onSubscribeReply(await call('subscribe', body));
    } catch (e) {
      if (ws) setTimer('resubscribe', 3000, resubscribe);
    }
  }

  function loadHistory() {
    call('history', {channel: docChannel, limit: 40, reverse: true}).then((reply) => {
      if (reply.error) return;
      for (const pub of reply.history.publications || []) addEvent(pub, 'history');
      renderDocument();
    }, ignore);
  }

  function addEvent(pub, how) {
    if (!pub.offset || events.has(pub.offset)) return;
    events.set(pub.offset, {offset: pub.offset, data: pub.data || {}, how});
    if (how !== 'history' && docPos && pub.offset > docPos.offset) docPos.offset = pub.offset;
    while (events.size > MAX_EVENTS) events.delete(Math.min(...events.keys()));
  }

  function requestPresence() {
    presenceLog = [];
    call('presence', {channel: docChannel}).then((reply) => {
      const seen = presenceLog || [];
      presenceLog = null;
      if (reply.error) return;
      viewers.clear();
      for (const [client, info] of Object.entries(reply.presence.presence)) viewers.set(client, info);
      // Joins and leaves that crossed the request on the wire still apply, in order.
      for (const [kind, info] of seen) applyViewer(kind, info);
      renderViewers();
    }, ignore);
  }

  function applyViewer(kind, info) {
    if (kind === 'join') viewers.set(info.client, info);
    else viewers.delete(info.client);
  }

  function onViewer(kind, info) {
    if (presenceLog) presenceLog.push([kind, info]);
    applyViewer(kind, info);
    renderViewers();
  }

  // --- the user channel (server-side subscription) -------------------------------------------

  function onUserChannel(result) {
    const first = userPos === null;
    userPos = {offset: result.offset, epoch: result.epoch};
    if (result.was_recovering && !result.recovered) {
      notes.clear();
      loadNotes();
    }
    for (const pub of result.publications || []) addNote(pub, 'recovered');
    if (first) loadNotes();
    renderNotes();
  }

  function loadNotes() {
    call('history', {channel: userChannel, limit: 10, reverse: true}).then((reply) => {
      if (reply.error) return;
      for (const pub of reply.history.publications || []) addNote(pub, 'history');
      renderNotes();
    }, ignore);
  }

  function addNote(pub, how) {
    if (!pub.offset || notes.has(pub.offset)) return;
    notes.set(pub.offset, {offset: pub.offset, data: pub.data || {}, how});
    if (how !== 'history' && userPos && pub.offset > userPos.offset) userPos.offset = pub.offset;
    while (notes.size > MAX_NOTES) notes.delete(Math.min(...notes.keys()));
  }

  // --- pushes --------------------------------------------------------------------------------

  function onPush(push) {
    const channel = push.channel;
    if (push.pub) {
      if (channel === docChannel) {
        addEvent(push.pub, 'live');
        renderDocument();
      } else if (channel === userChannel) {
        addNote(push.pub, 'live');
        renderNotes();
      }
    } else if (push.join && channel === docChannel) {
      onViewer('join', push.join.info);
    } else if (push.leave && channel === docChannel) {
      onViewer('leave', push.leave.info);
    } else if (push.unsubscribe && channel === docChannel) {
      clearTimer('subRefresh');
      // 2500 and up: resubscribe (and recover); below: the server ended it for good.
      if (push.unsubscribe.code >= 2500) resubscribe();
      else showNote('Unsubscribed by the server: ' + push.unsubscribe.reason);
    } else if (push.subscribe && channel === userChannel) {
      onUserChannel(push.subscribe);
    }
  }

  // --- rendering -------------------------------------------------------------------------------

  const STATUS_TEXT = {
    pending: 'waiting', viewed: 'viewed', signed: 'signed', declined: 'declined',
  };

  function showNote(text) {
    const note = $('timeline-note');
    note.textContent = clock() + ' · ' + text;
    note.hidden = false;
  }

  function renderDocument() {
    const sorted = [...events.values()].sort((a, b) => b.offset - a.offset);
    const list = $('timeline');
    list.replaceChildren(...sorted.map((entry) => {
      const {data} = entry;
      const item = listItem('events', entry.offset, 'event type-' + (data.type || 'other'));
      item.dataset.offset = String(entry.offset);
      item.dataset.type = data.type || '';
      item.dataset.how = entry.how;
      item.append(el('span', 'dot'), el('time', 'when', clock(data.at)));
      item.append(el('span', 'text', data.text || JSON.stringify(data)));
      const tags = el('span', 'tags');
      if (data.round) tags.append(el('span', 'tag', 'round ' + data.round));
      tags.append(el('span', 'tag offset', '#' + entry.offset));
      if (entry.how === 'recovered') tags.append(el('span', 'tag recovered', 'recovered'));
      item.append(tags);
      return item;
    }));
    shown.events = new Set(events.keys());

    // The current round: each signer's status, and the document's.
    const round = Math.max(0, ...sorted.map((e) => e.data.round || 0));
    const statuses = new Map(config.signers.map((s) => [s.id, 'pending']));
    let docStatus = round ? 'sent' : 'pending';
    for (const entry of sorted.slice().reverse()) {
      const {data} = entry;
      if (data.round !== round) continue;
      if (data.signer && statuses.has(data.signer.id)) {
        const previous = statuses.get(data.signer.id);
        if (!(data.type === 'viewed' && previous !== 'pending')) statuses.set(data.signer.id, data.type);
      }
      if (data.type === 'completed' || data.type === 'declined') docStatus = data.type;
    }
    const pill = $('doc-status');
    pill.dataset.status = docStatus;
    pill.textContent = {pending: 'waiting', sent: 'out for signature', completed: 'completed',
      declined: 'declined'}[docStatus];
    $('round').textContent = round ? 'Round ' + round + ' of the simulated signing flow' : '';
    const rows = config.signers.map((signer) => {
      const status = statuses.get(signer.id);
      const row = el('tr');
      row.dataset.signer = signer.id;
      row.dataset.status = status;
      const chip = el('span', 'chip status-' + status, STATUS_TEXT[status] || status);
      const viewing = [...viewers.values()].some((info) => info.user === signer.id);
      const eye = el('span', 'viewing' + (viewing ? ' on' : ''), viewing ? '● viewing' : '–');
      row.append(el('td', 'name', signer.name), el('td', 'muted', signer.role));
      const statusCell = el('td');
      statusCell.append(chip);
      const eyeCell = el('td');
      eyeCell.append(eye);
      row.append(statusCell, eyeCell);
      return row;
    });
    $('signers').replaceChildren(...rows);
    renderStats();
  }

  function renderViewers() {
    const list = $('viewers');
    if (!list) return;
    const connected = currentState() === 'connected';
    list.classList.toggle('stale', !connected);
    const items = [...viewers.entries()].map(([client, info]) => {
      const conn = info.conn_info || {};
      const name = conn.name || info.user;
      const me = info.user === user;
      const item = listItem('viewers', client, me ? 'me' : '');
      item.dataset.user = info.user;
      item.dataset.client = client;
      const words = name.match(/[A-Za-z]+/g) || ['?'];
      const initials = me ? 'you' : words.slice(0, 2).map((w) => w[0]).join('').toUpperCase();
      item.append(el('span', 'avatar', initials));
      const who = el('span', 'who');
      who.append(el('strong', '', name + (me ? ' (you)' : '')));
      who.append(el('span', 'muted small', conn.role || ''));
      item.append(who);
      return item;
    });
    list.replaceChildren(...items);
    shown.viewers = new Set(viewers.keys());
    $('viewer-count').textContent = String(viewers.size);
    if (config) {
      for (const row of $('signers').children) {
        const viewing = [...viewers.values()].some((info) => info.user === row.dataset.signer);
        const eye = row.querySelector('.viewing');
        if (eye) {
          eye.className = 'viewing' + (viewing ? ' on' : '');
          eye.textContent = viewing ? '● viewing' : '–';
        }
      }
    }
  }

  function renderNotes() {
    const sorted = [...notes.values()].sort((a, b) => b.offset - a.offset);
    $('notifications').replaceChildren(...sorted.map((entry) => {
      const item = listItem('notes', entry.offset, 'notice status-' + (entry.data.status || 'other'));
      item.dataset.offset = String(entry.offset);
      item.dataset.how = entry.how;
      item.append(el('span', 'text', entry.data.text || JSON.stringify(entry.data)));
      const meta = el('span', 'meta', clock(entry.data.at));
      if (entry.how === 'recovered') meta.append(' ', el('span', 'tag recovered', 'recovered'));
      item.append(meta);
      return item;
    }));
    shown.notes = new Set(notes.keys());
    const badge = $('note-count');
    badge.dataset.count = String(notes.size);
    badge.textContent = String(notes.size);
  }

  function renderStats() {
    const line = $('stats');
    for (const [key, value] of Object.entries(stats)) line.dataset[key] = String(value);
    line.textContent = [
      'connects ' + stats.connects,
      'pings answered ' + stats.pings,
      'token refreshes ' + stats.refreshes,
      'subscription refreshes ' + stats.subRefreshes,
      'recovered ' + stats.recovered,
      'document offset ' + (docPos ? docPos.offset : '–'),
    ].join(' · ');
  }

  // --- start ---------------------------------------------------------------------------------

  function loadUser() {
    const pattern = /^viewer-[a-z0-9]{4,16}$/;
    let id = '';
    try {
      id = localStorage.getItem('realtime-demo-user') || '';
    } catch (e) {
      // storage unavailable: a new viewer per page load
    }
    if (!pattern.test(id)) {
      id = 'viewer-' + randomId(8);
      try {
        localStorage.setItem('realtime-demo-user', id);
      } catch (e) {
        // ignore
      }
    }
    return id;
  }

  async function start() {
    user = loadUser();
    userChannel = 'user:' + user;
    $('user-id').textContent = user;
    $('user-channel').textContent = userChannel;
    try {
      config = await (await fetch('/demo/config.json', {cache: 'no-store'})).json();
    } catch (e) {
      setState('connecting', 'server unreachable; retrying');
      setTimeout(start, 2000);
      return;
    }
    docChannel = config.document.channel;
    $('doc-title').textContent = config.document.title;
    $('doc-channel').textContent = docChannel;
    for (const code of document.querySelectorAll('.viewers code')) code.textContent = docChannel;
    renderDocument();
    $('drop').addEventListener('click', () => {
      holdUntil = Date.now() + DROP_MS;
      if (ws) dropSocket('network drop simulated');
      else if (!timers.reconnect && currentState() === 'connecting') {
        scheduleReconnect('network drop simulated'); // a token request is in flight
      }
    });
    window.addEventListener('online', () => {
      if (timers.reconnect && Date.now() >= holdUntil) connect();
    });
    connect();
  }

  start();
})();

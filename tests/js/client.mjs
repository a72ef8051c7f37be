// A centrifuge-js client remote-controlled over stdio, for tests/test_sdk_js.py.
//
// Usage: node client.mjs '<config JSON>'   (run with cwd tests/js so that the modules
// resolve from tests/js/node_modules)
//
// Config: {url, token, getToken: bool, gateConnect: bool, name, minReconnectDelay,
//          maxReconnectDelay, maxServerPingDelay, deadlineMs}
//
// stdout: one JSON object per line, each with an "event" key:
//   {"event":"ready"}                                  the script is listening for commands
//   client-level events (scope "client"): connecting, connected, disconnected, error,
//     and for server-side subscriptions subscribed, subscribing, unsubscribed,
//     publication, join, leave
//   subscription events (scope "sub"): subscribing, subscribed, unsubscribed, publication,
//     join, leave, error
//   {"event":"request","id":N,"kind":"connection_token"|"subscription_token"|"connect_data",...}
//     the driver answers with {"cmd":"reply","id":N,"value":...} (or "error": "...")
//   {"event":"result","cmd":...,"ref":...,...} / {"event":"command_error",...} for commands
//   {"event":"fatal",...} on an unexpected exception; {"event":"deadline"} when the hard
//   deadline passes (exit code 2); {"event":"exit"} just before a normal exit (code 0).
//
// stdin: one JSON command per line:
//   {"cmd":"connect"} {"cmd":"disconnect"}
//   {"cmd":"subscribe","channel":C,"token":T?,"getToken":bool?,"recoverable":bool?,
//    "joinLeave":bool?}
//   {"cmd":"unsubscribe","channel":C}
//   {"cmd":"presence","channel":C,"ref":R?}
//   {"cmd":"state","ref":R?}
//   {"cmd":"reply","id":N,"value":V} / {"cmd":"reply","id":N,"error":"..."}
//   {"cmd":"exit"}   (also on end of stdin): disconnect and exit 0
import { createInterface } from 'node:readline';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const config = JSON.parse(process.argv[2] || '{}');
const started = Date.now();

function emit(event, fields = {}) {
  // stdout is a pipe: writes are synchronous on Linux, so nothing is lost at exit.
  process.stdout.write(JSON.stringify({ event, t: Date.now() - started, ...fields }) + '\n');
}

function finish(code) {
  if (client !== null && client.state !== 'disconnected') {
    client.disconnect();
  }
  emit(code === 0 ? 'exit' : 'deadline');
  process.exit(code);
}

process.on('uncaughtException', (e) => {
  emit('fatal', { message: String(e && e.stack ? e.stack : e) });
  process.exit(3);
});
process.on('unhandledRejection', (e) => {
  emit('fatal', { message: String(e && e.stack ? e.stack : e) });
  process.exit(3);
});

// The process ends by itself whatever happens to the driver.
const deadline = setTimeout(() => finish(2), config.deadlineMs || 20000);

// --- requests answered by the driver ---------------------------------------------------

let nextRequest = 1;
const pending = new Map();

function request(kind, fields = {}) {
  const id = nextRequest++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    emit('request', { id, kind, ...fields });
  });
}

function answer(cmd) {
  const waiter = pending.get(cmd.id);
  if (waiter === undefined) {
    return;
  }
  pending.delete(cmd.id);
  if (cmd.error !== undefined) {
    waiter.reject(new Error(cmd.error));
  } else {
    waiter.resolve(cmd.value);
  }
}

// --- the client ------------------------------------------------------------------------

function info(i) {
  if (!i) {
    return null;
  }
  return { user: i.user, client: i.client, connInfo: i.connInfo ?? null, chanInfo: i.chanInfo ?? null };
}

function pub(ctx) {
  return {
    channel: ctx.channel,
    data: ctx.data,
    offset: ctx.offset ?? 0,
    info: info(ctx.info),
    tags: ctx.tags ?? null,
  };
}

function subscribed(ctx) {
  return {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    streamPosition: ctx.streamPosition ?? null,
  };
}

const options = {
  websocket: WebSocket,
  token: config.token || '',
  name: config.name || 'js-e2e',
  minReconnectDelay: config.minReconnectDelay ?? 100,
  maxReconnectDelay: config.maxReconnectDelay ?? 1000,
};
if (config.maxServerPingDelay !== undefined) {
  options.maxServerPingDelay = config.maxServerPingDelay;
}
if (config.getToken) {
  options.getToken = () => request('connection_token');
}
if (config.gateConnect) {
  // Called before every connection attempt: the driver decides when the client may
  // (re)connect, which makes "publish while the client is away" deterministic.
  options.getData = () => request('connect_data');
}

const client = new Centrifuge(config.url, options);
const C = { scope: 'client' };
client.on('connecting', (ctx) => emit('connecting', { ...C, code: ctx.code, reason: ctx.reason }));
client.on('connected', (ctx) => emit('connected', { ...C, client: ctx.client, transport: ctx.transport }));
client.on('disconnected', (ctx) => emit('disconnected', { ...C, code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => emit('error', {
  ...C, type: ctx.type, code: ctx.error?.code ?? null, message: ctx.error?.message ?? '',
}));
client.on('subscribed', (ctx) => emit('subscribed', { ...C, ...subscribed(ctx) }));
client.on('subscribing', (ctx) => emit('subscribing', { ...C, channel: ctx.channel }));
client.on('unsubscribed', (ctx) => emit('unsubscribed', { ...C, channel: ctx.channel }));
client.on('publication', (ctx) => emit('publication', { ...C, ...pub(ctx) }));
client.on('join', (ctx) => emit('join', { ...C, channel: ctx.channel, info: info(ctx.info) }));
client.on('leave', (ctx) => emit('leave', { ...C, channel: ctx.channel, info: info(ctx.info) }));

function subscribe(cmd) {
  let sub = client.getSubscription(cmd.channel);
  if (sub === null) {
    const subOptions = {};
    if (cmd.token) {
      subOptions.token = cmd.token;
    }
    if (cmd.getToken) {
      subOptions.getToken = (ctx) => request('subscription_token', { channel: ctx.channel });
    }
    if (cmd.recoverable) {
      subOptions.recoverable = true;
    }
    if (cmd.joinLeave) {
      subOptions.joinLeave = true;
    }
    sub = client.newSubscription(cmd.channel, subOptions);
    const S = { scope: 'sub', channel: cmd.channel };
    sub.on('subscribing', (ctx) => emit('subscribing', { ...S, code: ctx.code, reason: ctx.reason }));
    sub.on('subscribed', (ctx) => emit('subscribed', { ...S, ...subscribed(ctx) }));
    sub.on('unsubscribed', (ctx) => emit('unsubscribed', { ...S, code: ctx.code, reason: ctx.reason }));
    sub.on('publication', (ctx) => emit('publication', { ...S, ...pub(ctx) }));
    sub.on('join', (ctx) => emit('join', { ...S, info: info(ctx.info) }));
    sub.on('leave', (ctx) => emit('leave', { ...S, info: info(ctx.info) }));
    sub.on('error', (ctx) => emit('error', {
      ...S, type: ctx.type, code: ctx.error?.code ?? null, message: ctx.error?.message ?? '',
    }));
  }
  sub.subscribe();
}

async function presence(cmd) {
  const sub = client.getSubscription(cmd.channel);
  try {
    const result = sub !== null ? await sub.presence() : await client.presence(cmd.channel);
    const clients = {};
    for (const [id, i] of Object.entries(result.clients)) {
      clients[id] = info(i);
    }
    emit('result', { cmd: 'presence', ref: cmd.ref ?? null, channel: cmd.channel, clients });
  } catch (e) {
    emit('command_error', {
      cmd: 'presence', ref: cmd.ref ?? null, channel: cmd.channel,
      code: e?.code ?? null, message: e?.message ?? String(e),
    });
  }
}

function state(cmd) {
  const subs = {};
  for (const [channel, sub] of Object.entries(client.subscriptions())) {
    subs[channel] = sub.state;
  }
  emit('result', { cmd: 'state', ref: cmd.ref ?? null, state: client.state, subs });
}

function handle(cmd) {
  switch (cmd.cmd) {
    case 'connect': client.connect(); break;
    case 'disconnect': client.disconnect(); break;
    case 'subscribe': subscribe(cmd); break;
    case 'unsubscribe': client.getSubscription(cmd.channel)?.unsubscribe(); break;
    case 'presence': presence(cmd); break;
    case 'state': state(cmd); break;
    case 'reply': answer(cmd); break;
    case 'exit': clearTimeout(deadline); finish(0); break;
    default: emit('command_error', { cmd: cmd.cmd, message: 'unknown command' });
  }
}

const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line.trim() !== '') {
    handle(JSON.parse(line));
  }
});
input.on('close', () => {
  clearTimeout(deadline);
  finish(0);
});
emit('ready');

// Scenario: the demo page of `realtime-server serve --demo` in headless Chromium.
//
// Config: {url, screenshot, ...common fields}. The page is opened at `url` (the test passes
// ?ttl=… so that token refreshes happen within the test, and ?drop=… for the length of the
// simulated network drop). Checks, each awaited on the page's DOM (no fixed sleeps):
// connected; the timeline fills with live events; a signer shows as signed; presence lists
// simulated signers (join) and drops them again (leave); a notification arrives on the
// user channel; pings are answered and both tokens refreshed; after a simulated network drop
// the page reconnects and recovers the missed events, with no gap in the offsets. Then a
// full-page screenshot. The result reports what was seen; tests/test_browser.py asserts it.
import { config, emit, run } from './common.mjs';

const STEP_TIMEOUT = { timeout: 15000 };

// Installed before any page script: records every client ever listed under "Viewing now"
// and which of them disappeared again (presence join and leave, as rendered).
function watchPresence() {
  const seen = new Map(); // client -> user
  const gone = new Set();
  window.__presence = { seen, gone };
  new MutationObserver(() => {
    const list = document.getElementById('viewers');
    if (!list) return;
    const now = new Set();
    for (const item of list.querySelectorAll('li[data-client]')) {
      now.add(item.dataset.client);
      seen.set(item.dataset.client, item.dataset.user);
    }
    for (const client of seen.keys()) if (!now.has(client)) gone.add(client);
  }).observe(document, { subtree: true, childList: true });
}

function offsets(page, selector) {
  return page.$$eval(selector, (items) => items.map((item) => Number(item.dataset.offset)));
}

function stat(page, name) {
  return page.$eval('#stats', (line, key) => Number(line.dataset[key] || 0), name);
}

run(async (page) => {
  const origin = new URL(config.url).origin;
  const foreign = [];
  const sockets = [];
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(origin + '/') && !url.startsWith('data:')) foreign.push(url);
  });
  page.on('websocket', (socket) => sockets.push(socket.url()));
  await page.addInitScript(watchPresence);

  await page.goto(config.url, { waitUntil: 'load' });
  await page.waitForSelector('#conn-state[data-state="connected"]', STEP_TIMEOUT);
  emit('step', { name: 'connected' });

  await page.waitForFunction(() => document.querySelectorAll('#timeline li').length >= 3, null, STEP_TIMEOUT);
  emit('step', { name: 'timeline' });
  await page.waitForSelector('#signers tr[data-status="signed"]', STEP_TIMEOUT);
  emit('step', { name: 'signed' });

  // Presence: our own connection, simulated signers joining and leaving.
  await page.waitForSelector('#viewers li.me', STEP_TIMEOUT);
  await page.waitForFunction(() => {
    const { seen, gone } = window.__presence;
    const signers = [...seen].filter(([, user]) => user.startsWith('signer-'));
    return signers.length >= 2 && signers.some(([client]) => gone.has(client));
  }, null, STEP_TIMEOUT);
  const presence = await page.evaluate(() => ({
    seen: [...window.__presence.seen.values()],
    gone: [...window.__presence.gone].map((client) => window.__presence.seen.get(client)),
  }));
  emit('step', { name: 'presence', ...presence });

  await page.waitForFunction(() => Number(document.getElementById('note-count').dataset.count) >= 1, null, STEP_TIMEOUT);
  emit('step', { name: 'notification' });
  await page.waitForFunction(() => {
    const { pings, refreshes, subRefreshes } = document.getElementById('stats').dataset;
    return Number(pings) >= 1 && Number(refreshes) >= 1 && Number(subRefreshes) >= 1;
  }, null, STEP_TIMEOUT);
  emit('step', { name: 'pings-and-refreshes' });

  // A network drop: events published meanwhile come back through recovery.
  const before = Math.max(...(await offsets(page, '#timeline li')));
  await page.click('#drop');
  await page.waitForSelector('#conn-state[data-state="disconnected"]', STEP_TIMEOUT);
  emit('step', { name: 'dropped', lastOffset: before });
  await page.waitForSelector('#conn-state[data-state="connected"]', STEP_TIMEOUT);
  await page.waitForSelector('#timeline li[data-how="recovered"]', STEP_TIMEOUT);
  const recovered = await offsets(page, '#timeline li[data-how="recovered"]');
  emit('step', { name: 'recovered', offsets: recovered });
  // Live again: a publication newer than everything recovered.
  await page.waitForFunction((last) => [...document.querySelectorAll('#timeline li[data-how="live"]')]
    .some((item) => Number(item.dataset.offset) > last), Math.max(...recovered), STEP_TIMEOUT);

  await page.screenshot({ path: config.screenshot, fullPage: true, animations: 'disabled' });
  return {
    state: await page.$eval('#conn-state', (badge) => badge.dataset.state),
    timeline: await offsets(page, '#timeline li'),
    recovered,
    lastOffsetBeforeDrop: before,
    notes: await offsets(page, '#notifications li'),
    recoveredNotes: await offsets(page, '#notifications li[data-how="recovered"]'),
    docStatus: await page.$eval('#doc-status', (pill) => pill.dataset.status),
    connects: await stat(page, 'connects'),
    pings: await stat(page, 'pings'),
    refreshes: await stat(page, 'refreshes'),
    subRefreshes: await stat(page, 'subRefreshes'),
    presence,
    foreign,
    sockets,
    note: await page.$eval('#timeline-note', (note) => note.textContent),
  };
});

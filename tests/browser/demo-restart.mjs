// Scenario: the demo page across a server restart (tests/test_browser.py restarts it).
//
// Config: {url, ...common fields}. Emits "ready" once the page is live; the driver stops the
// server and sends {"cmd":"stopped"}; the page must leave "connected" ("lost"); the driver
// starts a new server on the same port and sends {"cmd":"started"}; the page must reconnect
// by itself. The new server's history is a new stream (new epoch): the page cannot recover
// and must say so, reload the timeline from the new history and go on live.
import { command, config, emit, run } from './common.mjs';

const STEP_TIMEOUT = { timeout: 20000 };

run(async (page) => {
  await page.goto(config.url, { waitUntil: 'load' });
  await page.waitForSelector('#conn-state[data-state="connected"]', STEP_TIMEOUT);
  await page.waitForFunction(() => document.querySelectorAll('#timeline li').length >= 3, null, STEP_TIMEOUT);
  const client = await page.$eval('#conn-detail', (detail) => detail.textContent);
  emit('ready', { client });

  await command('stopped');
  await page.waitForSelector('#conn-state:not([data-state="connected"])', STEP_TIMEOUT);
  emit('lost', { state: await page.$eval('#conn-state', (badge) => badge.dataset.state) });

  await command('started');
  await page.waitForSelector('#conn-state[data-state="connected"]', STEP_TIMEOUT);
  await page.waitForFunction(
    () => /could not be recovered/.test(document.getElementById('timeline-note').textContent),
    null, STEP_TIMEOUT);
  // Live again on the new stream: its offsets start over.
  await page.waitForFunction(() => document.querySelectorAll('#timeline li[data-how="live"]').length >= 1, null, STEP_TIMEOUT);
  return {
    note: await page.$eval('#timeline-note', (note) => note.textContent),
    timeline: await page.$$eval('#timeline li', (items) => items.map((item) => Number(item.dataset.offset))),
    connects: await page.$eval('#stats', (line) => Number(line.dataset.connects)),
  };
});

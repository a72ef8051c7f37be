// Scenario: a page loading the official `centrifuge` SDK's browser build, in headless Chromium.
//
// Config: {url, ...common fields}. The page (tests/browser/sdk-page, served by the test)
// reports every SDK event through the `report` binding; each is printed as
// {"event":"page","kind":...}. The driver publishes from the server side once the page has
// subscribed, then sends {"cmd":"presence"} (answered with {"event":"presence","users":[...]})
// and {"cmd":"exit"}.
import { command, emit, config, run } from './common.mjs';

run(async (page) => {
  await page.exposeBinding('report', (_source, event) => emit('page', event));
  await page.goto(config.url, { waitUntil: 'load' });
  emit('loaded', { sdk: await page.evaluate(() => typeof window.Centrifuge) });
  await command('presence');
  emit('presence', { users: await page.evaluate(() => window.presence()) });
  await command('exit');
  return { events: await page.$$eval('#events li', (items) => items.length) };
});

// Shared by the browser scenarios run by tests/test_browser.py: launch Debian's Chromium
// through playwright-core (never a downloaded browser), report JSON lines on stdout, obey a
// hard deadline, and always close the browser.
//
// Config (argv[2], JSON): {chromium, userDataDir, deadlineMs, ...scenario fields}.
// stdout: one JSON object per line with an "event" key; the last one is "done" (exit 0) or
// "fail" (exit 1) or "deadline" (exit 2).
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

// The test dependencies live in tests/js (package.json, package-lock.json, node_modules).
export const requireTestModule = createRequire(new URL('../js/package.json', import.meta.url));
const { chromium } = requireTestModule('playwright-core');

export const config = JSON.parse(process.argv[2] || '{}');
const started = Date.now();

export function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now() - started, ...fields }) + '\n');
}

export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let context = null;
let finished = false;

async function closeBrowser() {
  const ctx = context;
  context = null;
  if (ctx !== null) {
    try {
      await Promise.race([ctx.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
    } catch {
      // the browser is gone already
    }
  }
}

async function finish(code, event, fields) {
  if (finished) return;
  finished = true;
  emit(event, fields);
  await closeBrowser();
  process.exit(code);
}

// Commands from the driver on stdin (one JSON object per line).
const waiters = [];
const received = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const index = waiters.findIndex((w) => w.cmd === command.cmd);
  if (index >= 0) waiters.splice(index, 1)[0].resolve(command);
  else received.push(command);
});

/** The next command ``cmd`` sent by the driver. */
export function command(cmd) {
  const index = received.findIndex((c) => c.cmd === cmd);
  if (index >= 0) return Promise.resolve(received.splice(index, 1)[0]);
  return new Promise((resolve) => waiters.push({ cmd, resolve }));
}

/**
 * Launch Chromium with a fresh profile (config.userDataDir, made and removed by the driver),
 * run ``scenario(page, context)``, report "done" with its result, or "fail".
 */
export async function run(scenario) {
  const deadline = setTimeout(() => finish(2, 'deadline'), config.deadlineMs || 30000);
  deadline.unref();
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => finish(3, 'fail', { message: 'stopped by ' + signal }));
  }
  try {
    context = await chromium.launchPersistentContext(config.userDataDir, {
      executablePath: config.chromium || '/usr/bin/chromium',
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1280, height: 860 },
      timeout: 20000,
    });
    emit('browser', { version: context.browser()?.version() ?? null });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (error) => emit('pageerror', { message: String(error) }));
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') {
        emit('console', { type: message.type(), text: message.text() });
      }
    });
    const result = await scenario(page, context);
    await finish(0, 'done', result);
  } catch (error) {
    await finish(1, 'fail', { message: String(error && error.stack ? error.stack : error) });
  }
}

// The chat page in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core. tests/browser.rs starts a server and runs this script against it:
//
//   node tests/browser/chat.mjs --url 'http://127.0.0.1:PORT/#token=...&admin=...' \
//     --screenshot target/browser/chat.png [--timeout-ms 20000] [--expect-cards] [--drop] [--chaos]
//
// It loads the page, waits for `welcome`, sends a message, and waits for tokens to stream into
// the answer and (with --expect-cards) a product card to render; then it checks that the
// page's own latency panel counted the turn and the server's panel (from /metrics) shows it,
// and saves a screenshot. With --drop it prints STREAMING once the answer has started (the
// test then cuts the connection under the page) and reports the connection states the page went
// through. With --chaos it then switches the page's chaos preset on and asks again. It prints
// its findings as one JSON line. Exit 0 when all of that
// happened; 1, with the reason on stderr, when anything did not within the timeout (the test's
// control runs it against a server whose model never answers and expects exactly that).

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    screenshot: { type: 'string' },
    'timeout-ms': { type: 'string', default: '20000' },
    'expect-cards': { type: 'boolean', default: false },
    message: { type: 'string', default: 'do you have frieren?' },
    drop: { type: 'boolean', default: false },
    chaos: { type: 'boolean', default: false },
  },
});
if (!args.url || !args.screenshot) {
  console.error('usage: chat.mjs --url URL --screenshot OUT.png [--timeout-ms N] [--expect-cards]');
  process.exit(2);
}
const timeout = Number(args['timeout-ms']);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  // The flags the machine notes ask for: no sandbox as root, and no background traffic to
  // hosts a closed network refuses.
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync',
  ],
});
const problems = [];
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.setDefaultTimeout(timeout);

  await page.goto(args.url);
  await page.waitForSelector('body[data-state="connected"]');
  // Every connection state the page shows from here on.
  await page.evaluate(() => {
    window.__states = [];
    new MutationObserver(() => window.__states.push(document.body.dataset.state)).observe(
      document.body,
      { attributes: true, attributeFilter: ['data-state'] },
    );
  });
  await page.fill('#message', args.message);
  await page.click('#send');

  // Tokens arrive: the answer of the turn grows while it streams.
  await page.waitForFunction(() => {
    const a = document.querySelector('.turn .answer');
    return a && a.textContent.trim().length > 0;
  });
  const firstSeen = await page.textContent('.turn .answer');
  if (args.drop) console.log('STREAMING');
  if (args['expect-cards']) await page.waitForSelector('.card');
  // The turn ends (done), and the page measured it: one TTFT sample of its own.
  await page.waitForFunction(() => !document.querySelector('#send').disabled);
  const answer = (await page.textContent('.turn .answer')).trim();
  const cards = await page.$$eval('.card', (cs) => cs.map((c) => c.textContent.trim()));
  const ttftPanel = (await page.textContent('#client-ttft')) ?? '';
  // The server's panel reads /metrics every 2 s: it shows the turn too.
  await page.waitForFunction(
    () => /count [1-9]/.test(document.querySelector('#server-ttft')?.textContent ?? ''),
  );
  const serverPanel = (await page.textContent('#server-ttft')) ?? '';
  // And its chunk-gap histogram, bucket by bucket ("10ms–20ms: 41"), drawn from /metrics' buckets.
  await page.waitForFunction(
    () => /count [1-9]/.test(document.querySelector('#server-gap')?.textContent ?? ''),
  );
  const serverGapBars = await page.$$eval('#server-gap rect.bar', (rs) => rs.map((r) => r.textContent));

  if (answer.length <= firstSeen.trim().length) {
    problems.push('the answer did not grow after its first tokens: it did not stream');
  }
  if (!/\b1\b/.test(ttftPanel)) problems.push(`the TTFT panel counted no turn: ${ttftPanel}`);
  const states = await page.evaluate(() => window.__states);
  const sessionId = await page.evaluate(() => sessionStorage.getItem('mangaassist.session'));

  // The chaos preset, through the admin route, then a second answer while enrichment crawls.
  let chaosAnswer = null;
  if (args.chaos) {
    await page.click('#chaos');
    await page.waitForFunction(() => {
      const box = document.querySelector('#chaos');
      return box.checked && !box.disabled;
    });
    await page.fill('#message', 'how much is one piece?');
    await page.click('#send');
    await page.waitForFunction(() => document.querySelectorAll('.turn').length >= 2);
    await page.waitForFunction(() => !document.querySelector('#send').disabled);
    chaosAnswer = (await page.$$eval('.turn .answer', (as) => as.at(-1).textContent)).trim();
    if (!chaosAnswer) problems.push('no answer streamed while enrichment was slowed');
  }

  mkdirSync(dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot, fullPage: true });

  const squash = (t) => t.replace(/\s+/g, ' ').trim();
  console.log(JSON.stringify({
    answer,
    cards,
    states,
    sessionId,
    chaosAnswer,
    ttftPanel: squash(ttftPanel),
    serverPanel: squash(serverPanel),
    serverGapBars,
  }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(`browser test failed: ${failed.message.split('\n')[0]}`);
  process.exit(1);
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}

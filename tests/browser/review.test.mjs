// Browser test of `iomt review`: Debian's chromium driven by playwright-core.
//   node review.test.mjs <review URL> <screenshot path> <expected heart-rate points>
// Checks that the patient list renders with device freshness badges, that an out-of-range
// value is flagged, that the heart-rate chart renders with the expected number of points, and
// that pointing at the chart shows the nearest reading; saves a screenshot.
import { chromium } from 'playwright-core';

const [url, shot, expectedPoints] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let failed = 0;
const check = (ok, what) => { console.log(`${ok ? 'ok' : 'FAIL'} - ${what}`); if (!ok) failed++; };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  await page.goto(url);
  await page.waitForSelector('tr.patient', { timeout: 20000 });
  const rows = await page.locator('tr.patient').count();
  check(rows >= 1, `patient list renders (${rows} patients)`);
  const flagged = await page.locator('.vital.oor').count();
  check(flagged >= 1, `an out-of-range value is flagged (${flagged})`);
  const badges = await page.locator('.badge.stale').count();
  check(badges >= 1, `device badges carry the server's freshness class (${badges} stale)`);
  await page.locator('tr.patient', { hasText: 'patient-001' }).first().click();
  await page.waitForSelector('.chart[data-series="heartrate"] svg', { timeout: 20000 });
  const points = await page.locator('.chart[data-series="heartrate"] svg').getAttribute('data-points');
  check(points === expectedPoints, `the heart-rate chart has ${points} points (expected ${expectedPoints})`);
  const dots = await page.locator('.chart[data-series="heartrate"] circle.pt').count();
  check(String(dots) === expectedPoints, `and draws ${dots} points`);
  // Pointing at the right end of the chart shows the last reading (the out-of-range 165).
  const box = await page.locator('.chart[data-series="heartrate"] svg').boundingBox();
  await page.mouse.move(box.x + box.width - 31, box.y + box.height / 2);
  const tip = await page.locator('#tip').textContent();
  check(/^165 at /.test(tip ?? ''), `hovering the chart shows the nearest reading ("${tip}")`);
  await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
console.log(`${failed ? 0 : 6} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// Browser test of `iomt review` behind OpenID Connect sign-in: Debian's chromium driven by
// playwright-core, against the real OpenID Provider (tests/oidc, oidc-provider) and the local
// FHIR store (bearer token) that tests/browser.rs started and seeded.
//   node review.test.mjs <config JSON file>
// The config: {"url", "artifacts", "allowed": {login}, "refused": {login}, "oor", "quiet",
//              "total", "ecg": {"values": [...], "periodMs"}}.
// Checks: sign-in (the provider's login and consent pages), a user outside the allowed group
// refused, the security headers and no CSP violation, the skeleton while the list loads, the
// triage order (out-of-range, then quiet, then the rest), a vital's display name, unit and
// out-of-range flag (icon and text), the filter and paging, the first page's time with 1,000+
// patients, the patient view (bookmarkable range, blood pressure as one chart, thresholds band,
// devices), the ECG viewer's real 250 Hz samples when zoomed, keyboard navigation, sign-out;
// screenshots of the list and the patient view.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const url = cfg.url;
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let passed = 0, failed = 0;
const check = (ok, what) => { console.log(`${ok ? 'ok' : 'FAIL'} - ${what}`); if (ok) passed++; else failed++; };

// Signs in at the provider's development login and consent pages.
let lastPage = null;
async function signIn(page, login) {
  lastPage = page;
  await page.waitForSelector('input[name="login"]', { timeout: 20000 });
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', 'any password (test provider)');
  await page.click('button[type="submit"]');
  await page.waitForSelector('button:has-text("Continue")', { timeout: 20000 });
  await page.click('button:has-text("Continue")');
}

const cspErrors = [];
try {
  // ---- A user outside the allowed group is refused. ----
  {
    const ctx = await browser.newContext({ viewport: { width: 1300, height: 900 } });
    const page = await ctx.newPage();
    await page.goto(url);
    check(page.url().startsWith(cfg.issuer), `an anonymous visit is sent to the provider (${page.url().split('?')[0]})`);
    await signIn(page, cfg.refused);
    await page.waitForSelector('#refused', { timeout: 20000 });
    const text = await page.locator('#refused').textContent();
    check(/not a member of a group allowed/.test(text), `a user without the allowed group is refused ("${text.trim().slice(0, 60)}…")`);
    const api = await page.evaluate(async () => (await fetch('/api/triage')).status);
    check(api === 401, `and gets no session: /api/triage answers ${api}`);
    await ctx.close();
  }

  // ---- The allowed user. ----
  const ctx = await browser.newContext({ viewport: { width: 1300, height: 900 } });
  const page = await ctx.newPage();
  lastPage = page;
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspErrors.push(m.text()); });
  await page.goto(url);
  await signIn(page, cfg.allowed);
  await page.waitForSelector('tr.patient', { timeout: 30000 });
  check(new URL(page.url()).origin === new URL(url).origin, 'signed in, back on the review page');
  const user = await page.locator('#user').textContent();
  check(/Signed in as Nora Nurse/.test(user), `the page names the user ("${user}")`);

  // Security headers.
  const resp = await page.request.get(url);
  const h = resp.headers();
  check(/frame-ancestors 'none'/.test(h['content-security-policy'] || '') && /script-src 'self'/.test(h['content-security-policy']),
    `CSP: ${h['content-security-policy']}`);
  check(h['x-frame-options'] === 'DENY' && h['x-content-type-options'] === 'nosniff', 'X-Frame-Options DENY, nosniff');
  const cookies = await ctx.cookies(url);
  const session = cookies.find((c) => c.name === 'iomt_review_session');
  check(session && session.httpOnly && session.sameSite === 'Lax', `the session cookie is HttpOnly, SameSite=${session?.sameSite}`);

  // The first page of 1,000+ patients, timed from navigation to rows on screen.
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForSelector('tr.patient', { timeout: 30000 });
  const ms = Date.now() - t0;
  const inPage = await page.evaluate(() => Math.round(window.__firstPageMs));
  const summary = await page.locator('#summary').textContent();
  console.log(`# first page of the triage list: ${ms} ms from navigation to rows (page's own mark ${inPage} ms after navigation start); ${summary}`);
  check(summary.startsWith(`${cfg.total} patients`), `the list covers every patient ("${summary}")`);
  check(ms < 5000, `the first page rendered in ${ms} ms`);
  const rows = await page.locator('tr.patient').count();
  check(rows === 50, `server-side paging: ${rows} rows on the first page`);

  // Triage order.
  const statuses = await page.locator('tr.patient').evaluateAll((trs) => trs.map((t) => [t.dataset.id, t.dataset.status]));
  check(statuses[0][0] === cfg.oor && statuses[0][1] === 'out-of-range', `out-of-range first (${statuses[0]})`);
  check(statuses[1][0] === cfg.quiet && statuses[1][1] === 'quiet', `then the device gone quiet (${statuses[1]})`);
  check(statuses.slice(2).every(([, s]) => s === 'ok'), 'then the rest');
  const first = page.locator('tr.patient').first();
  const status = await first.locator('.status').textContent();
  check(/⚠\s*Out of range/.test(status), `out of range is said with an icon and text ("${status.trim()}")`);
  const hr = first.locator('.vital[data-code="8867-4"]');
  const hrText = (await hr.textContent()).replace(/\s+/g, ' ').trim();
  check(/Heart rate/.test(hrText) && /165 \/min/.test(hrText) && /⚠ high/.test(hrText), `a vital with display name, value, unit and flag ("${hrText}")`);
  const spark = Number(await hr.locator('svg.spark').getAttribute('data-points'));
  check(spark >= 10, `with a 24-hour sparkline (${spark} points)`);
  const quiet = await page.locator('tr.patient').nth(1).locator('.badge').first().textContent();
  check(/h ago \(quiet\)/.test(quiet), `the quiet device shows its age in words ("${quiet}")`);
  await page.screenshot({ path: `${cfg.artifacts}/review-list.png`, fullPage: false });

  // The skeleton while loading, never an empty table.
  await page.route('**/api/triage*', async (route) => { await new Promise((r) => setTimeout(r, 1500)); await route.continue(); });
  await page.goto(url);
  await page.waitForSelector('tr.skeleton', { timeout: 5000 });
  const busy = await page.locator('#patients').getAttribute('aria-busy');
  const loading = await page.locator('#summary').textContent();
  check(busy === 'true' && /Loading/.test(loading), `while loading: skeleton rows, aria-busy, "${loading}"`);
  await page.screenshot({ path: `${cfg.artifacts}/review-loading.png` });
  await page.waitForSelector('tr.patient', { timeout: 30000 });
  await page.unroute('**/api/triage*');

  // Filter and paging.
  await page.click('#next');
  await page.waitForFunction(() => /Page 2 of/.test(document.querySelector('#page-label').textContent));
  check(new URL(page.url()).searchParams.get('page') === '2', `next page: ${page.url()}`);
  await page.fill('#filter', cfg.quietIdentifier);
  await page.waitForFunction(() => document.querySelectorAll('tr.patient').length === 1);
  const filtered = await page.locator('tr.patient').first().getAttribute('data-id');
  check(filtered === cfg.quiet, `filter by identifier: "${cfg.quietIdentifier}" leaves ${filtered}`);
  await page.fill('#filter', '');
  await page.waitForFunction(() => document.querySelectorAll('tr.patient').length === 50);

  // Keyboard: the patient link takes focus visibly, Enter opens the patient view.
  const link = page.locator('tr.patient a').first();
  await link.focus();
  const outline = await link.evaluate((a) => getComputedStyle(a).outlineStyle);
  check(outline !== 'none', `visible focus on the patient link (outline ${outline})`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('.chart', { timeout: 20000 });
  check(new URL(page.url()).pathname === `/patient/${cfg.oor}`, `Enter opens the patient view (${page.url()})`);

  // Patient view.
  const title = await page.locator('#patient-title').textContent();
  check(title.includes(cfg.oorIdentifier), `patient view: "${title}"`);
  const devices = await page.locator('#patient-devices tbody tr').count();
  check(devices >= 2, `the patient's devices with last seen (${devices})`);
  const bp = page.locator('.chart[data-series="bloodpressure"]');
  const legend = await bp.locator('.legend').textContent();
  check(/Systolic/.test(legend) && /Diastolic/.test(legend) && (await bp.locator('svg.plot path[stroke-dasharray]').count()) >= 2,
    `systolic and diastolic on one chart ("${legend.replace(/\s+/g, ' ').trim()}")`);
  check((await bp.locator('rect.band').count()) === 2, 'with the thresholds drawn as bands');
  const hrChart = page.locator('.chart[data-series="heartrate"]');
  check((await hrChart.locator('.pt.oor').count()) >= 1, 'the out-of-range reading marked on the chart');

  // The ECG viewer: zoom to 2 s, the real 250 Hz samples.
  const ecg = page.locator('.chart[data-series="ecg"]');
  const ecgTitle = await ecg.locator('h3').textContent();
  check(/ECG lead I/.test(ecgTitle) && /mV/.test(ecgTitle), `the ECG chart ("${ecgTitle}")`);
  await ecg.locator('button[data-span="2"]').click();
  await page.waitForFunction(() => {
    const s = document.querySelector('.chart[data-series="ecg"] .wave-svg');
    return s && s.getAttribute('aria-label').includes('2 seconds');
  }, null, { timeout: 20000 });
  const wave = ecg.locator('.wave-svg');
  const samples = Number(await wave.getAttribute('data-samples'));
  const period = Number(await wave.getAttribute('data-period-ms'));
  const label = await ecg.locator('.wave-label').textContent();
  check(samples === 500 && period === 4 && /250 Hz/.test(label), `zoomed to 2 s: ${samples} samples, ${period} ms apart ("${label}")`);
  const drawn = await wave.locator('circle.sample').evaluateAll((cs) => cs.map((c) => [c.dataset.t, Number(c.dataset.v)]));
  const start = Date.parse(cfg.ecg.start);
  const real = drawn.every(([t, v]) => {
    const i = Math.round((Date.parse(t) - start) / cfg.ecg.periodMs);
    return Math.abs(cfg.ecg.values[i] - v) < 1e-9;
  });
  check(drawn.length === 500 && real, `every drawn sample is the stored sample at its time (${drawn.length} compared)`);
  await ecg.scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${cfg.artifacts}/review-patient.png`, fullPage: true });

  // Bookmarkable: patient and range in the URL.
  await page.locator('button.range[data-range="7d"]').click();
  await page.waitForFunction(() => location.search.includes('range=7d'));
  const bookmark = page.url();
  const page2 = await ctx.newPage();
  await page2.goto(bookmark);
  await page2.waitForSelector('.chart', { timeout: 20000 });
  const pressed = await page2.locator('button.range[data-range="7d"]').getAttribute('aria-pressed');
  const title2 = await page2.locator('#patient-title').textContent();
  check(pressed === 'true' && title2 === title, `a bookmark (${bookmark}) opens the same patient and range`);
  await page2.close();

  // A custom range, also in the URL.
  await page.fill('#from', '2020-01-01T00:00:00');
  await page.click('#apply');
  await page.waitForFunction(() => location.search.includes('from=2020-01-01'));
  await page.waitForSelector('.chart[data-series="heartrate"]', { timeout: 20000 });
  const customLabel = await page.locator('#range-label').textContent();
  check(/2020/.test(customLabel), `a custom range (${new URL(page.url()).search}; "${customLabel}")`);

  check(cspErrors.length === 0, `no CSP violation on the page (${cspErrors.length})`);

  // Sign out: the page's session and the provider's.
  await page.click('#signout button');
  const yes = page.locator('button[value="yes"], button:has-text("Yes, sign me out")');
  await yes.first().waitFor({ timeout: 20000 });
  await yes.first().click();
  await page.waitForSelector('#signed-out', { timeout: 20000 });
  const after = await page.evaluate(async () => (await fetch('/api/triage')).status);
  check(after === 401, `signed out: /api/triage answers ${after}`);
  await page.goto(url);
  await page.waitForSelector('input[name="login"]', { timeout: 20000 });
  check(page.url().startsWith(cfg.issuer), 'and the next visit asks to sign in again');
  await ctx.close();
} catch (e) {
  console.log(`FAIL - ${e.stack || e}`);
  failed++;
  if (lastPage) {
    // What the browser showed when it failed.
    console.log(`# at ${lastPage.url()}:\n# ${(await lastPage.locator('body').innerText().catch(() => '')).slice(0, 1500).replace(/\n/g, '\n# ')}`);
    await lastPage.screenshot({ path: `${cfg.artifacts}/review-failure.png`, fullPage: true }).catch(() => {});
  }
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

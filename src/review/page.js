// The review page: triage list and patient view. No inline script or style (the page's CSP
// forbids both); charts are plain SVG. Every URL is bookmarkable: `/?q=&page=` for the list,
// `/patient/<id>?range=24h` or `?from=&to=` for a patient.
'use strict';

const PAGE_SIZE = 50;
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const fmtAge = (s) => s == null ? 'never' : s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : s < 172800 ? `${Math.round(s / 3600)} h ago` : `${Math.round(s / 86400)} days ago`;
const fmtVal = (v) => v == null ? '–' : Math.abs(v) >= 100 ? String(Math.round(v)) : String(Math.round(v * 100) / 100);
const STATUS = {
  'out-of-range': ['⚠', 'Out of range'],
  quiet: ['◔', 'Device quiet'],
  ok: ['✓', 'OK'],
};
const RANGES = { '6h': 6, '24h': 24, '7d': 168, '30d': 720 };

async function api(path) {
  const r = await fetch(path, { headers: { accept: 'application/json' } });
  if (r.status === 401) {
    location.href = `/auth/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new Error('signed out');
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// ---- Sparklines and charts ----

function sparkline(points, low, high) {
  const W = 90, H = 22;
  const vals = points.filter((p) => p.v !== null);
  if (vals.length < 2) return `<svg class="spark" width="${W}" height="${H}" aria-hidden="true"></svg>`;
  const t0 = Date.parse(points[0].t), t1 = Date.parse(points[points.length - 1].t);
  let lo = Math.min(...vals.map((p) => p.v)), hi = Math.max(...vals.map((p) => p.v));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => 1 + (W - 2) * (Date.parse(t) - t0) / Math.max(1, t1 - t0);
  const y = (v) => H - 2 - (H - 4) * (v - lo) / (hi - lo);
  let d = '', pen = false;
  for (const p of points) { if (p.v === null) { pen = false; continue; } d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`; pen = true; }
  return `<svg class="spark" width="${W}" height="${H}" aria-hidden="true" data-points="${vals.length}"><path d="${d}" fill="none" stroke="#1f77b4" stroke-width="1.2"/></svg>`;
}

const LINE_STYLES = [['#1f4e79', ''], ['#c05621', '6 3'], ['#2d6a4f', '2 2'], ['#6b46c1', '8 2 2 2']];

// One chart: every line of `chart` over [from, to] (ms), the thresholds as a band, a gap where
// a line has a null point. Returns the element.
function drawChart(chart, from, to) {
  const W = 720, H = 190, L = 44, R = 10, T = 10, B = 24;
  const div = document.createElement('div');
  div.className = 'chart'; div.dataset.series = chart.key;
  const all = chart.lines.flatMap((l) => l.points.filter((p) => p.v !== null));
  const unit = chart.unit ? ` (${esc(chart.unit)})` : '';
  const legend = chart.lines.map((l, i) => {
    const [c, dash] = LINE_STYLES[i % LINE_STYLES.length];
    const band = l.low != null ? `, normal ${fmtVal(l.low)}–${fmtVal(l.high)}` : '';
    return `<span class="legend-item"><svg width="24" height="8" aria-hidden="true"><line x1="0" y1="4" x2="24" y2="4" stroke="${c}" stroke-width="2" stroke-dasharray="${dash}"/></svg> ${esc(l.display)}${l.unit ? ' ' + esc(l.unit) : ''}${band}</span>`;
  }).join(' &nbsp; ');
  div.innerHTML = `<h3>${esc(chart.display)}${unit} <small>(${all.length} points)</small></h3><div class="legend">${legend}</div>`;
  if (!all.length) { div.insertAdjacentHTML('beforeend', '<p class="loading">No readings in this range.</p>'); return div; }
  const times = all.map((p) => Date.parse(p.t));
  const t0 = from ?? Math.min(...times), t1 = to ?? Math.max(...times);
  let lo = Math.min(...all.map((p) => p.v)), hi = Math.max(...all.map((p) => p.v));
  for (const l of chart.lines) if (l.low != null) { lo = Math.min(lo, l.low); hi = Math.max(hi, l.high); }
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const x = (t) => L + (W - L - R) * (Date.parse(t) - t0) / Math.max(1, t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  let svg = `<svg class="plot" width="${W}" height="${H}" data-points="${all.length}" tabindex="0" role="img" aria-label="${esc(chart.display)}: ${all.length} readings from ${fmtVal(Math.min(...all.map((p) => p.v)))} to ${fmtVal(Math.max(...all.map((p) => p.v)))}${esc(unit)}">`;
  for (const l of chart.lines) {
    if (l.low == null) continue;
    svg += `<rect class="band" x="${L}" width="${W - L - R}" y="${y(l.high).toFixed(1)}" height="${Math.max(1, y(l.low) - y(l.high)).toFixed(1)}"><title>normal range ${esc(l.display)}: ${fmtVal(l.low)}–${fmtVal(l.high)}</title></rect>`;
  }
  svg += `<text x="2" y="${T + 8}" font-size="10">${fmtVal(hi)}</text><text x="2" y="${H - B}" font-size="10">${fmtVal(lo)}</text>`;
  svg += `<text x="${L}" y="${H - 6}" font-size="10">${esc(new Date(t0).toLocaleString())}</text><text x="${W - R}" y="${H - 6}" font-size="10" text-anchor="end">${esc(new Date(t1).toLocaleString())}</text>`;
  chart.lines.forEach((l, i) => {
    const [c, dash] = LINE_STYLES[i % LINE_STYLES.length];
    let d = '', pen = false;
    for (const p of l.points) { if (p.v === null) { pen = false; continue; } d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`; pen = true; }
    svg += `<path d="${d}" fill="none" stroke="${c}" stroke-width="1.5" stroke-dasharray="${dash}"/>`;
    const vals = l.points.filter((p) => p.v !== null);
    if (vals.length <= 200) {
      for (const p of vals) {
        const oor = l.low != null && (p.v < l.low || p.v > l.high);
        svg += oor
          ? `<path class="pt oor" d="M${x(p.t).toFixed(1)},${(y(p.v) - 5).toFixed(1)}l4,7h-8z" fill="#b00020" data-t="${p.t}" data-v="${p.v}"><title>out of range: ${fmtVal(p.v)}</title></path>`
          : `<circle class="pt" cx="${x(p.t).toFixed(1)}" cy="${y(p.v).toFixed(1)}" r="2.5" fill="${c}" data-t="${p.t}" data-v="${p.v}"/>`;
      }
    }
  });
  svg += '<circle class="cursor" r="4" fill="none" stroke="#d62728" visibility="hidden"/></svg>';
  div.insertAdjacentHTML('beforeend', svg);
  const el = div.querySelector('svg.plot'), cursor = el.querySelector('circle.cursor'), tip = $('#tip');
  const pts = chart.lines.flatMap((l) => l.points.filter((p) => p.v !== null).map((p) => ({ ...p, l }))).sort((a, b) => Date.parse(a.t) - Date.parse(b.t));
  const xs = pts.map((p) => x(p.t));
  const show = (p, cx, cy) => {
    cursor.setAttribute('cx', x(p.t)); cursor.setAttribute('cy', y(p.v)); cursor.setAttribute('visibility', 'visible');
    tip.hidden = false; tip.textContent = `${p.v} at ${new Date(p.t).toLocaleString()}`;
    tip.style.left = `${cx + 8}px`; tip.style.top = `${cy + 8}px`;
  };
  el.addEventListener('mousemove', (e) => {
    const mx = e.clientX - el.getBoundingClientRect().left;
    let a = 0, b = xs.length - 1;
    while (b - a > 1) { const m = (a + b) >> 1; if (xs[m] < mx) a = m; else b = m; }
    show(pts[Math.abs(xs[a] - mx) <= Math.abs(xs[b] - mx) ? a : b], e.clientX, e.clientY);
  });
  el.addEventListener('mouseleave', () => { tip.hidden = true; cursor.setAttribute('visibility', 'hidden'); });
  // Keyboard: arrow keys walk the readings.
  let k = pts.length - 1;
  el.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    e.preventDefault(); k = Math.max(0, Math.min(pts.length - 1, k + (e.key === 'ArrowRight' ? 1 : -1)));
    const r = el.getBoundingClientRect(); show(pts[k], r.left + x(pts[k].t), r.top + y(pts[k].v));
  });
  el.addEventListener('blur', () => { tip.hidden = true; cursor.setAttribute('visibility', 'hidden'); });
  if (chart.waveform) div.appendChild(waveViewer(chart, x, el));
  return div;
}

// The waveform viewer: a window of a few seconds of a high-rate series, drawn from the real
// samples (fetched for that window, not the downsampled overview).
function waveViewer(chart, x, overview) {
  const box = document.createElement('div');
  box.className = 'wave'; box.dataset.key = chart.key;
  box.innerHTML = `<div class="toolbar" role="group" aria-label="${esc(chart.display)} zoom">
    <strong>Zoom:</strong>
    <button type="button" data-span="10">10 s</button><button type="button" data-span="2">2 s</button>
    <button type="button" data-move="-1">◀ Earlier</button><button type="button" data-move="1">Later ▶</button>
    <span class="wave-label" role="status" aria-live="polite">Choose a zoom to see the real samples (or click the chart above).</span></div>
    <div class="wave-plot"></div>`;
  const times = chart.lines.flatMap((l) => l.points.filter((p) => p.v !== null).map((p) => Date.parse(p.t)));
  const first = Math.min(...times), last = Math.max(...times);
  let span = 10, start = last - span * 1000;
  const period = chart.periodMs;
  const render = async () => {
    start = Math.max(first, Math.min(start, last - span * 1000 + (period || 0)));
    const from = new Date(start).toISOString(), to = new Date(start + span * 1000).toISOString();
    box.querySelectorAll('[data-span]').forEach((b) => b.setAttribute('aria-pressed', String(Number(b.dataset.span) === span)));
    const label = box.querySelector('.wave-label');
    label.textContent = 'Loading samples…';
    let w;
    try { w = await api(`/api/patients/${encodeURIComponent(current.id)}/waveform?key=${encodeURIComponent(chart.key)}&from=${from}&to=${to}`); }
    catch (e) { label.textContent = `Could not load samples: ${e.message}`; return; }
    const W = 720, H = 160, L = 44, R = 10, T = 8, B = 20;
    const vals = w.points.filter((p) => p.v !== null);
    const rate = w.periodMs ? Math.round(1000 / w.periodMs) : null;
    label.textContent = `${w.samples} samples${rate ? ` at ${rate} Hz (${w.periodMs} ms apart)` : ''}, ${new Date(start).toLocaleTimeString()} + ${span} s`;
    if (!vals.length) { box.querySelector('.wave-plot').innerHTML = '<p>No samples in this window.</p>'; return; }
    let lo = Math.min(...vals.map((p) => p.v)), hi = Math.max(...vals.map((p) => p.v));
    if (hi === lo) { hi += 1; lo -= 1; }
    const t0 = start, t1 = start + span * 1000;
    const xx = (t) => L + (W - L - R) * (Date.parse(t) - t0) / (t1 - t0);
    const yy = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    let d = '', pen = false, dots = '';
    for (const p of w.points) { if (p.v === null) { pen = false; continue; } d += `${pen ? 'L' : 'M'}${xx(p.t).toFixed(2)},${yy(p.v).toFixed(2)}`; pen = true; }
    if (vals.length <= 1500) dots = vals.map((p) => `<circle class="sample" cx="${xx(p.t).toFixed(2)}" cy="${yy(p.v).toFixed(2)}" r="1.3" data-t="${p.t}" data-v="${p.v}"/>`).join('');
    // Grid: a line every 200 ms (the ECG paper's large square), labelled every second.
    let grid = '';
    for (let t = Math.ceil(t0 / 200) * 200; t <= t1; t += 200) {
      const gx = L + (W - L - R) * (t - t0) / (t1 - t0);
      grid += `<line x1="${gx.toFixed(1)}" x2="${gx.toFixed(1)}" y1="${T}" y2="${H - B}" stroke="#f3c4c4" stroke-width="${t % 1000 === 0 ? 1 : 0.5}"/>`;
      if (t % 1000 === 0) grid += `<text x="${gx.toFixed(1)}" y="${H - 6}" font-size="10" text-anchor="middle">${esc(new Date(t).toLocaleTimeString())}</text>`;
    }
    box.querySelector('.wave-plot').innerHTML = `<svg class="plot wave-svg" width="${W}" height="${H}" role="img" data-samples="${vals.length}" data-period-ms="${w.periodMs ?? ''}" data-from="${from}" aria-label="${esc(chart.display)}: ${vals.length} samples over ${span} seconds">${grid}
      <text x="2" y="${T + 8}" font-size="10">${fmtVal(hi)}</text><text x="2" y="${H - B}" font-size="10">${fmtVal(lo)}</text>
      <path d="${d}" fill="none" stroke="#1d2733" stroke-width="1"/>${dots}</svg>`;
  };
  box.addEventListener('click', (e) => {
    const b = e.target.closest('button'); if (!b) return;
    if (b.dataset.span) { const mid = start + span * 500; span = Number(b.dataset.span); start = mid - span * 500; }
    if (b.dataset.move) start += Number(b.dataset.move) * span * 500;
    render();
  });
  overview.addEventListener('click', (e) => {
    const r = overview.getBoundingClientRect(), mx = e.clientX - r.left;
    // Invert the overview's x scale by bisection over time.
    let a = first, b = last;
    for (let i = 0; i < 40; i++) { const m = (a + b) / 2; if (x(new Date(m).toISOString()) < mx) a = m; else b = m; }
    start = a - span * 500; render();
  });
  return box;
}

// ---- Triage list ----

function skeleton(n) {
  const tb = $('#patients tbody');
  tb.innerHTML = Array.from({ length: n }, () => '<tr class="skeleton" aria-hidden="true"><td><span></span></td><td><span></span></td><td><span></span></td><td><span></span></td></tr>').join('');
  $('#patients').setAttribute('aria-busy', 'true');
  $('#summary').textContent = 'Loading patients…';
}

function vitalHtml(key, v) {
  const flag = v.outOfRange ? `<span class="flag">⚠ ${v.low != null && v.value < v.low ? 'low' : 'high'}</span>` : '';
  const value = v.waveform ? 'waveform' : `${fmtVal(v.value)}${v.unit ? ' ' + esc(v.unit) : ''}`;
  const band = v.low != null ? ` (normal ${fmtVal(v.low)}–${fmtVal(v.high)})` : '';
  return `<div class="vital${v.outOfRange ? ' oor' : ''}" data-vital="${esc(key)}" data-code="${esc(v.code ?? '')}">
    <span class="name" title="${esc(key)}${esc(band)}">${esc(v.display ?? key)}</span>
    <span class="value">${value}${flag}</span>
    <span class="age">${fmtAge(v.ageSeconds)}</span>
    ${sparkline(v.spark || [], v.low, v.high)}</div>`;
}

// Out-of-range vitals first, then by display name.
const sortVitals = (vitals) => Object.entries(vitals).sort(([, a], [, b]) =>
  (b.outOfRange - a.outOfRange) || String(a.display).localeCompare(String(b.display)));

function rowHtml(p) {
  const [icon, text] = STATUS[p.status] || STATUS.ok;
  const vitals = sortVitals(p.vitals).map(([k, v]) => vitalHtml(k, v)).join('') || '<span class="age">no readings</span>';
  const devices = p.devices.map((d) => `<span class="badge ${d.freshness}" data-device="${esc(d.identifier ?? d.id)}">${esc(d.identifier ?? d.id)} · ${fmtAge(d.ageSeconds)}${d.freshness === 'stale' ? ' (quiet)' : ''}</span>`).join('') || '<span class="age">none</span>';
  return `<tr class="patient" data-id="${esc(p.id)}" data-status="${p.status}">
    <td><span class="status ${p.status}"><span aria-hidden="true">${icon}</span> ${text}</span></td>
    <td><a href="/patient/${encodeURIComponent(p.id)}">${esc(p.identifier ?? p.id)}</a>${p.name ? `<div>${esc(p.name)}</div>` : ''}</td>
    <td>${vitals}</td><td>${devices}</td></tr>`;
}

let listTimer = null;
async function showList(params, quiet) {
  $('#patient-view').hidden = true; $('#list-view').hidden = false;
  document.title = 'Patients · iomt review';
  const q = params.get('q') || '';
  const page = Math.max(1, Number(params.get('page')) || 1);
  if ($('#filter').value !== q && document.activeElement !== $('#filter')) $('#filter').value = q;
  if (!quiet) skeleton(8);
  let data;
  for (;;) {
    try { data = await api(`/api/triage?offset=${(page - 1) * PAGE_SIZE}&count=${PAGE_SIZE}&q=${encodeURIComponent(q)}`); break; }
    catch (e) {
      if (e.message === 'signed out') return;
      $('#summary').textContent = `Still loading (${e.message}); retrying…`;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  const tb = $('#patients tbody');
  // A refresh keeps the keyboard focus where it was (the same patient's link).
  const focused = tb.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
  tb.innerHTML = data.patients.map(rowHtml).join('') || `<tr><td colspan="4">No patient matches “${esc(q)}”.</td></tr>`;
  $('#patients').setAttribute('aria-busy', 'false');
  if (focused) tb.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
  const s = data.summary;
  $('#summary').textContent = `${data.total} patients: ${s.outOfRange} out of range, ${s.quiet} with a device gone quiet, ${s.ok} OK${data.error ? ` (last refresh failed: ${data.error})` : ''}`;
  const last = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  $('#page-label').textContent = `Page ${page} of ${last} (${data.total ? (page - 1) * PAGE_SIZE + 1 : 0}–${Math.min(data.total, page * PAGE_SIZE)} of ${data.total})`;
  $('#prev').disabled = page <= 1; $('#next').disabled = page >= last;
  $('#prev').dataset.page = page - 1; $('#next').dataset.page = page + 1;
  if (!window.__firstPageMs) { window.__firstPageMs = performance.now(); document.body.dataset.firstPageMs = String(Math.round(window.__firstPageMs)); }
  clearTimeout(listTimer);
  listTimer = setTimeout(() => { if (!$('#list-view').hidden) showList(new URLSearchParams(location.search), true); }, 15000);
}

function listUrl(q, page) {
  const u = new URLSearchParams();
  if (q) u.set('q', q);
  if (page > 1) u.set('page', page);
  const s = u.toString();
  return s ? `/?${s}` : '/';
}

// ---- Patient view ----

let current = null;

function rangeOf(params) {
  const now = Date.now();
  if (params.get('from')) {
    return { from: Date.parse(params.get('from')), to: params.get('to') ? Date.parse(params.get('to')) : now, label: 'custom' };
  }
  const r = params.get('range') || '24h';
  if (r === 'all') return { from: null, to: null, label: 'all' };
  const hours = RANGES[r] || 24;
  return { from: now - hours * 3600e3, to: now, label: r };
}

const localInput = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 19); };

async function showPatient(id, params) {
  $('#list-view').hidden = true; $('#patient-view').hidden = false;
  clearTimeout(listTimer);
  current = { id };
  $('#patient-title').textContent = 'Loading patient…';
  $('#charts').innerHTML = '<p class="loading" role="status">Loading charts…</p>';
  const range = rangeOf(params);
  document.querySelectorAll('button.range').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.range === range.label)));
  if (range.from) { $('#from').value = localInput(range.from); $('#to').value = localInput(range.to); }
  let p;
  try { p = await api(`/api/patients/${encodeURIComponent(id)}`); }
  catch (e) { $('#patient-title').textContent = `Patient ${id}: ${e.message}`; $('#charts').innerHTML = ''; return; }
  current = p;
  const title = p.name ? `${p.name} (${p.identifier ?? p.id})` : (p.identifier ?? p.id);
  $('#patient-title').textContent = title;
  document.title = `${title} · iomt review`;
  $('#patient-vitals').innerHTML = sortVitals(p.vitals).map(([k, v]) => vitalHtml(k, { ...v, spark: [] })).join('');
  $('#patient-devices tbody').innerHTML = p.devices.map((d) => `<tr data-device="${esc(d.identifier ?? d.id)}"><td>${esc(d.identifier ?? d.id)}</td>
    <td>${d.lastSeen ? `${esc(new Date(d.lastSeen).toLocaleString())} (${fmtAge(d.ageSeconds)})` : 'no reading'}</td>
    <td><span class="badge ${d.freshness}">${d.freshness}</span></td></tr>`).join('') || '<tr><td colspan="3">No devices.</td></tr>';
  const q = new URLSearchParams({ points: '600' });
  if (range.from) { q.set('from', new Date(range.from).toISOString()); q.set('to', new Date(range.to).toISOString()); }
  $('#range-label').textContent = range.from ? `${new Date(range.from).toLocaleString()} – ${new Date(range.to).toLocaleString()}` : 'All readings';
  let c;
  try { c = await api(`/api/patients/${encodeURIComponent(id)}/charts?${q}`); }
  catch (e) { $('#charts').innerHTML = `<p class="error">Could not load the charts: ${esc(e.message)}</p>`; return; }
  const charts = $('#charts'); charts.innerHTML = '';
  if (!c.charts.length) charts.innerHTML = '<p>No readings in this range. Try a longer one.</p>';
  for (const ch of c.charts) charts.appendChild(drawChart(ch, range.from, range.to));
}

// ---- Routing ----

function route() {
  const m = location.pathname.match(/^\/patient\/([^/]+)$/);
  const params = new URLSearchParams(location.search);
  if (m) showPatient(decodeURIComponent(m[1]), params); else showList(params);
}

function go(url) { history.pushState(null, '', url); route(); }

async function whoAmI() {
  try {
    const me = await api('/api/me');
    if (me.signIn) { $('#user').textContent = `Signed in as ${me.name || me.sub}`; $('#signout').hidden = false; }
  } catch { /* shown by the list */ }
}

async function health() {
  let h;
  try { h = await api('/api/health'); } catch { return; }
  const b = $('#health-body');
  if (!h.available) { b.textContent = 'No connector metrics configured (--metrics-url).'; return; }
  const c = h.counters, row = (k, label) => `<tr><td>${label}</td><td>${c[k] ?? 0}</td></tr>`;
  b.innerHTML = `<table>${row('iomt_events_incoming_total', 'events in')}${row('iomt_events_normalized_total', 'normalized')}
    ${row('iomt_fhir_resources_saved_total', 'FHIR resources saved')}${row('iomt_dead_letters_total', 'dead letters')}
    ${Object.entries(h.errorsByType).map(([t, n]) => `<tr><td class="error">⚠ ${esc(t)}</td><td>${n}</td></tr>`).join('')}</table>
    <h3>Dead letters</h3><ul id="dead-letters"></ul>`;
  const dl = await api('/api/dead-letters').catch(() => []);
  $('#dead-letters').innerHTML = dl.length ? dl.slice(0, 10).map((d) =>
    `<li><a href="/api/dead-letters/${encodeURIComponent(d.id)}" target="_blank" rel="noopener">${esc(d.errorType)}</a> <small>${esc(new Date(d.time).toLocaleString())}</small></li>`).join('')
    : '<li>none</li>';
}

document.addEventListener('DOMContentLoaded', () => {
  document.addEventListener('click', (e) => {
    const a = e.target.closest('a[href^="/"]');
    if (!a || a.target || e.ctrlKey || e.metaKey || e.shiftKey || a.getAttribute('href').startsWith('/api/')) return;
    e.preventDefault(); go(a.getAttribute('href'));
  });
  window.addEventListener('popstate', route);
  let filterTimer = null;
  $('#filter').addEventListener('input', () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => { history.replaceState(null, '', listUrl($('#filter').value.trim(), 1)); showList(new URLSearchParams(location.search)); }, 250);
  });
  for (const id of ['#prev', '#next']) {
    $(id).addEventListener('click', (e) => go(listUrl($('#filter').value.trim(), Number(e.target.dataset.page))));
  }
  document.querySelectorAll('button.range').forEach((b) => b.addEventListener('click', () => {
    go(`/patient/${encodeURIComponent(current.id)}?range=${b.dataset.range}`);
  }));
  $('#apply').addEventListener('click', () => {
    const f = $('#from').value, t = $('#to').value;
    if (!f) return;
    const u = new URLSearchParams({ from: new Date(f).toISOString() });
    if (t) u.set('to', new Date(t).toISOString());
    go(`/patient/${encodeURIComponent(current.id)}?${u}`);
  });
  whoAmI(); health(); setInterval(health, 15000);
  route();
});

// The status page's script (GET / on the admin port). The figures are rendered by the server, so
// the page reads without it; this only refreshes them and draws the charts. Every 5 s it fetches the
// page itself and swaps in the new <main> (one renderer for every figure), then draws each route's
// chart from /v1/history.
'use strict';

// One route's chart: the model served (dots, coloured from smallest to largest variant), the
// intensity (line, 0 to its maximum) and requests per second (bars), over the history kept.
function chart(svg, points, route) {
  const w = 900, h = 240, top = 44, bottom = 28, side = 40;
  const models = JSON.parse(svg.dataset.models || '[]');
  const pts = [];
  for (const p of points) {
    const r = p.routes.find((x) => x.route === route);
    if (r) pts.push({t: p.unix_seconds, ci: r.intensity_gco2_per_kwh, m: r.model, n: r.requests});
  }
  svg.setAttribute('data-points', String(pts.length));
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (pts.length === 0) return;

  const t0 = pts[0].t, t1 = Math.max(pts[pts.length - 1].t, t0 + 1);
  const cmax = Math.max(1, ...pts.map((p) => p.ci).filter((v) => v != null));
  // The history keeps counters; the rate is their difference over the time between samples.
  const rps = pts.map((p, i) => i === 0 ? 0 : Math.max(0, (p.n - pts[i - 1].n) / Math.max(1e-9, p.t - pts[i - 1].t)));
  const rmax = Math.max(1, ...rps);
  const X = (t) => side + (w - 2 * side) * (t - t0) / (t1 - t0);
  const Y = (f) => h - bottom - (h - top - bottom) * f;
  const colour = (m) => {
    const i = models.indexOf(m);
    return 'hsl(' + (i < 0 ? 0 : 120 * i / Math.max(1, models.length - 1)) + ',60%,40%)';
  };
  // The namespace comes from the element, so the page holds no URL at all.
  const ns = svg.namespaceURI;
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text) e.textContent = text;
    svg.appendChild(e);
    return e;
  };

  models.forEach((m, i) => {
    add('circle', {cx: side + 130 * i + 4, cy: 10, r: 4, fill: colour(m)});
    add('text', {x: side + 130 * i + 12, y: 14}, m);
  });
  pts.forEach((p, i) => {
    const bh = Y(0) - Y(rps[i] / rmax);
    add('rect', {x: X(p.t) - 1, y: Y(0) - bh, width: 2, height: bh, fill: '#8c959f', opacity: 0.5});
  });
  add('polyline', {
    points: pts.filter((p) => p.ci != null).map((p) => X(p.t) + ',' + Y(p.ci / cmax)).join(' '),
    fill: 'none', stroke: '#9a6700', 'stroke-width': 2,
  });
  pts.forEach((p) => add('circle', {class: 'pt', cx: X(p.t), cy: 30, r: 3, fill: colour(p.m)}));
  add('line', {x1: side, x2: w - side, y1: Y(0), y2: Y(0), stroke: '#8c959f'});
  add('text', {x: side, y: h - 8}, new Date(t0 * 1000).toISOString().slice(11, 19) + ' UTC');
  add('text', {x: w / 2 - 150, y: h - 8}, 'model served (dots) · gCO2/kWh (line) · requests/s (bars)');
  add('text', {x: w - side, y: h - 8, 'text-anchor': 'end'}, new Date(t1 * 1000).toISOString().slice(11, 19));
  add('text', {x: side - 4, y: top + 4, 'text-anchor': 'end'}, cmax.toFixed(0));
  add('text', {x: w - 2, y: top + 4, 'text-anchor': 'end'}, rmax.toFixed(1) + '/s');
}

async function refresh(first) {
  try {
    const [page, history] = await Promise.all([
      first ? null : fetch('/', {cache: 'no-store'}).then((r) => r.text()),
      fetch('/v1/history', {cache: 'no-store'}).then((r) => r.json()),
    ]);
    if (page) {
      const fresh = new DOMParser().parseFromString(page, 'text/html');
      document.querySelector('main').replaceWith(fresh.querySelector('main'));
      document.getElementById('updated').textContent = fresh.getElementById('updated').textContent;
    }
    for (const svg of document.querySelectorAll('svg[data-chart]')) chart(svg, history.points, svg.dataset.chart);
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    document.getElementById('updated').textContent = 'refresh failed: ' + e;
  }
}

refresh(true);
setInterval(refresh, 5000);

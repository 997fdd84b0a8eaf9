// The selected node's charts: traffic per step and load average over the
// chosen range, from the history API, with a cursor and a tooltip that
// follow the pointer.

import { api, ApiError, coalesced } from './api.js';
import { loaded } from './banner.js';
import { drawCalibrations, renderCalibrations } from './calibrations.js';
import { $, setText, setTitle, svg } from './dom.js';
import {
  exactBytes, formatBytes, formatDateTime, formatRate, parseCounter, serverNow, toPlot,
} from './format.js';
import { nodesLoader } from './nodes.js';
import {
  areaPath, byteScale, drawGrid, drawTimeAxis, linePath, loadScale, lonePoints, stepLabel, timeTicks,
} from './plot.js';
import { CHART_INTERVAL_MS, RANGES } from './settings.js';
import { state } from './state.js';
import { handleFailure } from './token.js';

export const chartLoader = coalesced(async () => {
  if (state.locked) return;
  const id = state.selected;
  if (!id) {
    state.history = null;
    renderChart();
    return;
  }
  const range = RANGES[state.range];
  // Up to the end of the step now in progress (`to` is exclusive).
  const to = (Math.floor(serverNow() / range.stepMs) + 1) * range.stepMs;
  const from = to - range.spanMs;
  const query = new URLSearchParams({
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
    step: range.step,
    // The chart draws the node's totals; the interfaces come with the
    // node's detail.
    interfaces: 'false',
  });
  let body;
  try {
    body = await api(`/api/v1/nodes/${encodeURIComponent(id)}/history?${query}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      nodesLoader.now();
      return;
    }
    handleFailure('the traffic history', error);
    return;
  }
  loaded('the traffic history');
  if (id !== state.selected) return;
  state.history = { range: state.range, body };
  renderChart();
}, CHART_INTERVAL_MS);

const chart = { geometry: null };

/** Draws the selected node's traffic (bytes per step) and its load. */
export function renderChart() {
  const box = $('chart');
  const loadBox = $('load-chart');
  for (const old of box.querySelectorAll('svg')) old.remove();
  loadBox.replaceChildren();
  $('chart-tooltip').hidden = true;
  chart.geometry = null;
  const node = state.nodes.get(state.selected);
  setText($('chart-node'), node ? node.name : '');
  const placeholder = $('chart-placeholder');
  const recorded = state.history;
  if (!node || !recorded) {
    box.dataset.state = node ? 'loading' : 'empty';
    placeholder.textContent = node ? 'Loading…' : 'Select a node in the table to see its traffic.';
    placeholder.hidden = false;
    setText($('chart-summary'), '');
    setText($('chart-step'), '');
    renderCalibrations([]);
    return;
  }
  placeholder.hidden = true;
  box.dataset.state = 'ready';
  box.dataset.nodeId = state.selected;

  const points = (recorded.body.points || []).map((p) => ({
    t: Date.parse(p.time),
    up: parseCounter(p.upload),
    down: parseCounter(p.download),
    heartbeats: p.heartbeats,
    load: p.load || null,
  })).filter((p) => !Number.isNaN(p.t));
  const range = RANGES[recorded.range];
  const stepSeconds = Number(recorded.body.stepSeconds) || range.stepMs / 1000;
  let upSum = 0n;
  let downSum = 0n;
  for (const p of points) {
    upSum += p.up ?? 0n;
    downSum += p.down ?? 0n;
  }
  setText($('chart-step'), `bytes per ${stepLabel(stepSeconds)}`);
  const summary = $('chart-summary');
  setText(summary, `${range.label}: ↓ ${formatBytes(downSum)} · ↑ ${formatBytes(upSum)}`);
  setTitle(summary, `download ${exactBytes(downSum)}\nupload ${exactBytes(upSum)}`);

  const width = Math.max(280, Math.floor(box.clientWidth));
  const narrow = width < 560;
  const margin = { left: narrow ? 58 : 70, right: 12, top: 10, bottom: 24 };
  const height = narrow ? 190 : 240;
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const t0 = points.length ? points[0].t : Date.now() - range.spanMs;
  const t1 = points.length > 1 ? points[points.length - 1].t : t0 + range.stepMs;
  const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotWidth;

  const maxBytes = points.reduce((m, p) => Math.max(m, toPlot(p.up), toPlot(p.down)), 0);
  const scale = byteScale(maxBytes);
  const y = (v) => margin.top + plotHeight - (v / scale.top) * plotHeight;

  const traffic = svg('svg', {
    width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg',
    role: 'img', 'aria-label': `Traffic of ${node.name}, bytes per ${stepSeconds / 60} min`,
  });
  drawGrid(traffic, scale.ticks, y, margin, width);
  drawTimeAxis(traffic, timeTicks(t0, t1, range.tickMs), x, margin.top + plotHeight, range, narrow);
  const bottom = (margin.top + plotHeight).toFixed(1);
  for (const [key, name] of [['down', 'download'], ['up', 'upload']]) {
    const series = points.map((p) => ({ t: p.t, v: toPlot(p[key]) }));
    svg('path', { d: areaPath(series, x, y, bottom), class: `area area-${name}` }, traffic);
    svg('path', { d: linePath(series, x, y), class: `line line-${name}` }, traffic);
  }
  const calibrations = Array.isArray(recorded.body.calibrations) ? recorded.body.calibrations : [];
  drawCalibrations(traffic, calibrations, x, margin, plotWidth, plotHeight);
  renderCalibrations(calibrations);
  const cursor = svg('line', { class: 'cursor', y1: margin.top, y2: margin.top + plotHeight, visibility: 'hidden' }, traffic);
  box.append(traffic);

  // Load on its own smaller chart, on the same time axis.
  const loadHeight = narrow ? 100 : 110;
  const loadPlot = loadHeight - margin.top - margin.bottom;
  const loads = points.map((p) => p.load);
  const maxLoad = loads.reduce((m, l) => (l ? Math.max(m, l.one, l.five, l.fifteen) : m), 0);
  const lscale = loadScale(maxLoad);
  const ly = (v) => margin.top + loadPlot - (v / lscale.top) * loadPlot;
  const load = svg('svg', {
    width, height: loadHeight, viewBox: `0 0 ${width} ${loadHeight}`, class: 'chart-svg',
    role: 'img', 'aria-label': `Load average of ${node.name}`,
  });
  drawGrid(load, lscale.ticks, ly, margin, width);
  drawTimeAxis(load, timeTicks(t0, t1, range.tickMs), x, margin.top + loadPlot, range, narrow);
  for (const [key, name] of [['fifteen', 'load15'], ['five', 'load5'], ['one', 'load1']]) {
    const series = points.map((p) => ({ t: p.t, v: p.load ? Number(p.load[key]) : null }));
    svg('path', { d: linePath(series, x, ly), class: `line line-${name}` }, load);
    lonePoints(load, series, x, ly, `dot dot-${name}`);
  }
  const loadCursor = svg('line', { class: 'cursor', y1: margin.top, y2: margin.top + loadPlot, visibility: 'hidden' }, load);
  loadBox.append(load);

  chart.geometry = { points, x, y, margin, plotWidth, cursor, loadCursor, stepSeconds, t0, t1 };
}

export function onChartPointer(event) {
  const g = chart.geometry;
  if (!g || g.points.length === 0) return;
  const rect = $('chart').getBoundingClientRect();
  const px = event.clientX - rect.left;
  const t = g.t0 + ((px - g.margin.left) / g.plotWidth) * (g.t1 - g.t0);
  let nearest = g.points[0];
  for (const p of g.points) if (Math.abs(p.t - t) < Math.abs(nearest.t - t)) nearest = p;
  const cx = g.x(nearest.t).toFixed(1);
  for (const line of [g.cursor, g.loadCursor]) {
    line.setAttribute('x1', cx);
    line.setAttribute('x2', cx);
    line.setAttribute('visibility', 'visible');
  }
  const tip = $('chart-tooltip');
  const rate = (v) => (v === null ? '' : ` (${formatRate(v / BigInt(Math.max(1, g.stepSeconds)))})`);
  const load = nearest.load
    ? `${Number(nearest.load.one).toFixed(2)} · ${Number(nearest.load.five).toFixed(2)} · ${Number(nearest.load.fifteen).toFixed(2)}`
    : '—';
  const lines = [
    ['', formatDateTime(nearest.t)],
    ['↓', `${formatBytes(nearest.down)}${rate(nearest.down)}`],
    ['↑', `${formatBytes(nearest.up)}${rate(nearest.up)}`],
    ['load', load],
  ];
  tip.replaceChildren(...lines.map(([key, text]) => {
    const row = document.createElement('div');
    if (key) {
      const k = document.createElement('span');
      k.className = 'tip-key';
      k.textContent = key;
      row.append(k, ` ${text}`);
    } else {
      row.className = 'tip-time';
      row.textContent = text;
    }
    return row;
  }));
  tip.hidden = false;
  // Right of the cursor where it fits, else left of it.
  const at = Number(cx);
  const fitsRight = at + 12 + tip.offsetWidth <= rect.width;
  tip.style.left = `${fitsRight ? at + 12 : Math.max(0, at - tip.offsetWidth - 12)}px`;
  tip.style.top = `${g.margin.top}px`;
}

export function hideChartPointer() {
  const g = chart.geometry;
  $('chart-tooltip').hidden = true;
  if (!g) return;
  for (const line of [g.cursor, g.loadCursor]) line.setAttribute('visibility', 'hidden');
}

// Drawing pieces of the charts, as SVG: value scales and their ticks, time
// ticks, lines, areas and lone points, the grid and the time axis.

import { svg } from './dom.js';
import { dayFormat, timeFormat, UNITS } from './format.js';

/** A round scale for byte values: the top of the axis and its ticks. */
export function byteScale(max) {
  let unit = 0;
  while (unit < UNITS.length - 1 && max >= 1024 ** (unit + 1)) unit += 1;
  const base = 1024 ** unit;
  const scaled = Math.max(max / base, unit === 0 ? 4 : 0.004);
  const raw = scaled / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
  if (unit === 0) step = Math.max(1, Math.ceil(step));
  const top = Math.ceil(scaled / step - 1e-9) * step;
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (step % 1 ? 1 : 0);
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    ticks.push({ value: v * base, label: `${v.toFixed(Math.min(digits, 3))} ${UNITS[unit]}` });
  }
  return { top: top * base, ticks };
}

export function loadScale(max) {
  const top = max <= 1 ? 1 : max <= 2 ? 2 : max <= 4 ? 4 : Math.ceil(max / 4) * 4;
  const ticks = [0, top / 2, top].map((v) => ({ value: v, label: v.toFixed(top < 4 ? 1 : 0) }));
  return { top, ticks };
}

/** Time ticks at round local times. */
export function timeTicks(t0, t1, tickMs) {
  const ticks = [];
  const offset = new Date(t0).getTimezoneOffset() * 60e3;
  for (let t = Math.ceil((t0 - offset) / tickMs) * tickMs + offset; t <= t1; t += tickMs) {
    ticks.push(t);
  }
  return ticks;
}

/** An SVG path through the points, broken where a value is missing. */
export function linePath(points, x, y) {
  let d = '';
  let pen = false;
  for (const p of points) {
    if (p.v === null) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
    pen = true;
  }
  return d;
}

/** Dots for the points that have no neighbour to draw a line to. */
export function lonePoints(parent, points, x, y, className) {
  points.forEach((p, i) => {
    const alone = p.v !== null
      && (i === 0 || points[i - 1].v === null)
      && (i === points.length - 1 || points[i + 1].v === null);
    if (alone) svg('circle', { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5, class: className }, parent);
  });
}

export function areaPath(points, x, y, bottom) {
  if (points.length === 0) return '';
  const line = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join('L');
  const first = x(points[0].t).toFixed(1);
  const last = x(points[points.length - 1].t).toFixed(1);
  return `M${first},${bottom}L${line}L${last},${bottom}Z`;
}

export function stepLabel(seconds) {
  if (seconds % 86400 === 0) return seconds === 86400 ? 'day' : `${seconds / 86400} days`;
  if (seconds % 3600 === 0) return seconds === 3600 ? 'hour' : `${seconds / 3600} hours`;
  if (seconds % 60 === 0) return seconds === 60 ? 'minute' : `${seconds / 60} minutes`;
  return `${seconds} s`;
}

export function drawGrid(parent, ticks, y, margin, width) {
  for (const tick of ticks) {
    const ty = y(tick.value).toFixed(1);
    svg('line', { x1: margin.left, x2: width - margin.right, y1: ty, y2: ty, class: tick.value === 0 ? 'axis' : 'grid' }, parent);
    const label = svg('text', { x: margin.left - 8, y: ty, class: 'tick tick-y' }, parent);
    label.textContent = tick.label;
  }
}

export function drawTimeAxis(parent, ticks, x, bottom, range, narrow) {
  const every = narrow && ticks.length > 4 ? 2 : 1;
  ticks.forEach((t, i) => {
    if (i % every) return;
    const label = svg('text', { x: x(t).toFixed(1), y: bottom + 16, class: 'tick tick-x' }, parent);
    label.textContent = range.tickMs >= 86400e3 ? dayFormat.format(new Date(t)) : timeFormat.format(new Date(t));
  });
}

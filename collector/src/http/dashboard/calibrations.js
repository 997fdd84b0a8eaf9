// The calibrations of the chart's range: a marker on the traffic chart at
// each one, and the list under it (who, why, what changed).

import { $, svg } from './dom.js';
import { formatBytes, formatDateTime, parseCounter } from './format.js';

const CALIBRATED = [
  ['totalDownload', 'total ↓'], ['totalUpload', 'total ↑'],
  ['periodDownload', 'period ↓'], ['periodUpload', 'period ↑'],
];

/** What a calibration changed: "total ↓ 1.00 KiB → 2.00 KiB; …". */
function calibrationChanges(calibration) {
  const changes = [];
  for (const [field, label] of CALIBRATED) {
    const before = parseCounter(calibration.before && calibration.before[field]);
    const after = parseCounter(calibration.after && calibration.after[field]);
    if (before !== after) changes.push(`${label} ${formatBytes(before)} → ${formatBytes(after)}`);
  }
  return changes.join('; ') || 'no change';
}

/** A marker on the traffic chart at each calibration's time. */
export function drawCalibrations(parent, calibrations, x, margin, plotWidth, plotHeight) {
  for (const calibration of calibrations) {
    const at = Date.parse(calibration.at || '');
    if (Number.isNaN(at)) continue;
    const cx = Math.min(margin.left + plotWidth, Math.max(margin.left, x(at))).toFixed(1);
    const mark = svg('g', { class: 'calibration-mark', 'data-calibration-id': calibration.id }, parent);
    svg('line', { x1: cx, x2: cx, y1: margin.top, y2: margin.top + plotHeight }, mark);
    svg('path', { d: `M${cx},${margin.top + 7}l-5,-7h10z` }, mark);
    const title = svg('title', {}, mark);
    title.textContent = `Calibrated ${formatDateTime(at)} by ${calibration.actor}: ${calibration.reason}\n${calibrationChanges(calibration)}`;
  }
}

/** The calibrations of the chart's range, newest first, under the chart. */
export function renderCalibrations(calibrations) {
  const items = [...calibrations].reverse().map((calibration) => {
    const item = document.createElement('li');
    item.dataset.calibrationId = String(calibration.id);
    const when = document.createElement('span');
    when.className = 'event-time';
    when.textContent = formatDateTime(Date.parse(calibration.at || ''));
    const who = document.createElement('span');
    who.className = 'event-title';
    who.textContent = `${calibration.actor}: ${calibration.reason}`;
    const what = document.createElement('span');
    what.className = 'event-detail';
    what.textContent = calibrationChanges(calibration);
    item.append(when, who, what);
    return item;
  });
  $('calibrations-list').replaceChildren(...items);
  $('calibrations').hidden = items.length === 0;
}

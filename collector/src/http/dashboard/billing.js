// The selected node's billing period (usage, quota, forecast, rates and the
// meter with its thresholds) and its latest quota events.

import { api, ApiError, coalesced } from './api.js';
import { loaded } from './banner.js';
import { $, element, setText, setTitle, showBytes } from './dom.js';
import { formatBytes, formatDateTime, formatRate, parseCounter } from './format.js';
import { QUOTA_EVENTS_LIMIT } from './settings.js';
import { state } from './state.js';
import { handleFailure } from './token.js';

const MODE_LABELS = {
  sum: 'billed on upload + download',
  max: 'billed on the larger direction',
  upload: 'billed on upload',
  download: 'billed on download',
  p95: 'billed on the 95th percentile rate',
};

/** The node's latest quota events. */
export const quotaLoader = coalesced(async () => {
  if (state.locked) return;
  const id = state.selected;
  if (!id) {
    state.quotaEvents = null;
    renderQuotaEvents();
    return;
  }
  let events = [];
  try {
    const body = await api(`/api/v1/nodes/${encodeURIComponent(id)}/quota-events?limit=${QUOTA_EVENTS_LIMIT}`);
    events = body.events || [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      handleFailure('the quota events', error);
      return;
    }
  }
  loaded('the quota events');
  if (id !== state.selected) return;
  state.quotaEvents = { id, events };
  renderQuotaEvents();
}, 1000);

export function renderBilling(billing) {
  const card = $('billing-card');
  const period = billing && billing.period;
  card.hidden = !period;
  if (!period) return;
  const settings = billing.settings || {};
  const rate = settings.mode === 'p95';
  setText($('billing-mode'), MODE_LABELS[settings.mode] || settings.mode || '');
  const start = formatDateTime(Date.parse(period.start || ''));
  setText($('billing-period'), period.end
    ? `${start} → ${formatDateTime(Date.parse(period.end))}`
    : `since ${start} (ends on request)`);
  const usage = parseCounter(period.usage);
  const quota = parseCounter(period.quota);
  const forecast = parseCounter(period.forecast);
  showBytes('billing-usage', usage, { rate });
  showBytes('billing-quota', quota, { rate, none: 'none' });
  showBytes('billing-forecast', forecast, { rate });
  if (forecast === null) setTitle($('billing-forecast'), 'None: the period has no end (it ends on request)');
  showBytes('billing-download', parseCounter(period.download));
  showBytes('billing-upload', parseCounter(period.upload));
  const p95 = parseCounter(period.p95Rate);
  const peak = parseCounter(period.peakRate);
  setText($('billing-rates'), `${formatRate(p95)} · ${formatRate(peak)}`);
  setTitle($('billing-rates'), `95th percentile ${p95} bytes per second\npeak ${peak} bytes per second`);

  const meter = $('billing-meter');
  const percent = typeof period.percent === 'number' ? period.percent : null;
  meter.hidden = quota === null || quota <= 0n || percent === null;
  if (meter.hidden) return;
  const thresholds = (settings.thresholds || []).filter((t) => Number.isFinite(t) && t > 0 && t <= 100);
  const fill = $('billing-fill');
  fill.style.width = `${Math.min(100, Math.max(0, percent))}%`;
  const reached = thresholds.filter((t) => percent >= t);
  fill.className = `meter-fill${percent >= 100 ? ' meter-over' : reached.length ? ' meter-warn' : ''}`;
  const label = $('billing-percent');
  setText(label, `${percent.toFixed(2)} % of the quota`);
  label.dataset.percent = String(percent);
  const track = fill.parentElement;
  for (const tick of track.querySelectorAll('.meter-tick')) tick.remove();
  for (const t of thresholds) {
    const tick = element('span', 'meter-tick');
    tick.style.left = `${t}%`;
    tick.title = `${t} % threshold`;
    track.append(tick);
  }
  const mark = $('billing-forecast-mark');
  mark.hidden = forecast === null;
  if (forecast !== null) {
    const share = Number((forecast * 10000n) / quota) / 100;
    mark.style.left = `${Math.min(100, share)}%`;
    mark.title = `forecast: ${share.toFixed(2)} % of the quota at the period's end`;
  }
}

export function renderQuotaEvents() {
  const known = state.quotaEvents && state.quotaEvents.id === state.selected ? state.quotaEvents.events : [];
  const node = state.nodes.get(state.selected);
  const current = node ? Date.parse(node.traffic.periodStart || '') : NaN;
  const items = known.map((event) => {
    const item = document.createElement('li');
    item.dataset.threshold = String(event.threshold);
    const now = Date.parse(event.periodStart || '') === current;
    item.dataset.current = String(now);
    const rate = event.mode === 'p95';
    const unit = (v) => (rate ? formatRate(parseCounter(v)) : formatBytes(parseCounter(v)));
    const title = element('span', `event-title${Number(event.threshold) >= 100 ? ' event-over' : ''}`,
      `${event.threshold} % reached`);
    const when = element('span', 'event-time', formatDateTime(Date.parse(event.at || '')));
    const detail = element('span', 'event-detail',
      `${unit(event.usage)} of ${unit(event.quota)}${now ? '' : ' · an earlier period'}`);
    item.append(when, title, detail);
    return item;
  });
  $('quota-events').replaceChildren(...items);
  $('quota-card').hidden = items.length === 0;
}

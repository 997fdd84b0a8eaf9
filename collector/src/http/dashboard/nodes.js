// The node table and the summary above it: one row per node in the API's
// order, updated in place (batched when events come fast), and the loader of
// the node list, which also re-renders the selected node's panes.

import { renderAnomalies } from './anomalies.js';
import { api, coalesced } from './api.js';
import { updateClockBadge, updateQuotaBadge, updateStaleBadge } from './badges.js';
import { loaded } from './banner.js';
import { renderQuotaEvents } from './billing.js';
import { renderChart } from './chart.js';
import { renderDetail } from './detail.js';
import { $, flash, setText, setTitle } from './dom.js';
import { ago, exactBytes, formatBytes, formatDateTime } from './format.js';
import { select } from './selection.js';
import { parseFamilies, parseTraffic, state, TRAFFIC_FIELDS } from './state.js';
import { handleFailure } from './token.js';

export const nodesLoader = coalesced(async () => {
  if (state.locked) return;
  let body;
  try {
    body = await api('/api/v1/nodes');
  } catch (error) {
    handleFailure('the nodes', error);
    return;
  }
  loaded('the nodes');
  const fresh = new Map();
  for (const node of body.nodes || []) {
    const known = state.nodes.get(node.id);
    const parsed = {
      ...node, traffic: parseTraffic(node.traffic), families: parseFamilies(node.families),
    };
    // An event may have brought newer figures while the list was on its way.
    if (known && Date.parse(known.lastSeen || '') > Date.parse(node.lastSeen || '')) {
      parsed.lastSeen = known.lastSeen;
      parsed.load = known.load;
      parsed.traffic = known.traffic;
      parsed.online = known.online;
    }
    fresh.set(node.id, parsed);
  }
  for (const id of state.nodes.keys()) if (!fresh.has(id)) state.gone.add(id);
  state.nodes = fresh;
  state.order = [...fresh.keys()];
  state.loaded = true;
  for (const id of state.order) dirty.add(id);
  renderNodes();
  if (!state.selected || !fresh.has(state.selected)) {
    select(state.order.length ? state.order[0] : null, { scroll: false });
  } else {
    renderChart();
    renderDetail();
    renderQuotaEvents();
  }
  renderAnomalies();
}, 1000);

/** Rows waiting for their new figures to be drawn. */
const dirty = new Set();
let flushTimer = null;

export function markDirty(id) {
  dirty.add(id);
  if (flushTimer === null) {
    flushTimer = setTimeout(() => {
      flushTimer = null;
      renderNodes();
    }, 50);
  }
}

export const rows = new Map();
/** row → its cells by field, to spare a query per figure. */
const rowCells = new WeakMap();

function cell(row, field) {
  return rowCells.get(row)[field];
}

function createRow(id) {
  const row = document.createElement('tr');
  row.dataset.nodeId = id;
  row.tabIndex = 0;
  const name = document.createElement('th');
  name.scope = 'row';
  name.dataset.field = 'name';
  name.className = 'col-name';
  const title = document.createElement('span');
  title.className = 'node-name';
  const host = document.createElement('span');
  host.className = 'node-host';
  name.append(title, host);
  row.append(name);
  const fields = [
    ['status', ''], ['lastSeen', ''], ['load1', 'num'], ['load5', 'num'], ['load15', 'num'],
    ['totalUpload', 'num'], ['totalDownload', 'num'], ['periodUpload', 'num'],
    ['periodDownload', 'num'],
  ];
  for (const [field, className] of fields) {
    const td = document.createElement('td');
    td.dataset.field = field;
    if (className) td.className = className;
    row.append(td);
  }
  const cells = {};
  for (const element of row.children) cells[element.dataset.field] = element;
  rowCells.set(row, cells);
  const badge = document.createElement('span');
  badge.className = 'badge';
  const quota = document.createElement('span');
  quota.className = 'badge badge-quota';
  quota.dataset.field = 'quota';
  quota.hidden = true;
  const stale = document.createElement('span');
  stale.className = 'badge badge-stale';
  stale.dataset.field = 'stale';
  stale.hidden = true;
  const clock = document.createElement('span');
  clock.className = 'badge badge-clock';
  clock.dataset.field = 'clock';
  clock.hidden = true;
  cell(row, 'status').append(badge, quota, stale, clock);
  row.addEventListener('click', () => select(id, { scroll: true }));
  row.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      select(id, { scroll: true });
    }
  });
  return row;
}

function updateRow(row, node) {
  const name = cell(row, 'name');
  setText(name.firstChild, node.name);
  setText(name.lastChild, node.hostname || '');
  const badge = cell(row, 'status').firstChild;
  const status = node.online ? 'online' : 'offline';
  setText(badge, status);
  badge.className = `badge badge-${status}`;
  row.dataset.status = status;
  const [, quota, stale, clock] = cell(row, 'status').children;
  updateQuotaBadge(quota, node.quotaCrossed);
  updateStaleBadge(stale, node.stale);
  updateClockBadge(clock, node.clock);

  const lastSeen = cell(row, 'lastSeen');
  setText(lastSeen, ago(node.lastSeen));
  lastSeen.dataset.time = node.lastSeen || '';
  setTitle(lastSeen, node.lastSeen ? formatDateTime(Date.parse(node.lastSeen)) : 'no heartbeat yet');

  for (const [field, key] of [['load1', 'one'], ['load5', 'five'], ['load15', 'fifteen']]) {
    const value = node.load ? Number(node.load[key]) : NaN;
    setText(cell(row, field), Number.isFinite(value) ? value.toFixed(2) : '—');
  }

  const traffic = node.traffic || {};
  const since = traffic.periodStart
    ? `\nsince ${formatDateTime(Date.parse(traffic.periodStart))}`
    : '';
  for (const field of TRAFFIC_FIELDS) {
    const td = cell(row, field);
    const value = traffic[field] ?? null;
    const exact = value === null ? '' : value.toString();
    const changed = td.dataset.bytes !== undefined && td.dataset.bytes !== exact;
    td.dataset.bytes = exact;
    setText(td, formatBytes(value));
    setTitle(td, exactBytes(value) + (field.startsWith('period') ? since : ''));
    if (changed) flash(td);
  }
  row.setAttribute('aria-selected', String(row.dataset.nodeId === state.selected));
}

export function renderNodes() {
  const body = $('nodes-body');
  for (const id of dirty) {
    const node = state.nodes.get(id);
    if (!node) continue;
    let row = rows.get(id);
    if (!row) {
      row = createRow(id);
      rows.set(id, row);
    }
    updateRow(row, node);
  }
  dirty.clear();
  for (const [id, row] of rows) {
    if (!state.nodes.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  // A removed node leaves the ranking at once; the ranks close up at its
  // next refresh.
  for (const item of [...$('ranking').children]) {
    if (state.gone.has(item.dataset.nodeId)) item.remove();
  }
  // Keep the API's order; appending moves a row only when it is misplaced.
  let expected = body.firstElementChild;
  for (const id of state.order) {
    const row = rows.get(id);
    if (row !== expected) body.insertBefore(row, expected);
    else expected = expected.nextElementSibling;
  }
  $('nodes-empty').hidden = !state.loaded || state.order.length > 0;
  const online = state.order.filter((id) => state.nodes.get(id).online).length;
  setText($('nodes-count'), state.loaded ? `${state.order.length} enrolled` : '');
  renderSummary(online);
}

function renderSummary(online) {
  const total = state.order.length;
  setText($('stat-online'), state.loaded ? `${online} / ${total}` : '–');
  setText($('stat-offline'), state.loaded ? `${total - online} offline` : '');
  for (const field of TRAFFIC_FIELDS) {
    let sum = 0n;
    for (const node of state.nodes.values()) sum += node.traffic[field] ?? 0n;
    const element = $(`stat-${field}`);
    setText(element, state.loaded ? formatBytes(sum) : '–');
    setTitle(element, exactBytes(sum));
    element.dataset.bytes = sum.toString();
  }
  const loads = [...state.nodes.values()]
    .filter((node) => node.online && node.load && Number.isFinite(Number(node.load.one)))
    .map((node) => Number(node.load.one));
  const average = loads.length ? loads.reduce((a, b) => a + b, 0) / loads.length : null;
  setText($('stat-load'), average === null ? '–' : average.toFixed(2));
  setText($('stat-load-detail'), loads.length
    ? `over ${loads.length} online node${loads.length === 1 ? '' : 's'}`
    : 'no node online');
}

/** Keeps "last seen" true as time passes. */
export function tickLastSeen() {
  for (const row of rows.values()) {
    const lastSeen = cell(row, 'lastSeen');
    setText(lastSeen, ago(lastSeen.dataset.time));
  }
}

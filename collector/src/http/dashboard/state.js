// What the page knows: the nodes (their counters as BigInt), the selection,
// the chart's range and the ranking's choice (kept in localStorage), the
// selected node's details, the held anomalies; and turning the API's
// traffic and family objects into that form.

import { parseCounter } from './format.js';
import { PREFS_KEY, RANGES } from './settings.js';

export const state = {
  /** id → node as the API shows it, traffic counters parsed to BigInt. */
  nodes: new Map(),
  /** Node ids in the API's order (name, id). */
  order: [],
  loaded: false,
  selected: null,
  range: '1h',
  ranking: { by: 'total', direction: 'both' },
  history: null,
  locked: false,
  /** Ids of nodes removed while the page was open. */
  gone: new Set(),
  /** The selected node's interfaces and billing: {id, interfaces, billing}. */
  detail: null,
  /** The selected node's quota events: {id, events}. */
  quotaEvents: null,
  /** Held anomalies of the whole fleet, newest first. */
  anomalies: [],
};

export function loadPrefs() {
  try {
    const prefs = JSON.parse(localStorage.getItem(PREFS_KEY) || '{}');
    if (RANGES[prefs.range]) state.range = prefs.range;
    if (['total', 'period', 'window'].includes(prefs.by)) state.ranking.by = prefs.by;
    if (['both', 'upload', 'download'].includes(prefs.direction)) {
      state.ranking.direction = prefs.direction;
    }
  } catch {
    // No preferences.
  }
  const match = /(?:^|[#&])node=([^&]+)/.exec(location.hash);
  if (match) state.selected = decodeURIComponent(match[1]);
}

export function savePrefs() {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify({ range: state.range, ...state.ranking }));
  } catch {
    // Storage disabled.
  }
}

export const TRAFFIC_FIELDS = ['totalUpload', 'totalDownload', 'periodUpload', 'periodDownload'];

/** The API's traffic object with its counters as BigInt. */
export function parseTraffic(traffic, previous) {
  const parsed = { ...(previous || {}) };
  if (!traffic) return parsed;
  for (const field of TRAFFIC_FIELDS) {
    if (field in traffic) parsed[field] = parseCounter(traffic[field]);
  }
  if (traffic.periodStart) parsed.periodStart = traffic.periodStart;
  return parsed;
}

export const FAMILIES = ['ipv4', 'ipv6'];

/** The API's `families` object with its counters as BigInt; null without one. */
export function parseFamilies(families) {
  if (!families) return null;
  const parsed = {};
  for (const family of FAMILIES) {
    const f = families[family] || {};
    parsed[family] = { upload: parseCounter(f.upload), download: parseCounter(f.download) };
  }
  return parsed;
}

/**
 * Takes an event's or the API's traffic for `node`; a new period start
 * means a new period, whose quota no threshold was crossed of yet.
 */
export function applyTraffic(node, traffic) {
  const before = Date.parse(node.traffic.periodStart || '');
  node.traffic = parseTraffic(traffic, node.traffic);
  const after = Date.parse(node.traffic.periodStart || '');
  if (!Number.isNaN(before) && !Number.isNaN(after) && before !== after) node.quotaCrossed = null;
}

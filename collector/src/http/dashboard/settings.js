// The dashboard's tunables in one place: storage keys, how often each view
// may be fetched, list lengths, the event stream's timeouts and backoff, and
// the chart's time ranges.

export const TOKEN_KEY = 'tally.readToken';
export const PREFS_KEY = 'tally.dashboard';
/** Least time between two ranking requests caused by heartbeats. */
export const RANKING_INTERVAL_MS = 5000;
/** Least time between two history requests caused by heartbeats. */
export const CHART_INTERVAL_MS = 5000;
/** Least time between two requests for the selected node's details. */
export const DETAIL_INTERVAL_MS = 5000;
/** Least time between two requests for the held traffic. */
export const ANOMALIES_INTERVAL_MS = 2000;
/** Most held anomalies and quota events listed. */
export const ANOMALIES_LIMIT = 100;
export const QUOTA_EVENTS_LIMIT = 10;
/** How often the node list is fetched anew (online/offline status). */
export const NODES_REFRESH_MS = 30000;
/** A stream silent for this long (keep-alives come every 15 s) is dead. */
export const STREAM_STALL_MS = 45000;
export const BACKOFF_MIN_MS = 1000;
export const BACKOFF_MAX_MS = 30000;
export const RANKING_LIMIT = 10;
/** Time ranges of the chart: span, step (a multiple of 60 s) and axis ticks. */
export const RANGES = {
  '1h': { spanMs: 3600e3, step: '1m', stepMs: 60e3, tickMs: 10 * 60e3, label: 'last hour' },
  '6h': { spanMs: 6 * 3600e3, step: '5m', stepMs: 300e3, tickMs: 3600e3, label: 'last 6 hours' },
  '24h': { spanMs: 24 * 3600e3, step: '15m', stepMs: 900e3, tickMs: 4 * 3600e3, label: 'last 24 hours' },
  '7d': { spanMs: 7 * 86400e3, step: '1h', stepMs: 3600e3, tickMs: 86400e3, label: 'last 7 days' },
};

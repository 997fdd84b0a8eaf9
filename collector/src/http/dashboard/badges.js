// The badges in a node's status cell besides online/offline: quota
// threshold crossed this period, heartbeats answered STALE, clock skewed.

import { setText, setTitle } from './dom.js';
import { formatOffset } from './format.js';

/** The badge of the highest quota threshold crossed this period. */
export function updateQuotaBadge(badge, crossed) {
  const threshold = Number.isInteger(crossed) ? crossed : null;
  badge.hidden = threshold === null;
  badge.dataset.threshold = threshold === null ? '' : String(threshold);
  setText(badge, threshold === null ? '' : `quota ${threshold} %`);
  badge.className = `badge badge-quota${threshold !== null && threshold >= 100 ? ' badge-quota-over' : ''}`;
  setTitle(badge, threshold === null ? '' : `Usage crossed ${threshold} % of the quota in this period`);
}

/** The badge of a node whose heartbeats are thrown away (STALE in a row). */
export function updateStaleBadge(badge, stale) {
  const flagged = Boolean(stale && stale.flagged);
  badge.hidden = !flagged;
  setText(badge, flagged ? `stale ×${stale.run}` : '');
  const reason = flagged && stale.lastReason ? ` (${stale.lastReason.replaceAll('_', ' ')})` : '';
  setTitle(badge, flagged
    ? `Its last ${stale.run} heartbeats were answered STALE${reason}: nothing it sends is counted. See the agent's log.`
    : '');
}

/** The badge of a node whose clock is further off than the collector allows. */
export function updateClockBadge(badge, clock) {
  const skewed = Boolean(clock && clock.skewed && Number.isFinite(clock.offsetMs));
  badge.hidden = !skewed;
  setText(badge, skewed ? `clock ${formatOffset(clock.offsetMs)}` : '');
  setTitle(badge, skewed
    ? `The node's clock is ${formatOffset(clock.offsetMs)} off the collector's (${clock.offsetMs > 0 ? 'ahead' : 'behind'}). Its traffic counts all the same; check its time synchronisation.`
    : '');
}

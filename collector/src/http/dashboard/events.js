// What each live event changes: a heartbeat, reset, calibration or decided
// anomaly moves a node's figures; a quota event its badge; a stale event its
// stale badge; a node added or removed the list; a resync reloads all.

import { anomaliesLoader } from './anomalies.js';
import { quotaLoader } from './billing.js';
import { chartLoader } from './chart.js';
import { detailLoader } from './detail.js';
import { markDirty, nodesLoader, renderNodes } from './nodes.js';
import { rankingLoader } from './ranking.js';
import { select } from './selection.js';
import { applyTraffic, state } from './state.js';

/** Everything the page shows, fetched anew. */
export function refreshAll() {
  nodesLoader.now();
  rankingLoader.now();
  chartLoader.now();
  detailLoader.now();
  quotaLoader.now();
  anomaliesLoader.now();
}

export function onEvent(event) {
  let payload;
  try {
    payload = JSON.parse(event.data);
  } catch {
    return;
  }
  switch (event.type) {
    case 'heartbeat':
    case 'period_reset':
    case 'calibration':
    case 'anomaly': {
      // An anomaly was decided: it leaves the held list.
      if (event.type === 'anomaly') anomaliesLoader.schedule();
      const node = state.nodes.get(payload.nodeId);
      if (!node) {
        nodesLoader.schedule();
        return;
      }
      applyTraffic(node, payload.traffic);
      if (event.type === 'heartbeat') {
        node.online = true;
        if (payload.lastSeen) node.lastSeen = payload.lastSeen;
        if (payload.load) node.load = payload.load;
        // Counted again: a run of stale heartbeats is over.
        if (node.stale) node.stale = { ...node.stale, run: 0, flagged: false };
      }
      markDirty(node.id);
      rankingLoader.schedule();
      if (node.id === state.selected) {
        chartLoader.schedule();
        detailLoader.schedule();
        if (event.type === 'period_reset') quotaLoader.schedule();
      }
      break;
    }
    case 'quota': {
      const node = state.nodes.get(payload.nodeId);
      if (!node) {
        nodesLoader.schedule();
        return;
      }
      // Crossed in the node's current period: the row's badge shows it.
      const threshold = Number(payload.threshold);
      const start = Date.parse(payload.periodStart || '');
      if (Number.isInteger(threshold) && !Number.isNaN(start)
          && start === Date.parse(node.traffic.periodStart || '')
          && !(node.quotaCrossed >= threshold)) {
        node.quotaCrossed = threshold;
        markDirty(node.id);
      }
      if (node.id === state.selected) {
        quotaLoader.now();
        detailLoader.schedule();
      }
      break;
    }
    case 'anomaly_held':
      anomaliesLoader.schedule();
      break;
    case 'stale': {
      const node = state.nodes.get(payload.nodeId);
      if (!node) {
        nodesLoader.schedule();
        return;
      }
      node.stale = {
        ...(node.stale || {}),
        run: Number(payload.run),
        flagged: true,
        heartbeats: payload.staleHeartbeats,
        lastReason: payload.reason,
      };
      markDirty(node.id);
      // Another counter set is followed: fetch it (and the rest) anew.
      nodesLoader.schedule();
      break;
    }
    case 'nodes':
      if (payload.change === 'removed') {
        state.nodes.delete(payload.nodeId);
        state.gone.add(payload.nodeId);
        state.order = state.order.filter((id) => id !== payload.nodeId);
        if (state.selected === payload.nodeId) select(state.order[0] || null, { scroll: false });
        renderNodes();
      }
      nodesLoader.schedule();
      rankingLoader.schedule();
      break;
    case 'resync':
      refreshAll();
      break;
    default:
      break;
  }
}

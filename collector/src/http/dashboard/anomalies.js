// The fleet's held traffic: anomalies waiting for an admin to accept or
// discard them, not counted meanwhile.

import { api, ApiError, coalesced } from './api.js';
import { loaded } from './banner.js';
import { $, bytesCell, element, setText } from './dom.js';
import { ago, formatDateTime, parseCounter } from './format.js';
import { select } from './selection.js';
import { ANOMALIES_INTERVAL_MS, ANOMALIES_LIMIT } from './settings.js';
import { state } from './state.js';
import { handleFailure } from './token.js';

/** The fleet's held anomalies. */
export const anomaliesLoader = coalesced(async () => {
  if (state.locked) return;
  let anomalies = [];
  try {
    const body = await api(`/api/v1/anomalies?status=held&limit=${ANOMALIES_LIMIT}`);
    anomalies = body.anomalies || [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      handleFailure('the held traffic', error);
      return;
    }
  }
  loaded('the held traffic');
  state.anomalies = anomalies;
  renderAnomalies();
}, ANOMALIES_INTERVAL_MS);

export function renderAnomalies() {
  const anomalies = state.anomalies || [];
  $('anomalies').hidden = anomalies.length === 0;
  setText($('anomalies-count'), anomalies.length
    ? `${anomalies.length}${anomalies.length >= ANOMALIES_LIMIT ? '+' : ''} held, not counted`
    : '');
  const rows = anomalies.map((anomaly) => {
    const row = document.createElement('tr');
    row.dataset.anomalyId = String(anomaly.id);
    row.dataset.nodeId = anomaly.nodeId;
    row.tabIndex = 0;
    const node = state.nodes.get(anomaly.nodeId);
    const name = element('th', 'col-name', node ? node.name : anomaly.nodeId);
    name.scope = 'row';
    name.dataset.field = 'node';
    const iface = element('td', '', anomaly.interface);
    iface.dataset.field = 'interface';
    const detected = Date.parse(anomaly.detectedAt || '');
    const when = element('td', 'muted', formatDateTime(detected));
    when.dataset.field = 'detectedAt';
    when.title = ago(anomaly.detectedAt);
    const id = element('td', 'num muted', String(anomaly.id));
    id.dataset.field = 'id';
    row.append(name, iface,
      bytesCell('download', parseCounter(anomaly.download)),
      bytesCell('upload', parseCounter(anomaly.upload)),
      when, id);
    row.addEventListener('click', () => select(anomaly.nodeId, { scroll: true }));
    row.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') select(anomaly.nodeId, { scroll: true });
    });
    return row;
  });
  $('anomalies-body').replaceChildren(...rows);
}

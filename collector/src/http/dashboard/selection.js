// Selecting a node (a row, a ranking entry, a held anomaly, or the first
// node): marks it, keeps it in the URL's #node=, and loads its chart,
// details and quota events.

import { quotaLoader, renderQuotaEvents } from './billing.js';
import { chartLoader, renderChart } from './chart.js';
import { detailLoader, renderDetail } from './detail.js';
import { $ } from './dom.js';
import { rows } from './nodes.js';
import { state } from './state.js';

export function select(id, { scroll }) {
  const changed = id !== state.selected;
  state.selected = id;
  for (const [rowId, row] of rows) row.setAttribute('aria-selected', String(rowId === id));
  for (const item of $('ranking').children) {
    if (item.dataset.nodeId === id) item.setAttribute('aria-current', 'true');
    else item.removeAttribute('aria-current');
  }
  const hash = id ? `#node=${encodeURIComponent(id)}` : '';
  if (location.hash !== hash) {
    window.history.replaceState(null, '', `${location.pathname}${location.search}${hash}`);
  }
  if (changed) {
    state.history = null;
    state.detail = null;
    state.quotaEvents = null;
    renderChart();
    renderDetail();
    renderQuotaEvents();
    chartLoader.now();
    detailLoader.now();
    quotaLoader.now();
  }
  if (scroll && window.matchMedia('(max-width: 900px)').matches) {
    $('chart-card').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
}

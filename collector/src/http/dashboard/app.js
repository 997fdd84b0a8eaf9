// tally's dashboard: the node table (with a badge when a node crossed a
// quota threshold this period, when its heartbeats are answered STALE and
// nothing it sends counts, and when its clock is off), held traffic waiting for an admin, the
// traffic ranking, and the selected node's chart (with its calibrations),
// interfaces, IPv4/IPv6 split, billing period and quota events, kept live
// by the collector's event stream.
//
// Plain JavaScript modules, no build step, nothing loaded from elsewhere (the
// page's Content-Security-Policy forbids it): the page loads this file with
// <script type="module">, and the browser fetches what it imports from the
// collector, which serves a fixed list of them (collector/src/http/dashboard.rs).
// Counters arrive as decimal strings and are only ever handled as BigInt, so
// they stay exact above 2^53.
//
// This module wires the controls to the rest and starts the page. The others:
//   settings.js     tunables: intervals, limits, backoff, chart ranges
//   format.js       counters, bytes and rates, dates, ages, clock offsets as text
//   dom.js          small DOM and SVG helpers
//   api.js          requests with the read token, their errors, coalesced loaders
//   state.js        what the page knows, and the saved preferences
//   banner.js       what failed to load
//   token.js        the read token's screen; where failed loads go
//   connection.js   the live indicator; stopping and waking the stream
//   sse.js          the text/event-stream parser
//   stream.js       the event stream's loop, with reconnection
//   events.js       what each live event changes
//   nodes.js        the node table and the summary (badges.js: its badges)
//   selection.js    selecting a node
//   ranking.js      the traffic ranking
//   chart.js        the selected node's charts (plot.js: drawing,
//                   calibrations.js: the calibration markers and list)
//   detail.js       its interfaces, families, counter set
//   billing.js      its billing period and quota events
//   anomalies.js    the fleet's held traffic
//   diagnostics.js  errors and CSP violations, for the browser test (imported
//                   first, so that it listens before anything else runs)
// The panes call each other (the node list re-renders the selected node's
// panes; a pane whose node is gone reloads the node list), so some imports
// form cycles. ES modules allow that as long as what a module runs while it
// loads needs no module of its cycle: the modules only declare things (the
// loaders with api.js's coalesced, which imports none of the panes), and
// start() below, which runs once every module is loaded, sets everything
// going.

import { diagnostics } from './diagnostics.js';
import { anomaliesLoader } from './anomalies.js';
import { readToken, storeToken } from './api.js';
import { chartLoader, hideChartPointer, onChartPointer, renderChart } from './chart.js';
import { stopStream, wakeStream } from './connection.js';
import { detailLoader } from './detail.js';
import { $ } from './dom.js';
import { refreshAll } from './events.js';
import { formatBytes, parseCounter } from './format.js';
import { nodesLoader, tickLastSeen } from './nodes.js';
import { rankingLoader } from './ranking.js';
import { NODES_REFRESH_MS } from './settings.js';
import { SseParser } from './sse.js';
import { loadPrefs, savePrefs, state } from './state.js';
import { runStream } from './stream.js';
import { requireToken, unlock } from './token.js';

function bindControls() {
  $('auth-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('auth-token').value.trim();
    if (!token) return;
    $('auth-token').value = '';
    unlock(token);
  });
  $('forget-token').addEventListener('click', () => {
    storeToken(null);
    $('forget-token').hidden = true;
    stopStream();
    requireToken('');
  });
  const by = $('ranking-by');
  const direction = $('ranking-direction');
  by.value = state.ranking.by;
  direction.value = state.ranking.direction;
  for (const control of [by, direction]) {
    control.addEventListener('change', () => {
      state.ranking = { by: by.value, direction: direction.value };
      savePrefs();
      rankingLoader.now();
    });
  }
  for (const button of $('chart-range').querySelectorAll('button')) {
    button.setAttribute('aria-pressed', String(button.dataset.range === state.range));
    button.addEventListener('click', () => {
      state.range = button.dataset.range;
      savePrefs();
      for (const b of $('chart-range').querySelectorAll('button')) {
        b.setAttribute('aria-pressed', String(b === button));
      }
      state.history = null;
      renderChart();
      chartLoader.now();
    });
  }
  const box = $('chart');
  box.addEventListener('pointermove', onChartPointer);
  box.addEventListener('pointerleave', hideChartPointer);
  let width = box.clientWidth;
  new ResizeObserver(() => {
    if (box.clientWidth !== width) {
      width = box.clientWidth;
      renderChart();
    }
  }).observe(box);
  window.addEventListener('online', wakeStream);
}

function start() {
  loadPrefs();
  bindControls();
  $('forget-token').hidden = !readToken();
  setInterval(tickLastSeen, 1000);
  // Statuses turn offline, and time windows move, without any event.
  setInterval(() => {
    nodesLoader.schedule();
    rankingLoader.schedule();
    chartLoader.schedule();
    detailLoader.schedule();
    anomaliesLoader.schedule();
  }, NODES_REFRESH_MS);
  runStream();
}

// For the browser test and for curious people at the console.
window.tally = Object.freeze({
  formatBytes, parseCounter, SseParser, state, diagnostics, refreshAll,
});

start();

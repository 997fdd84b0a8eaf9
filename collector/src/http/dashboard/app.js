// tally's dashboard: the node table (with a badge when a node crossed a
// quota threshold this period, when its heartbeats are answered STALE and
// nothing it sends counts, and when its clock is off), held traffic waiting for an admin, the
// traffic ranking, and the selected node's chart (with its calibrations),
// interfaces, IPv4/IPv6 split, billing period and quota events, kept live
// by the collector's event stream.
//
// Plain JavaScript, no build step, nothing loaded from elsewhere (the page's
// Content-Security-Policy forbids it). Counters arrive as decimal strings and
// are only ever handled as BigInt, so they stay exact above 2^53.
'use strict';

(() => {
  // ---------------------------------------------------------------- settings

  const TOKEN_KEY = 'tally.readToken';
  const PREFS_KEY = 'tally.dashboard';
  /** Least time between two ranking requests caused by heartbeats. */
  const RANKING_INTERVAL_MS = 5000;
  /** Least time between two history requests caused by heartbeats. */
  const CHART_INTERVAL_MS = 5000;
  /** Least time between two requests for the selected node's details. */
  const DETAIL_INTERVAL_MS = 5000;
  /** Least time between two requests for the held traffic. */
  const ANOMALIES_INTERVAL_MS = 2000;
  /** Most held anomalies and quota events listed. */
  const ANOMALIES_LIMIT = 100;
  const QUOTA_EVENTS_LIMIT = 10;
  /** How often the node list is fetched anew (online/offline status). */
  const NODES_REFRESH_MS = 30000;
  /** A stream silent for this long (keep-alives come every 15 s) is dead. */
  const STREAM_STALL_MS = 45000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const RANKING_LIMIT = 10;
  /** Time ranges of the chart: span, step (a multiple of 60 s) and axis ticks. */
  const RANGES = {
    '1h': { spanMs: 3600e3, step: '1m', stepMs: 60e3, tickMs: 10 * 60e3, label: 'last hour' },
    '6h': { spanMs: 6 * 3600e3, step: '5m', stepMs: 300e3, tickMs: 3600e3, label: 'last 6 hours' },
    '24h': { spanMs: 24 * 3600e3, step: '15m', stepMs: 900e3, tickMs: 4 * 3600e3, label: 'last 24 hours' },
    '7d': { spanMs: 7 * 86400e3, step: '1h', stepMs: 3600e3, tickMs: 86400e3, label: 'last 7 days' },
  };
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // Problems the browser test looks at.
  const diagnostics = { errors: [], cspViolations: [] };
  window.addEventListener('error', (e) => diagnostics.errors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => diagnostics.errors.push(String(e.reason)));
  document.addEventListener('securitypolicyviolation', (e) =>
    diagnostics.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));

  // ---------------------------------------------------------- exact counters

  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB', 'ZiB', 'YiB'];

  /** A counter's decimal string as a BigInt; null when it is not one. */
  function parseCounter(text) {
    if (typeof text !== 'string' || !/^[0-9]{1,40}$/.test(text)) return null;
    return BigInt(text);
  }

  /**
   * Bytes in IEC units with three significant digits ("1.50 KiB",
   * "15.3 MiB", "512 B"), computed in BigInt: exact at any size.
   */
  function formatBytes(value) {
    let v = typeof value === 'bigint' ? value : parseCounter(value);
    if (v === null) return '—';
    const sign = v < 0n ? '-' : '';
    if (v < 0n) v = -v;
    if (v < 1024n) return `${sign}${v} B`;
    let unit = 1;
    let base = 1024n;
    while (unit < UNITS.length - 1 && v >= base * 1024n) {
      base *= 1024n;
      unit += 1;
    }
    for (;;) {
      const whole = v / base;
      const decimals = whole >= 100n ? 0 : whole >= 10n ? 1 : 2;
      const scale = 10n ** BigInt(decimals);
      // v / base rounded half up, with `decimals` digits.
      const scaled = (v * scale * 2n + base) / (base * 2n);
      if (scaled >= 1024n * scale && unit < UNITS.length - 1) {
        base *= 1024n;
        unit += 1;
        continue;
      }
      const integer = scaled / scale;
      const fraction = decimals ? `.${(scaled % scale).toString().padStart(decimals, '0')}` : '';
      return `${sign}${integer}${fraction} ${UNITS[unit]}`;
    }
  }

  /** The exact count for a tooltip. */
  function exactBytes(value) {
    return value === null ? 'unknown' : `${value} bytes`;
  }

  /** A BigInt as a Number for drawing (precision does not matter there). */
  function toPlot(value) {
    return value === null ? 0 : Number(value);
  }

  // ---------------------------------------------------------------- time

  /** Server clock minus ours, from the Date header, when they disagree. */
  let clockSkewMs = 0;

  function noteServerDate(response) {
    const date = Date.parse(response.headers.get('date') || '');
    if (Number.isNaN(date)) return;
    const skew = date - Date.now();
    clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  function serverNow() {
    return Date.now() + clockSkewMs;
  }

  const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric' });

  function formatDateTime(ms) {
    return Number.isNaN(ms) ? '' : dateTimeFormat.format(new Date(ms));
  }

  /** "just now", "42 s ago", "5 min ago", "3 h ago", "12 d ago". */
  function ago(timestamp) {
    const then = Date.parse(timestamp || '');
    if (Number.isNaN(then)) return 'never';
    const s = Math.floor((serverNow() - then) / 1000);
    if (s < 2) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  // ----------------------------------------------------- server-sent events

  /**
   * Incremental parser of a text/event-stream (the WHATWG rules): push
   * decoded text as it arrives, get back complete events.
   */
  class SseParser {
    constructor() {
      this.buffer = '';
      this.type = '';
      this.data = [];
      this.started = false;
      this.lastEventId = '';
      this.retryMs = null;
    }

    /** Feeds `text`; returns the events it completed ({type, data, id}). */
    push(text) {
      this.buffer += text;
      if (!this.started && this.buffer.length > 0) {
        this.started = true;
        if (this.buffer.charCodeAt(0) === 0xfeff) this.buffer = this.buffer.slice(1);
      }
      const events = [];
      let start = 0;
      for (;;) {
        let end = start;
        while (end < this.buffer.length && this.buffer[end] !== '\n' && this.buffer[end] !== '\r') {
          end += 1;
        }
        if (end >= this.buffer.length) break;
        let next = end + 1;
        if (this.buffer[end] === '\r') {
          // A CR at the end of what we have may be the first half of CRLF.
          if (next >= this.buffer.length) break;
          if (this.buffer[next] === '\n') next += 1;
        }
        const event = this.line(this.buffer.slice(start, end));
        if (event) events.push(event);
        start = next;
      }
      this.buffer = this.buffer.slice(start);
      return events;
    }

    line(line) {
      if (line === '') {
        const event = this.data.length
          ? { type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId }
          : null;
        this.type = '';
        this.data = [];
        return event;
      }
      if (line[0] === ':') return null;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'event') this.type = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
      else if (field === 'retry' && /^[0-9]+$/.test(value)) this.retryMs = Number(value);
      return null;
    }
  }

  // ------------------------------------------------------------- the API

  class AuthRequired extends Error {}

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  let memoryToken = null;

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch {
      return memoryToken;
    }
  }

  function storeToken(token) {
    memoryToken = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage disabled: the token lives as long as the page.
    }
  }

  function authHeaders() {
    const token = readToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /** The message of an error response (`{"error": {"code", "message"}}`). */
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch {
      // Not JSON: fall back to the status line.
    }
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  /** GET `path` as JSON; throws AuthRequired on 401 and ApiError otherwise. */
  async function api(path) {
    let response;
    try {
      response = await fetch(path, {
        headers: { Accept: 'application/json', ...authHeaders() },
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, 'the collector cannot be reached');
    }
    noteServerDate(response);
    if (response.status === 401) throw new AuthRequired(await errorMessage(response));
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response.json();
  }

  // ------------------------------------------------------------ page state

  const $ = (id) => document.getElementById(id);

  const state = {
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

  function loadPrefs() {
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

  function savePrefs() {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify({ range: state.range, ...state.ranking }));
    } catch {
      // Storage disabled.
    }
  }

  const TRAFFIC_FIELDS = ['totalUpload', 'totalDownload', 'periodUpload', 'periodDownload'];

  /** The API's traffic object with its counters as BigInt. */
  function parseTraffic(traffic, previous) {
    const parsed = { ...(previous || {}) };
    if (!traffic) return parsed;
    for (const field of TRAFFIC_FIELDS) {
      if (field in traffic) parsed[field] = parseCounter(traffic[field]);
    }
    if (traffic.periodStart) parsed.periodStart = traffic.periodStart;
    return parsed;
  }

  const FAMILIES = ['ipv4', 'ipv6'];

  /** The API's `families` object with its counters as BigInt; null without one. */
  function parseFamilies(families) {
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
  function applyTraffic(node, traffic) {
    const before = Date.parse(node.traffic.periodStart || '');
    node.traffic = parseTraffic(traffic, node.traffic);
    const after = Date.parse(node.traffic.periodStart || '');
    if (!Number.isNaN(before) && !Number.isNaN(after) && before !== after) node.quotaCrossed = null;
  }

  // -------------------------------------------------------------- banner

  /** What failed to load, by what it is: shown until it loads again. */
  const problems = new Map();

  function renderProblems() {
    const banner = $('banner');
    const text = [...problems].map(([what, message]) => `Could not load ${what}: ${message}`).join('\n');
    setText(banner, text);
    banner.hidden = !text;
  }

  function loaded(what) {
    if (problems.delete(what)) renderProblems();
  }

  function handleFailure(what, error) {
    if (error instanceof AuthRequired) {
      requireToken(error.message);
      return;
    }
    problems.set(what, error.message);
    renderProblems();
  }

  // ------------------------------------------------------ coalesced loads

  /**
   * Wraps an async loader so that calls coalesce: `schedule()` runs it at
   * most once per `intervalMs`, `now()` as soon as the running one ends.
   */
  function coalesced(load, intervalMs) {
    let last = 0;
    let timer = null;
    let running = false;
    let again = false;
    async function run() {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      last = Date.now();
      try {
        await load();
      } finally {
        running = false;
        if (again) {
          again = false;
          run();
        }
      }
    }
    return {
      schedule() {
        if (timer !== null) return;
        timer = setTimeout(run, Math.max(0, last + intervalMs - Date.now()));
      },
      now() {
        if (timer !== null) clearTimeout(timer);
        run();
      },
    };
  }

  // ---------------------------------------------------------------- nodes

  const nodesLoader = coalesced(async () => {
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

  function markDirty(id) {
    dirty.add(id);
    if (flushTimer === null) {
      flushTimer = setTimeout(() => {
        flushTimer = null;
        renderNodes();
      }, 50);
    }
  }

  const rows = new Map();
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

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function setTitle(element, title) {
    if (element.title !== title) element.title = title;
  }

  /** Briefly highlights a figure that changed. */
  function flash(element) {
    element.classList.remove('changed');
    void element.offsetWidth;
    element.classList.add('changed');
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

  /** The badge of the highest quota threshold crossed this period. */
  function updateQuotaBadge(badge, crossed) {
    const threshold = Number.isInteger(crossed) ? crossed : null;
    badge.hidden = threshold === null;
    badge.dataset.threshold = threshold === null ? '' : String(threshold);
    setText(badge, threshold === null ? '' : `quota ${threshold} %`);
    badge.className = `badge badge-quota${threshold !== null && threshold >= 100 ? ' badge-quota-over' : ''}`;
    setTitle(badge, threshold === null ? '' : `Usage crossed ${threshold} % of the quota in this period`);
  }

  /** The badge of a node whose heartbeats are thrown away (STALE in a row). */
  function updateStaleBadge(badge, stale) {
    const flagged = Boolean(stale && stale.flagged);
    badge.hidden = !flagged;
    setText(badge, flagged ? `stale ×${stale.run}` : '');
    const reason = flagged && stale.lastReason ? ` (${stale.lastReason.replaceAll('_', ' ')})` : '';
    setTitle(badge, flagged
      ? `Its last ${stale.run} heartbeats were answered STALE${reason}: nothing it sends is counted. See the agent's log.`
      : '');
  }

  /** The badge of a node whose clock is further off than the collector allows. */
  function updateClockBadge(badge, clock) {
    const skewed = Boolean(clock && clock.skewed && Number.isFinite(clock.offsetMs));
    badge.hidden = !skewed;
    setText(badge, skewed ? `clock ${formatOffset(clock.offsetMs)}` : '');
    setTitle(badge, skewed
      ? `The node's clock is ${formatOffset(clock.offsetMs)} off the collector's (${clock.offsetMs > 0 ? 'ahead' : 'behind'}). Its traffic counts all the same; check its time synchronisation.`
      : '');
  }

  /** A clock offset in ms, as a signed duration in its largest unit. */
  function formatOffset(ms) {
    const sign = ms < 0 ? '−' : '+';
    const abs = Math.abs(ms);
    const units = [[86400000, 'd'], [3600000, 'h'], [60000, 'min'], [1000, 's']];
    for (const [size, unit] of units) {
      if (abs >= size) return `${sign}${Math.round(abs / size)} ${unit}`;
    }
    return `${sign}${abs} ms`;
  }

  function renderNodes() {
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
  function tickLastSeen() {
    for (const row of rows.values()) {
      const lastSeen = cell(row, 'lastSeen');
      setText(lastSeen, ago(lastSeen.dataset.time));
    }
  }

  // -------------------------------------------------------------- ranking

  const rankingLoader = coalesced(async () => {
    if (state.locked) return;
    const { by, direction } = state.ranking;
    const query = new URLSearchParams({ by, direction, limit: String(RANKING_LIMIT) });
    if (by === 'window') query.set('window', '24h');
    let body;
    try {
      body = await api(`/api/v1/rankings?${query}`);
    } catch (error) {
      handleFailure('the ranking', error);
      return;
    }
    loaded('the ranking');
    if (body.by !== state.ranking.by || body.direction !== state.ranking.direction) return;
    renderRanking(body.rankings || []);
  }, RANKING_INTERVAL_MS);

  function renderRanking(entries) {
    const list = $('ranking');
    const items = entries.filter((entry) => !state.gone.has(entry.id)).map((entry) => ({
      ...entry,
      value: parseCounter(entry.value),
      upload: parseCounter(entry.upload),
      download: parseCounter(entry.download),
    }));
    const max = items.reduce((m, e) => (e.value !== null && e.value > m ? e.value : m), 0n);
    const children = items.map((entry) => {
      const item = document.createElement('li');
      item.dataset.nodeId = entry.id;
      item.dataset.rank = String(entry.rank);
      item.tabIndex = 0;
      const rank = document.createElement('span');
      rank.className = 'rank';
      rank.textContent = String(entry.rank);
      const name = document.createElement('span');
      name.className = 'rank-name';
      name.textContent = entry.name;
      const value = document.createElement('span');
      value.className = 'rank-value';
      value.dataset.field = 'value';
      value.dataset.bytes = entry.value === null ? '' : entry.value.toString();
      value.textContent = formatBytes(entry.value);
      value.title = exactBytes(entry.value);
      const bar = document.createElement('span');
      bar.className = 'rank-bar';
      const share = (part) => (max > 0n && part !== null ? Number((part * 10000n) / max) / 100 : 0);
      const direction = state.ranking.direction;
      for (const [key, name] of [['download', 'download'], ['upload', 'upload']]) {
        if (direction !== 'both' && direction !== name) continue;
        const fill = document.createElement('span');
        fill.className = `rank-fill rank-fill-${name}`;
        fill.style.width = `${share(entry[key])}%`;
        bar.append(fill);
      }
      const detail = document.createElement('span');
      detail.className = 'rank-detail';
      detail.textContent = `↓ ${formatBytes(entry.download)}  ↑ ${formatBytes(entry.upload)}`;
      detail.title = `download ${exactBytes(entry.download)}\nupload ${exactBytes(entry.upload)}`;
      item.append(rank, name, value, bar, detail);
      item.addEventListener('click', () => select(entry.id, { scroll: true }));
      item.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') select(entry.id, { scroll: true });
      });
      if (entry.id === state.selected) item.setAttribute('aria-current', 'true');
      return item;
    });
    list.replaceChildren(...children);
    $('ranking-empty').hidden = children.length > 0;
  }

  // ---------------------------------------------------------------- chart

  const chartLoader = coalesced(async () => {
    if (state.locked) return;
    const id = state.selected;
    if (!id) {
      state.history = null;
      renderChart();
      return;
    }
    const range = RANGES[state.range];
    // Up to the end of the step now in progress (`to` is exclusive).
    const to = (Math.floor(serverNow() / range.stepMs) + 1) * range.stepMs;
    const from = to - range.spanMs;
    const query = new URLSearchParams({
      from: new Date(from).toISOString(),
      to: new Date(to).toISOString(),
      step: range.step,
      // The chart draws the node's totals; the interfaces come with the
      // node's detail.
      interfaces: 'false',
    });
    let body;
    try {
      body = await api(`/api/v1/nodes/${encodeURIComponent(id)}/history?${query}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        nodesLoader.now();
        return;
      }
      handleFailure('the traffic history', error);
      return;
    }
    loaded('the traffic history');
    if (id !== state.selected) return;
    state.history = { range: state.range, body };
    renderChart();
  }, CHART_INTERVAL_MS);

  function select(id, { scroll }) {
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

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (parent) parent.append(element);
    return element;
  }

  /** A round scale for byte values: the top of the axis and its ticks. */
  function byteScale(max) {
    let unit = 0;
    while (unit < UNITS.length - 1 && max >= 1024 ** (unit + 1)) unit += 1;
    const base = 1024 ** unit;
    const scaled = Math.max(max / base, unit === 0 ? 4 : 0.004);
    const raw = scaled / 4;
    const power = 10 ** Math.floor(Math.log10(raw));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
    if (unit === 0) step = Math.max(1, Math.ceil(step));
    const top = Math.ceil(scaled / step - 1e-9) * step;
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (step % 1 ? 1 : 0);
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) {
      ticks.push({ value: v * base, label: `${v.toFixed(Math.min(digits, 3))} ${UNITS[unit]}` });
    }
    return { top: top * base, ticks };
  }

  function loadScale(max) {
    const top = max <= 1 ? 1 : max <= 2 ? 2 : max <= 4 ? 4 : Math.ceil(max / 4) * 4;
    const ticks = [0, top / 2, top].map((v) => ({ value: v, label: v.toFixed(top < 4 ? 1 : 0) }));
    return { top, ticks };
  }

  /** Time ticks at round local times. */
  function timeTicks(t0, t1, tickMs) {
    const ticks = [];
    const offset = new Date(t0).getTimezoneOffset() * 60e3;
    for (let t = Math.ceil((t0 - offset) / tickMs) * tickMs + offset; t <= t1; t += tickMs) {
      ticks.push(t);
    }
    return ticks;
  }

  /** An SVG path through the points, broken where a value is missing. */
  function linePath(points, x, y) {
    let d = '';
    let pen = false;
    for (const p of points) {
      if (p.v === null) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      pen = true;
    }
    return d;
  }

  /** Dots for the points that have no neighbour to draw a line to. */
  function lonePoints(parent, points, x, y, className) {
    points.forEach((p, i) => {
      const alone = p.v !== null
        && (i === 0 || points[i - 1].v === null)
        && (i === points.length - 1 || points[i + 1].v === null);
      if (alone) svg('circle', { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5, class: className }, parent);
    });
  }

  function areaPath(points, x, y, bottom) {
    if (points.length === 0) return '';
    const line = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join('L');
    const first = x(points[0].t).toFixed(1);
    const last = x(points[points.length - 1].t).toFixed(1);
    return `M${first},${bottom}L${line}L${last},${bottom}Z`;
  }

  function stepLabel(seconds) {
    if (seconds % 86400 === 0) return seconds === 86400 ? 'day' : `${seconds / 86400} days`;
    if (seconds % 3600 === 0) return seconds === 3600 ? 'hour' : `${seconds / 3600} hours`;
    if (seconds % 60 === 0) return seconds === 60 ? 'minute' : `${seconds / 60} minutes`;
    return `${seconds} s`;
  }

  const chart = { geometry: null };

  /** Draws the selected node's traffic (bytes per step) and its load. */
  function renderChart() {
    const box = $('chart');
    const loadBox = $('load-chart');
    for (const old of box.querySelectorAll('svg')) old.remove();
    loadBox.replaceChildren();
    $('chart-tooltip').hidden = true;
    chart.geometry = null;
    const node = state.nodes.get(state.selected);
    setText($('chart-node'), node ? node.name : '');
    const placeholder = $('chart-placeholder');
    const recorded = state.history;
    if (!node || !recorded) {
      box.dataset.state = node ? 'loading' : 'empty';
      placeholder.textContent = node ? 'Loading…' : 'Select a node in the table to see its traffic.';
      placeholder.hidden = false;
      setText($('chart-summary'), '');
      setText($('chart-step'), '');
      renderCalibrations([]);
      return;
    }
    placeholder.hidden = true;
    box.dataset.state = 'ready';
    box.dataset.nodeId = state.selected;

    const points = (recorded.body.points || []).map((p) => ({
      t: Date.parse(p.time),
      up: parseCounter(p.upload),
      down: parseCounter(p.download),
      heartbeats: p.heartbeats,
      load: p.load || null,
    })).filter((p) => !Number.isNaN(p.t));
    const range = RANGES[recorded.range];
    const stepSeconds = Number(recorded.body.stepSeconds) || range.stepMs / 1000;
    let upSum = 0n;
    let downSum = 0n;
    for (const p of points) {
      upSum += p.up ?? 0n;
      downSum += p.down ?? 0n;
    }
    setText($('chart-step'), `bytes per ${stepLabel(stepSeconds)}`);
    const summary = $('chart-summary');
    setText(summary, `${range.label}: ↓ ${formatBytes(downSum)} · ↑ ${formatBytes(upSum)}`);
    setTitle(summary, `download ${exactBytes(downSum)}\nupload ${exactBytes(upSum)}`);

    const width = Math.max(280, Math.floor(box.clientWidth));
    const narrow = width < 560;
    const margin = { left: narrow ? 58 : 70, right: 12, top: 10, bottom: 24 };
    const height = narrow ? 190 : 240;
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const t0 = points.length ? points[0].t : Date.now() - range.spanMs;
    const t1 = points.length > 1 ? points[points.length - 1].t : t0 + range.stepMs;
    const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotWidth;

    const maxBytes = points.reduce((m, p) => Math.max(m, toPlot(p.up), toPlot(p.down)), 0);
    const scale = byteScale(maxBytes);
    const y = (v) => margin.top + plotHeight - (v / scale.top) * plotHeight;

    const traffic = svg('svg', {
      width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg',
      role: 'img', 'aria-label': `Traffic of ${node.name}, bytes per ${stepSeconds / 60} min`,
    });
    drawGrid(traffic, scale.ticks, y, margin, width);
    drawTimeAxis(traffic, timeTicks(t0, t1, range.tickMs), x, margin.top + plotHeight, range, narrow);
    const bottom = (margin.top + plotHeight).toFixed(1);
    for (const [key, name] of [['down', 'download'], ['up', 'upload']]) {
      const series = points.map((p) => ({ t: p.t, v: toPlot(p[key]) }));
      svg('path', { d: areaPath(series, x, y, bottom), class: `area area-${name}` }, traffic);
      svg('path', { d: linePath(series, x, y), class: `line line-${name}` }, traffic);
    }
    const calibrations = Array.isArray(recorded.body.calibrations) ? recorded.body.calibrations : [];
    drawCalibrations(traffic, calibrations, x, margin, plotWidth, plotHeight);
    renderCalibrations(calibrations);
    const cursor = svg('line', { class: 'cursor', y1: margin.top, y2: margin.top + plotHeight, visibility: 'hidden' }, traffic);
    box.append(traffic);

    // Load on its own smaller chart, on the same time axis.
    const loadHeight = narrow ? 100 : 110;
    const loadPlot = loadHeight - margin.top - margin.bottom;
    const loads = points.map((p) => p.load);
    const maxLoad = loads.reduce((m, l) => (l ? Math.max(m, l.one, l.five, l.fifteen) : m), 0);
    const lscale = loadScale(maxLoad);
    const ly = (v) => margin.top + loadPlot - (v / lscale.top) * loadPlot;
    const load = svg('svg', {
      width, height: loadHeight, viewBox: `0 0 ${width} ${loadHeight}`, class: 'chart-svg',
      role: 'img', 'aria-label': `Load average of ${node.name}`,
    });
    drawGrid(load, lscale.ticks, ly, margin, width);
    drawTimeAxis(load, timeTicks(t0, t1, range.tickMs), x, margin.top + loadPlot, range, narrow);
    for (const [key, name] of [['fifteen', 'load15'], ['five', 'load5'], ['one', 'load1']]) {
      const series = points.map((p) => ({ t: p.t, v: p.load ? Number(p.load[key]) : null }));
      svg('path', { d: linePath(series, x, ly), class: `line line-${name}` }, load);
      lonePoints(load, series, x, ly, `dot dot-${name}`);
    }
    const loadCursor = svg('line', { class: 'cursor', y1: margin.top, y2: margin.top + loadPlot, visibility: 'hidden' }, load);
    loadBox.append(load);

    chart.geometry = { points, x, y, margin, plotWidth, cursor, loadCursor, stepSeconds, t0, t1 };
  }

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
  function drawCalibrations(parent, calibrations, x, margin, plotWidth, plotHeight) {
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
  function renderCalibrations(calibrations) {
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

  function drawGrid(parent, ticks, y, margin, width) {
    for (const tick of ticks) {
      const ty = y(tick.value).toFixed(1);
      svg('line', { x1: margin.left, x2: width - margin.right, y1: ty, y2: ty, class: tick.value === 0 ? 'axis' : 'grid' }, parent);
      const label = svg('text', { x: margin.left - 8, y: ty, class: 'tick tick-y' }, parent);
      label.textContent = tick.label;
    }
  }

  function drawTimeAxis(parent, ticks, x, bottom, range, narrow) {
    const every = narrow && ticks.length > 4 ? 2 : 1;
    ticks.forEach((t, i) => {
      if (i % every) return;
      const label = svg('text', { x: x(t).toFixed(1), y: bottom + 16, class: 'tick tick-x' }, parent);
      label.textContent = range.tickMs >= 86400e3 ? dayFormat.format(new Date(t)) : timeFormat.format(new Date(t));
    });
  }

  function onChartPointer(event) {
    const g = chart.geometry;
    if (!g || g.points.length === 0) return;
    const rect = $('chart').getBoundingClientRect();
    const px = event.clientX - rect.left;
    const t = g.t0 + ((px - g.margin.left) / g.plotWidth) * (g.t1 - g.t0);
    let nearest = g.points[0];
    for (const p of g.points) if (Math.abs(p.t - t) < Math.abs(nearest.t - t)) nearest = p;
    const cx = g.x(nearest.t).toFixed(1);
    for (const line of [g.cursor, g.loadCursor]) {
      line.setAttribute('x1', cx);
      line.setAttribute('x2', cx);
      line.setAttribute('visibility', 'visible');
    }
    const tip = $('chart-tooltip');
    const rate = (v) => (v === null ? '' : ` (${formatBytes(v / BigInt(Math.max(1, g.stepSeconds)))}/s)`);
    const load = nearest.load
      ? `${Number(nearest.load.one).toFixed(2)} · ${Number(nearest.load.five).toFixed(2)} · ${Number(nearest.load.fifteen).toFixed(2)}`
      : '—';
    const lines = [
      ['', formatDateTime(nearest.t)],
      ['↓', `${formatBytes(nearest.down)}${rate(nearest.down)}`],
      ['↑', `${formatBytes(nearest.up)}${rate(nearest.up)}`],
      ['load', load],
    ];
    tip.replaceChildren(...lines.map(([key, text]) => {
      const row = document.createElement('div');
      if (key) {
        const k = document.createElement('span');
        k.className = 'tip-key';
        k.textContent = key;
        row.append(k, ` ${text}`);
      } else {
        row.className = 'tip-time';
        row.textContent = text;
      }
      return row;
    }));
    tip.hidden = false;
    // Right of the cursor where it fits, else left of it.
    const at = Number(cx);
    const fitsRight = at + 12 + tip.offsetWidth <= rect.width;
    tip.style.left = `${fitsRight ? at + 12 : Math.max(0, at - tip.offsetWidth - 12)}px`;
    tip.style.top = `${g.margin.top}px`;
  }

  function hideChartPointer() {
    const g = chart.geometry;
    $('chart-tooltip').hidden = true;
    if (!g) return;
    for (const line of [g.cursor, g.loadCursor]) line.setAttribute('visibility', 'hidden');
  }

  // ---------------------------------------------------------- node detail

  const RULE_LABELS = {
    all: 'counts every interface but loopback',
    uplink: 'counts physical interfaces and uplinks only',
  };
  const KIND_LABELS = {
    container_bridge: 'container bridge', vlan: 'VLAN', vxlan: 'VXLAN',
    tun: 'TUN', tap: 'TAP', wireguard: 'WireGuard', macvlan: 'macvlan',
  };
  const MODE_LABELS = {
    sum: 'billed on upload + download',
    max: 'billed on the larger direction',
    upload: 'billed on upload',
    download: 'billed on download',
    p95: 'billed on the 95th percentile rate',
  };

  /** Whether the node's count rule counts an interface's traffic. */
  function isCounted(rule, iface) {
    // Loopback (`lo*`) is shown, never counted, whatever the rule.
    if (iface.name.startsWith('lo')) return false;
    if (rule !== 'uplink') return true;
    return iface.state !== 'retired' && (iface.kind === 'physical' || iface.defaultRoute === true);
  }

  /** The node's interfaces and billing period: one request each, together. */
  const detailLoader = coalesced(async () => {
    if (state.locked) return;
    const id = state.selected;
    if (!id) {
      state.detail = null;
      renderDetail();
      return;
    }
    const path = `/api/v1/nodes/${encodeURIComponent(id)}`;
    const [detail, billing] = await Promise.allSettled([api(path), api(`${path}/billing`)]);
    if (detail.status === 'rejected') {
      if (detail.reason instanceof ApiError && detail.reason.status === 404) {
        nodesLoader.now();
        return;
      }
      handleFailure('the node’s interfaces', detail.reason);
      return;
    }
    loaded('the node’s interfaces');
    let period = null;
    if (billing.status === 'fulfilled') {
      period = billing.value;
      loaded('the billing period');
    } else if (billing.reason instanceof ApiError && billing.reason.status === 404) {
      // A collector without billing, or a node gone meanwhile: no panel.
      loaded('the billing period');
    } else {
      handleFailure('the billing period', billing.reason);
    }
    if (id !== state.selected) return;
    const body = detail.value;
    const node = state.nodes.get(id);
    if (node) {
      node.families = parseFamilies(body.families);
      node.countRule = body.countRule;
      if ('quotaCrossed' in body && Date.parse(body.traffic && body.traffic.periodStart) === Date.parse(node.traffic.periodStart || '')) {
        node.quotaCrossed = body.quotaCrossed;
        markDirty(id);
      }
    }
    state.detail = { id, interfaces: body.interfaces || [], billing: period };
    renderDetail();
  }, DETAIL_INTERVAL_MS);

  /** The node's latest quota events. */
  const quotaLoader = coalesced(async () => {
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

  /** The fleet's held anomalies. */
  const anomaliesLoader = coalesced(async () => {
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

  function element(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A table cell with a byte count: human text, exact title and data-bytes. */
  function bytesCell(field, value) {
    const td = element('td', 'num', formatBytes(value));
    td.dataset.field = field;
    td.dataset.bytes = value === null ? '' : value.toString();
    td.title = exactBytes(value);
    return td;
  }

  /** Shows a byte count (or rate) in `id`: human text, exact title, data-bytes. */
  function showBytes(id, value, { rate = false, none = '—' } = {}) {
    const e = $(id);
    e.dataset.bytes = value === null ? '' : value.toString();
    setText(e, value === null ? none : `${formatBytes(value)}${rate ? '/s' : ''}`);
    setTitle(e, value === null ? '' : `${value} ${rate ? 'bytes per second' : 'bytes'}`);
  }

  /** The selected node's interfaces, address families and billing. */
  function renderDetail() {
    const node = state.nodes.get(state.selected);
    $('detail').hidden = !node;
    if (!node) return;
    const detail = state.detail && state.detail.id === state.selected ? state.detail : null;
    setText($('detail-node'), node.name);
    const rule = RULE_LABELS[node.countRule] ? node.countRule : null;
    const ruleLabel = $('count-rule');
    setText(ruleLabel, rule ? RULE_LABELS[rule] : '');
    ruleLabel.dataset.rule = rule || '';
    renderFamilies(node.families);
    renderCounterSet(node);
    renderInterfaces(detail, rule);
    renderBilling(detail ? detail.billing : null);
  }

  /** Which counter set is followed, the node's clock, its stale heartbeats. */
  function renderCounterSet(node) {
    const parts = [];
    const set = node.counterSet;
    if (set) {
      parts.push(`Counter set ${set.epoch.slice(0, 12)} of boot ${set.bootId.slice(0, 8)}, generation ${set.generation === '0' ? 'unknown' : set.generation}`);
    }
    if (node.clock && Number.isFinite(node.clock.offsetMs) && Math.abs(node.clock.offsetMs) >= 1000) {
      parts.push(`clock ${formatOffset(node.clock.offsetMs)}${node.clock.skewed ? ' (skewed: check NTP)' : ''}`);
    }
    if (node.stale && node.stale.heartbeats && node.stale.heartbeats !== '0') {
      parts.push(`${node.stale.heartbeats} stale heartbeat${node.stale.heartbeats === '1' ? '' : 's'}${node.stale.flagged ? ', nothing counted now' : ''}`);
    }
    const note = $('counter-set');
    note.hidden = parts.length === 0;
    setText(note, parts.join(' · '));
  }

  function renderFamilies(families) {
    $('families').hidden = !families;
    if (!families) return;
    const sums = {};
    for (const family of FAMILIES) {
      const name = family === 'ipv4' ? 'IPv4' : 'IPv6';
      for (const [direction, arrow] of [['download', '↓'], ['upload', '↑']]) {
        const value = families[family][direction];
        const e = $(`family-${family}-${direction}`);
        e.dataset.bytes = value === null ? '' : value.toString();
        setText(e, `${arrow} ${formatBytes(value)}`);
        setTitle(e, `${name} ${direction} ${exactBytes(value)}`);
      }
      sums[family] = (families[family].download ?? 0n) + (families[family].upload ?? 0n);
    }
    const all = sums.ipv4 + sums.ipv6;
    setText($('families-note'), all > 0n
      ? 'Since enrolment, counted by the node’s rule; other protocols (ARP, …) are in neither.'
      : 'No traffic split by address family yet (an agent counting with procfs cannot split it).');
    for (const family of FAMILIES) {
      const share = all > 0n ? Number((sums[family] * 1000n) / all) / 10 : null;
      setText($(`family-${family}-share`), share === null ? '–' : `${share.toFixed(1)} %`);
      $(`family-bar-${family}`).style.width = `${share ?? 0}%`;
    }
  }

  function renderInterfaces(detail, rule) {
    const interfaces = detail ? detail.interfaces : [];
    const rows = interfaces.map((iface) => {
      const row = document.createElement('tr');
      row.dataset.interface = iface.name;
      const counted = isCounted(rule, iface);
      row.dataset.counted = String(counted);
      if (!counted) {
        row.title = iface.name.startsWith('lo')
          ? 'Not counted: loopback traffic never leaves the node'
          : 'Not counted: this node counts physical interfaces and uplinks only';
      }
      const name = element('th', 'iface-name');
      name.scope = 'row';
      name.dataset.field = 'name';
      name.append(element('span', '', iface.name));
      if (iface.defaultRoute) {
        const uplink = element('span', 'tag tag-uplink', 'uplink');
        uplink.dataset.field = 'uplink';
        uplink.title = 'Carries a default route';
        name.append(uplink);
      }
      // Only what is not the usual "attached" is said.
      if (iface.state !== 'attached') {
        const status = element('span', 'tag tag-state', iface.state);
        status.dataset.field = 'state';
        status.title = iface.state === 'gone'
          ? 'Went away; its counts are kept'
          : 'Holds the counts of interfaces gone long ago';
        name.append(status);
      }
      const kind = element('td');
      kind.dataset.field = 'kind';
      kind.dataset.kind = iface.kind || '';
      kind.append(element('span', `tag tag-kind${iface.kind === 'physical' ? ' tag-physical' : ''}`,
        KIND_LABELS[iface.kind] || iface.kind || '—'));
      row.append(name, kind,
        bytesCell('rxBytes', parseCounter(iface.rxBytes)),
        bytesCell('txBytes', parseCounter(iface.txBytes)));
      for (const family of FAMILIES) {
        const split = iface[family];
        const td = element('td', 'num');
        td.dataset.field = family;
        if (split) {
          const rx = parseCounter(split.rx);
          const tx = parseCounter(split.tx);
          td.dataset.rx = rx === null ? '' : rx.toString();
          td.dataset.tx = tx === null ? '' : tx.toString();
          td.textContent = `${formatBytes(rx)} / ${formatBytes(tx)}`;
          td.title = `received ${exactBytes(rx)}\nsent ${exactBytes(tx)}`;
        } else {
          td.textContent = '—';
          td.classList.add('muted');
          td.title = 'The agent’s counting source does not split by address family';
        }
        row.append(td);
      }
      return row;
    });
    $('interfaces-body').replaceChildren(...rows);
    $('interfaces-empty').hidden = !detail || rows.length > 0;
  }

  function renderBilling(billing) {
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
    setText($('billing-rates'), `${formatBytes(p95)}/s · ${formatBytes(peak)}/s`);
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

  function renderQuotaEvents() {
    const known = state.quotaEvents && state.quotaEvents.id === state.selected ? state.quotaEvents.events : [];
    const node = state.nodes.get(state.selected);
    const current = node ? Date.parse(node.traffic.periodStart || '') : NaN;
    const items = known.map((event) => {
      const item = document.createElement('li');
      item.dataset.threshold = String(event.threshold);
      const now = Date.parse(event.periodStart || '') === current;
      item.dataset.current = String(now);
      const rate = event.mode === 'p95';
      const unit = (v) => `${formatBytes(parseCounter(v))}${rate ? '/s' : ''}`;
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

  function renderAnomalies() {
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

  // ------------------------------------------------------------ the token

  function requireToken(message) {
    if (!state.locked) {
      state.locked = true;
      stopStream();
    }
    const stored = Boolean(readToken());
    $('auth-message').textContent = stored
      ? `The collector refused the token (${message}). Enter the read token again.`
      : 'This collector only shows its data to holders of the read token.';
    $('auth').hidden = false;
    $('dashboard').hidden = true;
    problems.clear();
    renderProblems();
    setConnection('locked');
    $('auth-token').focus();
  }

  function unlock(token) {
    storeToken(token);
    state.locked = false;
    $('auth').hidden = true;
    $('dashboard').hidden = false;
    $('forget-token').hidden = !readToken();
    wakeStream();
  }

  // ------------------------------------------------------ the event stream

  const connection = { controller: null, wake: null };

  function setConnection(status, delayMs) {
    const element = $('connection');
    element.dataset.state = status;
    const labels = {
      connecting: 'Connecting…',
      live: 'Live',
      reconnecting: `Reconnecting${delayMs ? ` in ${Math.round(delayMs / 1000)} s` : '…'}`,
      locked: 'Token required',
    };
    setText(element.querySelector('.connection-label'), labels[status] || status);
  }

  function stopStream() {
    if (connection.controller) connection.controller.abort();
  }

  function wakeStream() {
    if (connection.wake) connection.wake();
  }

  /** Waits `ms`, or less when woken (new token, network back). */
  function pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        connection.wake = null;
        resolve();
      }
      connection.wake = done;
    });
  }

  /** Everything the page shows, fetched anew. */
  function refreshAll() {
    nodesLoader.now();
    rankingLoader.now();
    chartLoader.now();
    detailLoader.now();
    quotaLoader.now();
    anomaliesLoader.now();
  }

  function onEvent(event) {
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

  /** Reads one response of the event stream until it ends. */
  async function readStream(response, controller) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let stall = setTimeout(() => controller.abort(), STREAM_STALL_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(stall);
        stall = setTimeout(() => controller.abort(), STREAM_STALL_MS);
        for (const event of parser.push(decoder.decode(value, { stream: true }))) onEvent(event);
      }
    } finally {
      clearTimeout(stall);
    }
  }

  /** Listens to `/api/v1/events` for as long as the page lives. */
  async function runStream() {
    let failures = 0;
    for (;;) {
      if (state.locked) {
        await pause(BACKOFF_MAX_MS * 100);
        continue;
      }
      const controller = new AbortController();
      connection.controller = controller;
      setConnection(failures ? 'reconnecting' : 'connecting');
      let openedAt = null;
      try {
        const response = await fetch('/api/v1/events', {
          headers: { Accept: 'text/event-stream', ...authHeaders() },
          cache: 'no-store',
          signal: controller.signal,
        });
        noteServerDate(response);
        if (response.status === 401) {
          requireToken(await errorMessage(response));
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        openedAt = Date.now();
        setConnection('live');
        // Whatever changed while we were not listening.
        refreshAll();
        await readStream(response, controller);
      } catch {
        // Network failure, stall or stop: reconnect below.
      } finally {
        connection.controller = null;
      }
      if (state.locked) continue;
      if (!state.loaded) refreshAll();
      // A stream that lived a while starts the backoff over.
      failures = openedAt !== null && Date.now() - openedAt > 10000 ? 1 : failures + 1;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (failures - 1)) * (0.75 + Math.random() * 0.5);
      setConnection('reconnecting', delay);
      await pause(delay);
    }
  }

  // ------------------------------------------------------------- start-up

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
})();

// Turning values into text: exact counters (decimal strings parsed to
// BigInt, never a Number, so they stay exact above 2^53), bytes and byte
// rates in IEC units (formatBytes, the one byte formatter; only the chart's
// axis labels are plot.js's, rounded to their ticks), dates and times, ages
// ("5 min ago") on the collector's clock, and clock offsets.

export const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB', 'ZiB', 'YiB'];

/** A counter's decimal string as a BigInt; null when it is not one. */
export function parseCounter(text) {
  if (typeof text !== 'string' || !/^[0-9]{1,40}$/.test(text)) return null;
  return BigInt(text);
}

/**
 * Bytes in IEC units with three significant digits ("1.50 KiB",
 * "15.3 MiB", "512 B"), computed in BigInt: exact at any size.
 */
export function formatBytes(value) {
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

/** A rate in bytes per second: formatBytes with "/s" ("1.50 KiB/s"). */
export function formatRate(value) {
  return `${formatBytes(value)}/s`;
}

/** The exact count for a tooltip. */
export function exactBytes(value) {
  return value === null ? 'unknown' : `${value} bytes`;
}

/** A BigInt as a Number for drawing (precision does not matter there). */
export function toPlot(value) {
  return value === null ? 0 : Number(value);
}

// ---------------------------------------------------------------- time

/** Server clock minus ours, from the Date header, when they disagree. */
let clockSkewMs = 0;

export function noteServerDate(response) {
  const date = Date.parse(response.headers.get('date') || '');
  if (Number.isNaN(date)) return;
  const skew = date - Date.now();
  clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
}

export function serverNow() {
  return Date.now() + clockSkewMs;
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
export const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
export const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric' });

export function formatDateTime(ms) {
  return Number.isNaN(ms) ? '' : dateTimeFormat.format(new Date(ms));
}

/** "just now", "42 s ago", "5 min ago", "3 h ago", "12 d ago". */
export function ago(timestamp) {
  const then = Date.parse(timestamp || '');
  if (Number.isNaN(then)) return 'never';
  const s = Math.floor((serverNow() - then) / 1000);
  if (s < 2) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A clock offset in ms, as a signed duration in its largest unit. */
export function formatOffset(ms) {
  const sign = ms < 0 ? '−' : '+';
  const abs = Math.abs(ms);
  const units = [[86400000, 'd'], [3600000, 'h'], [60000, 'min'], [1000, 's']];
  for (const [size, unit] of units) {
    if (abs >= size) return `${sign}${Math.round(abs / size)} ${unit}`;
  }
  return `${sign}${abs} ms`;
}

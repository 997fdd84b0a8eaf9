// The traffic ranking: the top nodes by the chosen counter and direction,
// with bars relative to the largest.

import { api, coalesced } from './api.js';
import { loaded } from './banner.js';
import { $ } from './dom.js';
import { exactBytes, formatBytes, parseCounter } from './format.js';
import { select } from './selection.js';
import { RANKING_INTERVAL_MS, RANKING_LIMIT } from './settings.js';
import { state } from './state.js';
import { handleFailure } from './token.js';

export const rankingLoader = coalesced(async () => {
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

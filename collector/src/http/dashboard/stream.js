// Listening to /api/v1/events for as long as the page lives: reads the
// stream, hands its events to events.js, and reconnects with backoff when it
// ends, fails or stays silent too long.

import { authHeaders, errorMessage } from './api.js';
import { connection, pause, setConnection } from './connection.js';
import { onEvent, refreshAll } from './events.js';
import { noteServerDate } from './format.js';
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, STREAM_STALL_MS } from './settings.js';
import { SseParser } from './sse.js';
import { state } from './state.js';
import { requireToken } from './token.js';

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
export async function runStream() {
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

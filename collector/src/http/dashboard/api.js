// Talking to the JSON API: GET with the read token (kept for the session),
// errors as AuthRequired (401) or ApiError, and coalesced loaders that keep
// each view from asking more often than its interval.

import { noteServerDate } from './format.js';
import { TOKEN_KEY } from './settings.js';

export class AuthRequired extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let memoryToken = null;

export function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
  } catch {
    return memoryToken;
  }
}

export function storeToken(token) {
  memoryToken = token;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lives as long as the page.
  }
}

export function authHeaders() {
  const token = readToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** The message of an error response (`{"error": {"code", "message"}}`). */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return String(body.error.message);
  } catch {
    // Not JSON: fall back to the status line.
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

/** GET `path` as JSON; throws AuthRequired on 401 and ApiError otherwise. */
export async function api(path) {
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

/**
 * Wraps an async loader so that calls coalesce: `schedule()` runs it at
 * most once per `intervalMs`, `now()` as soon as the running one ends.
 */
export function coalesced(load, intervalMs) {
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

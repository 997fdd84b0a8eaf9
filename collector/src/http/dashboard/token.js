// The read token's screen: the page locks when the collector refuses the
// token (or asks for one) and unlocks when one is entered; and what a failed
// load does: a 401 locks, anything else goes to the banner.

import { AuthRequired, readToken, storeToken } from './api.js';
import { problems, renderProblems } from './banner.js';
import { setConnection, stopStream, wakeStream } from './connection.js';
import { $ } from './dom.js';
import { state } from './state.js';

/** A load of `what` failed: a refused token locks the page, anything else goes to the banner. */
export function handleFailure(what, error) {
  if (error instanceof AuthRequired) {
    requireToken(error.message);
    return;
  }
  problems.set(what, error.message);
  renderProblems();
}

/** Locks the page and asks for the read token; `message` says why the last one was refused. */
export function requireToken(message) {
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

/** Keeps `token`, shows the dashboard again and wakes the event stream. */
export function unlock(token) {
  storeToken(token);
  state.locked = false;
  $('auth').hidden = true;
  $('dashboard').hidden = false;
  $('forget-token').hidden = !readToken();
  wakeStream();
}

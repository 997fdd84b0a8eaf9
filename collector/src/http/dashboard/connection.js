// The event stream's connection: its indicator in the header ("Live",
// "Reconnecting in 4 s", ...), and stopping or waking it from elsewhere (a new
// token, the network back).

import { $, setText } from './dom.js';

export const connection = { controller: null, wake: null };

export function setConnection(status, delayMs) {
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

export function stopStream() {
  if (connection.controller) connection.controller.abort();
}

export function wakeStream() {
  if (connection.wake) connection.wake();
}

/** Waits `ms`, or less when woken (new token, network back). */
export function pause(ms) {
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

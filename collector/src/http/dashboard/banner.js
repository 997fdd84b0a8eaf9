// The banner over the page: what failed to load, by what it is, shown until
// it loads again.

import { $, setText } from './dom.js';

/** What failed to load, by what it is: shown until it loads again. */
export const problems = new Map();

export function renderProblems() {
  const banner = $('banner');
  const text = [...problems].map(([what, message]) => `Could not load ${what}: ${message}`).join('\n');
  setText(banner, text);
  banner.hidden = !text;
}

export function loaded(what) {
  if (problems.delete(what)) renderProblems();
}

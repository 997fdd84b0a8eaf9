// Small helpers for building and updating the page: find by id, create
// elements and SVG, set text and titles only when they change, flash a
// changed figure, and show byte counts with their exact value in the
// title and data-bytes.

import { exactBytes, formatBytes, formatRate } from './format.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

export const $ = (id) => document.getElementById(id);

export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export function setTitle(element, title) {
  if (element.title !== title) element.title = title;
}

/** Briefly highlights a figure that changed. */
export function flash(element) {
  element.classList.remove('changed');
  void element.offsetWidth;
  element.classList.add('changed');
}

export function svg(name, attributes, parent) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.append(element);
  return element;
}

export function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A table cell with a byte count: human text, exact title and data-bytes. */
export function bytesCell(field, value) {
  const td = element('td', 'num', formatBytes(value));
  td.dataset.field = field;
  td.dataset.bytes = value === null ? '' : value.toString();
  td.title = exactBytes(value);
  return td;
}

/** Shows a byte count (or rate) in `id`: human text, exact title, data-bytes. */
export function showBytes(id, value, { rate = false, none = '—' } = {}) {
  const e = $(id);
  e.dataset.bytes = value === null ? '' : value.toString();
  setText(e, value === null ? none : rate ? formatRate(value) : formatBytes(value));
  setTitle(e, value === null ? '' : `${value} ${rate ? 'bytes per second' : 'bytes'}`);
}

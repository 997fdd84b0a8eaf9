// A parser for text/event-stream (the WHATWG rules), fed the event stream's
// text as it arrives. No DOM and no network: the browser test drives it
// directly through window.tally.SseParser.

/**
 * Incremental parser of a text/event-stream (the WHATWG rules): push
 * decoded text as it arrives, get back complete events.
 */
export class SseParser {
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

// fapi-guest for JavaScript: protected HTTP requests through fapi-host, for plugins built with
// componentize-js (see guest/README.md). A thin layer over the `fapi-fetch` import of wit/fapi.wit
// (world `openenergy:fapi/plugin`): the host holds the mTLS key and the tokens, applies its egress policy
// and sends the request; the plugin only ever sees the response.
//
//   import { get, argv } from '../fapi-guest.js';
//   const response = get(url).raiseForStatus();
//   const rows = response.json();           // or .text(), .bytes(), .lines(), .read(n)
//
// Every `fetch-error` of the WIT is thrown as a `FapiError` whose `kind` is the WIT case name (`denied`,
// `invalid-request`, `timeout`, `too-large`, `unreachable`, `token-unavailable`, `limit-exceeded`,
// `body-interrupted`); `raiseForStatus()` throws one with kind `status`.

import { fetch as witFetch } from 'openenergy:fapi/fapi-fetch@0.1.0';
import { getArguments } from 'wasi:cli/environment@0.2.12';
import { getStdout } from 'wasi:cli/stdout@0.2.12';

/** Bytes asked of the host per read by `chunks()` / `lines()` (the host allows up to 1 MiB). */
export const READ_CHUNK = 64 * 1024;

/** A request through the host failed. `kind`: the WIT `fetch-error` case, or `status`. */
export class FapiError extends Error {
  constructor(kind, message, detail) {
    super(message);
    this.name = 'FapiError';
    this.kind = kind;
    /** `token-unavailable`: `{code, description}`; `too-large`: the limit in bytes; `status`: the response. */
    this.detail = detail;
  }
}

function fapiError(e) {
  const err = e && e.payload !== undefined ? e.payload : e;
  if (!err || typeof err.tag !== 'string') {
    return e instanceof Error ? e : new FapiError('unknown', String(e));
  }
  switch (err.tag) {
    case 'timeout':
      return new FapiError('timeout', 'timed out');
    case 'too-large':
      return new FapiError('too-large', `body larger than the host's limit of ${err.val} bytes`, err.val);
    case 'token-unavailable': {
      const { code, description } = err.val;
      return new FapiError('token-unavailable', `no token: ${code}${description ? `: ${description}` : ''}`, err.val);
    }
    default:
      return new FapiError(err.tag, `${err.tag}: ${err.val}`);
  }
}

function call(f) {
  try {
    return f();
  } catch (e) {
    throw fapiError(e);
  }
}

/** A response from the host. The body is read once: whole (`bytes`, `text`, `json`) or streamed
 * (`read`, `chunks`, `lines`). Reading it whole or to the end releases it; otherwise call `close()`:
 * a response left open counts against the host's limit of requests in flight. */
export class Response {
  constructor(raw) {
    this.status = raw.status;
    /** `[[name, Uint8Array], ...]` as the server sent them. */
    this.headers = raw.headers.map((h) => [h.name, h.value]);
    /** The `x-fapi-interaction-id` the host sent with the request. */
    this.interactionId = raw.interactionId;
    this._body = raw.body;
  }

  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  /** The first value of header `name` (case-insensitive) as text, or `undefined`. */
  header(name) {
    const lower = name.toLowerCase();
    const found = this.headers.find(([n]) => n.toLowerCase() === lower);
    // ISO-8859-1, byte for byte (TextDecoder's 'latin1' is windows-1252, which remaps 0x80-0x9f).
    return found ? String.fromCharCode(...found[1]) : undefined;
  }

  /**
   * Throw a `FapiError` of kind `status` unless the status is 2xx; return the response for chaining.
   * The body of a response that throws is released first: it would otherwise hold one of the host's
   * places for requests in flight until the end of the run.
   */
  raiseForStatus() {
    if (!this.ok) {
      this.close();
      throw new FapiError('status', `HTTP status ${this.status} (interaction id ${this.interactionId})`, this);
    }
    return this;
  }

  /** Release the body (and the connection) now. */
  close() {
    const body = this._body;
    this._body = undefined;
    // Resources are released by their dispose method (not by garbage collection, in practice): every
    // response left open counts against the host's limit of requests in flight.
    const dispose = Symbol.dispose || Symbol.for('dispose');
    if (body && typeof body[dispose] === 'function') body[dispose]();
  }

  /** Up to `maxBytes` of the body (at most 1 MiB); an empty array at the end. */
  read(maxBytes = READ_CHUNK) {
    if (!this._body) return new Uint8Array(0);
    return call(() => this._body.read(maxBytes));
  }

  /** The body in chunks of at most `size` bytes, streamed: bounded memory for any size. */
  *chunks(size = READ_CHUNK) {
    for (;;) {
      const chunk = this.read(size);
      if (chunk.length === 0) {
        this.close();
        return;
      }
      yield chunk;
    }
  }

  /** The body's lines as text without their line ending, streamed. */
  *lines() {
    const decoder = new TextDecoder('utf-8', { fatal: true });
    let rest = '';
    for (const chunk of this.chunks()) {
      const parts = (rest + decoder.decode(chunk, { stream: true })).split('\n');
      rest = parts.pop();
      for (const line of parts) yield line.endsWith('\r') ? line.slice(0, -1) : line;
    }
    rest += decoder.decode();
    if (rest) yield rest.endsWith('\r') ? rest.slice(0, -1) : rest;
  }

  /** The whole (remaining) body, up to the host's limit. */
  bytes() {
    if (!this._body) return new Uint8Array(0);
    const bytes = call(() => this._body.readAll());
    this.close();
    return bytes;
  }

  /** The whole body decoded as UTF-8. */
  text() {
    return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes());
  }

  /** The whole body parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

/** Send a request through the host. `headers`: an object or `[[name, value]]`; `body`: string or
 * Uint8Array. Throws a `FapiError` when the host could not get a response. */
export function request(method, url, { headers = [], body, timeoutMs } = {}) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  const encoder = new TextEncoder();
  const req = {
    method,
    url,
    headers: pairs.map(([name, value]) => ({
      name,
      value: typeof value === 'string' ? encoder.encode(value) : value,
    })),
    body: typeof body === 'string' ? encoder.encode(body) : body,
    timeoutMs,
  };
  return new Response(call(() => witFetch(req)));
}

/** `GET url` through the host. */
export function get(url, options = {}) {
  return request('GET', url, options);
}

/** `POST url` with `body` through the host. */
export function post(url, body, options = {}) {
  return request('POST', url, { ...options, body });
}

/** The plugin's arguments as `fapi-host run` passes them (`argv()[0]` is the component's name). */
export function argv() {
  return getArguments();
}

/** Write `text` to stdout exactly (no added newline, nothing buffered). */
export function write(text) {
  const bytes = new TextEncoder().encode(text);
  const out = getStdout();
  // blocking-write-and-flush takes at most 4096 bytes per call.
  for (let at = 0; at < bytes.length; at += 4096) {
    out.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
}

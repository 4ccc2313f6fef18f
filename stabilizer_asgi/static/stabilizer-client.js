// stabilizer-client.js: the browser client of stabilizer-asgi (wire protocol v1).
//
// One ES module, no build step, no dependencies. Served by the middleware at
// /_stabilizer/client.js:
//
//   import { StabilizerSocket } from "/_stabilizer/client.js";
//   const ws = new StabilizerSocket("wss://example.com/ws");
//   ws.addEventListener("message", (event) => console.log(event.data));
//   ws.addEventListener("resync", (event) => refetchState(event.reason));
//   ws.send("hello");
//
// A WebSocket that survives drops: it reconnects with exponential backoff and full jitter,
// resumes the server-side session, resends what the server did not get and receives exactly
// what it missed, so no message is lost or duplicated in either direction. When the server
// cannot resume, a "resync" event says so and a new session starts. Its `reason` is the
// server's: "unknown", "expired", "invalid", "gap", or in cluster mode "lost" (the server that
// held the session died without handing it over); any other value means a resync too.
//
// All durations in options are milliseconds (the Python client uses seconds).

const RS = "\u001e";
const VERSION = 1;
const MAX_CONTROL = 4096;
const ACK_EVERY = 32; // acknowledge at the latest after this many inbound data frames...
const ACK_DELAY = 1000; // ...or this many ms after the first of them
// Close codes after which the session is resumed: abnormal drop, heartbeat timeout, service
// restart or drain, try again later, bad gateway. Any other code ends the socket for good
// unless the server sent a `reconnect` hint first.
const RECONNECT_CODES = new Set([1006, 1011, 1012, 1013, 1014]);
const NORMAL_CODES = new Set([1000, 1001, 1005]);
const OUR_PARAMS = new Set(["stabilizer", "stabilizer_resume", "stabilizer_ack"]);
const STATE_NUMBERS = { connecting: 0, open: 1, reconnecting: 0, closed: 3 };

const DEFAULTS = Object.freeze({
  backoffBase: 500, // the first reconnect waits up to this long; the window doubles per failure
  backoffCap: 30000, // largest backoff window
  maxAttempts: Infinity, // consecutive failed connection attempts before giving up
  maxPending: 1000, // outbound messages held (unsent or unacknowledged)
  pingInterval: 20000, // silence from the server before the client pings it
  pingTimeout: 10000, // then, silence before the connection is declared dead
  openTimeout: 10000, // for the handshake plus the server's hello
  protocols: undefined, // subprotocols, as for `new WebSocket(url, protocols)`
  binaryType: "blob", // as WebSocket.binaryType
  WebSocket: undefined, // the WebSocket class to use (default: globalThis.WebSocket)
  random: Math.random, // the jitter source, replaceable for tests
});

const now = () => performance.now();

function isCount(value) {
  return Number.isInteger(value) && value >= 0 && value < 2 ** 53;
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function isText(frame) {
  return typeof frame === "string";
}

/** An absolute ws:// or wss:// URL: relative and http(s) URLs are resolved against the page. */
function resolveUrl(url) {
  if (typeof location === "undefined") return String(url);
  const resolved = new URL(url, location.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

/** `url` with stabilizer=1 (and, to resume, the token and the inbound count). */
function buildUrl(url, token, ack) {
  const [base, ...fragment] = String(url).split("#");
  const [path, ...rest] = base.split("?");
  const query = rest.join("?");
  const kept = query.split("&").filter((part) => {
    if (!part) return false;
    let name = part.split("=")[0];
    try {
      name = decodeURIComponent(name.replace(/\+/g, " "));
    } catch {
      // not ours if it does not even decode
    }
    return !OUR_PARAMS.has(name);
  });
  kept.push("stabilizer=1");
  if (token) {
    kept.push(`stabilizer_resume=${encodeURIComponent(token)}`, `stabilizer_ack=${ack}`);
  }
  return `${path}?${kept.join("&")}${fragment.length ? "#" + fragment.join("#") : ""}`;
}

/** The frame for an app message: text escaped, binary as is, plain objects as JSON. */
function encodeData(data) {
  if (isText(data)) return data.startsWith(RS) ? RS + data : data;
  if (
    data instanceof ArrayBuffer ||
    ArrayBuffer.isView(data) ||
    (typeof Blob !== "undefined" && data instanceof Blob)
  ) {
    return data;
  }
  if (data !== null && typeof data === "object") return JSON.stringify(data);
  throw new TypeError(`cannot send ${typeof data}: use a string, binary data or a plain object`);
}

function unescapeFrame(frame) {
  return isText(frame) && frame.startsWith(RS + RS) ? frame.slice(1) : frame;
}

// Control frames are flat JSON objects: more brackets than this (even in strings) is invalid.
const MAX_CONTROL_BRACKETS = 32;
const isFinite_ = (v) => typeof v === "number" && Number.isFinite(v);
const isText_ = (v) => typeof v === "string";
const isOptionalText = (v) => v === null || typeof v === "string";
const isBool = (v) => typeof v === "boolean";
const isAnything = () => true;
// Per control type: field -> [check, required]. Other fields are allowed (newer servers may add
// some) but must be scalars. `hello`'s v, session and token are judged by `_hello` (1002).
const SCHEMA = {
  ping: { ts: [isFinite_, true], n: [isCount, false] },
  pong: { ts: [isFinite_, true], n: [isCount, false] },
  ack: { n: [isCount, true] },
  reconnect: { after_ms: [isFinite_, false], reason: [isText_, false] },
  hello: {
    v: [isAnything, false],
    session: [isAnything, false],
    token: [isAnything, false],
    interval: [isFinite_, false],
    timeout: [isFinite_, false],
    resumed: [isBool, false],
    reason: [isOptionalText, false],
    ack: [isCount, false],
  },
};

const hasOwn = (obj, name) => Object.prototype.hasOwnProperty.call(obj, name);

function wellFormed(text) {
  try {
    encodeURIComponent(text); // throws on a lone surrogate (from a \ud800 escape)
    return true;
  } catch {
    return false;
  }
}

/**
 * An inbound control frame as an object, or null if it is not valid protocol: over MAX_CONTROL
 * characters or MAX_CONTROL_BRACKETS brackets, not JSON, not an object, an unknown "t", a
 * nested or non-finite value, a field of the wrong type. Never throws; the caller counts it.
 */
function decodeControl(text) {
  if (text.length > MAX_CONTROL) return null;
  const body = text.slice(1);
  let brackets = 0;
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if ((c === 0x7b || c === 0x5b) && ++brackets > MAX_CONTROL_BRACKETS) return null;
  }
  let obj;
  try {
    obj = JSON.parse(body);
  } catch {
    return null;
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return null;
  const schema = typeof obj.t === "string" && hasOwn(SCHEMA, obj.t) ? SCHEMA[obj.t] : null;
  if (schema === null) return null;
  for (const [name, value] of Object.entries(obj)) {
    if (value !== null && typeof value === "object") return null;
    if (typeof value === "number" && !Number.isFinite(value)) return null; // 1e999
    if (typeof value === "string" && !wellFormed(value)) return null;
    const rule = hasOwn(schema, name) ? schema[name] : null;
    if (rule !== null && !rule[0](value)) return null;
  }
  for (const [name, [, required]] of Object.entries(schema)) {
    if (required && !hasOwn(obj, name)) return null;
  }
  return obj;
}

function controlFrame(t, fields) {
  return RS + JSON.stringify({ t, ...fields });
}

function makeEvent(type, fields) {
  return Object.assign(new Event(type), fields);
}

/**
 * A WebSocket-like connection to a stabilized endpoint that survives drops and restarts.
 *
 * Properties: `state` ("connecting" | "open" | "reconnecting" | "closed"), `sessionId`,
 * `readyState`, `url`, `buffered` (outbound messages held), `rtt` (ms, last client ping).
 * Events: "open" (first connection only), "message", "statechange", "resync", "close",
 * "error" (giving up connecting), each also as an `on<type>` property.
 */
export class StabilizerSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    const opts = { ...DEFAULTS, ...options };
    for (const name of [
      "backoffBase",
      "backoffCap",
      "pingInterval",
      "pingTimeout",
      "openTimeout",
    ]) {
      if (!(isNumber(opts[name]) && opts[name] > 0)) {
        throw new RangeError(`${name} must be a finite number > 0, got ${opts[name]}`);
      }
    }
    if (opts.backoffCap < opts.backoffBase)
      throw new RangeError("backoffCap must be >= backoffBase");
    if (!(
      opts.maxAttempts === Infinity ||
      (Number.isInteger(opts.maxAttempts) && opts.maxAttempts >= 1)
    )) {
      throw new RangeError(
        `maxAttempts must be an integer >= 1 or Infinity, got ${opts.maxAttempts}`,
      );
    }
    if (!(Number.isInteger(opts.maxPending) && opts.maxPending >= 1)) {
      throw new RangeError(`maxPending must be an integer >= 1, got ${opts.maxPending}`);
    }
    this._opts = opts;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    this._handlers = {};
    this.url = resolveUrl(url);
    this.binaryType = opts.binaryType;
    this._rtt = null;
    this._invalidControlFrames = 0;

    this._state = "connecting";
    this._sessionId = null;
    this._token = null;
    this._received = 0; // data frames received on this session
    this._sent = 0; // data frames transmitted on this session (resends not counted)
    this._serverAcked = 0; // data frames the server confirmed
    this._reported = 0; // inbound count last told to the server
    this._unacked = []; // transmitted, not yet confirmed: resent on resume
    this._pending = []; // not transmitted yet (no open connection)
    this._waiting = []; // sends over maxPending, waiting for room: [frame, resolve, reject]

    this._ws = null;
    this._open = false;
    this._awaitingHello = false;
    this._resumeAsked = false;
    this._everOpened = false;
    this._openedAt = 0;
    this._failures = 0; // consecutive attempts that got no hello (maxAttempts applies)
    this._step = 0; // backoff window exponent; also grows across connections that drop at once
    this._lastInbound = 0;
    this._pingSentAt = null;
    this._solicitedAt = null;
    this._ackDue = null;
    this._hint = null; // {at, reason} from a `reconnect` frame
    this._stale = []; // sockets given up on but not closed yet (see _drop)
    this._timer = null;
    this._timerAt = 0;
    this._helloTimer = null;
    this._retryTimer = null;

    this._onOnline = () => {
      // The network is back: don't sit out the rest of a long backoff.
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._connect();
      }
    };
    if (typeof window !== "undefined" && window.addEventListener) {
      window.addEventListener("online", this._onOnline);
    }
    this._connect();
  }

  /** "connecting" | "open" | "reconnecting" | "closed". */
  get state() {
    return this._state;
  }

  /** The server's session id (it changes only on a resync); null before the first hello. */
  get sessionId() {
    return this._sessionId;
  }

  /** Round trip of the last answered client ping, in ms; null if none yet. */
  get rtt() {
    return this._rtt;
  }

  /** Control frames from the server that were not valid protocol: counted and ignored. */
  get invalidControlFrames() {
    return this._invalidControlFrames;
  }

  /** WebSocket-style number: 0 while (re)connecting, 1 open, 3 closed. */
  get readyState() {
    return STATE_NUMBERS[this._state];
  }

  /** Outbound messages held: transmitted but unacknowledged, plus not yet transmitted. */
  get buffered() {
    return this._unacked.length + this._pending.length;
  }

  /**
   * Send a string (text frame), binary data (ArrayBuffer, view or Blob) or a plain object or
   * array (JSON text). While reconnecting, messages are held and sent once the session resumes.
   * Returns a promise that resolves once the message is accepted: at once while fewer than
   * `maxPending` messages are held, else when room is made (await it for backpressure).
   * Throws when the socket is closed or when another `maxPending` sends are already waiting.
   */
  send(data) {
    const frame = encodeData(data);
    if (this._state === "closed") {
      throw new DOMException("the socket is closed", "InvalidStateError");
    }
    if (this._waiting.length === 0 && this.buffered < this._opts.maxPending) {
      this._accept(frame);
      return Promise.resolve();
    }
    if (this._waiting.length >= this._opts.maxPending) {
      throw new DOMException(
        `send buffer full (${this.buffered} held, ${this._waiting.length} waiting)`,
        "QuotaExceededError",
      );
    }
    this._requestAck();
    return new Promise((resolve, reject) => this._waiting.push([frame, resolve, reject]));
  }

  /** Close for good (a normal 1000 close also ends the server-side session). */
  close(code = 1000, reason = "") {
    if (this._state === "closed") return;
    const ws = this._ws;
    this._detach();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    this._finish(code, reason, true);
  }

  // -- connection lifecycle

  _connect() {
    this._retryTimer = null;
    if (this._state === "closed") return;
    const url = buildUrl(this.url, this._token, this._received);
    let ws;
    try {
      ws =
        this._opts.protocols === undefined
          ? new this._WS(url)
          : new this._WS(url, this._opts.protocols);
    } catch (error) {
      // A malformed URL or a blocked port: retrying cannot help.
      this._finish(1006, `cannot connect: ${error.message}`, false, true);
      return;
    }
    ws.binaryType = this.binaryType;
    this._ws = ws;
    this._open = false;
    this._awaitingHello = false;
    ws.onopen = () => this._connectionMade();
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._lost(event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this._helloTimer = setTimeout(
      () => this._drop(1006, "no hello within openTimeout"),
      this._opts.openTimeout,
    );
  }

  _connectionMade() {
    this._awaitingHello = true;
    this._resumeAsked = Boolean(this._token);
    this._lastInbound = now();
    this._pingSentAt = this._solicitedAt = this._ackDue = null;
  }

  /** Stop using the current socket now (silent server or protocol error), handle the loss. */
  _drop(code, reason) {
    const ws = this._ws;
    this._detach();
    if (ws && code === 1002) {
      ws.close(1000, reason); // a protocol error is final: ending the session is right
    } else if (ws && ws.readyState === 0) {
      ws.close(); // still in the handshake: this just drops the TCP connection
    } else if (ws) {
      // A browser cannot abort a connection, and every close code it may send (1000,
      // 3000-4999) would end the server-side session we are about to resume. So the socket is
      // left alone until a later connection has its hello: by then the server has moved the
      // session over (or the socket was dead anyway), and closing it is harmless.
      this._stale.push(ws);
    }
    this._lost(code, reason);
  }

  _closeStale() {
    for (const ws of this._stale.splice(0)) ws.close();
  }

  _detach() {
    const ws = this._ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    clearTimeout(this._helloTimer);
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    this._helloTimer = this._timer = this._retryTimer = null;
  }

  _lost(code, reason) {
    this._detach();
    const opened = this._open;
    this._open = this._awaitingHello = false;
    this._pingSentAt = this._solicitedAt = this._ackDue = null;
    if (this._state === "closed") return;
    const hint = this._hint;
    this._hint = null;
    let again = RECONNECT_CODES.has(code);
    let delay = null;
    if (hint && (again || NORMAL_CODES.has(code))) {
      again = true;
      delay = Math.max(0, hint.at - now());
      reason = reason || hint.reason;
    }
    const { backoffBase, backoffCap, maxAttempts, random } = this._opts;
    const ceiling = (step) => Math.min(backoffCap, backoffBase * 2 ** step);
    if (!opened) {
      this._failures += 1;
      this._step += 1;
      if (!again || this._failures >= maxAttempts) {
        if (again)
          reason = `${reason || "connect failed"} (gave up after ${this._failures} attempts)`;
        this._finish(code, reason, false, true);
        return;
      }
      delay = random() * ceiling(this._step);
    } else {
      this._failures = 0;
      if (now() - this._openedAt >= ceiling(this._step)) this._step = 0;
      if (!again) {
        this._finish(code, reason, code !== 1006);
        return;
      }
      this._setState("reconnecting");
      if (delay === null) {
        delay = random() * ceiling(this._step);
        this._step += 1;
      }
    }
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _finish(code, reason, wasClean, failed = false) {
    if (this._state === "closed") return;
    this._detach();
    this._closeStale();
    if (typeof window !== "undefined" && window.removeEventListener) {
      window.removeEventListener("online", this._onOnline);
    }
    const waiting = this._waiting;
    this._waiting = [];
    this._pending = [];
    this._setState("closed");
    const error = new DOMException(`the socket closed (${code})`, "InvalidStateError");
    for (const [, , reject] of waiting) reject(error);
    if (failed) this._emit(makeEvent("error", { code, reason }));
    const init = { code, reason, wasClean };
    this._emit(
      typeof CloseEvent === "function" ? new CloseEvent("close", init) : makeEvent("close", init),
    );
  }

  // -- outbound

  _accept(frame) {
    if (this._open) {
      this._transmit(frame);
      if (this._unacked.length >= Math.max(1, this._opts.maxPending >> 1)) {
        // Half full: ask for the server's count now, so a sender that never pauses (and so
        // never lets the server's periodic ping come) is not stalled at the bound.
        this._requestAck();
      }
    } else {
      this._pending.push(frame);
    }
  }

  _transmit(frame) {
    this._sent += 1;
    this._unacked.push(frame);
    this._ws.send(frame);
  }

  _control(t, fields) {
    if ("n" in fields) {
      this._reported = fields.n;
      this._ackDue = null;
    }
    this._ws.send(controlFrame(t, fields));
  }

  _ping() {
    this._pingSentAt = now();
    this._control("ping", { ts: this._pingSentAt / 1000, n: this._received });
  }

  _requestAck() {
    if (!this._open || this._pingSentAt !== null) return;
    if (this._solicitedAt !== null && now() - this._solicitedAt < this._opts.pingTimeout) return;
    this._solicitedAt = now();
    this._ping();
    this._schedule();
  }

  _trim(n) {
    if (!isCount(n)) return;
    const count = Math.min(n, this._sent);
    if (count <= this._serverAcked) return;
    this._unacked.splice(0, count - this._serverAcked);
    this._serverAcked = count;
    this._admitWaiting();
  }

  _admitWaiting() {
    while (this._waiting.length && this.buffered < this._opts.maxPending) {
      const [frame, resolve] = this._waiting.shift();
      this._accept(frame);
      resolve();
    }
  }

  // -- inbound

  _receive(frame) {
    const at = now();
    this._lastInbound = at;
    this._pingSentAt = null; // any inbound frame proves the server alive
    if (isText(frame) && frame.startsWith(RS)) {
      if (frame[1] === RS) {
        frame = frame.slice(1);
      } else {
        const msg = decodeControl(frame);
        if (msg) this._handleControl(msg, at);
        else this._invalidControlFrames += 1; // ignored: never app data, never fatal
        this._schedule();
        return;
      }
    }
    if (!this._open) {
      this._drop(1002, "data frame before hello");
      return;
    }
    this._received += 1;
    if (this._received - this._reported >= ACK_EVERY) {
      this._control("ack", { n: this._received });
    } else if (this._ackDue === null) {
      this._ackDue = at + ACK_DELAY;
    }
    this._schedule();
    this._emit(new MessageEvent("message", { data: frame }));
  }

  _handleControl(msg, at) {
    if (msg.t === "hello") {
      this._hello(msg, at);
    } else if (!this._open) {
      // before the hello only the hello counts
    } else if (msg.t === "ping") {
      this._trim(msg.n);
      this._control("pong", { ts: msg.ts, n: this._received });
    } else if (msg.t === "pong") {
      this._trim(msg.n);
      this._solicitedAt = null;
      if (isNumber(msg.ts) && msg.ts * 1000 <= at) this._rtt = at - msg.ts * 1000;
    } else if (msg.t === "ack") {
      this._trim(msg.n);
    } else if (msg.t === "reconnect") {
      const after = isNumber(msg.after_ms) ? Math.max(0, msg.after_ms) : 0;
      this._hint = {
        at: at + after,
        reason: typeof msg.reason === "string" ? msg.reason : "reconnect",
      };
    }
  }

  _hello(msg, at) {
    if (!this._awaitingHello) {
      this._drop(1002, "unexpected hello");
      return;
    }
    if (msg.v !== VERSION || typeof msg.session !== "string" || typeof msg.token !== "string") {
      this._drop(1002, "unsupported hello");
      return;
    }
    clearTimeout(this._helloTimer);
    this._helloTimer = null;
    this._awaitingHello = false;
    this._closeStale();
    const resumed = this._resumeAsked && msg.resumed === true;
    const oldSession = this._sessionId;
    this._sessionId = msg.session;
    this._token = msg.token;
    let resync = null;
    let resend = [];
    if (resumed) {
      // The server holds frames 1..ack; resend the rest, which it has never seen.
      this._trim(isCount(msg.ack) ? msg.ack : this._serverAcked);
      resend = this._unacked.slice();
      this._reported = this._received; // the server read our count from the URL
    } else {
      if (oldSession !== null) {
        resync = makeEvent("resync", {
          reason: typeof msg.reason === "string" && msg.reason ? msg.reason : "unknown",
          oldSessionId: oldSession,
          newSessionId: msg.session,
          // Transmitted on the old session but never confirmed: the server may or may not have
          // processed them, so they are not resent; the app decides.
          unacked: this._unacked.map(unescapeFrame),
        });
      }
      this._unacked = [];
      this._sent = this._serverAcked = this._received = this._reported = 0;
    }
    this._open = true;
    this._lastInbound = at;
    this._openedAt = at;
    for (const frame of resend) this._ws.send(frame);
    if (resumed && resend.length === 0 && this._pending.length === 0) {
      // Any frame proves to the server that this hello arrived; until one does, the token this
      // connection resumed with stays valid (for the retry after a lost hello).
      this._control("ack", { n: this._received });
    }
    const pending = this._pending;
    this._pending = [];
    for (const frame of pending) this._transmit(frame);
    this._admitWaiting();
    this._schedule();
    const first = !this._everOpened;
    this._everOpened = true;
    if (resync) {
      this._emit(resync);
      if (this._state === "closed") return; // a listener closed the socket
    }
    this._setState("open");
    if (first && this._state === "open") this._emit(new Event("open"));
  }

  // -- timers

  _schedule() {
    if (!this._open) return;
    let deadline =
      this._pingSentAt !== null
        ? this._pingSentAt + this._opts.pingTimeout
        : this._lastInbound + this._opts.pingInterval;
    if (this._ackDue !== null) deadline = Math.min(deadline, this._ackDue);
    // A timer already set to fire no later is kept: _tick re-checks and sets the next one, so
    // a busy connection does not reset a timer per message.
    if (this._timer !== null && this._timerAt <= deadline) return;
    clearTimeout(this._timer);
    this._timerAt = deadline;
    this._timer = setTimeout(() => this._tick(), Math.max(0, deadline - now()));
  }

  _tick() {
    this._timer = null;
    if (!this._open) return;
    const at = now();
    if (this._pingSentAt !== null && at >= this._pingSentAt + this._opts.pingTimeout) {
      this._drop(1011, "ping timeout");
      return;
    }
    if (this._pingSentAt === null && at >= this._lastInbound + this._opts.pingInterval) {
      this._ping(); // carries n, so it doubles as the ack
    }
    if (this._ackDue !== null && at >= this._ackDue) this._control("ack", { n: this._received });
    this._schedule();
  }

  // -- events

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit(makeEvent("statechange", { state, previous }));
  }

  _emit(event) {
    // Listeners run synchronously; an exception in one is reported by the browser and never
    // reaches the connection logic (that is how dispatchEvent works).
    this.dispatchEvent(event);
  }
}

for (const type of ["open", "message", "close", "error", "statechange", "resync"]) {
  Object.defineProperty(StabilizerSocket.prototype, `on${type}`, {
    get() {
      return this._handlers[type] || null;
    },
    set(handler) {
      const old = this._handlers[type];
      if (old) this.removeEventListener(type, old);
      this._handlers[type] = typeof handler === "function" ? handler : null;
      if (this._handlers[type]) this.addEventListener(type, this._handlers[type]);
    },
    configurable: true,
    enumerable: true,
  });
}

export default StabilizerSocket;

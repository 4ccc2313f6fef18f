// Unit tests of the browser client, run inside Chromium by test_browser.py.
//
// The page's clock and timers are replaced by a fake scheduler and WebSocket by a scripted
// fake, so every test is deterministic and instant: the browser counterpart of the Python
// client's sans-I/O tests. Evaluated as one async function; returns the list of failures.
async () => {
  const { StabilizerSocket } = await import("/_stabilizer/client.js");
  const RS = "\u001e";
  const failures = [];
  let current = "";
  const eq = (got, want, what) => {
    const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
    if (g !== w) failures.push(`${current}: ${what}: got ${g}, want ${w}`);
  };

  // -- fake time
  let clock = 0;
  let timers = [];
  let nextId = 1;
  const realPerformanceNow = performance.now.bind(performance);
  performance.now = () => clock;
  window.setTimeout = (fn, ms = 0) => {
    const id = nextId++;
    timers.push({ id, at: clock + Math.max(0, ms), fn });
    return id;
  };
  window.clearTimeout = (id) => {
    timers = timers.filter((t) => t.id !== id);
  };
  const advance = (ms) => {
    const end = clock + ms;
    for (;;) {
      timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const due = timers[0];
      if (!due || due.at > end) break;
      timers.shift();
      clock = due.at;
      due.fn();
    }
    clock = end;
  };

  // -- fake WebSocket, driven by the test
  let sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = null;
      sockets.push(this);
    }
    send(frame) {
      this.sent.push(frame);
    }
    close(code, reason) {
      this.closedWith = [code ?? null, reason ?? null];
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    deliver(frame) {
      this.onmessage?.({ data: frame });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    controls() {
      return this.sent
        .filter((f) => typeof f === "string" && f[0] === RS && f[1] !== RS)
        .map((f) => JSON.parse(f.slice(1)));
    }
    data() {
      return this.sent.filter((f) => !(typeof f === "string" && f[0] === RS && f[1] !== RS));
    }
  }
  const hello = (fields = {}) =>
    RS +
    JSON.stringify({
      t: "hello",
      v: 1,
      session: "s1",
      token: "tok1",
      interval: 25,
      timeout: 10,
      resumed: false,
      reason: null,
      ack: 0,
      ...fields,
    });
  const control = (t, fields = {}) => RS + JSON.stringify({ t, ...fields });
  const last = () => sockets[sockets.length - 1];

  function make(options = {}, url = "ws://example.test/ws?room=7") {
    clock = 0;
    timers = [];
    sockets = [];
    const sock = new StabilizerSocket(url, {
      WebSocket: FakeWS,
      backoffBase: 100,
      backoffCap: 1000,
      pingInterval: 2000,
      pingTimeout: 1000,
      random: () => 0.5,
      ...options,
    });
    const log = [];
    for (const type of ["open", "message", "statechange", "resync", "close", "error"]) {
      sock.addEventListener(type, (e) => {
        if (type === "message") log.push(["message", e.data]);
        else if (type === "statechange") log.push(["state", e.state]);
        else if (type === "resync")
          log.push(["resync", e.reason, e.oldSessionId, e.newSessionId, e.unacked]);
        else if (type === "close") log.push(["close", e.code, e.reason]);
        else log.push([type]);
      });
    }
    return { sock, log };
  }
  function opened(options = {}) {
    const made = make(options);
    last().open();
    last().deliver(hello());
    made.log.length = 0;
    return made;
  }

  const tests = {
    "opens with stabilizer=1, sends nothing before hello, then the pending frames in order"() {
      const { sock, log } = make();
      eq(sock.state, "connecting", "initial state");
      sock.send("early");
      last().open();
      sock.send({ a: 1 });
      eq(last().url, "ws://example.test/ws?room=7&stabilizer=1", "url");
      eq(last().sent, [], "nothing before hello");
      last().deliver(hello());
      eq(last().sent, ["early", '{"a":1}'], "pending flushed");
      eq(log, [["state", "open"], ["open"]], "events");
      eq([sock.state, sock.readyState, sock.sessionId], ["open", 1, "s1"], "open");
    },

    "escapes and unescapes RS text; binary passes through"() {
      const { sock, log } = opened();
      const bytes = new Uint8Array([30, 1]);
      sock.send(RS + "x");
      sock.send(bytes);
      eq(last().sent[0], RS + RS + "x", "escaped");
      eq(last().sent[1] === bytes, true, "binary as is");
      last().deliver(RS + RS + "y");
      last().deliver("z");
      last().deliver(RS + "{not json"); // malformed control: ignored
      eq(
        log,
        [
          ["message", RS + "y"],
          ["message", "z"],
        ],
        "inbound",
      );
    },

    "answers server pings with ts and the inbound count; acks every 32 frames or after 1 s"() {
      const { log } = opened();
      last().deliver("a");
      last().deliver(control("ping", { ts: 12.5, n: 0 }));
      eq(last().controls(), [{ t: "pong", ts: 12.5, n: 1 }], "pong");
      last().sent = [];
      last().deliver("b");
      advance(999);
      eq(last().controls(), [], "not yet");
      advance(1);
      eq(last().controls(), [{ t: "ack", n: 2 }], "delayed ack");
      last().sent = [];
      for (let i = 0; i < 32; i++) last().deliver(`m${i}`);
      eq(last().controls(), [{ t: "ack", n: 34 }], "ack every 32");
      eq(log.length, 34, "messages");
    },

    "pings a silent server and, without an answer, resumes on a new connection"() {
      const { sock } = opened();
      const first = last();
      advance(2000);
      eq(
        first.controls().map((c) => c.t),
        ["ping"],
        "ping after pingInterval",
      );
      advance(999);
      eq(sockets.length, 1, "still waiting for the pong");
      advance(1);
      eq(sock.state, "reconnecting", "declared dead");
      eq(first.closedWith, null, "not closed yet: any close code would end the session");
      advance(50); // backoff: 0.5 * min(1000, 100 * 2**0)
      eq(sockets.length, 2, "reconnected");
      eq(
        last().url,
        "ws://example.test/ws?room=7&stabilizer=1&stabilizer_resume=tok1&stabilizer_ack=0",
        "resume url",
      );
      last().open();
      last().deliver(hello({ resumed: true, token: "tok2" }));
      eq(first.closedWith, [null, null], "the stale socket is closed once the session moved");
      eq(sock.state, "open", "open again");
    },

    "any inbound frame counts as an answer"() {
      const { sock } = opened();
      advance(2000);
      last().deliver("data, not a pong");
      advance(1500);
      eq([sock.state, sockets.length], ["open", 1], "alive");
    },

    "backoff is exponential with full jitter, and maxAttempts gives up"() {
      const draws = [0.5, 0.999, 0, 0.25];
      const { sock, log } = make({ maxAttempts: 5, random: () => draws.shift() ?? 0.5 });
      const starts = [];
      const failAll = () => {
        while (sock.state !== "closed") {
          starts.push(clock);
          last().drop(1006);
          advance(timers.length ? Math.min(...timers.map((t) => t.at)) - clock : 0);
        }
      };
      failAll();
      // attempt k (k = 1, 2, ...) waits draw * min(cap, base * 2**k)
      const gaps = starts.slice(1).map((t, i) => t - starts[i]);
      eq(gaps, [0.5 * 200, 0.999 * 400, 0 * 800, 0.25 * 1000], "delays");
      eq(sockets.length, 5, "attempts");
      eq(
        log.slice(-2).map((e) => e[0]),
        ["error", "close"],
        "gave up",
      );
      eq(log[log.length - 1][2], "connect failed (gave up after 5 attempts)", "reason");
      let threw = false;
      try {
        sock.send("x");
      } catch (error) {
        threw = error.name === "InvalidStateError";
      }
      eq(threw, true, "send after close throws");
    },

    "a resumed hello with nothing to resend is confirmed at once with an ack"() {
      opened();
      last().deliver("in1");
      last().drop(1006);
      advance(50);
      last().open();
      last().deliver(hello({ resumed: true, ack: 0, token: "tok2" }));
      eq(last().controls(), [{ t: "ack", n: 1 }], "the server learns the hello arrived");
    },

    "resume resends exactly what the server lacks, then what was sent meanwhile"() {
      const { sock, log } = opened();
      for (const m of ["m1", "m2", "m3"]) sock.send(m);
      last().deliver("in1");
      last().drop(1006);
      eq(sock.state, "reconnecting", "state");
      sock.send("m4");
      advance(50);
      eq(last().url.endsWith("stabilizer_resume=tok1&stabilizer_ack=1"), true, "ack in url");
      last().open();
      last().deliver(hello({ resumed: true, ack: 1, token: "tok2" }));
      eq(last().data(), ["m2", "m3", "m4"], "resent after hello.ack");
      last().deliver("in2"); // replayed by the server: counts on
      last().drop(1012);
      advance(100);
      eq(last().url.endsWith("stabilizer_resume=tok2&stabilizer_ack=2"), true, "new token, count");
      eq(
        log.filter((e) => e[0] === "resync"),
        [],
        "no resync",
      );
    },

    "a refused resume is a resync event; pending frames go to the new session"() {
      const { sock, log } = opened();
      sock.send("acked");
      sock.send(RS + "unacked");
      last().deliver(control("ack", { n: 1 }));
      last().drop(1006);
      sock.send("pending");
      advance(50);
      last().open();
      last().deliver(hello({ session: "s2", token: "t2", reason: "expired" }));
      eq(
        log.filter((e) => e[0] === "resync"),
        [["resync", "expired", "s1", "s2", [RS + "unacked"]]],
        "event",
      );
      eq(last().data(), ["pending"], "pending sent");
      eq(sock.sessionId, "s2", "new session");
      last().drop(1006);
      advance(100);
      eq(last().url.endsWith("stabilizer_resume=t2&stabilizer_ack=0"), true, "counters reset");
    },

    "a reconnect hint's after_ms replaces the backoff, even before a 1000 close"() {
      const { sock } = opened();
      last().deliver(control("reconnect", { after_ms: 700, reason: "draining" }));
      last().drop(1000, "");
      eq(sock.state, "reconnecting", "not final");
      advance(699);
      eq(sockets.length, 1, "waits for after_ms");
      advance(1);
      eq(sockets.length, 2, "then reconnects");
    },

    "a normal close from the server is final"() {
      const { sock, log } = opened();
      last().drop(1000, "bye");
      advance(5000);
      eq([sock.state, sockets.length], ["closed", 1], "closed");
      eq(
        log,
        [
          ["state", "closed"],
          ["close", 1000, "bye"],
        ],
        "events",
      );
    },

    "the send buffer is bounded: beyond maxPending send waits, beyond twice it throws"() {
      const { sock } = opened({ maxPending: 4 });
      const resolved = [];
      for (let i = 1; i <= 8; i++) sock.send(`m${i}`).then(() => resolved.push(i));
      eq(last().data(), ["m1", "m2", "m3", "m4"], "four transmitted");
      eq(
        last()
          .controls()
          .map((c) => c.t),
        ["ping"],
        "half full: the count is asked for",
      );
      let threw = "";
      try {
        sock.send("m9");
      } catch (error) {
        threw = error.name;
      }
      eq(threw, "QuotaExceededError", "hard bound");
      last().deliver(control("pong", { ts: 0, n: 3 }));
      eq(last().data(), ["m1", "m2", "m3", "m4", "m5", "m6", "m7"], "room for three more");
      eq(sock.buffered, 4, "held");
      return Promise.resolve().then(() => eq(resolved, [1, 2, 3, 4, 5, 6, 7], "promises"));
    },

    "close() ends the session with 1000 and rejects waiting sends"() {
      const { sock, log } = opened({ maxPending: 1 });
      const ws = last();
      sock.send("a");
      let rejected = null;
      sock.send("b").catch((error) => (rejected = error.name));
      sock.close();
      eq(ws.closedWith, [1000, ""], "close frame");
      eq(
        log,
        [
          ["state", "closed"],
          ["close", 1000, ""],
        ],
        "events",
      );
      return Promise.resolve().then(() => eq(rejected, "InvalidStateError", "rejected"));
    },

    "on<event> properties work like WebSocket's"() {
      const { sock } = opened();
      const got = [];
      sock.onmessage = (e) => got.push(e.data);
      last().deliver("one");
      sock.onmessage = null;
      last().deliver("two");
      eq(got, ["one"], "handler");
    },

    "control frames that are not valid protocol are counted and ignored, never fatal"() {
      const { sock, log } = opened();
      const hostile = [
        RS + "[".repeat(2000) + "]".repeat(2000), // deep nesting
        RS + '{"t":"ping","ts":1e999,"n":0}', // Infinity after parsing
        RS + '{"t":"ping","ts":"12","n":0}', // wrong type
        RS + '{"t":"ping","n":0}', // ts missing
        RS + '{"t":"ack","n":-1}',
        RS + '{"t":"ack","n":{"x":1}}', // nested
        RS + '{"t":"reconnect","reason":"\\ud800"}', // a lone surrogate
        RS + '{"t":"no-such-type"}',
        RS + '{"no t":1}',
        RS + "[1,2]",
        RS + '{"t":"ping","ts":1,"pad":"' + "x".repeat(5000) + '"}', // oversize
        RS + "{not json",
      ];
      for (const frame of hostile) last().deliver(frame);
      eq(sock.invalidControlFrames, hostile.length, "counted");
      eq(last().sent, [], "nothing answered");
      eq([sock.state, last().closedWith], ["open", null], "still open");
      last().deliver(control("ping", { ts: 12.5, n: 0 }));
      eq(last().controls(), [{ t: "pong", ts: 12.5, n: 0 }], "a valid ping is answered");
      last().deliver("after");
      eq(log, [["message", "after"]], "data still flows");
    },

    "a data frame before hello is a protocol error"() {
      const { sock, log } = make();
      last().open();
      last().deliver("too early");
      eq(sock.state, "closed", "closed");
      eq(log[log.length - 1], ["close", 1002, "data frame before hello"], "close event");
    },
  };

  for (const [name, test] of Object.entries(tests)) {
    current = name;
    try {
      await test();
    } catch (error) {
      failures.push(`${name}: threw ${error && error.stack}`);
    }
  }
  performance.now = realPerformanceNow;
  return failures;
};

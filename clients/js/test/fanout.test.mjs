// Unit tests of clients/js/fanout.js with node's built-in test runner: a fake
// clock (every timer of the client goes through it) and a fake WebSocket that
// the test drives as the server would. Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";

import { FanoutClient, backoffDelay, DEFAULTS } from "../fanout.js";

// ---- fakes ----

class FakeClock {
  constructor() {
    this.now = 0;
    this.seq = 0;
    this.timers = new Map(); // id -> {at, fn}
  }
  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.now + Math.max(0, ms | 0), fn, seq: id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  // The delay of the one pending timer that fires first (for backoff checks).
  next() {
    let best = null;
    for (const t of this.timers.values()) if (best === null || t.at < best.at) best = t;
    return best === null ? null : best.at - this.now;
  }
  // Runs every timer due within ms, in time order, letting promises settle between.
  async tick(ms) {
    const end = this.now + ms;
    for (;;) {
      await settle();
      let best = null;
      for (const [id, t] of this.timers) if (t.at <= end && (best === null || t.at < best[1].at || (t.at === best[1].at && t.seq < best[1].seq))) best = [id, t];
      if (best === null) break;
      this.timers.delete(best[0]);
      this.now = best[1].at;
      best[1].fn();
    }
    this.now = end;
    await settle();
  }
}

async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

function makeSocketClass() {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.closed = null; // {code, reason} once the client closed it
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(s) {
      if (this.closed) throw new Error("closed");
      this.sent.push(JSON.parse(s));
    }
    close(code, reason) {
      this.closed = { code, reason };
    }
    // the server's side
    open() {
      this.onopen && this.onopen({});
    }
    recv(obj) {
      this.onmessage && this.onmessage({ data: JSON.stringify(obj) });
    }
    welcome(extra = {}) {
      this.open();
      this.recv({ type: "welcome", pos: "w", ...extra });
    }
    serverClose(code, reason = "") {
      this.onclose && this.onclose({ code, reason });
    }
    query() {
      return new URL(this.url).searchParams;
    }
  }
  return { FakeSocket, sockets };
}

function setup(opts = {}) {
  const clock = new FakeClock();
  const { FakeSocket, sockets } = makeSocketClass();
  const events = [];
  const c = new FanoutClient("ws://127.0.0.1:1/ws", {
    token: "T",
    WebSocket: FakeSocket,
    timers: clock,
    random: () => 0.999,
    environment: null,
    ...opts,
  });
  for (const ev of ["state", "message", "recovered", "error", "joined"]) c.on(ev, (a) => events.push([ev, a]));
  const of = (ev) => events.filter((e) => e[0] === ev).map((e) => e[1]);
  const last = () => sockets[sockets.length - 1];
  return { c, clock, sockets, events, of, last };
}

let idn = 0;
const msg = (extra) => ({ type: "message", id: "id-" + ++idn, data: idn, ...extra });

// ---- tests ----

test("backoff: full jitter, doubling from min up to max", () => {
  assert.equal(backoffDelay(0, 500, 20000, () => 0), 0);
  assert.equal(backoffDelay(0, 500, 20000, () => 0.999), 499);
  assert.equal(backoffDelay(1, 500, 20000, () => 0.999), 999);
  assert.equal(backoffDelay(5, 500, 20000, () => 0.999), 15984);
  assert.equal(backoffDelay(6, 500, 20000, () => 0.999), 19980);
  assert.equal(backoffDelay(1000, 500, 20000, () => 0.999), 19980);
  for (let a = 0; a < 50; a++) {
    const d = backoffDelay(a, 500, 20000);
    assert.ok(d >= 0 && d < Math.min(20000, 500 * 2 ** a), `attempt ${a}: ${d}`);
  }
  assert.equal(DEFAULTS.minReconnectDelay, 500);
  assert.equal(DEFAULTS.maxReconnectDelay, 20000);
});

test("connect: query, state changes, connected only on the welcome", async () => {
  const { c, sockets, of, last } = setup({ rooms: ["lobby"] });
  assert.equal(c.state, "disconnected");
  c.connect();
  assert.equal(sockets.length, 1);
  const q = last().query();
  assert.equal(q.get("token"), "T");
  assert.equal(q.get("heartbeat"), "1");
  assert.equal(q.get("auth"), "close");
  assert.equal(q.get("since"), null);
  assert.equal(c.state, "connecting");
  last().open();
  assert.equal(c.state, "connecting");
  last().recv({ type: "welcome", pos: "u.p0" });
  assert.equal(c.state, "connected");
  assert.deepEqual(of("state"), ["connecting", "connected"]);
  assert.deepEqual(last().sent, [{ type: "join", room: "lobby" }]);
  assert.deepEqual(of("recovered"), [], "no resume asked: no recovered event");
  last().recv({ type: "joined", room: "lobby", pos: "r.p0" });
  assert.deepEqual(c.positions(), { user: "u.p0", "room:lobby": "r.p0" });
});

test("resume: user stream and rooms from their last positions, recovered events", async () => {
  const { c, clock, sockets, of, last } = setup({ rooms: ["lobby"] });
  c.connect();
  last().welcome({ pos: "u.0" });
  last().recv({ type: "joined", room: "lobby", pos: "r.0" });
  last().recv(msg({ user: "alice", pos: "u.1" }));
  last().recv(msg({ room: "lobby", pos: "r.1" }));
  last().serverClose(1001, "server shutting down");
  assert.equal(c.state, "disconnected");
  const d = clock.next();
  assert.ok(d >= 0 && d < 500, `first retry within min delay, got ${d}`);
  await clock.tick(d);
  assert.equal(sockets.length, 2);
  assert.equal(last().query().get("since"), "u.1");
  // recovered: the welcome's pos is not taken; the replay's messages move it
  last().welcome({ pos: "u.9", recovered: true });
  assert.deepEqual(of("recovered"), [{ stream: "user", recovered: true }]);
  assert.equal(c.positions().user, "u.1");
  assert.deepEqual(last().sent, [{ type: "join", room: "lobby", since: "r.1" }]);
  last().recv({ type: "joined", room: "lobby", pos: "r.5", recovered: true });
  assert.deepEqual(of("recovered")[1], { stream: "room:lobby", recovered: true });
  assert.equal(c.positions()["room:lobby"], "r.1");
  last().recv(msg({ user: "alice", pos: "u.2" }));
  assert.equal(c.positions().user, "u.2");
  // not recovered: start from the announced positions
  last().serverClose(1006, "");
  await clock.tick(clock.next());
  last().welcome({ pos: "u.50", recovered: false });
  last().recv({ type: "joined", room: "lobby", pos: "r.50", recovered: false });
  assert.deepEqual(of("recovered").slice(2), [
    { stream: "user", recovered: false },
    { stream: "room:lobby", recovered: false },
  ]);
  assert.deepEqual(c.positions(), { user: "u.50", "room:lobby": "r.50" });
  assert.equal(c.stats.resumes, 2);
});

test("dedup: a message id seen before is dropped, across reconnects; memory bounded", async () => {
  const { c, clock, of, last } = setup({ dedupSize: 3 });
  c.connect();
  last().welcome();
  const a = msg({ user: "u", pos: "1" });
  last().recv(a);
  last().recv(a);
  last().serverClose(1001);
  await clock.tick(clock.next());
  last().welcome({ recovered: true });
  last().recv(a); // re-delivered after a crash (at-least-once)
  assert.equal(of("message").length, 1);
  assert.equal(c.stats.duplicates, 2);
  for (let i = 0; i < 3; i++) last().recv(msg({ user: "u", pos: "p" + i }));
  last().recv(a); // forgotten: only dedupSize ids are kept
  assert.equal(of("message").length, 5);
  assert.equal(c._seen.size, 3);
});

test("backoff grows while attempts fail, and resets after a connection that stayed up", async () => {
  const { c, clock, sockets, last } = setup({ stableAfter: 5000 });
  c.connect();
  const delays = [];
  for (let i = 0; i < 8; i++) {
    last().serverClose(1006); // the upgrade failed: no welcome
    delays.push(clock.next());
    await clock.tick(clock.next());
  }
  assert.deepEqual(delays, [499, 999, 1998, 3996, 7992, 15984, 19980, 19980]);
  assert.equal(sockets.length, 9);
  // a connection that drops before stableAfter does not reset the backoff
  last().welcome();
  await clock.tick(4000);
  last().serverClose(1006);
  assert.equal(clock.next(), 19980);
  await clock.tick(clock.next());
  last().welcome();
  await clock.tick(5000);
  last().serverClose(1001);
  assert.equal(clock.next(), 499);
});

test("liveness: silence beyond ping_ms + heartbeatTimeout replaces the connection; pings answered", async () => {
  const { c, clock, sockets, last } = setup({ heartbeatTimeout: 500 });
  c.connect();
  last().welcome({ ping_ms: 1000 });
  await clock.tick(1400);
  last().recv({ type: "ping" });
  assert.deepEqual(last().sent.at(-1), { type: "pong" });
  await clock.tick(1400); // 1400 after the ping: still alive
  assert.equal(sockets.length, 1);
  assert.equal(last().closed, null);
  await clock.tick(100); // 1500 of silence
  assert.equal(sockets[0].closed.code, 4000);
  assert.equal(c.state, "disconnected");
  assert.equal(c.stats.dead, 1);
  await clock.tick(clock.next());
  assert.equal(sockets.length, 2, "a new connection replaces the silent one");
  // a late frame of the dropped socket changes nothing
  sockets[0].recv(msg({ user: "u", pos: "x" }));
  assert.equal(c.stats.messages, 0);
});

test("liveness without a server heartbeat: the client pings after pingInterval", async () => {
  const { c, clock, sockets, last } = setup({ heartbeat: false, pingInterval: 2000, heartbeatTimeout: 300 });
  c.connect();
  assert.equal(last().query().get("heartbeat"), null);
  last().welcome(); // no ping_ms
  await clock.tick(2000);
  assert.deepEqual(last().sent.at(-1), { type: "ping" });
  last().recv({ type: "pong" });
  await clock.tick(2000);
  assert.deepEqual(last().sent.at(-1), { type: "ping" });
  await clock.tick(300);
  assert.equal(sockets[0].closed.code, 4000);
  assert.equal(c.stats.dead, 1);
});

test("connect timeout: no welcome in time drops the attempt and retries", async () => {
  const { c, clock, sockets } = setup({ connectTimeout: 3000 });
  c.connect();
  sockets[0].open();
  await clock.tick(2999);
  assert.equal(sockets[0].closed, null);
  await clock.tick(1);
  assert.equal(sockets[0].closed.code, 4000);
  assert.equal(c.state, "disconnected");
  await clock.tick(clock.next());
  assert.equal(sockets.length, 2);
});

test("token: asked before every connect; expired then good connects", async () => {
  let n = 0;
  const { c, clock, sockets, of, last } = setup({ token: async () => "tok" + ++n });
  c.connect();
  await clock.tick(0);
  assert.equal(last().query().get("token"), "tok1");
  last().open();
  last().serverClose(4001, "token expired"); // auth=close: refused upgrade
  assert.equal(clock.next(), 0, "a fresh token is asked for at once");
  await clock.tick(0);
  assert.equal(sockets.length, 2);
  assert.equal(last().query().get("token"), "tok2");
  last().welcome();
  assert.equal(c.state, "connected");
  assert.deepEqual(of("error"), []);
  // refusals counted in a row only: a later expiry gets another fresh token
  last().serverClose(4001, "token expired");
  await clock.tick(0);
  assert.equal(last().query().get("token"), "tok3");
  last().welcome();
  assert.equal(n, 3);
});

test("token: a fresh token refused too stops the client (closed + error)", async () => {
  let n = 0;
  const { c, clock, sockets, of, last } = setup({ token: () => "bad" + ++n });
  c.connect();
  await clock.tick(0);
  last().serverClose(4003, "invalid token");
  await clock.tick(0);
  assert.equal(sockets.length, 2);
  last().serverClose(4003, "invalid token");
  assert.equal(c.state, "closed");
  const errs = of("error");
  assert.equal(errs.length, 1);
  assert.equal(errs[0].code, "token_refused");
  assert.equal(errs[0].closeCode, 4003);
  await clock.tick(60000);
  assert.equal(sockets.length, 2, "no reconnect after the stop");
  assert.equal(n, 2);
  assert.deepEqual(of("state").slice(-1), ["closed"]);
});

test("token function that throws: error event, retried with backoff", async () => {
  let n = 0;
  const { c, clock, sockets, of } = setup({
    token: async () => {
      if (++n === 1) throw new Error("auth backend down");
      return "ok";
    },
  });
  c.connect();
  await clock.tick(0);
  assert.equal(sockets.length, 0);
  assert.equal(of("error")[0].code, "token_error");
  assert.equal(c.state, "disconnected");
  await clock.tick(clock.next());
  assert.equal(sockets.length, 1);
});

test("join/leave: sent when connected, joined on every reconnect; a refused join is dropped", async () => {
  const { c, clock, of, last } = setup();
  c.connect();
  last().welcome();
  c.join("a").join("b").join("secret");
  assert.deepEqual(last().sent.map((m) => m.room), ["a", "b", "secret"]);
  last().recv({ type: "joined", room: "a", pos: "ra" });
  last().recv({ type: "joined", room: "b", pos: "rb" });
  last().recv({ type: "error", code: "forbidden", message: "not allowed to join this room" });
  assert.equal(of("error")[0].room, "secret");
  assert.deepEqual(c.rooms(), ["a", "b"]);
  c.leave("a");
  assert.deepEqual(last().sent.at(-1), { type: "leave", room: "a" });
  last().recv({ type: "left", room: "a" });
  last().recv(msg({ room: "a", pos: "ra2" })); // in flight before the leave: delivered, not tracked
  assert.deepEqual(c.positions(), { user: "w", "room:b": "rb" });
  last().serverClose(1006);
  await clock.tick(clock.next());
  last().welcome({ recovered: true });
  assert.deepEqual(last().sent, [{ type: "join", room: "b", since: "rb" }]);
});

test("close(): state closed, socket closed with 1000, no reconnect", async () => {
  const { c, clock, sockets, last } = setup();
  c.connect();
  last().welcome();
  c.close();
  assert.equal(c.state, "closed");
  assert.equal(sockets[0].closed.code, 1000);
  await clock.tick(100000);
  assert.equal(sockets.length, 1);
  c.connect(); // and it can start again
  assert.equal(sockets.length, 2);
});

test("browser events: offline drops, online reconnects at once, pagehide/pageshow", async () => {
  const env = new EventTarget();
  const { c, clock, sockets, last } = setup({ environment: env });
  c.connect();
  last().welcome();
  env.dispatchEvent(new Event("offline"));
  assert.equal(sockets[0].closed.code, 4000);
  assert.equal(c.state, "disconnected");
  assert.equal(clock.next(), 20000, "offline: retries slow down to maxReconnectDelay");
  env.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 2, "online: reconnect without waiting for the backoff");
  last().welcome();
  // online while connected probes the socket with a ping
  env.dispatchEvent(new Event("online"));
  assert.deepEqual(last().sent.at(-1), { type: "ping" });
  last().recv({ type: "pong" });
  // bfcache
  env.dispatchEvent(Object.assign(new Event("pagehide"), { persisted: true }));
  assert.equal(sockets[1].closed.code, 1000);
  assert.equal(c.state, "disconnected");
  await clock.tick(100000);
  assert.equal(sockets.length, 2, "no socket while the page is hidden");
  env.dispatchEvent(Object.assign(new Event("pageshow"), { persisted: true }));
  assert.equal(sockets.length, 3);
  assert.equal(last().query().get("since"), "w");
  c.close();
  env.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 3, "listeners removed by close()");
});

test("frames: unknown types and members are ignored; non-JSON reported, not fatal", async () => {
  const { c, of, last } = setup();
  c.connect();
  last().welcome({ novelty: 1 });
  last().recv({ type: "something-new", x: 1 });
  last().onmessage({ data: "not json" });
  last().recv(msg({ user: "u", pos: "1", extra: true }));
  assert.equal(of("message").length, 1);
  assert.equal(of("error")[0].code, "bad_frame");
  assert.equal(c.state, "connected");
});

test("a listener that throws does not break the client", async () => {
  const { c, clock, last, of } = setup();
  c.on("message", () => {
    throw new Error("app bug");
  });
  c.connect();
  last().welcome();
  last().recv(msg({ user: "u", pos: "1" }));
  last().recv(msg({ user: "u", pos: "2" }));
  assert.equal(of("message").length, 2);
  assert.equal(c.positions().user, "2");
  // the errors are rethrown from timers (reported, as uncaught errors would be)
  let thrown = 0;
  for (const t of [...clock.timers.values()].filter((t) => t.at === clock.now)) {
    try {
      t.fn();
    } catch {
      thrown++;
    }
  }
  assert.ok(thrown >= 2);
});

test("a token function that never answers is cut by the connect timeout", async () => {
  let n = 0;
  const { c, clock, sockets, last } = setup({
    connectTimeout: 2000,
    token: () => (++n === 1 ? new Promise(() => {}) : "late-but-fine"),
  });
  c.connect();
  await clock.tick(1999);
  assert.equal(sockets.length, 0);
  assert.equal(c.state, "connecting");
  await clock.tick(1);
  assert.equal(c.state, "disconnected");
  await clock.tick(clock.next());
  assert.equal(sockets.length, 1);
  assert.equal(last().query().get("token"), "late-but-fine");
  assert.equal(n, 2);
});

test("a tab that becomes visible probes its connection", async () => {
  const env = new EventTarget();
  env.document = new EventTarget();
  env.document.visibilityState = "hidden";
  const { c, clock, sockets, last } = setup({ environment: env, heartbeatTimeout: 700 });
  c.connect();
  last().welcome({ ping_ms: 60000 });
  env.document.visibilityState = "visible";
  env.document.dispatchEvent(new Event("visibilitychange"));
  assert.deepEqual(last().sent.at(-1), { type: "ping" });
  await clock.tick(699);
  assert.equal(sockets[0].closed, null);
  await clock.tick(1); // no answer within heartbeatTimeout, although ping_ms is a minute
  assert.equal(sockets[0].closed.code, 4000);
  assert.equal(c.stats.dead, 1);
});

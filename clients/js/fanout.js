// fanout.js: the browser and Node.js client of fanout-delivery (DESIGN.md,
// "Browser and Node.js client"; the wire protocol is schemas/client-protocol.md).
// One ES module, no run-time dependencies. It reconnects with exponential
// backoff and full jitter, resumes the user stream and every joined room from
// the last position it saw, drops duplicates by id, replaces a connection that
// went silent (the server's app-level heartbeat, heartbeat=1), and stops when a
// fresh token is refused too (auth=close: the server closes with 4001/4003
// instead of an HTTP 401 a browser cannot see).

/** Defaults of every option (milliseconds unless said otherwise). */
export const DEFAULTS = Object.freeze({
  minReconnectDelay: 500, // backoff: the first delay is random in [0, min)
  maxReconnectDelay: 20000, // ... doubling per failed attempt up to this cap
  stableAfter: 10000, // a connection that stayed up this long resets the backoff
  connectTimeout: 10000, // token + WebSocket open + welcome must fit in this
  heartbeatTimeout: 10000, // silence tolerated beyond the server's ping_ms
  pingInterval: 25000, // without ping_ms (an older server): we ping after this much silence
  dedupSize: 10000, // message ids remembered to drop duplicates (all streams)
  heartbeat: true, // ask the server for {"type":"ping"} frames (heartbeat=1)
  authClose: true, // ask for 4001/4003 close codes on a refused token (auth=close)
});

// What the client does on each close code (README "Close codes"):
// "token": ask for a fresh token and reconnect at once; a second refusal in a
// row stops the client (state "closed", an "error" event). Every other code:
// reconnect with backoff and resume (1001 drain, 1006 lost, 1008, 1011, 1012
// Redis resync, 1013 slow reader or resume overflow, ...).
const TOKEN_CODES = new Set([4001, 4003]);

// Our own close codes, sent to the server when we drop a connection.
const CLOSE_NORMAL = 1000;
const CLOSE_NO_HEARTBEAT = 4000; // silent for ping_ms + heartbeatTimeout (or no welcome in time)

/**
 * The delay before reconnect attempt `attempt` (0-based): "full jitter",
 * random in [0, min(max, min * 2^attempt)).
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

const noop = () => {};

export class FanoutClient {
  /**
   * @param {string} url  ws:// or wss:// URL of /ws, without the token
   * @param {object} options  see fanout.d.ts
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== "function")
      throw new TypeError("fanout: no WebSocket here; pass options.WebSocket (e.g. the ws package)");
    const t = options.timers;
    this._setTimeout = t ? t.setTimeout.bind(t) : (f, ms) => setTimeout(f, ms);
    this._clearTimeout = t ? t.clearTimeout.bind(t) : (h) => clearTimeout(h);
    this._random = options.random || Math.random;
    this._listeners = new Map();
    this._rooms = new Set(options.rooms || []);
    // stream ("user" | "room:<name>") -> the last pos received (or announced)
    this._pos = new Map(Object.entries(options.positions || {}));
    this._seen = new Set(); // message ids, oldest first, at most dedupSize
    this._state = "disconnected";
    this._want = false; // connect() called and not close()d
    this._suspended = false; // pagehide (bfcache): no socket until pageshow
    this._offline = false; // the browser said offline: retry slowly until it says online
    this._ws = null;
    this._gen = 0; // bumped when a socket is dropped: stale callbacks see another value
    this._connected = false; // the current socket got its welcome
    this._pingMs = 0;
    this._attempt = 0; // failed attempts since the last stable connection
    this._refusals = 0; // token refusals in a row
    this._userSince = undefined; // the since= of the current socket
    this._requests = []; // our join/leave requests not answered yet, in order
    this._timers = { retry: null, connect: null, watch: null, stable: null };
    this._everConnected = false;
    this.stats = { connects: 0, resumes: 0, duplicates: 0, dead: 0, messages: 0 };
    const env = options.environment !== undefined ? options.environment : globalThis;
    this._win = env && typeof env.addEventListener === "function" ? env : null;
    this._doc = this._win && env.document && typeof env.document.addEventListener === "function"
      ? env.document : null;
    this._handlers = {
      online: () => this._online(),
      offline: () => this._goOffline(),
      pagehide: (e) => this._pagehide(e),
      pageshow: (e) => this._pageshow(e),
      visibilitychange: () => this._visible(),
    };
  }

  /** "connecting" | "connected" | "disconnected" | "closed" */
  get state() {
    return this._state;
  }

  /** The last position of every stream, e.g. to keep across a page reload (option positions). */
  positions() {
    return Object.fromEntries(this._pos);
  }

  /** The rooms joined on every (re)connect. */
  rooms() {
    return [...this._rooms];
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    const s = this._listeners.get(event);
    if (s) s.delete(fn);
    return this;
  }

  connect() {
    if (this._want) return this;
    this._want = true;
    this._refusals = 0;
    this._listen(true);
    this._open();
    return this;
  }

  close() {
    const was = this._want;
    this._want = false;
    this._listen(false);
    this._drop(CLOSE_NORMAL, "client closed");
    this._clear("retry");
    if (was || this._state !== "closed") this._setState("closed");
    return this;
  }

  join(room) {
    if (typeof room !== "string" || room === "") throw new TypeError("fanout: room must be a non-empty string");
    if (this._rooms.has(room)) return this;
    this._rooms.add(room);
    if (this._connected) this._join(room);
    return this;
  }

  leave(room) {
    if (!this._rooms.delete(room)) return this;
    this._pos.delete("room:" + room);
    if (this._connected) this._request({ type: "leave", room }, { op: "leave", room });
    return this;
  }

  // ---- events ----

  _emit(event, ...args) {
    const s = this._listeners.get(event);
    if (!s) return;
    for (const fn of [...s]) {
      try {
        fn(...args);
      } catch (err) {
        // A listener's bug must not stop the client: report it, go on.
        this._setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  _setState(s, detail) {
    if (this._state === s) return;
    this._state = s;
    this._emit("state", s, detail);
  }

  _error(code, message, extra) {
    this._emit("error", { code, message, ...extra });
  }

  // ---- timers ----

  _clear(name) {
    if (this._timers[name] !== null) {
      this._clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _set(name, ms, fn) {
    this._clear(name);
    this._timers[name] = this._setTimeout(() => {
      this._timers[name] = null;
      fn();
    }, ms);
  }

  // ---- connecting ----

  _buildUrl(token) {
    const q = ["token=" + encodeURIComponent(token)];
    if (this.options.heartbeat) q.push("heartbeat=1");
    if (this.options.authClose) q.push("auth=close");
    const since = this._pos.get("user");
    if (since !== undefined) q.push("since=" + encodeURIComponent(since));
    return this.url + (this.url.includes("?") ? "&" : "?") + q.join("&");
  }

  async _open() {
    this._clear("retry");
    if (!this._want || this._suspended || this._ws !== null) return;
    const gen = ++this._gen;
    this._setState("connecting");
    // The whole attempt (token, TCP, TLS, upgrade, welcome) has one deadline.
    this._set("connect", this.options.connectTimeout, () => this._lost(CLOSE_NO_HEARTBEAT, "connect timeout"));
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (err) {
      if (gen !== this._gen) return;
      this._error("token_error", "the token function failed: " + ((err && err.message) || err), { error: err });
      this._lost(0, "token function failed");
      return;
    }
    if (gen !== this._gen || !this._want) return; // closed or timed out meanwhile
    if (typeof token !== "string" || token === "") {
      this._error("token_error", "the token is not a non-empty string");
      this._lost(0, "no token");
      return;
    }
    const url = this._buildUrl(token);
    let ws;
    try {
      ws = new this._WS(url);
    } catch (err) {
      this._error("connect_error", String((err && err.message) || err), { error: err });
      this._lost(0, "WebSocket constructor failed");
      return;
    }
    this._ws = ws;
    this._userSince = this._pos.get("user");
    this._requests = [];
    ws.onopen = noop; // connected means welcomed, not open
    ws.onerror = noop; // a close event follows
    ws.onmessage = (ev) => {
      if (gen === this._gen) this._frame(ev.data);
    };
    ws.onclose = (ev) => {
      if (gen === this._gen) this._lost(ev.code, ev.reason);
    };
  }

  // Lets go of the current socket (if any) without deciding what comes next.
  _drop(code, reason) {
    this._gen++;
    this._clear("connect");
    this._clear("watch");
    this._clear("stable");
    this._connected = false;
    this._requests = [];
    const ws = this._ws;
    this._ws = null;
    if (ws === null) return;
    ws.onmessage = ws.onopen = ws.onclose = noop;
    ws.onerror = noop; // ws (Node) throws an "error" event nobody listens to
    try {
      ws.close(code, reason);
    } catch {
      /* already closing */
    }
  }

  // The connection is gone (closed by the server, the network, or us).
  _lost(code, reason) {
    const ours = code === CLOSE_NO_HEARTBEAT || code === 0;
    this._drop(ours ? CLOSE_NO_HEARTBEAT : CLOSE_NORMAL, reason);
    if (!this._want) return;
    if (TOKEN_CODES.has(code)) {
      this._refusals++;
      if (this._refusals >= 2) {
        this._error("token_refused", "the server refused a fresh token too (close " + code + ": " + reason + ")", {
          closeCode: code,
        });
        this._want = false;
        this._listen(false);
        this._setState("closed", { code, reason });
        return;
      }
      this._setState("disconnected", { code, reason });
      this._retry(0); // ask for a fresh token now
      return;
    }
    this._setState("disconnected", { code, reason });
    this._retry(backoffDelay(this._attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay, this._random));
  }

  _retry(delay) {
    if (this._suspended) return; // pageshow reconnects
    // Offline: the online event reconnects; a slow retry covers a browser
    // that wrongly reports offline (some VPN and network setups do).
    if (this._offline) delay = Math.max(delay, this.options.maxReconnectDelay);
    this._set("retry", delay, () => this._open());
  }

  // ---- frames ----

  _frame(data) {
    let m;
    try {
      m = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this._error("bad_frame", "a frame that is not JSON was ignored");
      return;
    }
    if (m === null || typeof m !== "object") return;
    if (this._connected) this._alive();
    switch (m.type) {
      case "welcome":
        this._welcome(m);
        break;
      case "message":
        this._message(m);
        break;
      case "joined":
      case "left":
        this._reply(m);
        break;
      case "error":
        this._reply(m);
        break;
      case "ping":
        this._send({ type: "pong" });
        break;
      default: // "pong", and types a newer server may add
        break;
    }
  }

  _send(obj) {
    try {
      this._ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false; // the close event follows
    }
  }

  _welcome(m) {
    if (this._connected) return;
    this._connected = true;
    this._offline = false;
    this._clear("connect");
    this._pingMs = Number.isFinite(m.ping_ms) && m.ping_ms > 0 ? m.ping_ms : 0;
    this._refusals = 0;
    this.stats.connects++;
    const since = this._userSince;
    const recovered = since !== undefined && m.recovered === true;
    // After a resume the missed messages follow and carry their own pos: the
    // position stays at `since` until they arrive, so a drop in the middle of
    // the replay asks for them again. Otherwise the welcome's pos is where
    // this connection's stream starts.
    if (!recovered && typeof m.pos === "string") this._pos.set("user", m.pos);
    this._set("stable", this.options.stableAfter, () => {
      this._attempt = 0;
    });
    this._alive();
    this._setState("connected");
    if (since !== undefined) {
      if (recovered) this.stats.resumes++;
      this._emit("recovered", { stream: "user", recovered });
    }
    this._emit("welcome", m);
    this._everConnected = true;
    for (const room of this._rooms) this._join(room);
  }

  _join(room) {
    const since = this._pos.get("room:" + room);
    const msg = { type: "join", room };
    if (since !== undefined) msg.since = since;
    this._request(msg, { op: "join", room, since });
  }

  _request(msg, pending) {
    if (this._send(msg)) this._requests.push(pending);
  }

  // joined / left / error answer our requests in the order we sent them.
  _reply(m) {
    const req = this._requests.shift();
    if (m.type === "error") {
      const extra = { server: true };
      if (req && req.op === "join") {
        // The room cannot be joined (forbidden, too many rooms): stop asking.
        this._rooms.delete(req.room);
        this._pos.delete("room:" + req.room);
        extra.room = req.room;
      }
      this._error(m.code || "error", m.message || "", extra);
      return;
    }
    if (m.type === "left" || !req || req.op !== "join" || req.room !== m.room) return;
    if (!this._rooms.has(m.room)) return; // left meanwhile
    const stream = "room:" + m.room;
    const recovered = req.since !== undefined && m.recovered === true;
    if (!recovered && typeof m.pos === "string") this._pos.set(stream, m.pos);
    if (req.since !== undefined) {
      if (recovered) this.stats.resumes++;
      this._emit("recovered", { stream, recovered });
    }
    this._emit("joined", { room: m.room, pos: m.pos, recovered: m.recovered === true });
  }

  _message(m) {
    if (typeof m.id === "string") {
      if (this._seen.has(m.id)) {
        this.stats.duplicates++;
        return;
      }
      this._seen.add(m.id);
      if (this._seen.size > this.options.dedupSize) this._seen.delete(this._seen.values().next().value);
    }
    if (typeof m.pos === "string") {
      if (typeof m.room === "string") {
        if (this._rooms.has(m.room)) this._pos.set("room:" + m.room, m.pos);
      } else {
        this._pos.set("user", m.pos);
      }
    }
    this.stats.messages++;
    this._emit("message", m);
  }

  // ---- liveness ----

  // Any frame proves the connection: the next deadline starts now. With the
  // server's heartbeat a frame comes at least every ping_ms; without it we
  // ask for one (a ping) after pingInterval of silence.
  _alive() {
    if (this._pingMs > 0) this._set("watch", this._pingMs + this.options.heartbeatTimeout, () => this._dead());
    else this._set("watch", this.options.pingInterval, () => this._probe());
  }

  // Asks for a frame now; nothing within heartbeatTimeout: the connection is dead.
  _probe() {
    if (!this._connected) return;
    this._send({ type: "ping" });
    this._set("watch", this.options.heartbeatTimeout, () => this._dead());
  }

  _dead() {
    this.stats.dead++;
    this._lost(CLOSE_NO_HEARTBEAT, "no heartbeat");
  }

  // ---- the browser's network and page lifecycle ----

  _listen(on) {
    const f = on ? "addEventListener" : "removeEventListener";
    if (this._win) {
      for (const ev of ["online", "offline", "pagehide", "pageshow"]) this._win[f](ev, this._handlers[ev]);
    }
    if (this._doc) this._doc[f]("visibilitychange", this._handlers.visibilitychange);
  }

  // Back online: reconnect now instead of waiting out the backoff; a socket
  // that looks connected may have died with the old network: probe it.
  _online() {
    this._offline = false;
    if (!this._want || this._suspended) return;
    if (this._ws === null) this._open();
    else if (this._connected) this._probe();
  }

  // Offline: the socket cannot carry anything; do not wait for its timeout,
  // and do not retry at full speed into a network that is not there.
  _goOffline() {
    this._offline = true;
    if (!this._want) return;
    if (this._ws !== null) this._lost(CLOSE_NO_HEARTBEAT, "offline");
    else if (this._timers.retry !== null) this._retry(this.options.maxReconnectDelay);
  }

  // A page going into the back/forward cache must not hold a socket (Chrome
  // would not cache it, and the server would keep sending into the void).
  _pagehide(e) {
    if (!this._want || !(e && e.persisted)) return;
    this._suspended = true;
    this._clear("retry");
    this._drop(CLOSE_NORMAL, "page hidden");
    this._setState("disconnected", { code: 0, reason: "page hidden" });
  }

  _pageshow(e) {
    if (!this._suspended) return;
    this._suspended = false;
    if (this._want) this._open();
  }

  // A tab that comes back (laptop wake) checks its connection at once.
  _visible() {
    if (this._doc && this._doc.visibilityState === "visible" && this._connected) this._probe();
  }
}

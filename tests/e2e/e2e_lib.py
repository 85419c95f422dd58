"""Clients and bookkeeping for the end-to-end tests (asyncio, Debian's
python3-websockets 10.4):

- Tab: one browser tab of a user. Keeps a WebSocket open (through nginx, or
  straight to one delivery server), joins its rooms, records every frame, and
  reconnects with capped exponential backoff when the server goes away (and,
  with churn, at random on its own).
- HttpPool: a few keep-alive HTTP/1.1 connections to nginx for /v1/send and
  /v1/broadcast.
- Traffic: sends at a fixed rate, one request in flight per user and per room
  (so Kafka order = send order), and records each request's start, answer
  and status.
- Ledger.verify(): what was owed and what arrived.

The rule for "owed" (the promise under test: accepted means delivered to
every connected recipient, at least once, in per-user order):
  a message accepted with 202 is owed to a connection of its user (or, for a
  room, a connection that had joined the room) if that connection was open
  (for rooms: had its "joined") before the send request started, and stayed
  open until the end of the test or at least GRACE seconds after the 202.
  A connection that closed sooner may have been closed while the message was
  legitimately in flight; the same message is still owed to every other
  connection that qualifies. GRACE is scaled(5 s): the normal latency is tens
  of milliseconds, and seconds only on a machine loaded by other suites; it
  is printed with the results, with the latency percentiles.
lost        = (connection, message) obligations not met
lost_users  = accepted messages owed to at least one connection of the user
              that reached none of those connections
duplicates  = a message received more than once on one connection
out_of_order= on one connection, a message (first receipt) with a lower
              per-user (per-room) sequence number than one received before it
"""

import asyncio
import json
import random
import time

import websockets
import websockets.exceptions

from cluster import API_KEY
from fanout_test import scaled

GRACE = scaled(5.0)


# ---- HTTP ----------------------------------------------------------------------

class HttpPool:
    """Keep-alive HTTP/1.1 client connections to one address. A request on a
    connection that fails is not retried (the answer is unknown): it is
    reported as status None and the connection is dropped."""

    def __init__(self, addr, key, size=16):
        host, _, port = addr.rpartition(":")
        self.host, self.port = host, int(port)
        self.key = key
        self.idle = []
        self.sem = asyncio.Semaphore(size)

    async def _conn(self):
        if self.idle:
            return self.idle.pop()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method, path, obj=None, timeout=10.0):
        body = b"" if obj is None else json.dumps(obj).encode()
        head = ("%s %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
                    method, path, self.host, self.port, self.key, len(body))).encode()
        async with self.sem:
            conn = None
            try:
                conn = await asyncio.wait_for(self._conn(), scaled(timeout))
                reader, writer = conn
                writer.write(head + body)
                status, data, hdrs = await asyncio.wait_for(self._read(reader), scaled(timeout))
                if hdrs.get("connection", "").lower() == "close":
                    writer.close()
                else:
                    self.idle.append(conn)
                return status, data, hdrs
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                if conn is not None:
                    conn[1].close()
                return None, repr(e), {}

    @staticmethod
    async def _read(reader):
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        parts = line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        hdrs = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                n = int((await reader.readline()).split(b";")[0], 16)
                if n == 0:
                    await reader.readline()
                    break
                data += await reader.readexactly(n)
                await reader.readline()
        else:
            data = b""
        return status, data.decode("utf-8", "replace"), hdrs

    def close(self):
        for _r, w in self.idle:
            w.close()
        self.idle = []


# ---- records -------------------------------------------------------------------

class Msg:
    """One send or broadcast request."""
    __slots__ = ("kind", "target", "seq", "tag", "t_start", "t_ack", "status", "id", "body",
                 "retry_after")

    def __init__(self, kind, target, seq):
        self.kind, self.target, self.seq = kind, target, seq
        self.tag = "%s|%s|%d" % (kind, target, seq)
        self.t_start = self.t_ack = None
        self.status = self.id = self.body = self.retry_after = None


class Conn:
    """One WebSocket connection (one incarnation of a tab)."""
    _next = 0

    def __init__(self, tab, via):
        Conn._next += 1
        self.n = Conn._next
        self.tab = tab
        self.user = tab.user
        self.via = via
        self.t_open = None
        self.t_close = None
        self.close_code = None
        self.joined = {}      # room -> time "joined" arrived
        self.got = []         # (tag, pos, t) in arrival order
        self.errors = []      # {"type":"error"} frames
        self.others = []      # anything else unexpected

    def open_at(self, t):
        return self.t_open is not None and self.t_open <= t


class Tab:
    """A user's tab. run() keeps it connected until stop is set.

    direct: a cluster Service to connect to straight (not through nginx); if
    that server refuses, the tab falls back to nginx for good.
    churn: None, or (probability, min s, max s): each new connection, with
    that probability, closes itself (1000) after a random lifetime and the tab
    reconnects after a short random pause."""

    def __init__(self, ledger, cluster, user, rooms=(), direct=None, churn=None, rng=None):
        self.ledger = ledger
        self.cluster = cluster
        self.user = user
        self.rooms = list(rooms)
        self.direct = direct
        self.churn = churn
        self.rng = rng or random.Random()
        self.token = cluster.token(user, rooms=[r for r in self.rooms] or None)
        self.conns = []
        self.ws = None
        self.connected = asyncio.Event()
        self.close_codes = []
        self.connect_failures = 0
        self.reconnects = 0

    def url(self):
        return self.cluster.ws_url(self.user, self.token, self.direct)

    async def _connect_once(self, stop):
        via = self.direct.addr if self.direct is not None else "nginx"
        ws = await websockets.connect(self.url(), open_timeout=scaled(10), close_timeout=2,
                                      ping_interval=None, max_size=1 << 20, max_queue=None)
        conn = Conn(self, via)
        conn.t_open = time.monotonic()
        self.conns.append(conn)
        self.ledger.conns.append(conn)
        for r in self.rooms:
            await ws.send(json.dumps({"type": "join", "room": r}))
        return ws, conn

    async def _read(self, ws, conn, lifetime):
        deadline = None if lifetime is None else time.monotonic() + lifetime
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    conn.t_close = time.monotonic()
                    conn.close_code = "client"
                    await ws.close(1000, "churn")
                    return "churn"
                try:
                    raw = await asyncio.wait_for(ws.recv(), left) if left else await ws.recv()
                except asyncio.TimeoutError:
                    continue
                t = time.monotonic()
                try:
                    m = json.loads(raw)
                except ValueError:
                    conn.others.append(raw)
                    continue
                ty = m.get("type")
                if ty == "message":
                    d = m.get("data")
                    tag = d.get("tag") if isinstance(d, dict) else None
                    conn.got.append((tag, m.get("pos"), t))
                    self.ledger.on_receive(conn, tag, m, t)
                elif ty == "joined":
                    conn.joined[m.get("room")] = t
                elif ty == "welcome":
                    conn.welcome = m
                elif ty == "error":
                    conn.errors.append(m)
                elif ty not in ("pong", "left"):
                    conn.others.append(m)
        except websockets.exceptions.ConnectionClosed as e:
            conn.t_close = time.monotonic()
            code = e.rcvd.code if e.rcvd is not None else 1006
            conn.close_code = code
            self.close_codes.append(code)
            return "closed"

    async def run(self, stop):
        backoff = 0.1
        while not stop.is_set():
            try:
                ws, conn = await self._connect_once(stop)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake,
                    websockets.exceptions.ConnectionClosed) as e:
                self.connect_failures += 1
                self.ledger.connect_failures.append((self.user, repr(e)[:120]))
                if self.direct is not None:
                    self.direct = None  # that server is gone or full: nginx from now on
                await self._pause(stop, backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.ws = ws
            self.connected.set()
            backoff = 0.1
            lifetime = None
            if self.churn is not None and self.rng.random() < self.churn[0]:
                lifetime = self.rng.uniform(self.churn[1], self.churn[2])
            reader = asyncio.ensure_future(self._read(ws, conn, lifetime))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            self.connected.clear()
            self.ws = None
            if not reader.done():
                # The test is over: this connection stays "open to the end".
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass
                try:
                    await asyncio.wait_for(ws.close(1000, "done"), 3)
                except Exception:
                    pass
                return
            how = reader.result()
            if stop.is_set():
                return
            self.reconnects += 1
            await self._pause(stop, self.rng.uniform(0.05, 0.3) if how == "churn"
                              else self.rng.uniform(0.05, 0.25) + backoff)

    @staticmethod
    async def _pause(stop, seconds):
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass


# ---- the ledger -------------------------------------------------------------------

class Ledger:
    def __init__(self):
        self.msgs = {}        # tag -> Msg
        self.conns = []       # every Conn ever opened
        self.unknown = 0      # frames whose tag we never sent
        self.connect_failures = []
        self.t0 = time.monotonic()

    def on_receive(self, conn, tag, m, t):
        if tag not in self.msgs:
            self.unknown += 1

    def owed_to(self, msg, conn):
        """Is msg owed to conn (see the module comment)?"""
        if msg.status != 202:
            return False
        if msg.kind == "u":
            if conn.user != msg.target or not conn.open_at(msg.t_start):
                return False
        else:
            j = conn.joined.get(msg.target)
            if j is None or j > msg.t_start:
                return False
        return conn.t_close is None or conn.t_close >= msg.t_ack + GRACE

    def pending(self, select=None):
        """Obligations toward connections still open, not met yet."""
        n = 0
        for c in self.conns:
            if c.t_close is not None:
                continue
            have = {g[0] for g in c.got}
            for m in self._candidates(c):
                if select is not None and not select(m):
                    continue
                if m.tag not in have and self.owed_to(m, c):
                    n += 1
        return n

    def _candidates(self, conn):
        if not hasattr(self, "_by_target") or self._by_target_n != len(self.msgs):
            self._by_target = {}
            for m in self.msgs.values():
                self._by_target.setdefault((m.kind, m.target), []).append(m)
            self._by_target_n = len(self.msgs)
        out = list(self._by_target.get(("u", conn.user), []))
        for r in conn.joined:
            out += self._by_target.get(("r", r), [])
        return out

    def verify(self, verbose_lost=10, select=None):
        """Counts everything; returns a dict (also printed by report()).
        select(msg) -> bool limits the obligations (lost, lost_users) to some
        messages, e.g. those accepted outside a fault window; deliveries,
        duplicates and order are counted for all."""
        r = dict(sent=0, accepted=0, refused=0, failed=0, delivered=0, unique_deliveries=0,
                 duplicates=0, lost=0, lost_users=0, out_of_order=0, pos_regressions=0,
                 obligations=0, extra=0, unknown=self.unknown, conns=len(self.conns),
                 latency_ms={}, ack_ms={}, statuses={}, lost_examples=[])
        for m in self.msgs.values():
            r["sent"] += 1
            r["statuses"][str(m.status)] = r["statuses"].get(str(m.status), 0) + 1
            if m.status == 202:
                r["accepted"] += 1
            elif m.status is None:
                r["failed"] += 1
            else:
                r["refused"] += 1
        received_by = {}   # tag -> set of conn numbers
        lat = []
        for c in self.conns:
            seen = set()
            last_seq = {}
            last_pos = {}
            for tag, pos, t in c.got:
                r["delivered"] += 1
                if tag in seen:
                    r["duplicates"] += 1
                    continue
                seen.add(tag)
                r["unique_deliveries"] += 1
                received_by.setdefault(tag, set()).add(c.n)
                m = self.msgs.get(tag)
                if m is None:
                    continue
                if m.t_start is not None:
                    lat.append(t - m.t_start)
                stream = (m.kind, m.target)
                if last_seq.get(stream, -1) > m.seq:
                    r["out_of_order"] += 1
                last_seq[stream] = max(last_seq.get(stream, -1), m.seq)
                if isinstance(pos, str) and pos.count(".") == 4:
                    # Positions are opaque to clients; the test knows the
                    # format (schemas/positions.md): kind.epoch.part.off.t
                    _k, _e, part, off, _ts = pos.split(".")
                    key = (stream, part)
                    if int(off) <= last_pos.get(key, -1):
                        r["pos_regressions"] += 1
                    last_pos[key] = max(last_pos.get(key, -1), int(off))
            for m in self._candidates(c):
                if select is not None and not select(m):
                    continue
                owed = self.owed_to(m, c)
                if owed:
                    r["obligations"] += 1
                    if m.tag not in seen:
                        r["lost"] += 1
                        if len(r["lost_examples"]) < verbose_lost:
                            r["lost_examples"].append(self._describe(m, c))
                elif m.tag in seen:
                    r["extra"] += 1
        by_user, by_room = {}, {}
        for c in self.conns:
            by_user.setdefault(c.user, []).append(c)
            for room in c.joined:
                by_room.setdefault(room, []).append(c)
        for m in self.msgs.values():
            if m.status != 202 or (select is not None and not select(m)):
                continue
            cands = by_user.get(m.target, []) if m.kind == "u" else by_room.get(m.target, [])
            owed = [c for c in cands if self.owed_to(m, c)]
            if owed and not any(c.n in received_by.get(m.tag, ()) for c in owed):
                r["lost_users"] += 1
        acks = sorted(m.t_ack - m.t_start for m in self.msgs.values() if m.status == 202)
        if acks:
            r["ack_ms"] = {"p50": round(acks[len(acks) // 2] * 1000, 1),
                           "p99": round(acks[int(len(acks) * 0.99)] * 1000, 1),
                           "max": round(acks[-1] * 1000, 1)}
        if lat:
            lat.sort()
            r["latency_ms"] = {"p50": round(lat[len(lat) // 2] * 1000, 1),
                               "p99": round(lat[int(len(lat) * 0.99)] * 1000, 1),
                               "max": round(lat[-1] * 1000, 1)}
        return r

    def _describe(self, m, c):
        t0 = self.t0
        return ("%s seq=%d id=%s start=%.3f ack=%.3f -> conn#%d user=%s via=%s open=%.3f "
                "close=%s code=%s" % (
                    m.kind, m.seq, m.id, m.t_start - t0, m.t_ack - t0, c.n, c.user, c.via,
                    c.t_open - t0, "%.3f" % (c.t_close - t0) if c.t_close else "-",
                    c.close_code))

    def report(self, name, r):
        keys = ["sent", "accepted", "refused", "failed", "delivered", "unique_deliveries",
                "duplicates", "lost", "lost_users", "out_of_order", "pos_regressions",
                "obligations", "extra", "unknown", "conns"]
        print("%s: %s" % (name, " ".join("%s=%s" % (k, r[k]) for k in keys)), flush=True)
        print("%s: statuses=%s latency_ms=%s (send start -> frame) ack_ms=%s (-> 202) "
              "grace_s=%.1f" % (name, json.dumps(r["statuses"], sort_keys=True),
                                json.dumps(r["latency_ms"]), json.dumps(r["ack_ms"]), GRACE),
              flush=True)
        for e in r["lost_examples"]:
            print("%s: LOST %s" % (name, e), flush=True)


# ---- traffic ------------------------------------------------------------------------

class Traffic:
    """Sends to users (and rooms) at fixed rates until stop, through nginx.
    One request in flight per user and per room, so each stream's Kafka order
    is its send order."""

    def __init__(self, ledger, cluster, users, rooms=(), user_rate=50.0, room_rate=0.0,
                 rng=None, timeout=15.0):
        self.ledger = ledger
        self.pool = HttpPool(cluster.addr, API_KEY, size=32)
        self.users = list(users)
        self.rooms = list(rooms)
        self.user_rate = user_rate
        self.room_rate = room_rate
        self.rng = rng or random.Random(1)
        self.timeout = timeout
        self.busy = set()
        self.seq = {}
        self.tasks = set()
        self.skipped = 0

    async def send(self, kind, target):
        """One request now (callers keep one in flight per stream)."""
        self.busy.add((kind, target))
        await self._one(kind, target)

    async def _one(self, kind, target):
        seq = self.seq.get((kind, target), 0)
        self.seq[(kind, target)] = seq + 1
        m = Msg(kind, target, seq)
        self.ledger.msgs[m.tag] = m
        payload = {"tag": m.tag, "pad": "x" * 32}
        if kind == "u":
            path, body = "/v1/send", {"user": target, "data": payload}
        else:
            path, body = "/v1/broadcast", {"room": target, "data": payload}
        m.t_start = time.monotonic()
        status, text, hdrs = await self.pool.request("POST", path, body, timeout=self.timeout)
        m.t_ack = time.monotonic()
        m.status = status
        if status == 202:
            try:
                m.id = json.loads(text).get("id")
            except ValueError:
                pass
        else:
            m.body = text[:200]
            m.retry_after = hdrs.get("retry-after")
        self.busy.discard((kind, target))

    def _fire(self, kind, targets):
        free = [t for t in targets if (kind, t) not in self.busy]
        if not free:
            self.skipped += 1
            return
        t = self.rng.choice(free)
        self.busy.add((kind, t))
        task = asyncio.ensure_future(self._one(kind, t))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, stop):
        t0 = time.monotonic()
        nu = nr = 0
        while not stop.is_set():
            now = time.monotonic() - t0
            while self.users and nu < now * self.user_rate:
                nu += 1
                self._fire("u", self.users)
            while self.rooms and nr < now * self.room_rate:
                nr += 1
                self._fire("r", self.rooms)
            await asyncio.sleep(0.005)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=scaled(self.timeout) + 5)
        self.pool.close()


# ---- driving a scenario --------------------------------------------------------------

async def settle(ledger, timeout, select=None):
    """Waits until every obligation toward a still-open connection is met, or
    timeout (scaled). Returns the number still pending."""
    deadline = time.monotonic() + scaled(timeout)
    left = ledger.pending(select)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        left = ledger.pending(select)
    return left


async def start_tabs(tabs, stop, timeout=30.0):
    tasks = [asyncio.ensure_future(t.run(stop)) for t in tabs]
    deadline = time.monotonic() + scaled(timeout)
    for t in tabs:
        left = deadline - time.monotonic()
        try:
            await asyncio.wait_for(t.connected.wait(), max(left, 0.01))
        except asyncio.TimeoutError:
            raise AssertionError("tab of %s did not connect in time (%d failures: %s)" % (
                t.user, t.connect_failures, t.ledger.connect_failures[-3:]))
    return tasks


async def wait_joined(tabs, timeout=10.0):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if all(t.conns and set(t.rooms) <= set(t.conns[-1].joined) for t in tabs):
            return
        await asyncio.sleep(0.05)
    missing = [(t.user, t.rooms, t.conns[-1].errors if t.conns else None) for t in tabs
               if not (t.conns and set(t.rooms) <= set(t.conns[-1].joined))]
    raise AssertionError("joins not acknowledged: %s" % missing[:5])

"""Shared pieces of the resume tests (issue 9): a stack of real processes
(redis-server, the embedded broker or the real Apache Kafka, two or more
fanout-delivery servers, stopped by PID), a client session that behaves like
an application (keeps the last `pos` of each stream, hands it back as `since`
on reconnect and on join, records every frame) over either Debian's
python3-websockets or the project's own raw client (wsclient.WsClient), and
a producer that records what was sent to whom.

Positions are opaque: the sessions only store and return them. Only the
bad-input tests take one apart (parse_pos / make_pos) to build foreign ones.

Every message's data is {"s": seq, "k": target}: per target, seq counts
from 0 in send order, so what a stream owes is range(n) and the first
receipts must come in that order."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "delivery"))
import fanout_test as ft  # noqa: E402
import websockets  # noqa: E402
import websockets.exceptions  # noqa: E402
from wsclient import Closed as RawClosed  # noqa: E402
from wsclient import HttpError, WsClient  # noqa: E402

SECRET = "resume-secret-0123456789abcdef-0123456789"


def token(sub, rooms=("*",)):
    return ft.make_jwt(SECRET, sub, rooms=list(rooms))


def metrics(pr):
    return ft.metrics(pr.addr)


# ---- positions (only the bad-input tests look inside) ------------------------------

def parse_pos(p):
    """<k>.<epoch>.<partition>.<offset>.<t> (schemas/client-protocol.md) as a
    dict, or None when p has another shape."""
    parts = p.split(".") if isinstance(p, str) else []
    if len(parts) != 5:
        return None
    k, epoch, part, off, t = parts
    try:
        return {"k": k, "epoch": epoch, "part": int(part), "off": int(off), "t": int(t, 16)}
    except ValueError:
        return None


def make_pos(k, epoch, part, off, t):
    return "%s.%s.%d.%d.%x" % (k, epoch, part, off, t)


def now_ms():
    return int(time.time() * 1000)


# ---- processes ------------------------------------------------------------------------

class Stack:
    """redis-server, a broker (KafkaDev, or ApacheKafka when apache is given)
    and delivery servers that share one consumer group (its id unique per
    stack, so a stack on a shared broker never meets an older one's members)."""

    _n = 0

    def __init__(self, partitions=4, apache=None, room_mode="kafka", redis=None):
        Stack._n += 1
        self.redis = redis or ft.Redis()
        self.kafka = apache or ft.KafkaDev(partitions=partitions)
        self.own_kafka = apache is None
        self.partitions = self.kafka.partitions
        self.room_mode = room_mode
        self.group = "resume-%d-%d-%d" % (os.getpid(), Stack._n, int(time.time() * 1000) % 100000)
        self.servers = {}
        self.feeds = []

    def start(self, sid, *extra, redis_prefix=""):
        args = ["--listen", "127.0.0.1:0", "--redis", self.redis.addr, "--kafka",
                self.kafka.bootstrap, "--server-id", sid, "--jwt-secret", SECRET,
                "--group-id", self.group, "--room-mode", self.room_mode,
                "--session-timeout-ms", "6000", "--alive-ttl-ms", "1500",
                "--drain-timeout-ms", "3000", "--log-level", "info", *extra]
        if redis_prefix:
            args += ["--redis-prefix", redis_prefix]
        pr = ft.start_service("fanout-delivery", "resume-" + sid, args)
        pr.sid = sid
        self.servers[sid] = pr
        return pr

    def live(self):
        return [pr for pr in self.servers.values() if pr.alive()]

    def addrs(self, exclude=()):
        return [pr.addr for pr in self.live() if pr.sid not in exclude]

    def users_assigned(self, pr):
        n = metrics(pr).get("fanout_delivery_assigned_partitions", 0)
        # room mode kafka: every rooms partition is assigned too
        return n - self.partitions if self.room_mode == "kafka" else n

    def wait_ready(self, timeout=40):
        """The users partitions (and in room mode redis the rooms ones) are
        spread over the running servers, and every server delivers a room
        broadcast from every rooms partition (a broadcast produced before a
        server has found where it starts reading is not its to deliver)."""
        want = self.partitions * (1 if self.room_mode == "kafka" else 2)

        def settled():
            counts = [metrics(pr).get("fanout_delivery_assigned_partitions", 0) -
                      (self.partitions if self.room_mode == "kafka" else 0)
                      for pr in self.live()]
            return ft.partitions_spread(counts, want, self.partitions)
        ft.eventually(settled, timeout=timeout, interval=0.2, what="consumer groups settled")
        rooms = probe_rooms(self.partitions)
        probes = {}
        for pr in self.live():
            s = Session("probe-" + pr.sid, kind="raw", rooms=rooms)
            s.connect(pr.addr)
            probes[pr.sid] = s
        deadline = time.time() + ft.scaled(timeout)
        k = 0
        while True:
            missing = [(sid, r) for sid, s in probes.items() for r in rooms
                       if not s.got("room:" + r)]
            if not missing:
                break
            assert time.time() < deadline, "rooms not delivered from: %r" % missing
            self.produce(["fanout.rooms broadcast %s application/json %s\n" %
                          (r, json.dumps({"probe": k}).encode().hex()) for r in rooms])
            k += 1
            t_end = time.time() + ft.scaled(0.5)
            while time.time() < t_end and any(not s.got("room:" + r)
                                              for s in probes.values() for r in rooms):
                time.sleep(0.02)
        for s in probes.values():
            s.close()

    def produce(self, lines):
        p = subprocess.run([ft.find_binary("fanout-test-produce"), self.kafka.bootstrap],
                           input="".join(lines), capture_output=True, text=True,
                           timeout=ft.scaled(120))
        assert p.returncode == 0, p.stderr
        return p.stdout

    def stop(self):
        for f in self.feeds:
            f.abort()
        for pr in self.servers.values():
            if pr.alive():
                pr.stop()
        if self.own_kafka:
            self.kafka.stop()
        self.redis.stop()


def probe_rooms(partitions):
    out, i = {}, 0
    while len(out) < partitions:
        r = "__rprobe%d" % i
        out.setdefault(ft.partition_of(r, partitions), r)
        i += 1
    return [out[p] for p in sorted(out)]


def spread_keys(prefix, partitions, per_partition=1):
    """Keys named prefix<N>, per_partition of them on each partition."""
    out, i, count = [], 0, {}
    while len(out) < partitions * per_partition:
        k = "%s%d" % (prefix, i)
        p = ft.partition_of(k, partitions)
        if count.get(p, 0) < per_partition:
            count[p] = count.get(p, 0) + 1
            out.append(k)
        i += 1
    return out


# ---- sending ------------------------------------------------------------------------

def line(kind, target, seq, pad=0):
    topic, verb = ("fanout.users", "send") if kind == "user" else ("fanout.rooms", "broadcast")
    data = {"s": seq, "k": target}
    if pad:
        data["pad"] = "x" * pad
    return "%s %s %s application/json %s\n" % (topic, verb, target,
                                                json.dumps(data).encode().hex())


class Ledger:
    """What was sent, per stream ("user:U" / "room:R"): the next seq."""

    def __init__(self):
        self.sent = {}
        self.lock = threading.Lock()

    def next(self, stream):
        with self.lock:
            n = self.sent.get(stream, 0)
            self.sent[stream] = n + 1
            return n

    def count(self, stream):
        with self.lock:
            return self.sent.get(stream, 0)


class Feed:
    """Produces user sends and room broadcasts through long-running
    fanout-test-produce processes (one per topic, fed line by line), either
    on demand or at a steady rate from a thread. close() waits until Kafka
    acknowledged every record (the tool exits 0 only then)."""

    def __init__(self, stack, ledger):
        self.stack = stack
        self.ledger = ledger
        self.procs = {}
        self.flow_thread = None
        self.stop_flag = threading.Event()
        stack.feeds.append(self)

    def _proc(self, kind):
        p = self.procs.get(kind)
        if p is None:
            p = subprocess.Popen([ft.find_binary("fanout-test-produce"), self.stack.kafka.bootstrap],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, bufsize=1)
            self.procs[kind] = p
        return p

    def send(self, kind, target):
        seq = self.ledger.next("%s:%s" % (kind, target))
        p = self._proc(kind)
        p.stdin.write(line(kind, target, seq))
        p.stdin.flush()
        return seq

    def flow(self, users, rooms, rate):
        """Sends round-robin over users then rooms, rate messages/s in all,
        until stop_flow()."""
        targets = [("user", u) for u in users] + [("room", r) for r in rooms]

        def run():
            i = 0
            t0 = time.time()
            while not self.stop_flag.is_set():
                kind, tg = targets[i % len(targets)]
                self.send(kind, tg)
                i += 1
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    self.stop_flag.wait(delay)
        self.stop_flag.clear()
        self.flow_thread = threading.Thread(target=run, daemon=True)
        self.flow_thread.start()

    def stop_flow(self):
        self.stop_flag.set()
        if self.flow_thread:
            self.flow_thread.join(10)
            self.flow_thread = None

    def close(self, timeout=120):
        """Every record acknowledged by Kafka, or AssertionError."""
        self.stop_flow()
        for kind, p in self.procs.items():
            out, err = p.communicate(timeout=ft.scaled(timeout))  # closes stdin: EOF, flush
            assert p.returncode == 0 and "produced=" in out, "producer %s: %s %s" % (kind, out, err)
        self.procs = {}

    def abort(self):
        self.stop_flag.set()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = {}


# ---- clients ------------------------------------------------------------------------

class TransportClosed(Exception):
    def __init__(self, code=None):
        super().__init__("closed %s" % code)
        self.code = code


_loop = None
_loop_lock = threading.Lock()


def _aio():
    """One asyncio loop thread shared by every python3-websockets session."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True).start()
        return _loop


def _aio_run(coro, timeout):
    return asyncio.run_coroutine_threadsafe(coro, _aio()).result(timeout)


class WebsocketsTransport:
    """Debian's python3-websockets (10.4), a client nobody here wrote."""
    name = "websockets"

    def __init__(self, url, timeout):
        async def op():
            return await websockets.connect(url, open_timeout=timeout, ping_interval=None,
                                            close_timeout=1, max_size=1 << 22)
        try:
            self.ws = _aio_run(op(), timeout + 1)
        except websockets.exceptions.InvalidStatusCode as e:
            raise HttpError(e.status_code, b"")

    def send(self, obj):
        _aio_run(self.ws.send(json.dumps(obj)), 10)

    def recv(self, timeout):
        async def op():
            return await asyncio.wait_for(self.ws.recv(), timeout)
        try:
            text = _aio_run(op(), timeout + 5)
        except asyncio.TimeoutError:
            raise socket.timeout()
        except websockets.exceptions.ConnectionClosed as e:
            raise TransportClosed(e.code)
        assert isinstance(text, str), "binary frame from the server"
        return json.loads(text)

    def abort(self):
        """Drops the TCP connection without a close handshake (a network blip)."""
        async def op():
            self.ws.transport.abort()
        try:
            _aio_run(op(), 5)
        except Exception:
            pass

    def close(self):
        try:
            _aio_run(self.ws.close(), 5)
        except Exception:
            pass


class RawTransport:
    """The project's own RFC 6455 client (tests/integration/delivery/wsclient.py)."""
    name = "raw"

    def __init__(self, addr, path, timeout):
        self.c = WsClient(addr, path=path, timeout=timeout)
        # WsClient.recv() checks and keeps the welcome itself unless one is
        # set: the sessions read it as a frame like any other.
        self.c.welcome = {"read by": "Session"}

    def send(self, obj):
        self.c.send_json(obj)

    def recv(self, timeout):
        try:
            return self.c.recv(timeout=timeout / ft.SCALE)
        except RawClosed as e:
            raise TransportClosed(e.code)
        except (ConnectionResetError, BrokenPipeError):
            raise TransportClosed(None)

    def abort(self):
        try:
            self.c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.c.abort()

    def close(self):
        self.c.close()


class Session:
    """One application client of user `user`: connects (resuming every
    stream from its last position unless told not to), joins `rooms`, and
    records everything. A reader thread handles the frames after the
    connect; with auto_reconnect(pick) it reconnects by itself (to the first
    address of pick() that accepts) whenever the connection ends."""

    def __init__(self, user, kind="raw", rooms=()):
        self.user = user
        self.kind = kind
        self.rooms = list(rooms)
        self.tok = token(user)
        self.pos = {}          # stream -> last position received (or from welcome/joined)
        self.msgs = []         # every message frame: dict + "_stream", "_conn"
        self.welcomes = []     # every welcome frame (with "_since": what was asked)
        self.joins = []        # every joined frame (with "_since")
        self.others = []       # pongs, errors, anything else
        self.cursor = {}       # stream -> messages already checked by expect_next_is
        self.closes = []       # (conn number, close code)
        self.conn_no = 0
        self.addr = None
        self.t = None
        self.cond = threading.Condition()
        self.reader = None
        self.stopping = False
        self.pick = None
        self.reconnect_errors = []

    # -- views --
    def stream_msgs(self, stream):
        with self.cond:
            return [m for m in self.msgs if m["_stream"] == stream]

    def got(self, stream):
        with self.cond:
            return any(m["_stream"] == stream for m in self.msgs)

    def seqs(self, stream):
        return [m["data"]["s"] for m in self.stream_msgs(stream)
                if isinstance(m.get("data"), dict) and "s" in m["data"]]

    def streams(self):
        return ["user"] + ["room:" + r for r in self.rooms]

    # -- connecting --
    def _open(self, addr, resume):
        since = self.pos.get("user") if resume else None
        path = "/ws?token=" + self.tok
        if since is not None:
            path += "&since=" + urllib.parse.quote(since, safe="")
        if self.kind == "raw":
            t = RawTransport(addr, path, 10)
        else:
            t = WebsocketsTransport("ws://%s%s" % (addr, path), ft.scaled(10))
        try:
            first = t.recv(ft.scaled(10))
        except socket.timeout:
            t.abort()
            raise AssertionError("no welcome frame from %s within %.0f s" % (addr, ft.scaled(10)))
        if first.get("type") != "welcome":
            t.abort()
            raise AssertionError("the first frame is not a welcome: %r" % (first,))
        with self.cond:
            self.conn_no += 1
            self.t = t
            self.addr = addr
            first["_since"] = since
            first["_conn"] = self.conn_no
            self.welcomes.append(first)
            # Without since, or refused: the stream starts again at the
            # welcome's position. Recovered: the replay moves it on.
            if "pos" in first and (since is None or first.get("recovered") is not True):
                self.pos["user"] = first["pos"]
            self.cond.notify_all()
        joins = []
        for r in self.rooms:
            j = {"type": "join", "room": r}
            rs = self.pos.get("room:" + r) if resume else None
            if rs is not None:
                j["since"] = rs
            joins.append(j)
            t.send(j)
        # The replies (and replayed or live messages) come in order: handle
        # them here, before the reader thread takes over.
        want = set(self.rooms)
        deadline = time.time() + ft.scaled(15)
        while want:
            left = deadline - time.time()
            assert left > 0, "no joined for %r on %s" % (sorted(want), addr)
            fr = t.recv(left)
            self._handle(fr, sent_joins=joins)
            if fr.get("type") == "joined":
                want.discard(fr.get("room"))
        return first

    def stream_msgs_nolock(self, stream):
        return [m for m in self.msgs if m["_stream"] == stream]

    def connect(self, addr, resume=True):
        """Opens a connection, reads the welcome and the joins' replies;
        returns the welcome frame. The reader thread then runs."""
        self._stop_reader()
        w = self._open(addr, resume)
        self._start_reader()
        return w

    def try_connect(self, addrs, resume=True, timeout=30):
        """Connects to the first of addrs that upgrades (a draining or dead
        server refuses); retries with a short pause until timeout."""
        deadline = time.time() + ft.scaled(timeout)
        last = None
        while time.time() < deadline:
            for a in (addrs() if callable(addrs) else addrs):
                try:
                    return self.connect(a, resume)
                except (OSError, HttpError, TransportClosed, socket.timeout,
                        websockets.exceptions.WebSocketException, asyncio.TimeoutError) as e:
                    last = e
            time.sleep(0.1)
        raise AssertionError("%s could not reconnect: %r" % (self.user, last))

    def auto_reconnect(self, pick):
        """pick(): the addresses to try, in order, when the connection ends."""
        self.pick = pick

    def _handle(self, fr, sent_joins=()):
        with self.cond:
            ty = fr.get("type")
            fr["_conn"] = self.conn_no
            if ty == "message":
                stream = "user" if "user" in fr else "room:" + fr.get("room", "?")
                fr["_stream"] = stream
                self.msgs.append(fr)
                if "pos" in fr:
                    self.pos[stream] = fr["pos"]
            elif ty == "joined":
                r = fr.get("room")
                fr["_since"] = next((j.get("since") for j in sent_joins if j["room"] == r), None)
                self.joins.append(fr)
                if "pos" in fr and (fr["_since"] is None or fr.get("recovered") is not True):
                    self.pos["room:" + r] = fr["pos"]
            elif ty == "welcome":
                raise AssertionError("a second welcome on one connection: %r" % (fr,))
            else:
                self.others.append(fr)
            self.cond.notify_all()

    def _read_loop(self, t):
        while not self.stopping:
            try:
                fr = t.recv(0.5)
            except socket.timeout:
                continue
            except (TransportClosed, OSError, RawClosed) as e:
                if self.stopping:
                    return
                with self.cond:
                    self.closes.append((self.conn_no, getattr(e, "code", None)))
                    self.t = None
                    self.cond.notify_all()
                if self.pick is None:
                    return
                try:
                    t = self._reconnect()
                except Exception as e2:  # recorded; the test's checks then fail clearly
                    self.reconnect_errors.append(repr(e2))
                    return
                continue
            self._handle(fr)

    def _reconnect(self):
        deadline = time.time() + ft.scaled(60)
        last = None
        while time.time() < deadline and not self.stopping:
            for a in self.pick():
                try:
                    self._open(a, True)
                    return self.t
                except (OSError, HttpError, TransportClosed, socket.timeout,
                        websockets.exceptions.WebSocketException, asyncio.TimeoutError,
                        AssertionError) as e:
                    last = e
            time.sleep(0.1)
        raise AssertionError("%s: no server took the reconnect: %r" % (self.user, last))

    def _start_reader(self):
        self.stopping = False
        self.reader = threading.Thread(target=self._read_loop, args=(self.t,), daemon=True)
        self.reader.start()

    def _stop_reader(self):
        if self.reader is not None and self.reader is not threading.current_thread():
            self.stopping = True
            if self.t is not None:
                self.t.abort()
            self.reader.join(10)
            self.reader = None
            self.stopping = False

    # -- actions --
    def drop(self):
        """The network goes away: no close handshake; nothing read after."""
        pick, self.pick = self.pick, None
        self._stop_reader()
        self.t = None
        self.pick = pick

    def close(self):
        self.pick = None
        t = self.t
        self._stop_reader()
        if t is not None:
            t.close()
        self.t = None

    def send(self, obj):
        self.t.send(obj)

    def ping(self, timeout=10):
        """The connection is alive and served: a JSON ping gets its pong."""
        with self.cond:
            n = sum(1 for f in self.others if f.get("type") == "pong")
        self.send({"type": "ping"})
        self.wait(lambda: sum(1 for f in self.others if f.get("type") == "pong") > n,
                  timeout, "pong")

    def wait(self, pred, timeout=20, what="condition"):
        deadline = time.time() + ft.scaled(timeout)
        with self.cond:
            while not pred():
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("%s: timed out waiting for %s (%s)" %
                                         (self.user, what, self.summary()))
                self.cond.wait(min(left, 0.2))

    def wait_seqs(self, stream, n, timeout=30, first=0):
        """Waits until the stream's first receipts cover seq first..n-1."""
        def ok():
            return set(range(first, n)) <= {m["data"]["s"] for m in self.msgs
                                     if m["_stream"] == stream and isinstance(m.get("data"), dict)}
        self.wait(ok, timeout, "%s seq %d..%d" % (stream, first, n - 1))

    def wait_count(self, stream, n, timeout=30):
        self.wait(lambda: len(self.stream_msgs_nolock(stream)) >= n, timeout,
                  "%d messages on %s" % (n, stream))

    def summary(self):
        per = {}
        for m in self.msgs:
            per[m["_stream"]] = per.get(m["_stream"], 0) + 1
        return "conn %d on %s, messages %r, welcomes %r, closes %r, reconnect errors %r" % (
            self.conn_no, self.addr, per, [{k: v for k, v in w.items() if k != "pos"}
                                           for w in self.welcomes[-3:]], self.closes[-3:],
            self.reconnect_errors)


def check_stream(s, stream, n, allow_dups=False, first=0):
    """The stream got seq first..n-1 (every one sent), first receipts in
    send order, and (unless allow_dups) each exactly once. Returns
    (duplicates, out_of_order)."""
    msgs = [m for m in s.stream_msgs(stream) if isinstance(m.get("data"), dict)
            and "s" in m["data"] and m["data"]["s"] >= first]
    seen, order, dups = set(), [], 0
    for m in msgs:
        q = m["data"]["s"]
        if q in seen:
            dups += 1
            continue
        seen.add(q)
        order.append(q)
    want = list(range(first, n))
    missing = sorted(set(want) - seen)
    assert not missing, "%s %s lost %d of %d: %s... (%s)" % (
        s.user, stream, len(missing), len(want), missing[:20], s.summary())
    ooo = sum(1 for a, b in zip(order, order[1:]) if b < a)
    assert order == want, "%s %s out of order: %s" % (s.user, stream, order[:60])
    if not allow_dups:
        assert dups == 0, "%s %s: %d duplicates (%s)" % (s.user, stream, dups, [
            (m["data"]["s"], m["pos"], m["_conn"]) for m in msgs][:60])
    pos_seen = {}
    for m in msgs:  # one log record = one pos: never two different records at one pos
        prev = pos_seen.setdefault(m.get("pos"), m["data"]["s"])
        assert prev == m["data"]["s"], "two records at pos %s: %s" % (m.get("pos"), m)
    return dups, ooo


def marker(s, stack_produce, kind, target, ledger):
    """Sends one more message on the stream and returns its seq; used to
    prove "nothing else came before": the next message must be it."""
    seq = ledger.next("%s:%s" % (kind, target))
    stack_produce([line(kind, target, seq)])
    return seq

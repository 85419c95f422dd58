#!/usr/bin/python3
"""Resume benchmark (issue 9; prints figures, not a pass/fail test).

Starts redis-server, fanout-kafka-dev and fanout-delivery servers, then:

1. mass resume: --conns connections (distinct users; each in one of --rooms
   rooms) on server A, held by --workers client processes (asyncio, a small
   RFC 6455 client of this file). --user-rate sends/s to random users of
   theirs and --room-rate broadcasts/s to their rooms flow; A is drained
   (SIGTERM); every client reconnects to B or C with since= and joins its
   room with since=. Prints: the time until every client has resumed (welcome
   and joined with recovered:true), refused resumes, lost messages (goal 0),
   duplicates, and resumes per second per server core (resumes divided by
   the CPU seconds B and C used in that time; their live traffic is in it).
   A drains with --drain-spread-ms (the server's default, 5 s, unless given;
   0: every 1001 at once); also printed: A's drain (last close, exit code),
   when the clients saw their closes, and the reconnect storm on B and C
   (peak resume attempts and completed resumes per second, upgrades refused
   over --max-pending-handshakes). The issue 11 figure is --conns 15000.
2. resumed connect vs plain connect: one server (it owns every partition:
   the gap is served from its memory window); for --latency-samples users,
   time from connect() to the welcome frame, plain and with since= (5
   messages missed), interleaved. Prints p50/p99 of both and of the
   difference.
3. window memory at --window-rate messages/s (users topic, --payload bytes
   each) with --resume-window-ms W: fanout_delivery_resume_window_bytes
   once the window is full, per partition; scaled to the default 120 s.

usage: bench_resume.py [--build DIR] [--conns 10000] [--workers 4] [--rooms 100]
                       [--phases mass,latency,window] [--drain-spread-ms MS]
The rooms default (100 rooms of 100 members) keeps the clients' frames at
~5,000/s; --rooms 1 puts all 10,000 in one room (500,000 frames/s at 50/s).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
from procstat import cpu_seconds as proc_cpu  # noqa: E402

SECRET = "bench-resume-secret-0123456789abcdef-0123"


def raise_nofile(n=20000):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(sub, rooms=("*",)):
    h = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    c = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + 7200, "rooms": list(rooms)}).encode())
    sig = hmac.new(SECRET.encode(), ("%s.%s" % (h, c)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (h, c, b64url(sig))


def mask_frame(op, payload):
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | op, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | op, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | op, 0x80 | 127, n)
    k = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") \
        if n else b""
    return hdr + key + masked


# ---- the worker: many clients in one asyncio loop --------------------------------------

class Client(asyncio.Protocol):
    """One application client: resumes its user stream and its room."""

    def __init__(self, w, idx, user, room):
        self.w, self.idx, self.user, self.room = w, idx, user, room
        self.tok = jwt(user)
        self.pos_user = self.pos_room = None
        self.seq_user = []  # data.s of every user message, in arrival order
        self.seq_room = []
        self.conns = 0
        self.tr = None
        self.buf = b""
        self.open = False
        self.t_welcome = None    # perf_counter of the last welcome
        self.t_resumed = None    # wall time when welcome + joined of a resume came
        self.resumed_welcome = self.resumed_join = None
        self.refused = 0
        self.closed_codes = []
        self.t_close = None      # wall time of the first close frame (A's 1001)
        self.t_attempts = []     # wall times of the resume attempts (connect() calls)
        self.want_reconnect = True
        self.is_joined = False
        self.status = None

    def start(self, addr, resume):
        host, _, port = addr.rpartition(":")
        path = "/ws?token=" + self.tok
        since = self.pos_user if resume else None
        if since:
            path += "&since=" + urllib.parse.quote(since, safe="")
        self.req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (
                        path, addr, base64.b64encode(os.urandom(16)).decode())).encode()
        self.resuming = resume and since is not None
        if resume:
            self.t_attempts.append(time.time())
        self.resumed_welcome = self.resumed_join = None
        self.buf = b""
        self.open = False
        self.t0 = time.perf_counter()
        return self.w.loop.create_connection(lambda: self, host, int(port))

    def connection_made(self, tr):
        self.tr = tr
        tr.write(self.req)

    def data_received(self, data):
        self.buf += data
        if not self.open:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            status = self.buf.split(b" ", 2)[1]
            self.status = status
            if status != b"101":
                self.w.refusals[status] = self.w.refusals.get(status, 0) + 1
                self.tr.close()
                return
            self.buf = self.buf[i + 4:]
            self.open = True
        b = self.buf
        off = 0
        while len(b) - off >= 2:
            b0, b1 = b[off], b[off + 1]
            n = b1 & 0x7F
            h = 2
            if n == 126:
                if len(b) - off < 4:
                    break
                n = struct.unpack_from("!H", b, off + 2)[0]
                h = 4
            elif n == 127:
                if len(b) - off < 10:
                    break
                n = struct.unpack_from("!Q", b, off + 2)[0]
                h = 10
            if len(b) - off < h + n:
                break
            payload = b[off + h:off + h + n]
            off += h + n
            op = b0 & 0x0F
            if op == 1:
                self.on_text(payload)
            elif op == 9:
                self.tr.write(mask_frame(0xA, payload))
            elif op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed_codes.append(code)
                if self.t_close is None:
                    self.t_close = time.time()
                self.tr.write(mask_frame(0x8, payload[:2]))
                self.tr.close()
        self.buf = b[off:]

    def on_text(self, payload):
        m = json.loads(payload)
        ty = m.get("type")
        if ty == "message":
            d = m.get("data")
            if "user" in m:
                self.seq_user.append(d["s"])
                self.pos_user = m.get("pos", self.pos_user)
            else:
                self.seq_room.append(d["s"])
                self.pos_room = m.get("pos", self.pos_room)
        elif ty == "welcome":
            self.conns += 1
            self.t_welcome = time.perf_counter()
            self.w.welcome_times.append((self.resuming, self.t_welcome - self.t0))
            if self.resuming:
                self.resumed_welcome = m.get("recovered")
                if m.get("recovered") is not True:
                    self.refused += 1
                    self.pos_user = m.get("pos")
            else:
                self.pos_user = m.get("pos")
            j = {"type": "join", "room": self.room}
            if self.resuming and self.pos_room:
                j["since"] = self.pos_room
            self.tr.write(mask_frame(1, json.dumps(j).encode()))
        elif ty == "joined":
            if self.resuming:
                self.resumed_join = m.get("recovered")
                if m.get("recovered") is not True:
                    self.refused += 1
                    self.pos_room = m.get("pos")
                self.t_resumed = time.time()
            else:
                self.pos_room = m.get("pos")
            self.w.joined += 1
            self.is_joined = True

    def connection_lost(self, exc):
        if not self.open and self.status is None:  # closed before any answer
            self.w.refusals[b"closed"] = self.w.refusals.get(b"closed", 0) + 1
        self.open = False
        self.tr = None
        self.status = None
        if self.want_reconnect and self.w.reconnect_to:
            self.w.loop.create_task(self.w.reconnect(self))


class Worker:
    def __init__(self, args):
        self.args = args
        self.loop = asyncio.new_event_loop()
        self.clients = []
        self.joined = 0
        self.retries = 0
        self.refusals = {}
        self.welcome_times = []
        self.reconnect_to = []

    async def reconnect(self, c):
        await asyncio.sleep(random.random() * self.args.jitter)
        for attempt in range(200):
            addr = self.reconnect_to[(c.idx + attempt) % len(self.reconnect_to)]
            try:
                await c.start(addr, True)
                return
            except OSError:
                await asyncio.sleep(0.2 + random.random() * 0.3)

    async def connect_all(self):
        sem = asyncio.Semaphore(200)

        async def one(c):
            async with sem:
                for _ in range(50):
                    try:
                        await c.start(self.args.addr, False)
                        break
                    except OSError:
                        await asyncio.sleep(0.2)
        await asyncio.gather(*(one(c) for c in self.clients))
        # A refused or broken upgrade (a 503 under load, a reset) is tried
        # again until every client has its joined reply.
        last = time.time()
        while True:
            lagging = [c for c in self.clients if not c.is_joined]
            if not lagging:
                break
            if time.time() - last > 5:
                last = time.time()
                self.retries += len(lagging)
                for c in lagging:
                    if c.tr is not None:
                        c.tr.abort()
                await asyncio.sleep(0.2)  # their connection_lost runs first
                await asyncio.gather(*(one(c) for c in lagging))
            await asyncio.sleep(0.05)

    async def commands(self):
        reader = asyncio.StreamReader()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "report":
                out = {"clients": [[c.user, c.room, c.seq_user, c.seq_room, c.conns, c.refused,
                                    c.t_resumed, c.closed_codes, c.t_close, c.t_attempts]
                                   for c in self.clients],
                       "refusals": {k.decode(): v for k, v in self.refusals.items()}}
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
                return
            if line.startswith("reconnect-to "):
                self.reconnect_to = line.split()[1].split(",")

    def run(self):
        raise_nofile()
        a = self.args
        for i in range(a.first, a.first + a.count):
            self.clients.append(Client(self, i, "mu%d" % i, "mroom%d" % (i % a.rooms)))
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.connect_all())
        print("connected %d retried %d refused %s" % (
            len(self.clients), self.retries,
            {k.decode(): v for k, v in self.refusals.items()}), flush=True)
        self.loop.run_until_complete(self.commands())


# ---- the driver ----------------------------------------------------------------------

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else float("nan")


class Producer:
    """A fanout-test-produce process fed line by line; seq per target."""

    def __init__(self, ft, bootstrap):
        self.p = subprocess.Popen([ft.find_binary("fanout-test-produce"), bootstrap],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.sent = {}

    def send(self, topic, verb, target, pad=0):
        s = self.sent.get(target, 0)
        self.sent[target] = s + 1
        d = {"s": s}
        if pad:
            d["p"] = "x" * pad
        self.p.stdin.write("%s %s %s application/json %s\n" % (
            topic, verb, target, json.dumps(d).encode().hex()))

    def close(self):
        out, _ = self.p.communicate(timeout=120)
        assert self.p.returncode == 0 and "produced=" in out, out


def flow(stop, rate, fn):
    t0 = time.time()
    i = 0
    while not stop.is_set():
        fn(i)
        i += 1
        d = t0 + i / rate - time.time()
        if d > 0:
            stop.wait(d)


def delivery(ft, redis, kafka, sid, extra=()):
    return ft.start_service("fanout-delivery", "bench-resume-" + sid, [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", sid, "--jwt-secret", SECRET, "--log-level", "warn",
        "--max-connections", "30000", "--session-timeout-ms", "6000",
        "--drain-timeout-ms", "10000", *extra])


def peak_per_s(ts, t0, width=1.0):
    """The most timestamps in one window of `width` seconds (windows from t0),
    as a rate per second."""
    bins = {}
    for t in ts:
        k = int((t - t0) // width)
        bins[k] = bins.get(k, 0) + 1
    return max(bins.values()) / width if bins else 0


def mass(ft, a):
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=a.partitions)
    load0 = os.getloadavg()
    a_extra = ["--log-level", "info"]  # its drain lines
    if a.drain_spread_ms is not None:
        # A drain timeout that never cuts the spread (dconfig.c: spread +
        # close timeout must fit).
        a_extra += ["--drain-spread-ms", str(a.drain_spread_ms),
                    "--drain-timeout-ms", str(max(10000, a.drain_spread_ms + 10000))]
    A = delivery(ft, redis, kafka, "A", a_extra)
    B = delivery(ft, redis, kafka, "B")
    C = delivery(ft, redis, kafka, "C")

    def assigned():
        return sum(ft.metrics(pr.addr).get("fanout_delivery_assigned_partitions", 0) - a.partitions
                   for pr in (A, B, C))
    ft.eventually(lambda: assigned() == a.partitions, timeout=60, what="group settled")
    time.sleep(2)  # rooms read from where each server started: let them find it
    per = (a.conns + a.workers - 1) // a.workers
    workers = []
    t0 = time.time()
    for k in range(a.workers):
        first = k * per
        cnt = min(per, a.conns - first)
        workers.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--addr", A.addr,
             "--first", str(first), "--count", str(cnt), "--rooms", str(a.rooms),
             "--jitter", str(a.jitter)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for w in workers:
        line = w.stdout.readline()
        assert line.startswith("connected"), line
        print("  worker: %s" % line.strip(), flush=True)
    print("mass: %d connections on A (%d workers) in %.1f s" % (a.conns, a.workers,
                                                                 time.time() - t0), flush=True)
    for w in workers:
        w.stdin.write("reconnect-to %s,%s\n" % (B.addr, C.addr))
        w.stdin.flush()
    pu = Producer(ft, kafka.bootstrap)
    pr_ = Producer(ft, kafka.bootstrap)
    stop = threading.Event()
    lock = threading.Lock()

    def user_msg(i):
        with lock:
            pu.send("fanout.users", "send", "mu%d" % random.randrange(a.conns))

    def room_msg(i):
        with lock:
            pr_.send("fanout.rooms", "broadcast", "mroom%d" % (i % a.rooms))
    threads = [threading.Thread(target=flow, args=(stop, a.user_rate, user_msg), daemon=True),
               threading.Thread(target=flow, args=(stop, a.room_rate, room_msg), daemon=True)]
    for t in threads:
        t.start()
    time.sleep(3)
    cpu0 = proc_cpu(B.pid) + proc_cpu(C.pid)
    t_term = time.time()
    A.signal(signal.SIGTERM)
    # every client resumed: B's and C's connection gauges reach conns
    metric_failures = []

    progress = {"next": time.time() + 10, "n": 0}

    def resumed():
        try:
            n = sum(ft.metrics(pr.addr, timeout=10).get("fanout_delivery_connections", 0)
                    for pr in (B, C))
        except OSError as e:  # http.client errors included
            metric_failures.append("%.1f s: %r" % (time.time() - t_term, e))
            return False
        progress["n"] = n
        if time.time() >= progress["next"]:
            progress["next"] += 10
            print("  %.0f s after SIGTERM: %d connections on B+C" % (time.time() - t_term, n),
                  flush=True)
        return n >= a.conns
    # Bounded: a storm that does not settle is reported (not resumed, and
    # the messages those clients lack), not waited for forever.
    storm_deadline = time.time() + a.storm_timeout
    while not resumed() and time.time() < storm_deadline:
        time.sleep(0.2)
    cpu1 = proc_cpu(B.pid) + proc_cpu(C.pid)
    t_all_conn = time.time()
    time.sleep(3)  # live traffic after the storm
    stop.set()
    for t in threads:
        t.join()
    with lock:
        pu.close()
        pr_.close()
    sent_u, sent_r = pu.sent, pr_.sent
    expected = sum(sent_u.values()) + sum(sent_r.get("mroom%d" % (i % a.rooms), 0)
                                          for i in range(a.conns))
    time.sleep(3)  # the last ones in flight
    results = []
    refusals = {}
    for w in workers:
        w.stdin.write("report\n")
        w.stdin.flush()
        rep = json.loads(w.stdout.readline())
        results += rep["clients"]
        for k, v in rep["refusals"].items():
            refusals[k] = refusals.get(k, 0) + v
        w.wait(30)
    lost = dups = refused = not_resumed = lost_unresumed = 0
    t_last = 0
    t_closes, t_resumes, t_attempts = [], [], []
    for user, room, su, sr, conns, ref, t_res, codes, t_cl, t_att in results:
        if t_cl is not None:
            t_closes.append(t_cl)
        if t_res is not None:
            t_resumes.append(t_res)
        t_attempts += t_att
        refused += ref
        if conns < 2 or t_res is None:
            not_resumed += 1
        else:
            t_last = max(t_last, t_res)
        for got, n in ((su, sent_u.get(user, 0)), (sr, sent_r.get(room, 0))):
            dups += len(got) - len(set(got))
            missing = len(set(range(n)) - set(got))
            lost += missing
            if conns < 2 or t_res is None:
                lost_unresumed += missing
    m = {name: ft.metrics(pr.addr) for name, pr in (("B", B), ("C", C))}
    resumes = a.conns - not_resumed
    a_exit = A.wait_exit(60)
    with open(A.logpath) as f:
        a_log = f.read()
    import re
    a_closed = re.search(r'msg="drain: every connection closed" ms=(\d+)', a_log)
    a_drained = re.search(r'msg="drained" ms=(\d+)', a_log)
    a_spread = re.search(r'msg="draining" open=(\d+) spread_ms=(\d+) batch=(\d+)', a_log)
    print("mass resume: %d clients, %d user msgs/s + %d room msgs/s (%d rooms of %d), "
          "%d messages owed in all" % (a.conns, a.user_rate, a.room_rate, a.rooms,
                                       a.conns // a.rooms, expected))
    print("  A's drain: %s; last 1001 sent %s ms after SIGTERM, drained (exit) after %s ms, "
          "exit code %s" % (
              "open=%s spread_ms=%s batch=%s" % a_spread.groups() if a_spread else "?",
              a_closed.group(1) if a_closed else "?", a_drained.group(1) if a_drained else "?",
              a_exit))
    if t_closes:
        print("  closes seen by the clients: first %.2f s, last %.2f s after SIGTERM; "
              "peak %.0f closes/s" % (min(t_closes) - t_term, max(t_closes) - t_term,
                                      peak_per_s(t_closes, t_term)))
    print("  reconnect storm on B+C: peak %.0f resume attempts/s (%d attempts for %d clients), "
          "peak %.0f resumes completed/s (1 s windows), peak %.0f/s in 100 ms windows" % (
              peak_per_s(t_attempts, t_term), len(t_attempts), a.conns,
              peak_per_s(t_resumes, t_term), peak_per_s(t_resumes, t_term, 0.1)))
    print("  all resumed %.2f s after SIGTERM (every client connected to B/C after %.2f s); "
          "not resumed %d, refused (recovered:false) %d" % (
              t_last - t_term, t_all_conn - t_term, not_resumed, refused))
    if metric_failures:
        print("  GET /metrics on B/C failed during the storm: %s" % metric_failures)
    print("  lost %d (%d of them owed to clients not resumed when the storm timed out after "
          "%d s), duplicates %d; upgrades refused in all (status: count) %s" % (
              lost, lost_unresumed, a.storm_timeout, dups, refusals))
    print("  B/C: upgrades closed at accept (over --max-pending-handshakes, %d here): %s" % (
        3000, {k: int(v.get("fanout_delivery_rejected_pending_total", 0)) for k, v in m.items()}))
    print("  resumes per CPU-second of B+C: %.0f (%d resumes, %.2f CPU s, wall %.2f s)" % (
        resumes / max(cpu1 - cpu0, 1e-3), resumes, cpu1 - cpu0, t_last - t_term))
    for sid, mm in m.items():
        print("  %s: %s" % (sid, {k: v for k, v in mm.items() if "resume" in k}))
    print("  load average before / after: %s / %s (2 cores, shared)" % (
        "%.2f %.2f %.2f" % load0, "%.2f %.2f %.2f" % os.getloadavg()))
    for pr in (A, B, C):
        pr.stop()
    kafka.stop()
    redis.stop()


def raw_connect(addr, path, then=0, join=None):
    """Connects, upgrades; returns (seconds to the welcome, the welcome,
    seconds to the `then`-th message frame after it or None). With join (a
    join message), the times count from sending it, once the welcome came,
    to the joined reply and to the `then`-th message; the second value is
    then the joined reply."""
    host, _, port = addr.rpartition(":")
    t0 = time.perf_counter()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (
                   path, addr, base64.b64encode(os.urandom(16)).decode())).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    buf = buf[buf.index(b"\r\n\r\n") + 4:]
    t_w = first = t_k = None
    seen = 0
    state = "welcome"
    while True:
        while True:  # one whole frame in buf?
            if len(buf) >= 2:
                code, n, h = buf[1] & 0x7F, buf[1] & 0x7F, 2
                if code == 126 and len(buf) >= 4:
                    n, h = struct.unpack("!H", buf[2:4])[0], 4
                elif code == 127 and len(buf) >= 10:
                    n, h = struct.unpack("!Q", buf[2:10])[0], 10
                if (code < 126 or h > 2) and len(buf) >= h + n:
                    break
            buf += s.recv(65536)
        op, payload, buf = buf[0] & 0x0F, buf[h:h + n], buf[h + n:]
        if op != 1:
            continue
        m = json.loads(payload)
        if state == "welcome" and join is not None:
            t0 = time.perf_counter()
            s.sendall(mask_frame(1, json.dumps(join).encode()))
            state = "joined"
            continue
        if state in ("welcome", "joined"):
            if state == "joined" and m.get("type") != "joined":
                continue
            t_w, first = time.perf_counter() - t0, m
            if then == 0 or m.get("recovered") is not True:
                break
            state = "messages"
            continue
        if m.get("type") == "message":
            seen += 1
            if seen == then:
                t_k = time.perf_counter() - t0
                break
    s.close()
    return t_w, first, t_k


def latency(ft, a):
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=a.partitions)
    A = delivery(ft, redis, kafka, "L")
    ft.eventually(lambda: ft.metrics(A.addr).get("fanout_delivery_assigned_partitions", 0)
                  == 2 * a.partitions, timeout=60, what="every partition on L")
    n = a.latency_samples
    users = ["lu%d" % i for i in range(n)]
    # each user: a welcome pos now, then 5 messages it misses
    since = {}
    for u in users:
        _t, w, _ = raw_connect(A.addr, "/ws?token=" + jwt(u))
        since[u] = w["pos"]
    p = Producer(ft, kafka.bootstrap)
    for u in users:
        for _ in range(5):
            p.send("fanout.users", "send", u)
    p.close()
    time.sleep(1)
    plain, resumed, last, refused = [], [], [], 0
    for u in users:
        t1, _w, _ = raw_connect(A.addr, "/ws?token=" + jwt(u))
        t2, w2, t5 = raw_connect(A.addr, "/ws?token=%s&since=%s" % (
            jwt(u), urllib.parse.quote(since[u], safe="")), then=5)
        plain.append(t1 * 1000)
        resumed.append(t2 * 1000)
        if t5 is not None:
            last.append(t5 * 1000)
        refused += w2.get("recovered") is not True
    # rooms (room mode kafka): every server keeps a window of every rooms
    # partition, so a resumed join is served from memory
    rooms = ["lr%d" % i for i in range(n)]
    rsince = {}
    for r in rooms:
        _t, j, _ = raw_connect(A.addr, "/ws?token=" + jwt("lj"), join={"type": "join", "room": r})
        rsince[r] = j["pos"]
    p = Producer(ft, kafka.bootstrap)
    for r in rooms:
        for _ in range(5):
            p.send("fanout.rooms", "broadcast", r)
    p.close()
    time.sleep(1)
    jplain, jres, jlast, jref = [], [], [], 0
    for r in rooms:
        t1, _j, _ = raw_connect(A.addr, "/ws?token=" + jwt("lj"), join={"type": "join", "room": r})
        t2, j2, t5 = raw_connect(A.addr, "/ws?token=" + jwt("lj"), then=5,
                                 join={"type": "join", "room": r, "since": rsince[r]})
        jplain.append(t1 * 1000)
        jres.append(t2 * 1000)
        if t5 is not None:
            jlast.append(t5 * 1000)
        jref += j2.get("recovered") is not True
    jdiff = [r - q for r, q in zip(jres, jplain)]
    print("join to joined, %d rooms, 5 missed broadcasts each (served from the window):" % n)
    print("  plain   p50 %.2f ms p99 %.2f ms" % (pct(jplain, 50), pct(jplain, 99)))
    print("  resumed p50 %.2f ms p99 %.2f ms (refused %d); to the 5th replayed message p50 %.2f "
          "ms p99 %.2f ms" % (pct(jres, 50), pct(jres, 99), jref, pct(jlast, 50), pct(jlast, 99)))
    print("  extra   p50 %.2f ms p99 %.2f ms (per-pair difference)" % (pct(jdiff, 50),
                                                                     pct(jdiff, 99)))
    diff = [r - q for r, q in zip(resumed, plain)]
    print("connect to welcome, %d users, 5 missed messages each (user streams are replayed "
          "from Kafka: the embedded broker):" % n)
    print("  plain   p50 %.2f ms p99 %.2f ms" % (pct(plain, 50), pct(plain, 99)))
    print("  resumed p50 %.2f ms p99 %.2f ms (refused %d)" % (pct(resumed, 50), pct(resumed, 99),
                                                             refused))
    print("  resumed, to the 5th replayed message: p50 %.2f ms p99 %.2f ms" % (
        pct(last, 50), pct(last, 99)))
    print("  extra   p50 %.2f ms p99 %.2f ms (per-pair difference); p99 resumed - p99 plain "
          "%.2f ms" % (pct(diff, 50), pct(diff, 99), pct(resumed, 99) - pct(plain, 99)))
    A.stop()
    kafka.stop()
    redis.stop()


def window(ft, a):
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=a.partitions)
    A = delivery(ft, redis, kafka, "W", ["--resume-window-ms", str(a.window_ms)])
    ft.eventually(lambda: ft.metrics(A.addr).get("fanout_delivery_assigned_partitions", 0)
                  == 2 * a.partitions, timeout=60, what="every partition on W")
    p = Producer(ft, kafka.bootstrap)
    stop = threading.Event()
    th = threading.Thread(target=flow, args=(stop, a.window_rate, lambda i: p.send(
        "fanout.rooms", "broadcast", "wr%d" % (i % 5000), pad=a.payload)), daemon=True)
    th.start()
    samples = []
    t0 = time.time()
    while time.time() - t0 < a.window_ms / 1000.0 + a.window_extra:
        time.sleep(1)
        mm = ft.metrics(A.addr)
        wb = sum(v for k, v in mm.items() if k.startswith("fanout_delivery_resume_window_bytes"))
        samples.append((time.time() - t0, wb))
    stop.set()
    th.join()
    p.close()
    full = [b for t, b in samples if t >= a.window_ms / 1000.0 + 1]
    avg = sum(full) / max(len(full), 1)
    per_part = avg / a.partitions
    print("window memory: %d msg/s on the rooms topic (%d partitions), %d-byte data, "
          "window %d ms:" % (a.window_rate, a.partitions, a.payload, a.window_ms))
    print("  fanout_delivery_resume_window_bytes once full: %.0f bytes in all, %.0f per "
          "partition (%.0f bytes per record)" % (avg, per_part,
                                                 avg / (a.window_rate * a.window_ms / 1000.0)))
    print("  scaled to the 120 s default: %.1f MB per partition at %d msg/s per topic" % (
        per_part * 120000.0 / a.window_ms / 1e6, a.window_rate))
    print("  samples (s, bytes): %s" % [(round(t), int(b)) for t, b in samples])
    A.stop()
    kafka.stop()
    redis.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--addr")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.5,
                    help="each client waits up to this many seconds before reconnecting")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    ap.add_argument("--phases", default="mass,latency,window")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--storm-timeout", type=int, default=300,
                    help="seconds to wait for every client to be back on B or C")
    ap.add_argument("--drain-spread-ms", type=int, default=None,
                    help="passed to A (default: the server's, 5000); 0: every close at once")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--user-rate", type=int, default=50)
    ap.add_argument("--room-rate", type=int, default=50)
    ap.add_argument("--latency-samples", type=int, default=500)
    ap.add_argument("--window-rate", type=int, default=1000)
    ap.add_argument("--window-ms", type=int, default=20000)
    ap.add_argument("--window-extra", type=int, default=8)
    ap.add_argument("--payload", type=int, default=100)
    a = ap.parse_args()
    if a.worker:
        Worker(a).run()
        return
    raise_nofile()
    if a.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(a.build)
    import fanout_test as ft
    for ph in a.phases.split(","):
        {"mass": mass, "latency": latency, "window": window}[ph](ft, a)


if __name__ == "__main__":
    main()

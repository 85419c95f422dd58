#!/usr/bin/python3
"""clients/js/fanout.js in a real browser: Debian's chromium driven by
playwright-core (tests/browser/driver.mjs), the page served from 127.0.0.1,
connecting through nginx to three fanout-delivery servers (tests/e2e/cluster.py:
real Apache Kafka, redis-server, fanout-ingest) while user and room messages
flow. Run one with: test_browser.py test_drain_then_freeze (no argument: all).

  test_token_expired_then_good   an expired token (auth=close: 4001), then a good one, connects;
                                 two refused tokens in a row stop the client (closed + error)
  test_demo_page                 clients/js/demo shows the state, a send and a broadcast
  test_offline_online            offline drops the socket; online reconnects at once (not after the
                                 backoff) and resumes what was sent meanwhile
  test_drain_then_freeze         SIGTERM of the client's server, then SIGSTOP of the next:
                                 every message once, in order per stream, recovered:true on
                                 each resume, the frozen connection replaced within ping
                                 interval + pong timeout
  test_rolling_restart_100       100 clients in one page through a rolling restart of every
                                 delivery server: nothing lost; prints the time from SIGTERM
                                 until all clients of the drained server resumed
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from cluster import Cluster  # noqa: E402
from fanout_test import (SOURCE_DIR, Proc, Skip, eventually, free_port, log, run_tests,  # noqa: E402
                         scaled, wait_port)

# Short enough to keep the freeze test quick, long enough that a loaded CI
# machine (2 cores, Kafka, chromium, 3 servers) does not miss pongs: 2 s/2 s did.
PING_MS, PONG_MS = 3000, 5000
CHROMIUM = os.environ.get("FANOUT_CHROMIUM", "/usr/bin/chromium")


# ---- the browser --------------------------------------------------------------

class Browser:
    """driver.mjs as a child process: one JSON command per line."""

    def __init__(self):
        if not os.path.exists(CHROMIUM):
            raise Skip("no chromium at %s (deploy/install-deps.sh installs it)" % CHROMIUM)
        if not os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")):
            raise Skip("playwright-core not installed (tests/browser/install.sh)")
        self.logpath = os.path.join(os.environ.get("FANOUT_STATE_DIR", "/tmp"), "logs",
                                    "browser-%d.log" % int(time.time() * 1000))
        os.makedirs(os.path.dirname(self.logpath), exist_ok=True)
        self.log = open(self.logpath, "wb")
        self.p = subprocess.Popen(["node", os.path.join(HERE, "driver.mjs")], cwd=HERE,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                  text=True, start_new_session=True)
        self.n = 0
        self.lock = threading.Lock()
        hello = self._read(60)
        log("chromium %s (driver pid %d, log %s)" % (hello.get("version"), self.p.pid, self.logpath))

    def _read(self, timeout):
        # A watchdog: the driver answers every command; one that hangs fails the test.
        timer = threading.Timer(scaled(timeout), self.kill)
        timer.start()
        try:
            line = self.p.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise AssertionError("browser driver exited; see %s" % self.logpath)
        return json.loads(line)

    def call(self, op, arg=None, timeout=60, page=0):
        with self.lock:
            self.n += 1
            self.p.stdin.write(json.dumps({"id": self.n, "op": op, "arg": arg, "page": page})
                               + "\n")
            self.p.stdin.flush()
            r = self._read(timeout)
        if not r.get("ok"):
            raise AssertionError("browser %s failed: %s" % (op, r.get("error")))
        return r.get("result")

    def eval(self, js, timeout=60, page=0):
        return self.call("eval", js, timeout, page)

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
            self.p.wait(timeout=10)
        self.log.close()


class Static:
    """The source tree served on 127.0.0.1 (Chromium lets a page of a loopback
    origin reach loopback servers; nginx is one)."""

    def __init__(self):
        self.port = free_port()
        self.proc = Proc("static", ["/usr/bin/python3", "-m", "http.server", str(self.port),
                                    "--bind", "127.0.0.1", "--directory", SOURCE_DIR])
        wait_port("127.0.0.1", self.port, timeout=10)
        self.base = "http://127.0.0.1:%d" % self.port
        self.url = self.base + "/tests/browser/page.html"

    def stop(self):
        self.proc.stop()


# ---- traffic ------------------------------------------------------------------

class Traffic(threading.Thread):
    """Sends {"seq": n} to each user in turn (per-user counters) and, every
    `room_every` sends, broadcasts {"seq": n} to the room, through nginx and
    fanout-ingest. Only what ingest acknowledged (202) is owed."""

    def __init__(self, c, users, room, rate=40.0, room_every=2):
        super().__init__(daemon=True)
        self.c, self.users, self.room = c, list(users), room
        self.period, self.room_every = 1.0 / rate, room_every
        self.next = {u: 0 for u in self.users}
        self.acked = {u: [] for u in self.users}
        self.room_next, self.room_acked = 0, []
        self.failed = 0
        self.halt = threading.Event()

    def run(self):
        i = 0
        t = time.monotonic()
        while not self.halt.is_set():
            u = self.users[i % len(self.users)]
            seq = self.next[u]
            self.next[u] += 1
            try:
                if self.c.send(u, {"seq": seq})[0] == 202:
                    self.acked[u].append(seq)
                else:
                    self.failed += 1
            except OSError:
                self.failed += 1
            if i % self.room_every == 0:
                seq = self.room_next
                self.room_next += 1
                try:
                    if self.c.broadcast(self.room, {"seq": seq})[0] == 202:
                        self.room_acked.append(seq)
                    else:
                        self.failed += 1
                except OSError:
                    self.failed += 1
            i += 1
            t += self.period
            self.halt.wait(max(0.0, t - time.monotonic()))

    def stop(self):
        self.halt.set()
        self.join(timeout=30)
        log("traffic: %d user messages, %d broadcasts acknowledged, %d failed" % (
            sum(len(v) for v in self.acked.values()), len(self.room_acked), self.failed))


def problems(rec, owed_user, owed_room, room):
    """What is wrong with one client's record: a duplicate, a message out of
    order, an owed message missing (per stream)."""
    out = []
    for stream, owed in (("user", owed_user), ("room:" + room, owed_room)):
        got = [s for s in rec["recv"].get(stream, []) if s is not None]  # None: warm-up
        if len(got) != len(set(got)):
            out.append("%s %s: duplicates %s" % (rec["user"], stream,
                                                  sorted({s for s in got if got.count(s) > 1})[:10]))
        if got != sorted(got):
            bad = [(a, b) for a, b in zip(got, got[1:]) if b < a][:5]
            out.append("%s %s: out of order %s" % (rec["user"], stream, bad))
        missing = sorted(set(owed) - set(got))
        if missing:
            out.append("%s %s: %d missing, first %s" % (rec["user"], stream, len(missing),
                                                         missing[:10]))
    return out


# ---- the stack ----------------------------------------------------------------

C = B = S = None


def setup_module():
    global C, B, S
    B = Browser()  # first: a machine without chromium skips before the cluster starts
    S = Static()
    C = Cluster(ndelivery=3, ningest=1, partitions=6,
                delivery_args=["--ping-interval-ms", str(PING_MS),
                               "--pong-timeout-ms", str(PONG_MS)])
    B.call("goto", S.url)
    eventually(lambda: B.eval("!!(window.T && window.T.ready)"), what="test page loaded")


def teardown_module():
    if B is not None:
        B.close()
    problems = C.shutdown_clean() if C is not None else []  # exit codes, sanitizer reports
    if S is not None:
        S.stop()
    assert not problems, problems


def start_clients(users, tokens, rooms, options=None):
    cfg = {"url": "ws://%s/ws" % C.addr, "n": len(users), "users": users, "tokens": tokens,
           "rooms": rooms, "options": dict({"heartbeatTimeout": PONG_MS}, **(options or {}))}
    return B.eval("T.start(%s)" % json.dumps(cfg))


def fresh_tokens(user, rooms, n=40):
    # A different token for every connect: nginx hashes /ws on ?user= here, and
    # the token function is asked before each connect (the page takes the next).
    return [C.token(user, rooms=rooms, exp_in=3600 + i) for i in range(n)]


def brief(lo, hi):
    return B.eval("T.brief(%d, %d)" % (lo, hi))


def summary(lo, hi):
    return B.eval("T.summary(%d, %d)" % (lo, hi), timeout=120)


def warm_room(room, lo, hi, timeout=30):
    """Broadcasts warm-up messages until every client of [lo, hi) got one: the
    room partitions are read from their end, found asynchronously."""
    deadline = time.time() + scaled(timeout)
    while True:
        C.broadcast(room, {"warm": True})
        got = B.eval("T.summary(%d, %d).every(r => (r.recv['room:%s'] || []).length > 0)"
                     % (lo, hi, room))
        if got:
            return
        assert time.time() < deadline, "room %s not live for every client" % room
        time.sleep(0.3)


def server_of(user):
    sids = list(C.registry(user).values())
    return [s for s in C.delivery if s.server_id in sids]


def the_server(user):
    """The one server holding user's connection (the registry may still name
    a closed one for a moment)."""
    return eventually(lambda: (lambda s: s[0] if len(s) == 1 else None)(server_of(user)),
                      what="one registry entry for %s" % user)


# ---- tests --------------------------------------------------------------------

def test_token_expired_then_good():
    users = ["tok-a", "tok-b"]
    expired = C.token("tok-a", exp_in=-30)
    good = C.token("tok-a")
    bad = "not-a-jwt"
    lo, hi = start_clients(users, [[expired, good], [bad, bad]], [])
    eventually(lambda: [b[0] for b in brief(lo, hi)] == ["connected", "closed"], timeout=20,
               what="first connected, second closed")
    a, b = summary(lo, hi)
    # a: refused (4001, a fresh token asked at once), then connected; no error
    assert [s[1] for s in a["states"]] == ["connecting", "disconnected", "connecting",
                                           "connected"], a["states"]
    assert a["states"][1][2] == 4001, a["states"]
    assert a["errors"] == [] and len(a["welcomes"]) == 1, a
    assert a["states"][3][0] - a["states"][1][0] < 1000, "the fresh token is tried at once"
    # b: 4003 twice: stopped, one error
    assert b["states"][-1][1] == "closed" and b["states"][-1][2] == 4003, b["states"]
    assert [e[1] for e in b["errors"]] == ["token_refused"], b["errors"]
    assert b["welcomes"] == []
    B.eval("T.close(%d, %d)" % (lo, hi))


def test_demo_page():
    # deploy/local/stack serves clients/js and prints this URL form
    tok = C.token("demo-user", rooms=["demo-room"])
    url = "%s/clients/js/demo/#url=ws://%s/ws&token=%s&rooms=demo-room" % (S.base, C.addr, tok)
    pg = B.call("newpage")
    B.call("goto", url, page=pg)
    text = lambda: B.eval("document.body.innerText", page=pg)  # noqa: E731
    eventually(lambda: B.eval("document.getElementById('state').textContent", page=pg)
               == "connected" and "joined" in text(), timeout=20, what="demo page connected")
    assert C.send("demo-user", {"hello": "from a send"})[0] == 202
    eventually(lambda: '{"hello":"from a send"}' in text(), timeout=20, what="the send shown")
    deadline = time.time() + scaled(30)
    while '"a broadcast' not in text():  # the room partitions are found asynchronously
        assert time.time() < deadline, "broadcast never shown: %s" % text()[-500:]
        assert C.broadcast("demo-room", "a broadcast")[0] == 202
        time.sleep(0.3)
    assert "room demo-room" in text() and "user demo-user" in text()
    B.eval("window.client.close()", page=pg)
    eventually(lambda: B.eval("document.getElementById('state').textContent", page=pg)
               == "closed", what="demo page closed")


def test_offline_online():
    user = "off1"
    # a backoff far longer than the test waits: only the online event can explain a quick return
    lo, hi = start_clients([user], [fresh_tokens(user, [])], [],
                           {"minReconnectDelay": 30000, "maxReconnectDelay": 60000})
    eventually(lambda: brief(lo, hi)[0][0] == "connected", timeout=20, what="connected")
    sent = []
    for i in range(3):
        assert C.send(user, {"seq": i})[0] == 202
        sent.append(i)
    eventually(lambda: summary(lo, hi)[0]["recv"].get("user", []) == sent, what="first messages")
    B.call("offline", True)
    try:
        eventually(lambda: brief(lo, hi)[0][0] == "disconnected", timeout=10,
                   what="offline drops the connection")
        for i in range(3, 8):
            assert C.send(user, {"seq": i})[0] == 202
            sent.append(i)
        time.sleep(0.5)  # offline for a moment: nothing can arrive now anyway
        assert summary(lo, hi)[0]["recv"].get("user", []) == sent[:3]
    finally:
        t_on = B.eval("T.now()")
        B.call("offline", False)
    eventually(lambda: brief(lo, hi)[0][0] == "connected" and brief(lo, hi)[0][1] == 2,
               timeout=10, what="reconnected after online")
    rec = summary(lo, hi)[0]
    assert rec["welcomes"][1][0] - t_on < scaled(5.0) * 1000, (rec["welcomes"][1][0] - t_on)
    assert [(r[1], r[2]) for r in rec["recovered"]] == [("user", True)], rec["recovered"]
    eventually(lambda: summary(lo, hi)[0]["recv"].get("user", []) == sent, timeout=10,
               what="the messages sent while offline, once, in order")
    log("offline/online: reconnected %d ms after online" % (rec["welcomes"][1][0] - t_on))
    B.eval("T.close(%d, %d)" % (lo, hi))


def test_drain_then_freeze():
    user, room = "bu1", "broom"
    lo, hi = start_clients([user], [fresh_tokens(user, [room])], [room])
    eventually(lambda: brief(lo, hi)[0][0] == "connected" and brief(lo, hi)[0][3] == 1,
               timeout=20, what="connected and joined")
    w = summary(lo, hi)[0]["welcomes"][0]
    assert w[1] == PING_MS, "the welcome announces ping_ms: %r" % (w,)
    warm_room(room, lo, hi)
    tr = Traffic(C, [user], room, rate=30.0, room_every=1)
    tr.start()
    try:
        time.sleep(1.0)
        # 1. drain the client's server
        srv = the_server(user)
        srv.sigterm()
        eventually(lambda: brief(lo, hi)[0][1] >= 2 and brief(lo, hi)[0][0] == "connected",
                   timeout=20, what="reconnected after the drain")
        assert srv.wait_exit(30) == 0
        srv.start()
        C.wait_ready()
        time.sleep(1.0)
        # 2. freeze the next one: its socket stays open, nothing arrives
        frozen = the_server(user)
        t0 = B.eval("T.now()")
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            eventually(lambda: brief(lo, hi)[0][1] >= 3 and brief(lo, hi)[0][0] == "connected",
                       timeout=PING_MS / 1000.0 + PONG_MS / 1000.0 + 15,
                       what="the frozen connection replaced")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        rec = summary(lo, hi)[0]
        t_dead = [s[0] for s in rec["states"] if s[1] == "disconnected" and s[0] >= t0][0]
        t_back = rec["welcomes"][2][0]
        log("frozen server: silence noticed after %d ms, replaced after %d ms (ping %d + pong %d)"
            % (t_dead - t0, t_back - t0, PING_MS, PONG_MS))
        # noticed within ping interval + pong timeout (+ the sweep's tick and scheduling)
        # (slack: the server's ping goes out up to a sweep tick late, and a loaded
        # 2-core machine delays the reconnect)
        assert t_dead - t0 <= PING_MS + PONG_MS + 1000, (t_dead - t0)
        assert t_back - t0 <= PING_MS + PONG_MS + scaled(3.0) * 1000, (t_back - t0)
        time.sleep(1.0)
    finally:
        tr.stop()
    C.wait_ready()

    def complete():
        rec = summary(lo, hi)[0]
        return not problems(rec, tr.acked[user], tr.room_acked, room)
    try:
        eventually(complete, timeout=30, interval=0.5, what="every acknowledged message")
    finally:
        rec = summary(lo, hi)[0]
        log("client: %s, recovered %s, stats %s" % (rec["states"][-1], rec["recovered"],
                                                   rec["stats"]))
    assert not problems(rec, tr.acked[user], tr.room_acked, room)
    # two resumes, each of both streams, all recovered
    streams = [(r[1], r[2]) for r in rec["recovered"]]
    assert sorted(streams) == sorted([("user", True), ("room:" + room, True)] * 2), streams
    assert rec["errors"] == [], rec["errors"]
    B.eval("T.close(%d, %d)" % (lo, hi))


def test_rolling_restart_100():
    n, room = 100, "rroom"
    users = ["rr%03d" % i for i in range(n)]
    lo, hi = start_clients(users, [fresh_tokens(u, [room], 20) for u in users], [room])
    eventually(lambda: all(b[0] == "connected" and b[3] == 1 for b in brief(lo, hi)),
               timeout=60, what="100 clients connected and joined")
    warm_room(room, lo, hi)
    tr = Traffic(C, users, room, rate=60.0, room_every=4)
    tr.start()
    figures = []
    try:
        time.sleep(1.0)
        for srv in list(C.delivery):
            eventually(lambda: all(b[0] == "connected" for b in brief(lo, hi)), timeout=30,
                       what="every client connected")
            mine = [i for i, u in enumerate(users) if srv in server_of(u)]
            t0 = B.eval("T.now()")
            srv.sigterm()

            def resumed():
                b = brief(lo, hi)
                return all(b[i][0] == "connected" and b[i][4] >= t0 for i in mine)
            eventually(resumed, timeout=45, interval=0.1, what="clients of %s resumed" % srv.name)
            b = brief(lo, hi)
            t_all = max([b[i][4] for i in mine] or [t0])
            figures.append((srv.name, len(mine), t_all - t0))
            log("%s: %d clients resumed %d ms after SIGTERM" % (srv.name, len(mine), t_all - t0))
            assert srv.wait_exit(30) == 0
            srv.start()
            C.wait_ready()
    finally:
        tr.stop()
    C.wait_ready()
    bad = []

    def complete():
        recs = summary(lo, hi)
        bad[:] = [p for i, r in enumerate(recs)
                  for p in problems(r, tr.acked[users[i]], tr.room_acked, room)]
        return not bad
    try:
        eventually(complete, timeout=60, interval=1.0, what="every acknowledged message")
    finally:
        if bad:
            log("problems (%d): %s" % (len(bad), bad[:20]))
    recs = summary(lo, hi)
    not_recovered = [(r["user"], x) for r in recs for x in r["recovered"] if not x[2]]
    assert not not_recovered, not_recovered[:10]
    errors = [(r["user"], r["errors"]) for r in recs if r["errors"]]
    assert not errors, errors[:5]
    dups = sum(r["stats"]["duplicates"] for r in recs)
    log("rolling restart: %s; duplicates dropped by the clients: %d" % (figures, dups))
    B.eval("T.close(%d, %d)" % (lo, hi))


if __name__ == "__main__":
    run_tests(globals(), only=sys.argv[1:] or None)

"""Paced drain (--drain-spread-ms): a SIGTERMed server closes its
connections (1001) in batches spread over the configured time instead of
all at once. Connections still open keep receiving what is sent meanwhile:
user messages now consumed by the other server reach them over Redis
Pub/Sub (the draining server's liveness key stays until its last close),
room broadcasts through its own rooms consumer (room mode kafka). Every
client resumes on the other server with since=, and gets every message
exactly once; the drained server exits 0."""

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
import websockets  # noqa: E402

N = 300          # clients, one user each, all in one room
SPREAD_MS = 4000  # B must take over A's partitions (a rebalance, ~1-2 s) while most are open
ROOM = "pdroom"
# How many of the users pd0..pd{N-1} have an entry on A, and whether A's
# liveness key exists.
SAMPLE_LUA = """
local n = 0
for i = 0, tonumber(ARGV[1]) - 1 do
  for _, v in ipairs(redis.call('HVALS', 'ws:connections:pd' .. i)) do
    if v == 'A' then n = n + 1 end
  end
end
return {n, redis.call('EXISTS', 'ws:alive:A')}
"""


class Client:
    def __init__(self, i):
        self.user = "pd%d" % i
        self.got_user = []   # (round, server) of every user message, in arrival order
        self.got_room = []
        self.pos_user = self.pos_room = None
        self.closed_at = None  # time.time() of A's close frame
        self.close_code = None
        self.on = None         # the server it is connected to now
        self.resumed = False


async def run_client(c, A, B, ready, gate):
    for pr in (A, B):
        url = dtest.ws_url(pr, c.user, rooms=[ROOM])
        if pr is B:
            url += "&since=" + urllib.parse.quote(c.pos_user, safe="")
        try:
            # A few upgrades to A at a time: a loaded machine (ASan, other
            # work) must not turn the set-up into a storm of its own.
            if pr is A:
                await gate.acquire()
            try:
                ws = await websockets.connect(url, max_queue=None, open_timeout=ft.scaled(60))
            finally:
                if pr is A:
                    gate.release()
            try:
                w = ft.check_welcome(json.loads(await ws.recv()))
                if pr is B:
                    assert w.get("recovered") is True, (c.user, w)
                else:
                    c.pos_user = w["pos"]
                join = {"type": "join", "room": ROOM}
                if pr is B:
                    join["since"] = c.pos_room
                await ws.send(json.dumps(join))
                c.on = pr.sid
                async for raw in ws:
                    m = json.loads(raw)
                    if m["type"] == "joined":
                        if pr is B:
                            assert m.get("recovered") is True, (c.user, m)
                            c.resumed = True
                        else:
                            c.pos_room = m["pos"]
                            ready.add(c.user)
                    elif m["type"] == "message" and "user" in m:
                        c.got_user.append((m["data"]["r"], pr.sid))
                        c.pos_user = m["pos"]
                    elif m["type"] == "message":
                        c.got_room.append((m["data"]["r"], pr.sid))
                        c.pos_room = m["pos"]
                # A 1001 ends the iteration without an exception (a normal close).
                code = ws.close_code
            finally:
                await ws.close()
        except websockets.ConnectionClosed as e:
            code = e.code
        assert pr is A, (c.user, "closed by B", code)
        c.closed_at, c.close_code = time.time(), code
        c.on = None


def test_closes_are_spread_and_nothing_is_lost():
    S = dtest.Stack()
    # (A long handshake timeout: the test's 300 clients share one Python loop.)
    A = S.start("A", "--drain-spread-ms", str(SPREAD_MS), "--drain-min-batch", "1",
                "--drain-timeout-ms", "20000", "--handshake-timeout-ms", "30000")
    B = S.start("B", "--handshake-timeout-ms", "30000")
    S.wait_group_settled()
    clients = [Client(i) for i in range(N)]
    rounds = []  # (round, time produced)

    def send_round(r):
        lines = ["fanout.users send %s application/json %s\n" %
                 (c.user, json.dumps({"r": r}).encode().hex()) for c in clients]
        lines.append("fanout.rooms broadcast %s application/json %s\n" %
                     (ROOM, json.dumps({"r": r}).encode().hex()))
        S.produce(lines)
        rounds.append((r, time.time()))

    async def go():
        ready = set()
        gate = asyncio.Semaphore(20)
        tasks = [asyncio.ensure_future(run_client(c, A, B, ready, gate)) for c in clients]
        deadline = time.time() + ft.scaled(90)
        while len(ready) < N:
            assert time.time() < deadline, "joined on A: %d of %d" % (len(ready), N)
            for t in tasks:
                if t.done():
                    t.result()  # a failed client fails the test
            await asyncio.sleep(0.05)
        ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:pd%d" % (N - 1)) == "1",
                      what="registered")
        # Samples of A's registry entries with its liveness key (read in one
        # script: the same instant), from SIGTERM until none is left.
        alive_samples = []

        async def sample(r, w):
            # One connection, raw RESP: no redis-cli start per sample.
            cmd = ["EVAL", SAMPLE_LUA, "0", str(N)]
            req = ("*%d\r\n" % len(cmd) + "".join(
                "$%d\r\n%s\r\n" % (len(x.encode()), x) for x in cmd)).encode()
            while True:
                w.write(req)
                assert (await r.readline()) == b"*2\r\n"
                on_a = int((await r.readline())[1:])
                alive = int((await r.readline())[1:])
                if started.is_set():
                    alive_samples.append((on_a, alive))
                    if on_a == 0:
                        w.close()
                        return
                await asyncio.sleep(0.02)
        started = asyncio.Event()
        rd, wr = await asyncio.open_connection("127.0.0.1", S.redis.port)
        sampler = asyncio.ensure_future(sample(rd, wr))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(send_round, 0)
        t_term = time.time()
        started.set()
        A.signal(signal.SIGTERM)
        # Rounds while A drains.
        r = 1
        while any(c.closed_at is None for c in clients) and time.time() - t_term < 8:
            await asyncio.to_thread(send_round, r)
            r += 1
            await asyncio.sleep(0.25)
        await asyncio.wait_for(sampler, ft.scaled(10))
        deadline = time.time() + ft.scaled(90)
        while not all(c.resumed for c in clients):
            assert time.time() < deadline, "resumed on B: %d of %d" % (
                sum(c.resumed for c in clients), N)
            for t in tasks:
                if t.done():
                    t.result()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(send_round, r)  # after the move
        last = r

        def complete(c):
            return len(c.got_user) > last and len(c.got_room) > last
        deadline = time.time() + ft.scaled(90)
        while not all(complete(c) for c in clients):
            if time.time() > deadline:
                break
            await asyncio.sleep(0.05)
        # A's entries went with its connections; B's are there.
        held_by = {c.user: S.redis.cli("HVALS", "ws:connections:" + c.user) for c in clients[:20]}
        assert all(v == "B" for v in held_by.values()), held_by
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return t_term, last, alive_samples

    t_term, last, alive_samples = dtest.run_async(go(), timeout=300)
    assert A.wait_exit(ft.scaled(15)) == 0

    closes = sorted(c.closed_at - t_term for c in clients)
    codes = {c.close_code for c in clients}
    assert codes == {1001}, codes
    span = closes[-1] - closes[0]
    bins = {}
    for t in closes:
        bins[int(t * 10)] = bins.get(int(t * 10), 0) + 1
    ft.log("closes from %.2f s to %.2f s after SIGTERM (span %.2f s) in %d bins of 100 ms, "
           "largest %d" % (closes[0], closes[-1], span, len(bins), max(bins.values())))
    # Spread: 40 batches of 8 over ~1.95 s. The clients (one Python loop for
    # 300) see them late and bunched on a loaded machine: only the span and
    # a few distinct moments are checked here, the batches in Redis below.
    assert span >= 1.5, span
    assert len(bins) >= 5, sorted(bins.items())
    # The clients see the closes late on a loaded machine; the server's own
    # account of when its last 1001 went out is exact.
    with open(A.logpath) as f:
        line = re.search(r'msg="drain: every connection closed" ms=(\d+) by_drain=(\d+)',
                         f.read())
    assert line, "no drain line in %s" % A.logpath
    ms, by_drain = (int(x) for x in line.groups())
    ft.log("A: last close %d ms after SIGTERM, %d closed by the drain" % (ms, by_drain))
    assert by_drain == N, by_drain
    assert SPREAD_MS * 0.9 <= ms <= SPREAD_MS + ft.scaled(3000), ms

    # Nothing lost, nothing twice: rounds 0..last of the user stream and the room.
    for c in clients:
        for got in (c.got_user, c.got_room):
            seq = [r for r, _ in got]
            assert sorted(seq) == list(range(last + 1)), (c.user, got)

    # While connections were open on A it stayed alive, and what was sent
    # during the drain reached them there: room broadcasts by A's own rooms
    # consumer. User messages reach A by Pub/Sub from B only while B owns
    # users partitions: A's users consumer leaves its group at SIGTERM, B's
    # partitions are revoked at its next heartbeat (0-1 s later) and the
    # embedded broker reassigns them ~5 s on, after this drain ended; so how
    # many reach A depends on that heartbeat (0 in one ASan run, when it
    # came 9 ms after SIGTERM). Nothing is lost either way (checked above:
    # they arrive on B after the resume).
    # (The DEL may overtake the last batch's HDELs: only samples with more
    # entries than a batch (8) count.)
    ft.log("A's entries and liveness key while draining: %s" % alive_samples)
    held = [(n, v) for n, v in alive_samples if n > 8]
    assert all(v == 1 for _, v in held), alive_samples
    # The batches, by A's own clock (debug log): 40 of 8, first to last ~1.95 s.
    with open(A.logpath) as f:
        batches = [int(m) for m in re.findall(r'msg="drain: batch" ms=(\d+)', f.read())]
    ft.log("A: %d batches from %d to %d ms" % (len(batches), batches[0], batches[-1]))
    assert len(batches) >= 10, batches
    assert batches[-1] - batches[0] >= 1500, batches
    on_a_user = sum(1 for c in clients for r, sid in c.got_user if r >= 1 and sid == "A")
    on_a_room = sum(1 for c in clients for r, sid in c.got_room if r >= 1 and sid == "A")
    ft.log("during the drain, delivered on A: %d user messages, %d room messages; "
           "%d rounds" % (on_a_user, on_a_room, last + 1))
    assert on_a_room >= N // 10, on_a_room
    assert S.redis.cli("EXISTS", "ws:alive:A") == "0"
    S.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

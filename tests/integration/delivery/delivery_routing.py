"""Two delivery servers sharing Redis and the embedded Kafka: a user's tabs
on both servers, messages consumed on one server for a user on the other
(through Redis Pub/Sub), room broadcasts across servers, dead-server
entries skipped and cleaned."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
import websockets  # noqa: E402
from wsclient import WsClient  # noqa: E402

S = dtest.Stack()
A = S.start("A")
B = S.start("B")
S.wait_group_settled()


def collect(ws_list, n, timeout=15):
    """Reads n messages from every client; returns lists of messages."""
    return [[c.recv(timeout=timeout) for _ in range(n)] for c in ws_list]


def test_two_tabs_on_two_servers_get_each_message_once():
    users = ["tabs%d" % i for i in range(8)]  # spread over the partitions of both servers
    tabs = {u: (WsClient(A.addr, token=dtest.token(u)), WsClient(B.addr, token=dtest.token(u)))
            for u in users}
    ft.eventually(lambda: all(S.redis.cli("HLEN", "ws:connections:" + u) == "2" for u in users),
                  what="both tabs registered")
    lines = []
    for i in range(5):
        for u in users:
            lines.append("fanout.users send %s application/json %s\n" %
                         (u, json.dumps({"u": u, "i": i}).encode().hex()))
    S.produce(lines)
    for u, (ta, tb) in tabs.items():
        for tab in (ta, tb):
            got = [tab.recv(timeout=15) for _ in range(5)]
            assert [m["data"]["i"] for m in got] == list(range(5)), got  # once each, in order
            assert all(m["user"] == u for m in got)
    # once each: a marker per user (same partition, after the five) comes next
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"u": u, "i": "marker"}).encode().hex()) for u in users])
    for u, (ta, tb) in tabs.items():
        for tab in (ta, tb):
            tab.expect_next(lambda m: m["data"]["i"] == "marker", "the marker")
    # Both servers consumed a share and published to the other.
    ma, mb = dtest.metrics(A), dtest.metrics(B)
    assert ma["fanout_delivery_published_total"] > 0, ma
    assert mb["fanout_delivery_published_total"] > 0, mb
    for ta, tb in tabs.values():
        ta.close()
        tb.close()


def test_message_for_a_user_on_the_other_server_arrives_via_redis():
    users = ["remote%d" % i for i in range(8)]
    clients = {u: WsClient(B.addr, token=dtest.token(u)) for u in users}
    before = dtest.metrics(A)["fanout_delivery_published_total"]
    S.produce(["fanout.users send %s application/json %s\n" % (u, b'"hi"'.hex()) for u in users])
    for u, c in clients.items():
        m = c.recv(timeout=15)
        assert m["user"] == u and m["data"] == "hi"
    # A owns about half of the partitions: what it consumed went through Redis.
    assert dtest.metrics(A)["fanout_delivery_published_total"] > before
    for c in clients.values():
        c.close()


def test_room_broadcast_reaches_members_on_every_server_only():
    async def go():
        rooms = ["lobby"]
        async with websockets.connect(dtest.ws_url(A, "m1", rooms=rooms)) as m1, \
                websockets.connect(dtest.ws_url(B, "m2", rooms=rooms)) as m2, \
                websockets.connect(dtest.ws_url(A, "x1", rooms=rooms)) as x1, \
                websockets.connect(dtest.ws_url(B, "x2", rooms=rooms)) as x2:
            for ws in (m1, m2, x1, x2):
                await ft.skip_welcome(ws)
            for ws in (m1, m2):
                await ws.send(json.dumps({"type": "join", "room": "lobby"}))
                assert json.loads(await ws.recv())["type"] == "joined"
            S.broadcast("lobby", {"b": 1})
            got1 = json.loads(await m1.recv())
            got2 = json.loads(await m2.recv())
            assert got1 == got2, (got1, got2)  # same id and pos for every recipient
            assert got1["room"] == "lobby" and got1["data"] == {"b": 1}
            assert got1["pos"].startswith("r.")
            for ws in (m1, m2, x1, x2):  # nobody gets it twice, non-members never
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await ws.recv()) == {"type": "pong"}
    dtest.run_async(go())


def test_dead_server_entries_are_skipped_and_cleaned():
    # A fake server "Z" that never had a liveness key holds an entry.
    S.redis.cli("HSET", "ws:connections:ghost", "Z-1-1", "Z")
    c = WsClient(B.addr, token=dtest.token("ghost"))
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:ghost") == "2", what="registered")
    S.send("ghost", {"x": 1})
    assert c.recv(timeout=15)["data"] == {"x": 1}
    ft.eventually(lambda: S.redis.cli("HGET", "ws:connections:ghost", "Z-1-1") == "",
                  what="dead entry removed")
    assert S.redis.cli("TTL", "ws:connections:ghost") not in ("-1", "-2")
    c.close()


def script_calls():
    """EVAL + EVALSHA calls Redis served so far."""
    calls = 0
    for line in S.redis.cli("INFO", "commandstats").splitlines():
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            calls += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return calls


def test_batched_routes_survive_a_script_flush():
    """The routes of a loop turn share one script call; when Redis has lost
    the script (SCRIPT FLUSH, a restart) the whole call is sent again with
    EVAL, and every message still arrives once, in order."""
    users = ["batch%d" % i for i in range(12)]
    clients = {u: WsClient(B.addr, token=dtest.token(u)) for u in users}
    ft.eventually(lambda: all(S.redis.cli("HLEN", "ws:connections:" + u) == "1" for u in users),
                  what="registered")
    S.redis.cli("SCRIPT", "FLUSH")
    calls0 = script_calls()
    pub0 = dtest.metrics(A)["fanout_delivery_published_total"]
    n = 12
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"i": i}).encode().hex()) for i in range(n) for u in users])
    for u, c in clients.items():
        got = [c.recv(timeout=15) for _ in range(n)]
        assert [m["data"]["i"] for m in got] == list(range(n)), (u, got)
    # once each: a marker per user (same partition, after the twelve) comes next
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"i": "marker"}).encode().hex()) for u in users])
    for c in clients.values():
        c.expect_next(lambda m: m["data"]["i"] == "marker", "the marker")
    routed = dtest.metrics(A)["fanout_delivery_published_total"] - pub0
    assert routed > 0
    # Fewer script calls than routed messages: they were batched.
    assert script_calls() - calls0 < routed, (script_calls() - calls0, routed)
    for c in clients.values():
        c.close()


def test_liveness_keys():
    assert S.redis.cli("GET", "ws:alive:A") == "A"
    ttl = int(S.redis.cli("PTTL", "ws:alive:B"))
    assert 0 < ttl <= 1500, ttl


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

#!/usr/bin/env python3
"""Redis restarts while clients stay connected (issue 9: "the Pub/Sub hop
is at most once: resume is what covers it"): when a server's Pub/Sub
connection comes back, it replays every connection's user stream from what
that connection was last sent (delivery/stream.c fo__streams_resync), so
clients that never disconnected still get every message sent while Redis
was away, once and in order, and no connection is closed.

Real redis-server (stopped and started on the same port, empty), the
embedded broker, two delivery servers; 16 users on server B, about half of
them in partitions server A consumes (their messages take the Pub/Sub hop)."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient, http_get  # noqa: E402

S = {}
USERS = ["resync-%d" % i for i in range(16)]


def setup_module():
    st = S["stack"] = dtest.Stack(partitions=4)
    S["A"] = st.start("A")
    S["B"] = st.start("B")
    st.wait_group_settled()


def recv_data(c, n, timeout=20):
    out = []
    deadline = time.time() + ft.scaled(timeout)
    while len(out) < n and time.time() < deadline:
        m = c.recv(timeout=max(0.1, deadline - time.time()))
        if m.get("type") == "message":
            out.append(m["data"]["k"])
    return out


def test_pubsub_gap_is_replayed_without_a_reconnect():
    st, B = S["stack"], S["B"]
    clients = {u: WsClient(B.addr, token=dtest.token(u)) for u in USERS}
    for u in USERS:
        st.send(u, {"k": 0})
    for u, c in clients.items():
        assert recv_data(c, 1) == [0], u
    before = dtest.metrics(B).get('fanout_delivery_resyncs_total{result="replayed"}', 0)
    st.redis.stop()
    ft.eventually(lambda: http_get(B.addr, "/readyz")[0] == 503, timeout=10,
                  what="B not ready without Redis")
    for k in range(1, 6):
        for u in USERS:
            st.send(u, {"k": k})
    st.redis.start()
    ft.eventually(lambda: http_get(B.addr, "/readyz")[0] == 200, timeout=30,
                  what="B ready again")
    for k in range(6, 9):
        for u in USERS:
            st.send(u, {"k": k})
    for u, c in clients.items():
        got = recv_data(c, 8, timeout=30)
        assert got == list(range(1, 9)), (u, got)
    m = dtest.metrics(B)
    replayed = m.get('fanout_delivery_resyncs_total{result="replayed"}', 0) - before
    assert replayed > 0, "no user stream was replayed after Pub/Sub came back"
    assert m.get('fanout_delivery_resyncs_total{result="closed"}', 0) == 0
    for u, c in clients.items():  # nothing more, no duplicate, still open
        c.send_json({"type": "ping"})
        assert c.recv(timeout=5) == {"type": "pong"}, u
        c.close()


def test_zz_stop():
    S["stack"].stop()


if __name__ == "__main__":
    ft.run_tests(globals())

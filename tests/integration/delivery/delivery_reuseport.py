"""Several delivery processes on one port (--reuseport, SO_REUSEPORT, the
default): the kernel spreads new connections over them, each holds its own
and registers them under its id, and messages reach every user whichever
process holds it. A process started with --reuseport false on that port is
refused with a clear error (the port is taken)."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient  # noqa: E402

S = dtest.Stack()
PORT = ft.free_port()
LISTEN = "127.0.0.1:%d" % PORT
A = S.start("A", listen=LISTEN)
B = S.start("B", listen=LISTEN)
S.wait_group_settled()


def test_two_processes_share_the_port_and_both_hold_connections():
    assert A.addr == B.addr == LISTEN, (A.addr, B.addr)
    users = ["rp%d" % i for i in range(40)]
    clients = {u: WsClient(LISTEN, token=dtest.token(u)) for u in users}
    ft.eventually(lambda: all(S.redis.cli("HLEN", "ws:connections:" + u) == "1" for u in users),
                  what="every connection registered")
    holder = {u: S.redis.cli("HVALS", "ws:connections:" + u) for u in users}
    counts = {sid: sum(1 for h in holder.values() if h == sid) for sid in ("A", "B")}
    # 40 connections from distinct source ports: both get some (the chance
    # that one gets all 40 is 2 * 2^-40).
    assert counts["A"] > 0 and counts["B"] > 0 and sum(counts.values()) == 40, counts
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"u": u}).encode().hex()) for u in users])
    for u, c in clients.items():
        m = c.recv(timeout=15)
        assert m["user"] == u and m["data"] == {"u": u}, m
    for c in clients.values():
        c.close()


def test_without_reuseport_the_port_is_refused():
    p = subprocess.run([ft.find_binary("fanout-delivery"), "--listen", LISTEN, "--reuseport",
                        "false", "--redis", S.redis.addr, "--kafka", S.kafka.bootstrap,
                        "--jwt-secret", dtest.SECRET, "--server-id", "C"],
                       capture_output=True, text=True, timeout=ft.scaled(20))
    assert p.returncode != 0, p.returncode
    assert "listen %s: EADDRINUSE" % LISTEN in p.stderr, p.stdout + p.stderr


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

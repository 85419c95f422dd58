"""The Redis registry: registrations made in one loop turn are merged into
one HSET per user (64 fields a command) + one EXPIRE; the heartbeat pass
re-registers every local connection of a user, however many, one script call
per chunk of up to 128 users."""

import base64
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402

S = dtest.Stack()
A = S.start("A")                                   # heartbeat pass every 60 s
B = S.start("B", "--registry-refresh-ms", "300")   # ... every 300 ms
S.wait_group_settled()


def cmdstat(name):
    """Calls of one command since CONFIG RESETSTAT."""
    for line in S.redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_%s:" % name):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def open_many(pr, users, stopped):
    """Opens one WebSocket per entry of users; with stopped, every upgrade
    request is written while the server is SIGSTOPped, so it reads them all
    in one loop turn."""
    host, _, port = pr.addr.rpartition(":")
    # +1: the /metrics request itself is a connection
    want = dtest.metrics(pr)["fanout_delivery_accepted_total"] + 1 + len(users)
    socks = []
    for _ in users:
        s = socket.create_connection((host, int(port)), timeout=ft.scaled(10))
        socks.append(s)
    ft.eventually(lambda: dtest.metrics(pr)["fanout_delivery_accepted_total"] >= want,
                  what="accepted")
    if stopped:
        pr.signal(signal.SIGSTOP)
    try:
        for s, u in zip(socks, users):
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n" % (dtest.token(u), key)).encode())
    finally:
        if stopped:
            pr.signal(signal.SIGCONT)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, "closed during the upgrade"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return socks


def test_registrations_of_one_turn_are_merged_per_user():
    # 70 connections of one user and 10 of others, all upgraded in one turn.
    users = ["many"] * 70 + ["few%d" % (i % 5) for i in range(10)]
    S.redis.cli("CONFIG", "RESETSTAT")
    socks = open_many(A, users, stopped=True)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:many") == "70",
                  what="70 entries for many")
    for i in range(5):
        assert S.redis.cli("HLEN", "ws:connections:few%d" % i) == "2"
        assert 0 < int(S.redis.cli("TTL", "ws:connections:few%d" % i)) <= 300
    assert 0 < int(S.redis.cli("TTL", "ws:connections:many")) <= 300
    # One HSET per 64 fields per user (2 for "many", 1 for each "few") and
    # one EXPIRE per user, not one of each per connection (80 + 80).
    hset, expire = cmdstat("hset"), cmdstat("expire")
    ft.log("hset=%d expire=%d for %d connections" % (hset, expire, len(users)))
    assert 7 <= hset <= 10, hset
    assert 6 <= expire <= 10, expire
    for s in socks:
        s.close()
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:many") == "0",
                  what="entries removed on close")


def test_heartbeat_pass_reregisters_more_than_64_connections_of_a_user():
    socks = open_many(B, ["crowd"] * 100, stopped=False)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:crowd") == "100",
                  what="100 entries")
    # Lost entries (e.g. a Redis failover) come back with the next pass, all of them.
    S.redis.cli("DEL", "ws:connections:crowd")
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:crowd") == "100", timeout=10,
                  what="all 100 entries back after a heartbeat pass")
    assert 0 < int(S.redis.cli("TTL", "ws:connections:crowd")) <= 300
    for s in socks:
        s.close()
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:crowd") == "0",
                  what="entries removed on close")


def test_heartbeat_pass_is_one_script_call_per_chunk():
    """The pass refreshes every user's HSET + EXPIRE, batched: one EVAL per
    chunk of up to 128 users, not two commands per user."""
    n = 130  # two EVALs a pass
    users = ["pass%d" % i for i in range(n)] + ["pass0"] * 2
    socks = open_many(B, users, stopped=False)
    ft.eventually(lambda: all(S.redis.cli("HLEN", "ws:connections:pass%d" % i) ==
                              ("3" if i == 0 else "1") for i in range(n)), what="registered")
    for i in range(n):  # what the pass must renew (and the entry it must restore)
        S.redis.cli("EXPIRE", "ws:connections:pass%d" % i, "100")
    S.redis.cli("HDEL", "ws:connections:pass0", S.redis.cli("HKEYS", "ws:connections:pass0")
                .split()[0])
    S.redis.cli("CONFIG", "RESETSTAT")
    ft.eventually(lambda: all(int(S.redis.cli("TTL", "ws:connections:pass%d" % i)) > 100
                              for i in range(n)), timeout=10, what="every TTL renewed")
    assert S.redis.cli("HLEN", "ws:connections:pass0") == "3"
    evals, hset, expire = cmdstat("eval"), cmdstat("hset"), cmdstat("expire")
    ft.log("pass: %d EVAL, %d HSET, %d EXPIRE for %d users" % (evals, hset, expire, n))
    assert hset >= n + 2 and expire >= n  # run by the script
    # Two a pass (every 300 ms); commands per user would be hundreds.
    assert 2 <= evals <= 30, evals
    for s in socks:
        s.close()
    ft.eventually(lambda: S.redis.cli("EXISTS", "ws:connections:pass1") == "0",
                  what="entries removed on close")


def test_lapsed_liveness_key_reregisters_at_once():
    """A server stalled past its liveness TTL finds its entries removed by
    routing servers (as a dead server's); when it runs again it notices the
    key had expired and re-registers at once, not at the next pass (60 s)."""
    socks = open_many(A, ["lapse"], stopped=False)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:lapse") == "1", what="registered")
    A.signal(signal.SIGSTOP)
    try:
        ft.eventually(lambda: S.redis.cli("EXISTS", "ws:alive:A") == "0", timeout=5,
                      what="liveness key expired")
        S.redis.cli("DEL", "ws:connections:lapse")  # what a routing server's cleanup does
    finally:
        A.signal(signal.SIGCONT)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:lapse") == "1", timeout=5,
                  what="re-registered after the lapse")
    assert S.redis.cli("EXISTS", "ws:alive:A") == "1"
    for s in socks:
        s.close()


def test_refused_registration_is_retried_soon():
    """An HSET that Redis refuses (here: out of memory, maxmemory 1 with
    noeviction) is counted and retried within about a second, not lost
    until the next heartbeat pass (60 s on A)."""
    errors0 = dtest.metrics(A)["fanout_delivery_redis_errors_total"]
    policy = S.redis.cli("CONFIG", "GET", "maxmemory-policy").split()[-1]
    S.redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    S.redis.cli("CONFIG", "SET", "maxmemory", "1")
    try:
        socks = open_many(A, ["refused"], stopped=False)
        ft.eventually(lambda: dtest.metrics(A)["fanout_delivery_redis_errors_total"] > errors0,
                      timeout=10, what="the refused HSET counted")
        assert S.redis.cli("HLEN", "ws:connections:refused") == "0"
    finally:
        S.redis.cli("CONFIG", "SET", "maxmemory", "0")
        S.redis.cli("CONFIG", "SET", "maxmemory-policy", policy)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:refused") == "1", timeout=10,
                  what="registered after Redis took writes again")
    assert 0 < int(S.redis.cli("TTL", "ws:connections:refused")) <= 300
    for s in socks:
        s.close()
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:refused") == "0",
                  what="entry removed on close")


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

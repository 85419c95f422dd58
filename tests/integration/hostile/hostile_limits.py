#!/usr/bin/env python3
"""The limits a valid token or a bare TCP client runs into (security review
M1, M4, L2, L3, L8), against real delivery servers:

  one user past --max-connections-per-user    -> HTTP 429 + Retry-After; other
                                                 users unaffected; a slot
                                                 freed by a close is usable
  a token that expires on an open connection  -> close 4001 "token expired"
                                                 within a few seconds of exp
  a token living longer than
  --max-token-lifetime-s                       -> HTTP 401 before the upgrade
  401 bodies                                   -> "token expired" for a genuine
                                                 expired token, else "invalid
                                                 token" (no oracle)
  TCP connections past --max-pending-handshakes -> closed at once; those under
                                                 the cap wait for the handshake
                                                 timeout; a good client connects
                                                 once they are gone; WebSockets
                                                 being closed do not count
  a 64-byte --server-id                        -> full, distinct connection ids
                                                 in the Redis registry
  a 65-byte --server-id, a 31-byte jwt-secret  -> exit 2 with one line naming it
and at the end the servers still shut down cleanly (exit 0: no leak under
ASan)."""

import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as hl  # noqa: E402
from hostile_lib import ft, frame  # noqa: E402

PER_USER = 3
LIFETIME_S = 3600
PENDING = 5
HANDSHAKE_MS = 5000
CLOSE_MS = 20000  # d2 waits this long for a client's close frame after ours
SID64 = "s" * 60 + "-d64"  # 64 bytes

S = {}


def m(pr, name):
    return hl.metrics(pr).get("fanout_delivery_" + name, 0)


def ws(pr, sub, **kw):
    c = hl.RawWs(pr.addr, hl.token(sub, **kw))
    assert c.status == 101, (sub, c.status, c.body)
    return c


def close_ok(c):
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)


def setup_module():
    """The stack the tests share (not a test: ft.run_tests runs it first)."""
    st = S["stack"] = hl.Stack(partitions=2)
    S["d1"] = st.delivery(SID64, "--max-connections-per-user", str(PER_USER),
                          "--max-token-lifetime-s", str(LIFETIME_S))
    S["d2"] = st.delivery("pending", "--max-pending-handshakes", str(PENDING),
                          "--handshake-timeout-ms", str(HANDSHAKE_MS),
                          "--close-timeout-ms", str(CLOSE_MS))


def test_per_user_connection_cap():
    d1 = S["d1"]
    before = m(d1, "rejected_user_limit_total")
    tabs = [ws(d1, "tabs") for _ in range(PER_USER)]
    c = hl.RawWs(d1.addr, hl.token("tabs"))
    assert c.status == 429, (c.status, c.body)
    assert b'"too many connections for this user"' in c.body, c.body
    assert "retry-after" in c.headers, c.headers
    assert hl.wait_closed(c.sock, 5), "connection kept open after 429"
    c.close()
    assert m(d1, "rejected_user_limit_total") - before == 1
    # Another user is not affected.
    other = ws(d1, "someone-else")
    # The refused upgrade registered nothing: the three are still served.
    for t in tabs:
        t.send_text({"type": "ping"})
        assert t.recv_json() == {"type": "pong"}
    keys = S["stack"].redis.cli("HKEYS", "ws:connections:tabs").split()
    assert len(keys) == PER_USER, keys
    # Closing one frees a slot.
    close_ok(tabs.pop())

    def reconnect():
        cc = hl.RawWs(d1.addr, hl.token("tabs"))
        if cc.status == 101:
            tabs.append(cc)
            return True
        cc.close()
        return False
    ft.eventually(reconnect, timeout=5, what="a new connection after one closed")
    for t in tabs + [other]:
        close_ok(t)


def test_token_expiry_closes_open_connection():
    d1 = S["d1"]
    before = m(d1, "token_expired_closes_total")
    exp = int(time.time()) + 2
    short = hl.RawWs(d1.addr, hl.token("shortlived", exp_in=exp - int(time.time())))
    assert short.status == 101, (short.status, short.body)
    longer = ws(d1, "longlived")
    reason = short.expect_close(4001, timeout=exp - time.time() + 4)
    closed_at = time.time()
    assert reason == b"token expired", reason
    assert closed_at >= exp - 0.01, "closed %.2fs before exp" % (exp - closed_at)
    assert closed_at <= exp + ft.scaled(3), "closed %.2fs after exp" % (closed_at - exp)
    ft.eventually(lambda: m(d1, "token_expired_closes_total") - before == 1, timeout=5,
                  what="token_expired_closes_total")
    # Unregistered, while the other connection stays open.
    ft.eventually(lambda: S["stack"].redis.cli("EXISTS", "ws:connections:shortlived").strip()
                  == "0", timeout=5, what="registry entry of the expired connection removed")
    longer.send_text({"type": "ping"})
    assert longer.recv_json() == {"type": "pong"}
    close_ok(longer)


def test_token_lifetime_limit_and_401_bodies():
    d1 = S["d1"]
    now = int(time.time())
    hs = {"alg": "HS256", "typ": "JWT"}
    year = 365 * 86400
    refused = [
        ("a year, no iat", hl.jwt_raw(hs, {"sub": "life", "exp": now + year})),
        ("a year from iat", hl.jwt_raw(hs, {"sub": "life", "iat": now, "exp": now + year})),
        ("iat in the future", hl.jwt_raw(hs, {"sub": "life", "iat": now + year - 60,
                                              "exp": now + year})),
    ]
    for name, tok in refused:
        c = hl.RawWs(d1.addr, tok)
        assert c.status == 401, (name, c.status, c.body)
        assert c.body == b'{"error":"invalid token"}', (name, c.body)
        c.close()
    for tok in (hl.jwt_raw(hs, {"sub": "life", "exp": now + 600}),
                hl.jwt_raw(hs, {"sub": "life", "iat": now, "exp": now + 600})):
        c = hl.RawWs(d1.addr, tok)
        assert c.status == 101, (c.status, c.body)
        close_ok(c)
    # A genuine expired token is told so; a forged one (even expired) is not.
    c = hl.RawWs(d1.addr, hl.token("late", exp_in=-5))
    assert (c.status, c.body) == (401, b'{"error":"token expired"}'), (c.status, c.body)
    c.close()
    c = hl.RawWs(d1.addr, hl.jwt_raw(hs, {"sub": "late", "exp": now - 5}, secret="x" * 40))
    assert (c.status, c.body) == (401, b'{"error":"invalid token"}'), (c.status, c.body)
    c.close()
    # Duplicate claims: refused.
    dup = (ft.b64url(b'{"alg":"HS256"}') + "." +
           ft.b64url(('{"sub":"a","exp":%d,"sub":"admin"}' % (now + 600)).encode()))
    import hashlib
    import hmac
    sig = hmac.new(hl.SECRET.encode(), dup.encode(), hashlib.sha256).digest()
    c = hl.RawWs(d1.addr, dup + "." + ft.b64url(sig))
    assert c.status == 401, (c.status, c.body)
    c.close()


def test_pending_handshake_cap():
    d2 = S["d2"]
    before = m(d2, "rejected_pending_total")
    # The kernel's accept queue is FIFO: the server takes these in order, so
    # the sixth is the one over the cap however the loop batches accepts.
    idle = []
    t_open = time.time()
    for _ in range(PENDING):
        idle.append(hl.connect(d2.addr))
    extra = hl.connect(d2.addr)
    t0 = time.time()
    assert hl.wait_closed(extra, 1.0), "connection over the cap kept open"
    assert time.time() - t0 < ft.scaled(1.0)
    extra.close()
    # The first ones are kept (a bounded wait of 0.3 s each, not a sleep).
    for s in idle:
        assert not hl.wait_closed(s, 0.3), "connection under the cap closed early"
    # ... until the handshake timeout.
    for s in idle:
        assert hl.wait_closed(s, HANDSHAKE_MS / 1000 * 3 + 2), "idle connection never closed"
        s.close()
    assert time.time() - t_open >= HANDSHAKE_MS / 1000 * 0.8

    good = []

    def connect_good():
        try:
            c = hl.RawWs(d2.addr, hl.token("after-flood"))
        except (EOFError, ConnectionResetError, AssertionError):
            return False
        if c.status != 101:
            c.close()
            return False
        good.append(c)
        return True
    ft.eventually(connect_good, timeout=5, what="a good client after the flood")
    close_ok(good[0])
    ft.eventually(lambda: m(d2, "rejected_pending_total") - before >= 1, timeout=5,
                  what="rejected_pending_total")


def test_closing_websockets_do_not_count_as_pending():
    """After a mass disconnect the server holds many sockets in the close
    handshake; they are authenticated clients leaving, not handshakes, and
    must not lock new clients out (they did when the cap counted every
    socket that was not an open WebSocket)."""
    d2 = S["d2"]
    n = PENDING + 3
    before_exp = m(d2, "token_expired_closes_total")
    before_rej = m(d2, "rejected_pending_total")
    exp_in = 2
    leaving = [ws(d2, "leaving-%d" % i, exp_in=exp_in) for i in range(n)]
    # The server closes each with 4001 and waits --close-timeout-ms for the
    # client's close frame, which these clients never send.
    ft.eventually(lambda: m(d2, "token_expired_closes_total") - before_exp >= n,
                  timeout=exp_in + 10, what="the 4001 closes")
    c = hl.RawWs(d2.addr, hl.token("arriving"))
    assert c.status == 101, (c.status, c.body)
    assert m(d2, "rejected_pending_total") == before_rej
    close_ok(c)
    for s in leaving:
        assert s.expect_close(4001, timeout=5) == b"token expired"


def test_long_server_id_gives_full_distinct_ids():
    d1 = S["d1"]
    a, b = ws(d1, "ids"), ws(d1, "ids")
    keys = S["stack"].redis.cli("HKEYS", "ws:connections:ids").split()
    assert len(set(keys)) == 2, keys
    for k in keys:
        # <server-id>-<start ms hex>-<conn id hex>: nothing cut
        sid, start, cid = k.rsplit("-", 2)
        assert sid == SID64, k
        int(start, 16), int(cid, 16)
    close_ok(a)
    close_ok(b)


def bad_config(*args):
    st = S["stack"]
    argv = [ft.find_binary("fanout-delivery"), "--listen", "127.0.0.1:0", "--redis",
            st.redis.addr, "--kafka", st.kafka.bootstrap, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=ft.scaled(20), env=env)
    return r.returncode, r.stderr


def test_bad_server_id_and_secret_exit_2():
    rc, err = bad_config("--jwt-secret", hl.SECRET, "--server-id", "x" * 65)
    assert rc == 2, (rc, err)
    assert "server-id" in err and len(err.strip().splitlines()) == 1, err
    rc, err = bad_config("--jwt-secret", "y" * 31, "--server-id", "ok")
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "jwt-secret" in lines[0] and "y" * 31 not in err, err


def test_clean_shutdown():
    hl.stop_cleanly(S)


def teardown_module():
    hl.teardown(S)


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

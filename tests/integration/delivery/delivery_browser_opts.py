"""The two opt-ins a browser needs (schemas/client-protocol.md, "Browser
options"): heartbeat=1 (text {"type":"ping"} frames instead of protocol
pings, answered by {"type":"pong"}) and auth=close (a refused token completes
the upgrade and closes with 4001/4003 instead of an HTTP 401). One real
fanout-delivery with short heartbeats, real Redis, the embedded Kafka."""

import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import Closed, HttpError, WsClient  # noqa: E402

PING_MS, PONG_MS = 400, 400
S = dtest.Stack()
P = S.start("P", "--ping-interval-ms", str(PING_MS), "--pong-timeout-ms", str(PONG_MS),
            "--max-connections-per-user", "2", "--max-pending-handshakes", "3")
S.wait_group_settled()


def frames_until(c, n_text_pings, timeout=10.0, answer=True):
    """Reads raw frames until n text pings came; returns (text pings, protocol
    pings, other text messages). Answers each text ping with a text pong."""
    deadline = time.time() + ft.scaled(timeout)
    text_pings, proto_pings, other = 0, 0, []
    while text_pings < n_text_pings:
        left = deadline - time.time()
        assert left > 0, "only %d text pings in time" % text_pings
        c.sock.settimeout(left)
        op, fin, payload = c.recv_frame()
        if op == 0x9:
            proto_pings += 1
        elif op == 0x1:
            m = json.loads(payload)
            if m.get("type") == "welcome" and getattr(c, "welcome", None) is None:
                c.welcome = m  # read here, not by c.recv(): it is not returned again
            if m == {"type": "ping"}:
                text_pings += 1
                if answer:
                    c.send_json({"type": "pong"})
            else:
                other.append(m)
        elif op == 0x8:
            raise Closed(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None)
    return text_pings, proto_pings, other


def test_heartbeat_text_pings_answered_keep_the_connection():
    c = WsClient(P.addr, path="/ws?token=%s&heartbeat=1" % dtest.token("hb1"))
    t0 = time.time()
    # 4 pings take more than ping + pong timeout twice over: the text pongs count.
    texts, protos, other = frames_until(c, 4)
    assert texts == 4 and protos == 0, (texts, protos)
    assert time.time() - t0 >= 3 * PING_MS / 1000.0 * 0.9
    # the welcome frame (the first) announces the interval
    assert other and other[0].get("type") == "welcome", other
    assert other[0].get("ping_ms") == PING_MS, other[0]
    assert S.redis.cli("HLEN", "ws:connections:hb1") == "1"
    # the connection still works for everything else
    c.send_json({"type": "ping"})
    while True:
        m = c.recv()
        if m == {"type": "pong"}:
            break
        assert m.get("type") in ("ping", "welcome"), m
        if m == {"type": "ping"}:
            c.send_json({"type": "pong"})
    c.close()


def test_heartbeat_unanswered_closes_and_cleans_registry():
    before = dtest.metrics(P).get("fanout_delivery_ping_timeouts_total", 0)
    c = WsClient(P.addr, path="/ws?token=%s&heartbeat=1" % dtest.token("hb2"))
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:hb2") == "1", what="registered")
    t0 = time.time()
    try:
        frames_until(c, 5, answer=False)
        raise AssertionError("still open after 5 unanswered pings")
    except (Closed, ConnectionResetError, OSError):
        pass
    # nothing answered: closed within ping + pong (+ the sweep's tick)
    assert time.time() - t0 < ft.scaled((PING_MS + PONG_MS) / 1000.0 + 1.5)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:hb2") == "0",
                  what="registry entry removed")
    assert dtest.metrics(P).get("fanout_delivery_ping_timeouts_total", 0) >= before + 1


def test_without_heartbeat_protocol_pings_as_before():
    c = WsClient(P.addr, token=dtest.token("hb3"), auto_pong=False)
    c.sock.settimeout(ft.scaled(5))
    texts = []
    while True:
        op, _, payload = c.recv_frame()
        if op == 0x9:
            break
        assert op == 0x1 and b'"ping"' not in payload, (op, payload)
        texts.append(json.loads(payload))
    # its welcome announces no app-level heartbeat
    assert texts and texts[0].get("type") == "welcome" and "ping_ms" not in texts[0], texts
    c.send_frame(0xA)
    c.close()


def test_bad_option_values_are_400():
    for q in ("heartbeat=2", "heartbeat=yes", "auth=maybe", "auth="):
        try:
            WsClient(P.addr, path="/ws?token=%s&%s" % (dtest.token("x"), q))
        except HttpError as e:
            assert e.status == 400, (q, e)
            assert b"heartbeat must be 0 or 1" in e.body or b"auth must be http or close" in e.body
            continue
        raise AssertionError("%s was accepted" % q)
    # the explicit defaults are fine
    c = WsClient(P.addr, path="/ws?token=%s&heartbeat=0&auth=http" % dtest.token("x"))
    c.close()


def refused_code(path):
    """Upgrades with path; expects the 101 and then a close frame; returns
    (code, reason, eof_after)."""
    c = WsClient(P.addr, path=path)
    c.sock.settimeout(ft.scaled(5))
    op, _, payload = c.recv_frame()
    assert op == 0x8, "expected a close frame, got op %d %r" % (op, payload)
    code = struct.unpack("!H", payload[:2])[0]
    try:
        eof = c.sock.recv(10) == b""
    except ConnectionResetError:
        eof = True
    return code, payload[2:].decode(), eof


def test_auth_close_refusals_are_4003_and_4001_and_register_nothing():
    m0 = dtest.metrics(P)
    code, reason, eof = refused_code("/ws?token=not-a-jwt&auth=close")
    assert (code, reason, eof) == (4003, "invalid token", True)
    code, reason, _ = refused_code("/ws?auth=close")  # no token at all
    assert (code, reason) == (4003, "invalid token")
    forged = ft.make_jwt("another-secret-0123456789abcdef0123", "mallory")
    assert refused_code("/ws?auth=close&token=" + forged)[:2] == (4003, "invalid token")
    expired = dtest.token("mallory", exp_in=-10)
    code, reason, eof = refused_code("/ws?auth=close&heartbeat=1&token=" + expired)
    assert (code, reason, eof) == (4001, "token expired", True)
    # the token in the header, the option in the query
    c = WsClient(P.addr, path="/ws?auth=close", headers={"Authorization": "Bearer " + expired})
    c.sock.settimeout(ft.scaled(5))
    op, _, payload = c.recv_frame()
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 4001
    m1 = dtest.metrics(P)
    assert m1["fanout_delivery_auth_failures_total"] == m0["fanout_delivery_auth_failures_total"] + 5
    # (<=: a connection of the test before may still be closing)
    assert m1.get("fanout_delivery_connections", 0) <= m0.get("fanout_delivery_connections", 0)
    assert S.redis.cli("KEYS", "ws:connections:mallory") == ""
    # without the opt-in: the HTTP 401 as before
    try:
        WsClient(P.addr, path="/ws?token=" + expired)
        raise AssertionError("accepted")
    except HttpError as e:
        assert e.status == 401 and b"token expired" in e.body
    # a good token with auth=close is an ordinary connection
    c = WsClient(P.addr, path="/ws?auth=close&token=" + dtest.token("ok"))
    c.send_json({"type": "ping"})
    m = c.recv()
    assert m == {"type": "pong"}, m
    c.close()


def test_auth_close_keeps_the_limits():
    # the per-user cap (2 here) is still an HTTP 429
    held = [WsClient(P.addr, path="/ws?auth=close&token=" + dtest.token("capped")) for _ in range(2)]
    try:
        WsClient(P.addr, path="/ws?auth=close&token=" + dtest.token("capped"))
        raise AssertionError("third connection of the user accepted")
    except HttpError as e:
        assert e.status == 429, e
    for c in held:
        c.close()
    # refusals go through the pending-handshake cap (3 here) like any request:
    # with 3 idle sockets pending, another connection is closed at accept
    before = dtest.metrics(P).get("fanout_delivery_rejected_pending_total", 0)
    idle = [socket.create_connection((P.host, P.port)) for _ in range(3)]
    try:
        ft.eventually(pending_full, what="three handshakes pending")
        try:
            c = WsClient(P.addr, path="/ws?auth=close&token=bad")
            raise AssertionError("refusal completed past the pending cap: %r" % c)
        except HttpError as e:
            assert e.status == 0, e  # closed without an answer
        except OSError:
            pass
    finally:
        for s in idle:
            s.close()
    ft.eventually(lambda: rejected_pending() >= before + 2,
                  what="the probe and the refusal counted as rejected_pending")


def rejected_pending():
    # Until the server has seen the idle sockets close, /metrics itself is
    # refused at accept (slow under ASan): a refused read counts as "not yet".
    try:
        return dtest.metrics(P)["fanout_delivery_rejected_pending_total"]
    except OSError:
        return -1


def pending_full():
    # /metrics itself is a pending connection while it is answered: with 3
    # idle sockets held, the metrics request is the 4th and refused, so
    # "full" is seen as a refused probe.
    try:
        s = socket.create_connection((P.host, P.port))
        s.settimeout(ft.scaled(2))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(100)
        s.close()
        return got == b""
    except OSError:
        return True


def teardown_module():
    S.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

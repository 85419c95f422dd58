"""One delivery server against real Redis and the embedded Kafka: handshake
and authentication, the RFC 6455 rules, the client protocol, heartbeats,
undecodable records, payload encodings."""

import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
import websockets  # noqa: E402
from wsclient import Closed, HttpError, WsClient, http_get  # noqa: E402

S = dtest.Stack()
A = S.start("A", "--handshake-timeout-ms", "500", "--max-connections", "50",
            "--origins", "https://good.example")
# Short heartbeats on a second server (a blocking test client would miss them elsewhere).
P = S.start("P", "--ping-interval-ms", "400", "--pong-timeout-ms", "400")
S.wait_group_settled()


def expect_401(path=None, headers=None, tok=None):
    try:
        WsClient(A.addr, token=tok, path=path, headers=headers)
    except HttpError as e:
        assert e.status == 401, e
        return
    raise AssertionError("upgrade was accepted")


def test_bad_tokens_get_401_and_nothing_registered():
    now = int(time.time())
    expect_401()                                                   # no token
    expect_401(tok="not-a-jwt")
    expect_401(tok=ft.make_jwt("wrong-secret", "mallory"))          # bad signature
    expect_401(tok=dtest.token("mallory", exp_in=-10))             # expired
    expect_401(tok=dtest.token("mallory", alg="none"))             # alg none
    expect_401(tok=ft.make_jwt(dtest.SECRET, "mallory", header={"alg": "HS512", "typ": "JWT"}))
    expect_401(tok=ft.make_jwt(dtest.SECRET, "", extra={}))         # empty sub
    expect_401(tok=ft.make_jwt(dtest.SECRET, "m", extra={"exp": "soon"}))
    expect_401(tok=ft.make_jwt(dtest.SECRET, "m", extra={"nbf": now + 3600}))
    expect_401(headers={"Authorization": "Bearer " + ft.make_jwt("nope", "mallory")})
    assert S.redis.cli("KEYS", "ws:connections:*") == ""
    # A good one in the Authorization header works.
    c = WsClient(A.addr, path="/ws", headers={"Authorization": "Bearer " + dtest.token("bob")})
    c.send_json({"type": "ping"})
    assert c.recv() == {"type": "pong"}
    c.close()


def test_health_ready_metrics():
    st, _, body = http_get(A.addr, "/healthz")
    assert st == 200
    st, _, body = http_get(A.addr, "/readyz")
    assert st == 200, body
    st, hdrs, body = http_get(A.addr, "/metrics")
    assert st == 200 and b"fanout_delivery_connections" in body
    assert hdrs["content-type"].startswith("text/plain")
    st, _, _ = http_get(A.addr, "/nope")
    assert st == 404


def test_origin_allow_list():
    try:
        WsClient(A.addr, token=dtest.token("o"), headers={"Origin": "https://evil.example"})
        raise AssertionError("accepted a bad origin")
    except HttpError as e:
        assert e.status == 403
    c = WsClient(A.addr, token=dtest.token("o"), headers={"Origin": "https://good.example"})
    c.close()


def test_websockets_client_ping_join_forbidden():
    async def go():
        url = dtest.ws_url(A, "carol", rooms=["lobby", "news.*"])
        async with websockets.connect(url) as ws:
            await ft.skip_welcome(ws)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}
            await ws.send(json.dumps({"type": "join", "room": "lobby"}))
            assert ft.joined_reply(json.loads(await ws.recv())) == {"type": "joined", "room": "lobby"}
            await ws.send(json.dumps({"type": "join", "room": "news.sport"}))
            assert ft.joined_reply(json.loads(await ws.recv())) == {"type": "joined", "room": "news.sport"}
            await ws.send(json.dumps({"type": "join", "room": "secret"}))
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "forbidden", err
            await ws.send(json.dumps({"type": "leave", "room": "lobby"}))
            assert json.loads(await ws.recv()) == {"type": "left", "room": "lobby"}
            # The connection stays usable after the refusal.
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}
            await ws.send("not json")
            assert json.loads(await ws.recv())["code"] == "bad_request"
    dtest.run_async(go())


def test_user_message_and_encodings():
    c = WsClient(A.addr, token=dtest.token("dave"))
    S.send("dave", {"n": 1})
    S.send("dave", b"plain text", ct="text/plain")
    S.send("dave", b"\xff\xfe\x00binary", ct="application/octet-stream")
    S.send("dave", b"{not json", ct="application/json")
    got = [c.recv(timeout=10) for _ in range(4)]
    for m in got:
        assert m["type"] == "message" and m["user"] == "dave" and m["id"], m
        assert m["pos"].startswith("u."), m
    assert got[0]["data"] == {"n": 1}
    assert got[1]["data"] == "plain text"
    assert got[2]["encoding"] == "base64" and got[2]["data"] == "//4AYmluYXJ5"
    assert got[3]["data"] == "{not json"
    # Kafka order per user: positions increase.
    offs = [int(m["pos"].split(".")[3]) for m in got]  # the test knows the format
    assert offs == sorted(offs), offs
    c.close()


def test_undecodable_records_are_skipped():
    before = dtest.metrics(A).get("fanout_delivery_decode_errors_total", 0)
    c = WsClient(A.addr, token=dtest.token("erin"))
    S.produce(["fanout.users raw erin x %s\n" % b"\x93garbage".hex(),
               "fanout.users send erin application/json %s\n" % b'"after"'.hex()])
    m = c.recv(timeout=10)
    assert m["data"] == "after", m
    ft.eventually(lambda: dtest.metrics(A)["fanout_delivery_decode_errors_total"] > before,
                  what="decode error counted")
    assert A.alive()
    c.close()


def test_rfc6455_rules():
    tok = dtest.token("frank", rooms=["r1"])
    # unmasked client frame -> 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x1, b'{"type":"ping"}', mask=False)
    assert c.expect_close() == 1002
    # frame over --max-frame-bytes (default 65536) -> 1009, refused from the header alone
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x1, b"x" * 70000)
    assert c.expect_close() == 1009
    # invalid UTF-8 in a text message -> 1007
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x1, b'{"type":"\xc3\x28"}')
    assert c.expect_close() == 1007
    # reserved bits, reserved opcode -> 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x1, b"{}", rsv=4)
    assert c.expect_close() == 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x3, b"{}")
    assert c.expect_close() == 1002
    # fragmented control frame, control frame over 125 bytes -> 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x9, b"x", fin=False)
    assert c.expect_close() == 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x9, b"x" * 126)
    assert c.expect_close() == 1002
    # continuation without a start -> 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x0, b"x")
    assert c.expect_close() == 1002
    # fragmented message with a ping in the middle works
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x1, b'{"type":"jo', fin=False)
    c.send_frame(0x9, b"hello")
    c.send_frame(0x0, b'in","room":', fin=False)
    c.send_frame(0x0, b'"r1"}', fin=True)
    op, _, pl = c.recv_frame()
    c.welcome = json.loads(pl)
    assert op == 0x1 and c.welcome["type"] == "welcome"
    op, _, pl = c.recv_frame()
    assert op == 0xA and pl == b"hello"
    assert ft.joined_reply(c.recv()) == {"type": "joined", "room": "r1"}
    # the close handshake echoes the code
    c.close(3001)
    assert c.expect_close() == 3001
    # a bad close code -> 1002
    c = WsClient(A.addr, token=tok)
    c.send_frame(0x8, struct.pack("!H", 1005))
    assert c.expect_close() == 1002


def test_missing_pong_closes_and_cleans_registry():
    c = WsClient(P.addr, token=dtest.token("gina"), auto_pong=False)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:gina") == "1", what="registered")
    t0 = time.time()
    code = c.expect_close(timeout=5)
    assert code in (None, 1006) or code is None
    assert c.pings >= 1
    assert time.time() - t0 < ft.scaled(3)
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:gina") == "0",
                  what="registry entry removed")
    # A client that answers pings stays.
    # Three pings: the pong deadline of the first one (800 ms) has passed,
    # and a close would have come before the third ping.
    ok = WsClient(P.addr, token=dtest.token("gina"))
    ok.wait_pings(3)
    assert ok.pings >= 2
    ok.close()


def test_handshake_timeout_drops_idle_sockets():
    s = socket.create_connection((A.host, A.port))
    s.settimeout(ft.scaled(5))
    t0 = time.time()
    assert s.recv(10) == b""
    assert time.time() - t0 < ft.scaled(3)


def test_max_connections_503():
    conns = []
    refused = False
    try:
        for i in range(60):
            try:
                conns.append(WsClient(A.addr, token=dtest.token("u%d" % i)))
            except HttpError as e:
                assert e.status == 503, e
                refused = True
                break
        assert refused, "never refused"
        assert dtest.metrics(A)["fanout_delivery_connections"] == 50
    finally:
        for c in conns:
            c.abort()


def test_listen_on_a_host_name():
    # --listen takes a name (resolved like ingest's), not only a numeric address.
    L = S.start("L", listen="localhost:0")
    try:
        assert L.port > 0 and L.host.strip("[]") in ("127.0.0.1", "::1"), L.addr
        c = WsClient("localhost:%d" % L.port, token=dtest.token("lena"))
        c.send_json({"type": "ping"})
        assert c.recv() == {"type": "pong"}
        c.close()
    finally:
        L.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

#!/usr/bin/env python3
"""Hostile clients against one fanout-delivery server, each answered the way
RFC 6455 and DESIGN.md say, while a well-behaved client on the same server
keeps receiving, in order, every message accepted through ingest:

  bad tokens (forged, tampered, expired, alg none/HS512/RS256, wrong key,
  missing or bad claims)                      -> HTTP 401 before the upgrade,
                                                 nothing registered
  oversized frames and messages               -> close 1009
  invalid UTF-8 (text, across fragments, close reason) -> close 1007
  unmasked frames, fragmented or >125-byte control frames, reserved bits,
  unknown opcodes, bad continuations, bad close codes, non-minimal lengths
                                              -> close 1002
  bad JSON messages                           -> {"type":"error"}, stays open
  malformed HTTP                              -> 400/404/405/426/431/505
  slowloris handshakes, idle connection floods -> dropped after the
                                                 handshake timeout
  upgrades past --max-connections             -> HTTP 503 before the upgrade
and at the end the server still shuts down cleanly (exit 0, which under
ASan also means no leak)."""

import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as hl  # noqa: E402
from hostile_lib import ft, frame  # noqa: E402

HANDSHAKE_MS = 1000
MAX_FRAME = 4096
MAX_MESSAGE = 16384
MAX_CONN = 30

S = {}  # the stack, shared by the tests below (run in order)


def delivery():
    return S["d1"]


def m(name):
    return hl.metrics(delivery()).get("fanout_delivery_" + name, 0)


def ws(**kw):
    c = hl.RawWs(delivery().addr, hl.token(kw.pop("sub", "alice"), **kw))
    assert c.status == 101, (c.status, c.body)
    c.read_welcome()
    return c


def bystander_alive():
    """The bystander got a message sent after this call."""
    b = S["by"]
    n = len(b.accepted)
    ft.eventually(lambda: len(b.accepted) > n + 1, timeout=10, what="ingest accepting")
    want = b.accepted[-1]
    b.wait_for(lambda msg: msg.get("data", {}).get("seq") == want, timeout=10,
               what="seq %d" % want)
    delivery_ok()


def delivery_ok():
    S["stack"].check_alive()


def setup_module():
    """The stack the tests share (not a test: ft.run_tests runs it first)."""
    st = S["stack"] = hl.Stack(partitions=4)
    S["d1"] = st.delivery("h1", "--handshake-timeout-ms", str(HANDSHAKE_MS),
                          "--max-frame-bytes", str(MAX_FRAME),
                          "--max-message-bytes", str(MAX_MESSAGE),
                          "--max-connections", str(MAX_CONN), "--max-rooms-per-conn", "4",
                          "--close-timeout-ms", "1000")
    S["i1"] = st.ingest("i1")
    st.wait_assigned()
    S["by"] = hl.Bystander(S["d1"].addr, S["i1"].addr, interval=0.05)
    S["by"].start_sending()
    S["by"].wait_for(lambda msg: True, timeout=20, what="first message")


def test_bad_tokens_get_401_before_the_upgrade():
    now = int(time.time())
    hs = {"alg": "HS256", "typ": "JWT"}
    good = {"sub": "mallory", "exp": now + 3600}
    valid = hl.token("mallory")
    head, claims, sig = valid.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    cases = [
        ("forged (another secret)", hl.jwt_raw(hs, good, secret="not-the-secret")),
        ("signed with an empty key", hl.jwt_raw(hs, good, secret="")),
        ("tampered signature", "%s.%s.%s" % (head, claims, flipped)),
        ("tampered claims", "%s.%s.%s" % (head, ft.b64url(b'{"sub":"admin","exp":9999999999}'),
                                          sig)),
        ("signature stripped", "%s.%s." % (head, claims)),
        ("expired", hl.token("mallory", exp_in=-5)),
        ("alg none, no signature", ft.make_jwt(hl.SECRET, "mallory", alg="none")),
        ("alg none, HS256 signature", hl.jwt_raw({"alg": "none"}, good)),
        ("alg NONE", hl.jwt_raw({"alg": "NONE"}, good)),
        ("alg HS512", hl.jwt_raw({"alg": "HS512"}, good, digest=__import__("hashlib").sha512)),
        ("alg HS384", hl.jwt_raw({"alg": "HS384"}, good, digest=__import__("hashlib").sha384)),
        ("alg RS256", hl.jwt_raw({"alg": "RS256"}, good, sig=os.urandom(256))),
        ("alg RS256 with an HS256 signature", hl.jwt_raw({"alg": "RS256"}, good)),
        ("no alg", hl.jwt_raw({"typ": "JWT"}, good)),
        ("missing sub", hl.jwt_raw(hs, {"exp": now + 3600})),
        ("empty sub", hl.jwt_raw(hs, {"sub": "", "exp": now + 3600})),
        ("numeric sub", hl.jwt_raw(hs, {"sub": 42, "exp": now + 3600})),
        ("missing exp", hl.jwt_raw(hs, {"sub": "mallory"})),
        ("exp as a string", hl.jwt_raw(hs, {"sub": "mallory", "exp": str(now + 3600)})),
        ("nbf in the future", hl.jwt_raw(hs, {"sub": "mallory", "exp": now + 3600,
                                              "nbf": now + 600})),
        ("rooms not a list", hl.jwt_raw(hs, {"sub": "mallory", "exp": now + 3600,
                                             "rooms": "lobby"})),
        ("sub of 300 bytes", hl.jwt_raw(hs, {"sub": "m" * 300, "exp": now + 3600})),
        ("garbage", "not-a-token"),
        ("four parts", valid + ".x"),
        ("header not JSON", ft.b64url(b"{nope") + "." + claims + "." + sig),
        ("huge token", "a" * 6000),
        ("empty token", ""),
    ]
    before = m("auth_failures_total")
    open_before = m("connections")
    for name, tok in cases:
        c = hl.RawWs(delivery().addr, tok)
        assert c.status == 401, "%s: got %s %r" % (name, c.status, c.body)
        assert b'"error"' in c.body, (name, c.body)
        assert "www-authenticate" in c.headers, (name, c.headers)
        assert hl.wait_closed(c.sock, 5), "%s: connection kept open after 401" % name
        c.close()
    # No token at all, and a forged one in the Authorization header.
    c = hl.RawWs(delivery().addr, None)
    assert c.status == 401, c.status
    c.close()
    c = hl.RawWs(delivery().addr, None, headers={
        "Authorization": "Bearer " + hl.jwt_raw(hs, good, secret="wrong")})
    assert c.status == 401, c.status
    c.close()
    n = len(cases) + 2
    ft.eventually(lambda: m("auth_failures_total") - before == n, timeout=5,
                  what="auth_failures_total += %d" % n)
    assert m("connections") == open_before
    # Nothing registered for the users the tokens named.
    keys = S["stack"].redis.cli("KEYS", "ws:connections:*").split()
    assert keys == ["ws:connections:" + hl.BYSTANDER], keys
    # A good token still works (the 401s were not something else).
    c = ws(sub="mallory")
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)
    bystander_alive()


def violations():
    f = frame
    big = MAX_FRAME + 1
    return [
        # (name, bytes, expected close code)
        ("frame over max-frame-bytes", f(0x1, b"x" * big), 1009),
        ("frame declaring 2^40 bytes (no payload sent)", f(0x2, b"", length=1 << 40)[:14], 1009),
        ("binary frame over the limit", f(0x2, b"\0" * big), 1009),
        ("message over max-message-bytes in fragments",
         f(0x1, b"a" * 4000, fin=False) + f(0x0, b"a" * 4000, fin=False) +
         f(0x0, b"a" * 4000, fin=False) + f(0x0, b"a" * 4000, fin=False) +
         f(0x0, b"a" * 4000), 1009),
        ("invalid UTF-8", f(0x1, b"\xff\xfe"), 1007),
        ("overlong UTF-8", f(0x1, b"\xc0\xaf"), 1007),
        ("UTF-16 surrogate", f(0x1, b"\xed\xa0\x80"), 1007),
        ("code point over U+10FFFF", f(0x1, b"\xf4\x90\x80\x80"), 1007),
        ("invalid UTF-8 across fragments", f(0x1, b"caf\xc3", fin=False) + f(0x0, b"("), 1007),
        ("UTF-8 cut at the end of the message", f(0x1, b"caf\xc3"), 1007),
        ("close reason not UTF-8", f(0x8, b"\x03\xe8\xff\xfe"), 1007),
        ("unmasked text frame", f(0x1, b"hello", masked=False), 1002),
        ("unmasked close frame", f(0x8, b"\x03\xe8", masked=False), 1002),
        ("fragmented ping", f(0x9, b"p", fin=False), 1002),
        ("fragmented close", f(0x8, b"\x03\xe8", fin=False), 1002),
        ("ping of 126 bytes", f(0x9, b"p" * 126), 1002),
        ("pong of 200 bytes", f(0xA, b"p" * 200), 1002),
        ("close of 126 bytes", f(0x8, b"\x03\xe8" + b"r" * 124), 1002),
        ("RSV1", f(0x1, b"x", rsv=4), 1002),
        ("RSV2", f(0x1, b"x", rsv=2), 1002),
        ("RSV3", f(0x1, b"x", rsv=1), 1002),
        ("RSV bits on a ping", f(0x9, b"", rsv=7), 1002),
        *[("reserved opcode 0x%x" % op, f(op, b"x"), 1002) for op in (3, 4, 5, 6, 7, 0xB, 0xF)],
        ("continuation without a start", f(0x0, b"x"), 1002),
        ("new text inside a fragmented message", f(0x1, b"a", fin=False) + f(0x1, b"b"), 1002),
        ("new binary inside a fragmented message", f(0x2, b"a", fin=False) + f(0x2, b"b"),
         1002),
        ("close code 999", f(0x8, struct.pack(">H", 999)), 1002),
        ("close code 1005 (never on the wire)", f(0x8, struct.pack(">H", 1005)), 1002),
        ("close code 1006 (never on the wire)", f(0x8, struct.pack(">H", 1006)), 1002),
        ("close code 1015", f(0x8, struct.pack(">H", 1015)), 1002),
        ("close code 5000", f(0x8, struct.pack(">H", 5000)), 1002),
        ("close with a 1-byte payload", f(0x8, b"\x03"), 1002),
        ("non-minimal 16-bit length", b"\x81\xfe\x00\x05\x00\x00\x00\x00hello", 1002),
        ("non-minimal 64-bit length", b"\x81\xff" + struct.pack(">Q", 5) + b"\0\0\0\0hello",
         1002),
        ("64-bit length with the top bit set", b"\x81\xff\x80" + b"\0" * 7 + b"\0\0\0\0", 1002),
    ]


def test_protocol_violations_close_with_the_right_code():
    before = m("protocol_errors_total")
    cases = violations()
    for i, (name, data, code) in enumerate(cases):
        c = ws(sub="bad%d" % i)
        c.send_text({"type": "ping"})
        assert c.recv_json()["type"] == "pong", name
        try:
            c.send(data)
        except OSError:
            pass  # the server may close before it has read all of it
        try:
            c.expect_close(code)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (name, e))
        except (EOFError, ConnectionResetError) as e:
            raise AssertionError("%s: closed without a close frame (%r)" % (name, e))
        if i % 8 == 7:
            bystander_alive()
    ft.eventually(lambda: m("protocol_errors_total") - before == len(cases), timeout=5,
                  what="protocol_errors_total += %d" % len(cases))
    ft.eventually(lambda: m("connections") == 1, timeout=5, what="only the bystander open")
    bystander_alive()


def test_limits_are_inclusive():
    """Exactly max-frame-bytes in a frame and max-message-bytes in a
    message are fine (answered as bad JSON, not closed)."""
    c = ws(sub="edge")
    c.send(frame(0x1, b" " * MAX_FRAME))
    assert c.recv_json()["type"] == "error"
    chunks = MAX_MESSAGE // MAX_FRAME
    data = b""
    for k in range(chunks):
        data += frame(0x1 if k == 0 else 0x0, b" " * MAX_FRAME, fin=(k == chunks - 1))
    c.send(data)
    assert c.recv_json()["type"] == "error"
    c.send_text({"type": "ping"})
    assert c.recv_json()["type"] == "pong"
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)


def test_bad_client_messages_are_answered_and_the_connection_stays():
    c = ws(sub="clumsy", rooms=["lobby", "r*"])
    bad = [
        (b"not json", "bad_request"),
        (b"[1,2,3]", "bad_request"),
        (b'"just a string"', "bad_request"),
        (b"{}", "bad_request"),
        (b'{"type":42}', "bad_request"),
        (b'{"type":"nope"}', "bad_request"),
        (b'{"type":"join"}', "bad_request"),
        (b'{"type":"join","room":""}', "bad_request"),
        (b'{"type":"join","room":7}', "bad_request"),
        (('{"type":"join","room":"%s"}' % ("r" * 300)).encode(), "bad_request"),
        (b'{"type":"join","room":"secret"}', "forbidden"),
        (b'{"type":"join","room":"lobby"', "bad_request"),
        (b"[" * 2000 + b"]" * 2000, "bad_request"),
        (b'{"type":"ping","type":"join"}', None),
        (b"\x00", "bad_request"),
    ]
    for payload, code in bad:
        c.send(frame(0x1, payload))
        r = c.recv_json()
        if code is None:
            assert r["type"] in ("pong", "error"), r
            continue
        assert r["type"] == "error" and r["code"] == code, (payload[:60], r)
    c.send(frame(0x2, b"\x01\x02"))
    r = c.recv_json()
    assert r["type"] == "error", r
    # Room limit: 4 per connection.
    for k in range(4):
        c.send_text({"type": "join", "room": "r%d" % k})
        assert ft.joined_reply(c.recv_json()) == {"type": "joined", "room": "r%d" % k}
    c.send_text({"type": "join", "room": "r9"})
    r = c.recv_json()
    assert r["type"] == "error" and r["code"] == "too_many_rooms", r
    c.send_text({"type": "leave", "room": "r0"})
    assert c.recv_json() == {"type": "left", "room": "r0"}
    c.send_text({"type": "join", "room": "lobby"})
    assert ft.joined_reply(c.recv_json()) == {"type": "joined", "room": "lobby"}
    # Protocol pings with payloads are answered with the same payload.
    c.send(frame(0x9, b"are you there"))
    op, payload = c.recv_frame()
    assert (op, payload) == (0xA, b"are you there"), (op, payload)
    c.send_text({"type": "ping"})
    assert c.recv_json() == {"type": "pong"}
    c.send(frame(0x8, struct.pack(">H", 1000) + b"bye"))
    c.expect_close(1000)
    bystander_alive()


def test_malformed_http():
    addr = delivery().addr
    tok = hl.token("httpx")
    up = ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" % tok)
    cases = [
        ("garbage request line", b"GARBAGE\r\n\r\n", (400,)),
        ("binary garbage", b"\x00\xff\xfe\x16\x03\x01" * 50, (400,)),
        ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64, (400,)),
        ("header without a colon", b"GET /ws HTTP/1.1\r\nNoColonHere\r\n\r\n", (400,)),
        ("header over max-handshake-bytes",
         b"GET /ws HTTP/1.1\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", (431,)),
        ("too many headers", b"GET /ws HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % k
                                                               for k in range(100)) + b"\r\n",
         (431,)),
        ("HTTP/2.0", b"GET /ws HTTP/2.0\r\n\r\n", (505, 400)),
        ("HTTP/0.9 style", b"GET /ws\r\n\r\n", (400, 505)),
        ("POST /ws", (up.replace("GET", "POST", 1) + "Content-Length: 0\r\n\r\n").encode(),
         (405,)),
        ("no Upgrade header", ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tok).encode(),
         (426,)),
        ("Upgrade: h2c", (up.replace("Upgrade: websocket", "Upgrade: h2c") + "\r\n").encode(),
         (426,)),
        ("WebSocket version 8", (up.replace("Version: 13", "Version: 8") + "\r\n").encode(),
         (426,)),
        ("bad Sec-WebSocket-Key",
         (up.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64!") + "\r\n").encode(), (400,)),
        ("key of the wrong length",
         (up.replace("dGhlIHNhbXBsZSBub25jZQ==", "AAAA") + "\r\n").encode(), (400,)),
        ("unknown path", b"GET /admin HTTP/1.1\r\n\r\n", (404,)),
        ("percent garbage in the token",
         (up.replace("token=" + tok, "token=%zz%") + "\r\n").encode(), (401,)),
        ("body on the upgrade", (up + "Content-Length: 5000\r\n\r\n").encode() + b"x" * 5000,
         (400, 413, 431)),
        ("bad chunked body", (up + "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode(),
         (400, 413, 431)),
    ]
    before = m("handshake_failures_total")
    for name, data, want in cases:
        status, hdrs, body = hl.raw_request(addr, data)
        assert status in want, "%s: got %s %r" % (name, status, body[:100])
        if status >= 400:
            assert b'"error"' in body, (name, body)
    assert m("handshake_failures_total") - before >= len(cases) - 2
    # /healthz and /metrics still answer.
    status, _h, body = hl.raw_request(addr, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == 200
    bystander_alive()


def test_frames_glued_to_the_upgrade_request():
    """Bytes that arrive with the upgrade request are the client's first
    frames: the 101 must still go out first, then the frames' answers.
    (Fails while delivery drops the queued 101 when a close starts in the
    same read: fo__conn_close_ws -> outq_drop.)"""
    addr = delivery().addr
    tok = hl.token("glued")
    up = ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
          "Sec-WebSocket-Version: 13\r\n\r\n" % tok).encode()
    cases = [
        ("a ping message", frame(0x1, b'{"type":"ping"}'), "pong"),
        ("a close frame", frame(0x8, struct.pack(">H", 1000)), 1000),
        ("an unmasked frame", frame(0x1, b"hi", masked=False), 1002),
        ("plain HTTP ('G' has RSV bits set)", b"GET / HTTP/1.1\r\n\r\n", 1002),
    ]
    failures = []
    for name, extra, want in cases:
        s = hl.connect(addr)
        s.sendall(up + extra)
        try:
            status, _h, _b, rest = hl.read_response(s)
        except (EOFError, AssertionError) as e:
            failures.append("%s: no 101 first: %s" % (name, e))
            s.close()
            continue
        assert status == 101, (name, status)
        c = hl.RawWs.__new__(hl.RawWs)
        c.sock, c.buf = s, rest
        if want == "pong":
            assert c.recv_json()["type"] == "pong", name
            c.send(frame(0x8, struct.pack(">H", 1000)))
            want = 1000
        c.expect_close(want)
    assert not failures, failures
    bystander_alive()


def test_ping_then_close_in_one_read_gets_the_pong_first():
    """RFC 6455 5.5.2/5.5.3: a ping is answered with a pong; a close frame
    that follows at once (same TCP read) must not swallow that pong: the
    pong goes out before the close reply. (Failed while fo__conn_close_ws
    dropped the queued output.)"""
    c = ws(sub="pingclose")
    c.sock.settimeout(ft.scaled(5))
    c.send(frame(0x9, b"are you there") + frame(0x8, struct.pack(">H", 1000)))
    op, payload = c.recv_frame()
    assert (op, bytes(payload)) == (0xA, b"are you there"), (op, payload)
    op, payload = c.recv_frame()
    assert op == 0x8 and struct.unpack(">H", payload[:2])[0] == 1000, (op, payload)
    assert hl.wait_closed(c.sock, 5), "socket kept open after the close handshake"
    c.close()
    delivery_ok()


def test_reply_to_a_valid_message_precedes_the_close_for_a_violation():
    """A valid message and a protocol violation in the same read: the reply
    to the message is written before the 1002 close frame (frames queued
    before a close are sent before it)."""
    c = ws(sub="validbad")
    c.send(frame(0x1, b'{"type":"ping"}') + frame(0x1, b"hi", masked=False))
    assert c.recv_json()["type"] == "pong"
    c.expect_close(1002)
    delivery_ok()


def test_slowloris_handshakes_are_dropped():
    """Requests trickled a byte at a time never finish before the handshake
    timeout: each socket is closed after about --handshake-timeout-ms."""
    addr = delivery().addr
    tok = hl.token("slow")
    req = ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "X-Padding: %s\r\n\r\n" % (tok, "p" * 200)).encode()
    socks = [hl.connect(addr) for _ in range(20)]
    t0 = time.time()
    closed_at = {}
    pos = 0
    limit = t0 + ft.scaled(HANDSHAKE_MS / 1000 * 4 + 2)
    while len(closed_at) < len(socks) and time.time() < limit:
        for k, s in enumerate(socks):
            if k in closed_at:
                continue
            try:
                s.send(req[pos:pos + 1])
                s.setblocking(False)
                try:
                    d = s.recv(4096)
                    if d == b"":
                        closed_at[k] = time.time() - t0
                    else:
                        # a 408 is fine too; then EOF
                        assert d.startswith(b"HTTP/1.1 408"), d[:80]
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                closed_at[k] = time.time() - t0
        pos = min(pos + 1, len(req) - 3)  # never the final CRLF
        time.sleep(0.1)
    for s in socks:
        s.close()
    assert len(closed_at) == len(socks), "%d of %d slow handshakes still open after %.1fs" % (
        len(socks) - len(closed_at), len(socks), time.time() - t0)
    worst = max(closed_at.values())
    assert worst >= HANDSHAKE_MS / 1000 * 0.8, "closed too early: %.2fs" % worst
    assert worst <= ft.scaled(HANDSHAKE_MS / 1000 * 3 + 0.5), "closed late: %.2fs" % worst
    bystander_alive()


def test_idle_connection_flood_is_dropped():
    """300 TCP connections that never send a byte: all closed by the
    handshake timeout, none of them counts as a WebSocket connection."""
    addr = delivery().addr
    acc = m("accepted_total")
    socks = []
    for _ in range(300):
        socks.append(hl.connect(addr))
    ft.eventually(lambda: m("accepted_total") - acc >= 300, timeout=10, what="300 accepted")
    assert m("connections") == 1
    t0 = time.time()
    for s in socks:
        assert hl.wait_closed(s, max(0.1, HANDSHAKE_MS / 1000 * 3 + 2 - (time.time() - t0))), \
            "idle connection still open after %.1fs" % (time.time() - t0)
        s.close()
    bystander_alive()


def test_connection_flood_past_max_connections():
    ft.eventually(lambda: m("connections") == 1, timeout=5, what="only the bystander open")
    rejected = m("rejected_full_total")
    clients = []
    for k in range(MAX_CONN - 1):
        clients.append(ws(sub="flood%d" % (k % 5)))
    assert m("connections") == MAX_CONN
    # Past the limit: 503 with Retry-After before the upgrade, for good tokens...
    for k in range(10):
        c = hl.RawWs(delivery().addr, hl.token("late%d" % k))
        assert c.status == 503, (c.status, c.body)
        assert "retry-after" in c.headers, c.headers
        assert hl.wait_closed(c.sock, 5)
        c.close()
    # ... while a bad token is still a 401 (authentication comes first).
    c = hl.RawWs(delivery().addr, hl.jwt_raw({"alg": "HS256"}, {"sub": "x", "exp": 1}))
    assert c.status == 401
    c.close()
    # A burst of concurrent upgrades: all refused, none crashes anything.
    results = []

    def attempt():
        try:
            cc = hl.RawWs(delivery().addr, hl.token("burst"))
            results.append(cc.status)
            cc.close()
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))
    threads = [threading.Thread(target=attempt) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ft.scaled(20))
    assert results.count(503) == 100, results[:10]
    assert m("rejected_full_total") - rejected == 110
    assert m("connections") == MAX_CONN
    bystander_alive()
    # Every flood client was served too: each still gets pongs.
    for c in clients[:5]:
        c.send_text({"type": "ping"})
        assert c.recv_json()["type"] == "pong"
    for c in clients:
        c.send(frame(0x8, struct.pack(">H", 1000)))
        c.expect_close(1000)
    ft.eventually(lambda: m("connections") == 1, timeout=5, what="flood connections gone")
    c = ws(sub="after-flood")
    c.close()
    bystander_alive()


def flood_unread(c, data, seconds=20, limit=24 << 20):
    """Sends data again and again without reading anything back, until the
    server closes the socket, `limit` bytes went out or time is up.
    Returns the bytes sent."""
    c.sock.settimeout(ft.scaled(2))
    sent = 0
    t0 = time.time()
    try:
        while sent < limit and time.time() - t0 < ft.scaled(seconds):
            c.sock.sendall(data)
            sent += len(data)
    except (socket.timeout, OSError):
        pass
    return sent


def unread_client(sub):
    """A client with a tiny receive window that will not read."""
    c = hl.RawWs.__new__(hl.RawWs)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, _, port = delivery().addr.rpartition(":")
    s.connect((host, int(port)))
    s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % hl.token(sub)).encode())
    c.sock = s
    c.status, c.headers, c.body, c.buf = hl.read_response(s)
    assert c.status == 101
    return c


def test_client_that_never_reads_its_replies_is_closed():
    """Messages answered into a socket nobody reads: the connection is closed
    (by the message rate limit, 1008, long before the outbound queue limit,
    1013) instead of growing server memory; the bystander is not affected.
    hostile_memory.py floods with the rate limit off."""
    closed = m("rate_limited_total") + m("slow_client_closes_total")
    c = unread_client("deaf")
    msg = frame(0x1, b'{"type":"nope"}', mask=b"\1\2\3\4")
    flood_unread(c, msg * 5000)  # up to 24 MB: over a million error replies
    ft.eventually(lambda: m("rate_limited_total") + m("slow_client_closes_total") > closed,
                  timeout=10, what="rate_limited_total or slow_client_closes_total")
    assert m("queued_bytes") < 4 << 20, m("queued_bytes")
    c.close()
    bystander_alive()


def test_protocol_ping_flood_is_bounded():
    """The same with protocol pings: their pongs must count against the
    outbound queue limit too (or be coalesced: RFC 6455 5.5.3 allows
    answering only the latest ping)."""
    c = unread_client("pinger")
    ping = frame(0x9, b"p" * 125, mask=b"\1\2\3\4")
    flood_unread(c, ping * 1000)
    queued = m("queued_bytes")
    c.close()
    assert queued < 4 << 20, "%d bytes of pongs queued for one client (limit 1 MiB)" % queued
    bystander_alive()


def test_bystander_was_served_throughout():
    hl.check_bystander(S)
    delivery_ok()


def test_clean_shutdown():
    hl.stop_cleanly(S)


def teardown_module():
    hl.teardown(S)


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

"""Malformed HTTP against fanout-ingest: each case gets the right answer (or a
clean close) while another client keeps being served on a keep-alive
connection the whole time."""

import json
import os
import socket
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402
import ingest_lib as L  # noqa: E402

KAFKA = os.environ.get("FANOUT_KAFKA") or ft.fixture_env("kafkadev")["FANOUT_KAFKA"]
REDIS = os.environ.get("FANOUT_REDIS") or ft.fixture_env("redis")["FANOUT_REDIS"]
RUN = uuid.uuid4().hex[:8]

svc = None  # the ingest under test, started by setup_module
HOST, PORT = None, None
AUTH = b"Authorization: Bearer " + L.API_KEY.encode() + b"\r\n"


class Bystander(threading.Thread):
    """Sends one message every few milliseconds over one keep-alive
    connection and records every status and latency."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.statuses = []
        self.worst = 0.0
        self.error = None

    def run(self):
        c = L.Client(HOST, PORT)
        i = 0
        try:
            while not self.stop.is_set():
                r = c.post("/v1/send", {"user": "bystander-" + RUN, "data": i})
                self.statuses.append(r.status)
                self.worst = max(self.worst, r.elapsed)
                i += 1
                time.sleep(0.005)
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
        finally:
            c.close()


bystander = Bystander()


def post(body, extra=b"", ctype=b"application/json", path=b"/v1/send"):
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    return head + b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body


def one(data, timeout=10):
    """Sends data, returns the only response (status, headers, body)."""
    out = L.raw(HOST, PORT, data, timeout=timeout, responses=1)
    resp = L.parse_responses(out)
    assert len(resp) >= 1, out
    return resp[0]


def expect(data, status, text=None, closes=True):
    st, headers, body = one(data)
    assert st == status, (st, body, data[:120])
    assert headers.get("content-type") == "application/json", headers
    err = json.loads(body)["error"]
    if text is not None:
        assert text in err, err
    if closes:
        assert headers.get("connection") == "close", headers
    assert bystander.is_alive() and bystander.error is None, bystander.error


def setup_module():
    """One ingest and the bystander on it (not a test: ft.run_tests runs it first)."""
    global svc, HOST, PORT
    svc = L.start_ingest(KAFKA, REDIS, ["--intake", "false", "--max-body-bytes", "8192",
                                        "--max-header-bytes", "4096", "--read-timeout-ms", "1000"])
    HOST, PORT = svc.host, svc.port
    L.wait_ready(HOST, PORT)
    bystander.start()
    ft.eventually(lambda: len(bystander.statuses) > 5, what="bystander served")


def teardown_module():
    bystander.stop.set()
    if svc is not None:
        svc.stop()


def test_bad_request_lines():
    expect(b"GARBAGE\r\n\r\n", 400)
    expect(b"GET\r\n\r\n", 400)
    st, _h, _b = one(b"GET /healthz\r\n\r\n")  # HTTP/0.9 style
    assert st in (400, 505), st
    expect(b"GET /healthz HTTP/1.1 extra\r\n\r\n", 400)
    expect(b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400)
    expect(b"\x00\x01\x02\x03\r\n\r\n", 400)
    expect(b"G\xffT / HTTP/1.1\r\n\r\n", 400)
    st, _h, _b = one(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    assert st in (400, 505), st
    expect(b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400)


def test_bad_headers():
    expect(b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n", 400)
    expect(b"POST /v1/send HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400)
    expect(b"POST /v1/send HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400)
    expect(b"POST /v1/send HTTP/1.1\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)


def test_huge_headers():
    expect(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    st, _h, _b = one(b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n")
    assert st == 431, st
    expect(b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\n\r\n", 431)


def test_bad_chunking():
    base = b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
    expect(base + b"ZZ\r\nhello\r\n0\r\n\r\n", 400)
    # http-parser (non-strict) tolerates a missing CRLF after chunk data: then
    # the body "hello" is refused as JSON; either way a 400.
    st, _h, _b = one(base + b"5\r\nhelloXX0\r\n\r\n")
    assert st == 400, st
    expect(base + b"-5\r\nhello\r\n0\r\n\r\n", 400)
    expect(base + b"ffffffffffffffffff\r\n", 400)
    # chunked and over the body limit: 413 once the limit is passed
    big = b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(3))
    expect(base + big + b"0\r\n\r\n", 413)


def test_content_type_and_json():
    expect(post(b'{"user":"u","data":1}', ctype=b"text/plain"), 415, closes=False)
    expect(post(b'{"user":"u","data":1}', ctype=b"multipart/form-data"), 415, closes=False)
    expect(post(b"{"), 400, "invalid JSON", closes=False)
    expect(post(b'{"user":"u","data":1'), 400, "invalid JSON", closes=False)
    expect(post(b"\xff\xfe{}"), 400, "invalid JSON", closes=False)
    expect(post(b'{"user":"\xc3\x28","data":1}'), 400, "invalid JSON", closes=False)
    expect(post(b"null"), 400, "object", closes=False)
    expect(post(b"[]"), 400, "object", closes=False)
    expect(post(b'{"user":{"a":1},"data":1}'), 400, "user must be a string", closes=False)
    expect(post(b'{"user":true,"data":1}'), 400, "user must be a string", closes=False)
    expect(post(b'{"room":[],"data":1}', path=b"/v1/broadcast"), 400, "room must be a string",
           closes=False)
    expect(post(b'{"messages":"no"}', path=b"/v1/batch"), 400, "array", closes=False)
    expect(post(b'{"user":"u","data":' + b"[" * 3000 + b"]" * 3000 + b"}"), 400,
           "invalid JSON", closes=False)


def test_empty_and_huge_bodies():
    expect(post(b""), 400, "empty", closes=False)
    expect(b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n", 400, "empty", closes=False)
    expect(post(b"x" * 9000), 413)
    # declared huge: answered at once, the body never sent
    t0 = time.time()
    st, headers, _b = one(b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + AUTH +
                          b"Content-Length: 99999999999\r\n\r\n")
    assert st == 413 and time.time() - t0 < ft.scaled(2), st
    st, _h, _b = one(b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + AUTH +
                     b"Content-Length: 999999999999999999999999\r\n\r\n")
    assert st in (400, 413), st


def test_slow_clients_time_out():
    # headers that never finish: 408 after --read-timeout-ms
    t0 = time.time()
    st, _h, _b = one([b"POST /v1/send HTTP/1.1\r\nHost: x\r\n"], timeout=10)
    assert st == 408, st
    assert 0.8 < time.time() - t0 < ft.scaled(4), time.time() - t0
    # a body that never finishes
    st, _h, _b = one([b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + AUTH +
                      b"Content-Length: 100\r\n\r\n{\"user\":"], timeout=10)
    assert st == 408, st
    # a connection that sends nothing at all is closed by the idle timeout
    # (60 s by default, not waited for here) and costs nothing meanwhile.


def test_garbage_after_a_good_request_on_the_same_connection():
    body = b'{"user":"mixed-' + RUN.encode() + b'","data":1}'
    out = L.raw(HOST, PORT, post(body) + b"BROKEN LINE\r\n\r\n")
    resp = L.parse_responses(out)
    assert [s for s, _, _ in resp] == [202, 400], resp


def test_many_bad_clients_at_once():
    def bad(i):
        try:
            L.raw(HOST, PORT, [b"GET /healthz HTTP/1.1\r\n", b"X" * (i % 50) + b"\r\n\r\n\r\n"],
                  timeout=5, responses=1)
        except OSError:
            pass
    threads = [threading.Thread(target=bad, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # abrupt disconnects mid-request
    for _ in range(20):
        s = socket.create_connection((HOST, PORT))
        s.sendall(post(b'{"user":"gone","data":1}')[:40])
        s.close()
    for _ in range(20):
        s = socket.create_connection((HOST, PORT))
        s.sendall(post(b'{"user":"gone-' + RUN.encode() + b'","data":1}'))
        s.close()  # before the answer comes
    c = L.Client(HOST, PORT, key=None)
    assert c.get("/healthz").status == 200
    c.close()


def test_bystander_was_served_throughout():
    n = len(bystander.statuses)  # and still after the last case:
    ft.eventually(lambda: len(bystander.statuses) > n + 5 or bystander.error is not None,
                  what="bystander served after the last case")
    bystander.stop.set()
    bystander.join(10)
    assert bystander.error is None, bystander.error
    assert len(bystander.statuses) > 20, len(bystander.statuses)
    assert set(bystander.statuses) == {202}, set(bystander.statuses)
    assert bystander.worst < ft.scaled(1.0), bystander.worst
    assert svc.alive()


if __name__ == "__main__":
    ft.run_tests(dict(globals()), sys.argv[1:] or None)

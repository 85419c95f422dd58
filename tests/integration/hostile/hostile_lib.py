"""Shared pieces of the hostile-input tests: a stack of real processes
(redis-server, fanout-kafka-dev, fanout-delivery, fanout-ingest on free
loopback ports, stopped by PID), a raw RFC 6455 client that breaks the rules
on purpose, and the well-behaved bystander: a python3-websockets client on
the same delivery server that must receive, in order, every message a
sender thread gets accepted (202) through ingest's POST /v1/send while the
hostile inputs run."""

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402

SECRET = "hostile-secret-0123456789abcdef-0123456789"
API_KEY = "hostile-key"
BYSTANDER = "good-user"


# ---- tokens -----------------------------------------------------------------------

def token(sub="alice", **kw):
    return ft.make_jwt(SECRET, sub, **kw)


def jwt_raw(header, claims, secret=SECRET, digest=hashlib.sha256, sig=None):
    """A token with any header/claims; signed with HMAC(digest) unless sig."""
    signing = ft.b64url(json.dumps(header).encode()) + "." + ft.b64url(json.dumps(claims).encode())
    if sig is None:
        key = secret.encode() if isinstance(secret, str) else secret
        sig = hmac.new(key, signing.encode(), digest).digest()
    return signing + "." + ft.b64url(sig)


# ---- processes ----------------------------------------------------------------------

class Stack:
    """redis-server + fanout-kafka-dev + delivery servers + ingest."""

    def __init__(self, partitions=4):
        self.redis = ft.Redis()
        self.kafka = ft.KafkaDev(partitions=partitions)
        self.deliveries = []
        self.ingests = []
        self.stopped = False

    def delivery(self, sid, *extra):
        args = ["--listen", "127.0.0.1:0", "--redis", self.redis.addr, "--kafka",
                self.kafka.bootstrap, "--server-id", sid, "--jwt-secret", SECRET,
                "--session-timeout-ms", "6000", "--alive-ttl-ms", "1500",
                "--log-level", "info", *extra]
        pr = ft.start_service("fanout-delivery", "hostile-delivery-" + sid, args)
        pr.sid = sid
        self.deliveries.append(pr)
        return pr

    def ingest(self, name, *extra):
        args = ["--listen", "127.0.0.1:0", "--redis", self.redis.addr, "--kafka",
                self.kafka.bootstrap, "--api-keys", API_KEY, "--log-level", "info",
                "--intake", "false", *extra]
        pr = ft.start_service("fanout-ingest", "hostile-ingest-" + name, args)
        self.ingests.append(pr)
        return pr

    def wait_assigned(self, timeout=40):
        """Waits until the delivery servers together own every users partition."""
        def ok():
            counts = [metrics(pr).get("fanout_delivery_assigned_partitions", 0) -
                      self.kafka.partitions for pr in self.deliveries if pr.alive()]
            return ft.partitions_spread(counts, self.kafka.partitions, self.kafka.partitions)
        ft.eventually(ok, timeout=timeout, interval=0.2, what="users partitions assigned")

    def check_alive(self):
        for pr in self.deliveries + self.ingests:
            assert pr.alive(), "%s died; log %s:\n%s" % (pr.name, pr.logpath, pr.log_tail())

    def wait_registered(self, user, n=1, timeout=10):
        """Waits until user's registry entry (ws:connections:{user}) has n
        connections: from then on a record for user reaches them."""
        ft.eventually(lambda: self.redis.cli("HLEN", "ws:connections:" + user) == str(n),
                      timeout=timeout, what="%d registry entries for %s" % (n, user))

    def stop(self):
        self.stopped = True
        codes = {}
        for pr in self.deliveries + self.ingests:
            codes[pr.name] = pr.stop(timeout=15)
        self.kafka.stop()
        self.redis.stop()
        return codes


def metrics(pr):
    return ft.metrics(pr.addr)


# ---- raw HTTP ---------------------------------------------------------------------

from rawhttp import connect, read_response, wait_closed  # noqa: E402,F401


def raw_request(addr, data, timeout=5.0):
    """Sends bytes, returns (status, headers, body) of the answer and checks
    the server then closes the connection. status None if it closed without
    an answer."""
    s = connect(addr, timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass
        try:
            status, hdrs, body, _rest = read_response(s)
        except (EOFError, ConnectionResetError):
            return None, {}, b""
        return status, hdrs, body
    finally:
        s.close()


def http_json(addr, method, path, body=None, key=API_KEY, timeout=10.0):
    host, _, port = addr.rpartition(":")
    c = http.client.HTTPConnection(host, int(port), timeout=ft.scaled(timeout))
    hdrs = {"Content-Type": "application/json"}
    if key:
        hdrs["Authorization"] = "Bearer " + key
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=hdrs)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


# ---- a raw WebSocket client -------------------------------------------------------

class Closed(Exception):
    def __init__(self, code, reason=b""):
        super().__init__("closed %s %r" % (code, reason))
        self.code = code
        self.reason = reason


def frame(op, payload=b"", fin=True, masked=True, rsv=0, mask=None, length=None):
    """One client frame; length overrides the declared payload length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if masked else 0
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if not masked:
        return hdr + payload
    mask = mask or os.urandom(4)
    return hdr + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(payload))


class RawWs:
    """A blocking RFC 6455 client over a plain socket."""

    def __init__(self, addr, tok=None, headers=None, path=None, timeout=5.0):
        self.sock = connect(addr, timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = path or ("/ws?token=%s" % tok if tok is not None else "/ws")
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, addr, key))
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        self.sock.sendall((req + "\r\n").encode())
        self.status, self.headers, self.body, self.buf = read_response(self.sock)
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == want, self.headers

    def read_welcome(self, timeout=5.0):
        """Reads the first frame, which the contract says is the welcome
        (for tests that read raw frames afterwards)."""
        self.sock.settimeout(ft.scaled(timeout))
        op, payload = self.recv_frame()
        assert op == 0x1, (op, payload)
        self.welcome = ft.check_welcome(json.loads(payload))
        return self.welcome

    def send(self, data):
        self.sock.sendall(data)

    def send_text(self, obj):
        payload = obj if isinstance(obj, (bytes, bytearray)) else json.dumps(obj).encode()
        self.sock.sendall(frame(0x1, bytes(payload)))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4)
            n = struct.unpack(">H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack(">Q", self.buf[2:10])[0]
            off = 10
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def recv_json(self, timeout=5.0):
        """Next text message as JSON; answers pings; raises Closed on close."""
        self.sock.settimeout(ft.scaled(timeout))
        while True:
            op, payload = self.recv_frame()
            if op == 0x1:
                msg = json.loads(payload)
                if getattr(self, "welcome", None) is None:
                    self.welcome = ft.check_welcome(msg)
                    continue
                return msg
            if op == 0x9:
                self.sock.sendall(frame(0xA, payload))
            elif op == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(code, payload[2:])

    def expect_close(self, code, timeout=5.0):
        """Waits for the server's close frame with `code` (skipping other
        frames), then for the TCP close. Returns the reason."""
        try:
            while True:
                self.recv_json(timeout)
        except Closed as c:
            assert c.code == code, "expected close %d, got %s (%r)" % (code, c.code, c.reason)
            reason = c.reason
        # Answer the close as a client should; the server then drops the socket.
        try:
            self.sock.sendall(frame(0x8, struct.pack(">H", code)))
        except OSError:
            pass
        assert wait_closed(self.sock, timeout), "server kept the socket open after close %d" % code
        self.close()
        return reason

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- the well-behaved client and its sender -----------------------------------------

class Bystander:
    """A python3-websockets client (a WebSocket implementation nobody in the
    project wrote) connected as BYSTANDER, plus a thread that POSTs
    /v1/send for it through ingest every `interval` seconds. check() then
    asserts every accepted message arrived, once or more, in order."""

    def __init__(self, delivery_addr, ingest_addr, interval=0.1, rooms=None):
        self.url = "ws://%s/ws?token=%s" % (delivery_addr, token(BYSTANDER, rooms=rooms))
        self.ingest = ingest_addr
        self.interval = interval
        self.received = []          # data objects, in arrival order
        self.accepted = []          # seq numbers answered 202
        self.refused = []           # (seq, status) of anything else
        self.errors = []
        self.recv_stop = threading.Event()
        self.send_stop = threading.Event()
        self.connected = threading.Event()
        self.cond = threading.Condition()
        self.joined = []
        self.rooms = rooms or []
        self.thread = threading.Thread(target=self._ws_thread, daemon=True)
        self.thread.start()
        if not self.connected.wait(ft.scaled(10)):
            raise AssertionError("bystander could not connect: %r" % self.errors)
        self.sender = threading.Thread(target=self._send_thread, daemon=True)
        self.seq = 0

    def start_sending(self):
        self.sender.start()

    # -- receiving
    def _ws_thread(self):
        try:
            asyncio.run(self._ws_main())
        except Exception as e:  # noqa: BLE001 - reported by check()
            self.errors.append("websocket: %r" % e)
            self.connected.set()

    async def _ws_main(self):
        import websockets
        async with websockets.connect(self.url, ping_interval=None, max_size=2 ** 22) as ws:
            for r in self.rooms:
                await ws.send(json.dumps({"type": "join", "room": r}))
            self.connected.set()
            while not self.recv_stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                m = json.loads(msg)
                with self.cond:
                    if m.get("type") == "message":
                        self.received.append(m)
                    elif m.get("type") == "joined":
                        self.joined.append(m["room"])
                    self.cond.notify_all()

    # -- sending
    def _send_thread(self):
        host, _, port = self.ingest.rpartition(":")
        conn = None
        while not self.send_stop.is_set():
            self.seq += 1
            seq = self.seq
            body = json.dumps({"user": BYSTANDER, "data": {"seq": seq}})
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=ft.scaled(10))
                conn.request("POST", "/v1/send", body=body,
                             headers={"Authorization": "Bearer " + API_KEY,
                                      "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status == 202:
                    self.accepted.append(seq)
                else:
                    self.refused.append((seq, r.status))
            except (OSError, http.client.HTTPException) as e:
                self.refused.append((seq, repr(e)))
                conn = None
            time.sleep(self.interval)

    def wait_for(self, pred, timeout=10.0, what="message"):
        deadline = time.time() + ft.scaled(timeout)
        with self.cond:
            while True:
                for m in self.received:
                    if pred(m):
                        return m
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("bystander: no %s in time (got %d messages, errors %r)"
                                         % (what, len(self.received), self.errors))
                self.cond.wait(min(left, 0.2))

    def seqs(self):
        with self.cond:
            return [m["data"]["seq"] for m in self.received
                    if isinstance(m.get("data"), dict) and "seq" in m["data"]]

    def check(self, timeout=15.0):
        """Stops sending; every accepted message must arrive, in order.
        Returns (accepted, received)."""
        self.send_stop.set()
        if self.sender.is_alive():
            self.sender.join(ft.scaled(15))
        assert self.thread.is_alive(), "bystander websocket ended: %r" % self.errors
        accepted = list(self.accepted)
        assert accepted, "no message was accepted (refused: %r)" % self.refused[:5]
        last = accepted[-1]
        ft.eventually(lambda: last in self.seqs(), timeout=timeout,
                      what="bystander receiving seq %d" % last)
        got = self.seqs()
        missing = sorted(set(accepted) - set(got))
        assert not missing, "bystander lost accepted messages: %r" % missing[:20]
        # Per-user order: first arrivals are increasing (duplicates allowed).
        seen, order = set(), []
        for s in got:
            if s not in seen:
                seen.add(s)
                order.append(s)
        assert order == sorted(order), "out of order: %r" % order[:50]
        assert not self.errors, self.errors
        return len(accepted), len(got)

    def close(self):
        self.send_stop.set()
        self.recv_stop.set()
        self.thread.join(ft.scaled(5))


# ---- Kafka records ----------------------------------------------------------------

def produce(bootstrap, topic, values, partition=0, key=None):
    """Produces each value (bytes; None = a record without a value) as one
    record to topic/partition with fanout-hostile-produce; returns when
    every record was acknowledged."""
    lines = "".join("NULL\n" if v is None else v.hex() + "\n" for v in values)
    args = [ft.find_binary("fanout-hostile-produce"), bootstrap, topic, str(partition)]
    if key is not None:
        args.append(key)
    p = subprocess.run(args, input=lines.encode(), capture_output=True, timeout=ft.scaled(60))
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert p.stdout.decode().strip() == "produced=%d" % len(values), p.stdout


# ---- set-up and tear-down -----------------------------------------------------------

def check_bystander(S):
    """test_bystander_was_served_throughout of the suites: every message
    ingest accepted for the bystander arrived, and ingest refused none."""
    accepted, got = S["by"].check()
    ft.log("bystander: %d accepted, %d received, refused %r" % (
        accepted, got, S["by"].refused[:5]))
    assert not S["by"].refused, S["by"].refused[:5]


def stop_cleanly(S):
    """test_clean_shutdown of the suites: every service exits 0."""
    if "by" in S:
        S["by"].close()
    codes = S["stack"].stop()
    assert all(c == 0 for c in codes.values()), codes


def teardown(S):
    """teardown_module of the suites: stops whatever test_clean_shutdown
    did not (it failed, or a subset of the tests ran)."""
    if "by" in S:
        S["by"].close()
    if "stack" in S and not S["stack"].stopped:
        S["stack"].stop()


# ---- msgpack envelope (just enough to build good and bad ones) -------------------------

def mp_str(s):
    b = s.encode() if isinstance(s, str) else s
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def mp_bin(b):
    n = len(b)
    if n < 256:
        return b"\xc4" + bytes([n]) + b
    if n < 65536:
        return b"\xc5" + struct.pack(">H", n) + b
    return b"\xc6" + struct.pack(">I", n) + b


def mp_int(v):
    if 0 <= v < 128:
        return bytes([v])
    return b"\xd3" + struct.pack(">q", v)


def envelope(kind, target, payload, ct="application/json", version=1, id_bytes=None,
             extra=b"", nfields=None):
    fields = [
        (mp_str("v"), mp_int(version)),
        (mp_str("id"), mp_bin(id_bytes or os.urandom(16))),
        (mp_str("k"), mp_str(kind)),
        (mp_str("t"), mp_str(target)),
        (mp_str("p"), mp_bin(payload)),
        (mp_str("ct"), mp_str(ct)),
        (mp_str("ts"), mp_int(int(time.time() * 1000))),
    ]
    n = nfields if nfields is not None else len(fields)
    body = b"".join(k + v for k, v in fields) + extra
    return bytes([0x80 | n]) + body if n < 16 else b"\xde" + struct.pack(">H", n) + body

"""Our own small RFC 6455 client for the delivery tests (blocking sockets),
able to break the rules on purpose: unmasked frames, oversized frames, bad
UTF-8, fragments, not answering pings. The tests also use Debian's
python3-websockets, a client nobody in the project wrote."""

import base64
import json
import os
import socket
import struct
import time

import fanout_test as ft


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__("HTTP %d: %s" % (status, body))
        self.status = status
        self.body = body


class Closed(Exception):
    def __init__(self, code, reason=""):
        super().__init__("closed %s %r" % (code, reason))
        self.code = code
        self.reason = reason


def http_get(addr, path, headers=None, timeout=5.0):
    """Returns (status, headers dict, body) of one plain request."""
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=ft.scaled(timeout))
    req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, addr)
    for k, v in (headers or {}).items():
        req += "%s: %s\r\n" % (k, v)
    s.sendall((req + "\r\n").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


class WsClient:
    def __init__(self, addr, token=None, path=None, headers=None, timeout=5.0, rcvbuf=None,
                 auto_pong=True):
        host, _, port = addr.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(ft.scaled(timeout))
        self.sock.connect((host, int(port)))
        self.buf = b""
        self.auto_pong = auto_pong
        self.pings = 0
        self.close_code = None
        key = base64.b64encode(os.urandom(16)).decode()
        path = path or ("/ws?token=%s" % token if token else "/ws")
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, addr, key))
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        self.sock.sendall((req + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0] else 0
        if status != 101:
            body = rest
            try:
                while True:
                    c = self.sock.recv(65536)
                    if not c:
                        break
                    body += c
            except OSError:
                pass
            self.sock.close()
            raise HttpError(status, body)
        self.buf = rest

    # ---- sending ----
    def send_frame(self, opcode, payload=b"", fin=True, mask=True, rsv=0, raw_len=None):
        self.sock.sendall(self.frame(opcode, payload, fin, mask, rsv, raw_len))

    @staticmethod
    def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, raw_len=None):
        """The bytes of one client frame (to glue several into one write)."""
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload) if raw_len is None else raw_len
        if n < 126:
            hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n <= 0xFFFF:
            hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            hdr += key
        return hdr + payload

    def send_json(self, obj):
        self.send_frame(0x1, json.dumps(obj).encode())

    def send_json_glued(self, objs):
        """Sends several text messages in ONE write, so the server reads them
        together and handles them in one loop turn."""
        self.sock.sendall(b"".join(self.frame(0x1, json.dumps(o).encode()) for o in objs))

    def close(self, code=1000):
        try:
            self.send_frame(0x8, struct.pack("!H", code))
        except OSError:
            pass

    def abort(self):
        self.sock.close()

    # ---- receiving ----
    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(None, "eof")
            self.buf += chunk

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        assert not (b1 & 0x80), "server frames must not be masked"
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def recv(self, timeout=5.0):
        """Returns the next text message as JSON; answers pings; raises
        Closed on a close frame or EOF, socket.timeout on silence."""
        deadline = time.time() + ft.scaled(timeout)
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout("no message in time")
            self.sock.settimeout(left)
            op, fin, payload = self.recv_frame()
            if op == 0x9:
                self.pings += 1
                if self.auto_pong:
                    self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.close_code = code
                raise Closed(code, payload[2:].decode("utf-8", "replace"))
            assert fin and op == 0x1, "expected a whole text frame, got op %d" % op
            msg = json.loads(payload)
            if getattr(self, "welcome", None) is None:
                self.welcome = ft.check_welcome(msg)
                continue
            return msg

    def expect_close(self, timeout=5.0):
        """Reads until a close frame or EOF; returns the close code (None on EOF)."""
        deadline = time.time() + ft.scaled(timeout)
        while time.time() < deadline:
            try:
                self.recv(timeout=max(0.1, deadline - time.time()))
            except Closed as c:
                return c.code
            except (ConnectionResetError, BrokenPipeError):
                return None
        raise AssertionError("connection not closed in time")

    def expect_next(self, pred, what="the marker", timeout=15.0):
        """The next message satisfies pred. A negative check ("nothing more
        came") sends a marker that must arrive after anything that should
        not have (same partition, or the same server's later work), then
        expects the marker as the very next message: no fixed silence."""
        msg = self.recv(timeout=timeout)
        assert pred(msg), "expected %s next, got %r" % (what, msg)
        return msg

    def wait_pings(self, n, timeout=10.0):
        """Reads, answering pings, until n pings came in all; a message, a
        close or EOF before that fails."""
        deadline = time.time() + ft.scaled(timeout)
        while self.pings < n:
            left = deadline - time.time()
            assert left > 0, "only %d of %d pings in time" % (self.pings, n)
            try:
                msg = self.recv(timeout=min(left, 0.5) / ft.SCALE)
            except socket.timeout:
                continue
            raise AssertionError("unexpected message %r" % (msg,))

"""Raw HTTP over a plain socket, for tests that must see exactly what the
server does with the bytes on the wire (a reset, a close without an
answer): the hostile suites and delivery's fault tests."""

import socket
import time

import fanout_test as ft


def connect(addr, timeout=5.0):
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=ft.scaled(timeout))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s, limit=1 << 20):
    """Reads one HTTP response head and its Content-Length body.
    Returns (status, headers, body, rest) or raises EOFError."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed before a response head (got %r)" % data[:200])
        data += chunk
        assert len(data) < limit
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0] in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    status = int(parts[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, hdrs, rest[:n], rest[n:]


def wait_closed(s, timeout):
    """True if the peer closes (EOF or reset) within timeout; data is drained."""
    deadline = time.time() + ft.scaled(timeout)
    while time.time() < deadline:
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True
    return False

"""Helpers for fanout-ingest's integration tests: an independent XXH32 and
partitioner, a small msgpack reader for the envelope, reading records back
with kcat, and HTTP clients (keep-alive and raw bytes)."""

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402

API_KEY = "test-key-1"
API_KEY2 = "test-key-2"

# ---- XXH32 (seed 0) and the user-hash range partitioner, written from the spec --------

P1, P2, P3, P4, P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
M32 = 0xFFFFFFFF


def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & M32


def xxh32(data, seed=0):
    n = len(data)
    i = 0
    if n >= 16:
        v1 = (seed + P1 + P2) & M32
        v2 = (seed + P2) & M32
        v3 = seed & M32
        v4 = (seed - P1) & M32
        while i + 16 <= n:
            for k in range(4):
                lane = struct.unpack_from("<I", data, i + 4 * k)[0]
                v = (v1, v2, v3, v4)[k]
                v = _rotl((v + lane * P2) & M32, 13) * P1 & M32
                if k == 0:
                    v1 = v
                elif k == 1:
                    v2 = v
                elif k == 2:
                    v3 = v
                else:
                    v4 = v
            i += 16
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & M32
    else:
        h = (seed + P5) & M32
    h = (h + n) & M32
    while i + 4 <= n:
        h = (h + struct.unpack_from("<I", data, i)[0] * P3) & M32
        h = _rotl(h, 17) * P4 & M32
        i += 4
    while i < n:
        h = (h + data[i] * P5) & M32
        h = _rotl(h, 11) * P1 & M32
        i += 1
    h ^= h >> 15
    h = h * P2 & M32
    h ^= h >> 13
    h = h * P3 & M32
    h ^= h >> 16
    return h


def partition_of(key, partitions):
    if isinstance(key, str):
        key = key.encode()
    return (xxh32(key) * partitions) >> 32


# ---- msgpack (just what the envelope uses) -------------------------------------------------

class Unpacker:
    def __init__(self, b):
        self.b = b
        self.i = 0

    def take(self, n):
        if self.i + n > len(self.b):
            raise ValueError("truncated msgpack")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def u(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def obj(self):
        t = self.take(1)[0]
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 0x100
        if 0x80 <= t <= 0x8F:
            return self.map(t & 0x0F)
        if 0x90 <= t <= 0x9F:
            return [self.obj() for _ in range(t & 0x0F)]
        if 0xA0 <= t <= 0xBF:
            return self.take(t & 0x1F).decode()
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if t in simple:
            return simple[t]
        if t == 0xC4:
            return bytes(self.take(self.u(">B")))
        if t == 0xC5:
            return bytes(self.take(self.u(">H")))
        if t == 0xC6:
            return bytes(self.take(self.u(">I")))
        ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if t in ints:
            return self.u(ints[t])
        if t == 0xD9:
            return self.take(self.u(">B")).decode()
        if t == 0xDA:
            return self.take(self.u(">H")).decode()
        if t == 0xDB:
            return self.take(self.u(">I")).decode()
        if t == 0xDE:
            return self.map(self.u(">H"))
        if t == 0xDF:
            return self.map(self.u(">I"))
        raise ValueError("msgpack type 0x%02x not used by the envelope" % t)

    def map(self, n):
        return {self.obj(): self.obj() for _ in range(n)}


def decode_envelope(value):
    u = Unpacker(value)
    env = u.obj()
    if u.i != len(value):
        raise ValueError("trailing bytes after the envelope")
    return env


def _mp_str(s):
    b = s.encode() if isinstance(s, str) else s
    if len(b) < 32:
        return bytes([0xA0 | len(b)]) + b
    if len(b) < 256:
        return b"\xd9" + bytes([len(b)]) + b
    return b"\xda" + struct.pack(">H", len(b)) + b


def _mp_bin(b):
    if len(b) < 256:
        return b"\xc4" + bytes([len(b)]) + b
    if len(b) < 65536:
        return b"\xc5" + struct.pack(">H", len(b)) + b
    return b"\xc6" + struct.pack(">I", len(b)) + b


def encode_envelope(kind, target, payload, msg_id=None, ts=None):
    """Builds an envelope by hand (for intake tests)."""
    msg_id = msg_id or uuid.uuid4().bytes
    ts = ts or int(time.time() * 1000)
    fields = [("v", b"\x01"), ("id", _mp_bin(msg_id)), ("k", _mp_str(kind)),
              ("t", _mp_str(target)), ("p", _mp_bin(payload)),
              ("ct", _mp_str("application/json")), ("ts", b"\xd3" + struct.pack(">q", ts))]
    out = bytes([0x80 | len(fields)])
    for k, v in fields:
        out += _mp_str(k) + v
    return out


def check_envelope(value, kind, target, data):
    """Decodes value and checks it against what was sent; returns the envelope."""
    env = decode_envelope(value)
    assert env["v"] == 1, env
    assert env["k"] == kind, env
    assert env["t"] == target, env
    assert isinstance(env["id"], bytes) and len(env["id"]) == 16, env
    assert (env["id"][6] >> 4) == 7, "id is not a UUIDv7: %r" % env["id"]
    assert json.loads(env["p"].decode()) == data, (env["p"], data)
    assert env.get("ct", "application/json") == "application/json", env
    assert abs(env["ts"] - time.time() * 1000) < 600_000, env
    return env


def id_text(raw):
    return str(uuid.UUID(bytes=raw))


# ---- reading records back ---------------------------------------------------------------------

def read_topic(bootstrap, topic, timeout=15):
    """Every record of topic, as dicts: partition, offset, key, value, headers."""
    fmt = "REC %p %o %K %S\n%k%s\nHDR %h\n"
    p = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e",
                        "-q", "-f", fmt], capture_output=True, timeout=ft.scaled(timeout))
    out = p.stdout
    recs = []
    i = 0
    while i < len(out):
        nl = out.index(b"\n", i)
        head = out[i:nl].decode().split()
        assert head[0] == "REC", out[i:i + 80]
        part, off, klen, vlen = int(head[1]), int(head[2]), int(head[3]), int(head[4])
        i = nl + 1
        key = out[i:i + max(klen, 0)] if klen >= 0 else None
        i += max(klen, 0)
        val = out[i:i + max(vlen, 0)] if vlen >= 0 else None
        i += max(vlen, 0)
        assert out[i:i + 5] == b"\nHDR ", out[i:i + 20]
        nl = out.index(b"\n", i + 5)
        hdr_text = out[i + 5:nl].decode("utf-8", "replace")
        i = nl + 1
        recs.append({"partition": part, "offset": off, "key": key, "value": val,
                     "headers": hdr_text})
    return recs


def wait_records(bootstrap, topic, pred, count=1, timeout=15):
    """Polls topic until `count` records satisfy pred; returns them."""
    deadline = time.time() + ft.scaled(timeout)
    while True:
        got = [r for r in read_topic(bootstrap, topic) if pred(r)]
        if len(got) >= count:
            return got
        if time.time() > deadline:
            raise AssertionError("only %d of %d records in %s" % (len(got), count, topic))
        time.sleep(0.2)


_seen = {}


def find_by_id(bootstrap, topic, msg_id, timeout=15):
    """The record whose envelope id is msg_id (text form)."""
    def pred(r):
        try:
            return id_text(decode_envelope(r["value"])["id"]) == msg_id
        except Exception:
            return False
    for r in _seen.get((bootstrap, topic), []):
        if pred(r):
            return r
    deadline = time.time() + ft.scaled(timeout)
    while True:
        recs = read_topic(bootstrap, topic)
        _seen[(bootstrap, topic)] = recs
        got = [r for r in recs if pred(r)]
        if got:
            return got[0]
        if time.time() > deadline:
            raise AssertionError("no record with id %s in %s" % (msg_id, topic))
        time.sleep(0.2)


# ---- HTTP ------------------------------------------------------------------------------------

class Client:
    """A keep-alive HTTP/1.1 client."""

    def __init__(self, host, port, key=API_KEY, timeout=20):
        self.conn = http.client.HTTPConnection(host, port, timeout=ft.scaled(timeout))
        self.key = key

    def request(self, method, path, body=None, headers=None, ctype="application/json"):
        h = {}
        if self.key is not None:
            h["Authorization"] = "Bearer " + self.key
        if body is not None and ctype is not None:
            h["Content-Type"] = ctype
        if headers:
            h.update(headers)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        t0 = time.time()
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        r.elapsed = time.time() - t0
        r.body = data
        try:
            r.json = json.loads(data) if data else None
        except ValueError:
            r.json = None
        return r

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def close(self):
        self.conn.close()


def _complete(out, n):
    """True when out holds n complete Content-Length responses."""
    try:
        return len(parse_responses(out)) >= n
    except (ValueError, IndexError):
        return False


def raw(host, port, data, timeout=10, read_all=True, responses=None):
    """Sends raw bytes; returns everything read until the server closes (or
    the timeout, or `responses` complete responses). Each element of data (if
    a list) is sent separately."""
    s = socket.create_connection((host, port), timeout=ft.scaled(timeout))
    try:
        for chunk in (data if isinstance(data, list) else [data]):
            s.sendall(chunk)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
            if not read_all and b"\r\n\r\n" in out:
                break
            if responses is not None and _complete(out, responses):
                break
        return out
    finally:
        s.close()


def parse_responses(data):
    """Splits raw bytes into [(status, headers, body)] (Content-Length bodies)."""
    out = []
    i = 0
    while i < len(data):
        end = data.index(b"\r\n\r\n", i)
        head = data[i:end].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if end + 4 + n > len(data):
            raise ValueError("incomplete response")
        body = data[end + 4:end + 4 + n]
        out.append((status, headers, body))
        i = end + 4 + n
    return out


def start_ingest(kafka, redis_addr=None, extra=(), env=None, name="ingest"):
    args = ["--listen", "127.0.0.1:0", "--kafka", kafka, "--api-keys",
            "%s,%s" % (API_KEY, API_KEY2), "--log-level", "info"]
    if redis_addr:
        args += ["--redis", redis_addr]
    args += list(extra)
    return ft.start_service("fanout-ingest", name, args, env=env)


def partitions(bootstrap, topic):
    """Partition count of topic, from kcat's metadata listing."""
    p = subprocess.run(["kcat", "-L", "-b", bootstrap, "-t", topic, "-J"], capture_output=True,
                       timeout=ft.scaled(15))
    meta = json.loads(p.stdout)
    for t in meta["topics"]:
        if t["topic"] == topic:
            return len(t["partitions"])
    raise AssertionError("topic %s not found" % topic)


def produce(bootstrap, topic, value, key=None, headers=(), partition=None):
    """Produces one record (value: bytes) with kcat, from a file so that any
    bytes go through unchanged; to `partition` if given."""
    import tempfile
    if value == b"":
        # kcat sends nothing for an empty file: an empty line from stdin instead
        argv = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t"]
        if partition is not None:
            argv += ["-p", str(partition)]
        for h in headers:
            argv += ["-H", h]
        subprocess.run(argv, input=(key or "").encode() + b"\t\n", check=True,
                       timeout=ft.scaled(15))
        return
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(value)
        path = f.name
    try:
        argv = ["kcat", "-P", "-b", bootstrap, "-t", topic]
        if partition is not None:
            argv += ["-p", str(partition)]
        if key is not None:
            argv += ["-k", key]
        for h in headers:
            argv += ["-H", h]
        subprocess.run(argv + [path], check=True, timeout=ft.scaled(15))
    finally:
        os.unlink(path)


def wait_ready(host, port, timeout=20):
    c = Client(host, port, key=None)
    try:
        ft.eventually(lambda: c.get("/readyz").status == 200, timeout=timeout, what="readyz 200")
    finally:
        c.close()

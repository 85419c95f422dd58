"""Helpers for fanout-ingest's integration tests: the partitioner and the
envelope from Debian's python3-xxhash and python3-msgpack (independent of the
project's code), reading records back with kcat, and HTTP clients
(keep-alive and raw bytes)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402
import msgpack  # noqa: E402  (python3-msgpack)

API_KEY = "test-key-1"
API_KEY2 = "test-key-2"

# ---- the partitioner and the envelope, from Debian's python3-xxhash and python3-msgpack ------
# Independent of the project's C code (common/hash.c, common/envelope.c), which is
# the point of a contract check.

partition_of = ft.partition_of


def decode_envelope(value):
    """The envelope as a dict (str keys, "id" and "p" as bytes); raises on
    anything that is not exactly one msgpack object."""
    return msgpack.unpackb(value, raw=False)


def encode_envelope(kind, target, payload, msg_id=None, ts=None):
    """Builds an envelope (for intake tests)."""
    return msgpack.packb({"v": 1, "id": msg_id or uuid.uuid4().bytes, "k": kind, "t": target,
                          "p": payload, "ct": "application/json",
                          "ts": ts or int(time.time() * 1000)}, use_bin_type=True)


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

#!/usr/bin/python3
"""Client tokens (GET /ws?token=JWT: browsers cannot set Authorization on a
WebSocket) must reach no log file of the shipped nginx configs.

nginx's error log context always carries the raw request line, query string
included, so a token lands there whenever a /ws request fails upstream or is
rejected by limit_req / limit_conn. Each shipped config (deploy/local/
nginx.conf.in rendered as the local cluster renders it, deploy/nginx/
fanout.conf, deploy/compose/nginx.conf) runs here as a real nginx on free
loopback ports, in front of delivery "servers" that misbehave the ways real
ones do:

- a port where nothing listens (a dead server: connection refused),
- one that answers 503 (a draining or full delivery server),
- one that closes without answering (a crash mid-request),
- one that accepts and never answers (holds the request open, so the
  per-address limits fill up).

Requests carry ?token=SECRETTOKEN123; afterwards no file nginx wrote (access
and error logs, its stderr) may contain it, and the access log must show
the failed and rejected requests (so the test looks at the logs that
matter)."""

import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import cluster
from fanout_test import SOURCE_DIR, Proc, free_port, log, run_tests, scaled, wait_port

TOKEN = "SECRETTOKEN123"
DEPLOY = os.path.join(SOURCE_DIR, "deploy")


class Refused:
    """A port that refuses connections: bound, never listening, so no other
    process can take it while the test runs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class Misbehaving:
    """A TCP server that reads a request and then either answers 503
    (mode "503") or closes without a word (mode "close"). mode "hang":
    listens and never accepts; the kernel completes the handshakes, so nginx
    sends its request and waits."""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = None
        if mode != "hang":
            self.sock.settimeout(0.2)
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                c.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if self.mode == "503":
                        c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        if self.thread:
            self.thread.join(5)
        self.sock.close()


def ws_open(port, path, tls=False, timeout=15.0):
    """Connects and sends a WebSocket upgrade request for path."""
    s = socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout))
    if tls:
        s = TLS.wrap_socket(s, server_hostname="ws.example.com")
    s.sendall(("GET %s HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n\r\n"
               % path).encode())
    return s


def ws_status(s):
    """The status of the response on s (None if none came before its
    timeout or the connection closed)."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ssl.SSLError, OSError):
        pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def ws_request(port, path, tls=False, timeout=15.0):
    with ws_open(port, path, tls, timeout) as s:
        return ws_status(s)


# The test's own certificate: not verified.
TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE

PATHS = ["/ws?token=%s" % TOKEN, "/ws?user=alice&token=%s" % TOKEN]


class Nginx:
    """One shipped config running on loopback: render(servers) returns the
    config text for the given delivery addresses; port/tls say where /ws
    is."""

    def __init__(self, name, render, port, tls):
        self.name = name
        self.render = render
        self.port = port
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="fanout-nginx-logs-%s-" % name)
        self.proc = None
        self.runs = 0

    def start(self, delivery, ingest):
        self.runs += 1
        d = os.path.join(self.dir, "run%d" % self.runs)
        os.makedirs(os.path.join(d, "tmp"))
        os.makedirs(os.path.join(d, "logs"))
        conf = self.render(d, delivery, ingest)
        t = subprocess.run(["nginx", "-t", "-p", d, "-c", conf, "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
        assert t.returncode == 0, "%s: nginx -t failed:\n%s" % (self.name, t.stderr)
        self.proc = Proc("nginx-" + self.name, ["nginx", "-p", d, "-c", conf, "-e", "stderr",
                                                "-g", "daemon off;"],
                         logdir=os.path.join(self.dir, "stderr"))
        wait_port("127.0.0.1", self.port, timeout=10)
        return d

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def files(self):
        for root, _dirs, names in os.walk(self.dir):
            for n in names:
                if n.endswith(".pem"):
                    continue
                yield os.path.join(root, n)


def user_line():
    # As tests/e2e/cluster.py: one process (no master), so stopping it by PID
    # stops all of it; root needs "user root" for the workers' temp dirs.
    return "user root;\nmaster_process off;" if os.geteuid() == 0 else "master_process off;"


def render_local(port):
    def render(d, delivery, ingest):
        conf = os.path.join(d, "nginx.conf")
        cluster.render_nginx(cluster.TEMPLATE, conf, {
            "DIR": d, "LISTEN": "127.0.0.1:%d" % port, "WORKERS": "1",
            "WORKER_CONNECTIONS": "8192", "USER_LINE": user_line(),
            "DELIVERY_SERVERS": "\n".join(
                "        server %s max_fails=1 fail_timeout=3s;" % a for a in delivery),
            "INGEST_SERVERS": "\n".join(
                "        server %s max_fails=1 fail_timeout=2s;" % a for a in ingest)})
        return conf
    return render


def set_servers(text, upstream, addrs, extra):
    """Replaces the server lines of `upstream NAME { ... }`."""
    m = re.search(r"upstream %s \{(.*?)\n\s*\}" % upstream, text, re.S)
    assert m, "no upstream %s" % upstream
    body = re.sub(r"\n\s*server \S+[^;\n]*;", "", m.group(1))
    body += "".join("\n    server %s %s;" % (a, extra) for a in addrs)
    return text[:m.start(1)] + body + text[m.end(1):]


def temp_paths(d):
    return "".join("%s_temp_path %s/tmp/%s;\n" % (k, d, k.split("_")[0])
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def cert(d):
    c, k = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", k, "-out", c],
                   check=True, capture_output=True, timeout=60)
    return c, k


def render_production(port, port80):
    """deploy/nginx/fanout.conf is an http-context file for conf.d: wrapped
    in a main config whose error log is at notice (stricter than Debian's
    default, error), with the paths moved into the run dir."""
    def render(d, delivery, ingest):
        text = open(os.path.join(DEPLOY, "nginx", "fanout.conf")).read()
        text = set_servers(text, "fanout_delivery", delivery, "max_fails=1 fail_timeout=3s")
        text = set_servers(text, "fanout_ingest", ingest, "max_fails=1 fail_timeout=2s")
        c, k = cert(d)
        text = text.replace("/etc/ssl/fanout/fullchain.pem", c)
        text = text.replace("/etc/ssl/fanout/privkey.pem", k)
        text = text.replace("/var/log/nginx/", d + "/logs/")
        text = re.sub(r"listen 443 ssl;", "listen 127.0.0.1:%d ssl;" % port, text)
        text = re.sub(r"listen 80;", "listen 127.0.0.1:%d;" % port80, text)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("%s\npid %s/nginx.pid;\nerror_log %s/logs/error.log notice;\n"
                    "events {}\nhttp {\n%saccess_log %s/logs/access.log;\n%s\n}\n"
                    % (user_line(), d, d, temp_paths(d), d, text))
        return conf
    return render


def render_compose(port):
    """deploy/compose/nginx.conf is a whole nginx.conf (the official image's
    logs are symlinks to stdout/stderr): its main error log is nginx's
    default, here put in the run dir at notice."""
    def render(d, delivery, ingest):
        text = open(os.path.join(DEPLOY, "compose", "nginx.conf")).read()
        text = set_servers(text, "fanout_delivery", delivery, "max_fails=1 fail_timeout=3s")
        text = set_servers(text, "fanout_ingest", ingest, "max_fails=1 fail_timeout=2s")
        text = text.replace("/dev/stdout", d + "/logs/stdout.log")
        text = text.replace("/var/log/nginx/", d + "/logs/")
        text = re.sub(r"listen 80;", "listen 127.0.0.1:%d;" % port, text)
        text = text.replace("worker_processes auto;", "worker_processes 1;")
        text = text.replace("http {", "http {\n" + temp_paths(d), 1)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("%s\npid %s/nginx.pid;\nerror_log %s/logs/error.log notice;\n%s"
                    % (user_line(), d, d, text))
        return conf
    return render


def ws_limit(text):
    """The limit_conn on /ws of a config text (None without one)."""
    m = re.search(r"location = /ws \{.*?limit_conn \S+ (\d+);", text, re.S)
    return int(m.group(1)) if m else None


def check_config(ng, config_text):
    """Runs the two scenarios against ng and checks every file it wrote."""
    refused, answer503, closer = Refused(), Misbehaving("503"), Misbehaving("close")
    hang = Misbehaving("hang")
    held = []
    statuses_fail, rejected = [], []
    try:
        # 1. Upstream failures: every server fails in its own way; with
        # max_fails=1 they are soon all marked down ("no live upstreams").
        ng.start([refused.addr, answer503.addr, closer.addr], [refused.addr])
        for _ in range(4):
            for p in PATHS:
                statuses_fail.append(ws_request(ng.port, p, tls=ng.tls))
        ng.stop()
        log("%s: upstream failures answered %s" % (ng.name, statuses_fail))

        # 2. Limits: requests to a server that never answers stay open, so
        # the per-address connection limit (and, faster, the handshake rate
        # limit where there is one) fills up; what comes back quickly is a
        # rejection.
        limit = ws_limit(config_text)
        ng.start([hang.addr], [refused.addr])
        sel = selectors.DefaultSelector()
        deadline = time.time() + scaled(60)
        sent = 0
        while not rejected and time.time() < deadline and sent < (limit or 200) + 200:
            for _ in range(50):
                s = ws_open(ng.port, PATHS[sent % 2], tls=ng.tls)
                sent += 1
                held.append(s)
                sel.register(s, selectors.EVENT_READ)
            # Whatever answers at once was rejected (the server never
            # answers). A TLS socket also turns readable for TLS 1.3 session
            # tickets: those stay registered.
            for key, _ in sel.select(0.3):
                key.fileobj.settimeout(0.05)
                st = ws_status(key.fileobj)
                if st is not None:
                    sel.unregister(key.fileobj)
                    rejected.append(st)
        sel.close()
        log("%s: %d requests sent, rejections: %s" % (ng.name, sent, rejected[:5]))
    finally:
        for s in held:
            s.close()
        ng.stop()
        for u in (refused, answer503, closer, hang):
            u.close()

    # The token in no file nginx wrote.
    leaks = []
    for path in ng.files():
        with open(path, "rb") as f:
            for line in f:
                if TOKEN.encode() in line:
                    leaks.append("%s: %s" % (os.path.relpath(path, ng.dir),
                                             line.decode("utf-8", "replace").rstrip()))
    assert not leaks, "%s: the token reached nginx's logs:\n  %s" % (
        ng.name, "\n  ".join(leaks[:10]))

    # And the logs did record what happened (without the token).
    assert all(s in (502, 503, 504) for s in statuses_fail), statuses_fail
    access = ""
    for path in ng.files():
        if "access" in os.path.basename(path) or "stdout" in os.path.basename(path):
            with open(path, errors="replace") as f:
                access += f.read()
    assert re.search(r'"GET /ws" 50[234] ', access), "%s: no failed /ws in the access log:\n%s" % (
        ng.name, access[-2000:])
    assert limit is not None, "%s: no limit_conn on /ws" % ng.name
    assert rejected and rejected[0] == 429, "%s: no limit rejection (429): %s" % (
        ng.name, rejected)
    assert re.search(r'"GET /ws" 429 ', access), "%s: no 429 in the access log" % ng.name


def test_local_config_logs_no_token():
    port = free_port()
    ng = Nginx("local", render_local(port), port, tls=False)
    try:
        check_config(ng, open(cluster.TEMPLATE).read())
    finally:
        shutil.rmtree(ng.dir, ignore_errors=True)


def test_production_config_logs_no_token():
    port, port80 = free_port(), free_port()
    ng = Nginx("production", render_production(port, port80), port, tls=True)
    try:
        check_config(ng, open(os.path.join(DEPLOY, "nginx", "fanout.conf")).read())
        # Plain HTTP: redirected, and not logged with the query either.
        r = Refused()
        ng.start([r.addr], [r.addr])
        try:
            st = ws_request(port80, PATHS[0])
            assert st == 301, st
        finally:
            ng.stop()
            r.close()
        for path in ng.files():
            with open(path, "rb") as f:
                assert TOKEN.encode() not in f.read(), "token in %s" % path
    finally:
        shutil.rmtree(ng.dir, ignore_errors=True)


def test_compose_config_logs_no_token():
    port = free_port()
    ng = Nginx("compose", render_compose(port), port, tls=False)
    try:
        check_config(ng, open(os.path.join(DEPLOY, "compose", "nginx.conf")).read())
    finally:
        shutil.rmtree(ng.dir, ignore_errors=True)


if __name__ == "__main__":
    run_tests(globals())

#!/usr/bin/python3
"""deploy/k8s/pod-deletion-cost.sh (the delivery pods' sidecar) outside
Kubernetes: run by /bin/sh against a real fanout-delivery's /metrics (real
redis-server, the embedded broker, WebSocket clients connecting and leaving),
with a small local HTTPS server standing in for the API server (a
self-signed certificate given as the service account's ca.crt). It records
every request: the script must PATCH only its own pod, with the service
account token, as a merge patch of the one annotation, carrying the
connection count the delivery reports; again only when the count changes;
retry after a failed PATCH; read a rotated token; refuse a server its CA
file does not trust; write nothing while /metrics is unreachable; and stop at
once on SIGTERM."""

import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration", "delivery"))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient  # noqa: E402

SCRIPT = os.path.join(ft.SOURCE_DIR, "deploy", "k8s", "pod-deletion-cost.sh")
ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
POD, NS = "fanout-delivery-7d9f-abcde", "fanout"
INTERVAL = 0.3  # seconds between reads in these tests (15 in delivery.yaml)


class ApiServer:
    """The stand-in: records (method, path, headers, body) of every request
    and answers each with the next status of `statuses` (200 when empty)."""

    def __init__(self, certfile, keyfile):
        self.requests, self.statuses, self.lock = [], [], threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.requests.append((self.command, self.path, dict(self.headers), body))
                    status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_PUT = do_POST = do_PATCH  # recorded too, so the test sees them

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = "https://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def patches(self):
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.httpd.shutdown()


def make_cert(d, name):
    """A self-signed certificate for 127.0.0.1 (openssl): (cert, key)."""
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=" + name, "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def setup_module():
    global TMP, S, D, API, SA
    for tool in ("openssl", "curl", "awk"):
        assert shutil.which(tool), "%s missing: run deploy/install-deps.sh" % tool
    TMP = tempfile.mkdtemp(prefix="fanout-deletion-cost-")
    cert, key = make_cert(TMP, "apiserver")
    API = ApiServer(cert, key)
    # The service account directory as the projected volume lays it out.
    SA = os.path.join(TMP, "sa")
    os.makedirs(SA)
    shutil.copy(cert, os.path.join(SA, "ca.crt"))
    write(os.path.join(SA, "token"), "token-one")
    write(os.path.join(SA, "namespace"), NS)
    S = dtest.Stack()
    D = S.start("A")


def teardown_module():
    S.stop()
    API.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # as the kubelet swaps the projected files


def start_script(sa_dir=None, metrics_url=None, interval=INTERVAL, api=None):
    env = {"POD_NAME": POD, "SA_DIR": sa_dir or SA, "INTERVAL": str(interval),
           "METRICS_URL": metrics_url or "http://%s/metrics" % D.addr,
           "API_SERVER": api or API.url}
    # POD_NAMESPACE unset on purpose: read from SA_DIR/namespace.
    env = {**{k: v for k, v in os.environ.items() if k != "POD_NAMESPACE"}, **env}
    return ft.Proc("deletion-cost", ["/bin/sh", SCRIPT], env=env, group=True)


def connections():
    return int(dtest.metrics(D)["fanout_delivery_connections"])


def cost_of(req):
    body = json.loads(req[3])
    assert body == {"metadata": {"annotations": {ANNOTATION: body["metadata"]["annotations"]
                                                 [ANNOTATION]}}}, body
    return body["metadata"]["annotations"][ANNOTATION]


def wait_patches(n, timeout=10):
    return ft.eventually(lambda: len(API.patches()) >= n and API.patches(), timeout=timeout,
                         interval=0.05, what="%d PATCH requests" % n)


def test_patches_own_pod_with_the_connection_count_on_change_only():
    before = len(API.patches())
    p = start_script()
    clients = []
    try:
        reqs = wait_patches(before + 1)
        method, path, headers, _ = reqs[before]
        assert method == "PATCH", method
        assert path == "/api/v1/namespaces/%s/pods/%s" % (NS, POD), path
        assert headers.get("Authorization") == "Bearer token-one", headers
        assert headers.get("Content-Type") == "application/merge-patch+json", headers
        assert cost_of(reqs[before]) == "0" == str(connections())
        # Steady count: no more writes over ~8 rounds.
        time.sleep(8 * INTERVAL)
        assert len(API.patches()) == before + 1, API.patches()[before:]
        # Three clients connect: a write carries 3 (the gauge's value; a
        # read between two connects may have written 1 or 2 first).
        clients = [WsClient(D.addr, token=dtest.token("dc%d" % i)) for i in range(3)]
        ft.eventually(lambda: connections() == 3, what="3 connections")
        ft.eventually(lambda: cost_of(API.patches()[-1]) == "3", what="a PATCH with 3")
        # One leaves: 2.
        clients.pop().close()
        ft.eventually(lambda: cost_of(API.patches()[-1]) == "2", what="a PATCH with 2")
        values = [cost_of(r) for r in API.patches()[before:]]
        # Only changes were written (a value may be skipped between reads,
        # never repeated back to back).
        assert all(a != b for a, b in zip(values, values[1:])), values
        assert all(r[1] == path and r[0] == "PATCH" for r in API.patches()[before:])
    finally:
        for c in clients:
            c.close()
        assert p.stop(timeout=5) == 0


def test_failed_patch_is_retried_and_rotated_token_is_read():
    ft.eventually(lambda: connections() == 0, what="no connections")
    before = len(API.patches())
    API.statuses[:] = [500, 403]
    p = start_script()
    try:
        reqs = wait_patches(before + 3)
        # The same value again after each failure (not taken as written).
        assert [cost_of(r) for r in reqs[before:before + 3]] == ["0", "0", "0"], reqs[before:]
        assert p.log_count(r"failed \(500\)") >= 1 and p.log_count(r"failed \(403\)") >= 1, \
            p.log_tail()
        time.sleep(5 * INTERVAL)
        assert len(API.patches()) == before + 3, API.patches()[before:]
        # The kubelet rotates the token: the next write uses the new one.
        write(os.path.join(SA, "token"), "token-two")
        c = WsClient(D.addr, token=dtest.token("rot"))
        try:
            reqs = wait_patches(before + 4)
            assert reqs[-1][2].get("Authorization") == "Bearer token-two", reqs[-1][2]
            assert cost_of(reqs[-1]) == "1", reqs[-1]
        finally:
            c.close()
            write(os.path.join(SA, "token"), "token-one")
    finally:
        API.statuses[:] = []
        assert p.stop(timeout=5) == 0


def test_untrusted_server_and_unreachable_metrics_write_nothing():
    before = len(API.patches())
    # ca.crt of another authority: curl must refuse the stand-in's certificate.
    other = os.path.join(TMP, "other-sa")
    os.makedirs(other, exist_ok=True)
    shutil.copy(make_cert(TMP, "someone-else")[0], os.path.join(other, "ca.crt"))
    write(os.path.join(other, "token"), "token-one")
    write(os.path.join(other, "namespace"), NS)
    p1 = start_script(sa_dir=other)
    # /metrics on a port where nothing listens (delivery not up yet).
    p2 = start_script(metrics_url="http://127.0.0.1:%d/metrics" % ft.free_port())
    try:
        ft.eventually(lambda: p1.log_count(r"PATCH .* failed \(000") >= 2, what="TLS refusals")
        ft.eventually(lambda: p2.log_count(r"no fanout_delivery_connections in") >= 2,
                      what="metrics unreachable, twice")
        assert len(API.patches()) == before, API.patches()[before:]
    finally:
        assert p1.stop(timeout=5) == 0 and p2.stop(timeout=5) == 0


def test_sigterm_stops_it_at_once_and_missing_pod_name_is_an_error():
    p = start_script(interval=15)
    ft.eventually(lambda: p.log_count(ANNOTATION) >= 1, what="first write")
    t0 = time.time()
    assert p.stop(timeout=5) == 0
    assert time.time() - t0 < ft.scaled(2), "SIGTERM took %.1fs" % (time.time() - t0)
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "POD_NAMESPACE")}
    r = subprocess.run(["/bin/sh", SCRIPT], env={**env, "SA_DIR": SA}, capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 2 and "POD_NAME is not set" in r.stderr, (r.returncode, r.stderr)


def test_autoscaler_metrics_exist():
    """Every delivery metric the autoscalers and the sidecar name (keda.yaml,
    the plain HPA, the adapter rules, the script's default) is one this
    fanout-delivery exports, as a plain gauge sample."""
    names = set()
    for parts in (("k8s", "keda.yaml"), ("k8s-without-keda", "delivery-hpa.yaml"),
                  ("k8s", "prometheus-adapter-config.yaml"), ("k8s", "pod-deletion-cost.sh")):
        with open(os.path.join(ft.SOURCE_DIR, "deploy", *parts)) as f:
            # Comments may name other metrics; the objects' text is what counts.
            text = "\n".join(ln for ln in f if not ln.lstrip().startswith("#"))
        found = set(re.findall(r"fanout_delivery_[a-z_]+", text))
        assert found, parts
        names |= found
    exported = dtest.metrics(D)
    with urllib.request.urlopen("http://%s/metrics" % D.addr, timeout=5) as r:
        text = r.read().decode()
    for n in sorted(names):
        assert n in exported, "%s is not exported by fanout-delivery" % n
        assert "# TYPE %s gauge" % n in text, n
    ft.log("metrics checked: %s" % ", ".join(sorted(names)))


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

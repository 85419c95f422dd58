"""Operator tools (issue 12) against running services (real redis-server,
the embedded Kafka, fanout-delivery and fanout-ingest):

- fanout-gentoken mints a token (secret from --jwt-secret or
  FANOUT_JWT_SECRET, as delivery reads it) that a delivery server accepts:
  the WebSocket opens, the rooms claim lets it join its room and a send
  reaches it; an expired one (--exp in the past) is refused with 401, and a
  token signed with another secret too. Bad input exits 2 with one line.
- every metric deploy/grafana/fanout.json names is exported by a running
  delivery or ingest (their /metrics), except fanout_delivery_resumes_total
  and fanout_delivery_resume_window_bytes while issue 9 (resume from the
  log) has not added them: those two alone may be missing, and the test
  prints whether they are."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import HttpError, WsClient  # noqa: E402

DASHBOARD = os.path.join(ft.SOURCE_DIR, "deploy", "grafana", "fanout.json")
# Named by the dashboard before the code that exports them lands (issue 9).
PENDING_ISSUE_9 = {"fanout_delivery_resumes_total", "fanout_delivery_resume_window_bytes"}
API_KEY = "operator-tools-key"

stack = dtest.Stack(partitions=2)
D = stack.start("A")
I = ft.start_service("fanout-ingest", "ingest", [
    "--listen", "127.0.0.1:0", "--redis", stack.redis.addr, "--kafka", stack.kafka.bootstrap,
    "--api-keys", API_KEY])  # intake on (the default): its metrics are on the dashboard


def gentoken(*args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "FANOUT_JWT_SECRET"}
    full.update(env or {})
    return subprocess.run([ft.find_binary("fanout-gentoken"), *args], capture_output=True,
                          text=True, env=full, timeout=ft.scaled(10))


def mint(*args, **kw):
    r = gentoken(*args, **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout.strip()


def handshake_status(token):
    try:
        c = WsClient(D.addr, token=token)
    except HttpError as e:
        return e.status, None
    return 101, c


def test_gentoken_token_accepted():
    stack.wait_group_settled()
    # The secret from the environment, as delivery reads it.
    tok = mint("--sub", "alice", "--rooms", "lobby,news", "--ttl-s", "300",
               env={"FANOUT_JWT_SECRET": dtest.SECRET})
    status, c = handshake_status(tok)
    assert status == 101, status
    c.send_json({"type": "join", "room": "lobby"})
    m = c.recv(timeout=10)  # (with resume, joined also carries the room's pos)
    assert m.get("type") == "joined" and m.get("room") == "lobby", m
    # A room outside the claim is refused: the rooms claim is what we minted.
    c.send_json({"type": "join", "room": "other"})
    m = c.recv(timeout=10)
    assert m.get("type") == "error", m
    req = urllib.request.Request("http://%s/v1/send" % I.addr, method="POST",
                                 data=json.dumps({"user": "alice", "data": {"k": 1}}).encode(),
                                 headers={"Authorization": "Bearer " + API_KEY,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=ft.scaled(10)) as r:
        assert r.status == 202
    m = c.recv(timeout=15)
    assert m["type"] == "message" and m["data"] == {"k": 1}, m
    c.close()
    # The flag works too, and the claims are the ones asked for.
    tok = mint("--jwt-secret", dtest.SECRET, "--sub", "bob", "--ttl-s", "60")
    payload = json.loads(ft.base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
    assert payload["sub"] == "bob" and "rooms" not in payload, payload
    assert 55 <= payload["exp"] - time.time() <= 61, payload
    assert handshake_status(tok)[0] == 101


def test_gentoken_expired_and_wrong_secret_refused():
    expired = mint("--jwt-secret", dtest.SECRET, "--sub", "carol",
                   "--exp", str(int(time.time()) - 60))
    assert handshake_status(expired)[0] == 401
    other = mint("--jwt-secret", "another-secret-that-is-long-enough-0123", "--sub", "carol")
    assert handshake_status(other)[0] == 401
    # Bad input: one line, exit 2.
    for args, env, why in (([], {"FANOUT_JWT_SECRET": dtest.SECRET}, "--sub"),
                           (["--sub", "x"], {}, "jwt-secret"),
                           (["--sub", "x", "--jwt-secret", "short"], {}, "jwt-secret"),
                           (["--sub", "x", "--ttl-s", "0"], {"FANOUT_JWT_SECRET": dtest.SECRET},
                            "ttl-s")):
        r = gentoken(*args, env=env)
        assert r.returncode == 2 and r.stdout == "", (args, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0], (args, r.stderr)


def families(addr):
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=ft.scaled(5)) as r:
        text = r.read().decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_dashboard_metrics_exported():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []
    ids = set()
    for p in dash["panels"]:
        assert p["id"] not in ids, p["id"]
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        exprs += [t["expr"] for t in p["targets"]]
    named = set()
    for e in exprs:
        named |= set(re.findall(r"\bfanout_[a-z0-9_]+", e))
    exported = families(D.addr) | families(I.addr)
    missing = named - exported
    assert missing <= PENDING_ISSUE_9, "the dashboard names metrics nobody exports: %s" % sorted(
        missing - PENDING_ISSUE_9)
    ft.log("dashboard: %d metrics named, %d exported; not yet exported (issue 9): %s" % (
        len(named), len(named & exported), sorted(missing) or "none"))
    # The panels the issue asks for are there.
    for want in ("fanout_delivery_connections", "fanout_delivery_messages_in_total",
                 "fanout_delivery_frames_out_total", "fanout_delivery_consumer_lag",
                 "fanout_delivery_queued_bytes", "fanout_delivery_paused_partitions",
                 "fanout_delivery_resumes_total", "fanout_delivery_redis_errors_total",
                 "fanout_delivery_kafka_errors_total", "fanout_ingest_http_requests_total",
                 "fanout_ingest_kafka_records_total", "fanout_ingest_presence_errors_total"):
        assert want in named, want


def test_zz_clean_exit():
    for pr in (D, I):
        rc = pr.stop(timeout=30)
        assert rc == 0, "%s exited %s\n%s" % (pr.name, rc, pr.log_tail())
    stack.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

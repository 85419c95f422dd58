"""Redis with a password (issue 13, M5): delivery and ingest send AUTH first
on every Redis connection (--redis-password / FANOUT_REDIS_PASSWORD, and
--redis-user for a Redis 6 ACL user). With the right credentials the whole
path works (registry, Pub/Sub between servers, room channels, presence);
with a wrong one the service never counts Redis as up (/readyz 503 for
delivery, presence 503 for ingest), logs "authentication failed" and keeps
retrying, and no password ever reaches a log."""

import json
import os
import socket
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient, http_get  # noqa: E402

PW = "pw-Zq9-default-sekret"      # the default user's password (requirepass)
ACL_PW = "acl-Xy7-fanout-sekret"  # the ACL user "fanout"
WRONG = "wrong-Kp3-not-it"
API_KEY = "auth-test-key"

redis = ft.Redis(requirepass=PW)
assert redis.cli("ACL", "SETUSER", "fanout", "on", ">" + ACL_PW, "~*", "&*", "+@all") == "OK"
kafka = ft.KafkaDev(partitions=4)
procs = []


def delivery(sid, env=None, *extra):
    args = ["--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
            "--server-id", sid, "--jwt-secret", dtest.SECRET, "--session-timeout-ms", "6000",
            "--alive-ttl-ms", "1500", "--room-mode", "redis", "--log-level", "debug", *extra]
    pr = ft.start_service("fanout-delivery", "delivery-" + sid, args, env=env)
    pr.sid = sid
    procs.append(pr)
    return pr


def ingest(name, env=None, *extra):
    args = ["--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
            "--api-keys", API_KEY, "--intake", "false", "--log-level", "debug", *extra]
    pr = ft.start_service("fanout-ingest", name, args, env=env)
    procs.append(pr)
    return pr


def api(pr, method, path, body=None):
    req = urllib.request.Request("http://%s%s" % (pr.addr, path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + API_KEY,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=ft.scaled(10)) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def readyz(pr):
    return http_get(pr.addr, "/readyz")[0]


def log_text(pr):
    with open(pr.logpath, "rb") as f:
        return f.read().decode("utf-8", "replace")


# Password from the environment (default user) on A, flags with the ACL user
# on B; ingest with the ACL user from the environment.
A = delivery("A", {"FANOUT_REDIS_PASSWORD": PW})
B = delivery("B", None, "--redis-user", "fanout", "--redis-password", ACL_PW)
I = ingest("ingest", {"FANOUT_REDIS_USER": "fanout", "FANOUT_REDIS_PASSWORD": ACL_PW})


def assigned(pr):
    return dtest.metrics(pr).get("fanout_delivery_assigned_partitions", 0)


def test_right_credentials_everything_works():
    for pr in (A, B):
        ft.eventually(lambda: readyz(pr) == 200, timeout=15, what="%s ready" % pr.sid)
    # both groups (users, rooms) spread over A and B
    ft.eventually(lambda: assigned(A) + assigned(B) == 2 * kafka.partitions and
                  assigned(A) > 0 and assigned(B) > 0, timeout=40, interval=0.2,
                  what="consumer groups settled")
    clients = {pr.sid: WsClient(pr.addr, token=dtest.token("u" + pr.sid, rooms=["lobby"]))
               for pr in (A, B)}
    for c in clients.values():
        c.send_json({"type": "join", "room": "lobby"})
        assert ft.joined_reply(c.recv(timeout=10)) == {"type": "joined", "room": "lobby"}
    ft.eventually(lambda: redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1] == "2",
                  what="both servers subscribed to the room channel")
    ft.eventually(lambda: api(I, "GET", "/v1/presence/uA")[1].get("online") is True,
                  what="presence online (registry written, read through AUTH)")
    st, body = api(I, "GET", "/v1/presence/uB")
    assert st == 200 and body["online"] is True, (st, body)
    # Each user's partition is consumed by A or B: half of these cross over
    # Pub/Sub (ws:server:{id}) on the authenticated connections.
    for i in range(4):
        for sid, c in clients.items():
            st, body = api(I, "POST", "/v1/send", {"user": "u" + sid, "data": {"i": i}})
            assert st == 202, (st, body)
            m = c.recv(timeout=15)
            assert m["type"] == "message" and m["data"] == {"i": i}, m
    # The rooms group starts a new partition at "latest": a broadcast produced
    # before that position is resolved is never consumed. Broadcast until one
    # reaches both clients (each try is a new record, none is resent).
    seen = {sid: set() for sid in clients}
    tries = [0]

    def broadcast_reached_both():
        st, body = api(I, "POST", "/v1/broadcast", {"room": "lobby",
                                                   "data": {"b": 1, "try": tries[0]}})
        assert st == 202, (st, body)
        tries[0] += 1
        for sid, c in clients.items():
            try:
                while not seen[sid]:
                    m = c.recv(timeout=3)
                    assert m["room"] == "lobby" and m["data"]["b"] == 1, m
                    seen[sid].add(m["data"]["try"])
            except socket.timeout:
                return False
        return True
    ft.eventually(broadcast_reached_both, timeout=45, interval=0, what="a broadcast at both")
    # Once each: a second broadcast (same room, same partition) comes after
    # any earlier try still on its way, and no try arrives twice.
    st, body = api(I, "POST", "/v1/broadcast", {"room": "lobby", "data": {"b": 2}})
    assert st == 202, (st, body)
    for sid, c in clients.items():
        while True:
            m = c.recv(timeout=15)
            assert m["room"] == "lobby", m
            if m["data"] == {"b": 2}:
                break
            assert m["data"]["b"] == 1 and m["data"]["try"] not in seen[sid], m
            seen[sid].add(m["data"]["try"])
        c.close()


def test_wrong_password_never_ready_and_not_logged():
    C = delivery("C", {"FANOUT_REDIS_PASSWORD": WRONG})
    J = ingest("ingest-bad", None, "--redis-password", WRONG)
    K = ingest("ingest-bad-user", {"FANOUT_REDIS_USER": "fanout",
                                   "FANOUT_REDIS_PASSWORD": WRONG})
    ft.eventually(lambda: "authentication failed" in log_text(C), timeout=15,
                  what="delivery logs the refused AUTH")
    # Retried with backoff: the connection error count keeps growing, and
    # Redis is never counted as up.
    n0 = dtest.metrics(C)["fanout_delivery_redis_connection_errors_total"]
    ft.eventually(lambda: dtest.metrics(C)["fanout_delivery_redis_connection_errors_total"] >
                  n0 + 2, timeout=20, what="delivery retries AUTH")
    assert readyz(C) == 503
    assert dtest.metrics(C).get("fanout_delivery_redis_up", 0) == 0
    for pr in (J, K):
        ft.eventually(lambda: "authentication failed" in log_text(pr), timeout=15,
                      what="ingest logs the refused AUTH")
        st, body = api(pr, "GET", "/v1/presence/uA")
        assert st == 503, (st, body)
        st, _h, body = http_get(pr.addr, "/readyz", headers={"Connection": "close"})
        assert json.loads(body)["redis"] is False, body
    line = [ln for ln in log_text(C).splitlines() if "authentication failed" in ln][0]
    assert "WRONGPASS" in line and ("name=registry" in line or "name=pubsub" in line), line
    line = [ln for ln in log_text(K).splitlines() if "authentication failed" in ln][0]
    assert "user=fanout" in line, line


def test_user_without_password_is_a_config_error():
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_REDIS")}
    for binary, extra in (("fanout-delivery", ["--jwt-secret", "x" * 32]), ("fanout-ingest", [])):
        p = subprocess.run([ft.find_binary(binary), "--redis-user", "fanout", "--check-config",
                            *extra], capture_output=True, text=True, env=env,
                           timeout=ft.scaled(10))
        assert p.returncode == 2, (binary, p.returncode, p.stderr)
        assert "redis-user needs redis-password" in p.stderr, p.stderr


def test_malformed_redis_address_exits_2_with_one_line():
    # Both services read --redis the same way (common/config.c): one
    # HOST:PORT; a comma (a node list, not supported yet), a missing port or
    # junk exit 2 with one line that names the flag.
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_REDIS")}
    for binary, extra in (("fanout-delivery", ["--jwt-secret", "x" * 32]), ("fanout-ingest", [])):
        for bad, why in (("a,b:6379", "single HOST:PORT"), ("redis", "HOST:PORT"),
                         ("redis:", "bad port"), ("re dis:6379", "HOST:PORT")):
            p = subprocess.run([ft.find_binary(binary), "--redis", bad, "--check-config", *extra],
                               capture_output=True, text=True, env=env, timeout=ft.scaled(10))
            assert p.returncode == 2, (binary, bad, p.returncode, p.stderr)
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1, (binary, bad, p.stderr)
            assert "redis=" in lines[0] and "flag --redis" in lines[0] and why in lines[0], lines


def test_zz_no_password_in_any_log_and_clean_exit():
    for pr in procs:
        assert pr.alive(), pr.log_tail()
        rc = pr.stop(timeout=30)
        assert rc == 0, "%s exited %s\n%s" % (pr.name, rc, pr.log_tail(60))
    for pr in procs:
        text = log_text(pr)
        for secret in (PW, ACL_PW, WRONG):
            assert secret not in text, "%s logged a password" % pr.name


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

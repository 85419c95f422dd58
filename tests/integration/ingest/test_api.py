"""fanout-ingest's HTTP API against the embedded Kafka and a real redis-server:
every endpoint and error status, with the records read back from the topics
(topic, key, partition, envelope)."""

import os
import signal
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402
import ingest_lib as L  # noqa: E402

KAFKA = os.environ.get("FANOUT_KAFKA") or ft.fixture_env("kafkadev")["FANOUT_KAFKA"]
REDIS = os.environ.get("FANOUT_REDIS") or ft.fixture_env("redis")["FANOUT_REDIS"]
REDIS_PORT = int(REDIS.rpartition(":")[2])
RUN = uuid.uuid4().hex[:8]

svc = L.start_ingest(KAFKA, REDIS, ["--intake", "false", "--max-body-bytes", "65536",
                                    "--batch-max-items", "50", "--redis-prefix", "t%s:" % RUN])
HOST, PORT = svc.host, svc.port
L.wait_ready(HOST, PORT)
P_USERS = L.partitions(KAFKA, "fanout.users")
P_ROOMS = L.partitions(KAFKA, "fanout.rooms")


def client(key=L.API_KEY):
    return L.Client(HOST, PORT, key=key)


def redis_cli(*args):
    import subprocess
    return subprocess.run(["redis-cli", "-p", str(REDIS_PORT), *args], capture_output=True,
                          text=True, timeout=10).stdout.strip()


def assert_error(r, status, text=None):
    assert r.status == status, (r.status, r.body)
    assert r.getheader("Content-Type") == "application/json", r.getheaders()
    assert isinstance(r.json, dict) and isinstance(r.json.get("error"), str), r.body
    if text is not None:
        assert text in r.json["error"], r.json


# ---- send / broadcast -------------------------------------------------------------------

def test_send_is_acknowledged_and_lands_on_the_user_partition():
    c = client()
    for i in range(12):
        user = "user-%s-%d" % (RUN, i)
        data = {"n": i, "text": "héllo ✓", "nested": [1, 2.5, None, True, {"a": "b"}]}
        r = c.post("/v1/send", {"user": user, "data": data})
        assert r.status == 202, (r.status, r.body)
        msg_id = r.json["id"]
        assert uuid.UUID(msg_id).version == 7, msg_id
        rec = L.find_by_id(KAFKA, "fanout.users", msg_id)
        assert rec["key"] == user.encode(), rec
        assert rec["partition"] == L.partition_of(user, P_USERS), (rec, P_USERS)
        L.check_envelope(rec["value"], "send", user, data)
    c.close()


def test_ids_sort_by_time():
    c = client()
    ids = [c.post("/v1/send", {"user": "sorter-" + RUN, "data": i}).json["id"] for i in range(20)]
    assert ids == sorted(ids), ids
    assert len(set(ids)) == len(ids)
    c.close()


def test_broadcast_lands_on_the_room_partition():
    c = client(L.API_KEY2)
    for i in range(6):
        room = "room-%s-%d" % (RUN, i)
        r = c.post("/v1/broadcast", {"room": room, "data": "hi %d" % i})
        assert r.status == 202, (r.status, r.body)
        rec = L.find_by_id(KAFKA, "fanout.rooms", r.json["id"])
        assert rec["key"] == room.encode()
        assert rec["partition"] == L.partition_of(room, P_ROOMS)
        L.check_envelope(rec["value"], "broadcast", room, "hi %d" % i)
    c.close()


def test_data_of_any_json_type():
    c = client()
    for data in [None, 0, -12, 3.25, "s", [], {}, [{"deep": [[[]]]}], True]:
        r = c.post("/v1/send", {"user": "types-" + RUN, "data": data})
        assert r.status == 202, (data, r.status, r.body)
        rec = L.find_by_id(KAFKA, "fanout.users", r.json["id"])
        L.check_envelope(rec["value"], "send", "types-" + RUN, data)
    c.close()


def test_chunked_body_is_accepted():
    body = b'{"user":"chunky-' + RUN.encode() + b'","data":{"k":"v"}}'
    req = (b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + L.API_KEY.encode() +
           b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n")
    chunks = b""
    for i in range(0, len(body), 7):
        part = body[i:i + 7]
        chunks += b"%x\r\n%s\r\n" % (len(part), part)
    chunks += b"0\r\n\r\n"
    (status, _h, rbody), = L.parse_responses(L.raw(HOST, PORT, req + chunks))
    assert status == 202, rbody
    import json
    rec = L.find_by_id(KAFKA, "fanout.users", json.loads(rbody)["id"])
    L.check_envelope(rec["value"], "send", "chunky-" + RUN, {"k": "v"})


# ---- batch ------------------------------------------------------------------------------

def test_batch_all_accepted():
    c = client()
    msgs = [{"user": "b-%s-%d" % (RUN, i), "data": i} for i in range(5)]
    msgs.append({"room": "br-" + RUN, "data": "to the room"})
    r = c.post("/v1/batch", {"messages": msgs})
    assert r.status == 202, (r.status, r.body)
    res = r.json["results"]
    assert len(res) == 6 and all(x["status"] == 202 for x in res), res
    for i in range(5):
        rec = L.find_by_id(KAFKA, "fanout.users", res[i]["id"])
        assert rec["partition"] == L.partition_of("b-%s-%d" % (RUN, i), P_USERS)
        L.check_envelope(rec["value"], "send", "b-%s-%d" % (RUN, i), i)
    rec = L.find_by_id(KAFKA, "fanout.rooms", res[5]["id"])
    L.check_envelope(rec["value"], "broadcast", "br-" + RUN, "to the room")
    c.close()


def test_batch_per_item_results():
    c = client()
    msgs = [{"user": "ok-" + RUN, "data": 1}, {"user": 5, "data": 1}, "not an object",
            {"data": 1}, {"user": "x", "room": "y", "data": 1}, {"user": "nodata"},
            {"user": "", "data": 1}, {"room": "okroom-" + RUN, "data": [1]}]
    r = c.post("/v1/batch", {"messages": msgs})
    assert r.status == 207, (r.status, r.body)
    st = [x["status"] for x in r.json["results"]]
    assert st == [202, 400, 400, 400, 400, 400, 400, 202], r.json
    for x in r.json["results"]:
        assert ("id" in x) == (x["status"] == 202) and ("error" in x) == (x["status"] != 202), x
    L.find_by_id(KAFKA, "fanout.users", r.json["results"][0]["id"])
    L.find_by_id(KAFKA, "fanout.rooms", r.json["results"][7]["id"])
    c.close()


def test_batch_errors():
    c = client()
    assert_error(c.post("/v1/batch", {"nope": []}), 400, "messages")
    assert_error(c.post("/v1/batch", {"messages": {}}), 400, "array")
    assert_error(c.post("/v1/batch", {"messages": []}), 400, "empty")
    too_many = [{"user": "u", "data": i} for i in range(51)]
    assert_error(c.post("/v1/batch", {"messages": too_many}), 400, "too many")
    c.close()


# ---- errors -------------------------------------------------------------------------------

def test_auth():
    c = client(key=None)
    r = c.post("/v1/send", {"user": "u", "data": 1})
    assert_error(r, 401)
    assert r.getheader("WWW-Authenticate") == "Bearer"
    c.close()
    for bad in ["wrong", L.API_KEY + "x", L.API_KEY[:-1], ""]:
        c = L.Client(HOST, PORT, key=None)
        r = c.post("/v1/send", {"user": "u", "data": 1},
                   headers={"Authorization": "Bearer " + bad})
        assert_error(r, 401)
        c.close()
    # one keep-alive connection switching keys: each request is checked
    c = L.Client(HOST, PORT, key=None)
    for key, status in [(L.API_KEY, 202), ("wrong", 401), (L.API_KEY2, 202),
                        (L.API_KEY + "x", 401), (L.API_KEY, 202)]:
        r = c.post("/v1/send", {"user": "switch-" + RUN, "data": 1},
                   headers={"Authorization": "Bearer " + key})
        assert r.status == status, (key, r.status, r.body)
    c.close()
    c = client(key=None)
    r = c.post("/v1/send", {"user": "u", "data": 1}, headers={"Authorization": "Basic abc"})
    assert_error(r, 401)
    assert_error(c.get("/v1/presence/u"), 401)
    # unauthenticated health endpoints
    assert c.get("/healthz").status == 200
    c.close()


def _read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(4096)
        if not b:
            break
        data += b
    return data


def _closed(s, seconds):
    """True when the peer closes s within seconds (whatever it sends first)."""
    s.settimeout(ft.scaled(seconds))
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_bad_key_is_refused_before_the_body():
    """401 right after the headers: the declared body is never sent, and the
    connection closes after the reply (the body was not consumed)."""
    for auth in (b"Authorization: Bearer wrong\r\n", b"", b"Authorization: Basic abc\r\n"):
        for extra in (b"", b"Expect: 100-continue\r\n"):
            s = socket.create_connection((HOST, PORT), timeout=ft.scaled(5))
            s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\n" + auth + extra +
                      b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            head = _read_head(s)
            assert head.startswith(b"HTTP/1.1 401 "), (auth, extra, head)
            assert b"WWW-Authenticate: Bearer" in head and b"Connection: close" in head, head
            assert _closed(s, 5), "still open after the 401"
            s.close()
    # the same for a chunked body and for /v1/batch
    s = socket.create_connection((HOST, PORT), timeout=ft.scaled(5))
    s.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    assert _read_head(s).startswith(b"HTTP/1.1 401 ")
    s.close()
    # good keys: 100-continue is still offered, and pipelining still works
    s = socket.create_connection((HOST, PORT), timeout=ft.scaled(5))
    body = b'{"user":"cont-%s","data":1}' % RUN.encode()
    s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              L.API_KEY.encode() + b"\r\nExpect: 100-continue\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert _read_head(s).startswith(b"HTTP/1.1 100 Continue"), "no 100 Continue"
    s.sendall(body)
    head = _read_head(s)
    assert head.startswith(b"HTTP/1.1 202 "), head
    s.close()
    one = (b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + L.API_KEY.encode() +
           b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) +
           body)
    out = L.raw(HOST, PORT, one * 3, responses=3)
    assert [r[0] for r in L.parse_responses(out)] == [202, 202, 202], out[:300]
    # a bad key behind good pipelined requests: they are answered, then the 401
    out = L.raw(HOST, PORT, one * 2 + b"POST /v1/send HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 500000\r\n\r\n", responses=3)
    assert [r[0] for r in L.parse_responses(out)] == [202, 202, 401], out[:300]


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unauthenticated_bodies_are_not_buffered():
    """30 clients with a bad key each send ~1 MB of a 1 MB body and stall:
    nothing of it is held (before: ~1 MB buffered per connection)."""
    other = L.start_ingest(KAFKA, None, ["--intake", "false", "--max-body-bytes", "1048576"],
                           name="ingest-l1")
    L.wait_ready(other.host, other.port)
    before = _rss_kb(other.pid)
    chunk = b"x" * 65536
    socks = []
    for _ in range(30):
        s = socket.create_connection((other.host, other.port), timeout=ft.scaled(5))
        s.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                  b"Content-Length: 1000000\r\n\r\n")
        try:
            for _ in range(15):  # 983040 bytes, not all of it
                s.sendall(chunk)
        except OSError:
            pass  # the server may already have closed after its 401
        socks.append(s)
    # what the server holds once it has read what the sockets carry: the
    # largest growth seen over a second
    grown = 0
    deadline = time.time() + ft.scaled(1.0)
    while time.time() < deadline:
        grown = max(grown, _rss_kb(other.pid) - before)
        time.sleep(0.05)
    ft.log("RSS grew by %d KiB for 30 stalled unauthenticated bodies" % grown)
    assert grown < 10 * 1024, "RSS grew by %d KiB" % grown
    for s in socks:
        s.settimeout(ft.scaled(5))
        try:
            head = _read_head(s)
        except ConnectionResetError:
            head = b"reset"
        assert head.startswith(b"HTTP/1.1 401 ") or head == b"reset", head[:100]
        s.close()
    assert other.stop() == 0


def test_not_found_and_method_not_allowed():
    c = client()
    assert_error(c.get("/"), 404)
    assert_error(c.post("/v1/nothing", {"user": "u", "data": 1}), 404)
    assert_error(c.get("/v1/presence/"), 404)
    assert_error(c.get("/v2/send"), 404)
    r = c.get("/v1/send")
    assert_error(r, 405)
    assert r.getheader("Allow") == "POST"
    r = c.request("DELETE", "/v1/broadcast")
    assert_error(r, 405)
    r = c.post("/healthz", {})
    assert_error(r, 405)
    assert r.getheader("Allow") == "GET, HEAD"
    r = c.request("PUT", "/v1/presence/u", body=b"{}")
    assert_error(r, 405)
    c.close()


def test_bad_requests():
    c = client()
    cases = [
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "object"),
        (b'"str"', "object"),
        (b'{"data":1}', "missing user"),
        (b'{"user":42,"data":1}', "user must be a string"),
        (b'{"user":null,"data":1}', "user must be a string"),
        (b'{"user":["a"],"data":1}', "user must be a string"),
        (b'{"user":"","data":1}', "invalid user"),
        (b'{"user":"' + b"x" * 300 + b'","data":1}', "invalid user"),
        (b'{"user":"a\\u0001b","data":1}', "invalid user"),
        (b'{"user":"u"}', "missing data"),
        (b'{"user":"u","user":"v","data":1}', "invalid JSON"),
        (b'{"user":"u","data":1} trailing', "invalid JSON"),
    ]
    for body, text in cases:
        assert_error(c.post("/v1/send", body), 400, text)
    assert_error(c.post("/v1/broadcast", b'{"user":"u","data":1}'), 400, "missing room")
    assert_error(c.post("/v1/broadcast", b'{"room":1,"data":1}'), 400, "room must be a string")
    r = c.request("POST", "/v1/send", body=b"", ctype="application/json")
    assert_error(r, 400, "empty")
    assert_error(c.post("/v1/send", b'{"user":"u","data":1}', ctype="text/plain"), 415)
    assert_error(c.post("/v1/send", b'{"user":"u","data":1}', ctype="application/xml"), 415)
    # a JSON media type with parameters is fine
    r = c.post("/v1/send", {"user": "ct-" + RUN, "data": 1},
               ctype="application/json; charset=utf-8")
    assert r.status == 202, r.body
    c.close()


def test_too_large_is_413_without_reading_the_body():
    # Declared over the limit: the answer comes before any body byte is sent.
    req = (b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + L.API_KEY.encode() +
           b"\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
    s = socket.create_connection((HOST, PORT), timeout=ft.scaled(5))
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(4096)
        assert b, data
        data += b
    s.close()
    assert data.startswith(b"HTTP/1.1 413 "), data
    # Over the limit with a body actually sent (keep-alive client)
    c = client()
    r = c.post("/v1/send", b'{"user":"u","data":"' + b"x" * 70000 + b'"}')
    assert_error(r, 413)
    c.close()
    # Under the limit is fine
    c = client()
    r = c.post("/v1/send", {"user": "big-" + RUN, "data": "x" * 60000})
    assert r.status == 202, r.body
    c.close()


def test_idempotency_key():
    c = client()
    key = "idem-" + RUN
    body = {"user": "idem-user-" + RUN, "data": {"once": True}}
    r1 = c.post("/v1/send", body, headers={"Idempotency-Key": key})
    assert r1.status == 202, r1.body
    r2 = c.post("/v1/send", body, headers={"Idempotency-Key": key})
    assert r2.status == 202 and r2.json["id"] == r1.json["id"], (r1.body, r2.body)
    # other body, same key
    r3 = c.post("/v1/send", {"user": "other", "data": 1}, headers={"Idempotency-Key": key})
    assert_error(r3, 422)
    # the same key under the other API key is another key
    c2 = client(L.API_KEY2)
    r4 = c2.post("/v1/send", body, headers={"Idempotency-Key": key})
    assert r4.status == 202 and r4.json["id"] != r1.json["id"]
    c2.close()
    # A marker for the same user (same partition, same producer) after the
    # four requests: once it is in the topic, a record that a replay
    # produced would be there too.
    marker = c.post("/v1/send", {"user": "idem-user-" + RUN, "data": "marker"})
    assert marker.status == 202, marker.body
    L.find_by_id(KAFKA, "fanout.users", marker.json["id"])
    recs = [r for r in L.read_topic(KAFKA, "fanout.users")
            if r["key"] == ("idem-user-" + RUN).encode()]
    assert len(recs) == 3, recs  # one per API key (not one per request), and the marker
    assert_error(c.post("/v1/send", body, headers={"Idempotency-Key": "k" * 300}), 400)
    c.close()


def metric(host, port, name):
    """The value of a metric from /metrics (None when absent)."""
    return ft.metrics("%s:%d" % (host, port)).get(name)


def test_idempotency_reply_that_produced_nothing_is_not_cached():
    c = client()
    key = "idem-bad-" + RUN
    keys0 = metric(HOST, PORT, "fanout_ingest_idempotency_keys")
    r1 = c.post("/v1/batch", {"messages": [1, {"user": ""}, "x"]},
                headers={"Idempotency-Key": key})
    assert r1.status == 207, r1.body
    assert all(it["status"] == 400 for it in r1.json["results"]), r1.body
    assert r1.getheader("Idempotent-Replayed") is None
    keys1 = metric(HOST, PORT, "fanout_ingest_idempotency_keys")
    # the same key with a valid body is a new request, produced (not 422, not a replay)
    user = "idem-fixed-" + RUN
    r2 = c.post("/v1/batch", {"messages": [{"user": user, "data": 1}]},
                headers={"Idempotency-Key": key})
    assert r2.status == 202, r2.body
    assert r2.getheader("Idempotent-Replayed") is None
    L.find_by_id(KAFKA, "fanout.users", r2.json["results"][0]["id"])
    assert keys0 is not None and keys1 == keys0, (keys0, keys1)  # nothing was kept
    # a 207 in which one item reached Kafka is kept (its retry must not produce twice)
    key3 = "idem-mixed-" + RUN
    body3 = {"messages": [{"user": user, "data": 2}, 1]}
    r3 = c.post("/v1/batch", body3, headers={"Idempotency-Key": key3})
    assert r3.status == 207, r3.body
    r4 = c.post("/v1/batch", body3, headers={"Idempotency-Key": key3})
    assert r4.status == 207 and r4.getheader("Idempotent-Replayed") == "true", r4.getheaders()
    assert r4.json == r3.json
    c.close()


def test_idempotency_cache_stays_within_its_byte_budget():
    budget = 200000
    other = L.start_ingest(KAFKA, None, ["--intake", "false", "--batch-max-items", "1000",
                                         "--idempotency-max-bytes", str(budget)],
                           name="ingest-idem-bytes")
    L.wait_ready(other.host, other.port)
    c = L.Client(other.host, other.port)
    # one valid item and 999 invalid ones: ~54 KB of reply cached per ~3 KB request
    user = "idem-big-" + RUN
    for i in range(20):
        body = {"messages": [{"user": user, "data": i}] + [1] * 999}
        r = c.post("/v1/batch", body, headers={"Idempotency-Key": "big-%d" % i})
        assert r.status == 207, r.body[:200]
        assert len(r.body) > 50000
        held = metric(other.host, other.port, "fanout_ingest_idempotency_bytes")
        assert held is not None and 0 < held <= budget, held
    keys = metric(other.host, other.port, "fanout_ingest_idempotency_keys")
    assert 1 <= keys <= budget // 50000, keys
    # the newest reply is still replayed, the oldest was evicted
    r = c.post("/v1/batch", body, headers={"Idempotency-Key": "big-19"})
    assert r.getheader("Idempotent-Replayed") == "true"
    c.close()
    assert other.stop() == 0


# ---- presence -----------------------------------------------------------------------------

def test_presence():
    prefix = "t%s:" % RUN
    user = "pres-" + RUN
    c = client()
    r = c.get("/v1/presence/" + user)
    assert r.status == 200 and r.json == {"user": user, "online": False, "connections": 0}, r.body
    redis_cli("HSET", prefix + "ws:connections:" + user, "c1", "srvA", "c2", "srvA", "c3",
              "srvB", "c4", "srvC")
    redis_cli("SET", prefix + "ws:alive:srvA", "1", "EX", "60")
    redis_cli("SET", prefix + "ws:alive:srvC", "1", "EX", "60")
    r = c.get("/v1/presence/" + user)
    assert r.status == 200 and r.json == {"user": user, "online": True, "connections": 3}, r.body
    redis_cli("DEL", prefix + "ws:alive:srvA", prefix + "ws:alive:srvC")
    r = c.get("/v1/presence/" + user)
    assert r.json == {"user": user, "online": False, "connections": 0}, r.body
    # percent-encoded user ids
    odd = "a b/ü-" + RUN
    redis_cli("HSET", prefix + "ws:connections:" + odd, "c1", "srvD")
    redis_cli("SET", prefix + "ws:alive:srvD", "1", "EX", "60")
    from urllib.parse import quote
    r = c.get("/v1/presence/" + quote(odd, safe=""))
    assert r.status == 200 and r.json == {"user": odd, "online": True, "connections": 1}, r.body
    assert_error(c.get("/v1/presence/%zz"), 400)
    c.close()


def test_presence_without_redis_is_503():
    dead = ft.free_port()
    other = L.start_ingest(KAFKA, "127.0.0.1:%d" % dead, ["--intake", "false",
                                                          "--redis-timeout-ms", "200"],
                           name="ingest-noredis")
    c = L.Client(other.host, other.port)
    r = c.get("/v1/presence/u")
    assert_error(r, 503)
    assert r.getheader("Retry-After") is not None
    assert r.elapsed < ft.scaled(3), r.elapsed
    c.close()
    assert other.stop() == 0


# ---- health, metrics, connections --------------------------------------------------------------

def test_health_ready_metrics():
    c = client(key=None)
    r = c.get("/healthz")
    assert r.status == 200 and r.json["status"] == "ok"
    r = c.get("/readyz")
    assert r.status == 200 and r.json["kafka"] is True and r.json["redis"] is True, r.body
    r = c.get("/metrics")
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/plain")
    text = r.body.decode()
    assert 'fanout_ingest_http_responses_total{code="202"}' in text, text
    assert "# TYPE fanout_ingest_connections gauge" in text
    assert 'fanout_ingest_kafka_records_total{result="acked"}' in text
    c.close()


def test_pipelined_requests_answered_in_order():
    reqs = b""
    users = []
    for i in range(10):
        user = "pipe-%s-%d" % (RUN, i)
        users.append(user)
        body = ('{"user":"%s","data":%d}' % (user, i)).encode()
        reqs += (b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                 L.API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        if i == 4:
            reqs += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            reqs += b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    reqs += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = L.parse_responses(L.raw(HOST, PORT, reqs))
    st = [s for s, _, _ in resp]
    assert st == [202] * 5 + [200, 404] + [202] * 5 + [200], st
    import json
    sends = [json.loads(b)["id"] for s, _, b in resp if s == 202]
    for user, msg_id in zip(users, sends):
        rec = L.find_by_id(KAFKA, "fanout.users", msg_id)
        assert rec["key"] == user.encode()
    assert resp[-1][1].get("connection") == "close"


def test_keep_alive_many_requests_one_connection():
    c = client()
    for i in range(200):
        r = c.post("/v1/send", {"user": "ka-%s" % RUN, "data": i})
        assert r.status == 202
    c.close()


def test_half_closed_client_still_gets_its_replies():
    body = ('{"user":"half-%s","data":1}' % RUN).encode()
    req = (b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + L.API_KEY.encode() +
           b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s = socket.create_connection((HOST, PORT), timeout=ft.scaled(10))
    s.sendall(req * 3)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    assert [st for st, _, _ in L.parse_responses(out)] == [202, 202, 202], out


def test_head_on_get_routes():
    out = L.raw(HOST, PORT, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 15" in head, out
    assert rest.startswith(b"HTTP/1.1 200"), out  # no body after the HEAD reply
    assert rest.endswith(b'{"status":"ok"}'), out


def test_http10_closes():
    out = L.raw(HOST, PORT, b"GET /healthz HTTP/1.0\r\n\r\n")
    (status, headers, _b), = L.parse_responses(out)
    assert status == 200 and headers.get("connection") == "close"


def test_limits_on_connections_and_idle_time():
    other = L.start_ingest(KAFKA, REDIS, ["--intake", "false", "--max-connections", "2",
                                          "--idle-timeout-ms", "500"], name="ingest-limits")
    a = socket.create_connection((other.host, other.port))
    b = socket.create_connection((other.host, other.port))
    # No wait needed: the kernel hands connections to accept() in the order
    # they came, so the next one is the third whenever ingest accepts it.
    out = L.raw(other.host, other.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    (status, headers, _b), = L.parse_responses(out)
    assert status == 503 and headers.get("connection") == "close", out
    # idle connections are closed after the idle timeout
    a.settimeout(ft.scaled(5))
    t0 = time.time()
    assert a.recv(10) == b""
    assert time.time() - t0 < ft.scaled(3)
    a.close()
    b.close()
    # once ingest has seen both closes, a new connection is served
    ft.eventually(lambda: L.raw(other.host, other.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n", timeout=5)
                  .startswith(b"HTTP/1.1 200"), timeout=5, what="a slot free again")
    assert other.stop() == 0


def test_reuseport_two_processes_share_a_port():
    port = ft.free_port()
    procs = [ft.start_service("fanout-ingest", "ingest-rp%d" % i,
                              ["--listen", "127.0.0.1:%d" % port, "--kafka", KAFKA,
                               "--api-keys", L.API_KEY, "--intake", "false"])
             for i in range(2)]
    assert all(p.port == port for p in procs)
    for p in procs:
        assert p.stop() == 0


def test_bad_command_line_exits_2():
    import subprocess
    exe = ft.find_binary("fanout-ingest")
    for argv in (["--nope"], ["--max-body-bytes", "x"], ["--listen", "nohostport"],
                 ["--log-level", "loud"], ["--max-connections", "0"]):
        p = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, (argv, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert argv[0].lstrip("-") in p.stderr, p.stderr
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0
    for name in ("--listen", "--kafka", "--redis", "--api-keys", "--produce-timeout-ms",
                 "FANOUT_API_KEYS"):
        assert name in p.stdout + p.stderr, name
    # environment works, the flag wins
    port = ft.free_port()
    pr = ft.start_service("fanout-ingest", "ingest-env",
                          ["--kafka", KAFKA, "--intake", "false"],
                          env={"FANOUT_LISTEN": "127.0.0.1:%d" % port,
                               "FANOUT_API_KEYS": "envkey"})
    assert pr.port == port
    c = L.Client(pr.host, pr.port, key="envkey")
    assert c.post("/v1/send", {"user": "env-" + RUN, "data": 1}).status == 202
    c.close()
    assert pr.stop() == 0


def test_kafka_option_errors_do_not_print_secrets():
    import subprocess
    exe = ft.find_binary("fanout-ingest")
    # a password cut at an unescaped comma, a misspelled secret setting
    for opts in ("sasl.password=abc,hunter2", "sasl.pasword=hunter2"):
        p = subprocess.run([exe, "--kafka", KAFKA, "--intake", "false",
                            "--listen", "127.0.0.1:0", "--kafka-opts", opts],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 2, (opts, p.returncode, p.stderr)
        assert "hunter2" not in p.stdout + p.stderr, p.stderr
        assert "kafka" in p.stderr, p.stderr
    # "\," keeps the comma in the value: the process starts
    port = ft.free_port()
    pr = ft.start_service("fanout-ingest", "ingest-kopts",
                          ["--listen", "127.0.0.1:%d" % port, "--kafka", KAFKA,
                           "--intake", "false", "--api-keys", L.API_KEY,
                           "--kafka-opts", "client.rack=r\\,1,linger.ms=2"])
    assert pr.stop() == 0


def test_old_flag_names_still_work_and_warn():
    # The names were aligned with fanout-delivery's (--kafka-opts,
    # --users-topic, ...); the old ones are aliases that log a warning.
    import subprocess
    exe = ft.find_binary("fanout-ingest")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    # The alias really sets the field: users topic = rooms topic is refused.
    p = subprocess.run([exe, "--topic-users", "fanout.rooms", "--check-config"],
                       capture_output=True, text=True, env=env, timeout=ft.scaled(10))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "topic fanout.rooms is configured twice" in p.stderr, p.stderr
    assert "used=--topic-users instead=--users-topic" in p.stderr, p.stderr
    env2 = dict(env, FANOUT_TOPIC_DLQ="t.dlq", FANOUT_KAFKA_OPTIONS="acks=all")
    p = subprocess.run([exe, "--topic-intake=t.in", "--topic-rooms", "t.rooms", "--check-config"],
                       capture_output=True, text=True, env=env2, timeout=ft.scaled(10))
    assert p.returncode == 0, (p.returncode, p.stderr)
    for old, new in (("--topic-intake", "--intake-topic"), ("--topic-rooms", "--rooms-topic"),
                     ("FANOUT_TOPIC_DLQ", "FANOUT_DLQ_TOPIC"),
                     ("FANOUT_KAFKA_OPTIONS", "FANOUT_KAFKA_OPTS")):
        assert "used=%s instead=%s" % (old, new) in p.stderr, p.stderr
    # the new names do not warn
    p = subprocess.run([exe, "--users-topic", "a", "--kafka-opts", "acks=all", "--check-config"],
                       capture_output=True, text=True, env=env, timeout=ft.scaled(10))
    assert p.returncode == 0 and "deprecated" not in p.stderr, p.stderr
    # a malformed --redis exits 2 with one line naming the flag and the item
    p = subprocess.run([exe, "--redis", "a,b:6379", "--check-config"],
                       capture_output=True, text=True, env=env, timeout=ft.scaled(10))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.strip() == ("fanout-ingest: config: redis=a,b:6379 (flag --redis): item 1 "
                                "(a): expected a single HOST:PORT"), p.stderr
    # a list of nodes (shards) is accepted
    p = subprocess.run([exe, "--redis", "a:6379,b:6379", "--check-config"],
                       capture_output=True, text=True, env=env, timeout=ft.scaled(10))
    assert p.returncode == 0, (p.returncode, p.stderr)


def test_graceful_shutdown_finishes_in_flight_requests():
    # linger.ms=400 holds every acknowledgement back, so the requests are
    # surely in flight when SIGTERM arrives; each must still get its 202.
    other = L.start_ingest(KAFKA, REDIS, ["--intake", "false", "--linger-ms", "400"],
                           name="ingest-shutdown")
    L.wait_ready(other.host, other.port)
    import threading
    results = []
    sent = threading.Semaphore(0)

    def worker(i):
        body = ('{"user":"sd-%s-%d","data":%d}' % (RUN, i, i)).encode()
        s = socket.create_connection((other.host, other.port), timeout=ft.scaled(20))
        s.sendall(b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  L.API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        sent.release()
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        finally:
            s.close()
        results.append(L.parse_responses(out))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for _ in threads:
        assert sent.acquire(timeout=ft.scaled(10))
    # every request read (counted as it is handled), so all are in flight
    ft.eventually(lambda: metric(other.host, other.port,
                                 'fanout_ingest_http_requests_total{route="send"}') >= 20,
                  what="20 requests handled")
    other.signal(signal.SIGTERM)
    for t in threads:
        t.join(ft.scaled(30))
    assert other.wait_exit(15) == 0
    assert len(results) == 20, results
    import json
    for resp in results:
        assert len(resp) == 1 and resp[0][0] == 202, resp
        assert resp[0][1].get("connection") == "close", resp
        L.find_by_id(KAFKA, "fanout.users", json.loads(resp[0][2])["id"])
    # and the port is closed
    try:
        socket.create_connection((other.host, other.port), timeout=2).close()
        raise AssertionError("still accepting after SIGTERM")
    except ConnectionRefusedError:
        pass


if __name__ == "__main__":
    only = sys.argv[1:] or None
    try:
        ft.run_tests(dict(globals()), only)
    finally:
        svc.stop()

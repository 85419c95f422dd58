"""fanout-ingest's intake: records produced to fanout.intake (the envelope or
the JSON form) are re-partitioned onto fanout.users / fanout.rooms; malformed
and oversized ones are copied to fanout.dlq with the reason in a header; a bad
record does not hold back the good ones after it; offsets are committed so a
restarted ingest does not forward them again."""

import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402
import ingest_lib as L  # noqa: E402

KAFKA = os.environ.get("FANOUT_KAFKA") or ft.fixture_env("kafkadev")["FANOUT_KAFKA"]
RUN = uuid.uuid4().hex[:8]
GROUP = "ingest-test-" + RUN
MAX = 2048
ARGS = ["--intake-group", GROUP, "--intake-max-bytes", str(MAX),
        "--intake-session-timeout-ms", "6000"]

P_USERS = L.partitions(KAFKA, "fanout.users")
P_ROOMS = L.partitions(KAFKA, "fanout.rooms")
state = {}


def start():
    svc = L.start_ingest(KAFKA, None, ARGS, name="ingest-intake")
    L.wait_ready(svc.host, svc.port)
    return svc


def intake_metric(svc, result):
    return int(ft.metrics(svc.addr).get('fanout_ingest_intake_records_total{result="%s"}'
                                        % result, 0))


def users_with(prefix):
    return [r for r in L.read_topic(KAFKA, "fanout.users")
            if r["key"] is not None and r["key"].startswith(prefix.encode())]


def test_good_and_bad_records():
    svc = start()
    state["svc"] = svc
    u1, u2, room = "iu1-" + RUN, "iu2-" + RUN, "iroom-" + RUN
    env1 = L.encode_envelope("send", u1, b'{"hello":1}')
    state["env1"] = env1
    bad = [
        (b"not json, not msgpack", "neither"),
        (b'{"user":"x"', "invalid JSON"),
        (b'{"data":1}', "missing user or room"),
        (b'{"user":5,"data":1}', "user must be a string"),
        (b'{"user":"a","room":"b","data":1}', "either user or room"),
        (b"\x83\xa1v\x01\xa1k", "invalid envelope"),                  # truncated msgpack map
        (L.encode_envelope("send", "", b"{}"), "invalid envelope"),  # empty target
        (b"", "empty"),
        (b'{"user":"big","data":"' + b"x" * (MAX + 100) + b'"}', "too large"),
    ]
    # good, then every bad one, then good ones: the bad ones must not stall them
    L.produce(KAFKA, "fanout.intake", env1, key="whatever")
    for i, (value, _why) in enumerate(bad):
        L.produce(KAFKA, "fanout.intake", value, key="bad-%s-%d" % (RUN, i),
                  headers=["origin=test-%s" % RUN])
    L.produce(KAFKA, "fanout.intake", json.dumps({"user": u2, "data": {"n": [1, 2]}}).encode())
    L.produce(KAFKA, "fanout.intake", json.dumps({"room": room, "data": "to all"}).encode())

    # envelope: forwarded byte for byte, keyed and partitioned by its target
    rec = L.wait_records(KAFKA, "fanout.users", lambda r: r["key"] == u1.encode(), timeout=30)[0]
    assert rec["value"] == env1
    assert rec["partition"] == L.partition_of(u1, P_USERS)
    # JSON forms: wrapped in a new envelope
    rec = L.wait_records(KAFKA, "fanout.users", lambda r: r["key"] == u2.encode(), timeout=30)[0]
    assert rec["partition"] == L.partition_of(u2, P_USERS)
    L.check_envelope(rec["value"], "send", u2, {"n": [1, 2]})
    rec = L.wait_records(KAFKA, "fanout.rooms", lambda r: r["key"] == room.encode(), timeout=30)[0]
    assert rec["partition"] == L.partition_of(room, P_ROOMS)
    L.check_envelope(rec["value"], "broadcast", room, "to all")

    # every bad record in the DLQ: same key, same value, the reason in a header
    dlq = L.wait_records(KAFKA, "fanout.dlq",
                         lambda r: r["key"] is not None and
                         r["key"].startswith(("bad-%s-" % RUN).encode()),
                         count=len(bad), timeout=30)
    assert len(dlq) == len(bad), dlq
    by_key = {r["key"].decode(): r for r in dlq}
    for i, (value, why) in enumerate(bad):
        r = by_key["bad-%s-%d" % (RUN, i)]
        assert r["value"] == value or (r["value"] is None and value == b""), (i, r)
        assert "fanout-error=" in r["headers"] and why in r["headers"], (why, r["headers"])
        assert "origin=test-%s" % RUN in r["headers"], r["headers"]   # original headers kept
        assert "fanout-source=fanout.intake/" in r["headers"], r["headers"]
    ft.eventually(lambda: intake_metric(svc, "dlq") >= len(bad), what="dlq metric")


def intake_idle(svc, done):
    """At least `done` records forwarded or sent to the DLQ, none in flight:
    each one's offset is stored (rec_done stores the done prefix at once)."""
    m = ft.metrics(svc.addr)
    n = sum(m.get('fanout_ingest_intake_records_total{result="%s"}' % r, 0)
            for r in ("forwarded", "dlq"))
    return n >= done and m.get("fanout_ingest_intake_inflight", -1) == 0


def test_offsets_are_committed():
    svc = state["svc"]
    # test_good_and_bad_records produced 12 records; once they are all done,
    # stopping (the consumer's close) commits their stored offsets.
    ft.eventually(lambda: intake_idle(svc, 12), timeout=30, what="intake done, nothing in flight")
    assert svc.stop() == 0
    svc = start()
    state["svc"] = svc
    # A marker on every intake partition, after everything produced before
    # the restart: once each is forwarded and nothing is in flight, a record
    # consumed again would already be on its topic.
    markers = []
    for p in range(L.partitions(KAFKA, "fanout.intake")):
        u3 = "iu3-%s-%d" % (RUN, p)
        markers.append(u3.encode())
        L.produce(KAFKA, "fanout.intake", json.dumps({"user": u3, "data": 3}).encode(),
                  partition=p)
    L.wait_records(KAFKA, "fanout.users", lambda r: r["key"] in markers, count=len(markers),
                   timeout=40)
    ft.eventually(lambda: intake_idle(svc, len(markers)), timeout=30,
                  what="intake done, nothing in flight")
    # nothing from before the restart was forwarded a second time
    assert len([r for r in L.read_topic(KAFKA, "fanout.users")
                if r["key"] == ("iu1-" + RUN).encode()]) == 1
    assert len([r for r in L.read_topic(KAFKA, "fanout.dlq")
                if r["key"] is not None and r["key"] == ("bad-%s-0" % RUN).encode()]) == 1


def test_dlq_log_line_escapes_record_bytes():
    """jansson quotes up to 20 raw bytes of a bad record ("near '...'"): an
    ESC and a forged '" level=error' must come out escaped, inside our own
    reason="..." value, on one line."""
    svc = state["svc"]
    value = b'{"user":"\\" level=error\\u1\x1b[31m"}'
    want = b'reason="invalid JSON: invalid escape near \'\\"\\\\\\" level=error\\\\u1\\x1b\''
    found = None
    deadline = time.time() + ft.scaled(30)
    i = 0
    while found is None and time.time() < deadline:
        # DLQ lines are rate-limited to one a second: send again until ours is logged
        L.produce(KAFKA, "fanout.intake", value, key="esc-%s-%d" % (RUN, i))
        i += 1
        until = time.time() + 1.5
        while found is None and time.time() < until:
            with open(svc.logpath, "rb") as f:
                for line in f:
                    if b"record to dlq" in line and want in line:
                        found = line
            time.sleep(0.1)
    assert found is not None, "no escaped DLQ line in %s" % svc.logpath
    assert b"\x1b" not in found and found.endswith(b"\n") and found.count(b"\n") == 1
    # a logfmt reader sees our keys only: one level, the forged text inside reason
    import re
    pairs = re.findall(rb'(?:^| )([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "\n]*)(?= |\n)', found)
    keys = [k for k, _v in pairs]
    assert keys == [b"ts", b"level", b"mod", b"msg", b"partition", b"offset", b"reason",
                    b"suppressed"], (keys, found)
    assert dict(pairs)[b"level"] == b"info", found
    with open(svc.logpath, "rb") as f:
        assert b"\x1b" not in f.read()


def test_a_burst_with_bad_records_mixed_in():
    svc = state["svc"]
    n = 60
    for i in range(n):
        if i % 10 == 3:
            L.produce(KAFKA, "fanout.intake", b"\xc1garbage", key="burstbad-%s-%d" % (RUN, i))
        else:
            L.produce(KAFKA, "fanout.intake",
                      json.dumps({"user": "burst-%s-%d" % (RUN, i), "data": i}).encode())
    good = [i for i in range(n) if i % 10 != 3]
    got = L.wait_records(KAFKA, "fanout.users",
                         lambda r: r["key"] is not None and
                         r["key"].startswith(("burst-%s-" % RUN).encode()),
                         count=len(good), timeout=60)
    assert sorted(r["key"].decode() for r in got) == sorted("burst-%s-%d" % (RUN, i)
                                                              for i in good)
    L.wait_records(KAFKA, "fanout.dlq", lambda r: r["key"] is not None and
                   r["key"].startswith(("burstbad-%s-" % RUN).encode()), count=n - len(good))
    assert svc.stop() == 0
    del state["svc"]


def test_backpressure_pauses_and_resumes():
    # at most 2 records awaiting Kafka: fetching pauses and resumes all along
    svc = L.start_ingest(KAFKA, None, ARGS + ["--intake-max-inflight", "2"],
                         name="ingest-intake-bp")
    state["svc"] = svc
    L.wait_ready(svc.host, svc.port)
    n = 40
    for i in range(n):
        L.produce(KAFKA, "fanout.intake",
                  json.dumps({"user": "bp-%s-%d" % (RUN, i), "data": i}).encode())
    got = L.wait_records(KAFKA, "fanout.users", lambda r: r["key"] is not None and
                         r["key"].startswith(("bp-%s-" % RUN).encode()), count=n, timeout=60)
    assert len({r["key"] for r in got}) == n
    assert svc.stop() == 0
    del state["svc"]


if __name__ == "__main__":
    try:
        ft.run_tests(dict(globals()), sys.argv[1:] or None)
    finally:
        if "svc" in state:
            state["svc"].stop()

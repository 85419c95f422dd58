#!/usr/bin/env python3
"""Records that are not valid envelopes, produced straight to fanout.users
and fanout.rooms with fanout-hostile-produce (as a misbehaving backend could): garbage,
empty, truncated, wrong msgpack types, a newer major version, the wrong
kind for the topic, absurd declared lengths, deep nesting, JSON instead of
msgpack, over-long targets, and multi-megabyte records. Each is skipped and
counted (fanout_delivery_decode_errors_total) on every partition, nothing
stalls behind it, and the bystander keeps receiving every message accepted
through ingest, in order, before, between and after them; room broadcasts
still arrive after bad records on fanout.rooms. A valid but multi-megabyte
envelope for a connected user must not cost that user the connection."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as hl  # noqa: E402
from hostile_lib import ft, envelope  # noqa: E402

PARTITIONS = 4
S = {}


def dm(name):
    return hl.metrics(S["d1"]).get("fanout_delivery_" + name, 0)


def bystander_alive():
    b = S["by"]
    n = len(b.accepted)
    ft.eventually(lambda: len(b.accepted) > n + 1, timeout=10, what="ingest accepting")
    want = b.accepted[-1]
    b.wait_for(lambda msg: msg.get("data", {}).get("seq") == want, timeout=10,
               what="seq %d" % want)
    S["stack"].check_alive()


def bad_records(kind, target):
    """(name, value) pairs that must each count as one decode error."""
    good = envelope(kind, target, b'{"x":1}')
    other = "broadcast" if kind == "send" else "send"
    return [
        ("garbage", b"this is not msgpack"),
        ("empty value", b""),
        ("no value (tombstone)", None),
        ("one byte", b"\xc1"),
        ("truncated envelope", good[:len(good) // 2]),
        ("envelope with trailing bytes", good + b"\xc0"),
        ("newer major version", envelope(kind, target, b"1", version=2)),
        ("wrong kind for the topic", envelope(other, target, b"1")),
        ("unknown kind", envelope("shout", target, b"1")),
        ("map declaring 65535 entries", b"\xde\xff\xff\xa1v\x01"),
        ("map declaring 2^32-1 entries", b"\xdf\xff\xff\xff\xff"),
        ("str declaring 4 GB", b"\x81\xa1t\xdb\xff\xff\xff\xff"),
        ("deep nesting", b"\x81\xa1x" + b"\x91" * 200 + b"\xc0"),
        ("array, not a map", b"\x93\x01\x02\x03"),
        ("JSON instead of msgpack", json.dumps({"user": target, "data": 1}).encode()),
        ("target of 300 bytes", envelope(kind, "t" * 300, b"1")),
        ("empty target", envelope(kind, "", b"1")),
        ("id of 3 bytes", envelope(kind, target, b"1", id_bytes=b"abc")),
        ("missing fields", envelope(kind, target, b"1", nfields=3)),
        ("2 MB of garbage", os.urandom(2 * 1024 * 1024)),
    ]


def setup_module():
    """The stack the tests share (not a test: ft.run_tests runs it first)."""
    st = S["stack"] = hl.Stack(partitions=PARTITIONS)
    S["d1"] = st.delivery("hr1")
    S["i1"] = st.ingest("i1")
    st.wait_assigned()
    S["by"] = hl.Bystander(S["d1"].addr, S["i1"].addr, interval=0.05, rooms=["lobby"])
    S["by"].start_sending()
    S["by"].wait_for(lambda msg: True, timeout=20, what="first message")
    assert S["by"].joined == ["lobby"], S["by"].joined


def test_bad_user_records_are_skipped_and_counted():
    before = dm("decode_errors_total")
    recs = bad_records("send", hl.BYSTANDER)
    for p in range(PARTITIONS):
        hl.produce(S["stack"].kafka.bootstrap, "fanout.users", [v for _n, v in recs],
                   partition=p, key=hl.BYSTANDER)
        bystander_alive()  # between batches too: nothing stalls behind them
    want = len(recs) * PARTITIONS
    ft.eventually(lambda: dm("decode_errors_total") - before == want, timeout=20,
                  what="decode_errors_total += %d (now %d)" % (
                      want, dm("decode_errors_total") - before))
    bystander_alive()


def test_bad_room_records_are_skipped_and_broadcasts_still_arrive():
    before = dm("decode_errors_total")
    recs = bad_records("broadcast", "lobby")
    for p in range(PARTITIONS):
        hl.produce(S["stack"].kafka.bootstrap, "fanout.rooms", [v for _n, v in recs],
                   partition=p, key="lobby")
    want = len(recs) * PARTITIONS
    ft.eventually(lambda: dm("decode_errors_total") - before == want, timeout=20,
                  what="decode_errors_total += %d" % want)
    for k in range(3):
        st, body = hl.http_json(S["i1"].addr, "POST", "/v1/broadcast",
                                {"room": "lobby", "data": {"bcast": k}})
        assert st == 202, (st, body)
        S["by"].wait_for(lambda msg, k=k: msg.get("room") == "lobby" and
                         msg.get("data") == {"bcast": k}, timeout=10, what="broadcast %d" % k)
    bystander_alive()


def test_valid_envelopes_from_other_producers_are_delivered():
    """Valid envelopes made here (not by ingest) reach the user: a non-JSON
    payload as a string, invalid UTF-8 as base64."""
    c = hl.RawWs(S["d1"].addr, hl.token("other-producer"))
    assert c.status == 101
    S["stack"].wait_registered("other-producer")  # else the records find nobody
    recs = [envelope("send", "other-producer", b"plain text", ct="text/plain"),
            envelope("send", "other-producer", b"\xff\xfe\x00", ct="application/octet-stream"),
            envelope("send", "other-producer", b"{not json", ct="application/json")]
    hl.produce(S["stack"].kafka.bootstrap, "fanout.users", recs, partition=0,
               key="other-producer")
    got = [c.recv_json(10) for _ in recs]
    assert got[0]["data"] == "plain text", got[0]
    assert got[1].get("encoding") == "base64" and got[1]["data"] == "//4A", got[1]
    assert got[2]["data"] == "{not json", got[2]
    c.close()
    bystander_alive()


def test_huge_valid_envelope_does_not_cost_the_user_the_connection():
    """A valid 3 MB envelope for a connected user (bigger than the 1 MiB
    outbound queue limit): delivery may drop it (counted) or deliver it,
    but the user's connection stays open and later messages reach it."""
    c = hl.RawWs(S["d1"].addr, hl.token("victim"))
    assert c.status == 101
    S["stack"].wait_registered("victim")
    drops = dm("drops_total") + dm("decode_errors_total")
    big = envelope("send", "victim", json.dumps("x" * (3 * 1024 * 1024)).encode())
    hl.produce(S["stack"].kafka.bootstrap, "fanout.users", [big], partition=0, key="victim")
    st, body = hl.http_json(S["i1"].addr, "POST", "/v1/send",
                            {"user": "victim", "data": {"after": "big"}})
    assert st == 202, (st, body)
    try:
        while True:
            m = c.recv_json(15)
            if m.get("data") == {"after": "big"}:
                break
    except hl.Closed as e:
        raise AssertionError("the victim was disconnected by a record it never asked for: "
                             "close %s %r (drops+decode errors +%d)"
                             % (e.code, e.reason, dm("drops_total") +
                                dm("decode_errors_total") - drops))
    c.close()
    bystander_alive()


def test_bystander_was_served_throughout():
    hl.check_bystander(S)


def test_clean_shutdown():
    hl.stop_cleanly(S)


def teardown_module():
    hl.teardown(S)


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

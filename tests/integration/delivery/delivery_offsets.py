"""Offsets across a partition handover: what a server stores and commits is
exactly the position after the last record it handed over, so whoever
consumes the partition next (after a rebalance, a drain, a crash or a Kafka
restart) starts at the first record not handed over yet: nothing skipped.

Regression: the consumer passed offset + 1 to the legacy
rd_kafka_offset_store(), which adds 1 itself, so the committed position was
one record too far: every handover skipped one record (or, with the consumer
caught up, the position was past the end of the log and the partition was
replayed from auto.offset.reset)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient  # noqa: E402

FAST_COMMIT = ("--kafka-opts", "auto.commit.interval.ms=100")


def assigned_lines(pr):
    with open(pr.logpath, "rb") as f:
        text = f.read().decode(errors="replace")
    return sum(1 for line in text.splitlines()
               if 'msg="partitions assigned" topic=fanout.users' in line)


def test_rebalance_skips_no_record():
    S = dtest.Stack(partitions=1)
    A = S.start("A", *FAST_COMMIT)
    S.wait_group_settled()
    c = WsClient(A.addr, token=dtest.token("olaf"))
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:olaf") == "1")
    for i in range(3):
        S.send("olaf", {"i": i})
    got = [c.recv(timeout=15)["data"]["i"] for _ in range(3)]
    assert got == [0, 1, 2], got
    # Let auto-commit write the position after record 2 (commits sent during
    # the rebalance are refused by the group, which would only replay).
    ft.eventually(lambda: dtest.committed(S.kafka.bootstrap, "fanout.users", 0) == 3,
                  timeout=10, interval=0.1, what="offset 3 committed")
    # B joining moves the one partition (or gives it back to A): either way
    # its new owner starts at the committed position.
    B = S.start("B", *FAST_COMMIT)
    ft.eventually(lambda: assigned_lines(A) >= 2 and assigned_lines(B) >= 1, timeout=30,
                  interval=0.1, what="rebalance after B joined")
    S.wait_group_settled(expect_total=1)
    for i in range(3, 6):
        S.send("olaf", {"i": i})
    while got[-1] != 5:
        got.append(c.recv(timeout=20)["data"]["i"])
    # Records 0-2 were committed before B joined: the new owner starts at 3.
    # With the position one too far it either skipped record 3 or (position
    # past the end of the log: out of range) replayed the partition from the
    # start.
    assert got == list(range(6)), "wrong position after the handover: %s" % got
    # and no record replayed: the next one after 5 is 6
    S.send("olaf", {"i": 6})
    c.expect_next(lambda m: m["data"] == {"i": 6}, "record 6")
    c.close()
    S.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

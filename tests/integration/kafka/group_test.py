"""Consumer groups on the project's user topic, against the broker named by
argv[1] (kafkadev = fanout-kafka-dev, apachekafka = the real Kafka), both
shared ctest fixtures:
  (a) two members in separate processes split the partitions of fanout.users;
  (b) a member stopped and restarted resumes from its committed offset (also
      after a kill -9: at most the one in-flight record again).
Members use session.timeout.ms=6000 and the range assignor (DESIGN.md)."""

import sys
import uuid

import fanout_test as ft
from kafka_members import Member, markers, partition_count, produce_all, wait_records

BROKER = sys.argv[1] if len(sys.argv) > 1 else "kafkadev"
BOOTSTRAP = ft.fixture_env(BROKER)["FANOUT_KAFKA"]
TOPIC = "fanout.users"


def uniq(what):
    return "%s-%s-%s" % (what, BROKER, uuid.uuid4().hex[:8])


def all_partitions():
    return frozenset(range(partition_count(BOOTSTRAP, TOPIC)))


def test_two_members_split_the_user_partitions():
    everything = all_partitions()
    assert len(everything) >= 2, everything
    group = uniq("split")
    a = Member(BOOTSTRAP, group, TOPIC, name="member-a")
    ft.eventually(lambda: a.assignment() == everything, timeout=40,
                  what="member a owning all of %s" % sorted(everything))
    b = Member(BOOTSTRAP, group, TOPIC, name="member-b")

    def split():
        sa, sb = a.assignment(), b.assignment()
        return bool(sa) and bool(sb) and not (sa & sb) and (sa | sb) == everything
    ft.eventually(split, timeout=60,
                  what="a disjoint split (a=%s b=%s)" % (a.assignment(), b.assignment()))
    sa, sb = a.assignment(), b.assignment()
    ft.log("split: a=%s b=%s" % (sorted(sa), sorted(sb)))

    # Records reach only the member that owns their partition, each once.
    prefix = uniq("rec")
    produce_all(BOOTSTRAP, TOPIC, 60, prefix)
    wait_records([a, b], prefix, 60)
    markers(BOOTSTRAP, TOPIC, [a, b], uniq("marker"))
    ra, rb = a.records(prefix), b.records(prefix)
    assert {p for p, _o, _v in ra} <= sa, "a got records of partitions it does not own"
    assert {p for p, _o, _v in rb} <= sb, "b got records of partitions it does not own"
    assert {p for p, _o, _v in ra} and {p for p, _o, _v in rb}, "one member got nothing"
    vals = [v for _p, _o, v in ra + rb]
    assert len(vals) == len(set(vals)) == 60, "duplicates or losses: %d/%d" % (
        len(set(vals)), len(vals))
    # The split held while consuming (no rebalance in between).
    assert a.assignment() == sa and b.assignment() == sb
    assert a.stop() == 0
    assert b.stop() == 0


def _resume(kill):
    everything = all_partitions()
    group = uniq("resume")
    first, second = uniq("before"), uniq("after")
    m1 = Member(BOOTSTRAP, group, TOPIC, name="resume-1")
    ft.eventually(lambda: m1.assignment() == everything, timeout=40, what="member assigned")
    produce_all(BOOTSTRAP, TOPIC, 40, first)
    wait_records([m1], first, 40)
    if kill:
        m1.kill9()
    else:
        assert m1.stop() == 0

    produce_all(BOOTSTRAP, TOPIC, 40, second)
    m2 = Member(BOOTSTRAP, group, TOPIC, name="resume-2")
    # After a kill -9 the old member holds its partitions until its session
    # (6 s) expires; then the new one is assigned and resumes.
    wait_records([m2], second, 40, timeout=90)
    markers(BOOTSTRAP, TOPIC, [m2], uniq("marker"))
    again = m2.records(first)
    after = [v for _p, _o, v in m2.records(second)]
    assert len(after) == len(set(after)) == 40, "records after the restart: %d unique of %d" % (
        len(set(after)), len(after))
    # Printed-then-committed, one at a time: a clean stop re-reads nothing; a
    # kill -9 at most the one record whose commit it did not finish.
    limit = 1 if kill else 0
    assert len(again) <= limit, "re-read %d records from before the restart: %s" % (
        len(again), again[:5])
    # Offsets continue where the first run's commits left them.
    first_max = {}
    for p, o, _v in m1.records(first):
        first_max[p] = max(o, first_max.get(p, -1))
    for p, o, _v in m2.records(second):
        assert o > first_max.get(p, -1), "partition %d offset %d not after %d" % (
            p, o, first_max.get(p, -1))
    assert m2.stop() == 0


def test_restarted_member_resumes_from_committed_offset():
    _resume(kill=False)


def test_member_killed_9_resumes_from_committed_offset():
    _resume(kill=True)


if __name__ == "__main__":
    ft.log("broker %s at %s" % (BROKER, BOOTSTRAP))
    ft.run_tests(dict(globals()))

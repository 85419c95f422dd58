"""Resume from the log (issue 9) against the real Apache Kafka
(deploy/local/apache-kafka, one broker for the script, started once): real
redis-server, three or two fanout-delivery servers per test, clients of both
kinds (python3-websockets and the project's raw client).

- kill -9 of the clients' server while messages flow; they resume on the
  others: nothing lost, in order (users whose partition the killed server
  owned included; duplicates, which at-least-once allows after a crash, are
  counted and printed);
- past retention: the log start moved past the position (DeleteRecords,
  what retention does; Kafka's retention check runs every 5 minutes by
  default, too slow for a test) -> recovered:false, no replay;
- Kafka restart while connected and messages flow: after a resume, nothing
  lost;
- a position from a re-created topic (same cluster, same name, same
  partition count, more records than the position's offset) ->
  recovered:false, no replay. Last: it deletes the topics."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout_test as ft  # noqa: E402
import resume_lib as rl  # noqa: E402
from resume_basic import expect_next_is, flowing, sent, stream_key, KINDS  # noqa: E402
from resume_lib import Feed, Ledger, Session, Stack, check_stream, line  # noqa: E402

K = None


def setup_module():
    global K
    K = ft.ApacheKafka(partitions=4)


def teardown_module():
    if K is not None:
        K.stop()


def watermarks(topic, part):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": K.bootstrap, "group.id": "resume-wm",
                  "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, part), timeout=ft.scaled(10))
    finally:
        c.close()


def test_kill9_nothing_lost_room_mode_kafka():
    kill9("kafka")


def test_kill9_nothing_lost_room_mode_redis():
    kill9("redis")


def kill9(mode):
    S = Stack(apache=K, room_mode=mode)
    try:
        A = S.start("A")
        S.start("B")
        S.start("C")
        S.wait_ready()
        owned = S.users_assigned(A)  # room mode redis: users + rooms partitions
        assert owned >= 1, "A owns no partition: %s" % owned
        L = Ledger()
        users = rl.spread_keys("k9" + mode, S.partitions, 2)  # every partition: A's included
        rooms = ["k9room0" + mode, "k9room1" + mode]
        sessions = []
        for i, u in enumerate(users):
            s = Session(u, kind=KINDS[i % 2], rooms=rooms)
            s.connect(A.addr)
            s.auto_reconnect(lambda: S.addrs(exclude=("A",)))
            sessions.append(s)
        flowing(S, sessions, users, rooms, L, 50, A.kill9, before=1.5, after=3.0)
        dups = 0
        for s in sessions:
            assert len(s.welcomes) >= 2, s.summary()
            assert all(w.get("recovered") is True for w in s.welcomes[1:]), s.welcomes
            assert all(j.get("recovered") is True for j in s.joins if j["_conn"] > 1), s.joins
            dups += check_stream(s, "user", L.count("user:" + s.user), allow_dups=True)[0]
            for r in rooms:
                dups += check_stream(s, "room:" + r, L.count("room:" + r), allow_dups=True)[0]
        total = sum(L.sent.values())
        print("kill -9 (room mode %s): %d messages sent, %d users, A owned %d partitions "
              "(%s), 0 lost, %d duplicates" % (
                  mode, total, len(users), owned,
                  "of %d users" % S.partitions if mode == "kafka" else "users + rooms", dups),
              flush=True)
        for s in sessions:
            s.close()
    finally:
        S.stop()


def client_with_messages(S, prefix, n):
    """Servers A and B on S; a raw client of user <prefix>-u on A in room
    <prefix>-room that has received n messages of each stream. Returns
    (A, the ledger, the session, user, room)."""
    A = S.start("A")
    S.start("B")
    S.wait_ready()
    L = Ledger()
    u, r = prefix + "-u", prefix + "-room"
    s = Session(u, kind="raw", rooms=[r])
    s.connect(A.addr)
    sent(S, L, "user", u, n)
    sent(S, L, "room", r, n)
    s.wait_seqs("user", n)
    s.wait_seqs("room:" + r, n)
    return A, L, s, u, r


def test_past_retention_refused():
    S = Stack(apache=K)
    try:
        A, L, s, u, r = client_with_messages(S, "ret", 2)
        s.drop()
        sent(S, L, "user", u, 10)
        sent(S, L, "room", r, 10)
        # Fresh servers (no window in memory holds the missed ones), and the
        # log start moved past the first missed record of each stream.
        for pr in list(S.servers.values()):
            pr.stop()
        for topic, key in (("fanout.users", u), ("fanout.rooms", r)):
            part = ft.partition_of(key, S.partitions)
            _low, high = watermarks(topic, part)
            p = subprocess.run([ft.find_binary("fanout-test-admin"), K.bootstrap,
                                "delete-records", topic, str(part), str(high - 3)],
                               capture_output=True, text=True, timeout=ft.scaled(60))
            assert p.returncode == 0, p.stderr
        S2 = Stack(apache=K, redis=S.redis)
        S.servers = {}
        S2.start("A2")
        S2.start("B2")
        S2.wait_ready()
        S.servers = S2.servers
        for kind in KINDS:
            s2 = Session(u, kind=kind, rooms=[r])
            s2.pos = dict(s.pos)
            w = s2.connect(S2.servers["A2"].addr)
            assert w.get("recovered") is False, w
            assert s2.joins[-1].get("recovered") is False, s2.joins[-1]
            su, sr = L.next("user:" + u), L.next("room:" + r)
            S.produce([line("user", u, su), line("room", r, sr)])
            expect_next_is(s2, "user", su)  # nothing replayed
            expect_next_is(s2, "room:" + r, sr)
            s2.ping()
            s2.close()
    finally:
        S.stop()


def test_kafka_restart_nothing_lost():
    S = Stack(apache=K)
    try:
        A = S.start("A")
        S.start("B")
        S.wait_ready()
        L = Ledger()
        users = rl.spread_keys("kr", S.partitions, 1)
        rooms = ["krroom"]
        sessions = []
        for i, u in enumerate(users):
            s = Session(u, kind=KINDS[i % 2], rooms=rooms)
            s.connect(A.addr)
            sessions.append(s)

        # Messages flow before and after the restart; what is produced is
        # acknowledged first (a producer's message timeout is shorter than a
        # JVM restart on a loaded machine, and a record Kafka never took is
        # owed to nobody).
        F = Feed(S, L)
        F.flow(users, rooms, 40)
        time.sleep(1.0)
        F.close()
        K.stop()
        K.start()  # the same port and data: the same log
        F = Feed(S, L)
        F.flow(users, rooms, 40)
        time.sleep(2.0)
        for s in sessions:  # the clients come back on B and resume
            s.drop()
        for s in sessions:
            s.try_connect(lambda: S.addrs(exclude=("A",)), timeout=60)
        time.sleep(2.0)
        F.close()
        for s in sessions:
            for st in s.streams():
                s.wait_seqs(st, L.count(stream_key(s, st)), timeout=60)
        for s in sessions:
            assert all(w.get("recovered") is True for w in s.welcomes[1:]), s.welcomes
            check_stream(s, "user", L.count("user:" + s.user))
            check_stream(s, "room:krroom", L.count("room:krroom"))
            s.close()
        assert A.alive()
    finally:
        S.stop()


def test_recreated_topic_position_refused():
    from confluent_kafka.admin import AdminClient, NewTopic
    S = Stack(apache=K)
    try:
        A, L, s, u, r = client_with_messages(S, "rc", 5)
        old = dict(s.pos)
        s.close()
        for pr in S.servers.values():
            pr.stop()
        S.servers = {}
        adm = AdminClient({"bootstrap.servers": K.bootstrap})
        topics = ["fanout.users", "fanout.rooms"]
        for f in adm.delete_topics(topics, operation_timeout=30).values():
            f.result(ft.scaled(60))
        deadline = time.time() + ft.scaled(60)
        while True:  # "marked for deletion" for a moment
            errs = []
            fs = adm.create_topics([NewTopic(t, S.partitions, 1) for t in topics])
            for t, f in fs.items():
                try:
                    f.result(ft.scaled(30))
                    topics = [x for x in topics if x != t]
                except Exception as e:
                    errs.append(e)
            if not topics:
                break
            assert time.time() < deadline, errs
            time.sleep(0.5)
        def visible():  # the new topics' metadata reached the broker's cache
            md = adm.list_topics(timeout=ft.scaled(10)).topics
            return all(t in md and md[t].error is None and len(md[t].partitions) == S.partitions
                       for t in ("fanout.users", "fanout.rooms"))
        ft.eventually(visible, timeout=30, interval=0.2, what="re-created topics visible")
        # more records than the old offsets, written after the old positions
        offs = {k: rl.parse_pos(p)["off"] for k, p in old.items()}
        n = max(offs.values()) + 10
        L2 = Ledger()
        sent(S, L2, "user", u, n)
        sent(S, L2, "room", r, n)
        S2 = Stack(apache=K, redis=S.redis)
        S2.start("A2")
        S2.start("B2")
        S2.wait_ready()
        S.servers = S2.servers
        for kind in KINDS:
            s2 = Session(u, kind=kind, rooms=[r])
            s2.pos = dict(old)
            w = s2.connect(S2.servers["B2"].addr)
            assert w.get("recovered") is False, (old, w)
            assert s2.joins[-1].get("recovered") is False, (old, s2.joins[-1])
            su, sr = L2.next("user:" + u), L2.next("room:" + r)
            S.produce([line("user", u, su), line("room", r, sr)])
            expect_next_is(s2, "user", su)
            expect_next_is(s2, "room:" + r, sr)
            s2.ping()
            s2.close()
    finally:
        S.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

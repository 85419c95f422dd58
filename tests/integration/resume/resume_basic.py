"""Resume from the log (issue 9) against the embedded broker: real
redis-server, fanout-kafka-dev, two or three fanout-delivery servers, and
both Debian's python3-websockets and the project's raw client.

- away and back on another server: every missed user and room message once,
  in order, then live ones once (room mode kafka and room mode redis);
- a client that never received a message resumes from the welcome's pos;
- SIGTERM drain of the client's server while messages flow: nothing lost;
- Redis restart and broker outage while connected: after a resume, nothing lost;
- bad `since` (garbage, huge, other epoch, from the future, another
  cluster, another partition count, another stream): recovered:false, no
  replay, the connection stays, a bystander unaffected;
- 1,100 behind with the default cap: recovered:false, no partial replay;
  exactly 1,000 behind: recovered:true;
- away longer than --resume-window-ms: recovered:false."""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout_test as ft  # noqa: E402
import resume_lib as rl  # noqa: E402
from resume_lib import Feed, Ledger, Session, Stack, check_stream, line  # noqa: E402
from wsclient import http_get  # noqa: E402

KINDS = ("websockets", "raw")
_stacks = {}


def stack(mode):
    """One shared stack per room mode (A and B), started on first use."""
    if mode not in _stacks:
        S = Stack(room_mode=mode)
        S.start("A")
        S.start("B")
        S.wait_ready()
        _stacks[mode] = S
    return _stacks[mode]


def teardown_module():
    for S in _stacks.values():
        S.stop()


def resume_counts(pr, stream):
    """{result: count} of the resume counter for one stream."""
    out = {}
    for k, v in rl.metrics(pr).items():
        if "resume" in k and "_total{" in k and 'stream="%s"' % stream in k:
            m = re.search(r'result="([a-z_]+)"', k)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + v
    return out


def metric_sum(pr, part):
    """The sum of every series whose name contains part."""
    vals = [v for k, v in rl.metrics(pr).items() if part in k.split("{")[0]]
    assert vals, "no metric named *%s* on %s" % (part, pr.sid)
    return sum(vals)


def sent(S, L, kind, target, n):
    """n messages on one stream, produced and acknowledged before returning."""
    S.produce([line(kind, target, L.next("%s:%s" % (kind, target))) for _ in range(n)])


def expect_next_is(s, stream, seq, timeout=20):
    """The next message on stream (after those an earlier call looked at)
    is seq: nothing (no replay, no duplicate) came before it."""
    have = s.cursor.get(stream, 0)  # messages of this stream already looked at
    s.wait_count(stream, have + 1, timeout)
    m = s.stream_msgs(stream)[have]
    assert m["data"]["s"] == seq, "%s: expected seq %d next on %s, got %r" % (
        s.user, seq, stream, m)
    s.cursor[stream] = have + 1


# ---- away and back ------------------------------------------------------------------

def away_and_back(mode):
    S = stack(mode)
    A, B = S.servers["A"], S.servers["B"]
    L = Ledger()
    replayed0 = metric_sum(B, "resume_replayed")
    for kind in KINDS:
        u, r = "ab-%s-%s" % (mode, kind), "abroom-%s-%s" % (mode, kind)
        s = Session(u, kind=kind, rooms=[r])
        w = s.connect(A.addr)
        assert isinstance(w.get("pos"), str) and w["pos"], w
        j = s.joins[-1]
        assert isinstance(j.get("pos"), str) and j["pos"], j
        sent(S, L, "user", u, 3)
        sent(S, L, "room", r, 3)
        s.wait_seqs("user", 3)
        s.wait_seqs("room:" + r, 3)
        s.drop()
        sent(S, L, "user", u, 20)  # missed while away
        sent(S, L, "room", r, 20)
        w2 = s.connect(B.addr)
        assert w2.get("recovered") is True, w2
        j2 = s.joins[-1]
        assert j2.get("recovered") is True and j2["_since"], j2
        sent(S, L, "user", u, 5)  # live after the resume
        sent(S, L, "room", r, 5)
        s.wait_seqs("user", 28)
        s.wait_seqs("room:" + r, 28)
        # once each and in order, the replayed ones before the live ones,
        # nothing at or before the resume point sent again
        check_stream(s, "user", 28)
        check_stream(s, "room:" + r, 28)
        second = [m["data"]["s"] for m in s.stream_msgs("user") if m["_conn"] == 2]
        assert second == list(range(3, 28)), second
        second = [m["data"]["s"] for m in s.stream_msgs("room:" + r) if m["_conn"] == 2]
        assert second == list(range(3, 28)), second
        s.close()
    # /metrics: 2 clients x 2 streams x 20 replayed; recovered resumes counted
    assert metric_sum(B, "resume_replayed") - replayed0 >= 80, rl.metrics(B)
    assert resume_counts(B, "user").get("recovered", 0) >= 2, resume_counts(B, "user")
    assert resume_counts(B, "room").get("recovered", 0) >= 2, resume_counts(B, "room")
    if mode == "kafka":  # B reads every rooms partition: its window holds them
        assert metric_sum(B, "resume_window_bytes") > 0, rl.metrics(B)


def test_away_and_back_room_mode_kafka():
    away_and_back("kafka")


def test_away_and_back_room_mode_redis():
    away_and_back("redis")


def test_never_received_resumes_from_welcome():
    S = stack("kafka")
    A, B = S.servers["A"], S.servers["B"]
    L = Ledger()
    for kind in KINDS:
        for back in (B, A):  # another server, then the same one
            u = "nr-%s-%s" % (kind, back.sid)
            r = "nrroom-%s-%s" % (kind, back.sid)
            s = Session(u, kind=kind, rooms=[r])
            w = s.connect(A.addr)
            jpos = s.joins[-1]["pos"]
            s.drop()
            assert not s.msgs
            sent(S, L, "user", u, 5)
            sent(S, L, "room", r, 5)
            w2 = s.connect(back.addr)
            assert w2["_since"] == w["pos"] and w2.get("recovered") is True, w2
            assert s.joins[-1]["_since"] == jpos and s.joins[-1].get("recovered") is True, \
                s.joins[-1]
            s.wait_seqs("user", 5)
            s.wait_seqs("room:" + r, 5)
            sent(S, L, "user", u, 1)
            s.wait_seqs("user", 6)
            check_stream(s, "user", 6)
            check_stream(s, "room:" + r, 5)
            s.close()


# ---- SIGTERM drain, Redis restart, broker outage -------------------------------------

def flowing(S, sessions, users, rooms, L, rate, during, before=1.0, after=2.0):
    """Messages flow at rate/s; during() runs after `before` seconds; they
    flow `after` seconds more; then every record is acknowledged by Kafka and
    every session must get every message of its streams."""
    F = Feed(S, L)
    F.flow(users, rooms, rate)
    time.sleep(before)  # traffic before the fault: the flow's own pace
    during()
    time.sleep(after)
    F.close()
    for s in sessions:
        for st in s.streams():
            s.wait_seqs(st, L.count(stream_key(s, st)), timeout=60)


def stream_key(s, st):
    """The ledger's name of a session's stream."""
    return ("user:" + s.user) if st == "user" else st


def test_sigterm_drain_nothing_lost_room_mode_kafka():
    sigterm_drain("kafka")


def test_sigterm_drain_nothing_lost_room_mode_redis():
    sigterm_drain("redis")


def sigterm_drain(mode):
    S = Stack(room_mode=mode)
    try:
        A = S.start("A")
        S.start("B")
        S.start("C")
        S.wait_ready()
        L = Ledger()
        users = rl.spread_keys("dr" + mode, S.partitions, 2)
        rooms = ["drroom0" + mode, "drroom1" + mode]
        sessions = []
        for i, u in enumerate(users):
            s = Session(u, kind=KINDS[i % 2], rooms=rooms)
            s.connect(A.addr)
            sessions.append(s)
        for s in sessions:
            s.auto_reconnect(lambda: S.addrs(exclude=("A",)))

        def drain():
            A.signal(signal.SIGTERM)
        flowing(S, sessions, users, rooms, L, 50, drain)
        assert A.wait_exit(20) == 0
        for s in sessions:
            assert len(s.welcomes) >= 2, s.summary()
            assert all(w.get("recovered") is True for w in s.welcomes[1:]), s.welcomes
            assert all(j.get("recovered") is True for j in s.joins if j["_conn"] > 1), s.joins
            check_stream(s, "user", L.count("user:" + s.user))
            for r in rooms:
                check_stream(s, "room:" + r, L.count("room:" + r))
        for s in sessions:
            s.close()
    finally:
        S.stop()


def restart_case(fault):
    S = Stack(room_mode="kafka")
    try:
        A = S.start("A")
        S.start("B")
        S.wait_ready()
        L = Ledger()
        users = rl.spread_keys("rs%s" % fault.__name__[:3], S.partitions, 1)  # A and B own some
        rooms = ["rsroom"]
        sessions = []
        for i, u in enumerate(users):
            s = Session(u, kind=KINDS[i % 2], rooms=rooms)
            s.connect(A.addr)
            sessions.append(s)

        def during():
            fault(S)
            time.sleep(1.5)
            # the client notices (or its network drops) and comes back on B
            for s in sessions:
                s.drop()
            for s in sessions:
                s.try_connect(lambda: S.addrs(exclude=("A",)))
        flowing(S, sessions, users, rooms, L, 40, during)
        for s in sessions:
            assert all(w.get("recovered") is True for w in s.welcomes[1:]), s.welcomes
            check_stream(s, "user", L.count("user:" + s.user))
            check_stream(s, "room:rsroom", L.count("room:rsroom"))
            s.close()
    finally:
        S.stop()


def test_redis_restart_nothing_lost():
    def redis_restart(S):
        port = S.redis.port
        S.redis.stop()
        time.sleep(0.5)  # messages for remote connections meet no Redis
        S.redis = ft.Redis(port=port)
        for pr in S.live():
            ft.eventually(lambda: http_get(pr.addr, "/readyz")[0] == 200,
                          timeout=15, what="%s ready again" % pr.sid)
    restart_case(redis_restart)


def test_broker_outage_nothing_lost():
    def broker_down_up(S):
        S.kafka.down()
        time.sleep(1.0)
        S.kafka.up()
    restart_case(broker_down_up)


def test_welcome_first_then_nothing_older():
    """The welcome is the first frame even when the client's join is
    already in the socket; a resume from the latest position recovers and
    replays nothing; a plain connect gets nothing older than its welcome."""
    S = stack("kafka")
    A, B = S.servers["A"], S.servers["B"]
    L = Ledger()
    u, r = "wf-u", "wf-room"
    sent(S, L, "user", u, 3)
    sent(S, L, "room", r, 3)
    for kind in KINDS:
        c = rl.RawTransport(A.addr, "/ws?token=" + rl.token(u), 10) if kind == "raw" else \
            rl.WebsocketsTransport("ws://%s/ws?token=%s" % (A.addr, rl.token(u)), 10)
        c.send({"type": "join", "room": r})  # before reading anything
        w = c.recv(10)
        assert w.get("type") == "welcome" and isinstance(w.get("pos"), str), w
        assert "recovered" not in w or w["recovered"] is False, w
        j = c.recv(10)
        assert j.get("type") == "joined" and j.get("room") == r and isinstance(j.get("pos"), str), j
        su, sr = L.next("user:" + u), L.next("room:" + r)
        S.produce([line("user", u, su), line("room", r, sr)])
        got = sorted([c.recv(10)["data"]["s"], c.recv(10)["data"]["s"]])
        assert got == sorted([su, sr]), got  # the live ones, nothing older
        c.close()
    s = Session(u, kind="websockets", rooms=[r])
    s.connect(A.addr)
    s.drop()
    w = s.connect(B.addr)  # nothing missed
    assert w.get("recovered") is True and s.joins[-1].get("recovered") is True, (w, s.joins)
    su = L.next("user:" + u)
    S.produce([line("user", u, su)])
    expect_next_is(s, "user", su)
    assert not s.stream_msgs("room:" + r), s.stream_msgs("room:" + r)
    s.close()


# ---- bad since ------------------------------------------------------------------------

def test_bad_since_recovered_false_connection_stays():
    S = stack("kafka")
    A, B = S.servers["A"], S.servers["B"]
    L = Ledger()
    u, r = "bad-u", "bad-room"
    # a bystander on the same server, fed all along
    by = Session("bad-bystander", kind="websockets", rooms=["bad-by-room"])
    by.connect(A.addr)
    good = Session(u, kind="raw", rooms=[r])
    good.connect(A.addr, resume=False)
    sent(S, L, "user", u, 7)
    sent(S, L, "room", r, 7)
    good.wait_seqs("user", 7)
    good.wait_seqs("room:" + r, 7)
    up = rl.parse_pos(good.pos["user"])
    rp = rl.parse_pos(good.pos["room:" + r])
    assert up and rp, (good.pos, "positions not in the documented shape")
    good.close()
    t = rl.now_ms()
    other_epoch = "%08x" % ((int(up["epoch"], 16) ^ 0x5a5a5a5a) & 0xffffffff)
    bad_user = [
        "", "garbage", "u", "....", "u.%s.%d" % (up["epoch"], up["part"]),
        "u.%s.%d.%d.%x.0" % (up["epoch"], up["part"], up["off"], up["t"]),
        "u.%s.+%d.%d.%x" % (up["epoch"], up["part"], up["off"] - 2, up["t"]),
        "u.%s.%d. %d.%x" % (up["epoch"], up["part"], up["off"] - 2, up["t"]),
        "u.%s.%d.%d.%X" % (up["epoch"].upper(), up["part"], up["off"] - 2, up["t"]),
        "x" * 4000, "\u00e9\u00e9\u00e9", "u.%s.%d.%d.%x" % ("zzzzzzzz", up["part"], 1, t),
        # huge numbers
        rl.make_pos("u", up["epoch"], up["part"], 9223372036854775807, t),
        "u.%s.%d.99999999999999999999999.%x" % (up["epoch"], up["part"], t),
        rl.make_pos("u", up["epoch"], 2147483647, 1, t),
        "u.%s.%d.%d.ffffffffffffffffffff" % (up["epoch"], up["part"], up["off"] - 2),
        rl.make_pos("u", up["epoch"], up["part"], -2, t),
        # another partition than the user's (partitions 0..P-1 exist)
        rl.make_pos("u", up["epoch"], (up["part"] + 1) % S.partitions, up["off"] - 2, t),
        rl.make_pos("u", up["epoch"], S.partitions, 0, t),
        # another epoch, with an offset that exists
        rl.make_pos("u", other_epoch, up["part"], up["off"] - 2, up["t"]),
        # from the future: past the log end
        rl.make_pos("u", up["epoch"], up["part"], up["off"] + 1000, t),
        # the room stream's position handed to the user stream
        good.pos["room:" + r],
    ]
    before = resume_counts(A, "user")
    for i, since in enumerate(bad_user):
        kind = KINDS[i % 2]
        s = Session(u, kind=kind, rooms=[])
        s.pos["user"] = since
        w = s.connect(A.addr)
        assert w.get("recovered") is False, (since[:80], w)
        assert isinstance(w.get("pos"), str) and w["pos"] != since, w
        s.ping()  # the connection stays, served
        seq = L.next("user:" + u)
        S.produce([line("user", u, seq)])
        expect_next_is(s, "user", seq)  # nothing replayed before the live one
        s.close()
    after = resume_counts(A, "user")
    refused = sum(after.get(k, 0) - before.get(k, 0) for k in after if k != "recovered")
    assert refused >= len(bad_user), (before, after)
    assert after.get("recovered", 0) == before.get("recovered", 0), (before, after)

    bad_room = [
        "garbage", "",
        rl.make_pos("r", other_epoch, rp["part"], rp["off"] - 2, rp["t"]),
        rl.make_pos("r", rp["epoch"], rp["part"], rp["off"] + 1000, t),
        rl.make_pos("r", rp["epoch"], rp["part"], 9223372036854775807, t),
        good.pos["user"],
    ]
    s = Session("bad-roomer", kind="websockets", rooms=[])
    s.connect(B.addr)
    for since in bad_room:
        n = len(s.joins)
        s.send({"type": "join", "room": r, "since": since})
        s.wait(lambda: len(s.joins) > n, 10, "joined")
        j = s.joins[-1]
        assert j.get("room") == r and j.get("recovered") is False, (since, j)
        seq = L.next("room:" + r)
        S.produce([line("room", r, seq)])
        expect_next_is(s, "room:" + r, seq)
        s.send({"type": "leave", "room": r})
        s.wait(lambda: any(f.get("type") == "left" for f in s.others[-1:]), 10, "left")
    s.ping()
    s.close()
    # the bystander got everything, in order, once
    bys = L.next("user:bad-bystander")
    S.produce([line("user", "bad-bystander", bys)])
    by.wait_seqs("user", bys + 1)
    check_stream(by, "user", bys + 1)
    for pr in (A, B):
        assert pr.alive()
    by.close()


def high_watermark(bootstrap, topic, part):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "resume-wm",
                  "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, part), timeout=ft.scaled(10))[1]
    finally:
        c.close()


def foreign_position(partitions, n):
    """A user and a room position from another cluster (its own broker,
    delivery server and Redis prefix), at offset n - 1 of the keys'
    partitions (n records on each)."""
    K2 = ft.KafkaDev(partitions=partitions)
    S2 = Stack(apache=K2, redis=stack("kafka").redis)
    S2.own_kafka = True
    try:
        S2.start("X", redis_prefix="x%d:" % partitions)
        S2.wait_ready()
        L2 = Ledger()
        s = Session("fc-user", kind="raw", rooms=["fc-room"])
        s.connect(S2.servers["X"].addr)
        sent(S2, L2, "user", "fc-user", n)
        sent(S2, L2, "room", "fc-room", n)
        s.wait_seqs("user", n)
        s.wait_seqs("room:fc-room", n)
        pos = (s.pos["user"], s.pos["room:fc-room"])
        s.close()
        return pos
    finally:
        S2.servers["X"].stop()
        K2.stop()


def test_position_from_another_cluster():
    """The other cluster's positions name offsets that this cluster holds
    too (it has more records for both keys than those offsets), written
    after the positions were made. Refused: by the epoch when the clusters'
    ids differ (always with another partition count); the embedded broker's
    cluster id comes from a heap address, which ASan's allocator makes the
    same in two processes, and then the anchor rule (the record at the
    offset is newer than the position) refuses it."""
    S = stack("kafka")
    A = S.servers["A"]
    L = Ledger()
    for parts in (S.partitions, S.partitions * 2):  # another cluster; another partition count
        highs = [high_watermark(S.kafka.bootstrap, t, ft.partition_of(k, S.partitions))
                 for t, k in (("fanout.users", "fc-user"), ("fanout.rooms", "fc-room"))]
        n = max(highs) + 3
        fu, fr = foreign_position(parts, n)
        sent(S, L, "user", "fc-user", n + 5)  # now this cluster holds the offsets
        sent(S, L, "room", "fc-room", n + 5)
        mine = Session("fc-probe", kind="raw")
        mine.connect(A.addr)
        same = rl.parse_pos(fu)["epoch"] == rl.parse_pos(mine.welcomes[-1]["pos"])["epoch"]
        mine.close()
        assert not (same and parts != S.partitions), \
            "another partition count gave the same epoch: %s" % fu
        if same:
            ft.log("the two embedded brokers share a cluster id here: refused by the anchor rule")
        before = resume_counts(A, "user")
        for kind in KINDS:
            s = Session("fc-user", kind=kind, rooms=["fc-room"])
            s.pos["user"] = fu
            s.pos["room:fc-room"] = fr
            w = s.connect(A.addr)
            assert w.get("recovered") is False, (parts, w)
            assert s.joins[-1].get("recovered") is False, (parts, s.joins[-1])
            su, sr = L.next("user:fc-user"), L.next("room:fc-room")
            S.produce([line("user", "fc-user", su), line("room", "fc-room", sr)])
            expect_next_is(s, "user", su)  # no replay
            expect_next_is(s, "room:fc-room", sr)
            s.ping()
            s.close()
        after = resume_counts(A, "user")
        why = "foreign" if same else "epoch"
        assert after.get(why, 0) - before.get(why, 0) == 2, (why, before, after)


# ---- the cap and the window ------------------------------------------------------------

def test_over_cap_refused_at_cap_recovered():
    S = stack("kafka")
    A, B = S.servers["A"], S.servers["B"]
    L = Ledger()
    u, r = "cap-u", "cap-room"
    s = Session(u, kind="websockets", rooms=[r])
    s.connect(A.addr)
    s.drop()
    sent(S, L, "user", u, 1100)
    sent(S, L, "room", r, 1100)
    before = resume_counts(B, "user")
    w = s.connect(B.addr)
    assert w.get("recovered") is False, w
    assert s.joins[-1].get("recovered") is False, s.joins[-1]
    su, sr = L.next("user:" + u), L.next("room:" + r)
    S.produce([line("user", u, su), line("room", r, sr)])
    expect_next_is(s, "user", su)  # no partial replay
    expect_next_is(s, "room:" + r, sr)
    assert len(s.msgs) == 2, [m["data"] for m in s.msgs][:10]
    after = resume_counts(B, "user")
    assert after.get("over_cap", 0) > before.get("over_cap", 0) or \
        any(k.startswith("over") and after[k] > before.get(k, 0) for k in after), (before, after)
    # exactly at the cap: recovered, all 1,000 once, in order
    s.drop()
    sent(S, L, "user", u, 1000)
    sent(S, L, "room", r, 1000)
    w = s.connect(A.addr)
    assert w.get("recovered") is True, w
    assert s.joins[-1].get("recovered") is True, s.joins[-1]
    s.wait_seqs("user", su + 1001, timeout=60, first=su)
    s.wait_seqs("room:" + r, sr + 1001, timeout=60, first=sr)
    check_stream(s, "user", su + 1001, first=su)
    check_stream(s, "room:" + r, sr + 1001, first=sr)
    s.close()


def test_away_longer_than_window_refused():
    base = stack("kafka")
    S = Stack(apache=base.kafka, redis=base.redis)  # its own group, its own servers
    try:
        A = S.start("WA", "--resume-window-ms", "2000", redis_prefix="w:")
        S.start("WB", "--resume-window-ms", "2000", redis_prefix="w:")
        S.wait_ready()
        L = Ledger()
        u, r = "win-u", "win-room"
        s = Session(u, kind="raw", rooms=[r])
        s.connect(A.addr)
        s.drop()
        sent(S, L, "user", u, 2)
        sent(S, L, "room", r, 2)
        time.sleep(2.5)  # the condition under test is time itself: the missed ones age
        w = s.connect(S.servers["WB"].addr)
        assert w.get("recovered") is False, w
        assert s.joins[-1].get("recovered") is False, s.joins[-1]
        su = L.next("user:" + u)
        S.produce([line("user", u, su)])
        expect_next_is(s, "user", su)
        # within the window: recovered
        s.drop()
        sent(S, L, "user", u, 2)
        w = s.connect(A.addr)
        assert w.get("recovered") is True, w
        s.wait_seqs("user", su + 3, first=su)
        check_stream(s, "user", su + 3, first=su)
        s.close()
    finally:
        for pr in S.servers.values():
            pr.stop()


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

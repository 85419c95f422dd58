"""Room mode "redis": the rooms topic is consumed once per deployment (a
consumer group shared by the servers), the consuming server PUBLISHes each
message to ws:room:{room}, and every server subscribed to that channel (the
ones with a local member) delivers it. Two servers, members on both."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient  # noqa: E402

S = dtest.Stack()
A = S.start("A", "--room-mode", "redis")
B = S.start("B", "--room-mode", "redis")


def assigned(pr):
    return dtest.metrics(pr).get("fanout_delivery_assigned_partitions", 0)


# Users and rooms partitions are both shared through consumer groups: each
# topic's partitions are spread over A and B, nobody reads all of them.
ft.eventually(lambda: assigned(A) + assigned(B) == 2 * S.kafka.partitions and
              assigned(A) > 0 and assigned(B) > 0,
              timeout=40, interval=0.2, what="both consumer groups settled")
S.wait_rooms_live()  # the rooms group starts at "latest": found before the tests produce


def join(c, room):
    c.send_json({"type": "join", "room": room})
    m = c.recv(timeout=10)
    assert ft.joined_reply(m) == {"type": "joined", "room": room}, m


def test_each_member_on_each_server_gets_each_message_once():
    rooms = ["rr%d" % i for i in range(8)]  # keys spread over the partitions
    claim = ["rr*", "other"]
    a1 = WsClient(A.addr, token=dtest.token("a1", rooms=claim))
    b1 = WsClient(B.addr, token=dtest.token("b1", rooms=claim))
    b2 = WsClient(B.addr, token=dtest.token("b2", rooms=claim))
    xa = WsClient(A.addr, token=dtest.token("xa", rooms=claim))   # in another room only
    xb = WsClient(B.addr, token=dtest.token("xb", rooms=claim))   # in no room
    for c in (a1, b1, b2):
        for r in rooms:
            join(c, r)
    join(xa, "other")
    ft.eventually(lambda: all(S.redis.cli("PUBSUB", "NUMSUB", "ws:room:" + r).split() ==
                              ["ws:room:" + r, "2"] for r in rooms),
                  what="both servers subscribed to every room channel")
    before = {pr.sid: dtest.metrics(pr)["fanout_delivery_messages_in_total{source=\"rooms\"}"]
              for pr in (A, B)}
    n = 3
    lines = []
    for i in range(n):
        for r in rooms:
            lines.append("fanout.rooms broadcast %s application/json %s\n" %
                         (r, json.dumps({"r": r, "i": i}).encode().hex()))
    S.produce(lines)
    expect = sorted((r, i) for r in rooms for i in range(n))
    got = {}
    for c, name in ((a1, "a1"), (b1, "b1"), (b2, "b2")):
        msgs = [c.recv(timeout=15) for _ in range(len(expect))]
        assert all(m["type"] == "message" and m["pos"].startswith("r.") for m in msgs), msgs
        got[name] = msgs
        assert sorted((m["room"], m["data"]["i"]) for m in msgs) == expect, msgs
        for r in rooms:  # per room in Kafka order
            assert [m["data"]["i"] for m in msgs if m["room"] == r] == list(range(n))
    # Once each: a marker on every room (its partition, after the n). A
    # second copy of a room's record would come before that room's marker,
    # so the next len(rooms) messages are the markers and nothing else.
    S.produce(["fanout.rooms broadcast %s application/json %s\n" %
               (r, json.dumps({"r": r, "i": "marker"}).encode().hex()) for r in rooms])
    for c in (a1, b1, b2):
        marks = [c.expect_next(lambda m: m["data"]["i"] == "marker") for _ in rooms]
        assert sorted(m["room"] for m in marks) == sorted(rooms), marks
    # The same frame (id, pos) for every recipient on either server.
    key = lambda m: (m["room"], m["data"]["i"])  # noqa: E731
    ref = {key(m): (m["id"], m["pos"]) for m in got["a1"]}
    for name in ("b1", "b2"):
        assert {key(m): (m["id"], m["pos"]) for m in got[name]} == ref
    # Non-members get nothing: xa is on A with a1, xb on B with b1; their
    # servers wrote every room frame before the markers above, so a message
    # sent to xa / xb now is queued after anything sent to them wrongly.
    for c, sub in ((xa, "xa"), (xb, "xb")):
        ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:" + sub) == "1",
                      what="%s registered" % sub)
        S.send(sub, {"marker": sub})
        c.expect_next(lambda m: m.get("data") == {"marker": sub}, "the direct marker")
    # Consumed once per deployment: A and B together took each record once,
    # and both took some (the room keys spread over both servers' partitions).
    after = {pr.sid: dtest.metrics(pr)["fanout_delivery_messages_in_total{source=\"rooms\"}"]
             for pr in (A, B)}
    took = {sid: after[sid] - before[sid] for sid in after}
    assert sum(took.values()) == len(expect) + len(rooms), took  # and the markers
    assert all(v > 0 for v in took.values()), took
    # The offsets are committed by the rooms group.
    for c in (a1, b1, b2, xa, xb):
        c.close()


def test_last_member_leaving_unsubscribes():
    c = WsClient(A.addr, token=dtest.token("solo", rooms=["solo"]))
    join(c, "solo")
    ft.eventually(lambda: S.redis.cli("PUBSUB", "NUMSUB", "ws:room:solo").split()[-1] == "1",
                  what="subscribed")
    S.broadcast("solo", {"k": 1})
    assert c.recv(timeout=15)["data"] == {"k": 1}
    c.send_json({"type": "leave", "room": "solo"})
    assert c.recv(timeout=10) == {"type": "left", "room": "solo"}
    ft.eventually(lambda: S.redis.cli("PUBSUB", "NUMSUB", "ws:room:solo").split()[-1] == "0",
                  what="unsubscribed")
    # Nothing more for c: a witness on B gets the next broadcast (so it was
    # consumed and published), then a message sent to c itself comes next.
    w = WsClient(B.addr, token=dtest.token("solo-w", rooms=["solo"]))
    join(w, "solo")
    ft.eventually(lambda: numsub("solo") == "1", what="B subscribed")
    S.broadcast("solo", {"k": 2})
    assert w.recv(timeout=15)["data"] == {"k": 2}
    ft.eventually(lambda: S.redis.cli("HLEN", "ws:connections:solo") == "1", what="registered")
    S.send("solo", {"marker": 1})
    c.expect_next(lambda m: m.get("data") == {"marker": 1}, "the direct marker")
    w.close()
    c.close()


# ---- H1: re-joining a room while its UNSUBSCRIBE is in flight ----------------
# The last local leave sends UNSUBSCRIBE; a join before its reply used to make
# hiredis keep calling (then free again) a per-command record we had freed.
# Each case ends with a broadcast that must arrive exactly once, and the last
# test stops both servers: exit 0 means no crash and, under ASan, no leak.

def numsub(room):
    return S.redis.cli("PUBSUB", "NUMSUB", "ws:room:" + room).split()[-1]


def expect_replies(c, msgs):
    for m in msgs:
        want = {"type": "joined" if m["type"] == "join" else "left", "room": m["room"]}
        got = ft.joined_reply(c.recv(timeout=10))
        assert got == want, (got, want)


def broadcast_once(c, room, k):
    S.broadcast(room, {"k": k})
    m = c.recv(timeout=15)
    assert m["type"] == "message" and m["room"] == room and m["data"] == {"k": k}, m
    # once: the next broadcast on the room (same partition) comes next
    S.broadcast(room, {"k": k, "marker": True})
    c.expect_next(lambda m: m["room"] == room and m["data"] == {"k": k, "marker": True})


def churn(room, seqs, glued):
    c = WsClient(A.addr, token=dtest.token("churn-" + room, rooms=[room]))
    join(c, room)
    ft.eventually(lambda: numsub(room) == "1", what="subscribed")
    for i, seq in enumerate(seqs * 5):
        msgs = [{"type": t, "room": room} for t in seq]
        if glued:
            c.send_json_glued(msgs)
        else:
            for m in msgs:
                c.send_json(m)
                time.sleep(0.001 * (i % 3))  # 0-2 ms: before or after the reply
        expect_replies(c, msgs)
        joined = seq[-1] == "join"
        ft.eventually(lambda: numsub(room) == ("1" if joined else "0"),
                      what="subscription follows membership")
        if joined:
            broadcast_once(c, room, i)
        else:
            join(c, room)
            ft.eventually(lambda: numsub(room) == "1", what="subscribed again")
    assert A.alive(), A.log_tail()
    c.close()


def test_rejoin_in_one_write_keeps_subscription():
    churn("glued", [["leave", "join"], ["leave", "join", "leave", "join"],
                    ["leave", "join", "leave"]], glued=True)


def test_rejoin_over_several_writes_keeps_subscription():
    churn("spread", [["leave", "join"], ["leave", "join", "leave", "join"],
                     ["leave", "join", "leave"]], glued=False)


def test_join_leave_join_from_outside_the_room():
    c = WsClient(A.addr, token=dtest.token("jlj", rooms=["jlj"]))
    for i in range(5):
        msgs = [{"type": t, "room": "jlj"} for t in ("join", "leave", "join")]
        c.send_json_glued(msgs)
        expect_replies(c, msgs)
        ft.eventually(lambda: numsub("jlj") == "1", what="subscribed")
        broadcast_once(c, "jlj", i)
        c.send_json({"type": "leave", "room": "jlj"})
        assert c.recv(timeout=10) == {"type": "left", "room": "jlj"}
        ft.eventually(lambda: numsub("jlj") == "0", what="unsubscribed")
    c.close()


def test_last_member_disconnects_while_another_joins():
    room = "handover"
    for i in range(10):
        old = WsClient(A.addr, token=dtest.token("old%d" % i, rooms=[room]))
        new = WsClient(A.addr, token=dtest.token("new%d" % i, rooms=[room]))
        join(old, room)
        ft.eventually(lambda: numsub(room) == "1", what="subscribed")
        # EOF of the last member and the newcomer's join, as close together as
        # we can make them (usually read in the same loop turn).
        frame = WsClient.frame(0x1, json.dumps({"type": "join", "room": room}).encode())
        old.abort()
        new.sock.sendall(frame)
        assert ft.joined_reply(new.recv(timeout=10)) == {"type": "joined", "room": room}
        ft.eventually(lambda: numsub(room) == "1", what="still subscribed")
        broadcast_once(new, room, i)
        new.close()
        ft.eventually(lambda: numsub(room) == "0", what="unsubscribed after the last left")
    assert A.alive(), A.log_tail()


def test_rejoins_did_wait_for_the_unsubscribe_reply():
    """The glued leave+join above must have hit the in-flight UNSUBSCRIBE
    (otherwise these tests would not exercise the race at all)."""
    with open(A.logpath, "rb") as f:
        assert b"room joined while its unsubscribe is pending" in f.read()


def test_zz_servers_shut_down_cleanly():
    """Runs last: a use-after-free, double free or leak in the Pub/Sub
    bookkeeping shows up as a crash or a non-zero exit (ASan, LeakSanitizer)."""
    for pr in (A, B):
        assert pr.alive(), pr.log_tail()
        rc = pr.stop(timeout=30)
        assert rc == 0, "%s exited %s\n%s" % (pr.sid, rc, pr.log_tail(80))


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

"""Redis shards (--redis A,B,C; schemas/redis-shards.md): three real
redis-server nodes, the embedded Kafka, three delivery servers whose ids hash
to the three nodes, room mode "redis", and fanout-ingest for presence.
Checks where every key lives, that sends, room broadcasts and presence reach
every user, that a node killed costs only what lives on it (and /readyz of
both services names it), and that after it comes back empty every user is
reachable again without waiting for the periodic refresh (60 s here)."""

import json
import os
import socket
import sys
import urllib.error
import urllib.request

import xxhash  # Debian's python3-xxhash

sys.path.insert(0, os.path.dirname(__file__))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402
from wsclient import WsClient, http_get  # noqa: E402

API_KEY = "shards-test-key-0123456789"


def node_of(name, n):
    """The contract's node (schemas/redis-shards.md), computed here on its own:
    jump consistent hash of XXH32 (seed 0) of the name."""
    key, b, j = xxhash.xxh32_intdigest(name.encode()), -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


N = 3
S = dtest.Stack()
NODES = [S.redis] + [ft.Redis() for _ in range(N - 1)]
REDIS = ",".join(r.addr for r in NODES)
# One server per node: the first id of the form srv-<i> on each.
SIDS = {}
i = 0
while len(SIDS) < N:
    SIDS.setdefault(node_of("srv-%d" % i, N), "srv-%d" % i)
    i += 1
SERVERS = {}
for k in range(N):
    sid = SIDS[k]
    SERVERS[k] = S.start(sid, "--redis", REDIS, "--room-mode", "redis")
ING = ft.start_service("fanout-ingest", "ingest", [
    "--listen", "127.0.0.1:0", "--kafka", S.kafka.bootstrap, "--redis", REDIS,
    "--api-keys", API_KEY, "--redis-timeout-ms", "300"])


def assigned(pr):
    return dtest.metrics(pr).get("fanout_delivery_assigned_partitions", 0)


# Room mode redis: users and rooms partitions both spread over the group.
ft.eventually(lambda: sum(assigned(p) for p in SERVERS.values()) == 2 * S.kafka.partitions and
              all(assigned(p) > 0 for p in SERVERS.values()),
              timeout=40, interval=0.2, what="both consumer groups settled")
S.wait_rooms_live()

USERS = ["user-%d" % i for i in range(24)]
CLIENTS = {}  # user -> (server node, WsClient)


def connect_all():
    for j, u in enumerate(USERS):
        k = j % N
        CLIENTS[u] = (k, WsClient(SERVERS[k].addr, token=dtest.token(u, rooms=["room-*"])))


def registered(u):
    return NODES[node_of(u, N)].cli("HLEN", "ws:connections:" + u) == "1"


def presence(u):
    req = urllib.request.Request("http://%s/v1/presence/%s" % (ING.addr, u),
                                 headers={"Authorization": "Bearer " + API_KEY})
    try:
        with urllib.request.urlopen(req, timeout=ft.scaled(5)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def ingest_ready():
    try:
        with urllib.request.urlopen("http://%s/readyz" % ING.addr, timeout=ft.scaled(5)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def send_and_check(users, tag, recovered=None):
    """One message to each user; each gets exactly it (nothing else first,
    except, once each, a message tagged `recovered`: one given up while a
    node was down that the user's server replayed from the log when its
    Pub/Sub came back, delivery/stream.c fo__streams_resync)."""
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"tag": tag, "u": u}).encode().hex()) for u in users])
    got_back = 0
    for u in users:
        m = CLIENTS[u][1].recv(timeout=15)
        if recovered is not None and m.get("data") == {"tag": recovered}:
            got_back += 1
            m = CLIENTS[u][1].recv(timeout=15)
        assert m["type"] == "message" and m["user"] == u and m["data"] == {"tag": tag, "u": u}, m
    return got_back


def test_keys_live_on_their_node():
    connect_all()
    ft.eventually(lambda: all(registered(u) for u in USERS), what="every user registered")
    per_node = [0] * N
    for u in USERS:
        k = node_of(u, N)
        per_node[k] += 1
        for other in range(N):
            if other != k:
                assert NODES[other].cli("EXISTS", "ws:connections:" + u) == "0", (u, other)
    assert all(c > 0 for c in per_node), per_node  # spread over every node
    for k, sid in SIDS.items():
        assert NODES[k].cli("GET", "ws:alive:" + sid) == sid
        for other in range(N):
            if other != k:
                assert NODES[other].cli("EXISTS", "ws:alive:" + sid) == "0"
        # its channel: subscribed on its node only
        assert NODES[k].cli("PUBSUB", "NUMSUB", "ws:server:" + sid).split()[-1] == "1"
        for other in range(N):
            if other != k:
                assert NODES[other].cli("PUBSUB", "NUMSUB", "ws:server:" + sid).split()[-1] == "0"


def test_sends_and_presence_reach_every_user():
    send_and_check(USERS, "all")
    send_and_check(USERS, "again")
    for u in USERS:
        st, body = presence(u)
        assert st == 200 and body == {"user": u, "online": True, "connections": 1}, (u, st, body)
    # Several servers consumed and published to others' nodes.
    assert sum(dtest.metrics(p)["fanout_delivery_published_total"] for p in SERVERS.values()) > 0
    st, body = ingest_ready()
    assert st == 200 and body["redis"] is True and body["redis_down"] == [], body


def commandstats(node):
    """{command: calls} of one node."""
    out = {}
    for line in node.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            out[name] = int(dict(kv.split("=", 1) for kv in rest.split(","))["calls"])
    return out


def send_many_and_check(k, tag):
    """k messages to every user in one go (so the consumers route them in
    batches); each user gets its k, in order, and nothing else."""
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"tag": tag, "i": i}).encode().hex())
               for i in range(k) for u in USERS])
    for u in USERS:
        for i in range(k):
            m = CLIENTS[u][1].recv(timeout=15)
            assert m["type"] == "message" and m["data"] == {"tag": tag, "i": i}, (u, i, m)


def test_routing_is_batched_per_node():
    """A loop turn's user routes cost one look-up script call per users'
    node and one publish call per servers' node (HGETALL and PUBLISH run
    inside them), not a command per message. The calls carry their scripts
    (EVAL): a SCRIPT FLUSH between batches loses and reorders nothing."""
    for node in NODES:
        node.cli("CONFIG", "RESETSTAT")
    k = 10
    send_many_and_check(k, "batch")
    stats = [commandstats(node) for node in NODES]
    hgetall = sum(st.get("hgetall", 0) for st in stats)
    calls = sum(st.get("evalsha", 0) + st.get("eval", 0) for st in stats)
    publish = sum(st.get("publish", 0) for st in stats)
    ft.log("batched routing: %d messages, %d HGETALL, %d PUBLISH, %d script calls" %
           (k * len(USERS), hgetall, publish, calls))
    assert hgetall >= k * len(USERS), stats  # every message looked up
    assert publish > 0, stats
    assert calls * 3 <= hgetall + publish, stats  # several routes per call
    for st in stats:
        assert st.get("publish", 0) == 0 or st.get("eval", 0) > 0, stats
    # Scripts gone from every node (a restart would do that too), twice while
    # the messages are routed.
    for node in NODES:
        node.cli("SCRIPT", "FLUSH")
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"tag": "flush", "i": i}).encode().hex())
               for i in range(20) for u in USERS])
    for node in NODES:
        node.cli("SCRIPT", "FLUSH")
    for u in USERS:
        for i in range(20):
            m = CLIENTS[u][1].recv(timeout=15)
            assert m["type"] == "message" and m["data"] == {"tag": "flush", "i": i}, (u, i, m)


def test_room_mode_redis_over_shards():
    rooms = []  # one room per node
    j = 0
    while len(rooms) < N:
        r = "room-%d" % j
        if node_of(r, N) == len(rooms):
            rooms.append(r)
        j += 1
    members = {}
    for r in rooms:
        for k in range(N):  # a member on every server
            c = WsClient(SERVERS[k].addr, token=dtest.token("m-%s-%d" % (r, k), rooms=["room-*"]))
            c.send_json({"type": "join", "room": r})
            assert c.recv(timeout=10)["type"] == "joined"
            members[(r, k)] = c
    for r in rooms:
        k = node_of(r, N)
        ft.eventually(lambda: NODES[k].cli("PUBSUB", "NUMSUB", "ws:room:" + r).split()[-1] == "3",
                      what="room %s subscribed by every server on its node" % r)
    for r in rooms:
        S.broadcast(r, {"room": r})
    for (r, k), c in members.items():
        m = c.recv(timeout=15)
        assert m["room"] == r and m["data"] == {"room": r}, m
    for c in members.values():
        c.close()


def test_node_down_costs_only_what_lives_on_it():
    down = 1
    NODES[down].stop()
    # readyz: the server whose channel is there is not ready; every one names the node.
    want = "redis node %d %s down" % (down, NODES[down].addr)

    def readyz_all():
        out = {}
        for k, p in SERVERS.items():
            st, _, body = http_get(p.addr, "/readyz")
            out[k] = (st, body.decode() if isinstance(body, bytes) else body)
        return out
    ft.eventually(lambda: all(want in b for _, b in readyz_all().values()),
                  what="every /readyz names node %d" % down)
    for k, (st, body) in readyz_all().items():
        assert st == (503 if k == down else 200), (k, st, body)
    ft.eventually(lambda: ingest_ready()[1]["redis_down"] ==
                  [{"node": down, "addr": NODES[down].addr}], what="ingest names the node")
    assert ingest_ready()[0] == 200  # presence is not what ingest is ready for
    # Users on the other nodes, on servers whose channel is up, keep receiving.
    alive = [u for u in USERS if node_of(u, N) != down and CLIENTS[u][0] != down]
    assert len(alive) >= 4, alive
    for n in range(3):
        send_and_check(alive, "during-%d" % n)
    for u in USERS:
        st, body = presence(u)
        if node_of(u, N) == down:
            assert st == 503, (u, st)
        else:  # entries pointing at the server on the down node are trusted
            assert st == 200 and body["connections"] == 1, (u, st, body)
    # Messages for the down node's users are given up (counted), not held:
    # the partitions keep moving (the sends above arrived after them).
    lost = [u for u in USERS if node_of(u, N) == down]

    def given_up():
        return sum(dtest.metrics(p)["fanout_delivery_routes_node_down_total"]
                   for p in SERVERS.values())
    before = given_up()
    S.produce(["fanout.users send %s application/json %s\n" %
               (u, json.dumps({"tag": "lost"}).encode().hex()) for u in lost])
    ft.eventually(lambda: given_up() >= before + len(lost), what="routes given up, counted")
    send_and_check(alive, "after-lost")
    for u in lost:  # only a local delivery (consumed where the user is) reaches them
        try:
            while True:
                assert CLIENTS[u][1].recv(timeout=0.3)["data"] == {"tag": "lost"}
        except socket.timeout:
            pass


def test_node_back_empty_everyone_reachable():
    down = 1
    NODES[down].start()  # same port, empty (no persistence)
    ft.eventually(lambda: all(registered(u) for u in USERS), timeout=20,
                  what="users of the returned node registered again (no 60 s refresh needed)")
    sid = SIDS[down]
    ft.eventually(lambda: NODES[down].cli("GET", "ws:alive:" + sid) == sid, what="liveness back")
    for k, p in SERVERS.items():
        ft.eventually(lambda: http_get(p.addr, "/readyz")[0] == 200, what="ready again")
    ft.eventually(lambda: ingest_ready()[1]["redis_down"] == [], what="ingest: all nodes up")
    # The routers hold a returned node's routes for half the liveness TTL.
    ft.eventually(lambda: all(
        dtest.metrics(p).get("fanout_delivery_redis_up", 0) == 1 for p in SERVERS.values()),
        what="redis_up everywhere")
    back = send_and_check(USERS, "after", recovered="lost")
    ft.log("messages given up while the node was down, replayed after it came back: %d" % back)
    for u in USERS:
        st, body = presence(u)
        assert st == 200 and body["connections"] == 1, (u, st, body)
    for _, c in CLIENTS.values():
        c.close()


if __name__ == "__main__":
    try:
        ft.run_tests(globals(), only=sys.argv[1:] or None)
    finally:
        for r in NODES[1:]:
            r.stop()

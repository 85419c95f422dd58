"""Shared set-up for the delivery integration tests: a real redis-server,
the embedded Kafka, and fanout-delivery processes, all on free loopback
ports, stopped by PID."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402

SECRET = "test-secret-please-change-0123456789abcdef"


def user_line(user, data, ct="application/json"):
    """fanout-test-produce's input line for one users-topic record (data:
    bytes as they are, anything else as JSON)."""
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return "fanout.users send %s %s %s\n" % (user, ct, payload.hex())


class Stack:
    def __init__(self, partitions=4):
        self.redis = ft.Redis()
        self.kafka = ft.KafkaDev(partitions=partitions)
        self.servers = {}

    def start(self, sid, *extra, wait_assigned=True, listen="127.0.0.1:0"):
        args = ["--listen", listen, "--redis", self.redis.addr, "--kafka",
                self.kafka.bootstrap, "--server-id", sid, "--jwt-secret", SECRET,
                "--session-timeout-ms", "6000", "--alive-ttl-ms", "1500",
                "--log-level", "debug", *extra]
        pr = ft.start_service("fanout-delivery", "delivery-" + sid, args)
        pr.sid = sid
        self.servers[sid] = pr
        return pr

    def stop(self):
        for pr in self.servers.values():
            if pr.alive():
                pr.stop()
        self.kafka.stop()
        self.redis.stop()

    def wait_group_settled(self, expect_total=None, timeout=30):
        """Waits until the users partitions are spread over the running
        servers (each assigned partitions count is stable)."""
        total = expect_total or self.kafka.partitions

        def ok():
            # assigned = users partitions + rooms partitions (all of them)
            counts = [metrics(pr).get("fanout_delivery_assigned_partitions", 0) -
                      self.kafka.partitions
                      for pr in self.servers.values() if pr.alive()]
            return ft.partitions_spread(counts, total, total)
        ft.eventually(ok, timeout=timeout, interval=0.2, what="consumer group settled")
        self.wait_rooms_live()

    def wait_rooms_live(self, timeout=30):
        """Rooms are read from the end of each partition (room-mode kafka:
        from where each server started; redis: "latest" for a new group), so
        a broadcast produced before a server has found that end is never
        delivered. Probes every rooms partition until each running server
        delivers a broadcast from each of them to a member of its own."""
        from wsclient import Closed, WsClient
        rooms = probe_rooms(self.kafka.partitions)

        def open_probe(sid):
            c = WsClient(self.servers[sid].addr, token=token("probe-" + sid, rooms=["__probe*"]))
            for r in rooms:
                c.send_json({"type": "join", "room": r})
                m = c.recv(timeout=10)
                assert ft.joined_reply(m) == {"type": "joined", "room": r}, m
            return c

        conns, probes = {}, {}
        for sid, pr in self.servers.items():
            if pr.alive():
                conns[sid] = metrics(pr).get("fanout_delivery_connections", 0)
                probes[sid] = open_probe(sid)
        pending = {(sid, r) for sid in probes for r in rooms}

        def read_all():
            # Round-robin in short reads: each probe answers its pings in
            # time even on a server with a 400 ms ping interval.
            for sid in list(probes):
                try:
                    while True:
                        m = probes[sid].recv(timeout=0.05 / ft.SCALE)
                        if m.get("type") == "message":
                            pending.discard((sid, m["room"]))
                except socket.timeout:
                    pass
                except (Closed, OSError):
                    probes[sid] = open_probe(sid)  # closed anyway: a new one

        deadline = time.time() + ft.scaled(timeout)
        k = 0
        while pending:
            assert time.time() < deadline, "rooms not delivered from: %r" % sorted(pending)
            lines = "".join("fanout.rooms broadcast %s application/json %s\n" %
                            (r, json.dumps({"probe": k}).encode().hex()) for r in rooms)
            p = subprocess.Popen([ft.find_binary("fanout-test-produce"), self.kafka.bootstrap],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            p.stdin.write(lines)
            p.stdin.close()
            while p.poll() is None:
                read_all()
            assert p.returncode == 0, p.stderr.read()
            p.stderr.close()
            until = time.time() + ft.scaled(0.3)
            while pending and time.time() < until:
                read_all()
            k += 1
        # Gone again before the tests count connections or rooms.
        for sid, c in probes.items():
            c.close()
            c.expect_close()
            pr = self.servers[sid]
            ft.eventually(lambda: metrics(pr).get("fanout_delivery_connections", 0) <= conns[sid],
                          what="probe connection closed on %s" % sid)

    def produce(self, lines):
        p = subprocess.run([ft.find_binary("fanout-test-produce"), self.kafka.bootstrap],
                           input="".join(lines), capture_output=True, text=True,
                           timeout=ft.scaled(60))
        assert p.returncode == 0, p.stderr
        return p.stdout

    def send(self, user, data, ct="application/json", n=1):
        return self.produce([user_line(user, data, ct)] * n)

    def broadcast(self, room, data, ct="application/json"):
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        return self.produce(["fanout.rooms broadcast %s %s %s\n" % (room, ct, payload.hex())])


class UserFeed:
    """One fanout-test-produce kept open on a broker: send() puts a users-topic
    record for a user; warm() sends until one reaches the client (a new
    group's offsets start at the end, so the first records may be missed)
    and drains the other warm-ups."""

    def __init__(self, bootstrap):
        self.p = subprocess.Popen([ft.find_binary("fanout-test-produce"), bootstrap],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

    def send(self, user, data):
        self.p.stdin.write(user_line(user, data))
        self.p.stdin.flush()

    def warm(self, client, user, timeout=120):
        deadline = time.time() + ft.scaled(timeout)
        k = 0
        while True:
            assert time.time() < deadline, "no warm-up record reached the client"
            self.send(user, {"warm": k})
            k += 1
            try:
                if client.recv(timeout=2).get("type") == "message":
                    break
            except TimeoutError:
                pass
        try:
            while client.recv(timeout=0.5).get("data", {}).get("warm") is not None:
                pass
        except TimeoutError:
            pass

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=60)


def probe_rooms(partitions):
    """One room key per rooms partition (for wait_rooms_live)."""
    out, i = {}, 0
    while len(out) < partitions:
        r = "__probe%d" % i
        out.setdefault(ft.partition_of(r, partitions), r)
        i += 1
    return [out[p] for p in sorted(out)]


def committed(bootstrap, topic, partition, group="fanout-delivery"):
    """The offset the group committed for topic/partition (-1001: none yet),
    read with python3-confluent-kafka's OffsetFetch: it does not join the
    group, so it moves no partition."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        tp, = c.committed([TopicPartition(topic, partition)], timeout=ft.scaled(10))
        return tp.offset
    finally:
        c.close()


def token(sub, **kw):
    return ft.make_jwt(SECRET, sub, **kw)


def metrics(pr):
    return ft.metrics(pr.addr)


def ws_url(pr, sub, **kw):
    return "ws://%s/ws?token=%s" % (pr.addr, token(sub, **kw))


def run_async(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, ft.scaled(timeout)))

"""Shared set-up for the delivery integration tests: a real redis-server,
the embedded Kafka, and fanout-delivery processes, all on free loopback
ports, stopped by PID."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402

SECRET = "test-secret-please-change-0123456789abcdef"


class Stack:
    def __init__(self, partitions=4):
        self.redis = ft.Redis()
        self.kafka = ft.KafkaDev(partitions=partitions)
        self.servers = {}

    def start(self, sid, *extra, wait_assigned=True):
        args = ["--listen", "127.0.0.1:0", "--redis", self.redis.addr, "--kafka",
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
            n = 0
            for pr in self.servers.values():
                if not pr.alive():
                    continue
                m = metrics(pr)
                # assigned = users partitions + rooms partitions (all of them)
                n += m.get("fanout_delivery_assigned_partitions", 0) - self.kafka.partitions
            return n == total
        ft.eventually(ok, timeout=timeout, interval=0.2, what="consumer group settled")
        time.sleep(0.3)

    def produce(self, lines):
        p = subprocess.run([ft.find_binary("fanout-test-produce"), self.kafka.bootstrap],
                           input="".join(lines), capture_output=True, text=True,
                           timeout=ft.scaled(60))
        assert p.returncode == 0, p.stderr
        return p.stdout

    def send(self, user, data, ct="application/json", n=1):
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        return self.produce(["fanout.users send %s %s %s\n" % (user, ct, payload.hex())] * n)

    def broadcast(self, room, data, ct="application/json"):
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        return self.produce(["fanout.rooms broadcast %s %s %s\n" % (room, ct, payload.hex())])


def token(sub, **kw):
    return ft.make_jwt(SECRET, sub, **kw)


def metrics(pr):
    with urllib.request.urlopen("http://%s/metrics" % pr.addr, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def ws_url(pr, sub, **kw):
    return "ws://%s/ws?token=%s" % (pr.addr, token(sub, **kw))


def run_async(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, ft.scaled(timeout)))

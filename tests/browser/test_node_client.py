#!/usr/bin/python3
"""clients/js/fanout.js in Node.js with the npm ws package (pinned in
package-lock.json) against one real fanout-delivery (real redis-server, the
embedded Kafka): an expired token then a good one (auth=close: 4001, a fresh
token asked at once), the app-level heartbeat answered for several ping
intervals, a user message and a broadcast received, and the room resumed
(recovered:true) after the server closed the connection."""

import json
import os
import queue
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "delivery"))
import dtest  # noqa: E402
import fanout_test as ft  # noqa: E402

PING_MS = 500
S = P = None


class NodeClient:
    def __init__(self, addr, tokens):
        self.p = subprocess.Popen(["node", os.path.join(HERE, "node_client.mjs"), addr, *tokens],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=HERE, start_new_session=True)
        self.q = queue.Queue()
        self.events = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(json.loads(line))

    def until(self, pred, what, timeout=15.0):
        deadline = time.time() + ft.scaled(timeout)
        while True:
            for e in self.events:
                if pred(e):
                    return e
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("no %s; events: %s" % (what, self.events[-20:]))
            try:
                self.events.append(self.q.get(timeout=left))
            except queue.Empty:
                pass

    def close(self):
        try:
            self.p.stdin.write("close\n")
            self.p.stdin.flush()
            self.p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait(timeout=10)


def setup_module():
    global S, P
    if not os.path.isdir(os.path.join(HERE, "node_modules", "ws")):
        raise ft.Skip("the ws package is not installed (tests/browser/install.sh)")
    S = dtest.Stack()
    P = S.start("N", "--ping-interval-ms", str(PING_MS), "--pong-timeout-ms", str(PING_MS))
    S.wait_group_settled()


def teardown_module():
    if S is not None:
        S.stop()


def test_node_client_with_ws():
    expired = dtest.token("nodeuser", exp_in=-10, rooms=["r1"])
    good = dtest.token("nodeuser", rooms=["r1"])
    c = NodeClient(P.addr, [expired, good])
    try:
        c.until(lambda e: e == ["state", "disconnected", 4001], "the 4001 refusal")
        c.until(lambda e: e[0] == "welcome", "a welcome")
        assert ["welcome", PING_MS, False] in c.events, c.events
        c.until(lambda e: e == ["joined", "r1"], "joined r1")
        # several ping intervals (pong timeout = one interval): still the same connection
        time.sleep(ft.scaled(PING_MS * 5 / 1000.0))
        assert sum(1 for e in c.events if e[0] == "welcome") == 1, c.events
        assert [e for e in c.events if e[0] == "error"] == [], c.events
        S.send("nodeuser", {"n": 1})
        c.until(lambda e: e == ["message", "user", {"n": 1}], "the user message")
        deadline = time.time() + ft.scaled(20)
        while not any(e[:2] == ["message", "room:r1"] for e in c.events):
            assert time.time() < deadline, "no broadcast"
            S.broadcast("r1", {"b": 1})
            try:
                c.until(lambda e: e[:2] == ["message", "room:r1"], "a broadcast", timeout=0.5)
            except AssertionError:
                pass
        # the server goes away and comes back on its port: resume both streams
        P.stop()
        c.until(lambda e: e[:2] == ["state", "disconnected"] and e[2] != 4001, "the drop")
        S.start("N", "--ping-interval-ms", str(PING_MS), "--pong-timeout-ms", str(PING_MS),
                listen=P.addr)
        c.until(lambda e: e == ["recovered", "room:r1", True], "room resumed", timeout=30)
        assert ["recovered", "user", True] in c.events, c.events
    finally:
        c.close()
    ft.log("node client events: %s" % c.events[-12:])


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)

#!/usr/bin/python3
"""Fault tests through nginx against the real Kafka. Each starts its own
cluster, keeps traffic flowing (~40 sends/s to 30 users with 60 tabs, ~4
broadcasts/s to 3 rooms), takes one member away mid-stream, and asserts what
survives. Run one with: test_faults.py test_delivery_kill9 (no argument: all).

  test_delivery_kill9   kill -9 of a delivery server
  test_delivery_sigterm SIGTERM of a delivery server (scale-down)
  test_redis_restart    redis-server stopped and started again on its port (empty)
  test_kafka_kill9      the Kafka broker killed with -9, restarted on its port and data
"""

import asyncio
import json
import random
import sys
import time

from cluster import Cluster
from e2e_lib import GRACE, Ledger, Tab, Traffic, settle, start_tabs, wait_joined
from fanout_test import log, run_tests, scaled

RUN = "%04x" % random.randrange(1 << 16)


def now():
    return time.monotonic()


async def until(pred, timeout, what, interval=0.1):
    """Polls pred (run in a thread: it may call redis-cli or HTTP) until it is
    true; returns the time it became true. Fails after timeout (scaled)."""
    deadline = now() + scaled(timeout)
    last = None
    while now() < deadline:
        last = await asyncio.to_thread(pred)
        if last:
            return now()
        await asyncio.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s (last: %r)" % (
        scaled(timeout), what, last))


class Scenario:
    """30 users: the first half with two tabs through nginx, the second half
    with one through nginx and one straight to a delivery server (round
    robin); users i join room i % 3. No churn: every connection stays until
    a fault takes it."""

    def __init__(self, c, name, users=30, rooms=3, user_rate=40.0, room_rate=4.0):
        self.c = c
        self.name = name
        self.led = Ledger()
        self.users = ["%s%02d-%s" % (name[:1], i, RUN) for i in range(users)]
        self.rooms = ["%s-room%d-%s" % (name, i, RUN) for i in range(rooms)]
        self.tabs = []
        for i, u in enumerate(self.users):
            direct = c.delivery[i % len(c.delivery)] if i >= users // 2 else None
            for d in (None, direct):
                t = Tab(self.led, c, u, rooms=[self.rooms[i % rooms]], direct=d,
                        rng=random.Random(i))
                t.token = c.token(u, rooms=["%s-room*" % name])
                self.tabs.append(t)
        self.stop_tabs = asyncio.Event()
        self.stop_send = asyncio.Event()
        self.traffic = Traffic(self.led, c, self.users, rooms=self.rooms, user_rate=user_rate,
                               room_rate=room_rate, rng=random.Random(7))

    async def start(self):
        self.tasks = await start_tabs(self.tabs, self.stop_tabs)
        await wait_joined(self.tabs)
        self.sender = asyncio.ensure_future(self.traffic.run(self.stop_send))

    def placement(self):
        """{tab: server id} of every connected tab, from the registry: a
        user's direct tab is where it was sent; the rest of the user's entries
        are its tab through nginx."""
        out = {}
        for u in self.users:
            sids = list(self.c.registry(u).values())
            for t in self.tabs:
                if t.user == u and t.direct is not None and t.ws is not None:
                    sid = next(s.server_id for s in self.c.delivery if s is t.direct)
                    if sid in sids:
                        sids.remove(sid)
                        out[t] = sid
            rest = [t for t in self.tabs if t.user == u and t not in out and t.ws is not None]
            if len(set(sids)) == 1 and len(sids) == len(rest):
                for t in rest:
                    out[t] = sids[0]
        return out

    def presence_matches(self):
        """Presence of every user == its tabs connected right now."""
        for u in self.users:
            want = sum(1 for t in self.tabs if t.user == u and t.ws is not None)
            st, body = self.c.presence(u)
            if st != 200 or body.get("connections") != want:
                return False
        return True

    async def finish(self, settle_s=20.0, select=None):
        self.stop_send.set()
        await self.sender
        pending = await settle(self.led, settle_s, select)
        self.stop_tabs.set()
        await asyncio.wait(self.tasks, timeout=scaled(15))
        r = self.led.verify(select=select)
        self.led.report(self.name, r)
        print("%s: pending_at_end=%d reconnects=%d" % (
            self.name, pending, sum(t.reconnects for t in self.tabs)), flush=True)
        return r

    def assert_nothing_lost(self, r):
        assert r["lost"] == 0 and r["lost_users"] == 0, r["lost_examples"]
        assert r["out_of_order"] == 0 and r["pos_regressions"] == 0, r
        assert r["obligations"] > 0, "nothing was checked"


def with_cluster(body):
    c = Cluster()
    try:
        asyncio.run(body(c))
    finally:
        problems = c.shutdown_clean()
    assert not problems, "\n".join(problems)


# ---- kill -9 of a delivery server ---------------------------------------------------

def test_delivery_kill9():
    with_cluster(_delivery_kill9)


async def _delivery_kill9(c):
    sc = Scenario(c, "kill9")
    await sc.start()
    await asyncio.sleep(4)
    victim = c.delivery[0]
    place = await asyncio.to_thread(sc.placement)
    victims = [t for t, sid in place.items() if sid == victim.server_id]
    assert victims, "no tab on %s: %s" % (victim.server_id, place)
    t_kill = now()
    await asyncio.to_thread(victim.kill9)
    log("kill9: %d tabs were on %s" % (len(victims), victim.server_id))

    t_alive = await until(lambda: not c.alive_key(victim.server_id), 10, "its alive key to expire")
    t_back = await until(lambda: all(t.ws is not None and t.conns[-1].t_open > t_kill
                                     for t in victims), 20, "its clients to reconnect")
    t_pres = await until(sc.presence_matches, 15, "presence to count only live connections")
    t_bal = await until(c.balanced, 30, "its partitions to move to the others")
    print("kill9: alive key gone after %.1fs (ttl 3s), clients back after %.1fs, presence right "
          "after %.1fs, partitions moved after %.1fs (session timeout 6s)" % (
              t_alive - t_kill, t_back - t_kill, t_pres - t_kill, t_bal - t_kill), flush=True)
    assert t_alive - t_kill <= scaled(3.0) + 2.0, "the liveness key outlived its TTL"
    assert all(t.conns[-1].via == "nginx" for t in victims), "reconnected elsewhere than nginx"
    codes = sorted({code for t in victims for code in t.close_codes})
    assert codes == [1006], "a kill -9 shows as an abnormal close: %s" % codes

    await asyncio.sleep(6)  # traffic keeps flowing after the move
    # Routing a message to a user removes the entries of dead servers: every
    # user got several since.
    left = await asyncio.to_thread(c.registry_servers, sc.users)
    print("kill9: registry entries by server before the end: %s" % left, flush=True)
    assert victim.server_id not in left, "entries of the dead server were not cleaned"
    r = await sc.finish(settle_s=25)
    sc.assert_nothing_lost(r)
    for t in victims:
        last = t.conns[-1]
        got = {g[0] for g in last.got}
        later = [m for m in sc.led.msgs.values() if sc.led.owed_to(m, last)]
        assert later and all(m.tag in got for m in later), (t.user, len(later))

    # Back on the same port: it rejoins the group and serves again.
    await asyncio.to_thread(victim.restart)
    await until(c.balanced, 30, "the restarted server to get partitions")
    led = Ledger()
    stop = asyncio.Event()
    tabs = [Tab(led, c, "k9back%d-%s" % (i, RUN), direct=victim) for i in range(3)]
    tasks = await start_tabs(tabs, stop)
    tr = Traffic(led, c, [t.user for t in tabs])
    for t in tabs:
        for _ in range(5):
            await tr.send("u", t.user)
    await settle(led, 15)
    stop.set()
    await asyncio.wait(tasks, timeout=scaled(10))
    r2 = led.verify()
    led.report("kill9-restarted", r2)
    assert r2["lost"] == 0 and r2["accepted"] == 15 and r2["unique_deliveries"] == 15, r2


# ---- SIGTERM of a delivery server -----------------------------------------------------

def test_delivery_sigterm():
    with_cluster(_delivery_sigterm)


async def _delivery_sigterm(c):
    sc = Scenario(c, "sigterm")
    await sc.start()
    await asyncio.sleep(4)
    victim = c.delivery[1]
    place = await asyncio.to_thread(sc.placement)
    victims = [t for t, sid in place.items() if sid == victim.server_id]
    assert victims, "no tab on %s: %s" % (victim.server_id, place)
    t_term = now()
    victim.sigterm()
    rc = await asyncio.to_thread(victim.wait_exit, 20)
    t_exit = now()
    log("sigterm: %s exited %s after %.1fs; %d tabs were on it" % (
        victim.server_id, rc, t_exit - t_term, len(victims)))
    assert rc == 0, "the drain did not finish cleanly (exit %s); log %s" % (rc, victim.proc.logpath)
    assert not await asyncio.to_thread(c.alive_key, victim.server_id), "alive key left behind"
    codes = sorted({code for t in victims for code in t.close_codes})
    assert codes == [1001], "clients must get 1001 going away: %s" % codes
    left = await asyncio.to_thread(c.registry_servers, sc.users)
    assert victim.server_id not in left, "a drained server left registry entries: %s" % left
    t_back = await until(lambda: all(t.ws is not None and t.conns[-1].t_open > t_term
                                     for t in victims), 20, "its clients to reconnect")
    t_pres = await until(sc.presence_matches, 15, "presence to match")
    t_bal = await until(c.balanced, 30, "its partitions to move")
    print("sigterm: drained and exited 0 after %.1fs, clients back after %.1fs, presence right "
          "after %.1fs, partitions moved after %.1fs" % (
              t_exit - t_term, t_back - t_term, t_pres - t_term, t_bal - t_term), flush=True)
    assert all(t.conns[-1].via == "nginx" for t in victims)
    await asyncio.sleep(5)
    r = await sc.finish(settle_s=25)
    sc.assert_nothing_lost(r)
    for t in victims:
        last = t.conns[-1]
        got = {g[0] for g in last.got}
        later = [m for m in sc.led.msgs.values() if sc.led.owed_to(m, last)]
        assert later and all(m.tag in got for m in later), (t.user, len(later))


# ---- redis-server restarted ---------------------------------------------------------------

def test_redis_restart():
    with_cluster(_redis_restart)


async def _redis_restart(c):
    sc = Scenario(c, "redis")
    await sc.start()
    # Messages accepted within GRACE of the stop may still be waiting for
    # their routing script when Redis goes: they belong to the outage. Run
    # long enough before it that some messages are clearly before.
    await asyncio.sleep(GRACE + 3.0)
    t_down = now()
    await asyncio.to_thread(c.redis.stop)
    log("redis: stopped")
    await until(lambda: not any(s.ready() for s in c.delivery), 10,
                "every delivery /readyz to say not ready")
    ing = await asyncio.to_thread(c.ingest[0].get, "/readyz")
    pres = await asyncio.to_thread(c.presence, sc.users[0])
    log("redis: during the outage ingest /readyz=%s %s, presence=%s" % (ing[0], ing[1], pres))
    assert json.loads(ing[1]).get("redis") is False, ing
    assert pres[0] == 503, "presence without a registry must be 503: %r" % (pres,)
    await asyncio.sleep(max(0.0, 3.0 - (now() - t_down)))
    await asyncio.to_thread(c.redis.start)
    t_up = now()
    t_ready = await until(lambda: all(s.ready() for s in c.delivery), 20,
                          "every delivery /readyz back to ready")
    t_pres = await until(sc.presence_matches, 20, "re-registration (presence right again)")
    t_rec = max(t_ready, t_pres)
    print("redis: down for %.1fs; delivery ready %.1fs and every connection re-registered "
          "%.1fs after redis came back" % (t_up - t_down, t_ready - t_up, t_pres - t_up),
          flush=True)
    await asyncio.sleep(6)
    assert all(s.alive() for s in c.delivery + c.ingest), "a service died"
    def outside(m):
        return m.t_ack < t_down - GRACE or m.t_start > t_rec
    r = await sc.finish(settle_s=20, select=outside)
    codes = sorted({code for t in sc.tabs for code in t.close_codes})
    assert not codes, "connections were closed during the outage: %s" % codes
    out = sc.led.verify(select=lambda m: not outside(m))
    print("redis: accepted from %.0fs before the stop until the registry was whole again: %d; "
          "owed %d (connection, message) pairs, reached %d, missed %d (reported, not asserted)" % (
              GRACE, sum(1 for m in sc.led.msgs.values() if m.status == 202 and not outside(m)),
              out["obligations"], out["obligations"] - out["lost"], out["lost"]), flush=True)
    print("redis: outside that window: %d accepted, %d pairs owed" % (
        sum(1 for m in sc.led.msgs.values() if m.status == 202 and outside(m)),
        r["obligations"]), flush=True)
    sc.assert_nothing_lost(r)


# ---- the Kafka broker killed -9 and restarted ------------------------------------------------

def test_kafka_kill9():
    with_cluster(_kafka_kill9)


async def _kafka_kill9(c):
    sc = Scenario(c, "kafka")
    await sc.start()
    await asyncio.sleep(4)
    t_kill = now()
    await asyncio.to_thread(c.kill9_kafka)

    def refused_after(t):
        return any(m.t_start is not None and m.t_start > t and m.status == 503
                   for m in list(sc.led.msgs.values()))
    await until(lambda: refused_after(t_kill), 30, "ingest to answer 503")
    await until(lambda: not any(s.ready() for s in c.ingest), 30, "ingest /readyz not ready")
    t_503 = now()
    await asyncio.sleep(2)
    t_restart = now()
    await asyncio.to_thread(c.restart_kafka)
    t_up = now()

    def accepted_after(t):
        return any(m.t_start is not None and m.t_start > t and m.status == 202
                   for m in list(sc.led.msgs.values()))
    t_202 = await until(lambda: accepted_after(t_up), 60, "ingest to accept again by itself")
    await until(lambda: all(s.ready() for s in c.ingest), 30, "ingest /readyz ready again")
    t_bal = await until(c.balanced, 60, "the delivery group to be whole again")
    print("kafka: 503 seen %.1fs after the kill; broker restarted in %.1fs; sends accepted "
          "again %.1fs and the delivery group whole %.1fs after it was back" % (
              t_503 - t_kill, t_up - t_restart, t_202 - t_up, t_bal - t_up), flush=True)
    await asyncio.sleep(8)
    assert all(s.alive() for s in c.delivery + c.ingest), "a service died"
    r = await sc.finish(settle_s=30)
    bad = {k: v for k, v in r["statuses"].items() if k not in ("202", "503")}
    assert not bad, "only 202 or 503 may answer a send: %s" % r["statuses"]
    refused = [m for m in sc.led.msgs.values() if m.status == 503]
    assert all(m.retry_after for m in refused), "a 503 without Retry-After"
    assert all("error" in m.body for m in refused), [m.body for m in refused[:3]]
    sc.assert_nothing_lost(r)
    codes = sorted({code for t in sc.tabs for code in t.close_codes})
    assert not codes, "connections were closed during the Kafka outage: %s" % codes


if __name__ == "__main__":
    run_tests(globals(), only=sys.argv[1:] or None)

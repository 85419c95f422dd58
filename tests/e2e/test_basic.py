#!/usr/bin/python3
"""End-to-end through nginx against the real Kafka: a send reaches every tab
of a user wherever its connections live; a room broadcast reaches every member
on all three delivery servers and nobody else; presence counts connections;
nginx's consistent hash keeps a user on one server and spreads users."""

import asyncio
import json
import random
import re

import websockets

from cluster import API_KEY, Cluster
from e2e_lib import HttpPool, Ledger, Tab, Traffic, settle, start_tabs, wait_joined
from fanout_test import eventually, log, run_tests, scaled

C = None
C_FAILED = None
RUN = "%04x" % random.randrange(1 << 16)


def cluster():
    """One cluster for every test of this file, started once."""
    global C, C_FAILED
    if C_FAILED is not None:
        raise RuntimeError("the cluster did not start: %r" % C_FAILED)
    if C is None:
        try:
            C = Cluster()
        except Exception as e:
            C_FAILED = e
            raise
    return C


async def stop_tabs(stop, tasks):
    stop.set()
    await asyncio.wait(tasks, timeout=scaled(10))


def test_send_reaches_every_tab():
    c = cluster()
    user = "alice-" + RUN

    async def go():
        led = Ledger()
        stop = asyncio.Event()
        # Two tabs through nginx (the hash puts them on one server), one
        # straight to each delivery server: the user is on all three.
        tabs = [Tab(led, c, user) for _ in range(2)]
        tabs += [Tab(led, c, user, direct=d) for d in c.delivery]
        tasks = await start_tabs(tabs, stop)
        servers = eventually(lambda: (lambda s: s if sum(s.values()) == 5 else None)(
            c.registry_servers([user])), what="5 registry entries")
        assert set(servers) == {"d1", "d2", "d3"}, servers
        st, pres = c.presence(user)
        assert st == 200 and pres == {"user": user, "online": True, "connections": 5}, pres
        tr = Traffic(led, c, [user])
        for _ in range(30):
            await tr.send("u", user)
        pending = await settle(led, 10)
        await stop_tabs(stop, tasks)
        tr.pool.close()
        r = led.verify()
        led.report("send_reaches_every_tab", r)
        assert r["accepted"] == 30, r["statuses"]
        assert pending == 0 and r["lost"] == 0 and r["lost_users"] == 0, r
        assert r["duplicates"] == 0 and r["out_of_order"] == 0 and r["pos_regressions"] == 0, r
        for t in tabs:
            assert len(t.conns) == 1, "tab reconnected: %s" % t.close_codes
            got = [g[0] for g in t.conns[0].got]
            assert got == ["u|%s|%d" % (user, i) for i in range(30)], (t.conns[0].via, got)
            positions = [g[1] for g in t.conns[0].got]
            assert positions == [g[1] for g in tabs[0].conns[0].got], "pos differs per tab"
            assert all(re.fullmatch(r"u\.[0-9a-f]{8}\.\d+\.\d+\.[0-9a-f]+", p) for p in positions), positions[:3]

    asyncio.run(go())


def test_room_broadcast_reaches_members_on_every_server():
    c = cluster()

    async def go():
        led = Ledger()
        stop = asyncio.Event()
        rooms_claim = ["team-*"]
        members, others = [], []
        for i, d in enumerate(c.delivery * 3):
            members.append(Tab(led, c, "m%d-%s" % (i, RUN), rooms=["team-a-" + RUN], direct=d))
        for i in range(3):
            members.append(Tab(led, c, "mn%d-%s" % (i, RUN), rooms=["team-a-" + RUN]))
        for i, d in enumerate(c.delivery):
            others.append(Tab(led, c, "o%d-%s" % (i, RUN), rooms=["team-b-" + RUN], direct=d))
        others.append(Tab(led, c, "idle-" + RUN))
        tabs = members + others
        for t in tabs:
            t.token = c.token(t.user, rooms=rooms_claim)
        tasks = await start_tabs(tabs, stop)
        await wait_joined(tabs)
        via = {t.conns[0].via for t in members}
        assert {d.addr for d in c.delivery} <= via, via
        tr = Traffic(led, c, [], rooms=[])
        for _ in range(12):
            await tr.send("r", "team-a-" + RUN)
        for _ in range(4):
            await tr.send("r", "team-b-" + RUN)
        pending = await settle(led, 10)

        # A room outside the token's claim is refused, and nothing is joined.
        async with websockets.connect(c.ws_url("x-" + RUN, c.token("x-" + RUN, rooms=["team-*"])),
                                      open_timeout=scaled(10)) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "secret-" + RUN}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
            assert reply.get("type") == "error", reply
        await stop_tabs(stop, tasks)
        tr.pool.close()
        r = led.verify()
        led.report("room_broadcast", r)
        assert r["accepted"] == 16, r["statuses"]
        assert pending == 0 and r["lost"] == 0 and r["lost_users"] == 0, r
        assert r["duplicates"] == 0 and r["out_of_order"] == 0 and r["extra"] == 0, r
        for t in members:
            got = [g[0] for g in t.conns[0].got]
            assert got == ["r|team-a-%s|%d" % (RUN, i) for i in range(12)], (t.user, got)
        for t in others[:3]:
            got = [g[0] for g in t.conns[0].got]
            assert got == ["r|team-b-%s|%d" % (RUN, i) for i in range(4)], (t.user, got)
        assert others[3].conns[0].got == [], others[3].conns[0].got

    asyncio.run(go())


def test_presence_counts_connections():
    c = cluster()
    user = "pres-" + RUN

    async def go():
        tok = c.token(user)
        assert c.presence(user)[1] == {"user": user, "online": False, "connections": 0}
        a = await websockets.connect(c.ws_url(user, tok), open_timeout=scaled(10))
        b = await websockets.connect(c.ws_url(user, tok, direct=c.delivery[1]),
                                     open_timeout=scaled(10))
        eventually(lambda: c.presence(user)[1].get("connections") == 2, what="presence 2")
        assert c.presence(user)[1]["online"] is True
        await a.close()
        eventually(lambda: c.presence(user)[1].get("connections") == 1, what="presence 1")
        await b.close()
        eventually(lambda: c.presence(user)[1] == {"user": user, "online": False,
                                                   "connections": 0}, what="presence 0")
        assert c.registry(user) == {}, c.registry(user)

    asyncio.run(go())


def test_nginx_hash_keeps_a_user_on_one_server():
    c = cluster()
    users = ["h%d-%s" % (i, RUN) for i in range(60)]

    async def go():
        conns = []
        for u in users:
            for _ in range(2):
                conns.append(await websockets.connect(c.ws_url(u, c.token(u)),
                                                      open_timeout=scaled(10)))
        placed = {}
        for u in users:
            reg = eventually(lambda: (lambda r: r if len(r) == 2 else None)(c.registry(u)),
                             what="2 entries for " + u)
            placed[u] = set(reg.values())
        for ws in conns:
            await ws.close()
        split = [u for u, s in placed.items() if len(s) != 1]
        assert not split, "tabs of one user on several servers: %s" % split
        spread = {}
        for u, s in placed.items():
            spread[next(iter(s))] = spread.get(next(iter(s)), 0) + 1
        log("hash spread of %d users: %s" % (len(users), spread))
        assert set(spread) == {"d1", "d2", "d3"}, spread

    asyncio.run(go())
    logtext = c.nginx.access_log()
    assert "token=" not in logtext and "/ws" in logtext, "the access log must not hold tokens"


def test_http_api_through_nginx():
    c = cluster()

    async def go():
        pool = HttpPool(c.addr, API_KEY)
        st, body, _ = await pool.request("POST", "/v1/send", {"user": "u-" + RUN, "data": 1})
        assert st == 202 and "id" in json.loads(body), (st, body)
        bad = HttpPool(c.addr, "wrong-key")
        st, body, _ = await bad.request("POST", "/v1/send", {"user": "u", "data": 1})
        assert st == 401 and "error" in json.loads(body), (st, body)
        st, body, _ = await pool.request("POST", "/v1/send", {"nouser": 1})
        assert st == 400 and "error" in json.loads(body), (st, body)
        st, body, _ = await pool.request("POST", "/v1/send", {"user": "u", "data": "x" * 1200000})
        assert st == 413 and "error" in json.loads(body), (st, body[:200])
        st, body, _ = await pool.request("GET", "/readyz")
        assert st == 200, (st, body)
        pool.close()
        bad.close()
        # Both ingest processes served requests through the keep-alive upstream.
        ups = set(re.findall(r'"POST /v1/send" \d+ user=\S+ up=(\S+)', c.nginx.access_log()))
        log("ingest upstreams used: %s" % ups)

    asyncio.run(go())


def test_services_stop_cleanly():
    """SIGTERM: every service exits 0, no sanitizer report in any log."""
    global C
    c = cluster()
    C = None
    problems = c.shutdown_clean()
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    run_tests(globals())

#!/usr/bin/python3
"""Per-connection costs for the capacity plan (prints figures; not a test).

Starts redis-server, fanout-kafka-dev and one fanout-delivery, then the load
client fanout-bench-wsclient (tests/bench/delivery/loadclient.c) with --conns
idle, authenticated connections (distinct users, no rooms), and reads:

1. kernel memory per connection, over --cycles connect/close cycles:
   /proc/slabinfo (every cache), /proc/meminfo Slab and /proc/net/sockstat
   (sockets used, TCP inuse, TCP mem pages) before the clients connect and
   once they are all registered. On loopback both ends of every connection
   live in this kernel: the figure is per TCP socket (the netns's exact count,
   2 per connection), and a server holds one socket per client connection.
   slabinfo is the whole VM's, so two readings: (a) the socket caches'
   growth per socket of ours, from the cycles where the TCP cache grew by our
   sockets within --max-noise (other work opened or closed none meanwhile);
   (b) the same growth per object added to the TCP cache, every cycle (sockets
   other work opened or closed meanwhile change both alike); medians.
2. user space (first cycle): the delivery process's RSS growth / conns.
3. Redis (first cycle): used_memory growth / conns (the registry entry of a
   one-connection user); then the connections are held --hold-s seconds
   (registry refresh every --refresh-ms, default 60 s as in production; pings
   every 30 s): INFO commandstats and redis-server CPU per connection per
   refresh pass, and the delivery process's CPU per connection-second, each
   minus what the same process burns over --baseline-s with no connections
   (delivery runs with --kafka-fetch-wait-ms 500, the production default).
4. Redis CPU of routing, on the same redis-server with the connections gone:
   the real routing script of delivery/router.c (read from the source) run by
   EVALSHA for --route-calls user messages, pipelined, for users registered on
   another live server (a subscriber drains ws:server:other); and the
   sharded path's HGETALL + PUBLISH for the same messages. CPU from
   /proc/PID/stat of redis-server, so parsing and replies are included.

Needs `ulimit -n` above --conns + 100 (this machine allows 20,000 a process).

The script re-runs itself in a network namespace of its own (unshare -n, as
root), so sockstat's counts are exactly its own; slab figures stay global.

usage: measure_conn_memory.py [--build build-rel] [--conns 18000]
       [--cycles 3] [--hold-s 60] [--route-calls 200000] [--json OUT]
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "lib"))
from procstat import cpu_seconds as cpu_s  # noqa: E402


SOCKET_CACHES = ("TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "eventpoll_pwq",
                 "ep_head", "lsm_inode_cache", "lsm_file_cache", "nf_conntrack",
                 "tcp_bind_bucket", "tcp_bind2_bucket", "skbuff_head_cache",
                 "skbuff_small_head", "pid", "selinux_file_security")


def slabinfo():
    """{cache: (active_objs, objsize)}"""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            p = line.split()
            out[p[0]] = (int(p[1]), int(p[3]))
    return out


def meminfo_kb(*keys):
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


def sockstat():
    with open("/proc/net/sockstat") as f:
        text = f.read()
    used = int(re.search(r"sockets: used (\d+)", text).group(1))
    m = re.search(r"TCP: inuse (\d+) orphan \d+ tw \d+ alloc (\d+) mem (\d+)", text)
    return {"sockets_used": used, "tcp_inuse": int(m.group(1)), "tcp_alloc": int(m.group(2)),
            "tcp_mem_pages": int(m.group(3))}


def snapshot():
    return {"slab": slabinfo(), "mem": meminfo_kb("Slab", "SUnreclaim", "SReclaimable"),
            "sock": sockstat(), "t": time.time()}


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def slab_delta(a, b):
    """{cache: (objs delta, bytes delta)} for caches that grew or shrank."""
    out = {}
    for name, (objs, size) in b["slab"].items():
        objs0 = a["slab"].get(name, (0, size))[0]
        if objs != objs0:
            out[name] = (objs - objs0, (objs - objs0) * size)
    return out


def redis_info(redis, section):
    out = {}
    for line in redis.cli("INFO", section).splitlines():
        k, _, v = line.strip().partition(":")
        if v:
            out[k] = v
    return out


def cmdstats(redis):
    """{command: calls}"""
    out = {}
    for k, v in redis_info(redis, "commandstats").items():
        if k.startswith("cmdstat_"):
            out[k[len("cmdstat_"):]] = int(re.search(r"calls=(\d+)", v).group(1))
    return out


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def route_lua():
    """The routing script as delivery/router.c sends it (C string literal)."""
    with open(os.path.join(SRC, "delivery", "router.c")) as f:
        text = f.read()
    body = re.search(r"static const char route_lua\[\] =(.*?);\n", text, re.S).group(1)
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', body)
    return "".join(parts).encode().decode("unicode_escape")


def pipe(redis, data):
    """Sends raw RESP through redis-cli --pipe; returns the redis CPU it cost."""
    c0 = cpu_s(redis.proc.pid)
    r = subprocess.run(["redis-cli", "-p", str(redis.port), "--pipe"], input=data,
                       capture_output=True, timeout=300)
    c1 = cpu_s(redis.proc.pid)
    tail = r.stdout.decode(errors="replace")
    m = re.search(r"errors: (\d+), replies: (\d+)", tail)
    if r.returncode != 0 or m is None or m.group(1) != "0":
        raise RuntimeError("redis-cli --pipe: %s %s" % (tail, r.stderr.decode(errors="replace")))
    return c1 - c0, int(m.group(2))


def in_own_netns(argv):
    """Re-runs this script in a network namespace of its own (root: unshare -n),
    loopback up, so /proc/net/sockstat counts only these processes' sockets."""
    if os.environ.get("FANOUT_CAPACITY_NETNS") == "1":
        return
    if os.geteuid() != 0:
        print("not root: staying in this network namespace, so sockstat also counts other "
              "processes' sockets", flush=True)
        return
    os.environ["FANOUT_CAPACITY_NETNS"] = "1"
    cmd = "ip link set lo up && exec \"$0\" \"$@\""
    os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", cmd, sys.executable,
                          os.path.abspath(__file__), *argv])


def main():
    in_own_netns(sys.argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=18000)
    ap.add_argument("--cycles", type=int, default=3, help="connect/close cycles")
    ap.add_argument("--max-noise", type=float, default=0.03,
                    help="a cycle counts if the kernel's TCP cache grew by our sockets +- this")
    ap.add_argument("--baseline-s", type=float, default=20,
                    help="idle CPU of delivery and redis before any connection, subtracted")
    ap.add_argument("--refresh-ms", type=int, default=60000, help="--registry-refresh-ms")
    ap.add_argument("--hold-s", type=float, default=60,
                    help="first cycle: hold the connections this long (refresh passes, pings)")
    ap.add_argument("--route-calls", type=int, default=200000)
    ap.add_argument("--route-payload", type=int, default=200,
                    help="bytes of the Pub/Sub payload (length:user + the client frame)")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 200
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit("ulimit -n is %d (hard %d): lower --conns" % (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    import fanout_test as ft

    n = args.conns
    fig = {"conns": n, "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    secret = "capacity-secret-0123456789abcdef-012345"
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=4)
    srv = ft.start_service("fanout-delivery", "capacity-delivery", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", "cap", "--jwt-secret", secret, "--log-level", "warn",
        "--max-connections", str(n + 1000), "--session-timeout-ms", "6000",
        "--registry-refresh-ms", str(args.refresh_ms),
        # the production default; the test library passes 1 for the embedded
        # broker (latency), which costs 5-7 % of a core idle (README, Idle cost)
        "--kafka-fetch-wait-ms", "500"])
    ft.eventually(lambda: ft.metrics(srv.addr).get("fanout_delivery_assigned_partitions", 0) >= 4,
                  timeout=30, what="partitions assigned")
    client_bin = ft.find_binary("fanout-bench-wsclient")
    time.sleep(1)
    # idle baseline without connections, subtracted from the hold window below
    rb0, db0, tb0 = cpu_s(redis.proc.pid), cpu_s(srv.pid), time.time()
    time.sleep(args.baseline_s)
    base_window = time.time() - tb0
    base_redis = (cpu_s(redis.proc.pid) - rb0) / base_window  # cores
    base_delivery = (cpu_s(srv.pid) - db0) / base_window
    fig["baseline"] = {"window_s": round(base_window, 1), "redis_cores": round(base_redis, 5),
                       "delivery_cores": round(base_delivery, 5)}
    print("baseline, no connections, %.0f s: delivery %.2f %% of a core, redis-server %.2f %%" % (
        base_window, base_delivery * 100, base_redis * 100), flush=True)

    # ---- 1. kernel, K connect/close cycles; 2-3 on the first ----
    def kernel_figures(s0, s1):
        d = slab_delta(s0, s1)
        # sockstat counts this network namespace only (see in_own_netns):
        # exactly our sockets, client and server side
        socks = s1["sock"]["tcp_inuse"] - s0["sock"]["tcp_inuse"]
        # slabinfo and meminfo are the whole kernel's, shared with other work
        # on the VM: a cycle counts only if the TCP cache grew by our sockets
        # (each TCP socket is one object there) within --max-noise
        tcp_objs = d.get("TCP", (0, 0))[0]
        # the caches a socket file allocates from (SLUB may merge some, e.g.
        # epoll's wait-queue entries); other caches that grew (page tables,
        # buffer heads of other work) are reported, not counted
        per_sock = {c: v for c, v in d.items() if c in SOCKET_CACHES and v[0] >= socks / 8}
        others = {c: v for c, v in d.items() if c not in SOCKET_CACHES and v[0] >= socks / 8}
        return {
            "tcp_sockets_added": socks, "tcp_cache_objs_added": tcp_objs,
            "noise": round(tcp_objs / socks - 1, 4),
            "per_socket_caches": {c: {"objs": v[0], "objsize": v[1] // v[0],
                                      "objs_per_socket": round(v[0] / socks, 3),
                                      "bytes_per_socket": round(v[1] / socks, 1)}
                                  for c, v in sorted(per_sock.items(), key=lambda kv: -kv[1][1])},
            "per_socket_bytes": round(sum(v[1] for v in per_sock.values()) / socks, 1),
            # the same caches' growth per object the TCP cache gained: sockets
            # other work opened or closed meanwhile change both alike
            "per_tcp_object_bytes": round(sum(v[1] for v in per_sock.values()) / tcp_objs, 1)
            if tcp_objs > 0 else None,
            "other_caches_grown": {c: round(v[1] / socks, 1) for c, v in others.items()},
            "slab_meminfo_bytes_per_socket": round(
                (s1["mem"]["Slab"] - s0["mem"]["Slab"]) * 1024.0 / socks, 1),
            "sockstat_before": s0["sock"], "sockstat_after": s1["sock"],
        }

    fig["cycles"] = []
    for cycle in range(args.cycles):
        s0 = snapshot()
        rss0 = rss_kb(srv.pid)
        used0 = int(redis_info(redis, "memory")["used_memory"])
        cs0 = cmdstats(redis)
        cl = ft.Proc("capacity-client", [client_bin, "--addr", srv.addr, "--conns", str(n),
                                         "--secret", secret])
        m = cl.wait_line(r"^connected=(\d+) ms=(\S+)", timeout=180)
        ft.eventually(lambda: int(redis.cli("DBSIZE") or 0) >= n, timeout=60,
                      what="registry written")
        time.sleep(3)
        s1 = snapshot()
        k = kernel_figures(s0, s1)
        k["connect_ms"] = float(m.group(2))
        fig["cycles"].append(k)
        print("cycle %d: %d connections in %.0f ms; TCP sockets in this netns +%d, TCP slab cache "
              "+%d objects (noise %+.1f %%); kernel per socket %.0f B in the socket caches "
              "(%s; not counted, other work: %s); meminfo Slab says %.0f B; TCP mem pages %d -> %d"
              % (cycle + 1, n, k["connect_ms"], k["tcp_sockets_added"], k["tcp_cache_objs_added"],
                 k["noise"] * 100, k["per_socket_bytes"],
                 ", ".join("%s %.0f" % (c, v["bytes_per_socket"])
                           for c, v in k["per_socket_caches"].items()),
                 ", ".join("%s %.0f" % kv for kv in k["other_caches_grown"].items()) or "none",
                 k["slab_meminfo_bytes_per_socket"], s0["sock"]["tcp_mem_pages"],
                 s1["sock"]["tcp_mem_pages"]), flush=True)
        if cycle == 0:
            rss1 = rss_kb(srv.pid)
            used1 = int(redis_info(redis, "memory")["used_memory"])
            cs1 = cmdstats(redis)
            fig["delivery_base_rss_mb"] = round(rss0 / 1024.0, 1)
            fig["user_space_bytes_per_conn"] = round((rss1 - rss0) * 1024.0 / n, 1)
            fig["redis_registry_bytes_per_conn"] = round((used1 - used0) / n, 1)
            fig["redis_commands_connect"] = {c: cs1.get(c, 0) - cs0.get(c, 0) for c in cs1
                                             if cs1.get(c, 0) != cs0.get(c, 0)}
            print("user space: delivery RSS %.1f -> %.1f MB = %.0f B per connection; redis "
                  "used_memory %+d B = %.0f B per registered connection; commands while "
                  "connecting: %s" % (rss0 / 1024.0, rss1 / 1024.0,
                                      fig["user_space_bytes_per_conn"], used1 - used0,
                                      fig["redis_registry_bytes_per_conn"],
                                      fig["redis_commands_connect"]), flush=True)
            # ---- 3. hold: refresh passes and pings ----
            cs2 = cmdstats(redis)
            rc0, dc0 = cpu_s(redis.proc.pid), cpu_s(srv.pid)
            t0 = time.time()
            time.sleep(args.hold_s)
            rc1, dc1 = cpu_s(redis.proc.pid), cpu_s(srv.pid)
            cs3 = cmdstats(redis)
            window = time.time() - t0
            rc1 -= base_redis * window  # what the same processes burn with no connections
            dc1 -= base_delivery * window
            cmds = {c: cs3.get(c, 0) - cs2.get(c, 0) for c in cs3
                    if cs3.get(c, 0) != cs2.get(c, 0)}
            cmds.pop("info", None)
            passes = window * 1000.0 / args.refresh_ms
            total = sum(cmds.values())
            mt = ft.metrics(srv.addr)
            fig["hold"] = {
                "window_s": round(window, 1), "refresh_ms": args.refresh_ms,
                "passes": round(passes, 2), "commands": cmds,
                "commands_per_conn_per_pass": round(total / passes / n, 4),
                "redis_cpu_s": round(rc1 - rc0, 2),
                "redis_cpu_us_per_conn_per_pass": round((rc1 - rc0) * 1e6 / passes / n, 3),
                "delivery_cpu_s": round(dc1 - dc0, 2),
                "delivery_cpu_us_per_conn_s": round((dc1 - dc0) * 1e6 / window / n, 3),
                "connections_open": mt["fanout_delivery_connections"],
                "ping_timeouts": mt.get("fanout_delivery_ping_timeouts_total", 0)}
            h = fig["hold"]
            print("hold %.0f s (registry refresh every %d ms, ping every 30 s; baseline "
                  "subtracted): %.1f passes; redis "
                  "commands %s = %.4f per connection per pass; redis CPU %.2f s = %.3f us per "
                  "connection per pass; delivery CPU %.2f s = %.3f us per connection-second; "
                  "%d open, %d ping timeouts" % (
                      window, args.refresh_ms, passes, cmds, h["commands_per_conn_per_pass"],
                      h["redis_cpu_s"], h["redis_cpu_us_per_conn_per_pass"],
                      h["delivery_cpu_s"], h["delivery_cpu_us_per_conn_s"],
                      h["connections_open"], h["ping_timeouts"]), flush=True)
        cl.stop()
        ft.eventually(lambda: ft.metrics(srv.addr)["fanout_delivery_connections"] == 0,
                      timeout=60, what="clients gone")
        ft.eventually(lambda: sockstat()["tcp_inuse"] <= s0["sock"]["tcp_inuse"] + 5,
                      timeout=60, what="sockets closed")
        # every close HDELs its entry: the registry should empty (but for the
        # liveness key); what stays is reported, and lapses with its TTL
        try:
            ft.eventually(lambda: int(redis.cli("DBSIZE") or 0) <= 1, timeout=30,
                          what="registry emptied")
        except AssertionError:
            pass
        k["registry_keys_left"] = int(redis.cli("DBSIZE") or 0) - 1
        time.sleep(2)
        s2 = snapshot()
        back = s1["sock"]["tcp_inuse"] - s2["sock"]["tcp_inuse"]
        k["closed_sockets"] = back
        k["closed_slab_meminfo_bytes_per_socket"] = round(
            (s1["mem"]["Slab"] - s2["mem"]["Slab"]) * 1024.0 / max(back, 1), 1)
        print("cycle %d closed: TCP sockets in this netns -%d; meminfo Slab gave back %.0f B per "
              "socket; registry keys left in Redis: %d" % (
                  cycle + 1, back, k["closed_slab_meminfo_bytes_per_socket"],
                  k["registry_keys_left"]), flush=True)
        if k["registry_keys_left"] > 0:
            redis.cli("FLUSHALL")  # the next cycle's figures start from an empty registry
    norm = sorted(c["per_tcp_object_bytes"] for c in fig["cycles"]
                  if c["per_tcp_object_bytes"] is not None and c["tcp_cache_objs_added"] >
                  c["tcp_sockets_added"] / 2)
    if norm:
        fig["kernel_bytes_per_tcp_object"] = norm[len(norm) // 2]
        print("kernel bytes per socket, as the socket caches' growth per object added to the TCP "
              "cache: %.0f (median of %d cycles: %s)" % (
                  fig["kernel_bytes_per_tcp_object"], len(norm),
                  ", ".join("%.0f" % x for x in norm)), flush=True)
    good = sorted((c for c in fig["cycles"] if abs(c["noise"]) <= args.max_noise and
                   abs(c["per_socket_caches"].get("sock_inode_cache", {}).get(
                       "objs_per_socket", 0) - 1) <= args.max_noise),
                  key=lambda c: c["per_socket_bytes"])
    if good:
        med = good[len(good) // 2]["per_socket_bytes"]
        fig["kernel_bytes_per_socket"] = med
        print("kernel bytes per socket, as the socket caches' growth per socket of ours: %.0f "
              "(median of %d cycles within %.0f %% noise: %s)" % (
            med, len(good), args.max_noise * 100,
            ", ".join("%.0f" % c["per_socket_bytes"] for c in good)), flush=True)
    # what every socket file holds, by this kernel's object sizes: a floor to
    # compare with (buffers, epoll's wait-queue entries and merged caches aside)
    sizes = slabinfo()
    floor = {c: sizes[c][1] for c in ("TCP", "sock_inode_cache", "dentry", "filp",
                                      "eventpoll_epi") if c in sizes}
    fig["kernel_floor_bytes_per_socket"] = sum(floor.values())
    print("by object size: %s = %d B per socket" % (
        " + ".join("%s %d" % kv for kv in floor.items()), sum(floor.values())), flush=True)
    if not good:
        print("kernel bytes per socket: no cycle within %.0f %% noise (other work on the VM "
              "opened or closed sockets meanwhile): run again" % (args.max_noise * 100))
    srv.stop()
    kafka.stop()

    # ---- 4: routing cost in Redis ----
    redis.cli("FLUSHALL")
    users = 10000
    setup = [resp("SET", "ws:alive:other", "other", "PX", "600000")]
    for i in range(users):
        setup.append(resp("HSET", "ws:connections:u%d" % i, "c%d" % i, "other"))
    pipe(redis, b"".join(setup))
    sub = subprocess.Popen(["redis-cli", "-p", str(redis.port), "SUBSCRIBE", "ws:server:other"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ft.eventually(lambda: redis.cli("PUBSUB", "NUMSUB", "ws:server:other").endswith("1"),
                      timeout=10, what="subscriber")
        sha = redis.cli("SCRIPT", "LOAD", route_lua())
        calls = args.route_calls
        payload_tail = b"x" * max(0, args.route_payload - 10)
        ev, hp = [], []
        for i in range(calls + calls // 10):
            u = "u%d" % (i % users)
            pl = b"%d:%s%s" % (len(u), u.encode(), payload_tail)
            key = "ws:connections:" + u
            ev.append(resp("EVALSHA", sha, 1, key, "ws:alive:", "ws:server:", "self", pl))
            hp.append(resp("HGETALL", key) + resp("PUBLISH", "ws:server:other", pl))
        pipe(redis, b"".join(ev[calls:]))  # warm up
        ev, hp = b"".join(ev[:calls]), b"".join(hp[:calls])
        cpu_ev, rep = pipe(redis, ev)
        cpu_hp, rep2 = pipe(redis, hp)
        fig["routing"] = {"calls": calls, "payload_bytes": args.route_payload,
                          "evalsha_redis_cpu_us": round(cpu_ev * 1e6 / calls, 2),
                          "hgetall_publish_redis_cpu_us": round(cpu_hp * 1e6 / calls, 2),
                          "replies": [rep, rep2]}
        print("routing in Redis: %d messages to users on another live server, payload %d B: "
              "EVALSHA route script %.2f us of redis CPU per message; sharded path (HGETALL + "
              "PUBLISH) %.2f us per message" % (calls, args.route_payload,
                                                fig["routing"]["evalsha_redis_cpu_us"],
                                                fig["routing"]["hgetall_publish_redis_cpu_us"]),
              flush=True)
    finally:
        sub.terminate()
        sub.wait(timeout=10)
    redis.stop()
    fig["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print("load average %s at start, %s at the end" % (" ".join(fig["loadavg_start"]),
                                                        " ".join(fig["loadavg_end"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Delivery benchmark (prints figures; not a pass/fail test).

Starts redis-server, fanout-kafka-dev and one fanout-delivery, then a
separate load-client process (fanout-bench-wsclient) with N connections:

1. bytes per idle, authenticated connection: the delivery process's RSS
   growth divided by N (N distinct users, no rooms);
2. one 64-byte room broadcast to N local members: time from the first to
   the last socket receiving it, and from the producer's start to the last;
3. a burst of 100 such broadcasts: frames written per second of the event
   loop thread's CPU time, and per second of wall time at the clients.

usage: bench_delivery.py [--conns 15000] [--burst 100] [--build DIR]
       [--ping-interval-ms 30000 --heartbeat-cycles N] [--idle-only]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--ping-interval-ms", type=int, default=30000)
    ap.add_argument("--heartbeat-cycles", type=int, default=0,
                    help="after the idle figure, hold the connections for this many ping "
                         "intervals and print the bytes per connection again")
    ap.add_argument("--idle-only", action="store_true", help="stop after the idle figures")
    ap.add_argument("--server-args", default="", help="more fanout-delivery flags")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import fanout_test as ft

    secret = "bench-secret-0123456789abcdef-0123456789"
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=4)
    srv = ft.start_service("fanout-delivery", "bench-delivery", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", "bench", "--jwt-secret", secret, "--log-level", "warn",
        "--max-connections", "19000", "--session-timeout-ms", "6000",
        "--ping-interval-ms", str(args.ping_interval_ms), *shlex.split(args.server_args)])

    def metrics():
        with urllib.request.urlopen("http://%s/metrics" % srv.addr, timeout=10) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    k, _, v = line.rpartition(" ")
                    out[k] = float(v)
            return out

    def rss_kb(field="VmRSS"):
        """VmRSS, or RssAnon: the process's own memory without the file pages
        of shared libraries (libcrypto's are first touched by the first
        token, which VmRSS would count as ~130 B a connection here)."""
        with open("/proc/%d/status" % srv.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    def loop_cpu_s():
        """utime+stime of the event loop thread (the main thread) only."""
        with open("/proc/%d/task/%d/stat" % (srv.pid, srv.pid)) as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    ft.eventually(lambda: metrics().get("fanout_delivery_assigned_partitions", 0) >= 4,
                  timeout=30, what="rooms partitions assigned")
    client_bin = ft.find_binary("fanout-bench-wsclient")
    produce_bin = ft.find_binary("fanout-test-produce")
    n = args.conns

    # ---- 1. idle memory ----
    time.sleep(0.5)
    rss0, anon0 = rss_kb(), rss_kb("RssAnon")
    cl = ft.Proc("bench-client-idle", [client_bin, "--addr", srv.addr, "--conns", str(n),
                                       "--secret", secret], env=None)
    m = cl.wait_line(r"^connected=(\d+) ms=(\S+)", timeout=120)
    connect_ms = float(m.group(2))
    ft.eventually(lambda: redis.cli("DBSIZE") not in ("", "0") and
                  int(redis.cli("DBSIZE")) >= n, timeout=60, what="registry written")
    time.sleep(3)
    rss1, anon1 = rss_kb(), rss_kb("RssAnon")
    per_conn = (rss1 - rss0) * 1024.0 / n
    print("idle connections: %d in %.0f ms; delivery RSS %.1f MB -> %.1f MB; "
          "%.0f bytes per idle authenticated connection (RssAnon growth: %.0f B)" %
          (n, connect_ms, rss0 / 1024.0, rss1 / 1024.0, per_conn,
           (anon1 - anon0) * 1024.0 / n), flush=True)
    if args.heartbeat_cycles > 0:
        time.sleep(args.heartbeat_cycles * args.ping_interval_ms / 1000.0 + 2)
        m = metrics()
        rss2 = rss_kb()
        print("after %d heartbeat cycles (ping every %d ms): delivery RSS %.1f MB; %.0f bytes per "
              "connection; %d open, %d closed for a missing pong" %
              (args.heartbeat_cycles, args.ping_interval_ms, rss2 / 1024.0,
               (rss2 - rss0) * 1024.0 / n, m["fanout_delivery_connections"],
               m.get("fanout_delivery_ping_timeouts_total", 0)), flush=True)
    cl.stop()
    ft.eventually(lambda: metrics()["fanout_delivery_connections"] == 0, timeout=60,
                  what="idle clients gone")
    if args.idle_only:
        return

    # ---- 2. one broadcast ----
    expect = 1 + args.burst
    cl = ft.Proc("bench-client-room", [client_bin, "--addr", srv.addr, "--conns", str(n),
                                       "--secret", secret, "--room", "bench",
                                       "--expect", str(expect)])
    cl.wait_line(r"^joined=", timeout=120)
    time.sleep(1)
    payload = json.dumps({"p": "x" * 55}).encode()  # 64 bytes
    assert len(payload) == 64
    line = "fanout.rooms broadcast bench application/json %s\n" % payload.hex()
    cpu0 = loop_cpu_s()
    t_start = time.time_ns()
    subprocess.run([produce_bin, kafka.bootstrap], input=line, text=True, check=True,
                   capture_output=True)
    m = cl.wait_line(r"^got=1 first_ns=(\d+) last_ns=(\d+)", timeout=60)
    first, last = int(m.group(1)), int(m.group(2))
    cpu1 = loop_cpu_s()
    fan_us = metrics()["fanout_delivery_last_fanout_microseconds"]
    print("one broadcast to %d sockets: server record->last socket write %.2f ms wall "
          "(loop thread CPU %.0f ms, clock ticks of 10 ms); at the clients first->last socket "
          "%.2f ms; producer start->last socket %.2f ms; load average %s" %
          (n, fan_us / 1e3, (cpu1 - cpu0) * 1e3, (last - first) / 1e6, (last - t_start) / 1e6,
           open("/proc/loadavg").read().split()[0]), flush=True)

    # ---- 3. burst ----
    time.sleep(0.5)
    f0 = metrics()["fanout_delivery_frames_out_total"]
    c0 = loop_cpu_s()
    subprocess.run([produce_bin, kafka.bootstrap], input=line * args.burst, text=True,
                   check=True, capture_output=True)
    m2 = cl.wait_line(r"^got=2 first_ns=(\d+)", timeout=120)
    m = cl.wait_line(r"^got=%d first_ns=(\d+) last_ns=(\d+)" % expect, timeout=120)
    c1 = loop_cpu_s()
    f1 = metrics()["fanout_delivery_frames_out_total"]
    frames = f1 - f0
    cpu = c1 - c0
    wall = (int(m.group(2)) - int(m2.group(1))) / 1e9
    print("burst of %d broadcasts x %d sockets: %d frames; loop thread CPU %.3f s -> "
          "%.0f frames/s per core; clients saw them over %.3f s -> %.0f frames/s wall" %
          (args.burst, n, frames, cpu, frames / cpu if cpu > 0 else float("nan"), wall,
           frames / wall if wall > 0 else float("nan")), flush=True)
    cl.stop()
    srv.stop()
    kafka.stop()
    redis.stop()


if __name__ == "__main__":
    main()

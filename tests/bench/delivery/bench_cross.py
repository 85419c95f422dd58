#!/usr/bin/python3
"""Cross-server sends (prints figures; not a pass/fail test).

Every user message is consumed by one delivery server (A) while its user is
connected to another (B), so each one goes A -> Redis -> B over Pub/Sub:

1. redis-server (one, or --redis-nodes N shards given to both servers as
   --redis A,B,...), fanout-kafka-dev, and server B. B reads an empty users
   topic (fanout.intake) in a group of its own, so it consumes no user
   message: all of them reach it through ws:server:B.
2. fanout-bench-wsclient opens --users connections to B (bench-user-0..N-1,
   one connection each), which registers them in Redis.
3. --users x --per-user messages are produced to fanout.users (round
   robin over the users) before A exists: a backlog.
4. A starts (the only member of the users group: every partition) and
   consumes the backlog. Measured from A's assignment to the last message
   at the clients: messages per CPU-second of A (process, all threads, and
   its event-loop thread alone), B's and Redis's CPU per message, Redis
   commands per message (INFO commandstats before and after), wall
   throughput at the clients (first to last message), lost messages.

usage: bench_cross.py [--build DIR] [--users 10000] [--per-user 20]
       [--redis-nodes 1] [--partitions 16] [--payload 64] [--server-args ...]
       [--a-fetch-wait-ms 500] [--apache]

A runs with the servers' default fetch wait, 500 ms (--a-fetch-wait-ms): the
backlog's fetches are answered at once either way. The test library's 1 ms
for services on the embedded broker (which answers an empty fetch only after
the wait) makes A's idle rooms consumer poll every millisecond, a cost per
wall-second that a real Kafka at the default does not have; B keeps it.
--apache runs the same on the real Apache Kafka.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
from procstat import cpu_seconds as proc_cpu_s  # noqa: E402



def commandstats(redis):
    """{command: calls} of one node."""
    out = {}
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            calls = dict(kv.split("=", 1) for kv in rest.split(","))["calls"]
            out[name] = int(calls)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--per-user", type=int, default=20)
    ap.add_argument("--redis-nodes", type=int, default=1)
    # The embedded broker keeps about 5 MB per partition (older records are
    # dropped): 200,000 records need more than 4 partitions.
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--payload", type=int, default=64, help="bytes of JSON per message")
    ap.add_argument("--server-args", default="", help="more flags for both fanout-delivery")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--perf", metavar="FILE",
                    help="perf record -g A from its assignment until it is done, into FILE")
    ap.add_argument("--a-fetch-wait-ms", type=int, default=500,
                    help="A's --kafka-fetch-wait-ms (default 500, the servers' default; the "
                    "test library gives services on the embedded broker 1)")
    ap.add_argument("--apache", action="store_true",
                    help="the real Apache Kafka (deploy/local/apache-kafka) instead of "
                    "fanout-kafka-dev; the servers keep their default fetch wait (500 ms)")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import fanout_test as ft

    secret = "bench-secret-0123456789abcdef-0123456789"
    nodes = [ft.Redis() for _ in range(args.redis_nodes)]
    for r in nodes:
        # B (one server for every user, on 2 shared cores) falls behind A;
        # Redis's default limit (pubsub 32mb 8mb 60) then closes B's Pub/Sub
        # connection and the run measures a resync instead of A.
        r.cli("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    redis_arg = ",".join(r.addr for r in nodes)
    kafka = (ft.ApacheKafka(partitions=args.partitions) if args.apache else
             ft.KafkaDev(partitions=args.partitions))
    common = ["--listen", "127.0.0.1:0", "--redis", redis_arg, "--kafka", kafka.bootstrap,
              "--jwt-secret", secret, "--log-level", "warn", "--max-connections", "19000",
              "--session-timeout-ms", "6000", *shlex.split(args.server_args)]
    b = ft.start_service("fanout-delivery", "cross-b", [
        *common, "--server-id", "B", "--users-topic", "fanout.intake", "--group-id",
        "bench-cross-b"])
    client_bin = ft.find_binary("fanout-bench-wsclient")
    produce_bin = ft.find_binary("fanout-test-produce")
    n, k = args.users, args.per_user
    total = n * k

    cl = ft.Proc("cross-client", [client_bin, "--addr", b.addr, "--conns", str(n), "--secret",
                                  secret, "--expect", str(k)])
    cl.wait_line(r"^connected=(\d+)", timeout=180)

    def registered():
        return sum(int(r.cli("DBSIZE") or 0) for r in nodes)

    # n connection hashes + B's liveness key (+ its server set, if any)
    ft.eventually(lambda: registered() >= n + 1, timeout=120, what="registry written")

    body = json.dumps({"p": ""})
    payload = json.dumps({"p": "x" * (args.payload - len(body))}).encode()
    hexp = payload.hex()
    lines = "".join("fanout.users send bench-user-%d application/json %s\n" % (i, hexp)
                    for _ in range(k) for i in range(n))
    t = time.time()
    subprocess.run([produce_bin, kafka.bootstrap], input=lines, text=True, check=True,
                   capture_output=True)
    print("produced %d messages (%d users x %d, %d B JSON) in %.1f s" %
          (total, n, k, len(payload), time.time() - t), flush=True)

    stats0 = [commandstats(r) for r in nodes]
    rcpu0 = [proc_cpu_s(r.proc.pid) for r in nodes]
    bcpu0 = proc_cpu_s(b.pid)
    # A as deployed: the default fetch wait (a --kafka-fetch-wait-ms in
    # --server-args wins, flags over the environment).
    a = ft.start_service("fanout-delivery", "cross-a", [*common, "--server-id", "A"],
                         env={"FANOUT_KAFKA_FETCH_WAIT_MS": str(args.a_fetch_wait_ms)})
    # Users partitions + the rooms partitions every server reads.
    deadline = time.time() + 60
    while True:
        am = ft.metrics(a.addr, timeout=60)
        if am.get("fanout_delivery_assigned_partitions", 0) >= 2 * args.partitions:
            break
        if time.time() > deadline:
            raise TimeoutError("A was not assigned the users partitions")
        time.sleep(0.005)
    acpu0, aloop0 = proc_cpu_s(a.pid), proc_cpu_s(a.pid, a.pid)
    consumed0 = am["fanout_delivery_messages_in_total{source=\"users\"}"]
    t_a0 = time.time()
    perf = None
    if args.perf:
        perf = subprocess.Popen(["perf", "record", "-g", "-F", "2000", "-p", str(a.pid), "-o",
                                 args.perf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # A is done when every message was consumed and handed to Redis (B and
    # the clients may still be writing): its CPU is read then, so the idle
    # polling of its Kafka threads while B catches up is not counted.
    a_done = None
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        am = ft.metrics(a.addr, timeout=60)
        if (am["fanout_delivery_messages_in_total{source=\"users\"}"] >= total and
                am["fanout_delivery_routing_backlog_bytes"] == 0):
            a_done = time.time()
            break
        time.sleep(0.05)
    acpu1, aloop1 = proc_cpu_s(a.pid), proc_cpu_s(a.pid, a.pid)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    consumed = am["fanout_delivery_messages_in_total{source=\"users\"}"] - consumed0
    lost = None
    try:
        first = cl.wait_line(r"^got=1 first_ns=(\d+)", timeout=args.timeout)
        last = cl.wait_line(r"^got=%d first_ns=(\d+) last_ns=(\d+)" % k, timeout=args.timeout)
        lost = 0
    except (TimeoutError, RuntimeError) as e:
        print("clients did not get every message: %s" % str(e).splitlines()[0], flush=True)
    bcpu1 = proc_cpu_s(b.pid)
    rcpu1 = [proc_cpu_s(r.proc.pid) for r in nodes]
    stats1 = [commandstats(r) for r in nodes]
    am, bm = ft.metrics(a.addr, timeout=60), ft.metrics(b.addr, timeout=60)
    if lost is None:
        cl.signal(signal.SIGUSR1)
        m = cl.wait_line(r"^total=(\d+) conns_short=(\d+)", timeout=10)
        lost = total - int(m.group(1))

    acpu, aloop = acpu1 - acpu0, aloop1 - aloop0
    cmds = {}
    for s0, s1 in zip(stats0, stats1):
        for c, v in s1.items():
            d = v - s0.get(c, 0)
            if d:
                cmds[c] = cmds.get(c, 0) + d
    ncmds = sum(cmds.values())
    rcpu = sum(rcpu1) - sum(rcpu0)
    print("A (consumer): %d messages in %.2f s CPU (process) -> %.0f msg/s per core; "
          "event-loop thread %.2f s -> %.0f msg/s per core; %.2f us per message" %
          (consumed, acpu, consumed / acpu if acpu else float("nan"), aloop,
           consumed / aloop if aloop else float("nan"), acpu / consumed * 1e6), flush=True)
    if a_done is not None:
        print("A: assignment to last message handed to Redis %.2f s wall -> %.0f msg/s" %
              (a_done - t_a0, consumed / (a_done - t_a0)), flush=True)
    print("B (receiver): %.2f s CPU -> %.2f us per message; pubsub in %d" %
          (bcpu1 - bcpu0, (bcpu1 - bcpu0) / total * 1e6,
           bm["fanout_delivery_messages_in_total{source=\"pubsub\"}"]), flush=True)
    print("Redis (%d node%s): %.2f s CPU -> %.2f us per message; %d commands -> %.3f per "
          "message (%s)" %
          (len(nodes), "s" if len(nodes) > 1 else "", rcpu, rcpu / total * 1e6, ncmds,
           ncmds / total, ", ".join("%s %.3f" % (c, v / total)
                                    for c, v in sorted(cmds.items(), key=lambda x: -x[1]))),
          flush=True)
    if lost == 0:
        wall = (int(last.group(2)) - int(first.group(1))) / 1e9
        print("clients: %d messages, first to last %.2f s -> %.0f msg/s wall" %
              (total, wall, total / wall), flush=True)
    if a_done is None:
        print("A did not finish routing in %.0f s" % args.timeout, flush=True)
    if consumed + consumed0 < total:
        print("A consumed only %d of %d: the broker dropped old records (more --partitions)" %
              (consumed + consumed0, total), flush=True)
    print("lost: %d; A published %d, redis errors A %d B %d; load average %s" %
          (lost, am.get("fanout_delivery_published_total", 0),
           am.get("fanout_delivery_redis_errors_total", 0),
           bm.get("fanout_delivery_redis_errors_total", 0),
           " ".join(open("/proc/loadavg").read().split()[:3])), flush=True)
    cl.stop()
    a.stop()
    b.stop()
    kafka.stop()
    for r in nodes:
        r.stop()
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

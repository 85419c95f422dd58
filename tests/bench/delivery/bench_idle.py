#!/usr/bin/python3
"""Idle cost of one fanout-delivery process (prints figures; not a test).

Starts redis-server, a broker (the embedded fanout-kafka-dev, or the real
Apache Kafka of deploy/local/apache-kafka with --apache) and one
fanout-delivery with no connections, waits until it holds its partitions,
then reads utime+stime of the delivery process (and of the broker) from
/proc/PID/stat over --seconds and prints them as % of one core. Then one
message is sent to a connected user --samples times to show the latency the
setting gives (produce -> WebSocket, p50/max).

usage: bench_idle.py [--apache] [--seconds 20] [--delivery-args "..."] [--build DIR]
e.g.   bench_idle.py --delivery-args "--kafka-fetch-wait-ms 1"
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "integration", "delivery"))
from procstat import cpu_seconds, tree_cpu_seconds as tree_cpu  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apache", action="store_true", help="the real Apache Kafka")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--delivery-args", default="")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import fanout_test as ft
    from wsclient import WsClient

    secret = "bench-secret-0123456789abcdef-0123456789"
    redis = ft.Redis()
    kafka = ft.ApacheKafka(partitions=4) if args.apache else ft.KafkaDev(partitions=4)
    d = ft.start_service("fanout-delivery", "delivery-idle", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", "idle", "--jwt-secret", secret, "--log-level", "warn",
        *shlex.split(args.delivery_args)])
    ft.eventually(lambda: ft.metrics(d.addr).get("fanout_delivery_assigned_partitions", 0) >= 8,
                  timeout=60, what="partitions assigned")
    time.sleep(2)  # past the group join's own traffic
    t0, c0, k0 = time.time(), cpu_seconds(d.pid), tree_cpu(kafka.proc.pid)
    time.sleep(args.seconds)
    t1, c1, k1 = time.time(), cpu_seconds(d.pid), tree_cpu(kafka.proc.pid)
    wall = t1 - t0
    print("broker=%s delivery_args=%r" % ("apache-kafka" if args.apache else "fanout-kafka-dev",
                                          args.delivery_args))
    print("idle CPU over %.0f s: delivery %.2f %% of a core, broker %.2f %%" %
          (wall, 100 * (c1 - c0) / wall, 100 * (k1 - k0) / wall))

    # Latency: produce (fanout-test-produce) -> the user's socket.
    c = WsClient(d.addr, token=ft.make_jwt(secret, "lat"))
    ft.eventually(lambda: redis.cli("HLEN", "ws:connections:lat") == "1", what="registered")
    lat = []
    for i in range(args.samples):
        t = time.time()
        p = subprocess.run([ft.find_binary("fanout-test-produce"), kafka.bootstrap],
                           input="fanout.users send lat application/json %s\n" %
                           ('{"i":%d}' % i).encode().hex(), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        m = c.recv(timeout=30)
        lat.append((time.time() - t) * 1000)
        assert m["data"] == {"i": i}, m
        time.sleep(0.2)
    lat.sort()
    print("produce -> WebSocket (includes starting the producer process): p50 %.1f ms, "
          "max %.1f ms over %d" % (lat[len(lat) // 2], lat[-1], len(lat)))
    c.close()
    d.stop()
    kafka.stop()
    redis.stop()


if __name__ == "__main__":
    main()

"""Benchmark: POST /v1/send requests/s through fanout-ingest with keep-alive,
the ingest process (all its threads, librdkafka's included) pinned to one
core, wrk and the embedded Kafka broker on the other; then p99 latency at
half the rate reached. Prints figures; never fails on a number.

Usage: bench_send.py [--seconds N] [--connections C] [--pipeline D]
Needs a build with fanout-ingest and fanout-kafka-dev (a Release build is what
the figures are for: cmake -DCMAKE_BUILD_TYPE=Release)."""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
import fanout_test as ft  # noqa: E402

LUA = os.path.join(HERE, "send.lua")
KEY = "bench-key"


def wrk(port, seconds, conns, delay_ms=0, depth=1, cpu="1", batch=1):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency", "-s", LUA,
            "http://127.0.0.1:%d" % port, "--", KEY, str(delay_ms), str(depth), str(batch)]
    if cpu is not None and os.cpu_count() and os.cpu_count() > 1:
        argv = ["taskset", "-c", cpu] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[int(pct)] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, lat, int(errors.group(1)) if errors else 0, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--pipeline", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()

    kafka = ft.KafkaDev(partitions=args.partitions)
    ing = ft.start_service("fanout-ingest", "ingest-bench",
                           ["--listen", "127.0.0.1:0", "--kafka", kafka.bootstrap,
                            "--api-keys", KEY, "--intake", "false", "--log-level", "warn",
                            "--queue-max-messages", "1000000"])
    try:
        if os.cpu_count() and os.cpu_count() > 1:
            subprocess.run(["taskset", "-acp", "0", str(ing.pid)], check=True,
                           capture_output=True)
            subprocess.run(["taskset", "-acp", "1", str(kafka.proc.pid)], check=True,
                           capture_output=True)
        # warm up: metadata, connections, producer id
        wrk(ing.port, 2, 16)
        print("fanout-ingest POST /v1/send, keep-alive, ingest pinned to CPU 0 "
              "(wrk and fanout-kafka-dev on CPU 1), %d partitions, acks=all idempotent"
              % args.partitions, flush=True)
        best = (0, None, 0)
        for conns, depth in [(64, 1), (args.connections, 1), (args.connections, args.pipeline)]:
            rps, lat, errs, text = wrk(ing.port, args.seconds, conns, depth=depth)
            label = "pipelined x%d" % depth if depth > 1 else "one request at a time"
            print("max rate: %9.0f req/s  (%d connections, %s; p50 %.2f ms, p99 %s; "
                  "non-202: %d)" % (rps, conns, label, lat.get(50, float("nan")),
                                    ("%.2f ms" % lat[99]) if depth == 1 and 99 in lat
                                    else "n/a (pipelined)", errs), flush=True)
            if depth == 1 and rps > best[0]:
                best = (rps, conns, errs)
        rps, lat, errs, text = wrk(ing.port, args.seconds, 16, batch=100)
        print("batches:  %9.0f messages/s (16 connections, POST /v1/batch of 100; p50 %.2f ms, "
              "p99 %.2f ms per batch; non-202: %d)" % (rps * 100, lat.get(50, 0),
                                                       lat.get(99, 0), errs), flush=True)
        # p99 at half the best non-pipelined rate: each connection sends one
        # request every `delay` ms (plus its latency); one short calibration run
        # corrects the connection count for that latency.
        target = best[0] / 2
        delay = 10
        conns = max(1, int(round(target * delay / 1000.0)))
        rps, _lat, _e, _t = wrk(ing.port, 3, conns, delay_ms=delay)
        conns = max(1, int(round(conns * target / max(rps, 1.0))))
        rps, lat, errs, text = wrk(ing.port, args.seconds, conns, delay_ms=delay)
        print("at half rate: %9.0f req/s  (target %.0f; %d connections, %d ms between "
              "requests) p50 %.2f ms, p90 %.2f ms, p99 %.2f ms; non-202: %d"
              % (rps, target, conns, delay, lat.get(50, 0), lat.get(90, 0), lat.get(99, 0),
                 errs), flush=True)
    finally:
        ing.stop()
        kafka.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Paced fan-out against the kernel's floor (prints figures; not a test).

In one run, with the same number of loopback sockets, the same rate and the
same frame size:

  server: fanout-delivery delivers --rate room broadcasts a second for
          --seconds to --conns members (fanout-bench-wsclient, another
          process). CPU per frame = (utime+stime of the whole delivery process
          over the paced interval - its idle CPU over an interval as long,
          measured just before) / frames written.
  floor:  fanout-bench-floor writes the same number of bytes (the server's
          frame length, read from its bytes_out/frames_out counters) to as many
          loopback sockets with a bare write() loop at the same rate, to the same
          receiver (another fanout-bench-wsclient, whose upgrade and join the
          floor answers itself); CPU per frame from its getrusage. With
          --uring, also io_uring sends (batches of 4,096 per submission).

Prints both, and server / floor (goal: <= 1.2). --repeat alternates the two.

usage: bench_floor.py [--build DIR] [--conns 10000] [--rate 10] [--seconds 10]
                      [--repeat 2] [--uring] [--server-args "..."]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
from procstat import cpu_seconds  # noqa: E402


def softirq_s():
    """Machine-wide softirq time (/proc/stat), in seconds: on loopback the
    receive side runs as softirq, which the kernel may account here instead
    of to the sending process."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[7]) / os.sysconf("SC_CLK_TCK")


def preempted(pid):
    """Involuntary context switches of every thread of pid."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def write_calls(pid):
    """syscw of /proc/PID/io: write-type system calls (write, writev) so far."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    return 0


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--uring", action="store_true", help="also the io_uring floor")
    ap.add_argument("--server-args", default="", help="more fanout-delivery flags")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import fanout_test as ft

    secret = "bench-secret-0123456789abcdef-0123456789"
    redis = ft.Redis()
    kafka = ft.KafkaDev(partitions=4)
    # No pings during the run: they would be frames of another size.
    srv = ft.start_service("fanout-delivery", "floor-delivery", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", "floor", "--jwt-secret", secret, "--log-level", "warn",
        "--max-connections", "19000", "--ping-interval-ms", "600000",
        *shlex.split(args.server_args)])
    ft.eventually(lambda: ft.metrics(srv.addr).get("fanout_delivery_assigned_partitions", 0) >= 4,
                  timeout=30, what="rooms partitions assigned")
    n, per_run = args.conns, int(args.rate * args.seconds)
    expect = 1 + args.repeat * per_run
    cl = ft.Proc("floor-client", [ft.find_binary("fanout-bench-wsclient"), "--addr", srv.addr,
                                  "--conns", str(n), "--secret", secret, "--room", "floor",
                                  "--expect", str(expect)])
    cl.wait_line(r"^joined=", timeout=180)
    payload = json.dumps({"p": "x" * 55})  # 64 bytes
    line = "fanout.rooms broadcast floor application/json %s\n" % payload.encode().hex()
    prod = subprocess.Popen([ft.find_binary("fanout-test-produce"), kafka.bootstrap],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

    def send():
        prod.stdin.write(line)
        prod.stdin.flush()

    # Warm-up broadcast: the frame length the floor must write.
    m0 = ft.metrics(srv.addr)
    send()
    cl.wait_line(r"^got=1 ", timeout=60)
    time.sleep(0.5)
    m1 = ft.metrics(srv.addr)
    frames = m1["fanout_delivery_frames_out_total"] - m0["fanout_delivery_frames_out_total"]
    frame_bytes = round((m1["fanout_delivery_bytes_out_total"] -
                         m0["fanout_delivery_bytes_out_total"]) / frames)
    print("conns=%d rate=%d/s seconds=%.0f frame=%d bytes (64-byte payload in the envelope)" %
          (n, args.rate, args.seconds, frame_bytes), flush=True)

    floor_bin = ft.find_binary("fanout-bench-floor")
    got = 1
    results = []
    for rep in range(args.repeat):
        # Idle: the same process, same connections, nothing sent.
        i0, t0 = cpu_seconds(srv.pid), time.monotonic()
        time.sleep(args.seconds)
        idle_rate = (cpu_seconds(srv.pid) - i0) / (time.monotonic() - t0)

        # Server, paced.
        f0 = ft.metrics(srv.addr)["fanout_delivery_frames_out_total"]
        c0, t0, s0, v0 = cpu_seconds(srv.pid), time.monotonic(), softirq_s(), preempted(srv.pid)
        w0 = write_calls(srv.pid)
        for k in range(per_run):
            delay = t0 + k / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send()
        got += per_run
        cl.wait_line(r"^got=%d " % got, timeout=120)
        c1, t1, s1, v1 = cpu_seconds(srv.pid), time.monotonic(), softirq_s(), preempted(srv.pid)
        w1 = write_calls(srv.pid)
        f1 = ft.metrics(srv.addr)["fanout_delivery_frames_out_total"]
        fr = f1 - f0
        cpu = (c1 - c0) - idle_rate * (t1 - t0)
        server_us = cpu * 1e6 / fr
        print("server: %d frames in %.1f s; delivery CPU %.3f s - idle %.3f s (%.2f %% of a core) "
              "= %.3f s -> %.2f us per frame; %d write calls (%.2f frames each: > 1 when broadcasts "
              "arrived together and were coalesced); preempted %d times; machine-wide softirq "
              "%.2f s; load average %s" %
              (fr, t1 - t0, c1 - c0, idle_rate * (t1 - t0), 100 * idle_rate, cpu, server_us,
               w1 - w0, fr / max(1, w1 - w0), v1 - v0, s1 - s0, loadavg()), flush=True)

        floors = {}
        for mode in (["write", "io_uring"] if args.uring else ["write"]):
            s0 = softirq_s()
            fl = ft.Proc("floor-" + mode, [floor_bin, "--serve", "--conns", str(n), "--rate",
                                            str(args.rate), "--seconds", str(args.seconds),
                                            "--frame-bytes", str(frame_bytes)]
                         + (["--uring"] if mode == "io_uring" else []))
            faddr = fl.wait_line(r"^listening=(\S+)", timeout=10).group(1)
            fcl = ft.Proc("floor-client-" + mode, [
                ft.find_binary("fanout-bench-wsclient"), "--addr", faddr, "--conns", str(n),
                "--secret", secret, "--room", "floor", "--expect", str(per_run)])
            line_m = fl.wait_line(r"^(floor mode=.*)$", timeout=120 + 10 * args.seconds)
            fcl.wait_line(r"^got=%d " % per_run, timeout=60)
            fcl.stop()
            fl.stop()
            s1 = softirq_s()
            kv = dict(x.split("=", 1) for x in line_m.group(1).split()[1:])
            floors[mode] = float(kv["us_per_frame"])
            print("floor (%s): %s frames, CPU %s s -> %.2f us per frame (%s short writes); "
                  "preempted %s times; machine-wide softirq %.2f s; load average %s" %
                  (mode, kv["frames"], kv["cpu_s"], floors[mode], kv["short"], kv["preempted"],
                   s1 - s0, loadavg()), flush=True)
        ratio = server_us / floors["write"]
        results.append(ratio)
        print("run %d: server %.2f us / floor %.2f us per frame = %.2fx (goal <= 1.2x)%s" %
              (rep + 1, server_us, floors["write"], ratio,
               "; io_uring floor %.2f us = %.2fx of write()" %
               (floors["io_uring"], floors["io_uring"] / floors["write"])
               if "io_uring" in floors else ""), flush=True)
    print("server / floor: %s" % ", ".join("%.2fx" % r for r in results))
    prod.stdin.close()
    prod.wait(timeout=30)
    cl.stop()
    srv.stop()
    kafka.stop()
    redis.stop()


if __name__ == "__main__":
    main()

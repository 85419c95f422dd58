#!/usr/bin/python3
"""End-to-end latency over the broker (prints figures; not a test).

One run, one broker (the embedded fanout-kafka-dev, or the real Apache Kafka
with --apache, or a running one with --bootstrap), --rate messages a second
for --seconds, in each of --rounds rounds:

  ours:   POST /v1/send to fanout-ingest (pipelined over --connections
          keep-alive connections) -> Kafka -> fanout-delivery -> the WebSocket
          frame at a client connected as the user. Latency = the request's
          write -> the frame's read (the send time travels in the message),
          split at the record's CreateTime (pos in the frame; set by ingest's
          producev): HTTP + ingest, and producer + broker + delivery.
  floor:  fanout-bench-kafka-floor (kafka_floor.c): a producer with ingest's
          librdkafka settings -> the users topic -> a group consumer with
          delivery's settings (fetch.wait.max.ms included), one process, one
          clock, records keyed by a user nobody is connected as; a bare
          rd_kafka_consumer_poll() thread, and with --floor-uv also delivery's
          libuv consumer path (common/kafka_consumer.c + kafka_uv.c).
  kcat:   with --kcat, the kcat pair of earlier runs (its own pipe overhead
          makes it no floor).

  packets: with --pcap, tcpdump on lo stamps each message where it crosses a
          process boundary (HTTP request in, produce request out, fetch
          response out, frame out): ingest's, the broker's and delivery's
          share of every message, paired, not a difference of two runs.

A fresh Apache Kafka first gets --broker-warm-seconds (30) of unmeasured floor
traffic: a new JVM's acknowledgements take ~100 ms for its first minute.
Timestamps of the end-to-end phase are CLOCK_REALTIME of the one machine. The
first second of each phase is left out (warm-up). Prints p50/p90/p99/max and
ours = end-to-end - floor, for p50 and p99 (goal: <= 0.5 ms p50, <= 1 ms p99).

usage: bench_latency.py [--build DIR] [--apache | --bootstrap HOST:PORT]
                        [--rate 1000] [--seconds 20] [--rounds 1]
                        [--connections 8] [--floor-uv] [--floor-first] [--kcat]
                        [--together] [--pcap]
                        [--broker-warm-seconds S]
                        [--ingest-args "..."] [--delivery-args "..."]
"""

import argparse
import base64
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))

KEY = "bench-key"
SECRET = "bench-secret-0123456789abcdef-0123456789"


# The send time the sender puts in every message, then its index: found in the
# HTTP body, the Kafka record (produce request, fetch response) and the frame.
STAMP_RE = re.compile(rb'"t":\s*(\d{16,20}),\s*"i":\s*(\d+)')


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summary(xs):
    return "p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms over %d" % (
        pct(xs, .5), pct(xs, .9), pct(xs, .99), max(xs) if xs else float("nan"), len(xs))


def paced(rate, seconds, emit):
    """Calls emit(i, t_ns) rate times a second on an absolute schedule."""
    n = int(rate * seconds)
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        emit(i, time.time_ns())


# ---- end-to-end: the WebSocket receiver and the HTTP sender (own processes) ----

def next_frame(buf):
    """(opcode, payload, rest) of the first whole server frame (unmasked) in
    buf, or None."""
    if len(buf) < 2:
        return None
    ln, hl = buf[1] & 0x7f, 2
    if ln == 126:
        ln, hl = (int.from_bytes(buf[2:4], "big"), 4) if len(buf) >= 4 else (None, 4)
    elif ln == 127:
        ln, hl = (int.from_bytes(buf[2:10], "big"), 10) if len(buf) >= 10 else (None, 10)
    if ln is None or len(buf) < hl + ln:
        return None
    return buf[0] & 0x0f, buf[hl:hl + ln], buf[hl + ln:]


def ws_receiver(addr, token, n, warm, out, ready, warmed):
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13"
               "\r\n\r\n" % (token, addr, key)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, _, buf = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    lat, stage, seen, welcomed, t = [], [], 0, False, 0
    s.settimeout(60)
    while seen < n:
        fr = next_frame(buf)
        if fr is None:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("delivery closed the connection")
            t = time.time_ns()  # when the bytes reached us
            buf += chunk
            continue
        op, payload, buf = fr
        if op != 1:
            continue
        if not welcomed:
            welcomed = True
            ready.set()
            continue
        m = json.loads(payload)
        d = m.get("data")
        if isinstance(d, dict) and "warm" in d:
            warmed.set()
        elif isinstance(d, dict) and "t" in d:
            seen += 1
            if d["i"] >= warm:
                lat.append((t - d["t"]) / 1e6)
                # The record's CreateTime (ms, set by ingest's producev) is
                # the 5th field of pos: the request's write -> produce, and
                # produce -> the frame's read.
                ts = int(m.get("pos", "").split(".")[4], 16)
                stage.append((ts - d["t"] / 1e6, t / 1e6 - ts))
    out.put((lat, stage))
    s.close()


def http_sender(addr, rate, seconds, conns, out):
    """Paces POST /v1/send round-robin over `conns` keep-alive connections,
    each pipelining its requests (ingest holds at most --max-pipeline, 64,
    unanswered per connection: one connection caps the rate at 64 / the
    broker's acknowledgement time)."""
    host, _, port = addr.rpartition(":")
    n = int(rate * seconds)
    socks = []
    for _ in range(conns):
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    answered = [0, 0]  # 202s, others
    lock = threading.Lock()

    def reader(s, expect):
        buf, got = b"", 0
        while got < expect:
            chunk = s.recv(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].decode("latin-1")
                clen = 0
                for line in head.split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        clen = int(v)
                if len(buf) < end + 4 + clen:
                    break
                got += 1
                with lock:
                    answered[0 if head.startswith("HTTP/1.1 202") else 1] += 1
                buf = buf[end + 4 + clen:]

    ths = [threading.Thread(target=reader, args=(s, len(range(c, n, conns))), daemon=True)
           for c, s in enumerate(socks)]
    for th in ths:
        th.start()

    def emit(i, t):
        body = json.dumps({"user": "lat", "data": {"t": t, "i": i}}).encode()
        socks[i % conns].sendall(
            b"POST /v1/send HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)

    paced(rate, seconds, emit)
    for th in ths:
        th.join(timeout=30)
    out.put(tuple(answered))


# ---- broker: kcat producer -> kcat group consumer ----

def broker_phase(kafka, rate, seconds, warm, producer_conf, consumer_conf, topic):
    cons = subprocess.Popen(
        ["kcat", "-C", "-b", kafka, "-G", "bench-latency-%d" % os.getpid(), "-u", "-q",
         "-f", "%k %s\n", "-X", "auto.offset.reset=latest"] +
        sum((["-X", kv] for kv in consumer_conf), []) + [topic],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lat, n = [], int(rate * seconds)
    got = threading.Event()
    count = [0]

    def reader():
        for line in cons.stdout:
            t = time.time_ns()
            k, _, v = line.decode().strip().partition(" ")
            if k != "kcat-lat":
                continue
            i, _, t0 = v.partition(":")
            if i == "probe":
                got.set()
                continue
            count[0] += 1
            if int(i) >= warm:
                lat.append((t - int(t0)) / 1e6)
            if count[0] >= n:
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    prod = subprocess.Popen(
        ["kcat", "-P", "-b", kafka, "-t", topic, "-K", "\t", "-q"] +
        sum((["-X", kv] for kv in producer_conf), []),
        stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # Probes until the consumer has joined its group and sees new records.
    deadline = time.time() + 120
    while not got.is_set():
        if time.time() > deadline:
            raise RuntimeError("kcat consumer saw nothing")
        prod.stdin.write(b"kcat-lat\tprobe:0\n")
        prod.stdin.flush()
        got.wait(1.0)
    time.sleep(1)

    def emit(i, t):
        prod.stdin.write(b"kcat-lat\t%d:%d\n" % (i, t))
        prod.stdin.flush()

    paced(rate, seconds, emit)
    th.join(timeout=30)
    prod.stdin.close()
    prod.wait(timeout=30)
    cons.terminate()
    cons.wait(timeout=30)
    return lat, count[0]


# ---- per message from packets (--pcap) ----

class PacketCapture:
    """tcpdump on lo, during the end-to-end phase, of the ingest, broker and
    delivery ports: the kernel stamps each segment as it is sent (one clock,
    microseconds), so one message's time can be split at the process
    boundaries without trusting the processes' own clocks or logs."""

    def __init__(self, path, ports):
        if shutil.which("tcpdump") is None:
            sys.exit("--pcap needs tcpdump (deploy/install-deps.sh installs it)")
        self.path = path
        flt = " or ".join("tcp port %d" % p for p in sorted(set(ports)))
        # -Z root: Debian's tcpdump otherwise drops to its own user and cannot
        # write here; -B: a 64 MiB kernel buffer so a busy second drops nothing.
        self.p = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "65536",
                                   "-Z", "root", "-w", path, flt],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            ln = self.p.stderr.readline()
            if not ln or "listening on" in ln:
                break
        if self.p.poll() is not None:
            sys.exit("tcpdump did not start: %s" % self.p.stderr.read()[-2000:])

    def stop(self):
        """Stops the capture; returns the packets the kernel dropped."""
        self.p.send_signal(signal.SIGINT)
        _, err = self.p.communicate(timeout=60)
        m = re.search(r"(\d+) packets? dropped by kernel", err)
        return int(m.group(1)) if m else -1


def packet_split(path, ingest_port, broker_ports, delivery_port, warm):
    """Per message (index >= warm), the first segment that carries its stamp
    in each direction: A the HTTP request reaching ingest, B ingest's produce
    request, C the broker's fetch response to delivery, D delivery's frame.
    Returns {name: [ms per message]} for ingest (A->B), broker (B->C),
    delivery (C->D), ours (A->B + C->D) and whole (A->D), plus how many
    messages were seen in all four and how many in any."""
    import pcapread
    seen = {}
    for ts, sport, dport, payload in pcapread.tcp_segments(path):
        if dport == ingest_port:
            k = 0
        elif dport in broker_ports:
            k = 1
        elif sport in broker_ports:
            k = 2
        elif sport == delivery_port:
            k = 3
        else:
            continue
        for m in STAMP_RE.finditer(payload):
            if int(m.group(2)) < warm:
                continue
            v = seen.setdefault(int(m.group(1)), [None] * 4)
            if v[k] is None:
                v[k] = ts
    out = {k: [] for k in ("ingest", "broker", "delivery", "ours", "whole")}
    complete = 0
    for a, b, c, d in seen.values():
        if None in (a, b, c, d):
            continue
        complete += 1
        out["ingest"].append((b - a) / 1000.0)
        out["broker"].append((c - b) / 1000.0)
        out["delivery"].append((d - c) / 1000.0)
        out["ours"].append((b - a + d - c) / 1000.0)
        out["whole"].append((d - a) / 1000.0)
    return out, complete, len(seen)


def port_of(addr):
    return int(addr.rpartition(":")[2])


# ---- broker: fanout-bench-kafka-floor (ingest's producer, delivery's consumer) ----

def floor_argv(kafka, rate, seconds, fetch_wait, linger, consumer, extra):
    import fanout_test as ft
    return [ft.find_binary("fanout-bench-kafka-floor"), "--kafka", kafka, "--rate", str(rate),
            "--seconds", str(seconds), "--fetch-wait-ms", fetch_wait, "--linger-ms", linger,
            "--consumer", consumer] + extra


def floor_lines(stdout, rc, stderr):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("kafka-floor")]
    if len(lines) < 2:
        sys.exit("kafka-floor failed (%d): %s" % (rc, stderr[-2000:]))
    return lines


def floor_phase(kafka, rate, seconds, fetch_wait, linger, consumer, extra):
    """Runs fanout-bench-kafka-floor; returns its two output lines."""
    r = subprocess.run(floor_argv(kafka, rate, seconds, fetch_wait, linger, consumer, extra),
                       capture_output=True, text=True, timeout=seconds + 200)
    return floor_lines(r.stdout, r.returncode, r.stderr)


class FloorAlongside:
    """The floor in the same time window as the end-to-end phase (--together):
    on the intake topic (same broker, same partitions, unused by these
    services here), so both see the same broker, JVM and CPU at each moment
    and a stall of the broker lands in both tails."""

    def __init__(self, kafka, rate, seconds, fetch_wait, linger):
        self.seconds = seconds
        self.p = subprocess.Popen(
            floor_argv(kafka, rate, seconds, fetch_wait, linger, "thread",
                       ["--topic", "fanout.intake", "--key", "floor-together"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.head = []
        deadline = time.time() + 180
        while time.time() < deadline:
            ln = self.p.stdout.readline()
            if not ln:
                break
            self.head.append(ln)
            if ln.startswith("pacing-starts"):
                return
        self.p.kill()
        sys.exit("kafka-floor (--together) never started pacing: %s" % self.p.stderr.read()[-2000:])

    def lines(self):
        out, err = self.p.communicate(timeout=self.seconds + 200)
        return floor_lines("".join(self.head) + out, self.p.returncode, err)


def floor_pct(line, key):
    for w in line.split():
        if w.startswith(key + "="):
            return float(w.partition("=")[2])
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apache", action="store_true", help="the real Apache Kafka")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--ingest-args", default="", help="more fanout-ingest flags")
    ap.add_argument("--delivery-args", default="", help="more fanout-delivery flags")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    ap.add_argument("--bootstrap", help="use this running broker (with --apache: an Apache "
                    "Kafka with the project's topics, 4 partitions) instead of starting one")
    ap.add_argument("--floor-uv", action="store_true", help="also run the floor with its "
                    "consumer on delivery's libuv path (kafka_consumer.c + kafka_uv.c)")
    ap.add_argument("--kcat", action="store_true", help="also the kcat pair of earlier runs")
    ap.add_argument("--rounds", type=int, default=1, help="repeat end-to-end + floor")
    ap.add_argument("--floor-first", action="store_true",
                    help="the floor before the end-to-end phase (fanout-kafka-dev's fetches "
                    "cost more as its log grows, which favours whichever phase runs first)")
    ap.add_argument("--connections", type=int, default=8,
                    help="HTTP connections the sender spreads its requests over")
    ap.add_argument("--together", action="store_true",
                    help="run the floor at the same time as the end-to-end phase (on the intake "
                    "topic) instead of before or after it: both meet the same broker moments")
    ap.add_argument("--pcap", action="store_true",
                    help="also time every message at the process boundaries from packets "
                    "(tcpdump on lo, needs root): ingest, broker and delivery apart, per message")
    ap.add_argument("--broker-warm-seconds", type=float, default=None,
                    help="unmeasured floor traffic first (default: 30 on an Apache Kafka "
                    "this script started, a fresh JVM; else 0)")
    args = ap.parse_args()
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import fanout_test as ft

    redis = ft.Redis()
    if args.bootstrap:
        kafka = argparse.Namespace(bootstrap=args.bootstrap, stop=lambda: None)
    else:
        kafka = ft.ApacheKafka(partitions=4) if args.apache else ft.KafkaDev(partitions=4)
    ing = ft.start_service("fanout-ingest", "lat-ingest", [
        "--listen", "127.0.0.1:0", "--kafka", kafka.bootstrap, "--redis", redis.addr,
        "--api-keys", KEY, "--intake", "false", "--log-level", "warn",
        *shlex.split(args.ingest_args)])
    d = ft.start_service("fanout-delivery", "lat-delivery", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", kafka.bootstrap,
        "--server-id", "lat", "--jwt-secret", SECRET, "--log-level", "warn",
        "--ping-interval-ms", "600000", *shlex.split(args.delivery_args)])
    ft.eventually(lambda: ft.metrics(d.addr).get("fanout_delivery_assigned_partitions", 0) >= 8,
                  timeout=120, what="partitions assigned")

    # The settings our services run with (their defaults unless overridden).
    def flag(argstr, name, default):
        a = shlex.split(argstr)
        return a[a.index(name) + 1] if name in a else default
    embedded = not args.apache
    fetch_wait = flag(args.delivery_args, "--kafka-fetch-wait-ms", "1" if embedded else "500")
    producer_conf = ["linger.ms=" + flag(args.ingest_args, "--linger-ms", "1"), "acks=all",
                     "enable.idempotence=true", "batch.num.messages=10000",
                     "batch.size=1000000"]
    consumer_conf = ["fetch.wait.max.ms=" + fetch_wait]
    warm = args.rate  # the first second
    n = int(args.rate * args.seconds)
    print("broker=%s rate=%d/s seconds=%.0f connections=%d producer: %s; consumer: %s; "
          "load average %s" % (
              "apache-kafka" if args.apache else "fanout-kafka-dev", args.rate, args.seconds,
              args.connections, " ".join(producer_conf), " ".join(consumer_conf),
              open("/proc/loadavg").read().split()[0]), flush=True)

    def loadavg():
        return open("/proc/loadavg").read().split()[0]

    linger = flag(args.ingest_args, "--linger-ms", "1")
    bw = args.broker_warm_seconds
    if bw is None:
        bw = 30 if args.apache and not args.bootstrap else 0
    if bw > 0:
        # A fresh JVM compiles its hot paths during the first tens of seconds:
        # its acknowledgements then take ~100 ms or more, which is the JVM's
        # warm-up, not the path's latency.
        fl = floor_phase(kafka.bootstrap, args.rate, bw, fetch_wait, linger, "thread", [])
        print("broker warm-up (not counted): %s" % " ".join(fl), flush=True)

    def end_to_end(together=False):
        ctx = multiprocessing.get_context("fork")
        q, ready, warmed = ctx.Queue(), ctx.Event(), ctx.Event()
        rx = ctx.Process(target=ws_receiver,
                         args=(d.addr, ft.make_jwt(SECRET, "lat"), n, warm, q, ready, warmed))
        rx.start()
        if not ready.wait(30):
            sys.exit("no welcome from delivery")
        ft.eventually(lambda: redis.cli("HLEN", "ws:connections:lat") == "1", what="registered")

        # Warm the path until a message reaches the client (a real Kafka's
        # idempotent producer waits for its coordinator after a fresh start,
        # and the delivery consumer for its group), then a second more.
        def post_warm(i):
            return subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                 "Authorization: Bearer " + KEY, "-H", "Content-Type: application/json", "-d",
                 json.dumps({"user": "lat", "data": {"warm": i}}),
                 "http://%s/v1/send" % ing.addr],
                capture_output=True, text=True).stdout == "202"
        deadline = time.time() + 300
        while not warmed.is_set():
            if time.time() > deadline:
                sys.exit("no message reached the client in 300 s")
            post_warm(0)
            warmed.wait(1.0)
        time.sleep(1)
        alongside = FloorAlongside(kafka.bootstrap, args.rate, args.seconds, fetch_wait,
                                   linger) if together else None
        cap = None
        if args.pcap:
            os.makedirs(ft.STATE_DIR, exist_ok=True)
            pcap_path = os.path.join(ft.STATE_DIR, "bench-latency-%d.pcap" % os.getpid())
            broker_ports = {port_of(a) for a in kafka.bootstrap.split(",")}
            cap = PacketCapture(pcap_path, [port_of(ing.addr), port_of(d.addr)] +
                                sorted(broker_ports))
        sq = ctx.Queue()
        tx = ctx.Process(target=http_sender, args=(ing.addr, args.rate, args.seconds, args.connections, sq))
        tx.start()
        e2e, stages = q.get(timeout=args.seconds + 120)
        answered = sq.get(timeout=60)
        rx.join(10)
        tx.join(10)
        ft.eventually(lambda: redis.cli("HLEN", "ws:connections:lat") == "0", what="closed")
        if cap is not None:
            dropped = cap.stop()
            split, complete, any_seen = packet_split(pcap_path, port_of(ing.addr), broker_ports,
                                                     port_of(d.addr), warm)
            os.unlink(pcap_path)
            print("per message from packets (tcpdump on lo; %d of %d measured messages seen at "
                  "all four points, %d at some; %d packets dropped by the kernel):" % (
                      complete, n - warm, any_seen, dropped), flush=True)
            for name, what in (
                    ("ingest", "HTTP request in -> produce request out (producer linger "
                     "included)"),
                    ("broker", "produce request in -> fetch response out"),
                    ("delivery", "fetch response in -> WebSocket frame out"),
                    ("ours", "ingest + delivery, per message (goal <= 0.5 p50, <= 1 ms p99)"),
                    ("whole", "HTTP request in -> WebSocket frame out")):
                print("  %-8s %s: %s" % (name, what, summary(split[name])), flush=True)
        print("HTTP POST -> WebSocket frame: %s (%d answered 202, %d other); load average %s" % (
            summary(e2e), answered[0], answered[1], loadavg()), flush=True)
        print("  of which HTTP write -> record CreateTime (ingest's producev): p50 %.1f, "
              "p99 %.1f ms; CreateTime -> frame read: p50 %.1f, p99 %.1f ms (1 ms resolution)" % (
                  pct([a for a, _ in stages], .5), pct([a for a, _ in stages], .99),
                  pct([b for _, b in stages], .5), pct([b for _, b in stages], .99)), flush=True)
        return e2e, (alongside.lines() if alongside else None)

    for rnd in range(args.rounds):
        if args.rounds > 1:
            print("-- round %d of %d" % (rnd + 1, args.rounds), flush=True)
        # 1. end to end, 2. the broker alone (same topic, the services' client
        # settings), or the other way round
        if args.together:
            e2e, fl = end_to_end(together=True)
        else:
            if not args.floor_first:
                e2e, _ = end_to_end()
            fl = floor_phase(kafka.bootstrap, args.rate, args.seconds, fetch_wait, linger,
                             "thread", [])
            if args.floor_first:
                e2e, _ = end_to_end()
        print("floor (librdkafka consumer thread%s): %s; load average %s" % (
            ", same window, intake topic" if args.together else "", " ".join(fl), loadavg()),
            flush=True)
        f50, f99 = floor_pct(fl[0], "p50_ms"), floor_pct(fl[0], "p99_ms")
        if args.floor_uv:
            fu = floor_phase(kafka.bootstrap, args.rate, args.seconds, fetch_wait, linger, "uv",
                             [])
            print("floor (delivery's libuv consumer path): %s; load average %s" % (
                " ".join(fu), loadavg()), flush=True)
        print("ours = end-to-end - floor: p50 %.2f ms (goal <= 0.5), p99 %.2f ms (goal <= 1)" % (
            pct(e2e, .5) - f50, pct(e2e, .99) - f99), flush=True)
        if args.kcat:
            blat, bn = broker_phase(kafka.bootstrap, args.rate, args.seconds, warm,
                                    producer_conf, consumer_conf, "fanout.users")
            print("kcat produce -> kcat consume:  %s (%d of %d); load average %s" % (
                summary(blat), bn, n, loadavg()), flush=True)
    d.stop()
    ing.stop()
    kafka.stop()
    redis.stop()


if __name__ == "__main__":
    main()

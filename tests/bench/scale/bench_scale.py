#!/usr/bin/python3
"""Scale benchmark: many delivery processes, many connections (prints figures;
not a pass/fail test). See README.md here for the figures and commands.

Starts R redis-server nodes (every process gets --redis A,B,...), a broker
(the embedded fanout-kafka-dev, or with --apache the real Apache Kafka of
deploy/local/apache-kafka), P fanout-delivery processes, each on its own port
of 127.0.0.1 (separate ports, not --reuseport: the kernel's reuseport hash
spreads connections only roughly evenly, and a process must stay under the
20,000 files this machine allows it), and one fanout-bench-wsclient process
per delivery process with N/P connections (distinct users, all in one room
unless --no-room). Then:

1. anonymous RSS growth per connection of the delivery processes right after
   connect (sum of growth / N; RssAnon, see rss_kb);
2. holds the connections for --heartbeat-cycles ping intervals with the
   default heartbeats (ping 30 s, pong timeout 10 s) and prints bytes per
   connection again, connections closed by the servers (metrics: open
   connections and ping timeouts; clients: closed/failed, pongs sent), and
   the CPU of all delivery processes together, of the broker and of Redis
   over that hold (% of one core, utime+stime from /proc/PID/stat);
3. --broadcasts room broadcasts to everyone: delivered (lost must be 0),
   frames/s (delivered / producer start -> last arrival) and p50/p99 latency
   (producer start -> arrival; merged from each client's percentiles).

Every phase is bounded in time (--time-limit for the whole run); every
process started is stopped by its PID at the end, also on failure.

usage: bench_scale.py [--conns 64000] [--procs 4] [--redis-nodes 2] [--apache]
       [--heartbeat-cycles 2] [--broadcasts 3] [--tune-sysctl] [--build DIR]
"""

import argparse
import os
import resource
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "lib"))
from procstat import cpu_seconds, tree_pids, tree_cpu_seconds as tree_cpu_s  # noqa: E402


def cpu_s(pid):
    return cpu_seconds(pid, missing=0.0)  # 0 when gone


SECRET = "bench-secret-0123456789abcdef-0123456789"
MAX_PER_PROC = 19000  # this machine allows 20,000 files a process
PING_MS = 30000  # the defaults of fanout-delivery (not passed: they are the defaults)
PONG_MS = 10000


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def rss_kb(pid, field="RssAnon"):
    """kB of pid's resident memory: RssAnon (heap, arenas, stacks, anonymous
    mappings) by default. The pages of the binary and its shared libraries
    (RssFile) are left out of the per-connection figure: they are shared
    between processes and touched once per process, some of them only when
    the first client comes (libcrypto's at the first token), which would
    otherwise count as ~130 B a connection at 16,700 a process."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def smaps(pid):
    """{start address: (name, size kB, Rss kB, perms)} of every mapping of pid."""
    out, cur = {}, None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = parts[0].split("-")[0]
                out[cur] = [parts[5] if len(parts) > 5 else "", (hi - lo) // 1024, 0, parts[1]]
            elif parts[0] == "Rss:" and cur is not None:
                out[cur][2] = int(parts[1])
    return out


def smaps_kinds(m):
    """Rss kB by kind: the main heap ([heap]), glibc's thread arenas (anonymous
    rw mappings inside a 64 MiB reservation: rw part + PROT_NONE rest),
    thread stacks (8 MiB rw after a guard page), other anonymous mappings
    (big malloc chunks, libuv/librdkafka mmaps) and file-backed."""
    keys = sorted(m, key=lambda a: int(a, 16))
    kinds = {"heap": 0, "arenas": 0, "stacks": 0, "anon-other": 0, "files": 0}
    for i, a in enumerate(keys):
        name, size, rss, perms = m[a]
        if name == "[heap]":
            kinds["heap"] += rss
        elif name.startswith("/") or name.startswith("[v"):
            kinds["files"] += rss
        elif name == "" and perms.startswith("rw"):
            nxt = m[keys[i + 1]] if i + 1 < len(keys) else None
            prev = m[keys[i - 1]] if i > 0 else None
            if nxt and nxt[0] == "" and nxt[3].startswith("---") and size + nxt[1] == 65536:
                kinds["arenas"] += rss
            elif size == 8192 and prev and prev[3].startswith("---") and prev[1] == 4:
                kinds["stacks"] += rss
            else:
                kinds["anon-other"] += rss
        else:
            kinds["anon-other"] += rss
    return kinds


def malloc_info(pid, path):
    """glibc's malloc_info() XML of a running process, through gdb (the process
    pauses for a moment); returns {"arenas": [(in use, free, system)], ...}
    or None when gdb is missing or fails."""
    try:
        os.unlink(path)
    except OSError:
        pass
    cmd = ["gdb", "-p", str(pid), "-batch", "-nx",
           "-ex", "set $f = ((void *(*)(const char *, const char *))fopen)(\"%s\", \"w\")" % path,
           "-ex", "call ((int (*)(int, void *))malloc_info)(0, $f)",
           "-ex", "call ((int (*)(void *))fclose)($f)"]
    try:
        subprocess.run(cmd, capture_output=True, timeout=60)
        xml = open(path).read()
    except (OSError, subprocess.TimeoutExpired):
        return None
    import re
    heaps = []
    for h in re.finditer(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        body = h.group(2)
        tot = {t: (int(c), int(sz)) for t, c, sz in
               re.findall(r'<total type="(\w+)" count="(\d+)" size="(\d+)"/>', body)}
        sysm = re.search(r'<system type="current" size="(\d+)"/>', body)
        free = sum(sz for _, sz in tot.values())
        heaps.append((int(h.group(1)), int(sysm.group(1)) if sysm else 0, free))
    return heaps


def print_mem_detail(tag, pid, base, path):
    """One line on where delivery process pid's memory is (see --mem-detail)."""
    m = smaps(pid)
    k = smaps_kinds(m)
    b = smaps_kinds(base) if base else None
    print("mem %s (pid %d): Rss kB %s" % (tag, pid, ", ".join(
        "%s %d%s" % (n, v, " (%+d)" % (v - b[n]) if b else "") for n, v in k.items())),
        flush=True)
    heaps = malloc_info(pid, path)
    if heaps:
        print("mem %s malloc: %s" % (tag, "; ".join(
            "arena %d: system %d kB, free %d kB" % (nr, s // 1024, f // 1024)
            for nr, s, f in heaps)), flush=True)
    return m


def mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


# ---- sysctls (only with --tune-sysctl; restored at the end) ----

def sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


def tune_sysctls(n):
    """Raises what n connections (2n loopback sockets) need; returns
    [(name, old)] to restore. Prints every change."""
    # A broadcast leaves one small skb (~2 KiB truesize) in each client socket until it is read:
    # pressure from n/2 pages (2 KiB a connection), the hard limit at twice that.
    pages = max(1, n // 2)
    want = [
        ("fs.file-max", 2 * n + 200000),
        ("net.core.somaxconn", 65535),
        ("net.ipv4.tcp_max_syn_backlog", 65535),
        ("net.ipv4.tcp_mem", (pages, pages * 2, pages * 4)),
        ("net.netfilter.nf_conntrack_max", n + 200000),
        # One entry a bucket, the kernel's own default ratio: at n // 4 (chains of
        # four) its lookup was 9 % of the whole box's CPU holding 1,000,000.
        ("net.netfilter.nf_conntrack_buckets", min(1 << 21, max(65536, n))),
    ]
    changed = []
    for name, val in want:
        path = sysctl_path(name)
        if not os.path.exists(path):
            print("sysctl %s: not present, skipped" % name)
            continue
        old = open(path).read().split()
        oldv = [int(x) for x in old]
        newv = list(val) if isinstance(val, tuple) else [val]
        if all(o >= w for o, w in zip(oldv, newv)):
            print("sysctl %s = %s (enough, unchanged)" % (name, " ".join(old)))
            continue
        newv = [max(o, w) for o, w in zip(oldv, newv)]
        try:
            with open(path, "w") as f:
                f.write(" ".join(str(x) for x in newv))
        except OSError as e:
            print("sysctl %s: could not set (%s)" % (name, e))
            continue
        changed.append((name, " ".join(old)))
        print("sysctl %s: %s -> %s" % (name, " ".join(old), open(path).read().strip()))
    return changed


def restore_sysctls(changed):
    for name, old in reversed(changed):
        try:
            with open(sysctl_path(name), "w") as f:
                f.write(old)
            print("sysctl %s restored to %s" % (name, old))
        except OSError as e:
            print("sysctl %s: could not restore (%s)" % (name, e))


NOTRACK_RULES = [("PREROUTING", "-i"), ("OUTPUT", "-o")]


def notrack(add):
    """Loopback TCP past conntrack (iptables' raw table), as a host serving
    many long-lived connections is often set up: conntrack's per-packet
    lookup was 13-16 % of a ping's send here, and its table caps the
    connections (nf_conntrack_max). add=False removes the rules again."""
    ok = True
    for chain, flag in NOTRACK_RULES:
        argv = ["iptables", "-w", "5", "-t", "raw", "-A" if add else "-D", chain, flag, "lo",
                "-p", "tcp", "-m", "comment", "--comment", "fanout-bench-notrack", "-j", "NOTRACK"]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            ok = False
            print("iptables %s: %s" % (" ".join(argv[3:]), r.stderr.strip()), flush=True)
    if ok:
        print("conntrack %s for loopback TCP (raw table NOTRACK)" %
              ("off" if add else "back on"), flush=True)
    return ok


IN_NETNS_ENV = "FANOUT_BENCH_IN_NETNS"


def run_in_netns(args):
    """Runs this script again, with the same arguments, in a new network
    namespace whose TCP established-connections hash has --netns-ehash
    buckets (net.ipv4.tcp_child_ehash_entries, read when a namespace is
    created). The initial namespace's table is sized at boot from the RAM
    (262,144 buckets on this 24 GiB VM): 1,000,000 connections are 2,000,000
    loopback sockets, chains of ~8, and that lookup was 10 % of the whole
    box's CPU while holding them; a host meant for that many sets
    thash_entries= on its kernel command line instead. A new namespace has
    no netfilter rules, so conntrack does not see its traffic either (as
    --notrack). The global sysctls (--tune-sysctl) are raised here, where
    they can be written; everything else runs inside. Returns the exit
    status."""
    path = sysctl_path("net.ipv4.tcp_child_ehash_entries")
    if not os.path.exists(path):
        print("net.ipv4.tcp_child_ehash_entries not present (kernel before 6.1)", flush=True)
        return 2
    changed = tune_sysctls(args.conns) if args.tune_sysctl else []
    try:
        old = open(path).read().strip()
        with open(path, "w") as f:
            f.write(str(args.netns_ehash))
        changed.append(("net.ipv4.tcp_child_ehash_entries", old))
        argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                sys.executable, os.path.abspath(__file__)] + sys.argv[1:]
        print("running in a new network namespace, TCP hash of %d buckets" % args.netns_ehash,
              flush=True)
        return subprocess.run(argv, env=dict(os.environ, **{IN_NETNS_ENV: "1"})).returncode
    finally:
        restore_sysctls(changed)


# ---- processes ----

def stop_all(procs, timeout=30.0):
    """SIGTERM to every one (by PID) at once, then SIGKILL to what is left."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        try:
            if p.alive():
                os.kill(p.pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        p.stop(timeout=5)  # SIGKILL if still alive; reaps; joins the reader


def last_stats(cl):
    """The client's latest "stats ..." line as a dict (ints; levels a list)."""
    with cl.cond:
        for line in reversed(cl.lines):
            if line.startswith("stats "):
                out = {}
                for kv in line.split()[1:]:
                    k, _, v = kv.partition("=")
                    out[k] = [int(x) for x in v.split(",") if x] if k == "levels" else int(v)
                return out
    return None


def weighted_quantile(points, q):
    """points: [(value, weight)]; the value below which a share q of the
    weight lies."""
    points = sorted(points)
    total = sum(w for _, w in points)
    acc = 0.0
    for v, w in points:
        acc += w
        if acc >= q * total:
            return v
    return points[-1][0] if points else float("nan")


class Deadline(Exception):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=64000)
    ap.add_argument("--procs", type=int, default=4, help="fanout-delivery processes")
    ap.add_argument("--redis-nodes", type=int, default=2)
    ap.add_argument("--apache", action="store_true", help="the real Apache Kafka")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--no-room", action="store_true",
                    help="connections join no room (then no broadcast)")
    ap.add_argument("--heartbeat-cycles", type=float, default=2)
    ap.add_argument("--broadcasts", type=int, default=3)
    ap.add_argument("--baseline-seconds", type=float, default=10,
                    help="CPU of the delivery processes with no connections, before connecting")
    ap.add_argument("--connect-budget", type=float, default=1200,
                    help="seconds for connecting: client processes not done by then are "
                         "stopped and the run goes on with the connections made")
    ap.add_argument("--connect-parallel", type=int, default=2,
                    help="client processes connecting at the same time")
    ap.add_argument("--delivery-args", default="", help="more fanout-delivery flags")
    ap.add_argument("--tune-sysctl", action="store_true",
                    help="raise fs.file-max, somaxconn, tcp_mem, conntrack as needed (printed, "
                         "restored at the end)")
    ap.add_argument("--infra-nice", type=int, default=None,
                    help="run redis-server and the broker at this nice value (e.g. -10), "
                         "their threads and their autogroups: in production they have hosts of "
                         "their own, here they share two cores with every delivery and client "
                         "process")
    ap.add_argument("--notrack", action="store_true",
                    help="loopback TCP untracked by conntrack for the run (iptables raw table "
                         "NOTRACK; removed at the end)")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run")
    ap.add_argument("--perf-seconds", type=float, default=0,
                    help="perf record -g delivery process 0 and its client for this long during "
                         "the hold (tests/bench/scale/perf_split.py splits it)")
    ap.add_argument("--delivery-env", default="",
                    help="NAME=VALUE ... in the delivery processes' environment only "
                         "(malloc experiments: MALLOC_ARENA_MAX=2, say)")
    ap.add_argument("--mem-detail", action="store_true",
                    help="for delivery process 0 print where its memory is (smaps by kind) "
                         "and glibc's malloc_info per arena (through gdb: pauses it for a "
                         "moment) before connecting, after connect and after the hold")
    ap.add_argument("--netns-ehash", type=int, default=0,
                    help="run in a new network namespace with a TCP connection hash of this "
                         "many buckets (see run_in_netns; no conntrack there either)")
    ap.add_argument("--build", default=os.environ.get("FANOUT_BUILD_DIR"))
    args = ap.parse_args()
    if args.netns_ehash > 0 and not os.environ.get(IN_NETNS_ENV):
        sys.exit(run_in_netns(args))
    if os.environ.get(IN_NETNS_ENV):
        with open(sysctl_path("net.ipv4.tcp_ehash_entries")) as f:
            print("network namespace: TCP hash of %s buckets (negative: the initial "
                  "namespace's)" % f.read().strip(), flush=True)
    if args.build:
        os.environ["FANOUT_BUILD_DIR"] = os.path.abspath(args.build)
    import shlex
    import fanout_test as ft

    n, P = args.conns, args.procs
    per = [n // P + (1 if i < n % P else 0) for i in range(P)]
    if max(per) > MAX_PER_PROC:
        sys.exit("%d connections over %d processes is %d a process: more than %d" %
                 (n, P, max(per), MAX_PER_PROC))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(20000, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by every child
    print("ulimit -n %d (hard %s) for every process; %d connections over %d delivery processes "
          "(%s each), %d client processes, %d Redis nodes, broker %s; load average %s" %
          (want, hard, n, P, "-".join(sorted({str(x) for x in per})), P, args.redis_nodes,
           "apache-kafka" if args.apache else "fanout-kafka-dev", loadavg()), flush=True)

    def on_alarm(_s, _f):
        raise Deadline("time limit of %.0f s reached" % args.time_limit)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.time_limit))

    changed, redis, kafka, dels, clients = [], [], None, [], []
    notracked = False
    try:
        if args.tune_sysctl:
            changed = tune_sysctls(n)
        if args.notrack:
            notracked = True  # removed at the end even if only one rule went in
            notrack(True)
        t_run = time.time()
        redis = [ft.Redis() for _ in range(args.redis_nodes)]
        raddrs = ",".join(r.addr for r in redis)
        kafka = (ft.ApacheKafka(partitions=args.partitions) if args.apache
                 else ft.KafkaDev(partitions=args.partitions))
        if args.infra_nice is not None:
            infra = [r.proc.pid for r in redis] + tree_pids(kafka.proc.pid)
            for pid in infra:
                for tid in os.listdir("/proc/%d/task" % pid):
                    try:
                        os.setpriority(os.PRIO_PROCESS, int(tid), args.infra_nice)
                    except OSError:
                        pass
                # Every process here leads its own session, and with the
                # kernel's autogroups (sched_autogroup_enabled) each session
                # shares the CPU equally, whatever its threads' nice: at 1M
                # connections redis-server got 1/106 of it (4 % of a core,
                # 460 s of its first 490 s waiting to run), so its replies
                # missed delivery's 1 s command timeout. An autogroup has a
                # nice of its own.
                try:
                    with open("/proc/%d/autogroup" % pid, "w") as f:
                        f.write(str(args.infra_nice))
                except OSError:
                    pass
            print("redis-server and broker (%d processes) at nice %d" % (
                len(infra), args.infra_nice), flush=True)
        dbin = ft.find_binary("fanout-delivery")
        for i in range(P):
            dels.append(ft.Proc("scale-delivery-%d" % i, [
                dbin, "--listen", "127.0.0.1:0", "--redis", raddrs, "--kafka", kafka.bootstrap,
                "--server-id", "scale-%d" % i, "--jwt-secret", SECRET, "--log-level", "warn",
                "--max-connections", str(MAX_PER_PROC), *shlex.split(args.delivery_args)],
                env=dict(kv.split("=", 1) for kv in shlex.split(args.delivery_env))))
        for d in dels:
            d.addr = d.wait_line(r"^listening=(\S+)", timeout=60).group(1)

        def assigned(d):
            try:
                return ft.metrics(d.addr, timeout=20).get("fanout_delivery_assigned_partitions", 0)
            except OSError:
                return 0
        # Every process holds every rooms partition; the users partitions are shared.
        try:
            ft.eventually(lambda: all(assigned(d) >= args.partitions for d in dels), timeout=180,
                          interval=1, what="rooms partitions assigned everywhere")
            ft.eventually(lambda: sum(assigned(d) for d in dels) >= args.partitions * (P + 1),
                          timeout=120, interval=1, what="users partitions assigned")
        except TimeoutError as e:
            print("warning: %s" % e, flush=True)
        time.sleep(2)
        print("started %d delivery processes in %.0f s; load average %s" %
              (P, time.time() - t_run, loadavg()), flush=True)

        # ---- baseline: idle with no connections ----
        if args.baseline_seconds > 0:
            c0 = sum(cpu_s(d.pid) for d in dels)
            k0, t0 = tree_cpu_s(kafka.proc.pid), time.time()
            time.sleep(args.baseline_seconds)
            wall = time.time() - t0
            print("no connections, over %.0f s: all delivery processes %.2f %% of a core "
                  "(%.2f %% each), broker %.2f %%; load average %s" % (
                      wall, 100 * (sum(cpu_s(d.pid) for d in dels) - c0) / wall,
                      100 * (sum(cpu_s(d.pid) for d in dels) - c0) / wall / P,
                      100 * (tree_cpu_s(kafka.proc.pid) - k0) / wall, loadavg()), flush=True)

        # ---- connect ----
        rss0 = [rss_kb(d.pid) for d in dels]
        vm0 = sum(rss_kb(d.pid, "VmRSS") for d in dels)
        mi_path = os.path.join(ft.STATE_DIR, "scale-malloc-info.xml")
        m0 = print_mem_detail("before connect", dels[0].pid, None, mi_path) \
            if args.mem_detail else None
        rss0 = [rss_kb(d.pid) for d in dels]
        vm0 = sum(rss_kb(d.pid, "VmRSS") for d in dels)
        cbin = ft.find_binary("fanout-bench-wsclient")
        t_conn = time.time()
        offset = 0
        expect = 0 if args.no_room else args.broadcasts
        pending = []
        budget_end = t_conn + args.connect_budget
        cut = False
        for i, d in enumerate(dels):
            while len(pending) >= args.connect_parallel and not cut:
                try:
                    pending[0].wait_line(r"^connected=", timeout=max(1, budget_end - time.time()))
                    pending.pop(0)
                except TimeoutError:
                    cut = True
            if cut:
                break
            argv = [cbin, "--addr", d.addr, "--conns", str(per[i]), "--secret", SECRET,
                    "--user-offset", str(offset), "--stats-ms", "5000", "--expect", str(expect)]
            if not args.no_room:
                argv += ["--room", "bench"]
            offset += per[i]
            cl = ft.Proc("scale-client-%d" % i, argv)
            clients.append(cl)
            pending.append(cl)
        got = [0] * P  # connections of client i (to delivery i)
        for i, cl in enumerate(clients):
            try:
                got[i] = int(cl.wait_line(r"^connected=(\d+)",
                                          timeout=max(1, budget_end - time.time())).group(1))
            except TimeoutError:
                cut = True
        if cut:
            # What did not finish within --connect-budget is stopped: the run
            # goes on with the clients that did.
            late = [cl for i, cl in enumerate(clients) if got[i] == 0]
            stop_all(late, timeout=10)
            clients = [cl for i, cl in enumerate(clients) if got[i] > 0]
            print("connect budget of %.0f s reached: %d client processes of %d finished, the "
                  "%d still connecting were stopped; load average %s" % (
                      args.connect_budget, len(clients), P, len(late), loadavg()), flush=True)
            time.sleep(5)  # their connections close at the servers
        connected = sum(got)
        per = got
        connect_s = time.time() - t_conn
        if not args.no_room:
            for cl in clients:
                cl.wait_line(r"^joined=", timeout=300)
        joined_s = time.time() - t_conn

        def dbsize_of(r):
            # A starved redis-server can take more than redis-cli's 10 s at
            # 1,000,000 connections: unknown, not the end of the run.
            try:
                return int(r.cli("DBSIZE") or 0)
            except subprocess.TimeoutExpired:
                return -1

        def dbsize():
            return sum(max(0, dbsize_of(r)) for r in redis)
        # Connections the servers closed meanwhile (late pongs under load)
        # are unregistered again, so this may never be reached: a warning.
        try:
            ft.eventually(lambda: dbsize() >= connected, timeout=300, interval=1,
                          what="every user registered in Redis")
        except (AssertionError, TimeoutError) as e:
            print("warning: %s (%d keys)" % (e, dbsize()), flush=True)
        time.sleep(3)
        sizes = [dbsize_of(r) for r in redis]  # one DBSIZE per node for the line below
        rss1 = [rss_kb(d.pid) for d in dels]
        vm1 = sum(rss_kb(d.pid, "VmRSS") for d in dels)
        if args.mem_detail:
            print_mem_detail("after connect", dels[0].pid, m0, mi_path)
        grow1 = sum(rss1) - sum(rss0)
        print("connected %d of %d in %.1f s (joined the room by %.1f s); Redis keys %d "
              "(%s); delivery RssAnon %.1f MB -> %.1f MB: %.0f bytes per connection right after "
              "connect (per process %d-%d B; VmRSS with the shared libraries' pages %.1f MB -> "
              "%.1f MB); MemAvailable %d MB; load average %s" % (
                  connected, n, connect_s, joined_s, sum(max(0, x) for x in sizes),
                  "+".join(str(x) for x in sizes), sum(rss0) / 1024.0,
                  sum(rss1) / 1024.0, grow1 * 1024.0 / max(1, connected),
                  min((b - a) * 1024 // c for a, b, c in zip(rss0, rss1, per) if c > 0),
                  max((b - a) * 1024 // c for a, b, c in zip(rss0, rss1, per) if c > 0),
                  vm0 / 1024.0, vm1 / 1024.0, mem_available_mb(), loadavg()), flush=True)

        # ---- hold for the heartbeats ----
        hold = args.heartbeat_cycles * PING_MS / 1000.0 + PONG_MS / 1000.0 + 2
        c0 = sum(cpu_s(d.pid) for d in dels)
        k0 = tree_cpu_s(kafka.proc.pid)
        r0 = sum(cpu_s(r.proc.pid) for r in redis)
        l0 = sum(cpu_s(c.pid) for c in clients)
        t0 = time.time()
        perf = None
        if args.perf_seconds > 0:
            perf_out = os.path.join(ft.STATE_DIR, "scale-perf.data")
            # Delivery process 0 and its load client: on loopback each one's
            # send runs the other's receive path (perf_split.py tells them apart).
            perf = ft.Proc("scale-perf", ["perf", "record", "-g", "-F", "999", "-o", perf_out,
                                          "-p", "%d,%d" % (dels[0].pid, clients[0].pid), "--",
                                          "sleep", str(args.perf_seconds)])
        print("holding %.0f s (%.1f ping intervals of %d ms, pong timeout %d ms)" %
              (hold, args.heartbeat_cycles, PING_MS, PONG_MS), flush=True)
        time.sleep(hold)
        wall = time.time() - t0
        dcpu = sum(cpu_s(d.pid) for d in dels) - c0
        kcpu = tree_cpu_s(kafka.proc.pid) - k0
        rcpu = sum(cpu_s(r.proc.pid) for r in redis) - r0
        lcpu = sum(cpu_s(c.pid) for c in clients) - l0
        if perf is not None:
            perf.wait_exit(60)
            print("perf data of delivery process 0 (pid %d) and its client (pid %d), %.0f s at "
                  "999 Hz: %s" % (dels[0].pid, clients[0].pid, args.perf_seconds, perf_out))
        rss2 = [rss_kb(d.pid) for d in dels]
        if args.mem_detail:
            print_mem_detail("after the hold", dels[0].pid, m0, mi_path)
        ms = [ft.metrics(d.addr, timeout=30) for d in dels]
        open_srv = sum(m.get("fanout_delivery_connections", 0) for m in ms)
        ping_to = sum(m.get("fanout_delivery_ping_timeouts_total", 0) for m in ms)
        time.sleep(5.5)  # a fresh stats line from every client
        st = [last_stats(c) or {} for c in clients]
        closed_cl = sum(s.get("closed", 0) for s in st)
        failed_cl = sum(s.get("failed", 0) for s in st)
        print("after %.1f heartbeat cycles (%.0f s): delivery RssAnon %.1f MB: %.0f bytes per "
              "connection (per process %d-%d B); open at the servers %d; closed by the "
              "servers: %d for a missing pong (metrics), %d seen by the clients (%d failed "
              "to connect); pings %d, pongs sent %d; MemAvailable %d MB" % (
                  args.heartbeat_cycles, wall, sum(rss2) / 1024.0,
                  (sum(rss2) - sum(rss0)) * 1024.0 / max(1, connected),
                  min((b - a) * 1024 // c for a, b, c in zip(rss0, rss2, per) if c > 0),
                  max((b - a) * 1024 // c for a, b, c in zip(rss0, rss2, per) if c > 0),
                  open_srv, ping_to, closed_cl, failed_cl,
                  sum(s.get("pings", 0) for s in st), sum(s.get("pongs", 0) for s in st),
                  mem_available_mb()), flush=True)
        print("CPU over the hold (%.0f s, connections idle but for the heartbeats): all %d "
              "delivery processes %.2f %% of a core (%.2f %% each), broker %.2f %%, Redis "
              "%.2f %%, clients %.2f %%; load average %s" % (
                  wall, P, 100 * dcpu / wall, 100 * dcpu / wall / P, 100 * kcpu / wall,
                  100 * rcpu / wall, 100 * lcpu / wall, loadavg()), flush=True)

        # ---- broadcasts ----
        produce = ft.find_binary("fanout-test-produce")
        for b in range(1, expect + 1):
            st = [last_stats(c) or {} for c in clients]
            want_n = sum(s.get("open", 0) for s in st)
            payload = ('{"b":%d,"p":"%s"}' % (b, "x" * 48)).encode()
            line = "fanout.rooms broadcast bench application/json %s\n" % payload.hex()
            c0 = sum(cpu_s(d.pid) for d in dels)
            t_start = time.time_ns()
            subprocess.run([produce, kafka.bootstrap], input=line, text=True, check=True,
                           capture_output=True, timeout=60)
            points, delivered, last, timed_out = [], 0, 0, 0
            for cl in clients:
                try:
                    m = cl.wait_line(r"^lat=%d n=(\d+) q=(\S+)" % b, timeout=120)
                except (TimeoutError, RuntimeError):
                    timed_out += 1
                    s = last_stats(cl) or {}
                    lv = s.get("levels", [])
                    delivered += lv[b - 1] if len(lv) >= b else 0
                    continue
                k = int(m.group(1))
                qs = [int(x) for x in m.group(2).split(",")]
                delivered += k
                last = max(last, qs[-1])
                points += [((v - t_start) / 1e6, k / len(qs)) for v in qs]
            dcpu = sum(cpu_s(d.pid) for d in dels) - c0
            span = (last - t_start) / 1e9 if last else float("nan")
            print("broadcast %d: delivered %d of %d open (lost %d%s); producer start -> last "
                  "arrival %.3f s: %.0f frames/s; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms; "
                  "delivery CPU %.2f s (%.2f us a frame); load average %s" % (
                      b, delivered, want_n, want_n - delivered,
                      ", %d clients timed out" % timed_out if timed_out else "", span,
                      delivered / span if span == span and span > 0 else float("nan"),
                      weighted_quantile(points, 0.5), weighted_quantile(points, 0.99),
                      max(p[0] for p in points) if points else float("nan"), dcpu,
                      dcpu * 1e6 / max(1, delivered), loadavg()), flush=True)
            # Connections that close while a broadcast saturates the box:
            # say whether the servers closed them for a late pong (after the
            # last broadcast the clients have exited: no open count then).
            try:
                ms = [ft.metrics(d.addr, timeout=30) for d in dels]
                ping_now = sum(m.get("fanout_delivery_ping_timeouts_total", 0) for m in ms)
                print("  after broadcast %d: closed by the servers for a missing pong since "
                      "the hold: %d%s" % (
                          b, ping_now - ping_to,
                          "; open at the servers %d" % sum(
                              m.get("fanout_delivery_connections", 0) for m in ms)
                          if b < expect else ""), flush=True)
            except OSError as e:
                print("  after broadcast %d: metrics unreadable (%s)" % (b, e), flush=True)
            time.sleep(1)
        print("total run %.0f s" % (time.time() - t_run), flush=True)
    except Deadline as e:
        print("stopped: %s" % e, flush=True)
    finally:
        signal.alarm(0)
        t = time.time()
        stop_all(clients, timeout=10)
        stop_all(dels, timeout=30)
        stop_all([kafka.proc] if kafka else [], timeout=30)
        if kafka is not None and getattr(kafka.proc, "group", False):
            ft._killpg(kafka.proc.pid)  # the JVM, by the script's process group id
        stop_all([r.proc for r in redis], timeout=10)
        print("stopped every process in %.0f s" % (time.time() - t), flush=True)
        restore_sysctls(changed)
        if notracked:
            notrack(False)


if __name__ == "__main__":
    main()

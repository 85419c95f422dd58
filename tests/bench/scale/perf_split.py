#!/usr/bin/python3
"""Splits a `perf record -g` profile of fanout-delivery (and its load client)
into where the CPU of holding idle connections goes (prints figures; not a
test). See README.md here ("Holding: where a ping/pong's CPU goes").

Every sample of the given threads is put in one class by its call chain:
  user               our code and the libraries (top frame in user space)
  rx-softirq(SYSCALL) the network receive path (net_rx_action, process_backlog,
                     ip_rcv, tcp_v4_rcv) run inside SYSCALL: on loopback a
                     sender's send()/write() runs the *receiving* socket's TCP
                     path in its own context (softirq on local_bh_enable)
  sys:SYSCALL        the rest of that system call (our own kernel work)
  timer-softirq      TCP timers (delayed ACK, RTO) that ran in our context
  other              page faults, scheduler, interrupts
With --per-ping R S (R pings a second, S seconds recorded, the -F rate given
by --hz) it prints microseconds per ping of each class as well.

usage: perf script -i perf.data -F comm,pid,tid,time,ip,sym > perf.txt
       perf_split.py perf.txt PID[,PID...] [--per-ping RATE SECONDS] [--hz 999]
"""

import argparse
import collections

RX = ("net_rx_action", "process_backlog", "__netif_receive_skb", "ip_rcv", "tcp_v4_rcv")


def samples(path):
    head, stack = None, []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if head:
                    yield head, stack
                head, stack = None, []
            elif line[0] not in " \t":
                head, stack = line, []
            else:
                parts = line.split(None, 1)
                stack.append((parts[0], parts[1] if len(parts) > 1 else "?"))
    if head:
        yield head, stack


def syscall_of(syms):
    """The function do_syscall_64 called (ksys_write, __x64_sys_sendto, ...), shortened."""
    if "do_syscall_64" not in syms:
        return None
    i = syms.index("do_syscall_64")
    name = syms[i - 1] if i > 0 else "do_syscall_64"
    for p in ("__x64_sys_", "ksys_", "__do_sys_", "__se_sys_"):
        name = name.replace(p, "")
    return {"do_syscall_64": "entry/exit", "exit_to_user_mode_loop": "entry/exit",
            "x64_sys_call": "entry/exit"}.get(name, name)


def classify(stack):
    if not stack or not stack[0][0].startswith("ffffffff"):
        return "user"
    syms = [s for _, s in stack]
    sc = syscall_of(syms)
    if any(x in syms for x in RX):
        return "rx-softirq(%s)" % (sc or "irq")
    if "run_timer_softirq" in syms or "tcp_delack_timer" in syms:
        return "timer-softirq"
    if sc:
        return "sys:" + sc
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("pids", help="comma-separated process ids")
    ap.add_argument("--per-ping", nargs=2, type=float, metavar=("RATE", "SECONDS"))
    ap.add_argument("--hz", type=float, default=999)
    ap.add_argument("--top", type=int, default=10, help="user-space symbols shown")
    a = ap.parse_args()
    pids = set(a.pids.split(","))
    total = collections.Counter()
    by = collections.defaultdict(collections.Counter)
    user = collections.defaultdict(collections.Counter)
    comm = {}
    for head, stack in samples(a.file):
        f = head.split()
        for i, t in enumerate(f):
            if "/" in t and t.split("/")[0].isdigit():
                pid, tid = t.split("/")
                name = " ".join(f[:i])
                break
        else:
            continue
        if pid not in pids:
            continue
        k = classify(stack)
        comm[tid] = name
        by[tid][k] += 1
        total[tid] += 1
        if k == "user":
            user[tid][stack[0][1]] += 1
    for tid in sorted(total, key=lambda t: -total[t]):
        n = total[tid]
        per = ""
        if a.per_ping:
            rate, secs = a.per_ping
            per = ": %.2f us a ping" % (n / a.hz / secs / rate * 1e6)
        print("thread %s (%s): %d samples%s" % (tid, comm[tid], n, per))
        for k, v in by[tid].most_common():
            extra = ""
            if a.per_ping:
                extra = "  %6.2f us" % (v / a.hz / a.per_ping[1] / a.per_ping[0] * 1e6)
            print("  %6d %5.1f %%%s  %s" % (v, 100.0 * v / n, extra, k))
        if user[tid]:
            print("  user space, top: " +
                  ", ".join("%s %d" % kv for kv in user[tid].most_common(a.top)))


if __name__ == "__main__":
    main()

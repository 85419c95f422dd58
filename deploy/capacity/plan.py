#!/usr/bin/python3
"""Recomputes the capacity plan (deploy/CAPACITY.md) from deploy/capacity/inputs.json.

usage: plan.py [--inputs FILE]            print the tables (Markdown)
       plan.py --write deploy/CAPACITY.md  replace the text between the markers
       plan.py --check deploy/CAPACITY.md  exit 1 if that text is not what this prints

Standard library only. Every figure comes from inputs.json: 'measured' (with the
benchmark that produced it), 'policy' (headroom), 'format' (wire sizes) and
'profiles' (the message rates planned for). One delivery process = one pod =
one core (deploy/k8s/delivery.yaml requests 1 CPU).
"""

import argparse
import difflib
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN = "<!-- plan.py: begin (generated from deploy/capacity/inputs.json; do not edit) -->"
END = "<!-- plan.py: end -->"


def num(x, digits=0):
    """1234567 -> '1,234,567'; digits after the point when asked."""
    if digits:
        return "{:,.{}f}".format(x, digits)
    return "{:,}".format(int(round(x)))


def sig(x):
    """Two or three significant figures, for derived quantities."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return num(x)
    if abs(x) >= 10:
        return num(x, 1)
    if abs(x) >= 1:
        return num(x, 2)
    return "{:.2g}".format(x)


def bytes_s(b):
    """bytes/s -> 'N MB/s (M Gbit/s)'."""
    if b >= 1e9:
        return "%s GB/s (%s Gbit/s)" % (sig(b / 1e9), sig(b * 8 / 1e9))
    if b >= 1e6:
        return "%s MB/s (%s Gbit/s)" % (sig(b / 1e6), sig(b * 8 / 1e9))
    return "%s kB/s" % sig(b / 1e3)


def size(b):
    if b >= 1e9:
        return "%s GB" % sig(b / 1e9)
    if b >= 1e6:
        return "%s MB" % sig(b / 1e6)
    return "%s kB" % sig(b / 1e3)


def ceil_choice(x, choices):
    for c in choices:
        if c >= x:
            return c
    return int(math.ceil(x))


def frame_bytes(fmt, prof):
    json_len = len(fmt["frame_template"]["value"].replace("USER", "u" * prof["name_bytes"])
                   .replace("DATA", "d" * prof["data_bytes"]))
    return json_len + (2 if json_len < 126 else 4), json_len


def compute(inp, prof, conns):
    """One scenario: returns (rows, notes) where rows are (section, line, value)."""
    m = {k: v["value"] for k, v in inp["measured"].items()}
    p = {k: v["value"] for k, v in inp["policy"].items()}
    f = {k: v["value"] for k, v in inp["format"].items()}
    out = {}

    # ---- load ----
    user_msgs = conns * prof["user_msgs_per_conn_min"] / 60.0
    rooms = conns * prof["rooms_per_conn"] / prof["room_size"]
    room_msgs = rooms * prof["room_msgs_per_room_min"] / 60.0
    room_frames = conns * prof["rooms_per_conn"] * prof["room_msgs_per_room_min"] / 60.0
    frames = user_msgs + room_frames
    fbytes, fjson = frame_bytes(inp["format"], prof)
    connects = conns / (prof["session_min"] * 60.0)
    out.update(user_msgs=user_msgs, rooms=rooms, room_msgs=room_msgs, frames=frames,
               fbytes=fbytes, connects=connects)

    # ---- delivery CPU (cores), depends on the process count through the
    # room intake (every process reads all of fanout.rooms) ----
    def cpu(procs):
        parts = {
            "frames": frames * m["cpu_us_per_frame_paced"] * 1e-6,
            "cross": user_msgs / m["cross_server_msgs_per_core"],
            "idle_conns": conns * m["delivery_idle_cpu_us_per_conn_s"] * 1e-6,
            "rooms_intake": room_msgs * procs * m["window_add_us"] * 1e-6,
            "handshakes": connects * m["handshake_cpu_us"] * 1e-6,
            "idle_procs": procs * m["delivery_idle_cpu_per_process"],
        }
        return sum(parts.values()), parts

    by_conns = int(math.ceil(conns / p["max_conns_per_process"]))
    procs = by_conns
    for _ in range(100):
        total, parts = cpu(procs)
        want = max(by_conns, int(math.ceil(total / p["cpu_target"])))
        if want == procs:
            break
        procs = want
    # a process spends on each room record regardless of its members: past
    # cpu_target per process, more processes cannot help
    per_proc_rooms = room_msgs * m["window_add_us"] * 1e-6
    if per_proc_rooms >= p["cpu_target"]:
        raise SystemExit("room intake alone (%.2f core per process) exceeds cpu_target" %
                         per_proc_rooms)
    total, parts = cpu(procs)
    bound = "CPU" if procs > by_conns else "connections per process"
    procs_all = procs + p["spare_processes"]
    total, parts = cpu(procs_all)
    cpp = conns / procs_all
    util = total / procs_all
    out.update(procs=procs_all, bound=bound, cpu_total=total, cpu_parts=parts, cpp=cpp,
               util=util, cpp_after_loss=conns / (procs_all - 1),
               util_after_loss=cpu(procs_all - 1)[0] / (procs_all - 1))

    # ---- memory per process ----
    out_b_proc = (frames * (fbytes + f["tcp_packet_overhead"]) +
                  conns * f["ping_frame_out"] / f["ping_interval_s"]) / procs_all
    in_b_proc = conns * f["pong_frame_in"] / f["ping_interval_s"] / procs_all
    user_mem = (m["delivery_base_rss_mb"] * 1e6 + f["window_budget_mb"] * 1e6 +
                cpp * m["user_bytes_per_conn"])
    kern_mem = cpp * m["kernel_bytes_per_socket"] + out_b_proc * p["rtt_ms"] / 1000.0
    out.update(user_mem=user_mem, kern_mem=kern_mem, out_b_proc=out_b_proc, in_b_proc=in_b_proc)

    # ---- Kafka ----
    env = f["envelope_fixed"] + prof["name_bytes"] + prof["data_bytes"]
    rec_user = f["kafka_record_overhead"] + prof["name_bytes"] + env
    rec_room = rec_user + 5  # "broadcast" instead of "send"
    users_in = user_msgs * rec_user
    rooms_in = room_msgs * rec_room
    kin = users_in + rooms_in
    part_users = ceil_choice(max(procs_all, users_in / (p["kafka_partition_mb_s"] * 1e6)),
                             p["partition_choices"])
    part_rooms = ceil_choice(max(12, rooms_in / (p["kafka_partition_mb_s"] * 1e6)),
                             p["partition_choices"])
    kout = users_in + rooms_in * procs_all
    out.update(rec_user=rec_user, kin=kin, users_in=users_in, rooms_in=rooms_in,
               part_users=part_users, part_rooms=part_rooms, kout=kout,
               krepl=kin * (p["kafka_replication"] - 1), kdisk=kin * p["kafka_replication"])

    # ---- Redis ----
    refresh_cmds = conns * m["redis_refresh_cmds_per_conn_pass"] / f["refresh_interval_s"]
    churn_cmds = connects * (m["redis_refresh_cmds_per_conn_pass"] + 1)  # + HDEL on close
    alive_cmds = procs_all / f["alive_refresh_s"]
    mem = conns * m["redis_registry_bytes_per_conn"]

    def redis_cpu(sharded):
        route = m["redis_route_cpu_us_sharded"] if sharded else m["redis_route_cpu_us_one_node"]
        return (conns / f["refresh_interval_s"] * m["redis_refresh_cpu_us_per_conn_pass"] +
                connects * m["redis_refresh_cpu_us_per_conn_pass"] * 1.5 +
                user_msgs * route) * 1e-6

    rcpu = redis_cpu(False)
    nodes = max(1, int(math.ceil(rcpu / p["redis_cpu_target"])),
                int(math.ceil(mem / (p["redis_mem_per_node_gib"] * 2**30))))
    if nodes > 1:
        rcpu = redis_cpu(True)
        nodes = max(1, int(math.ceil(rcpu / p["redis_cpu_target"])),
                    int(math.ceil(mem / (p["redis_mem_per_node_gib"] * 2**30))))
    route_cmds = user_msgs * (2 if nodes > 1 else 1)
    out.update(redis_cmds=refresh_cmds + churn_cmds + alive_cmds + route_cmds,
               refresh_cmds=refresh_cmds, route_cmds=route_cmds, churn_cmds=churn_cmds,
               redis_mem=mem, redis_cpu=rcpu, redis_nodes=nodes)
    pub = fjson + prof["name_bytes"] + 4
    out["redis_net"] = user_msgs * pub * 2  # into Redis (the script's argument), out to subscriber

    # ---- ingest ----
    ingest_cores = (user_msgs + room_msgs) / m["ingest_req_per_core"]
    out.update(ingest_cores=ingest_cores,
               ingest_pods=int(math.ceil(ingest_cores / p["cpu_target"])) + 1)

    # ---- network, whole fleet ----
    out.update(net_out=out_b_proc * procs_all, net_in=in_b_proc * procs_all)

    # ---- losing one delivery process ----
    spare = (procs_all - 1) * (1 - out["util_after_loss"])
    # the others resume them as fast as their spare CPU allows, but no faster
    # than the clients come back (the first retry's random spread)
    storm_s = max(f["reconnect_spread_s"],
                  cpp / (m["resumes_per_cpu_s"] * spare) if spare > 0 else float("inf"))
    out.update(storm_conns=cpp, storm_s=storm_s,
               storm_redis_cpu=cpp * m["redis_refresh_cpu_us_per_conn_pass"] * 1e-6 /
               max(storm_s, 1e-9) / nodes)
    return out


def render(inp):
    profs = inp["profiles"]
    scen = [(s, name) for s in inp["scales"] for name in profs]
    res = {(s, name): compute(inp, profs[name], s) for s, name in scen}
    head = ["%s conns, %s" % (num(s), name) for s, name in scen]
    lines = []

    def table(title, rows):
        lines.append("#### " + title)
        lines.append("")
        lines.append("| line | how | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---|" * len(head))
        for label, how, fn in rows:
            lines.append("| %s | %s | %s |" % (label, how, " | ".join(fn(res[k], inp["profiles"][
                k[1]]) for k in scen)))
        lines.append("")

    lines.append("#### Profiles (stated, not measured)")
    lines.append("")
    lines.append("| profile | what | user msgs/conn/min | rooms/conn | room size | msgs/room/min "
                 "| data bytes | user/room name bytes | mean session |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, pr in profs.items():
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s min |" % (
            name, pr["about"], sig(pr["user_msgs_per_conn_min"]), pr["rooms_per_conn"],
            num(pr["room_size"]), sig(pr["room_msgs_per_room_min"]), pr["data_bytes"],
            pr["name_bytes"], pr["session_min"]))
    lines.append("")
    lines.append("One connection per user (a user's messages go to each of its connections: "
                 "multiply frames, not Kafka records). Every delivery process is one pod with "
                 "one core.")
    lines.append("")

    table("Summary", [
        ("delivery processes (pods of 1 core)", "see Delivery", lambda r, p: "**%s**" % num(
            r["procs"])),
        ("delivery memory, whole fleet", "see Memory", lambda r, p: size(
            (r["user_mem"] + r["kern_mem"]) * r["procs"])),
        ("Redis nodes", "see Redis", lambda r, p: "**%s**" % num(r["redis_nodes"])),
        ("Kafka partitions (users / rooms)", "see Kafka", lambda r, p: "%s / %s" % (
            num(r["part_users"]), num(r["part_rooms"]))),
        ("Kafka in / out", "see Kafka", lambda r, p: "%s / %s" % (bytes_s(r["kin"]),
                                                                   bytes_s(r["kout"]))),
        ("ingest pods (1 core)", "see Ingest", lambda r, p: num(r["ingest_pods"])),
        ("network out to clients", "see Network", lambda r, p: bytes_s(r["net_out"])),
    ])
    table("Load", [
        ("user messages/s", "conns x user msgs/min / 60", lambda r, p: num(r["user_msgs"])),
        ("rooms", "conns x rooms/conn / room size", lambda r, p: num(r["rooms"])),
        ("room messages/s (Kafka records)", "rooms x msgs/room/min / 60",
         lambda r, p: num(r["room_msgs"])),
        ("frames/s to clients", "user msgs + conns x rooms/conn x msgs/room/s",
         lambda r, p: num(r["frames"])),
        ("bytes per frame", "frame_template with the data, + WebSocket header",
         lambda r, p: num(r["fbytes"])),
        ("(re)connects/s", "conns / mean session", lambda r, p: num(r["connects"])),
    ])
    table("Delivery processes (one core each)", [
        ("processes", "max(CPU / cpu_target, conns / max_conns_per_process) + spare",
         lambda r, p: "**%s** (%s-bound)" % (num(r["procs"]), r["bound"])),
        ("CPU, cores", "sum of the next rows", lambda r, p: sig(r["cpu_total"])),
        ("… frames", "frames/s x cpu_us_per_frame_paced", lambda r, p: sig(r["cpu_parts"]["frames"])),
        ("… routing user messages", "user msgs/s / cross_server_msgs_per_core",
         lambda r, p: sig(r["cpu_parts"]["cross"])),
        ("… idle connections (pings, refresh)", "conns x delivery_idle_cpu_us_per_conn_s",
         lambda r, p: sig(r["cpu_parts"]["idle_conns"])),
        ("… room records, read by every process", "room msgs/s x processes x window_add_us",
         lambda r, p: sig(r["cpu_parts"]["rooms_intake"])),
        ("… handshakes", "(re)connects/s x handshake_cpu_us",
         lambda r, p: sig(r["cpu_parts"]["handshakes"])),
        ("… idle processes", "processes x delivery_idle_cpu_per_process",
         lambda r, p: sig(r["cpu_parts"]["idle_procs"])),
        ("CPU per process", "CPU / processes (target <= cpu_target)",
         lambda r, p: "%d %%" % round(r["util"] * 100)),
        ("connections per process", "conns / processes", lambda r, p: num(r["cpp"])),
    ])
    table("Memory", [
        ("user space per process", "base RSS + window budget + conns/process x user_bytes_per_conn",
         lambda r, p: size(r["user_mem"])),
        ("kernel per process", "conns/process x kernel_bytes_per_socket + bytes in flight "
         "(out bytes/s x rtt)", lambda r, p: size(r["kern_mem"])),
        ("per process, total", "", lambda r, p: size(r["user_mem"] + r["kern_mem"])),
        ("whole fleet", "x processes", lambda r, p: size((r["user_mem"] + r["kern_mem"]) *
                                                          r["procs"])),
    ])
    table("Redis", [
        ("nodes (shards)", "max(CPU / redis_cpu_target, registry / redis_mem_per_node)",
         lambda r, p: "**%s**" % num(r["redis_nodes"])),
        ("registry memory", "conns x redis_registry_bytes_per_conn", lambda r, p: size(r["redis_mem"])),
        ("commands/s", "refresh + routing + (re)connects + liveness",
         lambda r, p: num(r["redis_cmds"])),
        ("… refresh", "conns x redis_refresh_cmds_per_conn_pass / 60 s",
         lambda r, p: num(r["refresh_cmds"])),
        ("… routing", "user msgs/s x (<= 1 script call, or HGETALL + PUBLISH when sharded)",
         lambda r, p: num(r["route_cmds"])),
        ("… (re)connects", "(re)connects/s x (HSET + EXPIRE + HDEL)", lambda r, p: num(r["churn_cmds"])),
        ("CPU, cores (all nodes)", "refresh + (re)connects at redis_refresh_cpu_us, routing at "
         "redis_route_cpu_us_*", lambda r, p: sig(r["redis_cpu"])),
        ("Pub/Sub bytes/s", "user msgs/s x (frame + user) x 2 (in, out)",
         lambda r, p: bytes_s(r["redis_net"])),
    ])
    table("Kafka", [
        ("fanout.users partitions", "smallest of partition_choices >= processes and >= in / "
         "kafka_partition_mb_s", lambda r, p: num(r["part_users"])),
        ("fanout.rooms partitions", "same, at least 12", lambda r, p: num(r["part_rooms"])),
        ("record bytes (user)", "kafka_record_overhead + key + envelope", lambda r, p: num(r["rec_user"])),
        ("produced (in)", "user msgs x record + room msgs x record", lambda r, p: bytes_s(r["kin"])),
        ("replication", "in x (kafka_replication - 1)", lambda r, p: bytes_s(r["krepl"])),
        ("written to disk, all brokers", "in x kafka_replication", lambda r, p: bytes_s(r["kdisk"])),
        ("consumed (out)", "users once + rooms x processes", lambda r, p: bytes_s(r["kout"])),
    ])
    table("Ingest (HTTP API)", [
        ("cores", "(user + room msgs/s) / ingest_req_per_core: one POST /v1/send each (a "
         "backend that batches, or produces to Kafka itself, needs fewer)",
         lambda r, p: sig(r["ingest_cores"])),
        ("pods", "cores / cpu_target + 1", lambda r, p: num(r["ingest_pods"])),
    ])
    table("Network (delivery <-> clients)", [
        ("out, all processes", "frames/s x (frame + tcp_packet_overhead) + pings",
         lambda r, p: bytes_s(r["net_out"])),
        ("out, per process", "", lambda r, p: bytes_s(r["out_b_proc"])),
        ("in (pongs)", "conns x pong_frame_in / ping interval", lambda r, p: bytes_s(r["net_in"])),
    ])
    table("Losing one delivery process", [
        ("connections to move", "conns / processes", lambda r, p: num(r["storm_conns"])),
        ("CPU per process after", "target <= cpu_target", lambda r, p: "%d %%" % round(
            r["util_after_loss"] * 100)),
        ("connections per process after", "", lambda r, p: num(r["cpp_after_loss"])),
        ("time to resume them all", "max(reconnect_spread_s, moved / (resumes_per_cpu_s x "
         "spare cores of the others))",
         lambda r, p: "%s s" % sig(r["storm_s"])),
        ("extra Redis CPU per node meanwhile", "moved x redis_refresh_cpu_us / time / nodes",
         lambda r, p: "%d %%" % round(r["storm_redis_cpu"] * 100)),
    ])

    lines.append("#### Inputs")
    lines.append("")
    lines.append("| input | value | unit | source | command |")
    lines.append("|---|---|---|---|---|")
    for k, v in inp["measured"].items():
        flag = "" if v.get("measured", True) else " **(placeholder, not measured)**"
        lines.append("| `%s` | %s%s | %s | %s | `%s` |" % (k, sig(v["value"]), flag, v["unit"],
                                                        v["source"], v["command"]))
    for k, v in inp["policy"].items():
        val = v["value"]
        val = ", ".join(str(x) for x in val) if isinstance(val, list) else sig(val)
        lines.append("| `%s` (policy) | %s | %s | %s | |" % (k, val, v["unit"], v["why"]))
    for k, v in inp["format"].items():
        val = v["value"]
        val = "`%s`" % val if isinstance(val, str) else sig(val)
        lines.append("| `%s` (format) | %s | %s | %s | |" % (k, val, v.get("unit", ""),
                                                           v["source"]))
    return "\n".join(lines) + "\n"


PROFILE_KEYS = ("about", "user_msgs_per_conn_min", "rooms_per_conn", "room_size",
                "room_msgs_per_room_min", "data_bytes", "name_bytes", "session_min")


def validate(inp):
    """Every input says what it is and where it came from; a clear error otherwise."""
    need = {"measured": ("value", "unit", "source", "command"), "policy": ("value", "unit", "why"),
            "format": ("value", "source")}
    errs = []
    for sect, keys in need.items():
        for name, v in inp.get(sect, {}).items():
            errs += ["%s.%s: no '%s'" % (sect, name, k) for k in keys if k not in v]
            if sect == "measured" and not isinstance(v.get("value"), (int, float)):
                errs.append("measured.%s: value must be a number" % name)
    for name, pr in inp.get("profiles", {}).items():
        errs += ["profiles.%s: no '%s'" % (name, k) for k in PROFILE_KEYS if k not in pr]
    if not inp.get("profiles") or not inp.get("scales"):
        errs.append("no profiles or no scales")
    if errs:
        raise SystemExit("inputs: " + "; ".join(errs))


def splice(text, tables):
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 or b < a:
        raise SystemExit("markers not found: %s ... %s" % (BEGIN, END))
    return text[:a + len(BEGIN)] + "\n\n" + tables + "\n" + text[b:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", default=os.path.join(HERE, "inputs.json"))
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="FILE", help="replace the tables between the markers")
    g.add_argument("--check", metavar="FILE", help="exit 1 if FILE's tables differ")
    args = ap.parse_args()
    with open(args.inputs) as fh:
        inp = json.load(fh)
    validate(inp)
    tables = render(inp)
    if args.write or args.check:
        path = args.write or args.check
        with open(path) as fh:
            text = fh.read()
        new = splice(text, tables)
        if args.check:
            if new != text:
                sys.stdout.writelines(difflib.unified_diff(
                    text.splitlines(True), new.splitlines(True), path, "plan.py output"))
                print("%s differs from plan.py's output: run plan.py --write %s" % (path, path))
                return 1
            print("%s: tables match plan.py's output" % path)
            return 0
        with open(path, "w") as fh:
            fh.write(new)
        return 0
    sys.stdout.write(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Group members and producers for the Kafka integration tests: each one a
separate fanout-kafka-testclient process (plain librdkafka), read through its
stdout lines (see kafka_testclient.c)."""

import json
import re
import subprocess

import fanout_test as ft

_MSG = re.compile(r"^msg p=(\d+) o=(\d+) k=(\S*) v=(\S*)$")


def client_binary():
    return ft.find_binary("fanout-kafka-testclient")


def produce(bootstrap, topic, count, prefix, extra=(), timeout=60):
    """Produces count records "PREFIX-i" (key = value) with acks=all and
    waits for every acknowledgement. Returns (acked, failed, exit status)."""
    argv = [client_binary(), "produce", "--bootstrap", bootstrap, "--topic", topic,
            "--count", str(count), "--prefix", prefix]
    for kv in extra:
        argv += ["-X", kv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=ft.scaled(timeout))
    m = re.search(r"^acked=(\d+) failed=(\d+)$", r.stdout, re.M)
    if not m:
        raise AssertionError("producer printed no result (exit %s): %s" % (
            r.returncode, r.stderr[-2000:]))
    return int(m.group(1)), int(m.group(2)), r.returncode


def produce_all(bootstrap, topic, count, prefix, extra=()):
    acked, failed, rc = produce(bootstrap, topic, count, prefix, extra)
    assert (acked, failed, rc) == (count, 0, 0), \
        "produce %s: acked=%d failed=%d exit=%d" % (prefix, acked, failed, rc)


def partition_count(bootstrap, topic):
    r = subprocess.run(["kcat", "-L", "-J", "-b", bootstrap, "-t", topic, "-m", "10"],
                       capture_output=True, text=True, timeout=ft.scaled(30))
    md = json.loads(r.stdout)
    for t in md["topics"]:
        if t["topic"] == topic and not t.get("error"):
            return len(t["partitions"])
    raise AssertionError("topic %s not in metadata: %s" % (topic, r.stdout))


class Member:
    """One consumer-group member in its own process."""

    def __init__(self, bootstrap, group, topic, name="member", extra=(), max_seconds=240):
        argv = [client_binary(), "consume", "--bootstrap", bootstrap, "--topic", topic,
                "--group", group, "--max-seconds", str(int(ft.scaled(max_seconds)))]
        for kv in extra:
            argv += ["-X", kv]
        self.name = name
        self.proc = ft.Proc(name, argv)

    def _lines(self):
        with self.proc.cond:
            return list(self.proc.lines)

    def assignment(self):
        """The partitions it owns now (frozenset), or None before the first
        rebalance."""
        cur = None
        for line in self._lines():
            if line.startswith("assignment="):
                v = line[len("assignment="):]
                cur = frozenset(int(p) for p in v.split(",") if p)
        return cur

    def records(self, prefix=None):
        """[(partition, offset, value)] in the order received, optionally
        only values starting with PREFIX-."""
        out = []
        for line in self._lines():
            m = _MSG.match(line)
            if m and (prefix is None or m.group(4).startswith(prefix + "-")):
                out.append((int(m.group(1)), int(m.group(2)), m.group(4)))
        return out

    def stop(self):
        """Clean stop (SIGTERM: leave the group). Returns the exit status."""
        rc = self.proc.stop(timeout=30)
        assert "closed" in self._lines(), "%s did not close cleanly; log %s" % (
            self.name, self.proc.logpath)
        return rc

    def kill9(self):
        self.proc.kill9()


def wait_records(members, prefix, count, timeout=60):
    """Waits until the members together received count distinct records of
    PREFIX; returns {member: [records]}."""
    def got():
        vals = set()
        for m in members:
            vals.update(v for _p, _o, v in m.records(prefix))
        return len(vals) >= count
    try:
        ft.eventually(got, timeout=timeout, interval=0.1,
                      what="%d records of %s" % (count, prefix))
    except AssertionError:
        for m in members:
            ft.log("%s: %d records of %s; log %s" % (m.name, len(m.records(prefix)), prefix,
                                                    m.proc.logpath))
        raise
    return {m: m.records(prefix) for m in members}


def markers(bootstrap, topic, members, tag):
    """Instead of a quiet period: one record "TAG-P" on every partition P
    (kcat -p), after everything produced before; returns once each reached a
    member. A member reads a partition in offset order, so a record that
    should not arrive (a duplicate, a re-read) would have come before its
    partition's marker."""
    n = partition_count(bootstrap, topic)
    for p in range(n):
        subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", str(p),
                        "-k", "%s-%d" % (tag, p)], input=("%s-%d\n" % (tag, p)).encode(),
                       check=True, timeout=ft.scaled(30))
    wait_records(members, tag, n)

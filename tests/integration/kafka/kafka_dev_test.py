"""The embedded broker's contract (DESIGN.md "Command line"): fanout-kafka-dev
prints bootstrap= first, creates the four topics with --partitions N on
--brokers N, answers the Kafka protocol (kcat), exits 2 naming a bad option,
0 on SIGTERM/SIGINT, and takes its brokers down/up on SIGUSR1/SIGUSR2."""

import json
import signal
import subprocess

import fanout_test as ft
from kafka_members import produce

TOPICS = ["fanout.users", "fanout.rooms", "fanout.intake", "fanout.dlq"]


def run(*args):
    return subprocess.run([ft.find_binary("fanout-kafka-dev"), *args], capture_output=True,
                          text=True, timeout=ft.scaled(20))


def metadata(bootstrap):
    r = subprocess.run(["kcat", "-L", "-J", "-b", bootstrap, "-m", "10"], capture_output=True,
                       text=True, timeout=ft.scaled(30))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_help_lists_options():
    r = run("--help")
    assert r.returncode == 0, r
    for opt in ("--partitions", "--brokers", "--topic-users", "--topic-dlq", "--log-level"):
        assert opt in r.stdout, opt


def test_bad_option_exits_2_naming_it():
    for args, word in ((["--nope"], "--nope"), (["--partitions", "x"], "partitions"),
                       (["--brokers", "0"], "brokers"), (["--partitions"], "partitions"),
                       (["--log-level", "loud"], "log-level")):
        r = run(*args)
        assert r.returncode == 2, (args, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0], (args, r.stderr)
        assert r.stdout == "", r.stdout


def test_eight_partitions_and_kcat_round_trip():
    kd = ft.KafkaDev(partitions=8)
    assert kd.proc.lines[0].startswith("bootstrap="), kd.proc.lines
    md = metadata(kd.bootstrap)
    got = {t["topic"]: len(t["partitions"]) for t in md["topics"]}
    assert got == {t: 8 for t in TOPICS}, got
    p = subprocess.run(["kcat", "-P", "-b", kd.bootstrap, "-t", "fanout.rooms", "-K:"],
                       input="".join("k%d:v%d\n" % (i, i) for i in range(20)), text=True,
                       capture_output=True, timeout=ft.scaled(30))
    assert p.returncode == 0, p.stderr
    c = subprocess.run(["kcat", "-C", "-b", kd.bootstrap, "-t", "fanout.rooms", "-e", "-q",
                        "-f", "%k=%s\\n"], capture_output=True, text=True,
                       timeout=ft.scaled(30))
    assert sorted(c.stdout.split()) == sorted("k%d=v%d" % (i, i) for i in range(20)), c.stdout
    assert kd.stop() == 0


def test_brokers_and_topic_names():
    kd = ft.KafkaDev(partitions=2, brokers=3, extra=("--topic-users", "t.users"))
    assert len(kd.bootstrap.split(",")) == 3, kd.bootstrap
    md = metadata(kd.bootstrap)
    assert len(md["brokers"]) == 3, md["brokers"]
    names = {t["topic"] for t in md["topics"]}
    assert names == {"t.users", "fanout.rooms", "fanout.intake", "fanout.dlq"}, names
    assert kd.stop() == 0


def test_sigint_exits_0():
    kd = ft.KafkaDev()
    kd.proc.signal(signal.SIGINT)
    assert kd.proc.wait_exit(10) == 0


def test_outage_on_sigusr1_and_back_on_sigusr2():
    kd = ft.KafkaDev()
    assert produce(kd.bootstrap, "fanout.users", 10, "up")[:2] == (10, 0)
    kd.down()
    acked, failed, rc = produce(kd.bootstrap, "fanout.users", 5, "down",
                                extra=("message.timeout.ms=2000",))
    assert (acked, failed) == (0, 5) and rc != 0, (acked, failed, rc)
    kd.up()
    assert produce(kd.bootstrap, "fanout.users", 10, "again")[:2] == (10, 0)
    c = subprocess.run(["kcat", "-C", "-b", kd.bootstrap, "-t", "fanout.users", "-e", "-q"],
                       capture_output=True, text=True, timeout=ft.scaled(30))
    vals = c.stdout.split()
    assert len([v for v in vals if v.startswith("up-")]) == 10, vals
    assert len([v for v in vals if v.startswith("again-")]) == 10, vals
    assert not [v for v in vals if v.startswith("down-")], vals
    assert kd.stop() == 0


if __name__ == "__main__":
    ft.run_tests(dict(globals()))

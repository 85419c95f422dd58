"""delivery/replay.c, the Kafka replay reader of issue 9, against a broker
process: argv[1] = kafkadev (a fanout-kafka-dev of its own, idle, so the
figures are not disturbed) or apachekafka (the shared real-Kafka fixture).
The checks and the figures are in the C program fanout-test-replay (it
produces keyed records with librdkafka and asks the reader); this driver
starts the broker, runs it with a deadline and shows its output."""

import subprocess
import sys

import fanout_test as ft

BROKER = sys.argv[1] if len(sys.argv) > 1 else "kafkadev"
state = {}


def setup_module():
    if BROKER == "kafkadev":
        state["kafka"] = ft.KafkaDev(partitions=4)
        state["bootstrap"] = state["kafka"].bootstrap
    else:
        state["bootstrap"] = ft.fixture_env(BROKER)["FANOUT_KAFKA"]


def teardown_module():
    if "kafka" in state:
        state["kafka"].stop()


def run(mode):
    p = subprocess.run([ft.find_binary("fanout-test-replay"), state["bootstrap"], mode],
                       capture_output=True, text=True, timeout=ft.scaled(120))
    out = p.stdout.strip()
    for line in out.splitlines():
        ft.log("%s: %s" % (mode, line))
    if p.returncode != 0:
        ft.log(p.stderr[-4000:])
    assert p.returncode == 0, "fanout-test-replay %s exited %d" % (mode, p.returncode)
    assert out.splitlines()[-1].startswith("ok "), out
    return out


def test_replay_answers():
    run("test")


def test_replay_figures():
    out = run("bench")
    assert "bench latency:" in out and "bench mass:" in out, out


if __name__ == "__main__":
    ft.run_tests(globals())

"""A consumer whose topic stays quiet keeps its place in the group.

librdkafka takes a group consumer out of its group (MAXPOLL: "Application
maximum poll interval exceeded ... leaving group") when the application has
not polled for max.poll.interval.ms. Our loop polls a queue only when
librdkafka signals an event, so a topic that stayed quiet for 5 minutes (the
default) made every delivery server leave its group and rejoin: a rebalance
of everyone, seen at 300 s in all 53 processes of the 1,000,000-connection
benchmark. common/kafka_consumer.c now polls at least every quarter of that
interval. Here the interval is 7 s (librdkafka wants it >= the session timeout,
6 s here) and the server stays idle for three of them: no MAXPOLL line, no
second assignment, and a record sent afterwards still arrives at once.

argv[1] = kafkadev (a fanout-kafka-dev of its own) or apachekafka (the
shared real-Kafka fixture)."""

import os
import re
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402
from dtest import SECRET, UserFeed, metrics, token  # noqa: E402
from wsclient import WsClient  # noqa: E402

BROKER = sys.argv[1] if len(sys.argv) > 1 else "kafkadev"
MAX_POLL_MS = 7000  # with --session-timeout-ms 6000 (librdkafka: max poll >= session)
QUIET_S = 3 * MAX_POLL_MS / 1000.0


def log_text(proc):
    with open(proc.logpath, "rb") as f:
        return f.read().decode("utf-8", "replace")


def main():
    tag = uuid.uuid4().hex[:8]
    kafka = None
    if BROKER == "kafkadev":
        kafka = ft.KafkaDev(partitions=4)
        bootstrap = kafka.bootstrap
    else:
        bootstrap = ft.fixture_env("apachekafka")["FANOUT_KAFKA"]
    redis = ft.Redis()
    d = ft.start_service("fanout-delivery", "delivery-quiet", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", bootstrap,
        "--server-id", "quiet-" + tag, "--group-id", "quiet-" + tag, "--jwt-secret", SECRET,
        "--users-offset-reset", "latest", "--session-timeout-ms", "6000", "--kafka-opts",
        "max.poll.interval.ms=%d" % MAX_POLL_MS, "--log-level", "info"])
    feed = UserFeed(bootstrap)
    try:
        ft.eventually(lambda: metrics(d).get("fanout_delivery_assigned_partitions", 0) >= 8,
                      timeout=120, what="users and rooms partitions assigned")
        user = "quiet-" + tag
        c = WsClient(d.addr, token=token(user))
        feed.warm(c, user)

        assigned = len(re.findall(r'msg="partitions assigned"', log_text(d)))
        ft.log("quiet for %.0f s (max.poll.interval.ms=%d)" % (QUIET_S, MAX_POLL_MS))
        time.sleep(QUIET_S)
        text = log_text(d)
        assert "MAXPOLL" not in text and "maximum poll interval" not in text, (
            "the quiet consumer was taken out of its group: %s" %
            [ln for ln in text.splitlines() if "poll interval" in ln][:3])
        again = len(re.findall(r'msg="partitions assigned"', text))
        assert again == assigned, "the group rebalanced while quiet (%d -> %d assignments)" % (
            assigned, again)
        assert metrics(d).get("fanout_delivery_assigned_partitions", 0) >= 8

        t0 = time.monotonic()
        feed.send(user, {"after": "quiet"})
        while True:
            m = c.recv(timeout=ft.scaled(10))
            if m.get("type") == "message" and m.get("data") == {"after": "quiet"}:
                break
        ft.log("after the quiet time: produce -> frame %.3f s" % (time.monotonic() - t0))
        c.close()
    finally:
        feed.close()
        d.stop()
        redis.stop()
        if kafka is not None:
            kafka.stop()
    print("ok")


if __name__ == "__main__":
    main()

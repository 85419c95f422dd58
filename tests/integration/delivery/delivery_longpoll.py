"""On a long-polling broker, a record reaches the client without waiting for
the consumer's fetch wait to end (issue 11, end-to-end latency).

The real Apache Kafka (shared fixture) holds a fetch request until a record
arrives or fetch.wait.max.ms passes. fanout-delivery runs with a fetch wait
of 30 s (--kafka-opts wins over --kafka-fetch-wait-ms), so a record that
librdkafka received but our loop did not pick up (a lost queue wake-up in
common/kafka_uv.c), or a partition left out of the parked fetch, would show
as seconds of delay. After an idle pause (the fetch is parked at the broker),
each of five records produced one at a time must reach the WebSocket within
10 s; they take milliseconds on a quiet machine, and 10 s leaves room for
ASan and a loaded machine while staying a third of the fetch wait."""

import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402
from dtest import SECRET, UserFeed, metrics, token  # noqa: E402
from wsclient import WsClient  # noqa: E402

BOOTSTRAP = ft.fixture_env("apachekafka")["FANOUT_KAFKA"]
FETCH_WAIT_MS = 30000
BOUND_S = 10.0


def main():
    tag = uuid.uuid4().hex[:8]
    redis = ft.Redis()
    d = ft.start_service("fanout-delivery", "delivery-longpoll", [
        "--listen", "127.0.0.1:0", "--redis", redis.addr, "--kafka", BOOTSTRAP,
        "--server-id", "lp-" + tag, "--group-id", "longpoll-" + tag, "--jwt-secret", SECRET,
        "--users-offset-reset", "latest", "--kafka-opts",
        "fetch.wait.max.ms=%d" % FETCH_WAIT_MS, "--log-level", "info"])
    feed = UserFeed(BOOTSTRAP)
    try:
        ft.eventually(lambda: metrics(d).get("fanout_delivery_assigned_partitions", 0) >= 8,
                      timeout=120, what="users and rooms partitions assigned")
        user = "lp-" + tag
        c = WsClient(d.addr, token=token(user))
        feed.warm(c, user)

        took = []
        for i in range(5):
            # Idle: the consumer's next fetch is parked at the broker.
            time.sleep(1.5)
            t0 = time.monotonic()
            feed.send(user, {"i": i})
            while True:
                m = c.recv(timeout=BOUND_S + 5)
                if m.get("type") == "message" and m.get("data") == {"i": i}:
                    break
            took.append(time.monotonic() - t0)
        ft.log("produce -> frame: %s s (fetch wait %d ms)" %
               (", ".join("%.3f" % t for t in took), FETCH_WAIT_MS))
        assert max(took) < BOUND_S, (
            "a record waited for the long poll: %r s with fetch.wait.max.ms=%d" %
            (took, FETCH_WAIT_MS))
        c.close()
    finally:
        feed.close()
        d.stop()
        redis.stop()
    print("ok")


if __name__ == "__main__":
    main()

"""A Kafka outage under fanout-ingest: the embedded broker's brokers are taken
down (SIGUSR1): sends are answered 503 with Retry-After within the produce
deadline (never a hang, never a 202), /readyz turns 503; brought back up
(SIGUSR2): sends are acknowledged again and land in the topic."""

import os
import sys
import threading
import uuid

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import fanout_test as ft  # noqa: E402
import ingest_lib as L  # noqa: E402

RUN = uuid.uuid4().hex[:8]
DEADLINE_MS = 2000

kafka = ft.KafkaDev(partitions=4)
svc = L.start_ingest(kafka.bootstrap, None, ["--intake", "false",
                                             "--produce-timeout-ms", str(DEADLINE_MS),
                                             "--stats-interval-ms", "200",
                                             "--retry-after-s", "2"])
HOST, PORT = svc.host, svc.port
L.wait_ready(HOST, PORT)


def send(c, i):
    return c.post("/v1/send", {"user": "outage-%s-%d" % (RUN, i), "data": i})


def test_before_the_outage():
    c = L.Client(HOST, PORT)
    for i in range(5):
        r = send(c, i)
        assert r.status == 202, r.body
    c.close()


def test_outage_gives_503_within_the_deadline():
    kafka.down()  # returns once the brokers are down
    results = []

    def worker(k):
        c = L.Client(HOST, PORT)
        for i in range(3):
            r = send(c, 1000 + k * 10 + i)
            results.append((r.status, r.elapsed, r.getheader("Retry-After"), r.json))
        c.close()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 24, results
    for st, elapsed, retry, body in results:
        assert st == 503, (st, body)
        assert retry == "2", retry
        assert "kafka" in body["error"], body
        # the deadline plus scheduling slack, never a hang
        assert elapsed <= DEADLINE_MS / 1000 + ft.scaled(0.5), elapsed
    c = L.Client(HOST, PORT, key=None)
    ft.eventually(lambda: c.get("/readyz").status == 503, timeout=10, what="readyz 503")
    r = c.get("/readyz")
    assert r.json["kafka"] is False and r.getheader("Retry-After") == "2", r.body
    # batches too: every item 503, the whole thing 207 with Retry-After
    c2 = L.Client(HOST, PORT)
    r = c2.post("/v1/batch", {"messages": [{"user": "b", "data": 1}, {"room": "r", "data": 2}]})
    assert r.status == 207 and [x["status"] for x in r.json["results"]] == [503, 503], r.body
    assert r.getheader("Retry-After") == "2"
    c.close()
    c2.close()


def test_full_local_queue_gives_429():
    # still down: a second ingest with a tiny producer queue fills it at once
    small = L.start_ingest(kafka.bootstrap, None, ["--intake", "false",
                                                   "--produce-timeout-ms", str(DEADLINE_MS),
                                                   "--queue-max-messages", "3"],
                           name="ingest-smallq")
    results = []

    def worker(k):
        c = L.Client(small.host, small.port)
        r = send(c, 3000 + k)
        results.append((r.status, r.getheader("Retry-After"), r.elapsed))
        c.close()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(st for st, _, _ in results)
    assert len(results) == 10 and set(statuses) <= {429, 503}, results
    assert statuses.count(429) >= 7, results  # only 3 fit in the queue
    assert all(retry == "1" for _, retry, _ in results), results
    assert all(el < ft.scaled(0.5) for st, _, el in results if st == 429), results  # at once
    assert small.stop() == 0


def test_recovery_after_the_brokers_are_back():
    kafka.up()
    c = L.Client(HOST, PORT)
    ids = []

    def ok():
        r = send(c, len(ids) + 5000)
        if r.status == 202:
            ids.append(r.json["id"])
            return True
        assert r.status == 503, r.body
        return False
    ft.eventually(ok, timeout=30, interval=0.2, what="a 202 after the outage")
    for i in range(10):
        r = send(c, 6000 + i)
        assert r.status == 202, r.body
        ids.append(r.json["id"])
    for msg_id in ids:
        L.find_by_id(kafka.bootstrap, "fanout.users", msg_id)
    c.close()
    c = L.Client(HOST, PORT, key=None)
    ft.eventually(lambda: c.get("/readyz").status == 200, timeout=10, what="readyz 200")
    c.close()


def test_nothing_acknowledged_is_missing():
    # Everything answered 202 before the outage is in the topic exactly once.
    recs = L.read_topic(kafka.bootstrap, "fanout.users")
    keys = [r["key"].decode() for r in recs]
    for i in range(5):
        assert keys.count("outage-%s-%d" % (RUN, i)) == 1, keys


if __name__ == "__main__":
    try:
        ft.run_tests(dict(globals()), sys.argv[1:] or None)
    finally:
        svc.stop()
        kafka.stop()

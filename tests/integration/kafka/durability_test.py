"""(c) The real Kafka keeps every acknowledged record across a kill -9: a
broker of its own (deploy/local/apache-kafka) gets N records with acks=all,
its JVM is killed with -9 once all are acknowledged, it is restarted on the
same port and data dir, and a fresh consumer group reads all N back."""

import shutil
import uuid

import fanout_test as ft
from kafka_members import Member, produce_all, wait_records

TOPIC = "fanout.users"
N = 3000


def test_acknowledged_records_survive_kill_9():
    kafka = ft.ApacheKafka(partitions=4)
    ft.log("own broker %s data %s" % (kafka.bootstrap, kafka.datadir))
    prefix = "durable-" + uuid.uuid4().hex[:8]
    produce_all(kafka.bootstrap, TOPIC, N, prefix)

    kafka.kill9()
    before = kafka.bootstrap
    kafka.start()  # same port, same data dir
    assert kafka.bootstrap == before, (kafka.bootstrap, before)

    # A member of a new group reads the topic from the beginning.
    m = Member(kafka.bootstrap, "durable-" + uuid.uuid4().hex[:8], TOPIC, name="reader")
    wait_records([m], prefix, N, timeout=120)
    vals = {v for _p, _o, v in m.records(prefix)}
    assert vals == {"%s-%d" % (prefix, i) for i in range(N)}, "lost %d records" % (N - len(vals))
    assert m.stop() == 0

    # Writes go on after the restart too.
    produce_all(kafka.bootstrap, TOPIC, 10, prefix + "-after")
    assert kafka.stop() == 0
    shutil.rmtree(kafka.datadir, ignore_errors=True)


if __name__ == "__main__":
    ft.run_tests(dict(globals()))

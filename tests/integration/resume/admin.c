/* fanout-test-admin: the Kafka admin calls the resume tests need and
 * python3-confluent-kafka 1.7 does not offer (librdkafka's Admin API):
 *   fanout-test-admin BOOTSTRAP delete-records TOPIC PARTITION OFFSET
 *     moves the partition's log start (low watermark) to OFFSET, as
 *     retention would: what a "past retention" position looks like.
 * Prints "ok low=N" (exit 0) or the error (exit 1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

static int delete_records(rd_kafka_t *rk, const char *topic, int32_t part, int64_t off) {
  rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(tl, topic, part)->offset = off;
  rd_kafka_DeleteRecords_t *dr = rd_kafka_DeleteRecords_new(tl);
  rd_kafka_topic_partition_list_destroy(tl);
  rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
  rd_kafka_DeleteRecords(rk, &dr, 1, NULL, q);
  rd_kafka_DeleteRecords_destroy(dr);
  rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
  int rc = 1;
  if (ev == NULL) {
    fprintf(stderr, "delete-records: no answer in 30 s\n");
  } else if (rd_kafka_event_error(ev)) {
    fprintf(stderr, "delete-records: %s\n", rd_kafka_event_error_string(ev));
  } else {
    const rd_kafka_topic_partition_list_t *res =
        rd_kafka_DeleteRecords_result_offsets(rd_kafka_event_DeleteRecords_result(ev));
    if (res == NULL || res->cnt != 1) {
      fprintf(stderr, "delete-records: no result\n");
    } else if (res->elems[0].err) {
      fprintf(stderr, "delete-records: %s\n", rd_kafka_err2str(res->elems[0].err));
    } else {
      printf("ok low=%lld\n", (long long)res->elems[0].offset);
      rc = 0;
    }
  }
  if (ev)
    rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 6 || strcmp(argv[2], "delete-records") != 0) {
    fprintf(stderr, "usage: fanout-test-admin BOOTSTRAP delete-records TOPIC PARTITION OFFSET\n");
    return 2;
  }
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int rc = delete_records(rk, argv[3], (int32_t)atoi(argv[4]), strtoll(argv[5], NULL, 10));
  rd_kafka_destroy(rk);
  return rc;
}

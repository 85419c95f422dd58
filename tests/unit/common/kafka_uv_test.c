/* Runs against the embedded Kafka broker started by the kafkadev fixture:
 * produce and consume through fo_kafka_uv, with the loop never blocked. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fixture_env.h"
#include "kafka_uv.h"
#include "log.h"

#define N 200

typedef struct {
  uv_loop_t loop;
  uv_timer_t tick, deadline;
  uint64_t last_tick, max_gap;
  rd_kafka_t *producer, *consumer;
  rd_kafka_queue_t *pq, *cq;
  fo_kafka_uv_t *pkuv, *ckuv;
  int acked, failed, received;
  char topic[64];
  bool seen[N];
  bool timed_out;
} t_t;

static void on_tick(uv_timer_t *t) {
  t_t *s = t->data;
  uint64_t now = uv_now(&s->loop);
  if (s->last_tick != 0 && now - s->last_tick > s->max_gap)
    s->max_gap = now - s->last_tick;
  s->last_tick = now;
}

static void finish(t_t *s) {
  uv_timer_stop(&s->tick);
  uv_timer_stop(&s->deadline);
  fo_kafka_uv_close(s->pkuv);
  fo_kafka_uv_close(s->ckuv);
  s->pkuv = s->ckuv = NULL;
}

static void on_deadline(uv_timer_t *t) {
  t_t *s = t->data;
  s->timed_out = true;
  finish(s);
}

static void on_consumer_event(rd_kafka_event_t *ev, void *ud) {
  t_t *s = ud;
  switch (rd_kafka_event_type(ev)) {
  case RD_KAFKA_EVENT_REBALANCE:
    if (rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
      rd_kafka_assign(s->consumer, rd_kafka_event_topic_partition_list(ev));
    else
      rd_kafka_assign(s->consumer, NULL);
    break;
  case RD_KAFKA_EVENT_FETCH: {
    const rd_kafka_message_t *m;
    while ((m = rd_kafka_event_message_next(ev)) != NULL) {
      if (m->err != 0)
        continue;
      int i;
      if (sscanf((const char *)m->payload, "msg-%d", &i) == 1 && i >= 0 && i < N && !s->seen[i]) {
        s->seen[i] = true;
        s->received++;
      }
    }
    if (s->received == N)
      finish(s);
    break;
  }
  default:
    break;
  }
}

static void start_consumer(t_t *s, const char *bootstrap) {
  char err[256];
  char group[64];
  snprintf(group, sizeof(group), "kuv-test-%d", (int)getpid());
  char gid[80];
  snprintf(gid, sizeof(gid), "group.id=%s", group);
  char *over[] = {gid, "auto.offset.reset=earliest", NULL};
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_CONSUMER, bootstrap, "kuv-test", over, err, sizeof(err));
  assert_non_null(conf);
  rd_kafka_conf_set_events(conf,
                           RD_KAFKA_EVENT_REBALANCE | RD_KAFKA_EVENT_FETCH | RD_KAFKA_EVENT_ERROR);
  s->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  assert_non_null(s->consumer);
  rd_kafka_poll_set_consumer(s->consumer);
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, s->topic, RD_KAFKA_PARTITION_UA);
  assert_int_equal(rd_kafka_subscribe(s->consumer, topics), 0);
  rd_kafka_topic_partition_list_destroy(topics);
  s->cq = rd_kafka_queue_get_consumer(s->consumer);
  assert_int_equal(fo_kafka_uv_start(&s->loop, s->cq, 100, on_consumer_event, s, &s->ckuv), 0);
}

static void on_producer_event(rd_kafka_event_t *ev, void *ud) {
  t_t *s = ud;
  if (rd_kafka_event_type(ev) != RD_KAFKA_EVENT_DR)
    return;
  const rd_kafka_message_t *m;
  while ((m = rd_kafka_event_message_next(ev)) != NULL) {
    if (m->err == 0)
      s->acked++;
    else
      s->failed++;
  }
}

static void kafka_uv_produce_then_consume(void **state) {
  (void)state;
  char bootstrap[256], err[256];
  if (fixture_get("kafkadev", "FANOUT_KAFKA", bootstrap, sizeof(bootstrap)) != 0)
    fail_msg("kafkadev fixture not running (run through ctest)");
  static t_t s;
  memset(&s, 0, sizeof(s));
  snprintf(s.topic, sizeof(s.topic), "kuv-test-%d", (int)getpid());
  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.tick);
  uv_timer_init(&s.loop, &s.deadline);
  s.tick.data = s.deadline.data = &s;
  uv_timer_start(&s.tick, on_tick, 10, 10);
  uv_timer_start(&s.deadline, on_deadline, 60000, 0);

  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, bootstrap, "kuv-test", NULL, err, sizeof(err));
  assert_non_null(conf);
  rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR);
  s.producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  assert_non_null(s.producer);
  s.pq = rd_kafka_queue_get_main(s.producer);
  assert_int_equal(fo_kafka_uv_start(&s.loop, s.pq, 100, on_producer_event, &s, &s.pkuv), 0);
  for (int i = 0; i < N; i++) {
    char payload[32];
    int n = snprintf(payload, sizeof(payload), "msg-%d", i);
    assert_int_equal(rd_kafka_producev(s.producer, RD_KAFKA_V_TOPIC(s.topic),
                                       RD_KAFKA_V_VALUE(payload, (size_t)n),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                     0);
  }
  /* Serve the producer until every record is acknowledged. */
  while (s.acked + s.failed < N && !s.timed_out)
    uv_run(&s.loop, UV_RUN_ONCE);
  assert_int_equal(s.acked, N);
  start_consumer(&s, bootstrap);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_false(s.timed_out);
  assert_int_equal(s.received, N);
  print_message("max loop gap %llu ms\n", (unsigned long long)s.max_gap);
  assert_true(s.max_gap < 1000); /* the loop kept turning */

  rd_kafka_queue_destroy(s.cq);
  rd_kafka_consumer_close(s.consumer);
  rd_kafka_destroy(s.consumer);
  rd_kafka_queue_destroy(s.pq);
  rd_kafka_destroy(s.producer);
  uv_close((uv_handle_t *)&s.tick, NULL);
  uv_close((uv_handle_t *)&s.deadline, NULL);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&s.loop), 0);
}

static void kafka_conf_rejects_bad_overrides(void **state) {
  (void)state;
  char err[256];
  char *bad1[] = {"no-equals-sign", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", bad1, err, sizeof(err)));
  assert_non_null(strstr(err, "key=value"));
  char *bad2[] = {"not.a.real.property=1", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_CONSUMER, "127.0.0.1:1", "x", bad2, err, sizeof(err)));
  assert_non_null(strstr(err, "not.a.real.property"));
}

/* Values of secret-looking or unknown settings, and malformed items (maybe
 * the tail of a password cut at a comma), never reach the error text. */
static void kafka_conf_errors_hide_secrets(void **state) {
  (void)state;
  char err[256];
  char *typo[] = {"acks=all", "sasl.pasword=hunter2", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", typo, err, sizeof(err)));
  assert_non_null(strstr(err, "sasl.pasword=<hidden>"));
  assert_null(strstr(err, "hunter2"));
  char *bad_val[] = {"sasl.kerberos.min.time.before.relogin=hunter2", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", bad_val, err, sizeof(err)));
  assert_non_null(strstr(err, "relogin=<hidden>"));
  assert_null(strstr(err, "hunter2"));
  char *unknown[] = {"my.pasword=hunter2", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_CONSUMER, "127.0.0.1:1", "x", unknown, err, sizeof(err)));
  assert_non_null(strstr(err, "my.pasword"));
  assert_null(strstr(err, "hunter2"));
  char *cut[] = {"acks=all", "sasl.password=abc", "hunter2", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", cut, err, sizeof(err)));
  assert_non_null(strstr(err, "#3"));
  assert_non_null(strstr(err, "expected key=value"));
  assert_null(strstr(err, "hunter2"));
  char *nokey[] = {"=hunter2", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", nokey, err, sizeof(err)));
  assert_null(strstr(err, "hunter2"));
  /* a known, non-secret setting still shows its value, to help the operator */
  char *plain[] = {"linger.ms=notanumber", NULL};
  assert_null(fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", plain, err, sizeof(err)));
  assert_non_null(strstr(err, "linger.ms=notanumber"));
  /* a password with an escaped comma arrives whole */
  char **list;
  assert_int_equal(fo_cfg_list_split("sasl.username=u,sasl.password=hun\\,ter2", &list), 2);
  assert_string_equal(list[1], "sasl.password=hun,ter2");
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, "127.0.0.1:1", "x", list, err, sizeof(err));
  fo_cfg_list_free(list);
  assert_non_null(conf);
  char val[64];
  size_t vlen = sizeof(val);
  assert_int_equal(rd_kafka_conf_get(conf, "sasl.password", val, &vlen), RD_KAFKA_CONF_OK);
  assert_string_equal(val, "hun,ter2");
  rd_kafka_conf_destroy(conf);
}

int main(void) {
  fo_log_set_level(FO_LOG_LVL_WARN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kafka_conf_rejects_bad_overrides),
      cmocka_unit_test(kafka_conf_errors_hide_secrets),
      cmocka_unit_test(kafka_uv_produce_then_consume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

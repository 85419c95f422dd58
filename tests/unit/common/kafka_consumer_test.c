/* common/kafka_consumer.c against the embedded Kafka (ctest fixture
 * kafkadev): the conf it builds (heartbeat = session / 6, at least 100 ms;
 * the operator's options last, their values hidden in errors), the
 * assignment callback, records, offsets stored by the owner, a revoke the
 * owner defers, a close that does not block the loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fixture_env.h"
#include "kafka_consumer.h"
#include "kafka_uv.h"

enum { N = 20 }; /* all on partition 0, so they arrive in order */

typedef struct {
  uv_loop_t loop;
  uv_timer_t deadline;
  fo_kafka_consumer_t *kc;
  char topic[64];
  int assigned, received;
  bool timed_out, stored_ok;
} t_t;

static void on_deadline(uv_timer_t *t) {
  t_t *s = t->data;
  s->timed_out = true;
  fo_kafka_consumer_close(s->kc);
}

static void on_message(void *ud, const rd_kafka_message_t *msg) {
  t_t *s = ud;
  char want[32];
  int n = snprintf(want, sizeof(want), "msg-%d", s->received);
  assert_int_equal(msg->len, (size_t)n);
  assert_memory_equal(msg->payload, want, (size_t)n);
  s->received++;
  s->stored_ok = fo_kafka_consumer_store(s->kc, s->topic, msg->partition, msg->offset + 1) ==
                 RD_KAFKA_RESP_ERR_NO_ERROR;
  if (s->received == N) {
    uv_timer_stop(&s->deadline);
    fo_kafka_consumer_pause(s->kc, true);
    fo_kafka_consumer_close(s->kc);
  }
}

static void on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts) {
  t_t *s = ud;
  assert_true(parts->cnt >= 1);
  s->assigned++;
}

static void produce(const char *bootstrap, const char *topic) {
  char err[256];
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, bootstrap, "kc-test", NULL, err, sizeof(err));
  assert_non_null(conf);
  rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  assert_non_null(p);
  for (int i = 0; i < N; i++) {
    char payload[32];
    int n = snprintf(payload, sizeof(payload), "msg-%d", i);
    assert_int_equal(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_VALUE(payload, (size_t)n),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                     0);
  }
  assert_int_equal(rd_kafka_flush(p, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(p);
}

static void conf_value(rd_kafka_t *rk, const char *key, char *out, size_t cap) {
  size_t n = cap;
  assert_int_equal(rd_kafka_conf_get(rd_kafka_conf(rk), key, out, &n), RD_KAFKA_CONF_OK);
}

static void kafka_consumer_consumes_and_stores(void **state) {
  (void)state;
  char bootstrap[256], err[256] = "";
  if (fixture_get("kafkadev", "FANOUT_KAFKA", bootstrap, sizeof(bootstrap)) != 0)
    fail_msg("kafkadev fixture not running (run through ctest)");
  static t_t s;
  memset(&s, 0, sizeof(s));
  snprintf(s.topic, sizeof(s.topic), "kc-test-%d", (int)getpid());
  produce(bootstrap, s.topic);
  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.deadline);
  s.deadline.data = &s;
  uv_timer_start(&s.deadline, on_deadline, 60000, 0);
  char *ours[] = {"auto.offset.reset=earliest", NULL};
  const char *topics[] = {s.topic, NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = bootstrap,
                                .client_id = "kc-test",
                                .group = s.topic,
                                .session_timeout_ms = 6000,
                                .settings = ours,
                                .extra = "fetch.wait.max.ms=5",
                                .topics = topics,
                                .log_mod = "test"};
  fo_kafka_consumer_cbs_t cbs = {.on_message = on_message, .on_assign = on_assign};
  assert_int_equal(fo_kafka_consumer_new(&s.loop, &o, &cbs, &s, err, sizeof(err), &s.kc), 0);
  char v[64];
  conf_value(fo_kafka_consumer_rk(s.kc), "heartbeat.interval.ms", v, sizeof(v));
  assert_string_equal(v, "1000");
  conf_value(fo_kafka_consumer_rk(s.kc), "fetch.wait.max.ms", v, sizeof(v));
  assert_string_equal(v, "5"); /* the operator's option wins over ours */
  conf_value(fo_kafka_consumer_rk(s.kc), "group.id", v, sizeof(v));
  assert_string_equal(v, s.topic);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_false(s.timed_out);
  assert_int_equal(s.received, N);
  assert_true(s.assigned >= 1);
  assert_true(s.stored_ok);
  uv_close((uv_handle_t *)&s.deadline, NULL);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  fo_kafka_consumer_free(s.kc);
  assert_int_equal(uv_loop_close(&s.loop), 0);
}

static void kafka_consumer_short_session_and_secrets(void **state) {
  (void)state;
  char bootstrap[256], err[256] = "";
  if (fixture_get("kafkadev", "FANOUT_KAFKA", bootstrap, sizeof(bootstrap)) != 0)
    fail_msg("kafkadev fixture not running (run through ctest)");
  uv_loop_t loop;
  uv_loop_init(&loop);
  const char *topics[] = {"kc-test-unused", NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = bootstrap,
                                .client_id = "kc-test",
                                .group = "kc-test-short",
                                .session_timeout_ms = 500,
                                .topics = topics};
  fo_kafka_consumer_cbs_t cbs = {.on_message = NULL};
  /* A misspelt secret: refused, and its value never printed. */
  o.extra = "sasl.pasword=hunter2";
  fo_kafka_consumer_t *kc = NULL;
  assert_int_equal(fo_kafka_consumer_new(&loop, &o, &cbs, NULL, err, sizeof(err), &kc), -EINVAL);
  assert_null(strstr(err, "hunter2"));
  assert_non_null(strstr(err, "sasl.pasword"));
  /* heartbeat = session / 6, but never under 100 ms */
  o.extra = NULL;
  char v[64];
  o.settings = NULL;
  o.session_timeout_ms = 300;
  assert_int_equal(fo_kafka_consumer_new(&loop, &o, &cbs, NULL, err, sizeof(err), &kc), 0);
  conf_value(fo_kafka_consumer_rk(kc), "heartbeat.interval.ms", v, sizeof(v));
  assert_string_equal(v, "100");
  fo_kafka_consumer_close(kc);
  uv_run(&loop, UV_RUN_DEFAULT);
  fo_kafka_consumer_free(kc);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A revoke the owner defers (in-flight work): the group waits for it, and
 * the new member gets partitions only after fo_kafka_consumer_revoke_done. */
typedef struct {
  uv_loop_t loop;
  uv_timer_t deadline, later;
  fo_kafka_consumer_t *a, *b;
  const char *bootstrap;
  char topic[64];
  int a_assigned, a_revoked, b_assigned;
  bool b_assigned_while_deferred, done, timed_out;
} r_t;

static void r_finish(r_t *r) {
  r->done = true;
  uv_timer_stop(&r->deadline);
  fo_kafka_consumer_close(r->a);
  fo_kafka_consumer_close(r->b);
}

static void r_on_deadline(uv_timer_t *t) {
  r_t *r = t->data;
  r->timed_out = true;
  r_finish(r);
}

static void r_on_message(void *ud, const rd_kafka_message_t *msg) {
  (void)ud;
  (void)msg;
}

static void r_on_later(uv_timer_t *t) {
  r_t *r = t->data;
  if (r->b_assigned > 0)
    r->b_assigned_while_deferred = true;
  fo_kafka_consumer_revoke_done(r->a);
}

static void b_on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts) {
  r_t *r = ud;
  if (parts->cnt > 0)
    r->b_assigned++;
  if (r->a_revoked > 0 && r->a_assigned >= 2)
    r_finish(r);
}

static void a_on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts);

static bool a_on_revoke(void *ud, const rd_kafka_topic_partition_list_t *parts, bool incremental) {
  (void)parts;
  (void)incremental;
  r_t *r = ud;
  if (r->done)
    return true;
  r->a_revoked++;
  /* "In-flight work": give them up in 5 s, longer than the rebalance takes
   * when the revoke is not deferred (about 4 s with this broker), so B
   * would have its partitions by then if the group did not wait. */
  uv_timer_start(&r->later, r_on_later, 5000, 0);
  return false;
}

static void a_on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts) {
  (void)parts;
  r_t *r = ud;
  r->a_assigned++;
  if (r->a_assigned == 1) { /* a second member joins: a rebalance */
    char err[256];
    const char *topics[] = {r->topic, NULL};
    fo_kafka_consumer_opts_t o = {.bootstrap = r->bootstrap,
                                  .client_id = "kc-test-b",
                                  .group = r->topic,
                                  .session_timeout_ms = 6000,
                                  .topics = topics,
                                  .log_mod = "b"};
    fo_kafka_consumer_cbs_t cbs = {.on_message = r_on_message, .on_assign = b_on_assign};
    assert_int_equal(fo_kafka_consumer_new(&r->loop, &o, &cbs, r, err, sizeof(err), &r->b), 0);
  } else if (r->b_assigned > 0 && r->a_revoked > 0) {
    r_finish(r);
  }
}

static void kafka_consumer_revoke_can_wait(void **state) {
  (void)state;
  char bootstrap[256], err[256] = "";
  if (fixture_get("kafkadev", "FANOUT_KAFKA", bootstrap, sizeof(bootstrap)) != 0)
    fail_msg("kafkadev fixture not running (run through ctest)");
  static r_t r;
  memset(&r, 0, sizeof(r));
  r.bootstrap = bootstrap;
  snprintf(r.topic, sizeof(r.topic), "kc-rebalance-%d", (int)getpid());
  produce(bootstrap, r.topic); /* creates the topic */
  uv_loop_init(&r.loop);
  uv_timer_init(&r.loop, &r.deadline);
  uv_timer_init(&r.loop, &r.later);
  r.deadline.data = r.later.data = &r;
  uv_timer_start(&r.deadline, r_on_deadline, 90000, 0);
  const char *topics[] = {r.topic, NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = bootstrap,
                                .client_id = "kc-test-a",
                                .group = r.topic,
                                .session_timeout_ms = 6000,
                                .topics = topics,
                                .log_mod = "a"};
  fo_kafka_consumer_cbs_t cbs = {
      .on_message = r_on_message, .on_assign = a_on_assign, .on_revoke = a_on_revoke};
  assert_int_equal(fo_kafka_consumer_new(&r.loop, &o, &cbs, &r, err, sizeof(err), &r.a), 0);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  assert_false(r.timed_out);
  assert_true(r.a_revoked >= 1);
  assert_false(r.b_assigned_while_deferred);
  assert_true(r.b_assigned >= 1);
  uv_close((uv_handle_t *)&r.deadline, NULL);
  uv_close((uv_handle_t *)&r.later, NULL);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  fo_kafka_consumer_free(r.b);
  fo_kafka_consumer_free(r.a);
  assert_int_equal(uv_loop_close(&r.loop), 0);
}

/* A close that does not block the loop (delivery's drain): the revoke comes
 * through on_revoke, the loop keeps serving until closed() says so, and
 * the free after it does not leave the group a second time. */
typedef struct {
  uv_loop_t loop;
  uv_timer_t poll, deadline;
  fo_kafka_consumer_t *kc;
  char topic[64];
  int received, revoked, polls;
  bool closed, timed_out;
} c_t;

static void c_on_message(void *ud, const rd_kafka_message_t *msg) {
  c_t *c = ud;
  c->received++;
  fo_kafka_consumer_store(c->kc, c->topic, msg->partition, msg->offset + 1);
  if (c->received == 1)
    assert_int_equal(fo_kafka_consumer_close_start(c->kc), 0);
}

static bool c_on_revoke(void *ud, const rd_kafka_topic_partition_list_t *parts, bool incremental) {
  (void)parts;
  (void)incremental;
  c_t *c = ud;
  c->revoked++;
  return true;
}

static void c_on_poll(uv_timer_t *t) {
  c_t *c = t->data;
  c->polls++;
  if (c->received > 0 && fo_kafka_consumer_closed(c->kc)) {
    c->closed = true;
    uv_timer_stop(&c->poll);
    uv_timer_stop(&c->deadline);
    fo_kafka_consumer_close(c->kc);
  }
}

static void c_on_deadline(uv_timer_t *t) {
  c_t *c = t->data;
  c->timed_out = true;
  uv_timer_stop(&c->poll);
  fo_kafka_consumer_close(c->kc);
}

static void kafka_consumer_close_without_blocking(void **state) {
  (void)state;
  char bootstrap[256], err[256] = "";
  if (fixture_get("kafkadev", "FANOUT_KAFKA", bootstrap, sizeof(bootstrap)) != 0)
    fail_msg("kafkadev fixture not running (run through ctest)");
  static c_t c;
  memset(&c, 0, sizeof(c));
  snprintf(c.topic, sizeof(c.topic), "kc-close-%d", (int)getpid());
  produce(bootstrap, c.topic);
  uv_loop_init(&c.loop);
  uv_timer_init(&c.loop, &c.poll);
  uv_timer_init(&c.loop, &c.deadline);
  c.poll.data = c.deadline.data = &c;
  uv_timer_start(&c.poll, c_on_poll, 20, 20);
  uv_timer_start(&c.deadline, c_on_deadline, 60000, 0);
  char *ours[] = {"auto.offset.reset=earliest", NULL};
  const char *topics[] = {c.topic, NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = bootstrap,
                                .client_id = "kc-test-close",
                                .group = c.topic,
                                .session_timeout_ms = 6000,
                                .settings = ours,
                                .topics = topics,
                                .log_mod = "test"};
  fo_kafka_consumer_cbs_t cbs = {.on_message = c_on_message, .on_revoke = c_on_revoke};
  assert_int_equal(fo_kafka_consumer_new(&c.loop, &o, &cbs, &c, err, sizeof(err), &c.kc), 0);
  assert_false(fo_kafka_consumer_closed(c.kc)); /* not before a close was asked */
  uv_run(&c.loop, UV_RUN_DEFAULT);
  assert_false(c.timed_out);
  assert_true(c.closed);
  assert_true(c.revoked >= 1);
  assert_true(c.polls > 1); /* the loop ran while the consumer left the group */
  assert_int_equal(fo_kafka_consumer_close_start(c.kc), 0); /* idempotent */
  uv_close((uv_handle_t *)&c.poll, NULL);
  uv_close((uv_handle_t *)&c.deadline, NULL);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  fo_kafka_consumer_free(c.kc);
  assert_int_equal(uv_loop_close(&c.loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kafka_consumer_consumes_and_stores),
      cmocka_unit_test(kafka_consumer_short_session_and_secrets),
      cmocka_unit_test(kafka_consumer_revoke_can_wait),
      cmocka_unit_test(kafka_consumer_close_without_blocking),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

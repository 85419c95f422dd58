/* Runs against the redis-server started by the redis fixture: commands,
 * Pub/Sub, reconnect after the server drops us, and the command timeout. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fixture_env.h"
#include "log.h"
#include "redis_uv.h"

typedef struct {
  uv_loop_t loop;
  uv_timer_t deadline, step;
  fo_redis_t *cmd, *sub;
  int connects, disconnects, sub_connects;
  int step_no;
  int got_value, got_message, got_null, timeouts_seen;
  bool done, timed_out;
  char host[128];
  int port;
} t_t;

static void finish(t_t *s) {
  s->done = true;
  uv_timer_stop(&s->deadline);
  uv_timer_stop(&s->step);
  fo_redis_close(s->cmd);
  fo_redis_close(s->sub);
}

static void on_deadline(uv_timer_t *t) {
  t_t *s = t->data;
  s->timed_out = true;
  finish(s);
}

static void on_get(fo_redis_t *r, redisReply *reply, void *pd) {
  t_t *s = pd;
  (void)r;
  if (reply != NULL && reply->type == REDIS_REPLY_STRING && strcmp(reply->str, "v1") == 0)
    s->got_value++;
}

static void on_message(fo_redis_t *r, redisReply *reply, void *pd) {
  t_t *s = pd;
  (void)r;
  if (reply == NULL)
    return;
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
      strcmp(reply->element[0]->str, "message") == 0 && strcmp(reply->element[2]->str, "hi") == 0)
    s->got_message++;
}

static void on_any(fo_redis_t *r, redisReply *reply, void *pd) {
  t_t *s = pd;
  (void)r;
  if (reply == NULL)
    s->got_null++;
}

static void on_cmd_state(fo_redis_t *r, bool up, void *ud) {
  t_t *s = ud;
  if (!up) {
    s->disconnects++;
    return;
  }
  s->connects++;
  assert_int_equal(fo_redis_command(r, NULL, NULL, "SET fo:test:k %s", "v1"), 0);
  assert_int_equal(fo_redis_command(r, on_get, s, "GET fo:test:k"), 0);
}

static void on_sub_state(fo_redis_t *r, bool up, void *ud) {
  t_t *s = ud;
  if (up) {
    s->sub_connects++;
    assert_int_equal(fo_redis_command(r, on_message, s, "SUBSCRIBE %s", "fo:test:chan"), 0);
  }
}

/* A small script, one step every 300 ms. */
static void on_step(uv_timer_t *t) {
  t_t *s = t->data;
  switch (s->step_no++) {
  case 0: /* both connected and working */
    if (s->connects < 1 || s->sub_connects < 1 || s->got_value < 1) {
      s->step_no--;
      return;
    }
    fo_redis_command(s->cmd, NULL, NULL, "PUBLISH fo:test:chan hi");
    break;
  case 1: /* the server drops every normal client, ourselves included */
    if (s->got_message < 1) {
      s->step_no--;
      return;
    }
    fo_redis_command(s->cmd, NULL, NULL, "CLIENT KILL TYPE pubsub");
    fo_redis_command(s->cmd, on_any, s, "CLIENT KILL TYPE normal SKIPME no");
    break;
  case 2: /* both come back by themselves, resubscribe, and work again */
    if (s->connects < 2 || s->sub_connects < 2 || s->got_value < 2) {
      s->step_no--;
      return;
    }
    fo_redis_command(s->cmd, NULL, NULL, "PUBLISH fo:test:chan hi");
    break;
  case 3:
    if (s->got_message < 2) {
      s->step_no--;
      return;
    }
    /* A server that stops answering: the command times out with NULL. */
    fo_redis_command(s->cmd, NULL, NULL, "CLIENT PAUSE 1500 ALL");
    fo_redis_command(s->cmd, on_any, s, "PING");
    break;
  default:
    if (s->got_null >= 1 && s->connects >= 3 && s->got_value >= 3)
      finish(s);
    else
      s->step_no--;
  }
}

static void redis_uv_reconnects_and_times_out(void **state) {
  (void)state;
  static t_t s;
  memset(&s, 0, sizeof(s));
  char addr[128], err[64];
  if (fixture_get("redis", "FANOUT_REDIS", addr, sizeof(addr)) != 0)
    fail_msg("redis fixture not running (run through ctest)");
  fo_addr_t a;
  assert_int_equal(fo_addr_parse(addr, &a, err, sizeof(err)), 0);
  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.deadline);
  uv_timer_init(&s.loop, &s.step);
  s.deadline.data = s.step.data = &s;
  uv_timer_start(&s.deadline, on_deadline, 30000, 0);
  uv_timer_start(&s.step, on_step, 300, 300);
  fo_redis_opts_t o = {.host = a.host, .port = a.port, .command_timeout_ms = 500,
                       .backoff_min_ms = 50, .backoff_max_ms = 400, .name = "cmd"};
  assert_int_equal(fo_redis_new(&s.loop, &o, on_cmd_state, &s, &s.cmd), 0);
  o.name = "sub";
  o.command_timeout_ms = 500;
  assert_int_equal(fo_redis_new(&s.loop, &o, on_sub_state, &s, &s.sub), 0);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  free(a.host);
  assert_false(s.timed_out);
  assert_true(s.disconnects >= 2);
  assert_true(s.got_message >= 2);
  uv_close((uv_handle_t *)&s.deadline, NULL);
  uv_close((uv_handle_t *)&s.step, NULL);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&s.loop), 0);
}

static void on_never(fo_redis_t *r, bool up, void *ud) {
  (void)r;
  (void)up;
  (*(int *)ud)++;
}

static void on_stop(uv_timer_t *t) { fo_redis_close(t->data); }

static void redis_uv_unreachable_server_retries_quietly(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  int calls = 0;
  fo_redis_t *r;
  /* Port 1 on loopback: connection refused, again and again. */
  fo_redis_opts_t o = {.host = "127.0.0.1", .port = 1, .backoff_min_ms = 20,
                       .backoff_max_ms = 80, .name = "nowhere"};
  assert_int_equal(fo_redis_new(&loop, &o, on_never, &calls, &r), 0);
  assert_int_equal(fo_redis_command(r, NULL, NULL, "PING"), -ENOTCONN);
  uv_timer_t stop;
  uv_timer_init(&loop, &stop);
  stop.data = r;
  uv_timer_start(&stop, on_stop, 700, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(calls, 0);
  uv_close((uv_handle_t *)&stop, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  fo_log_set_level(FO_LOG_LVL_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(redis_uv_unreachable_server_retries_quietly),
      cmocka_unit_test(redis_uv_reconnects_and_times_out),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

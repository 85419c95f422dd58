/* Runs against the redis-server started by the redis fixture: commands,
 * Pub/Sub, reconnect after the server drops us, the command timeout, and
 * SUBSCRIBE/UNSUBSCRIBE churn on one channel. The AUTH test starts its own
 * redis-server (--requirepass) on a free port and stops it by PID. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

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
  fo_redis_opts_t o = {.host = a.host,
                       .port = a.port,
                       .command_timeout_ms = 500,
                       .backoff_min_ms = 50,
                       .backoff_max_ms = 400,
                       .name = "cmd"};
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

/* ---- a stalled loop is not a Redis timeout ---- */

typedef struct {
  int ups, downs, replies;
} stall_t;

static void on_stall_pong(fo_redis_t *r, redisReply *reply, void *pd) {
  stall_t *st = pd;
  if (reply != NULL && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0 &&
      ++st->replies == 1)
    fo_redis_close(r); /* the reply came: done */
}

static void on_stall_state(fo_redis_t *r, bool up, void *ud) {
  stall_t *st = ud;
  if (!up) {
    st->downs++;
    fo_redis_close(r);
    return;
  }
  st->ups++;
  assert_int_equal(fo_redis_command(r, on_stall_pong, st, "PING"), 0);
  /* The loop is busy for three timeouts (as when a server closes 18,000
   * sockets in one turn); the reply waits in the socket meanwhile. */
  struct timespec busy = {.tv_sec = 0, .tv_nsec = 900 * 1000000L};
  nanosleep(&busy, NULL);
}

static void redis_uv_stalled_loop_is_not_a_timeout(void **state) {
  (void)state;
  char addr[128], err[64];
  if (fixture_get("redis", "FANOUT_REDIS", addr, sizeof(addr)) != 0)
    fail_msg("redis fixture not running (run through ctest)");
  fo_addr_t a;
  assert_int_equal(fo_addr_parse(addr, &a, err, sizeof(err)), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  stall_t st = {0};
  fo_redis_opts_t o = {.host = a.host, .port = a.port, .command_timeout_ms = 300, .name = "stall"};
  fo_redis_t *r;
  assert_int_equal(fo_redis_new(&loop, &o, on_stall_state, &st, &r), 0);
  uv_run(&loop, UV_RUN_DEFAULT); /* ends when r is closed: by the reply or a drop */
  free(a.host);
  assert_int_equal(st.ups, 1);
  assert_int_equal(st.downs, 0);
  assert_int_equal(st.replies, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_never(fo_redis_t *r, bool up, void *ud) {
  (void)r;
  (void)up;
  (*(int *)ud)++;
}

static void on_stop(uv_timer_t *t) {
  fo_redis_close(t->data);
}

static void redis_uv_unreachable_server_retries_quietly(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  int calls = 0;
  fo_redis_t *r;
  /* Port 1 on loopback: connection refused, again and again. */
  fo_redis_opts_t o = {.host = "127.0.0.1",
                       .port = 1,
                       .backoff_min_ms = 20,
                       .backoff_max_ms = 80,
                       .name = "nowhere"};
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

/* ---- SUBSCRIBE / UNSUBSCRIBE churn on one channel ---- */

/* Each round starts subscribed, pipelines one of these in a single loop turn
 * (so hiredis sees SUBSCRIBE while an UNSUBSCRIBE reply is outstanding), and
 * ends subscribed; then one PUBLISH must arrive exactly once. */
static const char *const churn_rounds[][4] = {
    {"U", "S", NULL},
    {"U", "S", "U", "S"},
    {"S", "U", "S", NULL},
    {"S", NULL},
};
#define NROUNDS 24

typedef struct {
  uv_loop_t loop;
  uv_timer_t deadline, step;
  fo_redis_t *cmd, *sub;
  int subs, unsubs, msgs, nulls, bad_msgs;
  int want_replies, round;
  bool up, published, timed_out, done;
} churn_t;

static void churn_finish(churn_t *s) {
  s->done = true;
  uv_timer_stop(&s->deadline);
  uv_timer_stop(&s->step);
  fo_redis_close(s->cmd);
  fo_redis_close(s->sub);
}

static void churn_deadline(uv_timer_t *t) {
  churn_t *s = t->data;
  s->timed_out = true;
  churn_finish(s);
}

static void on_churn(fo_redis_t *r, redisReply *reply, void *pd) {
  churn_t *s = pd;
  (void)r;
  if (reply == NULL) {
    s->nulls++;
    return;
  }
  assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
  const char *kind = reply->element[0]->str;
  if (strcmp(kind, "subscribe") == 0)
    s->subs++;
  else if (strcmp(kind, "unsubscribe") == 0)
    s->unsubs++;
  else if (strcmp(kind, "message") == 0) {
    char want[32];
    snprintf(want, sizeof(want), "m%d", s->round);
    if (strcmp(reply->element[2]->str, want) == 0)
      s->msgs++;
    else
      s->bad_msgs++;
  }
}

static void churn_sub_state(fo_redis_t *r, bool up, void *ud) {
  churn_t *s = ud;
  if (!up)
    return;
  s->up = true;
  s->want_replies = 1;
  assert_int_equal(fo_redis_command(r, on_churn, s, "SUBSCRIBE fo:test:churn"), 0);
}

static void churn_step(uv_timer_t *t) {
  churn_t *s = t->data;
  if (!s->up || !fo_redis_connected(s->cmd) || s->subs + s->unsubs < s->want_replies)
    return;
  if (!s->published) { /* the round's commands are answered: we are subscribed */
    char m[32];
    snprintf(m, sizeof(m), "m%d", s->round);
    assert_int_equal(fo_redis_command(s->cmd, NULL, NULL, "PUBLISH fo:test:churn %s", m), 0);
    s->published = true;
    return;
  }
  if (s->msgs < s->round + 1)
    return;
  if (++s->round == NROUNDS) {
    churn_finish(s);
    return;
  }
  const char *const *seq = churn_rounds[s->round % 4];
  for (int i = 0; i < 4 && seq[i] != NULL; i++) {
    if (seq[i][0] == 'S')
      assert_int_equal(fo_redis_command(s->sub, on_churn, s, "SUBSCRIBE fo:test:churn"), 0);
    else
      assert_int_equal(fo_redis_command(s->sub, NULL, NULL, "UNSUBSCRIBE fo:test:churn"), 0);
    s->want_replies++;
  }
  s->published = false;
}

static void redis_uv_subscribe_churn_keeps_one_subscription(void **state) {
  (void)state;
  static churn_t s;
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
  uv_timer_start(&s.deadline, churn_deadline, 20000, 0);
  uv_timer_start(&s.step, churn_step, 2, 2);
  fo_redis_opts_t o = {.host = a.host, .port = a.port, .name = "churn-cmd"};
  assert_int_equal(fo_redis_new(&s.loop, &o, NULL, NULL, &s.cmd), 0);
  o.name = "churn-sub";
  o.command_timeout_ms = -1;
  assert_int_equal(fo_redis_new(&s.loop, &o, churn_sub_state, &s, &s.sub), 0);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  free(a.host);
  assert_false(s.timed_out);
  assert_int_equal(s.round, NROUNDS);
  assert_int_equal(s.msgs, NROUNDS); /* each PUBLISH arrived exactly once */
  assert_int_equal(s.bad_msgs, 0);
  assert_int_equal(s.nulls, 1); /* the close: once, not once per channel entry */
  uv_close((uv_handle_t *)&s.deadline, NULL);
  uv_close((uv_handle_t *)&s.step, NULL);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&s.loop), 0);
}

/* ---- AUTH against our own redis-server --requirepass ---- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

static bool port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

static pid_t start_redis(int port, const char *password) {
  char p[16];
  snprintf(p, sizeof(p), "%d", port);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--requirepass", password, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200 && !port_open(port); i++) { /* at most 10 s */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  assert_true(port_open(port));
  return pid;
}

static void stop_redis(pid_t pid) {
  int st;
  kill(pid, SIGTERM);
  waitpid(pid, &st, 0);
}

typedef struct {
  uv_loop_t loop;
  uv_timer_t deadline, step;
  fo_redis_t *good, *bad, *acl, *acl_bad;
  int good_ups, bad_ups, acl_ups, acl_bad_ups;
  int good_value, acl_value, acl_set;
  bool timed_out, bad_connected;
  const fo_redis_opts_t *o;
} auth_t;

static void auth_finish(auth_t *s) {
  s->bad_connected = fo_redis_connected(s->bad);
  uv_timer_stop(&s->deadline);
  uv_timer_stop(&s->step);
  fo_redis_close(s->good);
  fo_redis_close(s->bad);
  fo_redis_close(s->acl);
  fo_redis_close(s->acl_bad);
}

static void auth_deadline(uv_timer_t *t) {
  auth_t *s = t->data;
  s->timed_out = true;
  auth_finish(s);
}

static void on_value(fo_redis_t *r, redisReply *reply, void *pd) {
  (void)r;
  if (reply != NULL && reply->type == REDIS_REPLY_STRING && strcmp(reply->str, "v1") == 0)
    (*(int *)pd)++;
}

static void on_acl_set(fo_redis_t *r, redisReply *reply, void *pd) {
  (void)r;
  if (reply != NULL && reply->type == REDIS_REPLY_STATUS)
    (*(int *)pd)++;
}

static void auth_state(fo_redis_t *r, bool up, void *ud) {
  auth_t *s = ud;
  if (!up)
    return;
  if (r == s->good) {
    s->good_ups++;
    assert_int_equal(fo_redis_command(r, NULL, NULL, "SET fo:test:auth v1"), 0);
    assert_int_equal(fo_redis_command(r, on_value, &s->good_value, "GET fo:test:auth"), 0);
    assert_int_equal(
        fo_redis_command(r, on_acl_set, &s->acl_set, "ACL SETUSER fanout on >pw2 ~* &* +@all"), 0);
  } else if (r == s->acl) {
    s->acl_ups++;
    assert_int_equal(fo_redis_command(r, on_value, &s->acl_value, "GET fo:test:auth"), 0);
  } else if (r == s->bad) {
    s->bad_ups++;
  } else {
    s->acl_bad_ups++;
  }
}

static void auth_step(uv_timer_t *t) {
  auth_t *s = t->data;
  if (s->acl_set > 0 && s->acl == NULL) {
    fo_redis_opts_t o = *s->o;
    o.user = "fanout";
    o.password = "pw2";
    o.name = "acl";
    assert_int_equal(fo_redis_new(&s->loop, &o, auth_state, s, &s->acl), 0);
    o.password = "not-pw2";
    o.name = "acl-bad";
    assert_int_equal(fo_redis_new(&s->loop, &o, auth_state, s, &s->acl_bad), 0);
  }
  if (s->good_value > 0 && s->acl_value > 0 && fo_redis_errors(s->bad) >= 3 && s->acl_bad != NULL &&
      fo_redis_errors(s->acl_bad) >= 3)
    auth_finish(s);
}

static void redis_uv_auth_right_and_wrong_password(void **state) {
  (void)state;
  static auth_t s;
  memset(&s, 0, sizeof(s));
  int port = free_port();
  pid_t pid = start_redis(port, "sekret-pw");
  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.deadline);
  uv_timer_init(&s.loop, &s.step);
  s.deadline.data = s.step.data = &s;
  uv_timer_start(&s.deadline, auth_deadline, 20000, 0);
  uv_timer_start(&s.step, auth_step, 10, 10);
  fo_redis_opts_t o = {.host = "127.0.0.1",
                       .port = port,
                       .backoff_min_ms = 20,
                       .backoff_max_ms = 80,
                       .name = "good",
                       .password = "sekret-pw"};
  s.o = &o;
  assert_int_equal(fo_redis_new(&s.loop, &o, auth_state, &s, &s.good), 0);
  o.name = "bad";
  o.password = "wrong-pw";
  assert_int_equal(fo_redis_new(&s.loop, &o, auth_state, &s, &s.bad), 0);
  o.password = "sekret-pw";
  /* Refused until the AUTH reply is in: nothing may be queued before it. */
  assert_int_equal(fo_redis_command(s.bad, NULL, NULL, "PING"), -ENOTCONN);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  stop_redis(pid);
  assert_false(s.timed_out);
  assert_int_equal(s.good_ups, 1);
  assert_int_equal(s.acl_ups, 1);
  assert_true(s.good_value >= 1 && s.acl_value >= 1);
  assert_int_equal(s.bad_ups, 0); /* never reported connected */
  assert_int_equal(s.acl_bad_ups, 0);
  assert_false(s.bad_connected);
  uv_close((uv_handle_t *)&s.deadline, NULL);
  uv_close((uv_handle_t *)&s.step, NULL);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&s.loop), 0);
}

int main(void) {
  fo_log_set_level(FO_LOG_LVL_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(redis_uv_unreachable_server_retries_quietly),
      cmocka_unit_test(redis_uv_reconnects_and_times_out),
      cmocka_unit_test(redis_uv_stalled_loop_is_not_a_timeout),
      cmocka_unit_test(redis_uv_subscribe_churn_keeps_one_subscription),
      cmocka_unit_test(redis_uv_auth_right_and_wrong_password),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#include "redis_uv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/adapters/libuv.h>

#include "log.h"

struct fo_redis {
  uv_loop_t *loop;
  uv_timer_t timer;        /* timer.data == this: reconnects and timeouts */
  redisAsyncContext *ac;   /* NULL while disconnected; ac->data == this */
  bool connected;
  bool closing;
  fo_redis_opts_t opts;    /* host and name are owned copies */
  int backoff_ms;
  uint64_t next_attempt_ms;
  uint64_t connect_started_ms;
  unsigned pending;        /* replies awaited (subscriptions excluded) */
  uint64_t last_progress_ms;
  fo_redis_state_cb state_cb;
  void *ud;
  unsigned long errors;
  fo_log_ratelimit_t rl;
};

/* One per command: hiredis gives a single privdata, and we need ours too.
 * Subscriptions keep theirs until hiredis is done with the channel. */
typedef struct {
  fo_redis_t *r;
  fo_redis_reply_cb cb;
  void *privdata;
  bool sub;
} cmd_t;

static void schedule_reconnect(fo_redis_t *r) {
  uint64_t now = uv_now(r->loop);
  r->next_attempt_ms = now + (uint64_t)r->backoff_ms;
  r->backoff_ms *= 2;
  if (r->backoff_ms > r->opts.backoff_max_ms)
    r->backoff_ms = r->opts.backoff_max_ms;
}

static void set_disconnected(fo_redis_t *r) {
  bool was = r->connected;
  r->ac = NULL;
  r->connected = false;
  r->pending = 0;
  if (!r->closing)
    schedule_reconnect(r);
  if (was && r->state_cb != NULL)
    r->state_cb(r, false, r->ud);
}

/* Drops the connection now: hiredis runs every pending callback with NULL. */
static void drop(fo_redis_t *r, const char *why) {
  redisAsyncContext *ac = r->ac;
  if (ac == NULL)
    return;
  uint64_t sup = 0;
  if (!r->closing && fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &sup))
    FO_LOG_WARN("redis", "dropping connection", "name=%s reason=\"%s\" suppressed=%llu",
                r->opts.name, why, (unsigned long long)sup);
  ac->data = NULL; /* connect/disconnect callbacks now ignore this context */
  set_disconnected(r);
  redisAsyncFree(ac);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  fo_redis_t *r = ac->data;
  if (r == NULL)
    return;
  if (status != REDIS_OK) {
    /* hiredis frees the context after this callback. */
    r->errors++;
    uint64_t sup = 0;
    if (fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &sup))
      FO_LOG_WARN("redis", "connect failed", "name=%s addr=%s:%d err=\"%s\" suppressed=%llu",
                  r->opts.name, r->opts.host, r->opts.port, ac->errstr,
                  (unsigned long long)sup);
    r->ac = NULL;
    if (!r->closing)
      schedule_reconnect(r);
    return;
  }
  r->connected = true;
  r->backoff_ms = r->opts.backoff_min_ms;
  r->last_progress_ms = uv_now(r->loop);
  FO_LOG_INFO("redis", "connected", "name=%s addr=%s:%d", r->opts.name, r->opts.host,
              r->opts.port);
  if (r->state_cb != NULL)
    r->state_cb(r, true, r->ud);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  fo_redis_t *r = ac->data;
  if (r == NULL)
    return;
  (void)status;
  r->errors++;
  FO_LOG_WARN("redis", "disconnected", "name=%s err=\"%s\"", r->opts.name,
              ac->errstr[0] ? ac->errstr : "closed by server");
  set_disconnected(r); /* hiredis frees the context after this callback */
}

static void start_connect(fo_redis_t *r) {
  redisAsyncContext *ac = redisAsyncConnect(r->opts.host, r->opts.port);
  if (ac == NULL) {
    r->errors++;
    schedule_reconnect(r);
    return;
  }
  if (ac->err != 0) {
    r->errors++;
    uint64_t sup = 0;
    if (fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &sup))
      FO_LOG_WARN("redis", "connect failed", "name=%s err=\"%s\"", r->opts.name, ac->errstr);
    redisAsyncFree(ac);
    schedule_reconnect(r);
    return;
  }
  ac->data = r;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    r->errors++;
    schedule_reconnect(r);
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->ac = ac;
  r->connect_started_ms = uv_now(r->loop);
}

static void on_tick(uv_timer_t *t) {
  fo_redis_t *r = t->data;
  uint64_t now = uv_now(r->loop);
  if (r->closing)
    return;
  if (r->ac == NULL) {
    if (now >= r->next_attempt_ms)
      start_connect(r);
  } else if (!r->connected) {
    if (now - r->connect_started_ms > (uint64_t)r->opts.connect_timeout_ms) {
      r->errors++;
      drop(r, "connect timeout");
    }
  } else if (r->opts.command_timeout_ms > 0 && r->pending > 0 &&
             now - r->last_progress_ms > (uint64_t)r->opts.command_timeout_ms) {
    r->errors++;
    drop(r, "command timeout");
  }
}

int fo_redis_new(uv_loop_t *loop, const fo_redis_opts_t *opts, fo_redis_state_cb state_cb,
                 void *ud, fo_redis_t **out) {
  fo_redis_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return -ENOMEM;
  r->loop = loop;
  r->opts = *opts;
  r->opts.host = strdup(opts->host != NULL ? opts->host : "127.0.0.1");
  r->opts.name = strdup(opts->name != NULL ? opts->name : "redis");
  if (r->opts.host == NULL || r->opts.name == NULL) {
    free((char *)r->opts.host);
    free((char *)r->opts.name);
    free(r);
    return -ENOMEM;
  }
  if (r->opts.connect_timeout_ms <= 0)
    r->opts.connect_timeout_ms = 2000;
  if (r->opts.command_timeout_ms < 0)
    r->opts.command_timeout_ms = 0;
  else if (r->opts.command_timeout_ms == 0 && opts->command_timeout_ms == 0)
    r->opts.command_timeout_ms = 3000;
  if (r->opts.backoff_min_ms <= 0)
    r->opts.backoff_min_ms = 100;
  if (r->opts.backoff_max_ms < r->opts.backoff_min_ms)
    r->opts.backoff_max_ms = r->opts.backoff_min_ms > 5000 ? r->opts.backoff_min_ms : 5000;
  r->backoff_ms = r->opts.backoff_min_ms;
  r->state_cb = state_cb;
  r->ud = ud;
  uv_timer_init(loop, &r->timer);
  r->timer.data = r;
  int tick = r->opts.command_timeout_ms > 0 && r->opts.command_timeout_ms < 400
                 ? r->opts.command_timeout_ms / 4 : 100;
  uv_timer_start(&r->timer, on_tick, (uint64_t)tick, (uint64_t)(tick > 0 ? tick : 1));
  start_connect(r);
  *out = r;
  return 0;
}

static bool is_word(const char *s, size_t n, const char *w) {
  size_t wl = strlen(w);
  return n == wl && strncasecmp(s, w, wl) == 0;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  cmd_t *cmd = privdata;
  fo_redis_t *r = cmd->r;
  redisReply *rep = reply;
  (void)ac;
  if (!cmd->sub) {
    if (r->pending > 0)
      r->pending--;
    r->last_progress_ms = uv_now(r->loop);
  }
  if (cmd->cb != NULL)
    cmd->cb(r, rep, cmd->privdata);
  bool done = !cmd->sub || rep == NULL;
  if (cmd->sub && rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
      rep->element[0]->type == REDIS_REPLY_STRING) {
    const char *kind = rep->element[0]->str;
    size_t klen = rep->element[0]->len;
    done = is_word(kind, klen, "unsubscribe") || is_word(kind, klen, "punsubscribe");
  }
  if (done)
    free(cmd);
}

static int send_cmd(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, const char *verb,
                    size_t verblen, int (*issue)(redisAsyncContext *, cmd_t *, void *),
                    void *arg) {
  if (r->ac == NULL || !r->connected || r->closing)
    return -ENOTCONN;
  /* (P)UNSUBSCRIBE replies go to the subscription's callback: hiredis
   * never calls one given here. */
  bool unsub = is_word(verb, verblen, "unsubscribe") || is_word(verb, verblen, "punsubscribe");
  if (unsub)
    return issue(r->ac, NULL, arg) == REDIS_OK ? 0 : -EIO;
  cmd_t *cmd = malloc(sizeof(*cmd));
  if (cmd == NULL)
    return -ENOMEM;
  cmd->r = r;
  cmd->cb = cb;
  cmd->privdata = privdata;
  cmd->sub = is_word(verb, verblen, "subscribe") || is_word(verb, verblen, "psubscribe");
  if (issue(r->ac, cmd, arg) != REDIS_OK) {
    free(cmd);
    return -EIO;
  }
  if (!cmd->sub) {
    if (r->pending++ == 0)
      r->last_progress_ms = uv_now(r->loop);
  }
  return 0;
}

typedef struct {
  const char *fmt;
  va_list *ap;
} fmt_arg_t;

static int issue_fmt(redisAsyncContext *ac, cmd_t *cmd, void *arg) {
  fmt_arg_t *fa = arg;
  va_list ap;
  va_copy(ap, *fa->ap);
  int rc = redisvAsyncCommand(ac, cmd != NULL ? on_reply : NULL, cmd, fa->fmt, ap);
  va_end(ap);
  return rc;
}

int fo_redis_command(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fmt_arg_t fa = {fmt, &ap};
  size_t verblen = strcspn(fmt, " ");
  int rc = send_cmd(r, cb, privdata, fmt, verblen, issue_fmt, &fa);
  va_end(ap);
  return rc;
}

typedef struct {
  int argc;
  const char **argv;
  const size_t *argvlen;
} argv_arg_t;

static int issue_argv(redisAsyncContext *ac, cmd_t *cmd, void *arg) {
  argv_arg_t *aa = arg;
  return redisAsyncCommandArgv(ac, cmd != NULL ? on_reply : NULL, cmd, aa->argc, aa->argv,
                               aa->argvlen);
}

int fo_redis_command_argv(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, int argc,
                          const char **argv, const size_t *argvlen) {
  if (argc < 1)
    return -EINVAL;
  argv_arg_t aa = {argc, argv, argvlen};
  size_t verblen = argvlen != NULL ? argvlen[0] : strlen(argv[0]);
  return send_cmd(r, cb, privdata, argv[0], verblen, issue_argv, &aa);
}

bool fo_redis_connected(const fo_redis_t *r) { return r->connected; }

void *fo_redis_userdata(const fo_redis_t *r) { return r->ud; }

unsigned long fo_redis_errors(const fo_redis_t *r) { return r->errors; }

static void on_timer_closed(uv_handle_t *h) {
  fo_redis_t *r = h->data;
  free((char *)r->opts.host);
  free((char *)r->opts.name);
  free(r);
}

void fo_redis_close(fo_redis_t *r) {
  if (r == NULL || r->closing)
    return;
  r->closing = true;
  r->state_cb = NULL; /* the owner is going away: no state calls from here on */
  drop(r, "closing");
  uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

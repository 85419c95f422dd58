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
  uv_timer_t timer;      /* timer.data == this: reconnects and timeouts */
  redisAsyncContext *ac; /* NULL while disconnected; ac->data == this */
  bool connected;
  bool closing;
  fo_redis_opts_t opts; /* host, name, user and password are owned copies */
  int backoff_ms;
  uint64_t next_attempt_ms;
  uint64_t connect_started_ms;
  unsigned pending; /* replies awaited (subscriptions excluded) */
  uint64_t last_progress_ms;
  uint64_t last_tick_ms; /* when on_tick last ran: a longer gap is the loop's stall */
  fo_redis_state_cb state_cb;
  void *ud;
  unsigned long errors;
  fo_log_ratelimit_t rl;
  unsigned gen;     /* bumped for every new context */
  struct cmd *subs; /* subscription records, freed in on_timer_closed */
};

/* hiredis gives a single privdata per command, and we need ours too.
 * Ordinary commands get one each, freed when their reply (or NULL) comes.
 * (P)SUBSCRIBE gets the one long-lived record of its (cb, privdata) pair
 * from r->subs, shared by every channel and every connection: hiredis keeps
 * one privdata per channel, replaces it on a re-SUBSCRIBE, and keeps using
 * it after an "unsubscribe" reply when a SUBSCRIBE is still pending
 * (pending_subs), so no reply tells us it is done with it. These are freed
 * only after redisAsyncFree has run (fo_redis_close, then on_timer_closed). */
typedef struct cmd {
  fo_redis_t *r;
  fo_redis_reply_cb cb;
  void *privdata;
  bool sub;
  unsigned null_gen; /* sub: the context whose NULL reply was passed on */
  struct cmd *next;  /* sub: r->subs list */
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

/* Drops the connection now: hiredis runs every pending callback with NULL
 * (after the current callback returns when called from one). why == NULL:
 * the caller has logged already. */
static void drop(fo_redis_t *r, const char *why) {
  redisAsyncContext *ac = r->ac;
  if (ac == NULL)
    return;
  uint64_t sup = 0;
  if (!r->closing && why != NULL && fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &sup))
    FO_LOG_WARN("redis", "dropping connection", "name=%s reason=\"%s\" suppressed=%llu",
                r->opts.name, why, (unsigned long long)sup);
  ac->data = NULL; /* connect/disconnect callbacks now ignore this context */
  set_disconnected(r);
  redisAsyncFree(ac);
}

static void set_connected(fo_redis_t *r) {
  r->connected = true;
  r->backoff_ms = r->opts.backoff_min_ms;
  r->last_progress_ms = uv_now(r->loop);
  FO_LOG_INFO("redis", "connected", "name=%s addr=%s:%d auth=%s", r->opts.name, r->opts.host,
              r->opts.port, r->opts.password != NULL ? "yes" : "no");
  if (r->state_cb != NULL)
    r->state_cb(r, true, r->ud);
}

/* The AUTH reply: only now is the connection usable. A refused AUTH is a
 * failed connect: counted, logged (Redis' error text, never the password),
 * dropped and retried with backoff; `connected` stays false meanwhile. */
static void on_auth(redisAsyncContext *ac, void *reply, void *privdata) {
  fo_redis_t *r = privdata;
  redisReply *rep = reply;
  if (ac->data != r || r->ac != ac)
    return; /* dropped or closing: that path has counted and logged */
  if (rep == NULL)
    return; /* disconnected: on_disconnect follows */
  if (rep->type == REDIS_REPLY_STATUS || rep->type == REDIS_REPLY_STRING) {
    set_connected(r);
    return;
  }
  r->errors++;
  uint64_t sup = 0;
  if (fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &sup))
    FO_LOG_ERROR("redis", "authentication failed",
                 "name=%s addr=%s:%d user=%s err=\"%.200s\" suppressed=%llu", r->opts.name,
                 r->opts.host, r->opts.port, r->opts.user != NULL ? r->opts.user : "default",
                 rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply",
                 (unsigned long long)sup);
  drop(r, NULL);
}

/* AUTH [user] password, the first command on a new connection (hiredis
 * 0.14.1 has no option for it). No other command can be queued before it:
 * send_cmd refuses while `connected` is false. */
static void send_auth(fo_redis_t *r) {
  const char *argv[3];
  size_t argvlen[3];
  int argc = 0;
  argv[argc] = "AUTH";
  argvlen[argc++] = 4;
  if (r->opts.user != NULL) {
    argv[argc] = r->opts.user;
    argvlen[argc++] = strlen(r->opts.user);
  }
  argv[argc] = r->opts.password;
  argvlen[argc++] = strlen(r->opts.password);
  if (redisAsyncCommandArgv(r->ac, on_auth, r, argc, argv, argvlen) != REDIS_OK) {
    r->errors++;
    drop(r, "cannot send AUTH");
  }
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
                  r->opts.name, r->opts.host, r->opts.port, ac->errstr, (unsigned long long)sup);
    r->ac = NULL;
    if (!r->closing)
      schedule_reconnect(r);
    return;
  }
  if (r->opts.password != NULL) {
    send_auth(r);
    return;
  }
  set_connected(r);
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
  r->gen++;
  r->connect_started_ms = uv_now(r->loop);
}

static void on_tick(uv_timer_t *t) {
  fo_redis_t *r = t->data;
  uint64_t now = uv_now(r->loop), tick = uv_timer_get_repeat(t);
  if (r->closing)
    return;
  /* Timers run before the loop polls: after a turn that outlasted the
   * timeout (a server closing 18,000 sockets at once), the commands of that
   * turn are not even written yet. Time the loop was stalled is not Redis's. */
  if (now - r->last_tick_ms > 2 * tick) {
    uint64_t stalled = now - r->last_tick_ms - tick;
    r->last_progress_ms = r->last_progress_ms + stalled < now ? r->last_progress_ms + stalled : now;
    r->connect_started_ms =
        r->connect_started_ms + stalled < now ? r->connect_started_ms + stalled : now;
  }
  r->last_tick_ms = now;
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

static void free_opts(fo_redis_t *r) {
  free((char *)r->opts.host);
  free((char *)r->opts.name);
  free((char *)r->opts.user);
  if (r->opts.password != NULL) {
    explicit_bzero((char *)r->opts.password, strlen(r->opts.password));
    free((char *)r->opts.password);
  }
}

int fo_redis_new(uv_loop_t *loop, const fo_redis_opts_t *opts, fo_redis_state_cb state_cb, void *ud,
                 fo_redis_t **out) {
  fo_redis_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return -ENOMEM;
  r->loop = loop;
  r->opts = *opts;
  r->opts.host = strdup(opts->host != NULL ? opts->host : "127.0.0.1");
  r->opts.name = strdup(opts->name != NULL ? opts->name : "redis");
  /* An empty password means none; a user without a password is ignored. */
  bool auth = opts->password != NULL && opts->password[0] != '\0';
  r->opts.password = auth ? strdup(opts->password) : NULL;
  r->opts.user = auth && opts->user != NULL && opts->user[0] != '\0' ? strdup(opts->user) : NULL;
  if (r->opts.host == NULL || r->opts.name == NULL || (auth && r->opts.password == NULL) ||
      (auth && opts->user != NULL && opts->user[0] != '\0' && r->opts.user == NULL)) {
    free_opts(r);
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
                 ? r->opts.command_timeout_ms / 4
                 : 100;
  r->last_tick_ms = uv_now(loop);
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
  if (cmd->sub) {
    /* A lost connection calls us with NULL once per channel still known to
     * hiredis: the owner hears it once per record and connection. */
    if (rep == NULL) {
      if (cmd->null_gen == r->gen)
        return;
      cmd->null_gen = r->gen;
    }
    if (cmd->cb != NULL)
      cmd->cb(r, rep, cmd->privdata);
    return; /* the record stays: see cmd_t */
  }
  if (r->pending > 0)
    r->pending--;
  r->last_progress_ms = uv_now(r->loop);
  if (cmd->cb != NULL)
    cmd->cb(r, rep, cmd->privdata);
  free(cmd);
}

/* The subscription record of (cb, privdata), created on first use. Owners
 * use a fixed handful of pairs, so the list stays short. */
static cmd_t *sub_record(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata) {
  for (cmd_t *c = r->subs; c != NULL; c = c->next)
    if (c->cb == cb && c->privdata == privdata)
      return c;
  cmd_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->r = r;
  c->cb = cb;
  c->privdata = privdata;
  c->sub = true;
  c->null_gen = r->gen - 1;
  c->next = r->subs;
  r->subs = c;
  return c;
}

static int send_cmd(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, const char *verb,
                    size_t verblen, int (*issue)(redisAsyncContext *, cmd_t *, void *), void *arg) {
  if (r->ac == NULL || !r->connected || r->closing)
    return -ENOTCONN;
  /* (P)UNSUBSCRIBE replies go to the subscription's callback: hiredis
   * never calls one given here. */
  bool unsub = is_word(verb, verblen, "unsubscribe") || is_word(verb, verblen, "punsubscribe");
  if (unsub)
    return issue(r->ac, NULL, arg) == REDIS_OK ? 0 : -EIO;
  if (is_word(verb, verblen, "subscribe") || is_word(verb, verblen, "psubscribe")) {
    cmd_t *rec = sub_record(r, cb, privdata);
    if (rec == NULL)
      return -ENOMEM;
    return issue(r->ac, rec, arg) == REDIS_OK ? 0 : -EIO; /* rec stays on r->subs */
  }
  cmd_t *cmd = calloc(1, sizeof(*cmd));
  if (cmd == NULL)
    return -ENOMEM;
  cmd->r = r;
  cmd->cb = cb;
  cmd->privdata = privdata;
  if (issue(r->ac, cmd, arg) != REDIS_OK) {
    free(cmd);
    return -EIO;
  }
  if (r->pending++ == 0)
    r->last_progress_ms = uv_now(r->loop);
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

bool fo_redis_connected(const fo_redis_t *r) {
  return r->connected;
}

void *fo_redis_userdata(const fo_redis_t *r) {
  return r->ud;
}

unsigned long fo_redis_errors(const fo_redis_t *r) {
  return r->errors;
}

/* Runs after drop() in fo_redis_close: redisAsyncFree is done with every
 * subscription record (it runs deferred frees before returning to the loop). */
static void on_timer_closed(uv_handle_t *h) {
  fo_redis_t *r = h->data;
  while (r->subs != NULL) {
    cmd_t *c = r->subs;
    r->subs = c->next;
    free(c);
  }
  free_opts(r);
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

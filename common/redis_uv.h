/* One hiredis async connection on the libuv loop, with what hiredis 0.14.1
 * lacks: reconnect with capped exponential backoff, a command timeout (a hung
 * server is disconnected so callbacks fire with NULL), and a state callback
 * (connected/disconnected) so owners can re-register or resubscribe. */
#ifndef FO_REDIS_UV_H
#define FO_REDIS_UV_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct fo_redis fo_redis_t;

/* reply is NULL when the command failed (disconnected, timed out, never
 * sent); the reply is freed by hiredis after the callback returns. For
 * (P)SUBSCRIBE the callback runs for every message pushed on that channel. */
typedef void (*fo_redis_reply_cb)(fo_redis_t *r, redisReply *reply, void *privdata);
typedef void (*fo_redis_state_cb)(fo_redis_t *r, bool connected, void *ud);

typedef struct {
  const char *host;
  int port;
  int connect_timeout_ms; /* default 2000 */
  int command_timeout_ms; /* default 3000; 0 disables */
  int backoff_min_ms;     /* default 100 */
  int backoff_max_ms;     /* default 5000 */
  const char *name;       /* for logs, e.g. "registry" */
  const char *password;   /* NULL or "": no AUTH. Else AUTH is sent first on every
                             * connection; a refused AUTH is a failed connect. */
  const char *user;       /* Redis 6 ACL user for AUTH, NULL or "": none */
} fo_redis_opts_t;

/* Creates and starts connecting. Returns 0 or -ENOMEM. */
int fo_redis_new(uv_loop_t *loop, const fo_redis_opts_t *opts, fo_redis_state_cb state_cb, void *ud,
                 fo_redis_t **out);
/* Queues a command (pipelined with everything else queued this loop turn).
 * Returns 0, or -ENOTCONN when not connected (cb is then NOT called).
 * (P)SUBSCRIBE: (cb, privdata) is kept for as long as r lives and shared by
 * every channel subscribed with the same pair, so use a fixed few pairs. It
 * gets every push on those channels, including (p)unsubscribe replies, and
 * NULL once when the connection is lost. (P)UNSUBSCRIBE takes no callback:
 * its replies go to the subscription's. */
int fo_redis_command(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, const char *fmt, ...);
int fo_redis_command_argv(fo_redis_t *r, fo_redis_reply_cb cb, void *privdata, int argc,
                          const char **argv, const size_t *argvlen);
bool fo_redis_connected(const fo_redis_t *r);
void *fo_redis_userdata(const fo_redis_t *r);
/* Disconnects (pending callbacks get NULL) and frees from close callbacks. */
void fo_redis_close(fo_redis_t *r);

/* Counters for metrics: errors = failed connects + timeouts + disconnects. */
unsigned long fo_redis_errors(const fo_redis_t *r);

#endif

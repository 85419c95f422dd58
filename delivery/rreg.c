/* The connection registry in Redis and the Pub/Sub subscriber (L4, beside
 * router.c; neither calls the other). What arrives on our channels goes up
 * through srv->rreg_ev (server.c hands it to the router), and so does
 * "Redis is back". Keys (schemas/redis.md):
 *   {prefix}ws:connections:{user}  hash conn-id -> server-id, TTL 300 s
 *   {prefix}ws:alive:{server}      liveness key, short TTL, refreshed often
 *   {prefix}ws:server:{server}     our Pub/Sub channel (second connection)
 * New connections are collected per user during a loop turn and sent from
 * the server's check handle as one HSET (every new connection of the user,
 * 64 fields per command) and one EXPIRE; a closed connection is HDELed at
 * once. A heartbeat pass walks every local user in chunks and re-sends
 * HSET (all its connections) + EXPIRE, one EVAL per chunk and node (see
 * refresh_lua; at most EVAL_USERS_MAX users each). After Redis comes
 * back, the same pass re-registers everything.
 * No command's failure is dropped: every one is counted in redis_errors; a
 * refused HSET or EXPIRE starts a re-registration pass after a short,
 * backed-off delay (retry_timer) instead of waiting for the next refresh,
 * and a refused HDEL is sent again from the same timer.
 * In room mode "redis" the Pub/Sub connection also follows the local rooms:
 * SUBSCRIBE {prefix}ws:room:{room} on the first local join, UNSUBSCRIBE on the
 * last leave, never a SUBSCRIBE while an UNSUBSCRIBE of that channel is in
 * flight (see unsub_t).
 * Several Redis nodes (--redis A,B,...: shards, schemas/redis-shards.md):
 * one command connection per node, and one Pub/Sub connection on the node
 * of our id (and on every node in room mode "redis", for the rooms that
 * hash there). A user's HSET/EXPIRE/HDEL go to the user's node, our
 * liveness key and channel live on our node. The heartbeat pass runs per
 * node (each node's commands pipelined on its connection), and a node that
 * comes back (empty, maybe) gets a pass of its own at once; our own node's
 * return re-registers everything, since routers may have dropped our
 * entries on every node while our liveness key was missing. */
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_int.h"
#include "digits.h"
#include "rreg.h"
#include "hub.h"
#include "log.h"
#include "redis_uv.h"
#include "rkeys.h"
#include "rshard.h"

#define REFRESH_CHUNK     500
/* A pass sends its next chunk only while fewer registration commands than
 * this await their reply on the node: without it a pass over 15,000 users
 * queued all of them within a few milliseconds (30,000 commands, their
 * buffers and callbacks at once, kept by malloc afterwards). */
#define PASS_INFLIGHT_MAX (4 * REFRESH_CHUNK)
#define RETRY_MIN_MS      500
/* Users a pass's EVAL carries at most: a script runs alone on its node,
 * and at ~7 us a user in Redis, 128 keep other servers' routing lookups
 * from waiting more than about a millisecond behind one. */
#define EVAL_USERS_MAX    128
/* FO_REGISTRY_TTL_S as text, for the EXPIRE argv (a plain number literal). */
#define TEXT_(x)          #x
#define TEXT(x)           TEXT_(x)
#define TTL_TEXT          TEXT(FO_REGISTRY_TTL_S)
#define HDEL_RETRY_MAX    10000 /* failed HDELs held for a resend; past it the TTL cleans up */

/* A user with connections to register at the end of this loop turn. By
 * name, not a fo_user_t pointer: the user may be gone by then. */
typedef struct {
  uint32_t len;
  char name[];
} pend_t;

/* A HDEL to send again (its reply was an error or the connection dropped). */
typedef struct hdel {
  struct hdel *next;
  uint32_t node; /* the user's Redis node */
  uint32_t klen, ilen;
  char data[]; /* key, then the connection id */
} hdel_t;

/* Strings back to back, for one command's argv: text owns them, lens[i]
 * is the i-th one's length. */
typedef struct {
  fo_sb_t text;
  uint32_t *lens; /* owned */
  uint32_t n, cap;
} strs_t;

/* One Redis node: its connections and its share of the heartbeat pass. */
typedef struct {
  fo_rreg_t *rr;
  uint32_t idx;
  fo_redis_t *cmd;
  fo_redis_t *sub;        /* NULL: nothing of ours is subscribed on this node */
  uv_timer_t chunk_timer; /* continues this node's pass in chunks */
  uint32_t cursor;
  bool pass_running;
  uint32_t reg_inflight; /* HSET/EXPIRE sent on cmd, not answered yet (a pass call
                          * counts two for each user it carries) */
  fo_map_t unsubs;       /* unsub_t by room name, on this node's current sub connection */
  strs_t bkeys, bargs;   /* the pass's chunk for this node (pass_add_user); freed when
                          * the pass ends */
} rnode_t;

struct fo_rreg {
  fo_server_t *srv;
  rnode_t *nodes; /* cfg->redis.n of them (owned) */
  uint32_t nnodes;
  uint32_t self;   /* the node of our id: liveness key and channel */
  fo_redis_t *cmd; /* nodes[self].cmd */
  fo_redis_t *sub; /* nodes[self].sub */
  uv_timer_t alive_timer;
  uv_timer_t refresh_timer; /* periodic pass start */
  uv_timer_t retry_timer;   /* a pass and the HDELs after a refused command */
  uint64_t retry_ms;        /* next retry delay: doubles while commands fail */
  bool retry_pass;          /* a registration was refused: pass at retry_timer */
  hdel_t *hdels;            /* HDELs to resend (owned); hdels_n of them */
  uint32_t hdels_n;
  bool draining; /* fo__rreg_drain ran: no liveness key, no more passes */
  bool sub_ready;
  bool sub_was_ready; /* our channel was subscribed once: a new SUBSCRIBE is a return */
  bool resync_due;    /* ... after which Pub/Sub may have lost messages (maybe_resync) */
  bool trim_due;      /* a periodic pass started: malloc_trim once it is answered */
  int open_handles;
  fo_sb_t key;
  char *channel; /* our server channel name */
  size_t channel_len;
  char *room_prefix; /* "{prefix}ws:room:" */
  size_t room_prefix_len;
  int64_t *up_gauge;
  uint64_t last_errors;
  pend_t **pend; /* users with connections not registered yet (owned) */
  uint32_t npend, pend_cap;
};

/* A room channel whose UNSUBSCRIBE is in flight on its node's sub. A SUBSCRIBE sent
 * before its reply is where hiredis 0.14.1 gets subtle (pending_subs keeps
 * the channel's callback past the "unsubscribe" reply), and the order of
 * the two at the server decides whether we end up subscribed. So none is
 * sent: a join meanwhile leaves the room in srv->rooms, and the reply
 * re-subscribes if it is there. One entry per UNSUBSCRIBE in flight, freed
 * with its reply or when the connection goes (a reconnect re-subscribes
 * from srv->rooms), so churn does not grow it. */
typedef struct {
  fo_mapent_t ent;
  char name[];
} unsub_t;

struct fo_redis *fo__rreg_cmd(fo_server_t *srv, uint32_t node) {
  fo_rreg_t *rr = srv->rreg;
  return rr != NULL && node < rr->nnodes ? rr->nodes[node].cmd : NULL;
}

/* The node of a user or room name. */
static rnode_t *node_of(fo_rreg_t *rr, const char *name, size_t len) {
  return &rr->nodes[fo_rshard_node(name, len, rr->nnodes)];
}

/* Ready when our own node is: our channel is there. Other nodes down cost
 * only their users (/readyz lists them). */
bool fo__rreg_ready(fo_server_t *srv) {
  fo_rreg_t *rr = srv->rreg;
  return rr != NULL && fo_redis_connected(rr->cmd) && rr->sub_ready;
}

static bool node_up(const fo_rreg_t *rr, const rnode_t *n) {
  return fo_redis_connected(n->cmd) && (n->sub == NULL || fo_redis_connected(n->sub)) &&
         (n->idx != rr->self || rr->sub_ready);
}

/* redis_up: every node up; redis_nodes_down: how many are not. */
static void update_up(fo_rreg_t *rr) {
  int64_t down = 0;
  for (uint32_t i = 0; i < rr->nnodes; i++)
    down += !node_up(rr, &rr->nodes[i]);
  *rr->srv->m.redis_up = down == 0;
  *rr->srv->m.redis_nodes_down = down;
}

void fo__rreg_down_nodes(fo_server_t *srv, fo_sb_t *out) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL)
    return;
  for (uint32_t i = 0; i < rr->nnodes; i++) {
    if (node_up(rr, &rr->nodes[i]))
      continue;
    const fo_addr_t *a = &srv->cfg->redis.v[i];
    fo_sb_printf(out, "redis node %u %s%s%s:%d down%s\n", i, strchr(a->host, ':') ? "[" : "",
                 a->host, strchr(a->host, ':') ? "]" : "", a->port,
                 i == rr->self ? " (this server's channel)" : "");
  }
}

static void count_error(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  fo_server_t *srv = privdata;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
    (*srv->m.redis_errors)++;
}

/* A command that could not even be queued (-ENOTCONN, -ENOMEM): counted
 * like a failed reply. Returns rc. */
static int sent(fo_rreg_t *rr, int rc) {
  if (rc != 0)
    (*rr->srv->m.redis_errors)++;
  return rc;
}

static void on_retry(uv_timer_t *t);

/* Something failed: retry soon, later each time it keeps failing. */
static void retry_later(fo_rreg_t *rr) {
  if (rr->draining || uv_is_active((uv_handle_t *)&rr->retry_timer))
    return;
  uint64_t max = (uint64_t)rr->srv->cfg->registry_refresh_ms;
  if (rr->retry_ms == 0)
    rr->retry_ms = RETRY_MIN_MS < max ? RETRY_MIN_MS : max;
  uv_timer_start(&rr->retry_timer, on_retry, rr->retry_ms, 0);
  rr->retry_ms = rr->retry_ms * 2 < max ? rr->retry_ms * 2 : max;
}

/* HSET / EXPIRE of a registration. NULL (connection lost) needs nothing
 * more: the pass after reconnecting re-registers everything. A refused one
 * would otherwise wait for the next refresh pass (a minute by default)
 * while the user's messages from other servers miss this connection. */
static void maybe_trim(fo_rreg_t *rr);

static void on_reg_reply(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  rnode_t *n = privdata;
  fo_rreg_t *rr = n->rr;
  n->reg_inflight--;
  if (n->reg_inflight == 0 && rr->trim_due)
    maybe_trim(rr);
  if (reply != NULL && reply->type != REDIS_REPLY_ERROR) {
    if (!uv_is_active((uv_handle_t *)&rr->retry_timer))
      rr->retry_ms = 0; /* Redis takes them again: the next failure retries fast */
    return;
  }
  (*rr->srv->m.redis_errors)++;
  if (reply != NULL) {
    rr->retry_pass = true;
    retry_later(rr);
  }
}

static void reg_sent(fo_rreg_t *rr, rnode_t *n, int rc) {
  if (rc == 0)
    n->reg_inflight++;
  if (sent(rr, rc) != 0 && fo_redis_connected(n->cmd)) {
    rr->retry_pass = true;
    retry_later(rr);
  }
}

/* HSET key c1 sid c2 sid ... (at most MAXF fields a command) for the open
 * connections of user (only those still pending when only_pending), then
 * EXPIRE key. */
static void send_user(fo_rreg_t *rr, fo_user_t *user, bool only_pending) {
  fo_server_t *srv = rr->srv;
  size_t ulen;
  const char *name = fo__user_name(user, &ulen);
  rnode_t *n = node_of(rr, name, ulen);
  fo_redis_t *cmd = n->cmd;
  enum { MAXF = 64 };
  const char *argv[2 + 2 * MAXF];
  size_t argvlen[2 + 2 * MAXF];
  char ids[MAXF][FO_CONN_ID_LEN];
  fo_sb_reset(&rr->key);
  fo_rkey_connections(&rr->key, srv->cfg->redis_prefix, name, ulen);
  if (rr->key.oom)
    return;
  const char *sid = srv->cfg->server_id;
  size_t sidlen = strlen(sid);
  argv[0] = "HSET";
  argvlen[0] = 4;
  argv[1] = rr->key.data;
  argvlen[1] = rr->key.len;
  int argc = 2, k = 0, total = 0;
  for (fo_conn_t *c = fo__user_conns(user); c != NULL; c = c->user_next) {
    if (c->state != FO_CONN_OPEN || (only_pending && !c->reg_pending))
      continue;
    c->reg_pending = 0;
    fo__conn_id_str(c, ids[k], sizeof(ids[k]));
    argv[argc] = ids[k];
    argvlen[argc++] = strlen(ids[k]);
    argv[argc] = sid;
    argvlen[argc++] = sidlen;
    total++;
    if (++k == MAXF) {
      reg_sent(rr, n, fo_redis_command_argv(cmd, on_reg_reply, n, argc, argv, argvlen));
      argc = 2;
      k = 0;
    }
  }
  if (k > 0)
    reg_sent(rr, n, fo_redis_command_argv(cmd, on_reg_reply, n, argc, argv, argvlen));
  if (total > 0) {
    /* By argv with the TTL's text made at compile time: the format
     * version ran vsnprintf for the %d, for every user every minute. */
    const char *eargv[3] = {"EXPIRE", rr->key.data, TTL_TEXT};
    size_t eargvlen[3] = {6, rr->key.len, sizeof(TTL_TEXT) - 1};
    reg_sent(rr, n, fo_redis_command_argv(cmd, on_reg_reply, n, 3, eargv, eargvlen));
  }
}

/* The heartbeat pass sends each chunk of a node's users as one script
 * call (DESIGN: the registry is "refreshed by heartbeats, batched per
 * server, not one command per connection"): the HSET and EXPIRE of every
 * user the same as send_user's, but one command and one reply per chunk
 * instead of two per user, whose formatting, callbacks and replies were
 * most of an idle server's registry CPU. EVAL, not EVALSHA: Redis caches
 * the compiled script by its hash, and a flushed cache needs no second
 * round. KEYS: the users' keys; ARGV: server id, TTL, then for each key its
 * number of connection ids and the ids. */
static const char refresh_lua[] =
    "local sid, ttl, a = ARGV[1], ARGV[2], 3\n"
    "for i = 1, #KEYS do\n"
    "  local n = tonumber(ARGV[a])\n"
    "  for j = a + 1, a + n do redis.call('HSET', KEYS[i], ARGV[j], sid) end\n"
    "  redis.call('EXPIRE', KEYS[i], ttl)\n"
    "  a = a + n + 1\n"
    "end\n"
    "return #KEYS\n";

static void strs_add(strs_t *s, const char *p, size_t len) {
  if (s->n == s->cap) {
    uint32_t cap = s->cap ? s->cap * 2 : 256;
    uint32_t *lens = realloc(s->lens, cap * sizeof(*lens));
    if (lens == NULL) {
      s->text.oom = 1;
      return;
    }
    s->lens = lens;
    s->cap = cap;
  }
  if (fo_sb_append(&s->text, p, len) == 0)
    s->lens[s->n++] = (uint32_t)len;
}

static void strs_free(strs_t *s) {
  fo_sb_free(&s->text);
  free(s->lens);
  *s = (strs_t){0};
}

/* What a pass call answers for: 2 * users registration commands. */
typedef struct {
  rnode_t *n;
  uint32_t cmds;
} pass_call_t;

static void on_pass_reply(fo_redis_t *r, redisReply *reply, void *privdata) {
  pass_call_t *pc = privdata;
  rnode_t *n = pc->n;
  n->reg_inflight -= pc->cmds - 1; /* on_reg_reply takes off the last one */
  free(pc);
  on_reg_reply(r, reply, n);
}

/* Adds user's open connections to node n's chunk. */
static void pass_add_user(rnode_t *n, fo_user_t *user, const char *name, size_t ulen) {
  fo_rreg_t *rr = n->rr;
  fo_server_t *srv = rr->srv;
  uint32_t cnt = 0;
  for (fo_conn_t *c = fo__user_conns(user); c != NULL; c = c->user_next)
    cnt += c->state == FO_CONN_OPEN;
  if (cnt == 0)
    return;
  fo_sb_reset(&rr->key);
  fo_rkey_connections(&rr->key, srv->cfg->redis_prefix, name, ulen);
  if (rr->key.oom)
    return;
  strs_add(&n->bkeys, rr->key.data, rr->key.len);
  char num[20];
  strs_add(&n->bargs, num, fo_put_dec(num, cnt)); /* per user: no snprintf (see above) */
  for (fo_conn_t *c = fo__user_conns(user); c != NULL; c = c->user_next) {
    if (c->state != FO_CONN_OPEN)
      continue;
    c->reg_pending = 0;
    char id[FO_CONN_ID_LEN];
    fo__conn_id_str(c, id, sizeof(id));
    strs_add(&n->bargs, id, strlen(id));
  }
}

/* Sends node n's chunk as one EVAL. */
static void pass_send(rnode_t *n) {
  fo_rreg_t *rr = n->rr;
  uint32_t nk = n->bkeys.n, na = n->bargs.n;
  if (nk == 0)
    return;
  size_t argc = 3 + (size_t)nk + 2 + na;
  const char **argv = malloc(argc * sizeof(*argv));
  size_t *argvlen = malloc(argc * sizeof(*argvlen));
  pass_call_t *pc = malloc(sizeof(*pc));
  int rc = -ENOMEM;
  if (argv != NULL && argvlen != NULL && pc != NULL && !n->bkeys.text.oom && !n->bargs.text.oom) {
    char nkeys[16];
    const char *sid = rr->srv->cfg->server_id;
    size_t k = 0;
    argv[k] = "EVAL", argvlen[k++] = 4;
    argv[k] = refresh_lua, argvlen[k++] = sizeof(refresh_lua) - 1;
    argv[k] = nkeys, argvlen[k++] = (size_t)snprintf(nkeys, sizeof(nkeys), "%" PRIu32, nk);
    const char *p = n->bkeys.text.data;
    for (uint32_t i = 0; i < nk; p += n->bkeys.lens[i++])
      argv[k] = p, argvlen[k++] = n->bkeys.lens[i];
    argv[k] = sid, argvlen[k++] = strlen(sid);
    argv[k] = TTL_TEXT, argvlen[k++] = sizeof(TTL_TEXT) - 1;
    p = n->bargs.text.data;
    for (uint32_t i = 0; i < na; p += n->bargs.lens[i++])
      argv[k] = p, argvlen[k++] = n->bargs.lens[i];
    pc->n = n;
    pc->cmds = 2 * nk;
    rc = fo_redis_command_argv(n->cmd, on_pass_reply, pc, (int)argc, argv, argvlen);
  }
  if (rc == 0) {
    n->reg_inflight += pc->cmds - 1; /* reg_sent adds the last one */
    pc = NULL;
  }
  free(pc);
  free(argv);
  free(argvlen);
  reg_sent(rr, n, rc); /* a failure is counted and retried by a pass soon */
  fo_sb_reset(&n->bkeys.text);
  fo_sb_reset(&n->bargs.text);
  n->bkeys.text.oom = n->bargs.text.oom = 0;
  n->bkeys.n = n->bargs.n = 0;
}

/* A pass of node n collects the users that live on n (all of them with
 * one node) into its chunk. */
static void register_user(fo_user_t *user, void *ud) {
  rnode_t *n = ud;
  size_t ulen;
  const char *name = fo__user_name(user, &ulen);
  if (n->rr->nnodes > 1 && node_of(n->rr, name, ulen) != n)
    return;
  pass_add_user(n, user, name, ulen);
  if (n->bkeys.n >= EVAL_USERS_MAX)
    pass_send(n);
}

static bool pass_running(const fo_rreg_t *rr) {
  for (uint32_t i = 0; i < rr->nnodes; i++)
    if (rr->nodes[i].pass_running)
      return true;
  return false;
}

/* Our channel is subscribed again after it was lost, and every node's
 * registration pass has been sent: what was PUBLISHed to us meanwhile is
 * gone (Pub/Sub is at most once), and the layer above can now replay it
 * from the log (stream.c) behind a barrier that sees these registrations. */
static void maybe_resync(fo_rreg_t *rr) {
  fo_server_t *srv = rr->srv;
  if (!rr->resync_due || !rr->sub_ready || pass_running(rr) || srv->draining)
    return;
  rr->resync_due = false;
  if (srv->rreg_ev.resync != NULL)
    srv->rreg_ev.resync(srv);
}

/* The pass of node n walked its last chunk. */
static void pass_done(rnode_t *n) {
  n->pass_running = false;
  strs_free(&n->bkeys);
  strs_free(&n->bargs);
  maybe_resync(n->rr);
}

static void on_chunk(uv_timer_t *t) {
  rnode_t *n = t->data;
  if (n->reg_inflight > PASS_INFLIGHT_MAX && fo_redis_connected(n->cmd)) {
    uv_timer_start(&n->chunk_timer, on_chunk, 1, 0); /* Redis is behind: wait for it */
    return;
  }
  n->cursor = fo__registry_each_user(n->rr->srv, n->cursor, REFRESH_CHUNK, register_user, n);
  pass_send(n);
  if (n->cursor == 0 || !fo_redis_connected(n->cmd)) {
    pass_done(n);
  } else {
    uv_timer_start(&n->chunk_timer, on_chunk, 1, 0);
  }
}

static void start_node_pass(rnode_t *n) {
  if (n->pass_running || !fo_redis_connected(n->cmd))
    return;
  n->pass_running = true;
  /* The first chunk now, the rest one per loop turn (1 ms timer). */
  n->cursor = fo__registry_each_user(n->rr->srv, 0, REFRESH_CHUNK, register_user, n);
  pass_send(n);
  if (n->cursor == 0) {
    pass_done(n);
  } else {
    uv_timer_start(&n->chunk_timer, on_chunk, 1, 0);
  }
}

/* A pass on every node that is connected. */
static void start_pass(fo_rreg_t *rr) {
  for (uint32_t i = 0; i < rr->nnodes; i++)
    start_node_pass(&rr->nodes[i]);
}

static void set_alive(fo_rreg_t *rr) {
  fo_server_t *srv = rr->srv;
  fo_sb_t k;
  fo_sb_init(&k);
  fo_rkey_alive(&k, srv->cfg->redis_prefix, srv->cfg->server_id);
  /* A failed SET is repaired by the next alive tick: its PEXPIRE answers 0. */
  if (!k.oom)
    sent(rr, fo_redis_command(rr->cmd, count_error, srv, "SET %b %b PX %lld", k.data, k.len,
                              srv->cfg->server_id, strlen(srv->cfg->server_id),
                              (long long)srv->cfg->alive_ttl_ms));
  fo_sb_free(&k);
}

/* PEXPIRE answered 0: our liveness key had expired (this loop or Redis
 * stalled longer than its TTL), so routing servers may have removed our
 * registry entries as a dead server's. Set it again and re-register every
 * local connection now rather than at the next heartbeat pass. */
static void on_alive_refreshed(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  fo_rreg_t *rr = privdata;
  fo_server_t *srv = rr->srv;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
    (*srv->m.redis_errors)++;
    return;
  }
  if (reply->type != REDIS_REPLY_INTEGER || reply->integer != 0 || rr->draining ||
      !fo_redis_connected(rr->cmd))
    return;
  FO_LOG_WARN("registry", "liveness key had expired: re-registering", "server=%s",
              srv->cfg->server_id);
  set_alive(rr);
  start_pass(rr);
}

static void on_alive(uv_timer_t *t) {
  fo_rreg_t *rr = t->data;
  fo_server_t *srv = rr->srv;
  if (!fo_redis_connected(rr->cmd) || rr->draining)
    return;
  fo_sb_t k;
  fo_sb_init(&k);
  fo_rkey_alive(&k, srv->cfg->redis_prefix, srv->cfg->server_id);
  if (!k.oom) /* a failure is retried by the next tick, a third of the TTL later */
    sent(rr, fo_redis_command(rr->cmd, on_alive_refreshed, rr, "PEXPIRE %b %lld", k.data, k.len,
                              (long long)srv->cfg->alive_ttl_ms));
  fo_sb_free(&k);
}

/* Once a periodic pass is sent and answered on every node, the heap's free
 * pages go back to the kernel. Bursts of connections (handshake parsers,
 * tokens, first frames, their registrations: transient chunks between the
 * users and room lists that stay) leave free runs of pages inside the heap,
 * which glibc returns only from its top; at 16,700 connections a process
 * that was ~200 KB (tests/bench/scale/README.md). Once a minute (the pass);
 * a walk of the free lists: 0.1-0.3 ms on a 9 MB heap with 2,600 free
 * chunks. */
static void maybe_trim(fo_rreg_t *rr) {
  if (pass_running(rr))
    return;
  for (uint32_t i = 0; i < rr->nnodes; i++)
    if (rr->nodes[i].reg_inflight != 0)
      return;
  rr->trim_due = false;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

static void on_refresh(uv_timer_t *t) {
  fo_rreg_t *rr = t->data;
  if (!rr->draining) {
    start_pass(rr);
    rr->trim_due = true;
    maybe_trim(rr); /* nothing was sent (no users, or Redis down) */
  }
}

static void on_cmd_state(fo_redis_t *r, bool connected, void *ud) {
  (void)r;
  rnode_t *n = ud;
  fo_rreg_t *rr = n->rr;
  fo_server_t *srv = rr->srv;
  update_up(rr);
  if (!connected || rr->draining)
    return;
  if (n->idx == rr->self) {
    set_alive(rr);
    start_pass(rr); /* re-register everything we hold, on every node */
  } else {
    start_node_pass(n); /* what lives on this node (it may be back empty) */
  }
  if (srv->rreg_ev.redis_up != NULL)
    srv->rreg_ev.redis_up(srv, n->idx);
}

/* ---- Pub/Sub ---- */

static void on_sub_message(fo_redis_t *r, redisReply *reply, void *privdata);

/* On the room's node's sub connection. */
static int room_cmd(fo_rreg_t *rr, const char *verb, const char *room, size_t len) {
  rnode_t *n = node_of(rr, room, len);
  fo_sb_t ch;
  fo_sb_init(&ch);
  fo_rkey_room_channel(&ch, rr->srv->cfg->redis_prefix, room, len);
  int rc = -ENOMEM;
  if (n->sub == NULL) {
    rc = -ENOTCONN;
  } else if (!ch.oom) {
    if (strcmp(verb, "SUBSCRIBE") == 0)
      rc = fo_redis_command(n->sub, on_sub_message, n, "SUBSCRIBE %b", ch.data, ch.len);
    else
      rc = fo_redis_command(n->sub, NULL, NULL, "UNSUBSCRIBE %b", ch.data, ch.len);
  }
  fo_sb_free(&ch);
  /* Counted; a SUBSCRIBE that could not be queued (out of memory: the
   * connection is up, callers check) is sent again on the next reconnect. */
  return sent(rr, rc);
}

static void clear_unsubs(rnode_t *n) {
  uint32_t cur = 0;
  fo_mapent_t *e;
  while ((e = fo_map_next(&n->unsubs, &cur)) != NULL)
    free(e);
  fo_map_free(&n->unsubs);
}

/* The UNSUBSCRIBE reply for room: re-subscribe if it was joined meanwhile. */
static void unsubscribed(rnode_t *n, const char *room, size_t len) {
  fo_rreg_t *rr = n->rr;
  fo_server_t *srv = rr->srv;
  uint32_t h = fo_map_hash(room, len);
  unsub_t *u = (unsub_t *)fo_map_get(&n->unsubs, room, len, h);
  if (u == NULL)
    return;
  fo_map_del(&n->unsubs, &u->ent);
  free(u);
  if (fo_map_get(&srv->rooms, room, len, h) != NULL)
    room_cmd(rr, "SUBSCRIBE", room, len);
}

static void on_sub_message(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  rnode_t *n = privdata;
  fo_rreg_t *rr = n->rr;
  fo_server_t *srv = rr->srv;
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
    return;
  redisReply *kind = reply->element[0];
  redisReply *chan = reply->element[1];
  if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING)
    return;
  if (kind->len == 9 && memcmp(kind->str, "subscribe", 9) == 0) {
    if (n->idx == rr->self && chan->len == rr->channel_len &&
        memcmp(chan->str, rr->channel, chan->len) == 0) {
      rr->sub_ready = true;
      if (rr->sub_was_ready)
        rr->resync_due = true;
      rr->sub_was_ready = true;
      update_up(rr);
      FO_LOG_INFO("registry", "subscribed", "channel=%s", rr->channel);
      maybe_resync(rr);
    }
    return;
  }
  if (kind->len == 11 && memcmp(kind->str, "unsubscribe", 11) == 0) {
    if (chan->len > rr->room_prefix_len &&
        memcmp(chan->str, rr->room_prefix, rr->room_prefix_len) == 0)
      unsubscribed(n, chan->str + rr->room_prefix_len, chan->len - rr->room_prefix_len);
    return;
  }
  if (kind->len != 7 || memcmp(kind->str, "message", 7) != 0)
    return;
  redisReply *msg = reply->element[2];
  if (msg->type != REDIS_REPLY_STRING)
    return;
  if (chan->len == rr->channel_len && memcmp(chan->str, rr->channel, chan->len) == 0) {
    if (srv->rreg_ev.pubsub_user != NULL)
      srv->rreg_ev.pubsub_user(srv, msg->str, msg->len);
  } else if (chan->len > rr->room_prefix_len &&
             memcmp(chan->str, rr->room_prefix, rr->room_prefix_len) == 0) {
    if (srv->rreg_ev.pubsub_room != NULL)
      srv->rreg_ev.pubsub_room(srv, chan->str + rr->room_prefix_len,
                               chan->len - rr->room_prefix_len, msg->str, msg->len);
  }
}

static void on_sub_state(fo_redis_t *r, bool connected, void *ud) {
  rnode_t *n = ud;
  fo_rreg_t *rr = n->rr;
  fo_server_t *srv = rr->srv;
  if (n->idx == rr->self)
    rr->sub_ready = false;
  clear_unsubs(n); /* that connection's subscriptions are gone with it */
  update_up(rr);
  if (!connected)
    return;
  if (n->idx == rr->self && sent(rr, fo_redis_command(r, on_sub_message, n, "SUBSCRIBE %b",
                                                      rr->channel, rr->channel_len)) != 0)
    FO_LOG_WARN("registry", "could not subscribe: not ready until the next reconnect", "channel=%s",
                rr->channel); /* /readyz says so: redis_up stays 0 */
  if (srv->cfg->room_mode_id == FO_ROOM_MODE_REDIS) {
    uint32_t cur = 0;
    fo_mapent_t *e;
    while ((e = fo_map_next(&srv->rooms, &cur)) != NULL)
      if (node_of(rr, e->key, e->len) == n)
        room_cmd(rr, "SUBSCRIBE", e->key, e->len);
  }
}

/* Called on the first local join (on) and the last local leave (!on) of a
 * room, while the room is in srv->rooms. */
void fo__rreg_room_sub(fo_server_t *srv, const char *room, size_t len, bool on) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL)
    return;
  rnode_t *n = node_of(rr, room, len);
  if (n->sub == NULL || !fo_redis_connected(n->sub))
    return; /* resubscribed on reconnect */
  uint32_t h = fo_map_hash(room, len);
  if (fo_map_get(&n->unsubs, room, len, h) != NULL) {
    /* UNSUBSCRIBE in flight: its reply decides (unsubscribed()) */
    if (on)
      FO_LOG_DEBUG("registry",
                   "room joined while its unsubscribe is pending: "
                   "re-subscribing after the reply",
                   "pending=%u", n->unsubs.count);
    return;
  }
  if (on) {
    room_cmd(rr, "SUBSCRIBE", room, len);
    return;
  }
  unsub_t *u = malloc(sizeof(*u) + len + 1);
  if (u == NULL)
    return; /* stay subscribed: messages for a room we lack are dropped */
  memcpy(u->name, room, len);
  u->name[len] = '\0';
  u->ent.hash = h;
  u->ent.len = (uint32_t)len;
  u->ent.key = u->name;
  if (fo_map_put(&n->unsubs, &u->ent) != 0) {
    free(u);
    return;
  }
  if (room_cmd(rr, "UNSUBSCRIBE", room, len) != 0) {
    fo_map_del(&n->unsubs, &u->ent);
    free(u);
  }
}

/* ---- per connection ---- */

void fo__rreg_conn_added(fo_server_t *srv, fo_conn_t *conn) {
  fo_rreg_t *rr = srv->rreg;
  fo_user_t *user = conn->user;
  if (rr == NULL || user == NULL)
    return;
  size_t len;
  const char *name = fo__user_name(user, &len);
  if (!fo_redis_connected(node_of(rr, name, len)->cmd))
    return; /* the pass after reconnecting registers it */
  conn->reg_pending = 1;
  /* Connections registered this turn are the newest of their user, at the
   * head of its list (hub.c adds there, just before this call): if the one
   * after conn is pending, the user is listed already. A user whose pending
   * connections all closed meanwhile may be listed twice; the second send
   * finds nothing left to send. */
  if (conn->user_next != NULL && conn->user_next->reg_pending)
    return;
  pend_t *p = NULL;
  if (rr->npend == rr->pend_cap) {
    uint32_t ncap = rr->pend_cap ? rr->pend_cap * 2 : 64;
    pend_t **np = realloc(rr->pend, ncap * sizeof(*np));
    if (np != NULL) {
      rr->pend = np;
      rr->pend_cap = ncap;
    }
  }
  if (rr->npend < rr->pend_cap)
    p = malloc(sizeof(*p) + len);
  if (p == NULL) { /* the next heartbeat pass registers it */
    conn->reg_pending = 0;
    (*srv->m.redis_errors)++;
    return;
  }
  p->len = (uint32_t)len;
  memcpy(p->name, name, len);
  rr->pend[rr->npend++] = p;
}

void fo__rreg_flush(fo_server_t *srv) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL || rr->npend == 0)
    return;
  for (uint32_t i = 0; i < rr->npend; i++) {
    pend_t *p = rr->pend[i];
    bool up = fo_redis_connected(node_of(rr, p->name, p->len)->cmd);
    fo_user_t *user = up ? fo__registry_user(srv, p->name, p->len) : NULL;
    if (user != NULL) /* NULL: gone, or Redis down (the pass after reconnecting) */
      send_user(rr, user, true);
    free(p);
  }
  rr->npend = 0;
}

/* A refused or lost HDEL would leave a field naming a closed connection for
 * as long as the user has others here (EXPIRE keeps the key alive): other
 * servers would keep publishing to us for it. So it is sent again. */
static void hdel_keep(fo_rreg_t *rr, hdel_t *h) {
  if (rr->hdels_n >= HDEL_RETRY_MAX) {
    free(h); /* counted already; the user's key TTL is the last resort */
    return;
  }
  h->next = rr->hdels;
  rr->hdels = h;
  rr->hdels_n++;
  retry_later(rr);
}

static void on_hdel_reply(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  hdel_t *h = privdata;
  fo_rreg_t *rr;
  memcpy(&rr, h->data, sizeof(rr)); /* data[] is not pointer-aligned */
  if (reply != NULL && reply->type != REDIS_REPLY_ERROR) {
    free(h);
    return;
  }
  (*rr->srv->m.redis_errors)++;
  if (rr->srv->rreg != rr) { /* closing: the context is going away */
    free(h);
    return;
  }
  hdel_keep(rr, h);
}

/* The reply callback needs the key and id again only on failure, but must
 * own them from the start: one allocation per closed connection. The
 * registry pointer is kept at the front of data. */
static void send_hdel(fo_rreg_t *rr, uint32_t node, const char *key, size_t klen, const char *id,
                      size_t ilen) {
  hdel_t *h = malloc(sizeof(*h) + sizeof(rr) + klen + ilen);
  if (h == NULL) {
    (*rr->srv->m.redis_errors)++;
    return;
  }
  h->next = NULL;
  h->node = node;
  h->klen = (uint32_t)klen;
  h->ilen = (uint32_t)ilen;
  memcpy(h->data, &rr, sizeof(rr));
  memcpy(h->data + sizeof(rr), key, klen);
  memcpy(h->data + sizeof(rr) + klen, id, ilen);
  const char *argv[3] = {"HDEL", h->data + sizeof(rr), h->data + sizeof(rr) + klen};
  size_t argvlen[3] = {4, klen, ilen};
  if (sent(rr, fo_redis_command_argv(rr->nodes[node].cmd, on_hdel_reply, h, 3, argv, argvlen)) != 0)
    hdel_keep(rr, h);
}

static void on_retry(uv_timer_t *t) {
  fo_rreg_t *rr = t->data;
  if (rr->retry_pass) {
    rr->retry_pass = false;
    start_pass(rr); /* nodes that are down get theirs when they reconnect */
  }
  hdel_t *h = rr->hdels;
  rr->hdels = NULL;
  rr->hdels_n = 0;
  while (h != NULL) {
    hdel_t *next = h->next;
    if (!fo_redis_connected(rr->nodes[h->node].cmd)) {
      hdel_keep(rr, h); /* its node is down: still waits */
    } else {
      const char *key = h->data + sizeof(rr);
      send_hdel(rr, h->node, key, h->klen, key + h->klen, h->ilen);
      free(h);
    }
    h = next;
  }
}

void fo__rreg_conn_removed(fo_server_t *srv, fo_conn_t *conn) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL || conn->user == NULL)
    return;
  size_t ulen;
  const char *name = fo__user_name(conn->user, &ulen);
  rnode_t *n = node_of(rr, name, ulen);
  if (!fo_redis_connected(n->cmd))
    return;
  char id[FO_CONN_ID_LEN];
  fo__conn_id_str(conn, id, sizeof(id));
  fo_sb_reset(&rr->key);
  fo_rkey_connections(&rr->key, srv->cfg->redis_prefix, name, ulen);
  if (rr->key.oom)
    return;
  send_hdel(rr, n->idx, rr->key.data, rr->key.len, id, strlen(id));
}

/* ---- life ---- */

int fo__rreg_new(fo_server_t *srv) {
  const fo_dcfg_t *cfg = srv->cfg;
  fo_rreg_t *rr = calloc(1, sizeof(*rr));
  if (rr == NULL)
    return -ENOMEM;
  rr->srv = srv;
  srv->rreg = rr;
  fo_sb_init(&rr->key);
  rr->nnodes = cfg->redis.n > 0 ? (uint32_t)cfg->redis.n : 1;
  rr->nodes = calloc(rr->nnodes, sizeof(*rr->nodes));
  if (rr->nodes == NULL)
    return -ENOMEM;
  rr->self = fo_rshard_node(cfg->server_id, strlen(cfg->server_id), rr->nnodes);
  fo_sb_t s;
  fo_sb_init(&s);
  fo_rkey_server_channel(&s, cfg->redis_prefix, cfg->server_id);
  rr->channel_len = s.len;
  rr->channel = s.data; /* takes the allocation */
  fo_sb_init(&s);
  fo_rkey_room_channel(&s, cfg->redis_prefix, "", 0);
  rr->room_prefix_len = s.len;
  rr->room_prefix = s.data;
  if (rr->channel == NULL || rr->room_prefix == NULL)
    return -ENOMEM;

  uv_timer_init(srv->loop, &rr->alive_timer);
  uv_timer_init(srv->loop, &rr->refresh_timer);
  uv_timer_init(srv->loop, &rr->retry_timer);
  rr->alive_timer.data = rr->refresh_timer.data = rr->retry_timer.data = rr;
  rr->open_handles = 3;
  for (uint32_t i = 0; i < rr->nnodes; i++) {
    rnode_t *n = &rr->nodes[i];
    n->rr = rr;
    n->idx = i;
    uv_timer_init(srv->loop, &n->chunk_timer);
    n->chunk_timer.data = n;
    rr->open_handles++;
  }
  uint64_t alive_every = (uint64_t)cfg->alive_ttl_ms / 3;
  uv_timer_start(&rr->alive_timer, on_alive, alive_every, alive_every);
  uv_timer_start(&rr->refresh_timer, on_refresh, (uint64_t)cfg->registry_refresh_ms,
                 (uint64_t)cfg->registry_refresh_ms);

  for (uint32_t i = 0; i < rr->nnodes; i++) {
    rnode_t *n = &rr->nodes[i];
    char cname[32], sname[32];
    /* One node keeps the names it always had in logs. */
    snprintf(cname, sizeof(cname), rr->nnodes > 1 ? "registry-%u" : "registry", i);
    snprintf(sname, sizeof(sname), rr->nnodes > 1 ? "pubsub-%u" : "pubsub", i);
    fo_redis_opts_t o = {
        .host = cfg->redis.n > 0 ? cfg->redis.v[i].host : "127.0.0.1",
        .port = cfg->redis.n > 0 ? cfg->redis.v[i].port : 6379,
        .connect_timeout_ms = (int)cfg->redis_timeout_ms,
        .command_timeout_ms = (int)cfg->redis_timeout_ms,
        .backoff_min_ms = 100,
        .backoff_max_ms = 3000,
        .name = cname,
        .password = cfg->redis_password,
        .user = cfg->redis_user,
    };
    int rc = fo_redis_new(srv->loop, &o, on_cmd_state, n, &n->cmd);
    if (rc != 0)
      return rc;
    /* A Pub/Sub connection where something of ours is subscribed: our
     * channel's node, and every node for rooms in room mode "redis". */
    if (i != rr->self && cfg->room_mode_id != FO_ROOM_MODE_REDIS)
      continue;
    o.name = sname;
    o.command_timeout_ms = -1; /* a subscriber waits for pushes: no command timeout */
    rc = fo_redis_new(srv->loop, &o, on_sub_state, n, &n->sub);
    if (rc != 0)
      return rc;
  }
  rr->cmd = rr->nodes[rr->self].cmd;
  rr->sub = rr->nodes[rr->self].sub;
  if (rr->nnodes > 1)
    FO_LOG_INFO("registry", "redis shards", "nodes=%u channel_node=%u", rr->nnodes, rr->self);
  return 0;
}

/* Drain, once the last connection got its close: remove our liveness key
 * (entries went with each connection's close). Until then the key, the
 * passes and the retries go on as before: the other servers' routing
 * script publishes only to a server whose key exists, and the connections
 * still open here are served while the drain spreads their closes. */
void fo__rreg_drain(fo_server_t *srv) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL || rr->draining)
    return;
  rr->draining = true;
  uv_timer_stop(&rr->alive_timer);
  uv_timer_stop(&rr->refresh_timer);
  for (uint32_t i = 0; i < rr->nnodes; i++)
    uv_timer_stop(&rr->nodes[i].chunk_timer);
  uv_timer_stop(&rr->retry_timer);
  if (fo_redis_connected(rr->cmd)) {
    fo_sb_t k;
    fo_sb_init(&k);
    fo_rkey_alive(&k, srv->cfg->redis_prefix, srv->cfg->server_id);
    if (!k.oom) /* a failure leaves the key to its short TTL */
      sent(rr, fo_redis_command(rr->cmd, count_error, srv, "DEL %b", k.data, k.len));
    fo_sb_free(&k);
  }
}

static void handle_closed(fo_rreg_t *rr) {
  if (--rr->open_handles == 0) {
    fo_sb_free(&rr->key);
    for (uint32_t i = 0; rr->nodes != NULL && i < rr->nnodes; i++) {
      clear_unsubs(&rr->nodes[i]);
      strs_free(&rr->nodes[i].bkeys); /* a pass stopped midway */
      strs_free(&rr->nodes[i].bargs);
    }
    while (rr->hdels != NULL) {
      hdel_t *hd = rr->hdels;
      rr->hdels = hd->next;
      free(hd);
    }
    for (uint32_t i = 0; i < rr->npend; i++)
      free(rr->pend[i]);
    free(rr->pend);
    free(rr->channel);
    free(rr->room_prefix);
    free(rr->nodes);
    free(rr);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  handle_closed(h->data);
}

static void on_chunk_closed(uv_handle_t *h) {
  handle_closed(((rnode_t *)h->data)->rr);
}

void fo__rreg_close(fo_server_t *srv) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL)
    return;
  srv->rreg = NULL;
  for (uint32_t i = 0; rr->nodes != NULL && i < rr->nnodes; i++) {
    rnode_t *n = &rr->nodes[i];
    fo_redis_close(n->cmd);
    fo_redis_close(n->sub);
    if (n->rr != NULL) /* initialised (fo__rreg_new may have failed before) */
      uv_close((uv_handle_t *)&n->chunk_timer, on_chunk_closed);
  }
  uv_close((uv_handle_t *)&rr->alive_timer, on_timer_closed);
  uv_close((uv_handle_t *)&rr->refresh_timer, on_timer_closed);
  uv_close((uv_handle_t *)&rr->retry_timer, on_timer_closed);
}

uint64_t fo__rreg_errors(fo_server_t *srv) {
  fo_rreg_t *rr = srv->rreg;
  if (rr == NULL)
    return 0;
  uint64_t n = 0;
  for (uint32_t i = 0; i < rr->nnodes; i++)
    n += (rr->nodes[i].cmd ? fo_redis_errors(rr->nodes[i].cmd) : 0) +
         (rr->nodes[i].sub ? fo_redis_errors(rr->nodes[i].sub) : 0);
  return n;
}

/* One barrier: a PING on every connected node, cb after the last answer. */
typedef struct {
  fo_server_t *srv;
  void (*cb)(fo_server_t *srv);
  uint32_t waiting;
} barrier_t;

static void on_barrier(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r, (void)reply;
  barrier_t *b = privdata;
  if (--b->waiting > 0)
    return;
  fo_server_t *srv = b->srv;
  void (*cb)(fo_server_t *) = b->cb;
  free(b);
  cb(srv);
}

void fo__rreg_barrier(fo_server_t *srv, void (*cb)(fo_server_t *srv)) {
  fo_rreg_t *rr = srv->rreg;
  barrier_t *b = malloc(sizeof(*b));
  if (rr == NULL || b == NULL) {
    free(b);
    cb(srv);
    return;
  }
  b->srv = srv;
  b->cb = cb;
  b->waiting = 1; /* held while sending, so an answer cannot finish it early */
  for (uint32_t i = 0; i < rr->nnodes; i++)
    if (fo_redis_connected(rr->nodes[i].cmd) &&
        fo_redis_command(rr->nodes[i].cmd, on_barrier, b, "PING") == 0)
      b->waiting++;
  on_barrier(NULL, NULL, b);
}

/* Routing of user messages: local connections are written at once; for the
 * user's connections on other servers one Lua script call per batch of
 * messages (those of one loop turn, at most ROUTE_BATCH; pipelined, so a
 * Kafka batch costs one round trip) reads ws:connections:{user} of each,
 * skips and removes entries of servers whose liveness key is gone, and
 * PUBLISHes each message to ws:server:{id} of every other live server. One
 * call per message cost A (the consumer) 9 us and Redis 15 us a message,
 * most of it per command (formatting, parsing, the script call itself); a
 * batch also checks each server's liveness key once instead of per
 * message. A message counts as done when its batch returned; offsets are
 * released to the consumer in Kafka order (a FIFO), so nothing is committed
 * before it was handed over.
 *
 * Room mode "redis": room records consumed by this server (the rooms topic
 * is then shared by a consumer group) are PUBLISHed to ws:room:{room}; every
 * subscribed server, this one included, delivers to its local members. Their
 * offsets go through a second FIFO of the same kind.
 *
 * Everything waiting in the FIFOs (Redis slow or down) counts as
 * the flow's backlog into the water marks (flow.h), so Kafka pauses instead of the
 * backlog growing for the whole outage.
 *
 * Several Redis nodes (shards, schemas/redis-shards.md): a user's entry and
 * a server's channel may live on different nodes, so no one script can do
 * both. The loop turn's user routes are looked up with one script call per
 * users' node (HGETALL of each hash inside, lookup_lua); the answers are
 * then PUBLISHed with one script call per servers' node (publish_lua). A
 * PUBLISH that reached nobody is followed by EXISTS of that server's
 * liveness key, and a dead server's entries are removed by a small script
 * on the user's node. A route whose node is down is given up (counted in
 * routes_node_down) instead of held: held routes stall the release of every
 * later offset and, through the backlog, Kafka for the users of the nodes
 * that are up. With one node nothing changes (the script above).
 *
 * Pub/Sub payload between servers: see fo_proto_pub_user (proto.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_int.h"
#include "router.h"
#include "hub.h"
#include "frame.h"
#include "log.h"
#include "proto.h"
#include "redis_uv.h"
#include "stream.h"
#include "rkeys.h"
#include "rshard.h"
#include "ws.h"

/* KEYS: the users' hashes; ARGV: alive prefix, channel prefix, own id, then
 * message k's payload at 3 + k. Liveness is read once per server and call
 * (time stands still inside a script: no key expires meanwhile); each
 * message goes once to each other live server holding its user. */
static const char route_lua[] = "local seen = {}\n"
                                "local sent, dead = 0, 0\n"
                                "for k = 1, #KEYS do\n"
                                "  local h = redis.call('HGETALL', KEYS[k])\n"
                                "  local done = {}\n"
                                "  for i = 1, #h, 2 do\n"
                                "    local sid = h[i + 1]\n"
                                "    if sid ~= ARGV[3] then\n"
                                "      local st = seen[sid]\n"
                                "      if st == nil then\n"
                                "        st = redis.call('EXISTS', ARGV[1] .. sid) == 1\n"
                                "        seen[sid] = st\n"
                                "      end\n"
                                "      if not st then\n"
                                "        redis.call('HDEL', KEYS[k], h[i])\n"
                                "        dead = dead + 1\n"
                                "      elseif not done[sid] then\n"
                                "        redis.call('PUBLISH', ARGV[2] .. sid, ARGV[3 + k])\n"
                                "        done[sid] = true\n"
                                "        sent = sent + 1\n"
                                "      end\n"
                                "    end\n"
                                "  end\n"
                                "end\n"
                                "return {sent, dead}\n";

/* Most messages one script call carries: bounds the call's time in Redis
 * (a few us a message) and the argument vector. */
#define ROUTE_BATCH 128

/* Several nodes: removes the entries of one dead server (ARGV[1]) from a
 * user's hash, on the user's node. */
static const char clean_lua[] = "local h = redis.call('HGETALL', KEYS[1])\n"
                                "local n = 0\n"
                                "for i = 1, #h, 2 do\n"
                                "  if h[i + 1] == ARGV[1] then\n"
                                "    redis.call('HDEL', KEYS[1], h[i])\n"
                                "    n = n + 1\n"
                                "  end\n"
                                "end\n"
                                "return n\n";

/* One call per node and batch looks up that node's users: KEYS the users'
 * hashes, ARGV[1] our id; returns per key the other servers holding it,
 * each once, joined by spaces (server ids have none: dconfig.c): one reply
 * string per message, not an array of strings to parse and free. */
static const char lookup_lua[] = "local r = {}\n"
                                 "for k = 1, #KEYS do\n"
                                 "  local h = redis.call('HGETALL', KEYS[k])\n"
                                 "  local out, seen = {}, {}\n"
                                 "  for i = 2, #h, 2 do\n"
                                 "    local sid = h[i]\n"
                                 "    if sid ~= ARGV[1] and not seen[sid] then\n"
                                 "      seen[sid] = true\n"
                                 "      out[#out + 1] = sid\n"
                                 "    end\n"
                                 "  end\n"
                                 "  r[k] = table.concat(out, ' ')\n"
                                 "end\n"
                                 "return r\n";

/* One call per node and batch PUBLISHes to the servers whose channels live
 * there: ARGV[1] the channel prefix, then pairs (server id, payload);
 * returns each PUBLISH's receiver count. */
static const char publish_lua[] = "local r = {}\n"
                                  "for i = 2, #ARGV, 2 do\n"
                                  "  r[#r + 1] = redis.call('PUBLISH', ARGV[1] .. ARGV[i], "
                                  "ARGV[i + 1])\n"
                                  "end\n"
                                  "return r\n";

typedef struct fo_rmsg {
  struct fo_rmsg *next;
  fo_router_t *router;
  fo_buf_t *pub;               /* user: "<len>:<user><json>"; room: "<channel><json>" */
  uint32_t user_off, user_len; /* user: the user in pub; room: the channel (off 0) */
  uint8_t q;                   /* FO_RQ_USERS or FO_RQ_ROOMS */
  int32_t partition;
  int64_t offset;
  bool done;
  bool issued;      /* a script call is outstanding */
  bool staged;      /* in the router's batch, not sent yet */
  uint32_t node;    /* several nodes: the user's or the room's node */
  uint32_t waiting; /* several nodes: PUBLISH replies still to come */
} fo_rmsg_t;

typedef struct {
  fo_rmsg_t *head, *tail;
  size_t inflight;
  fo_route_done_cb done_cb;
  void *done_ud;
} fo_rq_t;

struct fo_router {
  fo_server_t *srv;
  fo_rq_t q[FO_RQ_COUNT];
  void (*progress_cb)(void *ud); /* the consumer: releases happened */
  void *progress_ud;
  char *alive_prefix, *chan_prefix;
  fo_log_ratelimit_t rl;
  uint32_t nnodes;               /* Redis nodes (1 when not configured) */
  bool *was_up;                  /* per node: it was connected before */
  uint64_t *settle_until;        /* per node, loop ms: hold user routes until then */
  fo_rmsg_t *batch[ROUTE_BATCH]; /* one node: user routes of this turn, not sent yet */
  uint32_t nbatch;
};

/* One script call's messages, the reply's privdata (owned by the call). */
typedef struct {
  uint32_t n;
  fo_rmsg_t *m[];
} batch_t;

int fo__router_new(fo_server_t *srv) {
  fo_router_t *rt = calloc(1, sizeof(*rt));
  if (rt == NULL)
    return -ENOMEM;
  rt->srv = srv;
  srv->router = rt;
  rt->nnodes = srv->cfg->redis.n > 1 ? (uint32_t)srv->cfg->redis.n : 1;
  rt->was_up = calloc(rt->nnodes, sizeof(*rt->was_up));
  rt->settle_until = calloc(rt->nnodes, sizeof(*rt->settle_until));
  if (rt->was_up == NULL || rt->settle_until == NULL)
    return -ENOMEM;
  fo_sb_t s;
  fo_sb_init(&s);
  fo_rkey_alive(&s, srv->cfg->redis_prefix, "");
  rt->alive_prefix = s.data;
  fo_sb_init(&s);
  fo_rkey_server_channel(&s, srv->cfg->redis_prefix, "");
  rt->chan_prefix = s.data;
  if (rt->alive_prefix == NULL || rt->chan_prefix == NULL)
    return -ENOMEM;
  return 0;
}

void fo__router_free(fo_server_t *srv) {
  fo_router_t *rt = srv->router;
  if (rt == NULL)
    return;
  for (int k = 0; k < FO_RQ_COUNT; k++) {
    fo_rq_t *q = &rt->q[k];
    while (q->head != NULL) {
      fo_rmsg_t *m = q->head;
      q->head = m->next;
      if (m->pub != NULL)
        fo_flow_backlog(srv->flow, -(int64_t)m->pub->len);
      fo_buf_unref(m->pub);
      m->pub = NULL;
      if (m->issued || m->waiting > 0)
        m->router = NULL; /* the (last) reply callback (with NULL) frees it */
      else
        free(m);
    }
  }
  free(rt->alive_prefix);
  free(rt->chan_prefix);
  free(rt->was_up);
  free(rt->settle_until);
  free(rt);
  srv->router = NULL;
}

void fo__router_set_done_cb(fo_server_t *srv, int q, fo_route_done_cb cb, void *ud) {
  srv->router->q[q].done_cb = cb;
  srv->router->q[q].done_ud = ud;
}

void fo__router_set_progress_cb(fo_server_t *srv, void (*cb)(void *ud), void *ud) {
  srv->router->progress_cb = cb;
  srv->router->progress_ud = ud;
}

size_t fo__router_inflight(fo_server_t *srv) {
  if (srv->router == NULL)
    return 0;
  return srv->router->q[FO_RQ_USERS].inflight + srv->router->q[FO_RQ_ROOMS].inflight;
}

size_t fo__router_inflight_q(fo_server_t *srv, int q) {
  return srv->router ? srv->router->q[q].inflight : 0;
}

/* Partitions one advance() released records of: only the last offset of
 * each is handed to done_cb (storing an offset in librdkafka allocates a
 * list and takes a lock: per record it was a visible cost). */
#define RELEASE_PARTS 16

typedef struct {
  uint32_t n;
  int32_t partition[RELEASE_PARTS];
  int64_t offset[RELEASE_PARTS];
} release_t;

static void release_flush(fo_rq_t *q, release_t *r) {
  for (uint32_t i = 0; i < r->n; i++)
    q->done_cb(q->done_ud, r->partition[i], r->offset[i]);
  r->n = 0;
}

static void release_add(fo_rq_t *q, release_t *r, int32_t partition, int64_t offset) {
  for (uint32_t i = 0; i < r->n; i++) {
    if (r->partition[i] == partition) {
      r->offset[i] = offset; /* released in Kafka order: the later is higher */
      return;
    }
  }
  if (r->n == RELEASE_PARTS)
    release_flush(q, r);
  r->partition[r->n] = partition;
  r->offset[r->n++] = offset;
}

/* Releases finished messages at the head of q, in order. */
static void advance(fo_router_t *rt, fo_rq_t *q) {
  fo_server_t *srv = rt->srv;
  release_t rel;
  rel.n = 0;
  while (q->head != NULL && q->head->done) {
    fo_rmsg_t *m = q->head;
    q->head = m->next;
    if (q->head == NULL)
      q->tail = NULL;
    q->inflight--;
    if (q->done_cb != NULL && m->partition >= 0)
      release_add(q, &rel, m->partition, m->offset);
    if (m->pub != NULL)
      fo_flow_backlog(srv->flow, -(int64_t)m->pub->len);
    fo_buf_unref(m->pub);
    free(m);
  }
  if (q->done_cb != NULL)
    release_flush(q, &rel);
  if (rt->progress_cb != NULL)
    rt->progress_cb(rt->progress_ud);
}

/* Appends m to its queue (takes ownership) and counts its bytes. */
static void enqueue(fo_router_t *rt, fo_rmsg_t *m) {
  fo_server_t *srv = rt->srv;
  fo_rq_t *q = &rt->q[m->q];
  if (q->tail != NULL)
    q->tail->next = m;
  else
    q->head = m;
  q->tail = m;
  q->inflight++;
  if (m->pub != NULL)
    fo_flow_backlog(srv->flow, (int64_t)m->pub->len);
}

static void issue(fo_router_t *rt, fo_rmsg_t *m);
static void flush_batch(fo_router_t *rt);
static void flush_sharded(fo_router_t *rt, fo_rmsg_t **ms, uint32_t n);

/* Applies the reply to the script call (or room PUBLISH) that carried
 * ms[0..n) (all of one queue; the router is there). Returns whether they
 * are done (else they wait to be sent again). */
static bool apply_reply(fo_router_t *rt, fo_rmsg_t **ms, uint32_t n, redisReply *reply) {
  fo_server_t *srv = rt->srv;
  for (uint32_t i = 0; i < n; i++)
    ms[i]->issued = false;
  if (reply == NULL) {
    (*srv->m.redis_errors)++;
    if (rt->nnodes == 1)
      return false;               /* resent when Redis is back (fo__router_redis_up) */
    (*srv->m.routes_node_down)++; /* several nodes: not held (see the top) */
  } else if (reply->type == REDIS_REPLY_ERROR) {
    (*srv->m.redis_errors)++;
    uint64_t sup = 0;
    if (fo_log_ratelimit(&rt->rl, fo_now_ms(), 5000, &sup))
      FO_LOG_WARN("router", "route script failed", "err=\"%s\" suppressed=%" PRIu64, reply->str,
                  sup);
    /* A script error is not transient: skip rather than stall the partition. */
  } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
    *srv->m.published += (uint64_t)reply->element[0]->integer;
    *srv->m.dead_servers_cleaned += (uint64_t)reply->element[1]->integer;
  }
  for (uint32_t i = 0; i < n; i++)
    ms[i]->done = true;
  return true;
}

static void on_reply(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  fo_rmsg_t *m = privdata;
  fo_router_t *rt = m->router;
  if (rt == NULL) { /* the router is gone */
    free(m);
    return;
  }
  if (apply_reply(rt, &m, 1, reply))
    advance(rt, &rt->q[m->q]);
}

static void on_batch_reply(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  batch_t *b = privdata;
  fo_router_t *rt = b->m[0]->router;
  if (rt == NULL) { /* the router is gone: it left every message of b to us */
    for (uint32_t i = 0; i < b->n; i++)
      free(b->m[i]);
  } else if (apply_reply(rt, b->m, b->n, reply)) {
    advance(rt, &rt->q[FO_RQ_USERS]);
  }
  free(b);
}

/* Unit tests stand in for Redis: message i of queue q gets reply. */
int fo__router_reply(fo_server_t *srv, int q, size_t i, struct redisReply *reply) {
  fo_rmsg_t *m = srv->router->q[q].head;
  while (m != NULL && i-- > 0)
    m = m->next;
  if (m == NULL || m->done)
    return -ENOENT;
  on_reply(NULL, reply, m);
  return 0;
}

static void issue_sharded(fo_router_t *rt, fo_rmsg_t *m);

/* Room mode "redis": PUBLISH "<channel><payload>" as prepared in m->pub. */
static void publish_room(fo_redis_t *r, fo_rmsg_t *m) {
  const char *argv[3] = {"PUBLISH", (const char *)m->pub->data,
                         (const char *)m->pub->data + m->user_len};
  size_t argvlen[3] = {7, m->user_len, m->pub->len - m->user_len};
  if (fo_redis_command_argv(r, on_reply, m, 3, argv, argvlen) == 0)
    m->issued = true;
}

/* Stages a user route: it goes out with the others of this loop turn
 * (fo__router_flush), or at once when the batch is full. */
static void stage(fo_router_t *rt, fo_rmsg_t *m) {
  if (m->staged)
    return;
  m->staged = true;
  rt->batch[rt->nbatch++] = m;
  if (rt->nbatch == ROUTE_BATCH)
    flush_batch(rt);
}

static void issue(fo_router_t *rt, fo_rmsg_t *m) {
  fo_server_t *srv = rt->srv;
  if (rt->nnodes > 1) {
    issue_sharded(rt, m);
    return;
  }
  fo_redis_t *r = srv->redis_cmd != NULL ? srv->redis_cmd(srv, 0) : NULL;
  if (r == NULL || !fo_redis_connected(r))
    return;
  /* Just after Redis came back the other servers may not have re-registered
   * their connections yet (a restarted Redis is empty): a route run now
   * would miss them. Held routes go out from fo__router_tick(). */
  if (m->q == FO_RQ_USERS && rt->settle_until[0] != 0)
    return;
  if (m->q == FO_RQ_ROOMS) {
    publish_room(r, m);
    return;
  }
  stage(rt, m);
}

/* One script call for the staged user routes (one node). Left staged-off
 * and unsent when Redis is not there: fo__router_redis_up sends them. */
static void flush_batch(fo_router_t *rt) {
  fo_server_t *srv = rt->srv;
  uint32_t n = rt->nbatch;
  if (n == 0)
    return;
  rt->nbatch = 0;
  if (rt->nnodes > 1) {
    fo_rmsg_t *ms[ROUTE_BATCH];
    for (uint32_t i = 0; i < n; i++) {
      ms[i] = rt->batch[i];
      ms[i]->staged = false;
    }
    flush_sharded(rt, ms, n);
    return;
  }
  fo_redis_t *r = srv->redis_cmd(srv, 0);
  const char *argv[6 + 2 * ROUTE_BATCH];
  size_t argvlen[6 + 2 * ROUTE_BATCH];
  char nkeys[16];
  size_t off[ROUTE_BATCH];
  fo_sb_t keys; /* every key, back to back (pointers taken once it stops growing) */
  fo_sb_init(&keys);
  batch_t *b = malloc(sizeof(*b) + n * sizeof(b->m[0]));
  for (uint32_t i = 0; i < n; i++) {
    fo_rmsg_t *m = rt->batch[i];
    m->staged = false;
    off[i] = keys.len;
    fo_rkey_connections(&keys, srv->cfg->redis_prefix, (const char *)m->pub->data + m->user_off,
                        m->user_len);
    argvlen[3 + i] = keys.len - off[i];
    argv[6 + n + i] = (const char *)m->pub->data;
    argvlen[6 + n + i] = m->pub->len;
    if (b != NULL)
      b->m[i] = m;
  }
  if (b == NULL || keys.oom || r == NULL || !fo_redis_connected(r)) {
    free(b);
    fo_sb_free(&keys);
    return;
  }
  b->n = n;
  for (uint32_t i = 0; i < n; i++)
    argv[3 + i] = keys.data + off[i];
  snprintf(nkeys, sizeof(nkeys), "%" PRIu32, n);
  argv[0] = "EVAL"; /* in full: see flush_sharded */
  argvlen[0] = 4;
  argv[1] = route_lua;
  argvlen[1] = sizeof(route_lua) - 1;
  argv[2] = nkeys;
  argvlen[2] = strlen(nkeys);
  argv[3 + n] = rt->alive_prefix;
  argv[4 + n] = rt->chan_prefix;
  argv[5 + n] = srv->cfg->server_id;
  for (uint32_t i = 3 + n; i < 6 + n; i++)
    argvlen[i] = strlen(argv[i]);
  if (fo_redis_command_argv(r, on_batch_reply, b, (int)(6 + 2 * n), argv, argvlen) == 0) {
    for (uint32_t i = 0; i < n; i++)
      b->m[i]->issued = true;
  } else {
    free(b);
  }
  fo_sb_free(&keys);
}

void fo__router_flush(fo_server_t *srv) {
  if (srv->router != NULL)
    flush_batch(srv->router);
}

/* ---- several nodes ---- */

/* One look-up call's messages (the reply's privdata, owned by the call). */
typedef struct {
  uint32_t node;
  uint32_t n;
  fo_rmsg_t *m[];
} lookup_t;

/* One publish call (privdata, owned by the call): entry i is message m[i]
 * to server sid i, the ids back to back in sids. */
typedef struct {
  uint32_t node;
  uint32_t n;
  char *sids;
  struct {
    fo_rmsg_t *m;
    uint32_t sid_off, sid_len;
  } e[];
} pubcall_t;

static void pub_done(fo_rmsg_t *m) {
  if (--m->waiting > 0)
    return;
  fo_router_t *rt = m->router;
  if (rt == NULL) { /* the router is gone */
    free(m);
    return;
  }
  m->done = true;
  advance(rt, &rt->q[m->q]);
}

typedef struct {
  fo_server_t *srv;
  uint32_t user_node;
  uint32_t sid_len, key_len;
  char data[]; /* sid, then the user's registry key */
} check_t;

static void on_clean(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  fo_server_t *srv = privdata;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
    (*srv->m.redis_errors)++;
  else if (reply->type == REDIS_REPLY_INTEGER)
    *srv->m.dead_servers_cleaned += (uint64_t)reply->integer;
}

/* EXISTS ws:alive:{sid} answered: 0 removes sid's entries from the user's
 * hash, unless either node just came back (its servers may not have set
 * their keys or entries again yet). */
static void on_exists(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  check_t *c = privdata;
  fo_server_t *srv = c->srv;
  fo_router_t *rt = srv->router;
  if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
    if (rt != NULL) /* NULL: shutting down, the connections are going */
      (*srv->m.redis_errors)++;
  } else if (reply->integer == 0 && rt != NULL && rt->settle_until[c->user_node] == 0) {
    fo_redis_t *ur = srv->redis_cmd(srv, c->user_node);
    const char *argv[5] = {"EVAL", clean_lua, "1", c->data + c->sid_len, c->data};
    size_t argvlen[5] = {4, sizeof(clean_lua) - 1, 1, c->key_len, c->sid_len};
    if (ur == NULL || fo_redis_command_argv(ur, on_clean, srv, 5, argv, argvlen) != 0)
      (*srv->m.redis_errors)++;
  }
  free(c);
}

/* A PUBLISH to sid (on r, the server's node) reached nobody: dead, or
 * between two Pub/Sub connections. EXISTS of its liveness key decides
 * (on_exists). */
static void check_server(fo_router_t *rt, fo_redis_t *r, fo_rmsg_t *m, const char *sid,
                         size_t sid_len) {
  fo_server_t *srv = rt->srv;
  fo_sb_t k, key;
  fo_sb_init(&k);
  fo_sb_init(&key);
  fo_rkey_alive(&k, srv->cfg->redis_prefix, "");
  fo_sb_append(&k, sid, sid_len);
  fo_rkey_connections(&key, srv->cfg->redis_prefix, (const char *)m->pub->data + m->user_off,
                      m->user_len);
  check_t *c = k.oom || key.oom ? NULL : malloc(sizeof(*c) + sid_len + key.len);
  if (c != NULL) {
    c->srv = srv;
    c->user_node = m->node;
    c->sid_len = (uint32_t)sid_len;
    c->key_len = (uint32_t)key.len;
    memcpy(c->data, sid, sid_len);
    memcpy(c->data + sid_len, key.data, key.len);
    const char *argv[2] = {"EXISTS", k.data};
    size_t argvlen[2] = {6, k.len};
    if (fo_redis_command_argv(r, on_exists, c, 2, argv, argvlen) != 0) {
      (*srv->m.redis_errors)++;
      free(c);
    }
  }
  fo_sb_free(&k);
  fo_sb_free(&key);
}

static int send_pubcall(fo_router_t *rt, fo_redis_t *r, pubcall_t *pc);

static void on_pubcall(fo_redis_t *r, redisReply *reply, void *privdata) {
  pubcall_t *pc = privdata;
  fo_router_t *rt = pc->e[0].m->router; /* NULL: gone (each m waits for us) */
  if (rt != NULL) {
    fo_server_t *srv = rt->srv;
    bool array = reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == pc->n;
    if (!array) { /* that servers' node failed: not held */
      (*srv->m.redis_errors)++;
      if (reply == NULL)
        *srv->m.routes_node_down += pc->n;
    }
    for (uint32_t i = 0; array && i < pc->n; i++) {
      redisReply *v = reply->element[i];
      if (v->type == REDIS_REPLY_INTEGER && v->integer > 0)
        (*srv->m.published)++;
      else if (v->type == REDIS_REPLY_INTEGER && rt->settle_until[pc->node] == 0)
        check_server(rt, r, pc->e[i].m, pc->sids + pc->e[i].sid_off, pc->e[i].sid_len);
    }
  }
  for (uint32_t i = 0; i < pc->n; i++)
    pub_done(pc->e[i].m);
  free(pc->sids);
  free(pc);
}

static int send_pubcall(fo_router_t *rt, fo_redis_t *r, pubcall_t *pc) {
  size_t argc = 4 + 2 * (size_t)pc->n;
  const char **argv = malloc(argc * sizeof(*argv));
  size_t *argvlen = malloc(argc * sizeof(*argvlen));
  int rc = -ENOMEM;
  if (argv != NULL && argvlen != NULL) {
    argv[0] = "EVAL"; /* in full: see flush_sharded */
    argvlen[0] = 4;
    argv[1] = publish_lua;
    argvlen[1] = sizeof(publish_lua) - 1;
    argv[2] = "0";
    argvlen[2] = 1;
    argv[3] = rt->chan_prefix;
    argvlen[3] = strlen(rt->chan_prefix);
    for (uint32_t i = 0; i < pc->n; i++) {
      fo_rmsg_t *m = pc->e[i].m;
      argv[4 + 2 * i] = pc->sids + pc->e[i].sid_off;
      argvlen[4 + 2 * i] = pc->e[i].sid_len;
      argv[5 + 2 * i] = (const char *)m->pub->data;
      argvlen[5 + 2 * i] = m->pub->len;
    }
    rc = fo_redis_command_argv(r, on_pubcall, pc, (int)argc, argv, argvlen);
  }
  free(argv);
  free(argvlen);
  return rc;
}

/* The publishes one look-up reply asks for, gathered per server node. */
typedef struct {
  uint32_t n, cap;
  fo_sb_t sids;
  pubcall_t *pc;
} pubnode_t;

static void on_lookup(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  lookup_t *lk = privdata;
  fo_router_t *rt = lk->m[0]->router;
  for (uint32_t i = 0; i < lk->n; i++)
    lk->m[i]->issued = false;
  if (rt == NULL) { /* the router is gone: it left every message of lk to us */
    for (uint32_t i = 0; i < lk->n; i++)
      free(lk->m[i]);
    free(lk);
    return;
  }
  fo_server_t *srv = rt->srv;
  bool array = reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == lk->n;
  if (!array) { /* the users' node failed, or a script error: given up, not held */
    (*srv->m.redis_errors)++;
    if (reply == NULL)
      *srv->m.routes_node_down += lk->n;
    else if (reply->type == REDIS_REPLY_ERROR) {
      uint64_t sup = 0;
      if (fo_log_ratelimit(&rt->rl, fo_now_ms(), 5000, &sup))
        FO_LOG_WARN("router", "look-up script failed", "err=\"%s\" suppressed=%" PRIu64, reply->str,
                    sup);
    }
  }
  pubnode_t *pn = calloc(rt->nnodes, sizeof(*pn));
  for (uint32_t i = 0; i < lk->n; i++) {
    fo_rmsg_t *m = lk->m[i];
    m->waiting = 1; /* held while gathering */
    redisReply *sids = array ? reply->element[i] : NULL;
    const char *sp = sids != NULL && sids->type == REDIS_REPLY_STRING ? sids->str : NULL;
    const char *se = sp != NULL ? sp + sids->len : NULL;
    while (sp != NULL && sp < se) {
      const char *sid = sp;
      const char *sp_end = memchr(sp, ' ', (size_t)(se - sp));
      size_t sid_len = (size_t)((sp_end != NULL ? sp_end : se) - sid);
      sp = sp_end != NULL ? sp_end + 1 : se;
      if (sid_len == 0)
        continue;
      uint32_t node = fo_rshard_node(sid, sid_len, rt->nnodes);
      fo_redis_t *sr = srv->redis_cmd(srv, node);
      if (sr == NULL || !fo_redis_connected(sr)) {
        (*srv->m.routes_node_down)++;
        continue;
      }
      pubnode_t *p = pn != NULL ? &pn[node] : NULL;
      if (p != NULL && p->n == p->cap) {
        uint32_t cap = p->cap ? 2 * p->cap : 16;
        pubcall_t *g = realloc(p->pc, sizeof(*g) + cap * sizeof(g->e[0]));
        if (g == NULL)
          p = NULL;
        else {
          if (p->pc == NULL)
            fo_sb_init(&p->sids);
          p->pc = g;
          p->cap = cap;
        }
      }
      if (p == NULL) {
        (*srv->m.drops)++;
        continue;
      }
      p->pc->e[p->n].m = m;
      p->pc->e[p->n].sid_off = (uint32_t)p->sids.len;
      p->pc->e[p->n].sid_len = (uint32_t)sid_len;
      fo_sb_append(&p->sids, sid, sid_len);
      p->n++;
      m->waiting++;
    }
  }
  for (uint32_t k = 0; pn != NULL && k < rt->nnodes; k++) {
    pubnode_t *p = &pn[k];
    if (p->n == 0)
      continue;
    pubcall_t *pc = p->pc;
    pc->node = k;
    pc->n = p->n;
    pc->sids = p->sids.data; /* the call's now */
    if (!p->sids.oom && send_pubcall(rt, srv->redis_cmd(srv, k), pc) == 0)
      continue;
    (*srv->m.redis_errors)++;
    for (uint32_t i = 0; i < pc->n; i++)
      pc->e[i].m->waiting--; /* none of them is the last: each is held above */
    free(pc->sids);
    free(pc);
  }
  free(pn);
  for (uint32_t i = 0; i < lk->n; i++)
    pub_done(lk->m[i]); /* the hold: done unless publishes are out */
  free(lk);
}

/* One look-up call per node for the staged user routes (several nodes).
 * A node that is not connected gives its routes up (see the top). Every
 * script call, here and on one node (flush_batch), goes in full (EVAL; Redis
 * keeps the compiled script; a few hundred bytes more per call of up to 128
 * messages): with EVALSHA a call that met NOSCRIPT (a SCRIPT
 * FLUSH) was sent again after later calls had succeeded (once another server
 * had loaded the script), and a user's messages arrived out of order, the
 * older ones dropped by its server as copies (stream.c, user_floor). */
static void flush_sharded(fo_router_t *rt, fo_rmsg_t **ms, uint32_t n) {
  fo_server_t *srv = rt->srv;
  bool gave_up = false;
  for (uint32_t k = 0; k < rt->nnodes; k++) {
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < n; i++)
      cnt += ms[i]->node == k;
    if (cnt == 0)
      continue;
    fo_redis_t *r = srv->redis_cmd(srv, k);
    lookup_t *lk = malloc(sizeof(*lk) + cnt * sizeof(lk->m[0]));
    const char *argv[4 + ROUTE_BATCH];
    size_t argvlen[4 + ROUTE_BATCH];
    size_t off[ROUTE_BATCH];
    char nkeys[16];
    fo_sb_t keys;
    fo_sb_init(&keys);
    uint32_t j = 0;
    for (uint32_t i = 0; i < n; i++) {
      fo_rmsg_t *m = ms[i];
      if (m->node != k)
        continue;
      off[j] = keys.len;
      fo_rkey_connections(&keys, srv->cfg->redis_prefix, (const char *)m->pub->data + m->user_off,
                          m->user_len);
      argvlen[3 + j] = keys.len - off[j];
      if (lk != NULL)
        lk->m[j] = m;
      j++;
    }
    int rc = -ENOMEM;
    if (lk != NULL && !keys.oom && r != NULL && fo_redis_connected(r)) {
      lk->node = k;
      lk->n = cnt;
      for (uint32_t i = 0; i < cnt; i++)
        argv[3 + i] = keys.data + off[i];
      snprintf(nkeys, sizeof(nkeys), "%" PRIu32, cnt);
      argv[0] = "EVAL";
      argvlen[0] = 4;
      argv[1] = lookup_lua;
      argvlen[1] = sizeof(lookup_lua) - 1;
      argv[2] = nkeys;
      argvlen[2] = strlen(nkeys);
      argv[3 + cnt] = srv->cfg->server_id;
      argvlen[3 + cnt] = strlen(srv->cfg->server_id);
      rc = fo_redis_command_argv(r, on_lookup, lk, (int)(4 + cnt), argv, argvlen);
    }
    fo_sb_free(&keys);
    if (rc == 0) {
      for (uint32_t i = 0; i < cnt; i++)
        lk->m[i]->issued = true;
      continue;
    }
    free(lk);
    bool up = r != NULL && fo_redis_connected(r); /* else out of memory */
    for (uint32_t i = 0; i < n; i++) {
      if (ms[i]->node == k) {
        (*(up ? srv->m.drops : srv->m.routes_node_down))++;
        ms[i]->done = true;
        gave_up = true;
      }
    }
  }
  if (gave_up)
    advance(rt, &rt->q[FO_RQ_USERS]);
}

static void issue_sharded(fo_router_t *rt, fo_rmsg_t *m) {
  fo_server_t *srv = rt->srv;
  fo_redis_t *r = srv->redis_cmd != NULL ? srv->redis_cmd(srv, m->node) : NULL;
  if (r == NULL)
    return;
  if (!fo_redis_connected(r)) {
    /* Given up; the caller releases it (advance may free more than m). */
    (*srv->m.routes_node_down)++;
    m->done = true;
    return;
  }
  if (m->q == FO_RQ_ROOMS) {
    publish_room(r, m);
    return;
  }
  if (rt->settle_until[m->node] != 0)
    return; /* the node just came back: held until the others re-registered */
  stage(rt, m);
}

/* ---- both ---- */

static void issue_pending(fo_router_t *rt) {
  for (int k = 0; k < FO_RQ_COUNT; k++) {
    fo_rmsg_t *m = rt->q[k].head;
    while (m != NULL) {
      fo_rmsg_t *next = m->next;
      if (!m->done && !m->issued && !m->staged && m->waiting == 0)
        issue(rt, m);
      m = next;
    }
    if (rt->q[k].head != NULL && rt->q[k].head->done)
      advance(rt, &rt->q[k]); /* routes given up above */
  }
  flush_batch(rt);
}

void fo__router_redis_up(fo_server_t *srv, uint32_t node) {
  fo_router_t *rt = srv->router;
  if (rt == NULL || node >= rt->nnodes)
    return;
  if (rt->was_up[node]) /* a reconnect, not the first connect: let the others re-register */
    rt->settle_until[node] = uv_now(srv->loop) + (uint64_t)srv->cfg->alive_ttl_ms / 2;
  rt->was_up[node] = true;
  issue_pending(rt);
}

void fo__router_tick(fo_server_t *srv) {
  fo_router_t *rt = srv->router;
  if (rt == NULL)
    return;
  bool any = false;
  for (uint32_t i = 0; i < rt->nnodes; i++) {
    if (rt->settle_until[i] != 0 && uv_now(srv->loop) >= rt->settle_until[i]) {
      rt->settle_until[i] = 0;
      any = true;
    }
  }
  if (any)
    issue_pending(rt);
}

size_t fo__deliver_user_local(fo_server_t *srv, const char *user, size_t ulen, int64_t offset,
                              fo_buf_t *frame) {
  fo_user_t *u = fo__registry_user(srv, user, ulen);
  size_t n = 0;
  fo_conn_t *c = fo__user_conns(u);
  while (c != NULL) {
    fo_conn_t *next = c->user_next; /* a slow-client close unlinks c */
    /* The stream layer holds it during a resume, drops what the
     * connection's position already covers. */
    if (fo__stream_send_user(c, offset, frame) == 0)
      n++;
    c = next;
  }
  return n;
}

int fo__router_user(fo_server_t *srv, const char *user, size_t ulen, const char *json, size_t jlen,
                    int32_t partition, int64_t offset, int64_t stream_offset) {
  fo_router_t *rt = srv->router;
  if (fo__registry_user(srv, user, ulen) != NULL) {
    fo_buf_t *frame = fo_frame_new(FO_WS_OP_TEXT, json, jlen);
    if (frame != NULL) {
      fo__deliver_user_local(srv, user, ulen, stream_offset, frame);
      fo_buf_unref(frame);
    } else {
      (*srv->m.drops)++;
    }
  }
  uint32_t user_off = 0;
  fo_buf_t *pub = fo_proto_pub_user(user, ulen, stream_offset, json, jlen, &user_off);
  fo_rmsg_t *m = calloc(1, sizeof(*m));
  if (pub == NULL || m == NULL) {
    fo_buf_unref(pub);
    free(m);
    return -ENOMEM;
  }
  m->router = rt;
  m->pub = pub;
  m->user_off = user_off;
  m->user_len = (uint32_t)ulen;
  m->partition = partition;
  m->offset = offset;
  m->q = FO_RQ_USERS;
  m->node = fo_rshard_node(user, ulen, rt->nnodes);
  enqueue(rt, m);
  issue(rt, m);
  if (m->done) /* given up at once (several nodes, its node down) */
    advance(rt, &rt->q[m->q]);
  return 0;
}

int fo__router_room(fo_server_t *srv, const char *room, size_t rlen, const char *json, size_t jlen,
                    int32_t partition, int64_t offset, int64_t stream_offset) {
  fo_router_t *rt = srv->router;
  fo_sb_t ch;
  char pre[32];
  int plen = fo_proto_pub_room_prefix(pre, sizeof(pre), stream_offset);
  fo_sb_init(&ch);
  fo_rkey_room_channel(&ch, srv->cfg->redis_prefix, room, rlen);
  fo_buf_t *pub = ch.oom || plen < 0 ? NULL : fo_buf_new(ch.len + (size_t)plen + jlen);
  fo_rmsg_t *m = calloc(1, sizeof(*m));
  if (pub == NULL || m == NULL) {
    fo_sb_free(&ch);
    fo_buf_unref(pub);
    free(m);
    return -ENOMEM;
  }
  memcpy(pub->data, ch.data, ch.len);
  memcpy(pub->data + ch.len, pre, (size_t)plen);
  memcpy(pub->data + ch.len + plen, json, jlen);
  pub->len = (uint32_t)(ch.len + (size_t)plen + jlen);
  m->router = rt;
  m->pub = pub;
  m->user_off = 0;
  m->user_len = (uint32_t)ch.len;
  m->partition = partition;
  m->offset = offset;
  m->q = FO_RQ_ROOMS;
  m->node = fo_rshard_node(room, rlen, rt->nnodes);
  fo_sb_free(&ch);
  enqueue(rt, m);
  issue(rt, m);
  if (m->done) /* given up at once (several nodes, its node down) */
    advance(rt, &rt->q[m->q]);
  return 0;
}

/* A message that needs no routing (undecodable): released in order. */
int fo__router_skip(fo_server_t *srv, int q, int32_t partition, int64_t offset) {
  fo_router_t *rt = srv->router;
  fo_rq_t *rq = &rt->q[q];
  if (rq->head == NULL) {
    if (rq->done_cb != NULL)
      rq->done_cb(rq->done_ud, partition, offset);
    return 0;
  }
  fo_rmsg_t *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return -ENOMEM;
  m->router = rt;
  m->partition = partition;
  m->offset = offset;
  m->done = true;
  m->q = (uint8_t)q;
  enqueue(rt, m);
  return 0;
}

void fo__router_pubsub(fo_server_t *srv, const char *p, size_t n) {
  const char *user, *json;
  size_t ulen, jlen;
  int64_t offset;
  (*srv->m.msgs_in_pubsub)++;
  if (fo_proto_pub_parse(p, n, &offset, &user, &ulen, &json, &jlen) != 0) {
    (*srv->m.decode_errors)++;
    return;
  }
  if (fo__registry_user(srv, user, ulen) == NULL)
    return; /* gone meanwhile */
  fo_buf_t *frame = fo_frame_new(FO_WS_OP_TEXT, json, jlen);
  if (frame == NULL) {
    (*srv->m.drops)++;
    return;
  }
  fo__deliver_user_local(srv, user, ulen, offset, frame);
  fo_buf_unref(frame);
}

void fo__router_room_pubsub(fo_server_t *srv, const char *room, size_t rlen, const char *p,
                            size_t n) {
  int64_t offset;
  const char *json;
  size_t jlen;
  (*srv->m.msgs_in_pubsub)++;
  if (fo_proto_pub_room_parse(p, n, &offset, &json, &jlen) != 0) {
    (*srv->m.decode_errors)++;
    return;
  }
  fo_buf_t *frame = fo_frame_new(FO_WS_OP_TEXT, json, jlen);
  if (frame == NULL) {
    (*srv->m.drops)++;
    return;
  }
  fo__room_broadcast(srv, room, rlen, offset, frame, true);
  fo_buf_unref(frame);
}

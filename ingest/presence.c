/* GET /v1/presence/{user} from the Redis registry (schemas/redis.md):
 * HGETALL {prefix}ws:connections:{user} (connection id -> server id), then
 * one pipelined EXISTS {prefix}ws:alive:{server} per distinct server; entries
 * of servers whose liveness key is gone are not counted.
 * Several Redis nodes (shards, schemas/redis-shards.md): one connection per
 * node; the HGETALL goes to the user's node (down: 503), each EXISTS to the
 * server's node. A server whose node is down is counted as its registry
 * entries say (their 300 s TTL bounds how stale that is): what lives on a
 * down node is its liveness key, not the user's presence. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest_int.h"
#include "json_out.h"
#include "log.h"
#include "redis_uv.h"
#include "rkeys.h"
#include "rshard.h"

typedef struct {
  fo_presence_t *pr;
  fo_redis_t *redis;
  bool connected;
} pnode_t;

struct fo_presence {
  fo_ingest_t *ing;
  pnode_t *nodes; /* n of them, in --redis order (owned) */
  uint32_t n;
  uint64_t *c_errors;
};

typedef struct {
  char *id;  /* server id, owned */
  int conns; /* registry entries pointing at it */
  int alive; /* -1 unknown, 0, 1 */
} server_t;

typedef struct {
  fo_presence_t *pr;
  fo_reply_t *reply;
  char *user; /* owned */
  size_t user_len;
  server_t *servers;
  int nservers;
  int waiting; /* EXISTS replies still to come */
  bool failed;
} lookup_t;

static void lookup_free(lookup_t *lk) {
  for (int i = 0; i < lk->nservers; i++)
    free(lk->servers[i].id);
  free(lk->servers);
  free(lk->user);
  free(lk);
}

static void lookup_answer(lookup_t *lk) {
  fo_presence_t *pr = lk->pr;
  if (lk->failed) {
    (*pr->c_errors)++;
    fo__reply_error(lk->reply, 503, "registry unavailable", "Retry-After: 1\r\n");
    lookup_free(lk);
    return;
  }
  int conns = 0;
  for (int i = 0; i < lk->nservers; i++) {
    if (lk->servers[i].alive == 1)
      conns += lk->servers[i].conns;
  }
  fo_sb_t body;
  fo_sb_init(&body);
  fo_sb_puts(&body, "{\"user\":");
  fo_json_put_str(&body, lk->user, lk->user_len);
  fo_sb_printf(&body, ",\"online\":%s,\"connections\":%d}", conns > 0 ? "true" : "false", conns);
  if (body.oom)
    fo__reply_error(lk->reply, 503, "out of memory", NULL);
  else
    fo__reply_send(lk->reply, 200, "application/json", NULL, body.data, body.len);
  fo_sb_free(&body);
  lookup_free(lk);
}

/* EXISTS callbacks get a small cookie naming the lookup and the server. */
typedef struct {
  lookup_t *lk;
  int index;
} cookie_t;

static void on_alive(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  cookie_t *ck = privdata;
  lookup_t *lk = ck->lk;
  if (reply == NULL && lk->pr->n > 1)
    lk->servers[ck->index].alive = 1; /* its node went down: trust the entries */
  else if (reply == NULL || reply->type != REDIS_REPLY_INTEGER)
    lk->failed = true;
  else
    lk->servers[ck->index].alive = reply->integer > 0 ? 1 : 0;
  free(ck);
  if (--lk->waiting == 0)
    lookup_answer(lk);
}

static int add_conn(lookup_t *lk, const char *server, size_t len) {
  for (int i = 0; i < lk->nservers; i++) {
    if (strlen(lk->servers[i].id) == len && memcmp(lk->servers[i].id, server, len) == 0) {
      lk->servers[i].conns++;
      return 0;
    }
  }
  server_t *grown = realloc(lk->servers, (size_t)(lk->nservers + 1) * sizeof(server_t));
  if (grown == NULL)
    return -ENOMEM;
  lk->servers = grown;
  char *id = strndup(server, len);
  if (id == NULL)
    return -ENOMEM;
  lk->servers[lk->nservers].id = id;
  lk->servers[lk->nservers].conns = 1;
  lk->servers[lk->nservers].alive = -1;
  lk->nservers++;
  return 0;
}

static void on_hgetall(fo_redis_t *r, redisReply *reply, void *privdata) {
  (void)r;
  lookup_t *lk = privdata;
  fo_presence_t *pr = lk->pr;
  if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
    /* WRONGTYPE and friends: not a registry we understand */
    lk->failed = true;
    lookup_answer(lk);
    return;
  }
  for (size_t i = 0; i + 1 < reply->elements; i += 2) {
    redisReply *v = reply->element[i + 1];
    if (v->type != REDIS_REPLY_STRING)
      continue;
    if (add_conn(lk, v->str, v->len) != 0) {
      lk->failed = true;
      lookup_answer(lk);
      return;
    }
  }
  if (lk->nservers == 0) {
    lookup_answer(lk);
    return;
  }
  lk->waiting = 1; /* held while queueing, so an early failure cannot finish it */
  fo_sb_t key;
  fo_sb_init(&key);
  for (int i = 0; i < lk->nservers; i++) {
    cookie_t *ck = malloc(sizeof(*ck));
    fo_sb_reset(&key);
    fo_rkey_alive(&key, pr->ing->cfg->redis_prefix, lk->servers[i].id);
    if (ck == NULL || key.oom) {
      free(ck);
      lk->failed = true;
      break;
    }
    ck->lk = lk;
    ck->index = i;
    const char *id = lk->servers[i].id;
    pnode_t *n = &pr->nodes[fo_rshard_node(id, strlen(id), pr->n)];
    if (pr->n > 1 && !n->connected) {
      free(ck);
      lk->servers[i].alive = 1; /* its node is down: trust the entries (see the top) */
      continue;
    }
    const char *argv[2] = {"EXISTS", key.data};
    size_t argvlen[2] = {6, key.len};
    if (fo_redis_command_argv(n->redis, on_alive, ck, 2, argv, argvlen) != 0) {
      free(ck);
      lk->failed = true;
      break;
    }
    lk->waiting++;
  }
  fo_sb_free(&key);
  if (--lk->waiting == 0)
    lookup_answer(lk);
}

void fo__presence_get(fo_presence_t *pr, const char *user, size_t user_len, fo_reply_t *reply) {
  lookup_t *lk = calloc(1, sizeof(*lk));
  char *copy = lk != NULL ? strndup(user, user_len) : NULL;
  if (copy == NULL) {
    free(lk);
    fo__reply_error(reply, 503, "out of memory", NULL);
    return;
  }
  lk->pr = pr;
  lk->reply = reply;
  lk->user = copy;
  lk->user_len = user_len;
  fo_sb_t key;
  fo_sb_init(&key);
  fo_rkey_connections(&key, pr->ing->cfg->redis_prefix, user, user_len);
  const char *argv[2] = {"HGETALL", key.data};
  size_t argvlen[2] = {7, key.len};
  fo_redis_t *r = pr->nodes[fo_rshard_node(user, user_len, pr->n)].redis;
  int rc = key.oom ? -ENOMEM : fo_redis_command_argv(r, on_hgetall, lk, 2, argv, argvlen);
  fo_sb_free(&key);
  if (rc != 0) {
    lk->failed = true;
    lookup_answer(lk);
  }
}

static void on_state(fo_redis_t *r, bool connected, void *ud) {
  (void)r;
  pnode_t *n = ud;
  n->connected = connected;
}

int fo__presence_new(fo_ingest_t *ing, fo_presence_t **out) {
  fo_presence_t *pr = calloc(1, sizeof(*pr));
  if (pr == NULL)
    return -ENOMEM;
  pr->ing = ing;
  pr->n = ing->cfg->redis.n > 0 ? (uint32_t)ing->cfg->redis.n : 1;
  pr->nodes = calloc(pr->n, sizeof(*pr->nodes));
  pr->c_errors = fo_metrics_counter(ing->metrics, "fanout_ingest_presence_errors_total",
                                    "Presence lookups answered 503 (Redis unavailable)");
  if (pr->c_errors == NULL || pr->nodes == NULL) {
    free(pr->nodes);
    free(pr);
    return -ENOMEM;
  }
  for (uint32_t i = 0; i < pr->n; i++) {
    char name[32];
    snprintf(name, sizeof(name), pr->n > 1 ? "presence-%u" : "presence", i);
    fo_redis_opts_t opts;
    memset(&opts, 0, sizeof(opts));
    opts.host = ing->cfg->redis.n > 0 ? ing->cfg->redis.v[i].host : "127.0.0.1";
    opts.port = ing->cfg->redis.n > 0 ? ing->cfg->redis.v[i].port : 6379;
    opts.connect_timeout_ms = (int)ing->cfg->redis_timeout_ms;
    opts.command_timeout_ms = (int)ing->cfg->redis_timeout_ms;
    opts.name = name;
    opts.password = ing->cfg->redis_password;
    opts.user = ing->cfg->redis_user;
    pr->nodes[i].pr = pr;
    int rc = fo_redis_new(ing->loop, &opts, on_state, &pr->nodes[i], &pr->nodes[i].redis);
    if (rc != 0) {
      fo__presence_close(pr);
      return rc;
    }
  }
  *out = pr;
  return 0;
}

/* Every node connected. */
bool fo__presence_connected(const fo_presence_t *pr) {
  for (uint32_t i = 0; i < pr->n; i++)
    if (!pr->nodes[i].connected)
      return false;
  return true;
}

void fo__presence_down_nodes(const fo_presence_t *pr, fo_sb_t *out) {
  bool first = true;
  for (uint32_t i = 0; i < pr->n; i++) {
    if (pr->nodes[i].connected)
      continue;
    const fo_addr_t *a = &pr->ing->cfg->redis.v[i];
    bool v6 = strchr(a->host, ':') != NULL;
    fo_sb_printf(out, "%s{\"node\":%u,\"addr\":\"%s%s%s:%d\"}", first ? "" : ",", i, v6 ? "[" : "",
                 a->host, v6 ? "]" : "", a->port);
    first = false;
  }
}

void fo__presence_close(fo_presence_t *pr) {
  if (pr == NULL)
    return;
  /* pending callbacks run with NULL: lookups answer 503 */
  for (uint32_t i = 0; pr->nodes != NULL && i < pr->n; i++)
    fo_redis_close(pr->nodes[i].redis);
  free(pr->nodes);
  free(pr);
}

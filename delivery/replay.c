/* fo_replay (replay.h). Threads: the loop thread submits, cancels and calls
 * back; the reader thread runs rounds. They share `pending` (submitted, not
 * yet taken by a round), `done` (answered, not yet called back) and each
 * request's `cancelled`, `held` and `answered` flags, all under `mu`. A
 * request answered early in a round goes to `done` at once (a short gap
 * need not wait for a long one), but the round still points at it: the loop
 * calls back and frees its records, and whichever of the two lets go last
 * (the round's end, or the call back) frees it. A cancelled one comes back
 * through `done` like the others and is freed without a call back. */
#include "replay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "kafka_uv.h"
#include "list.h"
#include "log.h"
#include "map.h"

#define MOD "replay"

struct fo_replay_handle {
  STAILQ_ENTRY(fo_replay_handle) q; /* in r->staged, r->pending or r->done */
  fo_replay_t *r;
  fo_replay_req_t req; /* req.key points to key */
  char *key;           /* owned copy, NULL for "every record" */
  fo_replay_cb cb;
  void *ud;
  bool cancelled; /* under r->mu */
  /* Under r->mu: the reader still points at it (its round is running), so
   * the loop, once it called back, leaves the freeing to the reader. */
  bool held, answered;
  /* The answer (written by whoever finishes the request, read by the loop
   * after it came through `done`). */
  int status;
  int64_t end, end_t_ms;
  fo_replay_rec_t *recs; /* owned, each rec's key+value in one malloc at rec.key */
  size_t n, nalloc;
  /* Round state (reader thread only). */
  bool finished;
  bool anchored; /* the record at since was seen (or none is needed) */
  int64_t eff_end;
  struct fo_replay_handle *next_same_key;
};

STAILQ_HEAD(req_list, fo_replay_handle);

struct fo_replay {
  uv_loop_t *loop;
  uv_async_t async; /* reader -> loop: `done` is not empty */
  uv_idle_t idle;   /* moves `staged` to `pending` once per loop iteration */
  uv_thread_t thread;
  uv_mutex_t mu;
  uv_cond_t cond;
  struct req_list staged; /* loop thread only */
  struct req_list pending, done;
  bool stop;   /* under mu */
  bool closed; /* loop thread: fo_replay_close was called */
  int closed_handles;
  rd_kafka_t *rk;
  char *users_topic, *rooms_topic;
  int64_t timeout_ms;
  fo_log_ratelimit_t rl; /* reader thread only */
  struct {
    _Atomic uint64_t rounds, watermark_queries, scans, records_scanned, cancelled;
    _Atomic uint64_t by_status[FO_REPLAY_NSTATUS];
  } m;
};

const char *fo_replay_status_name(int status) {
  static const char *const names[] = {"ok", "expired", "foreign", "over_cap", "too_far", "error"};
  if (status < 0 || status >= FO_REPLAY_NSTATUS)
    return "unknown";
  return names[status];
}

/* One copy of a record's key and value, shared by every request of the
 * round that it matched (thousands when a room's members resume
 * together); each request's rec holds a reference (its .key points at
 * data), the last one to let go frees it, on either thread. */
typedef struct {
  _Atomic uint32_t refs;
  char data[]; /* key, value, NUL */
} shrec_t;

static void shrec_unref(const char *key) {
  shrec_t *sr = (shrec_t *)(void *)(key - offsetof(shrec_t, data));
  if (atomic_fetch_sub_explicit(&sr->refs, 1, memory_order_acq_rel) == 1)
    free(sr);
}

static void req_free(fo_replay_handle_t *h) {
  for (size_t i = 0; i < h->n; i++)
    shrec_unref(h->recs[i].key);
  free(h->recs);
  free(h->key);
  free(h);
}

static void drop_recs(fo_replay_handle_t *h) {
  for (size_t i = 0; i < h->n; i++)
    shrec_unref(h->recs[i].key);
  free(h->recs);
  h->recs = NULL;
  h->n = h->nalloc = 0;
}

/* ---- loop thread ---------------------------------------------------------- */

static void call_back(fo_replay_t *r, fo_replay_handle_t *h) {
  if (h->cancelled) {
    atomic_fetch_add_explicit(&r->m.cancelled, 1, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&r->m.by_status[h->status], 1, memory_order_relaxed);
    h->cb(h->ud, h->status, h->end, h->end_t_ms, h->status == FO_REPLAY_OK ? h->recs : NULL,
          h->status == FO_REPLAY_OK ? h->n : 0);
  }
  drop_recs(h); /* the reader never touches them after finish() */
  uv_mutex_lock(&r->mu);
  bool held = h->held;
  h->answered = true;
  uv_mutex_unlock(&r->mu);
  if (!held)
    req_free(h);
}

static void on_async(uv_async_t *a) {
  fo_replay_t *r = a->data;
  struct req_list done;
  STAILQ_INIT(&done);
  uv_mutex_lock(&r->mu);
  STAILQ_CONCAT(&done, &r->done);
  uv_mutex_unlock(&r->mu);
  fo_replay_handle_t *h, *tmp;
  STAILQ_FOREACH_SAFE(h, &done, q, tmp) {
    call_back(r, h);
  }
}

static void on_idle(uv_idle_t *idle) {
  fo_replay_t *r = idle->data;
  uv_idle_stop(idle);
  if (STAILQ_EMPTY(&r->staged))
    return;
  uv_mutex_lock(&r->mu);
  STAILQ_CONCAT(&r->pending, &r->staged);
  uv_cond_signal(&r->cond);
  uv_mutex_unlock(&r->mu);
}

/* Hands h to the loop (either thread). */
static void finish(fo_replay_t *r, fo_replay_handle_t *h, int status, int64_t end,
                   int64_t end_t_ms) {
  h->finished = true;
  h->status = status;
  h->end = end;
  h->end_t_ms = end_t_ms;
  if (status != FO_REPLAY_OK)
    drop_recs(h);
  uv_mutex_lock(&r->mu);
  STAILQ_INSERT_TAIL(&r->done, h, q);
  uv_mutex_unlock(&r->mu);
  uv_async_send(&r->async);
}

int fo_replay_submit(fo_replay_t *r, const fo_replay_req_t *req, fo_replay_cb cb, void *ud,
                     fo_replay_handle_t **out) {
  if (r->closed)
    return -ESHUTDOWN;
  if ((req->kind != 'u' && req->kind != 'r') || req->partition < 0 || cb == NULL || req->end < -1 ||
      (req->key == NULL && req->keylen != 0))
    return -EINVAL;
  fo_replay_handle_t *h = calloc(1, sizeof(*h));
  if (h == NULL)
    return -ENOMEM;
  h->r = r;
  h->req = *req;
  if (req->key != NULL) {
    h->key = malloc(req->keylen + 1);
    if (h->key == NULL) {
      free(h);
      return -ENOMEM;
    }
    memcpy(h->key, req->key, req->keylen);
    h->key[req->keylen] = '\0';
  }
  h->req.key = h->key;
  h->cb = cb;
  h->ud = ud;
  h->end = -1;
  if (out != NULL)
    *out = h;
  if (req->end >= 0 && req->since == req->end) {
    /* Nothing missed: no watermark query, no fetch. */
    finish(r, h, FO_REPLAY_OK, req->end, (int64_t)fo_now_ms());
    return 0;
  }
  STAILQ_INSERT_TAIL(&r->staged, h, q);
  uv_idle_start(&r->idle, on_idle);
  return 0;
}

void fo_replay_cancel(fo_replay_handle_t *h) {
  fo_replay_t *r = h->r;
  uv_mutex_lock(&r->mu);
  h->cancelled = true;
  uv_mutex_unlock(&r->mu);
}

void fo_replay_metrics(const fo_replay_t *r, fo_replay_metrics_t *out) {
  fo_replay_t *m = (fo_replay_t *)r;
  out->rounds = atomic_load_explicit(&m->m.rounds, memory_order_relaxed);
  out->watermark_queries = atomic_load_explicit(&m->m.watermark_queries, memory_order_relaxed);
  out->scans = atomic_load_explicit(&m->m.scans, memory_order_relaxed);
  out->records_scanned = atomic_load_explicit(&m->m.records_scanned, memory_order_relaxed);
  out->cancelled = atomic_load_explicit(&m->m.cancelled, memory_order_relaxed);
  for (int i = 0; i < FO_REPLAY_NSTATUS; i++)
    out->by_status[i] = atomic_load_explicit(&m->m.by_status[i], memory_order_relaxed);
}

/* ---- reader thread: a round ----------------------------------------------- */

typedef struct {
  fo_mapent_t ent; /* key = the first request's key copy */
  fo_replay_handle_t *first, *last;
} keygrp_t;

typedef struct {
  char kind;
  int32_t partition;
  const char *topic;
  int64_t lo, hi;
  fo_replay_handle_t **reqs; /* all of this partition's requests in the round */
  size_t nreqs;
  /* The scan (requests still open after the watermark checks). */
  fo_replay_handle_t **by_since, **by_end; /* sorted copies */
  size_t nscan, since_i, end_i, open;
  fo_map_t keys;                /* keygrp_t by key */
  fo_replay_handle_t *everyone; /* NULL-key requests, chained by next_same_key */
  keygrp_t *grps;
  size_t ngrps;
  int64_t start, stop, next;
  bool scanning;
  rd_kafka_resp_err_t wm_err;
} part_t;

static int cmp_since(const void *a, const void *b) {
  const fo_replay_handle_t *x = *(fo_replay_handle_t *const *)a;
  const fo_replay_handle_t *y = *(fo_replay_handle_t *const *)b;
  return x->req.since < y->req.since ? -1 : x->req.since > y->req.since;
}

static int cmp_end(const void *a, const void *b) {
  const fo_replay_handle_t *x = *(fo_replay_handle_t *const *)a;
  const fo_replay_handle_t *y = *(fo_replay_handle_t *const *)b;
  return x->eff_end < y->eff_end ? -1 : x->eff_end > y->eff_end;
}

static int64_t remaining_ms(uint64_t deadline) {
  uint64_t now = fo_now_ms();
  return now >= deadline ? 0 : (int64_t)(deadline - now);
}

static void close_req(fo_replay_t *r, part_t *p, fo_replay_handle_t *h, int status, int64_t end,
                      int64_t end_t_ms) {
  if (h->finished)
    return;
  finish(r, h, status, end, end_t_ms);
  if (p != NULL && p->scanning && p->open > 0)
    p->open--;
}

/* The watermark verdicts that need no fetch. Returns true when h is
 * answered. */
static bool judge(fo_replay_t *r, part_t *p, fo_replay_handle_t *h, int64_t now) {
  const fo_replay_req_t *q = &h->req;
  int64_t end = q->end >= 0 ? q->end : p->hi - 1;
  h->eff_end = end;
  if (q->since == -2) {
    close_req(r, NULL, h, FO_REPLAY_OK, end, now);
  } else if (q->since < p->lo && !(q->since == -1 && p->lo == 0)) {
    close_req(r, NULL, h, FO_REPLAY_EXPIRED, end, now);
  } else if (q->since >= p->hi || end >= p->hi) {
    close_req(r, NULL, h, FO_REPLAY_FOREIGN, end, now);
  } else if (q->since >= end) {
    close_req(r, NULL, h, FO_REPLAY_OK, end, now);
  } else if (q->max_scan > 0 && (uint64_t)(end - q->since) > q->max_scan) {
    close_req(r, NULL, h, FO_REPLAY_TOO_FAR, end, now);
  } else {
    h->anchored = q->since < 0;
    return false;
  }
  return true;
}

/* *cur: this record's shared copy, made by the first request it matches. */
static int add_rec(fo_replay_handle_t *h, const rd_kafka_message_t *msg, int64_t ts,
                   shrec_t **cur) {
  if (h->n == h->nalloc) {
    size_t na = h->nalloc == 0 ? 8 : h->nalloc * 2;
    fo_replay_rec_t *nr = realloc(h->recs, na * sizeof(*nr));
    if (nr == NULL)
      return -ENOMEM;
    h->recs = nr;
    h->nalloc = na;
  }
  if (*cur == NULL) {
    shrec_t *sr = malloc(sizeof(*sr) + msg->key_len + msg->len + 1);
    if (sr == NULL)
      return -ENOMEM;
    atomic_init(&sr->refs, 0);
    if (msg->key_len > 0)
      memcpy(sr->data, msg->key, msg->key_len);
    if (msg->len > 0)
      memcpy(sr->data + msg->key_len, msg->payload, msg->len);
    sr->data[msg->key_len + msg->len] = '\0';
    *cur = sr;
  }
  atomic_fetch_add_explicit(&(*cur)->refs, 1, memory_order_relaxed);
  h->recs[h->n++] = (fo_replay_rec_t){.offset = msg->offset,
                                      .t_ms = ts,
                                      .key = (*cur)->data,
                                      .keylen = msg->key_len,
                                      .value = (*cur)->data + msg->key_len,
                                      .len = msg->len};
  return 0;
}

static void match(fo_replay_t *r, part_t *p, fo_replay_handle_t *h, const rd_kafka_message_t *msg,
                  int64_t ts, int64_t now, shrec_t **cur) {
  if (h->finished || msg->offset <= h->req.since || msg->offset > h->eff_end)
    return;
  if (h->n == 0 && h->req.max_age_ms > 0 && now - ts > (int64_t)h->req.max_age_ms) {
    close_req(r, p, h, FO_REPLAY_EXPIRED, h->eff_end, now);
  } else if (h->n >= h->req.cap) {
    close_req(r, p, h, FO_REPLAY_OVER_CAP, h->eff_end, now);
  } else if (add_rec(h, msg, ts, cur) != 0) {
    close_req(r, p, h, FO_REPLAY_ERROR, h->eff_end, now);
  }
}

static void on_record(fo_replay_t *r, part_t *p, const rd_kafka_message_t *msg, int64_t now) {
  int64_t o = msg->offset;
  if (o < p->next)
    return; /* not of this round's fetch */
  p->next = o + 1;
  atomic_fetch_add_explicit(&r->m.records_scanned, 1, memory_order_relaxed);
  int64_t ts = rd_kafka_message_timestamp(msg, NULL);
  shrec_t *cur = NULL;
  /* Anchors: the record at since must exist and not be newer than the
   * position says. */
  while (p->since_i < p->nscan && p->by_since[p->since_i]->req.since <= o) {
    fo_replay_handle_t *h = p->by_since[p->since_i++];
    if (h->finished || h->anchored)
      continue;
    if (h->req.since < o || ts > h->req.since_t_ms)
      close_req(r, p, h, FO_REPLAY_FOREIGN, h->eff_end, now);
    else
      h->anchored = true;
  }
  if (msg->key != NULL) {
    fo_mapent_t *e =
        fo_map_get(&p->keys, msg->key, msg->key_len, fo_map_hash(msg->key, msg->key_len));
    for (fo_replay_handle_t *h = e != NULL ? ((keygrp_t *)e)->first : NULL; h != NULL;
         h = h->next_same_key)
      match(r, p, h, msg, ts, now, &cur);
  }
  for (fo_replay_handle_t *h = p->everyone; h != NULL; h = h->next_same_key)
    match(r, p, h, msg, ts, now, &cur);
  /* Made, then every add failed: nobody holds it (and nobody can yet). */
  if (cur != NULL && atomic_load_explicit(&cur->refs, memory_order_relaxed) == 0)
    free(cur);
  while (p->end_i < p->nscan && p->by_end[p->end_i]->eff_end <= o) {
    fo_replay_handle_t *h = p->by_end[p->end_i++];
    close_req(r, p, h, FO_REPLAY_OK, h->eff_end, h->eff_end == o ? ts : now);
  }
}

static void fail_part(fo_replay_t *r, part_t *p, int status, int64_t now) {
  for (size_t i = 0; i < p->nscan; i++)
    close_req(r, p, p->by_since[i], status, p->by_since[i]->eff_end, now);
  p->open = 0;
}

static part_t *find_part(part_t *parts, size_t nparts, const char *topic, int32_t partition) {
  for (size_t i = 0; i < nparts; i++) {
    if (parts[i].partition == partition && strcmp(parts[i].topic, topic) == 0)
      return &parts[i];
  }
  return NULL;
}

/* Builds p's scan structures from its requests still open. Returns 0 or
 * -ENOMEM. */
static int plan_scan(part_t *p) {
  size_t n = 0;
  for (size_t i = 0; i < p->nreqs; i++)
    n += !p->reqs[i]->finished;
  if (n == 0)
    return 0;
  p->by_since = calloc(n, sizeof(*p->by_since));
  p->by_end = calloc(n, sizeof(*p->by_end));
  p->grps = calloc(n, sizeof(*p->grps));
  if (p->by_since == NULL || p->by_end == NULL || p->grps == NULL)
    return -ENOMEM;
  p->start = INT64_MAX;
  p->stop = -1;
  for (size_t i = 0; i < p->nreqs; i++) {
    fo_replay_handle_t *h = p->reqs[i];
    if (h->finished)
      continue;
    p->by_since[p->nscan] = h;
    p->by_end[p->nscan++] = h;
    int64_t from = h->req.since < 0 ? 0 : h->req.since;
    if (from < p->start)
      p->start = from;
    if (h->eff_end > p->stop)
      p->stop = h->eff_end;
    if (h->key == NULL) {
      h->next_same_key = p->everyone;
      p->everyone = h;
      continue;
    }
    uint32_t hash = fo_map_hash(h->key, h->req.keylen);
    fo_mapent_t *e = fo_map_get(&p->keys, h->key, h->req.keylen, hash);
    if (e == NULL) {
      keygrp_t *g = &p->grps[p->ngrps++];
      g->ent = (fo_mapent_t){.hash = hash, .len = (uint32_t)h->req.keylen, .key = h->key};
      if (fo_map_put(&p->keys, &g->ent) != 0)
        return -ENOMEM;
      e = &g->ent;
    }
    /* In submission order within a key (a room's thousands of members
     * resuming at once share one key: appended in O(1)). */
    keygrp_t *g = (keygrp_t *)e;
    if (g->last != NULL)
      g->last->next_same_key = h;
    else
      g->first = h;
    g->last = h;
  }
  qsort(p->by_since, p->nscan, sizeof(*p->by_since), cmp_since);
  qsort(p->by_end, p->nscan, sizeof(*p->by_end), cmp_end);
  p->open = p->nscan;
  p->next = p->start;
  p->scanning = true;
  return 0;
}

static bool stopping(fo_replay_t *r) {
  uv_mutex_lock(&r->mu);
  bool s = r->stop;
  uv_mutex_unlock(&r->mu);
  return s;
}

static void scan(fo_replay_t *r, part_t *parts, size_t nparts, uint64_t deadline, int64_t now) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)nparts);
  size_t nscanning = 0;
  for (size_t i = 0; i < nparts; i++) {
    if (parts[i].scanning && parts[i].open > 0) {
      rd_kafka_topic_partition_list_add(l, parts[i].topic, parts[i].partition)->offset =
          parts[i].start;
      nscanning++;
    }
  }
  if (nscanning == 0) {
    rd_kafka_topic_partition_list_destroy(l);
    return;
  }
  atomic_fetch_add_explicit(&r->m.scans, nscanning, memory_order_relaxed);
  rd_kafka_resp_err_t err = rd_kafka_assign(r->rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    FO_LOG_WARN(MOD, "assign failed", "err=\"%s\"", rd_kafka_err2str(err));
    for (size_t i = 0; i < nparts; i++)
      fail_part(r, &parts[i], FO_REPLAY_ERROR, now);
    return;
  }
  size_t open_parts = nscanning;
  while (open_parts > 0) {
    int64_t left = remaining_ms(deadline);
    if (left == 0 || stopping(r))
      break;
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(r->rk, (int)(left < 100 ? left : 100));
    if (msg == NULL)
      continue;
    part_t *p = msg->rkt != NULL
                    ? find_part(parts, nparts, rd_kafka_topic_name(msg->rkt), msg->partition)
                    : NULL;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (p != NULL && p->open > 0) {
        on_record(r, p, msg, now);
        if (p->open == 0)
          open_parts--;
      }
    } else if (p != NULL && p->open > 0) {
      /* Out of range (deleted meanwhile): expired. The log ended before an
       * end below the high watermark (EOF with requests open), or anything
       * else: error. */
      int status =
          msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ? FO_REPLAY_EXPIRED : FO_REPLAY_ERROR;
      FO_LOG_WARN(MOD, "scan error", "topic=%s partition=%" PRId32 " err=\"%s\"", p->topic,
                  p->partition, rd_kafka_message_errstr(msg));
      fail_part(r, p, status, now);
      open_parts--;
    } else if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      /* Broker-wide (e.g. all brokers down): librdkafka retries; the round's
       * timeout ends the wait. Repeats every few ms while it lasts. */
      uint64_t suppressed;
      if (fo_log_ratelimit(&r->rl, fo_now_ms(), 5000, &suppressed))
        FO_LOG_WARN(MOD, "consumer error", "err=\"%s\" suppressed=%llu",
                    rd_kafka_message_errstr(msg), (unsigned long long)suppressed);
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_assign(r->rk, NULL);
}

/* Every partition's low and high watermark (ListOffsets). One partition:
 * rd_kafka_query_watermark_offsets (its two requests go out together).
 * More: two rd_kafka_offsets_for_times calls over all of them (timestamps
 * -2 = earliest, -1 = latest), one request per leader each: measured with
 * 4 partitions on one broker, p50 0.65 -> 0.21 ms on the embedded broker,
 * 6.8 -> 1.7 ms on Apache Kafka 3.9; with 1 partition the single call is
 * as fast or faster (0.18 vs 0.28 ms, 1.0 vs 1.3 ms). */
static void query_watermarks(fo_replay_t *r, part_t *parts, size_t nparts, uint64_t deadline) {
  int64_t left = remaining_ms(deadline);
  for (size_t i = 0; i < nparts; i++)
    parts[i].wm_err = RD_KAFKA_RESP_ERR__TIMED_OUT;
  if (left <= 0)
    return;
  atomic_fetch_add_explicit(&r->m.watermark_queries, nparts, memory_order_relaxed);
  if (nparts == 1) {
    parts[0].wm_err = rd_kafka_query_watermark_offsets(r->rk, parts[0].topic, parts[0].partition,
                                                       &parts[0].lo, &parts[0].hi, (int)left);
    return;
  }
  for (int which = 0; which < 2; which++) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)nparts);
    for (size_t i = 0; i < nparts; i++)
      rd_kafka_topic_partition_list_add(l, parts[i].topic, parts[i].partition)->offset =
          which == 0 ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
    left = remaining_ms(deadline);
    rd_kafka_resp_err_t err =
        left > 0 ? rd_kafka_offsets_for_times(r->rk, l, (int)left) : RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (size_t i = 0; i < nparts; i++) {
      /* The list keeps the order it was built in. */
      const rd_kafka_topic_partition_t *e = &l->elems[i];
      rd_kafka_resp_err_t perr = err != RD_KAFKA_RESP_ERR_NO_ERROR ? err : e->err;
      if (which == 0) {
        parts[i].wm_err = perr;
        parts[i].lo = e->offset;
      } else {
        if (parts[i].wm_err == RD_KAFKA_RESP_ERR_NO_ERROR)
          parts[i].wm_err = perr;
        parts[i].hi = e->offset;
      }
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
}

static void run_round(fo_replay_t *r, struct req_list *reqs) {
  uint64_t deadline = fo_now_ms() + (uint64_t)r->timeout_ms, t0 = uv_hrtime();
  atomic_fetch_add_explicit(&r->m.rounds, 1, memory_order_relaxed);
  size_t nreqs = 0;
  fo_replay_handle_t *h;
  STAILQ_FOREACH(h, reqs, q) {
    nreqs++;
  }
  part_t *parts = calloc(nreqs, sizeof(*parts));
  fo_replay_handle_t **slots = calloc(nreqs, sizeof(*slots));
  size_t nparts = 0;
  if (parts == NULL || slots == NULL) {
    free(parts);
    free(slots);
    fo_replay_handle_t *tmp;
    STAILQ_FOREACH_SAFE(h, reqs, q, tmp) {
      uv_mutex_lock(&r->mu);
      h->held = false;
      uv_mutex_unlock(&r->mu);
      finish(r, h, FO_REPLAY_ERROR, -1, 0);
    }
    return;
  }
  /* Group by partition; each part's reqs point into `slots`. */
  STAILQ_FOREACH(h, reqs, q) {
    const char *topic = h->req.kind == 'u' ? r->users_topic : r->rooms_topic;
    if (find_part(parts, nparts, topic, h->req.partition) == NULL)
      parts[nparts++] =
          (part_t){.kind = h->req.kind, .partition = h->req.partition, .topic = topic};
    find_part(parts, nparts, topic, h->req.partition)->nreqs++;
  }
  size_t at = 0;
  for (size_t i = 0; i < nparts; i++) {
    parts[i].reqs = slots + at;
    at += parts[i].nreqs;
    parts[i].nreqs = 0;
  }
  fo_replay_handle_t *tmp;
  STAILQ_FOREACH_SAFE(h, reqs, q, tmp) {
    const char *topic = h->req.kind == 'u' ? r->users_topic : r->rooms_topic;
    part_t *p = find_part(parts, nparts, topic, h->req.partition);
    p->reqs[p->nreqs++] = h;
  }
  query_watermarks(r, parts, nparts, deadline);
  for (size_t i = 0; i < nparts; i++) {
    part_t *p = &parts[i];
    int64_t now = (int64_t)fo_now_ms();
    for (size_t j = 0; j < p->nreqs; j++) {
      if (p->wm_err != RD_KAFKA_RESP_ERR_NO_ERROR)
        close_req(r, NULL, p->reqs[j], FO_REPLAY_ERROR, -1, now);
      else
        judge(r, p, p->reqs[j], now);
    }
    if (p->wm_err != RD_KAFKA_RESP_ERR_NO_ERROR)
      FO_LOG_WARN(MOD, "watermark query failed", "topic=%s partition=%" PRId32 " err=\"%s\"",
                  p->topic, p->partition, rd_kafka_err2str(p->wm_err));
  }
  int64_t now = (int64_t)fo_now_ms();
  uint64_t t_wm = uv_hrtime();
  for (size_t i = 0; i < nparts; i++) {
    if (plan_scan(&parts[i]) != 0)
      fail_part(r, &parts[i], FO_REPLAY_ERROR, now);
  }
  scan(r, parts, nparts, deadline, now);
  FO_LOG_DEBUG(MOD, "round", "requests=%zu partitions=%zu watermarks_us=%llu scan_us=%llu", nreqs,
               nparts, (unsigned long long)((t_wm - t0) / 1000),
               (unsigned long long)((uv_hrtime() - t_wm) / 1000));
  /* Timed out, stopped or failed: whatever is left. */
  for (size_t i = 0; i < nparts; i++) {
    for (size_t j = 0; j < parts[i].nreqs; j++)
      close_req(r, NULL, parts[i].reqs[j], FO_REPLAY_ERROR, parts[i].reqs[j]->eff_end, now);
    fo_map_free(&parts[i].keys);
    free(parts[i].by_since);
    free(parts[i].by_end);
    free(parts[i].grps);
  }
  free(parts);
  /* Let go: free what the loop already answered, the rest it frees. */
  uv_mutex_lock(&r->mu);
  size_t nfree = 0;
  for (size_t i = 0; i < nreqs; i++) {
    slots[i]->held = false;
    if (slots[i]->answered)
      slots[nfree++] = slots[i];
  }
  uv_mutex_unlock(&r->mu);
  for (size_t i = 0; i < nfree; i++)
    req_free(slots[i]);
  free(slots);
}

/* Connects and learns the leaders before the first request: the first
 * round on a cold handle cost ~0.6 s on Apache Kafka (connections,
 * metadata), and a server's first resumes come in a burst (a deploy). */
static void warm_up(fo_replay_t *r) {
  const char *topics[] = {r->users_topic, r->rooms_topic};
  for (int i = 0; i < 2; i++) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->rk, topics[i], NULL);
    if (rkt == NULL)
      continue;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(r->rk, 0, rkt, &md, 2000);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
      rd_kafka_metadata_destroy(md);
    else
      FO_LOG_INFO(MOD, "no metadata yet", "topic=%s err=\"%s\"", topics[i], rd_kafka_err2str(err));
    rd_kafka_topic_destroy(rkt);
  }
}

static void reader(void *arg) {
  fo_replay_t *r = arg;
  warm_up(r);
  for (;;) {
    struct req_list round;
    STAILQ_INIT(&round);
    uv_mutex_lock(&r->mu);
    while (STAILQ_EMPTY(&r->pending) && !r->stop)
      uv_cond_wait(&r->cond, &r->mu);
    bool stop = r->stop;
    /* Cancelled ones go straight back to be freed. */
    fo_replay_handle_t *h, *tmp;
    STAILQ_FOREACH_SAFE(h, &r->pending, q, tmp) {
      if (h->cancelled || stop)
        STAILQ_INSERT_TAIL(&r->done, h, q);
      else {
        h->held = true;
        STAILQ_INSERT_TAIL(&round, h, q);
      }
    }
    STAILQ_INIT(&r->pending);
    uv_mutex_unlock(&r->mu);
    if (stop)
      break;
    if (!STAILQ_EMPTY(&round))
      run_round(r, &round);
    else
      uv_async_send(&r->async);
  }
  /* Not a group member: this only stops the fetchers. */
  rd_kafka_consumer_close(r->rk);
  rd_kafka_destroy(r->rk);
  r->rk = NULL;
}

/* ---- lifetime ------------------------------------------------------------- */

static rd_kafka_t *make_consumer(const fo_replay_opts_t *o, char *err, size_t errlen) {
  /* Ours first, then the operator's (they win), then what the reader's
   * logic depends on (wins over everything). */
  static const char *const soft[] = {"fetch.wait.max.ms=10", "queued.max.messages.kbytes=4096",
                                     "fetch.error.backoff.ms=100"};
  char **extra = NULL;
  int nextra = 0;
  if (o->kafka_opts != NULL && o->kafka_opts[0] != '\0') {
    nextra = fo_cfg_list_split(o->kafka_opts, &extra);
    if (nextra < 0) {
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
  }
  size_t nsoft = sizeof(soft) / sizeof(soft[0]);
  char **all = calloc(nsoft + (size_t)nextra + 1, sizeof(char *));
  if (all == NULL) {
    fo_cfg_list_free(extra);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < nsoft; i++)
    all[i] = (char *)soft[i];
  for (int i = 0; i < nextra; i++)
    all[nsoft + (size_t)i] = extra[i];
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_CONSUMER, o->bootstrap, o->client_id, all, err, errlen);
  free(all);
  fo_cfg_list_free(extra);
  if (conf == NULL)
    return NULL;
  char group[300];
  /* Never joined: unique so that it cannot collide with a real group. */
  snprintf(group, sizeof(group), "%s-%d-%016" PRIx64, o->client_id, (int)getpid(),
           (uint64_t)uv_hrtime());
  const char *const hard[][2] = {
      {"group.id", group},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "error"},
      {"enable.partition.eof", "true"},
  };
  for (size_t i = 0; i < sizeof(hard) / sizeof(hard[0]); i++) {
    char why[256];
    if (rd_kafka_conf_set(conf, hard[i][0], hard[i][1], why, sizeof(why)) != RD_KAFKA_CONF_OK) {
      snprintf(err, errlen, "kafka setting %s: %s", hard[i][0], why);
      rd_kafka_conf_destroy(conf);
      return NULL;
    }
  }
  char why[512];
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
  if (rk == NULL) {
    snprintf(err, errlen, "kafka: %s", why);
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  /* Errors and the rest of the main queue come out of consumer_poll. */
  rd_kafka_poll_set_consumer(rk);
  return rk;
}

static void on_close_free(uv_handle_t *handle) {
  fo_replay_t *r = handle->data;
  /* Two handles: the second close callback frees. */
  if (++r->closed_handles == 2) {
    uv_mutex_destroy(&r->mu);
    uv_cond_destroy(&r->cond);
    free(r->users_topic);
    free(r->rooms_topic);
    free(r);
  }
}

int fo_replay_new(uv_loop_t *loop, const fo_replay_opts_t *opts, char *err, size_t errlen,
                  fo_replay_t **out) {
  fo_replay_t *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  r->loop = loop;
  r->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
  STAILQ_INIT(&r->staged);
  STAILQ_INIT(&r->pending);
  STAILQ_INIT(&r->done);
  r->users_topic = strdup(opts->users_topic);
  r->rooms_topic = strdup(opts->rooms_topic);
  int rc = -ENOMEM;
  if (r->users_topic == NULL || r->rooms_topic == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail_free;
  }
  r->rk = make_consumer(opts, err, errlen);
  if (r->rk == NULL) {
    rc = -EINVAL;
    goto fail_free;
  }
  if ((rc = uv_mutex_init(&r->mu)) != 0)
    goto fail_rk;
  if ((rc = uv_cond_init(&r->cond)) != 0)
    goto fail_mu;
  if ((rc = uv_async_init(loop, &r->async, on_async)) != 0)
    goto fail_cond;
  r->async.data = r;
  uv_idle_init(loop, &r->idle);
  r->idle.data = r;
  if ((rc = uv_thread_create(&r->thread, reader, r)) != 0) {
    snprintf(err, errlen, "thread: %s", uv_strerror(rc));
    r->closed = true;
    uv_close((uv_handle_t *)&r->async, on_close_free);
    uv_close((uv_handle_t *)&r->idle, on_close_free);
    rd_kafka_destroy(r->rk);
    return rc;
  }
  *out = r;
  return 0;
fail_cond:
  uv_cond_destroy(&r->cond);
fail_mu:
  uv_mutex_destroy(&r->mu);
fail_rk:
  rd_kafka_destroy(r->rk);
  if (rc != -EINVAL)
    snprintf(err, errlen, "%s", uv_strerror(rc));
fail_free:
  free(r->users_topic);
  free(r->rooms_topic);
  free(r);
  return rc;
}

void fo_replay_close(fo_replay_t *r) {
  if (r->closed)
    return;
  r->closed = true;
  uv_mutex_lock(&r->mu);
  r->stop = true;
  STAILQ_CONCAT(&r->pending, &r->staged);
  uv_cond_signal(&r->cond);
  uv_mutex_unlock(&r->mu);
  uv_thread_join(&r->thread);
  /* The reader answered what it held and moved the rest to `done` (as
   * ERROR, status untouched = OK is not possible: set it). */
  fo_replay_handle_t *h, *tmp;
  STAILQ_FOREACH_SAFE(h, &r->done, q, tmp) {
    if (!h->finished) {
      h->status = FO_REPLAY_ERROR;
      h->end = -1;
      drop_recs(h);
    }
    call_back(r, h);
  }
  STAILQ_INIT(&r->done);
  STAILQ_FOREACH_SAFE(h, &r->pending, q, tmp) {
    h->status = FO_REPLAY_ERROR;
    drop_recs(h);
    call_back(r, h);
  }
  STAILQ_INIT(&r->pending);
  uv_close((uv_handle_t *)&r->async, on_close_free);
  uv_close((uv_handle_t *)&r->idle, on_close_free);
}

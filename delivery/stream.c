/* Streams, positions and resume (stream.h, schemas/positions.md).
 *
 * Every connection follows its user's stream (one partition of the users
 * topic) and one stream per joined room (one partition of the rooms topic
 * each). For each, the server tells the client a starting position E (in
 * the welcome / the joined reply): every message of the stream after E
 * reaches the connection, live or by replay. How E is found:
 *  - the partition is consumed here and a record of it was seen since its
 *    assignment: E = the last offset processed; everything after it will
 *    be processed later, and the connection is in the local hub already;
 *  - otherwise (a user partition owned by another server, room mode
 *    "redis", or nothing seen yet): once Redis acknowledged the
 *    connection's registration (a barrier after the registry flush), E =
 *    the partition's high watermark - 1 (replay.c asks the broker after the
 *    barrier), so every later record is routed after the registration and
 *    reaches the connection. Live frames with offset <= E that a lagging
 *    owner still sends are dropped (conn->user_floor, or the room's fence).
 * A resume (`since` = P) replays P < offset <= E for the stream's key from
 * the window of the partition (memory) when it covers that range, else
 * from Kafka (replay.c); while the replay runs, live frames of the stream
 * are held on the connection and sent after it, those at or before what
 * was replayed dropped. All or nothing: any doubt is recovered:false and no
 * replay. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_int.h"
#include "stream.h"
#include "envelope.h"
#include "frame.h"
#include "hub.h"
#include "log.h"
#include "partition.h"
#include "proto.h"
#include "replay.h"
#include "rreg.h"
#include "window.h"
#include "ws.h"

/* Why a resume was answered as it was (metrics label). */
enum {
  RES_RECOVERED = 0,
  RES_UNKNOWN,  /* unparsable, another stream's or partition's position */
  RES_EPOCH,    /* another epoch: a re-created topic with a changed count, another cluster */
  RES_FOREIGN,  /* the record at the position is not the one it named, or beyond the log */
  RES_EXPIRED,  /* older than the log or the window holds */
  RES_OVER_CAP, /* more missed than --resume-max-messages */
  RES_TOO_FAR,  /* the scan would be longer than --resume-max-scan */
  RES_ERROR,    /* Kafka error or timeout; Redis down; out of memory */
  RES_COUNT
};
static const char *const res_names[RES_COUNT] = {"recovered", "unknown",  "epoch",   "foreign",
                                                 "expired",   "over_cap", "too_far", "error"};

/* A frame held while a replay runs. */
typedef struct {
  int64_t offset;
  fo_buf_t *frame; /* one reference */
} held_t;

/* One stream of one connection whose position is being worked out. */
typedef struct fo_pending {
  struct fo_pending *next;          /* the connection's list */
  struct fo_pending *wprev, *wnext; /* the registry-barrier wait list */
  fo_conn_t *conn;
  fo_replay_handle_t *h; /* the Kafka replay in flight, or NULL */
  int kind;              /* FO_STREAM_* */
  int32_t partition;
  uint32_t wait_gen; /* the barrier it waits for (0: none) */
  int verdict;       /* RES_* decided before any replay (RES_RECOVERED: try) */
  bool has_since;
  bool silent;     /* a resync (fo__streams_resync): no welcome, no resume counted */
  bool fence;      /* done, but live frames <= end are still dropped (rooms) */
  bool overflowed; /* the hold filled up: answered recovered:false */
  fo_pos_t since;
  int64_t end;  /* the stream's E once known, else -2 */
  held_t *held; /* live frames of the stream meanwhile, oldest first */
  uint32_t nheld, capheld;
  size_t room_len; /* rooms: the name */
  char room[];
} fo_pending_t;

/* A connection's streams in the making (conn->cs; NULL when none). */
struct fo_cstreams {
  fo_pending_t *list;
  bool welcomed; /* the welcome frame was queued */
};

typedef struct {
  fo_window_t *win; /* rooms in room mode "kafka": the recent frames; else NULL */
  int64_t last;     /* the last offset processed here since the assignment, -2: none */
} part_t;

struct fo_streams {
  fo_server_t *srv;
  fo_replay_t *replay; /* owned */
  fo_window_budget_t budget;
  part_t *parts[2]; /* per kind, per partition consumed here */
  int32_t nparts_seen[2];
  uint32_t epoch[2];
  int32_t npartitions[2]; /* the topics' partition counts (0: unknown) */
  /* Connections waiting for Redis to acknowledge their registration. */
  fo_pending_t *wait_head, *wait_tail;
  uint32_t gen_next;  /* the barrier the waiting ones will ride on */
  uint32_t gen_done;  /* the last barrier answered */
  bool barrier_asked; /* for gen_next this turn */
  bool closed;
  fo_sb_t sb;
  uint64_t *resumes[2][RES_COUNT];
  uint64_t *replayed;
  uint64_t *seam_drops;
  uint64_t *hold_overflows;
  uint64_t *resyncs[2]; /* replayed, closed */
  uint64_t *window_evictions;
  int64_t *window_bytes;
  int64_t *window_entries;
  int64_t *pending;
  uint64_t *rounds;
  uint64_t *scanned;
};

static const char *topic_of(const fo_server_t *srv, int kind) {
  return kind == FO_STREAM_USER ? srv->cfg->users_topic : srv->cfg->rooms_topic;
}

static char letter_of(int kind) {
  return kind == FO_STREAM_USER ? 'u' : 'r';
}

/* ---- partitions consumed here ---- */

static part_t *part_get(fo_streams_t *st, int kind, int32_t p, bool create) {
  if (p < 0 || p > 100000)
    return NULL;
  if (p >= st->nparts_seen[kind]) {
    if (!create)
      return NULL;
    int32_t n = p + 1;
    part_t *np = realloc(st->parts[kind], (size_t)n * sizeof(*np));
    if (np == NULL)
      return NULL;
    for (int32_t i = st->nparts_seen[kind]; i < n; i++) {
      np[i].win = NULL;
      np[i].last = -2;
    }
    st->parts[kind] = np;
    st->nparts_seen[kind] = n;
  }
  return &st->parts[kind][p];
}

void fo__streams_record(fo_server_t *srv, int kind, int32_t partition, int64_t offset,
                        int64_t ts_ms, const char *key, size_t keylen, fo_buf_t *frame,
                        bool reset) {
  fo_streams_t *st = srv->streams;
  if (st == NULL)
    return;
  part_t *pt = part_get(st, kind, partition, true);
  if (pt == NULL)
    return;
  bool keep = kind == FO_STREAM_ROOM && srv->cfg->room_mode_id == FO_ROOM_MODE_KAFKA &&
              srv->cfg->resume_window_bytes > 0;
  if (keep && pt->win == NULL)
    pt->win = fo_window_new(&st->budget, (uint64_t)srv->cfg->resume_window_ms);
  if (pt->win != NULL) {
    if (reset || pt->last < -1)
      fo_window_reset(pt->win, offset);
    fo_window_add(pt->win, offset, ts_ms, key, keylen, frame, uv_now(srv->loop));
  }
  pt->last = offset;
}

void fo__streams_tick(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL)
    return;
  uint64_t now = uv_now(srv->loop);
  for (int32_t p = 0; p < st->nparts_seen[FO_STREAM_ROOM]; p++)
    if (st->parts[FO_STREAM_ROOM][p].win != NULL)
      fo_window_expire(st->parts[FO_STREAM_ROOM][p].win, now);
}

void fo__streams_partition_lost(fo_server_t *srv, int kind, int32_t partition) {
  fo_streams_t *st = srv->streams;
  part_t *pt = st != NULL ? part_get(st, kind, partition, false) : NULL;
  if (pt == NULL)
    return;
  pt->last = -2;
  if (pt->win != NULL)
    fo_window_reset(pt->win, 0);
}

void fo__streams_topic(fo_server_t *srv, int kind, const char *cluster_id, int32_t partitions) {
  fo_streams_t *st = srv->streams;
  if (st == NULL || partitions <= 0)
    return;
  uint32_t e = fo_pos_epoch(cluster_id, topic_of(srv, kind), partitions);
  if (st->npartitions[kind] != 0 && (e != st->epoch[kind] || partitions != st->npartitions[kind]))
    FO_LOG_WARN("stream", "topic epoch changed: older positions will not resume",
                "topic=%s partitions=%" PRId32 " epoch=%08" PRIx32, topic_of(srv, kind), partitions,
                e);
  bool changed = st->epoch[kind] != e || st->npartitions[kind] != partitions;
  st->epoch[kind] = e;
  st->npartitions[kind] = partitions;
  if (changed && kind == FO_STREAM_USER)
    for (fo_conn_t *c = fo__conn_any(srv); c != NULL; c = fo__conn_after(srv, c))
      c->user_floor = -1; /* offsets of another log: nothing is covered */
  if (changed && kind == FO_STREAM_ROOM)
    fo__rooms_forget_offsets(srv);
}

int64_t fo__streams_offset(const fo_server_t *srv, int kind, const char *key, size_t keylen,
                           int32_t partition, int64_t offset) {
  const fo_streams_t *st = srv->streams;
  if (st == NULL || st->npartitions[kind] == 0)
    return offset;
  return fo_partition_of_key(key, keylen, st->npartitions[kind]) == partition ? offset : -1;
}

bool fo__streams_epoch(const fo_server_t *srv, int kind, uint32_t *epoch) {
  const fo_streams_t *st = srv->streams;
  if (st == NULL || st->npartitions[kind] == 0)
    return false;
  *epoch = st->epoch[kind];
  return true;
}

/* ---- pending streams ---- */

static void wait_unlink(fo_streams_t *st, fo_pending_t *pd) {
  if (pd->wait_gen == 0)
    return;
  if (pd->wprev != NULL)
    pd->wprev->wnext = pd->wnext;
  else
    st->wait_head = pd->wnext;
  if (pd->wnext != NULL)
    pd->wnext->wprev = pd->wprev;
  else
    st->wait_tail = pd->wprev;
  pd->wprev = pd->wnext = NULL;
  pd->wait_gen = 0;
}

static void pending_free(fo_streams_t *st, fo_pending_t *pd) {
  wait_unlink(st, pd);
  if (pd->h != NULL)
    fo_replay_cancel(pd->h);
  for (uint32_t i = 0; i < pd->nheld; i++)
    fo_buf_unref(pd->held[i].frame);
  free(pd->held);
  free(pd);
  (*st->pending)--;
}

/* Unlinks pd from its connection and frees it; frees the connection's
 * stream state when nothing is left in it (idle connections keep none). */
static void pending_done(fo_pending_t *pd) {
  fo_conn_t *conn = pd->conn;
  fo_streams_t *st = conn->srv->streams;
  struct fo_cstreams *cs = conn->cs;
  for (fo_pending_t **pp = &cs->list; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == pd) {
      *pp = pd->next;
      break;
    }
  }
  pending_free(st, pd);
  if (cs->list == NULL && cs->welcomed) {
    free(cs);
    conn->cs = NULL;
  }
}

static fo_pending_t *pending_new(fo_conn_t *conn, int kind, const char *room, size_t len) {
  struct fo_cstreams *cs = conn->cs;
  if (cs == NULL) {
    cs = conn->cs = calloc(1, sizeof(*cs));
    if (cs == NULL)
      return NULL;
    cs->welcomed = true; /* opened() clears it for the user stream */
  }
  fo_pending_t *pd = calloc(1, sizeof(*pd) + len + 1);
  if (pd == NULL)
    return NULL;
  pd->conn = conn;
  pd->kind = kind;
  pd->end = -2;
  pd->partition = -1;
  if (room != NULL)
    memcpy(pd->room, room, len);
  pd->room_len = len;
  pd->next = cs->list;
  cs->list = pd;
  (*conn->srv->streams->pending)++;
  return pd;
}

static fo_pending_t *find_room(const fo_conn_t *conn, const char *room, size_t len) {
  if (conn->cs == NULL)
    return NULL;
  for (fo_pending_t *pd = conn->cs->list; pd != NULL; pd = pd->next)
    if (pd->kind == FO_STREAM_ROOM && pd->room_len == len && memcmp(pd->room, room, len) == 0)
      return pd;
  return NULL;
}

static fo_pending_t *find_user(const fo_conn_t *conn) {
  if (conn->cs == NULL)
    return NULL;
  for (fo_pending_t *pd = conn->cs->list; pd != NULL; pd = pd->next)
    if (pd->kind == FO_STREAM_USER)
      return pd;
  return NULL;
}

/* ---- answers ---- */

/* off < -1: no position is known (Kafka has not answered): epoch 0, which
 * no topic has, so that a resume from it is refused, never misread. */
static void format_pos(const fo_streams_t *st, int kind, int32_t p, int64_t off, int64_t t,
                       char out[FO_POS_MAX + 1]) {
  fo_pos_t pos = {letter_of(kind), st->epoch[kind], p < 0 ? 0 : p, off, t};
  if (off < -1) {
    pos.epoch = 0;
    pos.offset = -1;
  }
  if (fo_pos_format(&pos, out, FO_POS_MAX + 1) < 0)
    out[0] = '\0';
}

/* The client frame of a replayed record, as the consumer built it live. */
static fo_buf_t *replay_frame(fo_streams_t *st, const fo_pending_t *pd, const fo_replay_rec_t *r) {
  fo_env_t env;
  char err[96];
  if (fo_env_decode(r->value, r->len, &env, err, sizeof(err)) != 0)
    return NULL;
  bool user = pd->kind == FO_STREAM_USER;
  if (env.kind != (user ? FO_ENV_SEND : FO_ENV_BROADCAST))
    return NULL;
  const char *key = user ? pd->conn->user->name : pd->room;
  size_t klen = user ? pd->conn->user->ent.len : pd->room_len;
  if (env.target_len != klen || memcmp(env.target, key, klen) != 0)
    return NULL; /* keyed for it, addressed to someone else: not its message */
  fo_pos_t pos = {letter_of(pd->kind), st->epoch[pd->kind], pd->partition, r->offset, r->t_ms};
  if (fo_proto_message(&st->sb, &env, &pos) != 0)
    return NULL;
  return fo_frame_new(FO_WS_OP_TEXT, st->sb.data, st->sb.len);
}

static void count(fo_streams_t *st, const fo_pending_t *pd, int res) {
  if (pd->has_since)
    (*st->resumes[pd->kind][res])++;
}

/* Sends the welcome / joined frame, then `frames` (n, each with one
 * reference that is handed over), then what was held that is newer than
 * everything before it; the stream is live from there. recovered: the
 * resume's answer (ignored without since). */
static void finish(fo_pending_t *pd, int res, int64_t end, int64_t end_t, fo_buf_t **frames,
                   const int64_t *offs, size_t n) {
  fo_conn_t *conn = pd->conn;
  fo_server_t *srv = conn->srv;
  fo_streams_t *st = srv->streams;
  char ptxt[FO_POS_MAX + 1];
  bool recovered = res == RES_RECOVERED && !pd->overflowed;
  if (pd->overflowed)
    res = RES_ERROR;
  if (pd->silent) {
    (*st->resyncs[recovered ? 0 : 1])++;
    if (!recovered) {
      /* The gap cannot be filled here: the client resumes and is told. */
      for (size_t i = 0; i < n; i++)
        fo_buf_unref(frames[i]);
      pending_done(pd);
      fo__conn_close_ws(conn, FO_WS_CLOSE_SERVICE_RESTART, "state lost: resume");
      return;
    }
  } else {
    count(st, pd, res);
  }
  if (pd->has_since && recovered)
    fo_pos_format(&pd->since, ptxt, sizeof(ptxt));
  else
    format_pos(st, pd->kind, pd->partition, end, end_t, ptxt);
  int rec = pd->has_since ? (recovered ? 1 : 0) : -1;
  int rc =
      pd->kind == FO_STREAM_USER
          ? fo_proto_welcome(&st->sb, ptxt, rec, conn->app_ping ? srv->cfg->ping_interval_ms : 0)
          : fo_proto_joined(&st->sb, pd->room, pd->room_len, ptxt, rec);
  if (rc == 0 && !pd->silent)
    fo__conn_send_text(conn, st->sb.data, st->sb.len);
  if (pd->kind == FO_STREAM_USER)
    conn->cs->welcomed = true;
  int64_t last = end;
  /* The client may be ahead of this server (it came from one whose
   * consumer was further on): nothing up to its position again. */
  if (recovered && pd->has_since && pd->since.offset > last)
    last = pd->since.offset;
  for (size_t i = 0; i < n; i++) {
    if (recovered) {
      fo__conn_send(conn, frames[i]);
      (*st->replayed)++;
      if (offs[i] > last)
        last = offs[i];
    }
    fo_buf_unref(frames[i]);
  }
  /* What was held: with since, a replay covered everything up to `last`
   * (or the client was told recovered:false: nothing older than its
   * position), so only newer frames go. Without since nothing was
   * replayed, and every held frame arrived after the connection was
   * registered: all go, even those at or before E (a lagging owner's),
   * which the contract neither promises nor forbids. */
  int64_t drop = pd->has_since ? last : -1;
  int64_t top = -1; /* the highest offset sent from the hold */
  for (uint32_t i = 0; i < pd->nheld; i++) {
    int64_t o = pd->held[i].offset;
    if (o < 0 || (o > drop && o > top)) {
      fo__conn_send(conn, pd->held[i].frame);
      if (o > top)
        top = o;
    } else {
      (*st->seam_drops)++;
    }
    fo_buf_unref(pd->held[i].frame);
  }
  pd->nheld = 0;
  if (pd->kind == FO_STREAM_USER) {
    /* Copies of what it was sent are dropped from now on; a plain
     * connection's floor is only what it was sent. */
    conn->user_floor = pd->has_since ? (top > last ? top : last) : top;
    pending_done(pd);
    fo__conn_release_input(conn); /* the client's frames may be read now */
    return;
  }
  if (top > last)
    last = top;
  /* Rooms with since: a position from the watermark may be ahead of what
   * the owner (room mode "redis") or our own consumer (nothing seen yet)
   * has sent: keep dropping what is not newer until something newer came.
   * A plain join takes what comes. */
  part_t *pt = part_get(st, FO_STREAM_ROOM, pd->partition, false);
  if (!pd->has_since || (pt != NULL && pt->last >= last)) {
    pending_done(pd);
    return;
  }
  pd->end = last;
  pd->fence = true;
}

/* ---- Kafka replays ---- */

static int res_of_replay(int status) {
  switch (status) {
  case FO_REPLAY_OK:
    return RES_RECOVERED;
  case FO_REPLAY_EXPIRED:
    return RES_EXPIRED;
  case FO_REPLAY_FOREIGN:
    return RES_FOREIGN;
  case FO_REPLAY_OVER_CAP:
    return RES_OVER_CAP;
  case FO_REPLAY_TOO_FAR:
    return RES_TOO_FAR;
  default:
    return RES_ERROR;
  }
}

static void on_replay(void *ud, int status, int64_t end, int64_t end_t_ms, fo_replay_rec_t *recs,
                      size_t n) {
  fo_pending_t *pd = ud;
  fo_streams_t *st = pd->conn->srv->streams;
  pd->h = NULL;
  int res = pd->verdict != RES_RECOVERED ? pd->verdict : res_of_replay(status);
  if (pd->end >= -1) {
    end = pd->end;
    end_t_ms = (int64_t)fo_now_ms();
  }
  size_t cap = (size_t)pd->conn->srv->cfg->resume_max_messages;
  fo_buf_t **frames = NULL;
  int64_t *offs = NULL;
  size_t nf = 0;
  if (res == RES_RECOVERED && pd->has_since && n > 0) {
    frames = malloc(n * sizeof(*frames));
    offs = malloc(n * sizeof(*offs));
    if (frames == NULL || offs == NULL)
      res = RES_ERROR;
    for (size_t i = 0; res == RES_RECOVERED && i < n; i++) {
      if (recs[i].offset <= pd->since.offset || recs[i].offset > end)
        continue;
      fo_buf_t *f = replay_frame(st, pd, &recs[i]);
      if (f == NULL)
        continue; /* a record that was never anyone's message, live or replayed */
      if (nf == cap) {
        fo_buf_unref(f);
        res = RES_OVER_CAP;
        break;
      }
      frames[nf] = f;
      offs[nf++] = recs[i].offset;
    }
  }
  if (res != RES_RECOVERED) {
    for (size_t i = 0; i < nf; i++)
      fo_buf_unref(frames[i]);
    nf = 0;
  }
  finish(pd, res, end, end_t_ms, frames, offs, nf);
  free(frames);
  free(offs);
}

static void submit(fo_pending_t *pd) {
  fo_server_t *srv = pd->conn->srv;
  fo_streams_t *st = srv->streams;
  const fo_dcfg_t *cfg = srv->cfg;
  fo_replay_req_t req;
  memset(&req, 0, sizeof(req));
  req.kind = letter_of(pd->kind);
  req.partition = pd->partition;
  bool replay = pd->has_since && pd->verdict == RES_RECOVERED;
  req.since = replay ? pd->since.offset : -2;
  req.since_t_ms = replay ? pd->since.t_ms : 0;
  req.end = pd->end >= -1 ? pd->end : -1;
  if (pd->kind == FO_STREAM_USER) {
    req.key = pd->conn->user->name;
    req.keylen = pd->conn->user->ent.len;
  } else {
    req.key = pd->room;
    req.keylen = pd->room_len;
  }
  req.cap = (size_t)cfg->resume_max_messages;
  req.max_scan = (uint64_t)cfg->resume_max_scan;
  req.max_age_ms = (uint64_t)cfg->resume_window_ms;
  if (st->replay == NULL || fo_replay_submit(st->replay, &req, on_replay, pd, &pd->h) != 0) {
    pd->h = NULL;
    on_replay(pd, FO_REPLAY_ERROR, -2, 0, NULL, 0);
  }
}

/* ---- working out a stream's position ---- */

/* Checks `since` against what is known now: sets pd->has_since, pd->since
 * and pd->verdict (RES_RECOVERED = worth trying). */
static void judge_since(fo_pending_t *pd, bool has_since, const char *since, size_t slen) {
  fo_streams_t *st = pd->conn->srv->streams;
  pd->has_since = has_since;
  pd->verdict = RES_RECOVERED;
  if (!has_since)
    return;
  if (since == NULL || fo_pos_parse(since, slen, &pd->since) != 0 ||
      pd->since.kind != letter_of(pd->kind))
    pd->verdict = RES_UNKNOWN;
  else if (pd->since.epoch != st->epoch[pd->kind])
    pd->verdict = RES_EPOCH;
  else if (pd->since.partition != pd->partition)
    pd->verdict = RES_UNKNOWN; /* same epoch, so the same partitioning: not this stream's */
}

/* The window of a room partition consumed here answers at once, if it can. */
static bool try_window(fo_pending_t *pd, part_t *pt) {
  const fo_dcfg_t *cfg = pd->conn->srv->cfg;
  int64_t end = pt->last;
  int64_t now = (int64_t)fo_now_ms();
  if (!pd->has_since || pd->verdict != RES_RECOVERED) {
    finish(pd, pd->verdict, end, now, NULL, NULL, 0);
    return true;
  }
  if (pt->win == NULL)
    return false;
  size_t cap = (size_t)cfg->resume_max_messages;
  fo_buf_t **frames = malloc((cap + 1) * sizeof(*frames));
  int64_t *offs = malloc((cap + 1) * sizeof(*offs));
  size_t n = 0;
  if (frames == NULL || offs == NULL) {
    free(frames);
    free(offs);
    return false;
  }
  int rc = fo_window_since(pt->win, pd->room, pd->room_len, pd->since.offset, pd->since.t_ms, end,
                           cap, frames, offs, &n);
  if (rc == FO_WINDOW_NOT_COVERED) {
    free(frames);
    free(offs);
    return false;
  }
  int res = rc == FO_WINDOW_OK         ? RES_RECOVERED
            : rc == FO_WINDOW_FOREIGN  ? RES_FOREIGN
            : rc == FO_WINDOW_OVER_CAP ? RES_OVER_CAP
                                       : RES_ERROR;
  if (res == RES_RECOVERED)
    for (size_t i = 0; i < n; i++)
      fo_buf_ref(frames[i]);
  else
    n = 0;
  finish(pd, res, end, now, frames, offs, n);
  free(frames);
  free(offs);
  return true;
}

/* The position of pd's stream: from our own consumer, or after the
 * registry barrier from the broker. */
static void locate(fo_pending_t *pd) {
  fo_server_t *srv = pd->conn->srv;
  fo_streams_t *st = srv->streams;
  part_t *pt = part_get(st, pd->kind, pd->partition, false);
  bool own = pt != NULL && pt->last >= 0 &&
             (pd->kind == FO_STREAM_USER || srv->cfg->room_mode_id == FO_ROOM_MODE_KAFKA);
  if (own) {
    pd->end = pt->last;
    if (pd->kind == FO_STREAM_ROOM && try_window(pd, pt))
      return;
    if (!pd->has_since || pd->verdict != RES_RECOVERED) {
      finish(pd, pd->verdict, pd->end, (int64_t)fo_now_ms(), NULL, NULL, 0);
      return;
    }
    submit(pd);
    return;
  }
  if (pd->kind == FO_STREAM_ROOM && srv->cfg->room_mode_id == FO_ROOM_MODE_KAFKA) {
    /* Nothing processed here yet: everything from the consumer's fetch
     * position on will be, so the room's stream stands just before it. */
    int64_t next = srv->room_position != NULL ? srv->room_position(srv, pd->partition) : -1;
    if (next >= 0 && (!pd->has_since || pd->verdict != RES_RECOVERED)) {
      finish(pd, pd->verdict, next - 1, (int64_t)fo_now_ms(), NULL, NULL, 0);
      return;
    }
    if (next >= 0)
      pd->end = next - 1; /* replay up to there; later ones arrive live */
    submit(pd);           /* else the watermark, and the fence drops the rest */
    return;
  }
  /* After the barrier that follows this turn's registry flush. */
  pd->wait_gen = st->gen_next;
  pd->wprev = st->wait_tail;
  pd->wnext = NULL;
  if (st->wait_tail != NULL)
    st->wait_tail->wnext = pd;
  else
    st->wait_head = pd;
  st->wait_tail = pd;
}

static void on_barrier(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL || st->closed)
    return;
  st->gen_done++;
  while (st->wait_head != NULL && (int32_t)(st->wait_head->wait_gen - st->gen_done) <= 0) {
    fo_pending_t *pd = st->wait_head;
    wait_unlink(st, pd);
    submit(pd);
  }
}

void fo__streams_resync(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL || st->closed || st->npartitions[FO_STREAM_USER] == 0)
    return;
  size_t n = 0;
  for (fo_conn_t *c = fo__conn_any(srv); c != NULL; c = fo__conn_after(srv, c)) {
    if (c->state != FO_CONN_OPEN || c->user == NULL || c->user_floor < 0 || find_user(c) != NULL)
      continue;
    int32_t p =
        fo_partition_of_key(c->user->name, c->user->ent.len, st->npartitions[FO_STREAM_USER]);
    part_t *pt = part_get(st, FO_STREAM_USER, p, false);
    if (pt != NULL && pt->last >= 0)
      continue; /* consumed here: its messages never took the Pub/Sub hop */
    fo_pending_t *pd = pending_new(c, FO_STREAM_USER, NULL, 0);
    if (pd == NULL)
      break; /* out of memory: the rest stay as they are */
    pd->partition = p;
    pd->silent = true;
    pd->has_since = true;
    pd->verdict = RES_RECOVERED;
    /* Our own record of what it was sent: no anchor to check. */
    pd->since = (fo_pos_t){'u', st->epoch[FO_STREAM_USER], p, c->user_floor, INT64_MAX};
    locate(pd);
    n++;
  }
  FO_LOG_INFO("stream", "Pub/Sub was lost and is back: replaying user streams", "connections=%zu",
              n);
}

void fo__streams_after_flush(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL || st->wait_tail == NULL || st->wait_tail->wait_gen != st->gen_next)
    return;
  st->gen_next++;
  fo__rreg_barrier(srv, on_barrier);
}

/* ---- connections ---- */

void fo__stream_opened(fo_conn_t *conn, const char *since, size_t slen) {
  fo_server_t *srv = conn->srv;
  fo_streams_t *st = srv->streams;
  conn->user_floor = -1;
  if (st == NULL || conn->user == NULL)
    return; /* no streams (a harness without them) */
  fo_pending_t *pd = pending_new(conn, FO_STREAM_USER, NULL, 0);
  if (pd == NULL) {
    fo__conn_close_ws(conn, FO_WS_CLOSE_INTERNAL, "out of memory");
    return;
  }
  conn->cs->welcomed = false;
  if (st->npartitions[FO_STREAM_USER] == 0) {
    /* Kafka has not told us the topic yet: no position to give. */
    pd->has_since = since != NULL;
    finish(pd, RES_ERROR, -2, 0, NULL, NULL, 0);
    return;
  }
  pd->partition =
      fo_partition_of_key(conn->user->name, conn->user->ent.len, st->npartitions[FO_STREAM_USER]);
  judge_since(pd, since != NULL, since, slen);
  locate(pd);
  /* Not answered at once: the client's frames wait for the welcome (set
   * only now: during the upgrade conn->in still holds the handshake's). */
  if (conn->cs != NULL && !conn->cs->welcomed)
    conn->hold_input = 1;
}

void fo__stream_closed(fo_conn_t *conn) {
  struct fo_cstreams *cs = conn->cs;
  if (cs == NULL)
    return;
  fo_streams_t *st = conn->srv->streams;
  while (cs->list != NULL) {
    fo_pending_t *pd = cs->list;
    cs->list = pd->next;
    pending_free(st, pd);
  }
  free(cs);
  conn->cs = NULL;
}

bool fo__stream_holds_input(const fo_conn_t *conn) {
  return conn->cs != NULL && !conn->cs->welcomed;
}

void fo__stream_joined(fo_conn_t *conn, const char *room, size_t len, bool has_since,
                       const char *since, size_t slen) {
  fo_server_t *srv = conn->srv;
  fo_streams_t *st = srv->streams;
  fo_pending_t *old = find_room(conn, room, len);
  if (old != NULL)
    pending_done(old); /* joined again: this join's answer replaces it */
  if (st == NULL || st->npartitions[FO_STREAM_ROOM] == 0) {
    /* No position to give (Kafka has not told us the topic yet). */
    fo_pending_t *pd = pending_new(conn, FO_STREAM_ROOM, room, len);
    if (pd == NULL)
      return;
    pd->has_since = has_since;
    finish(pd, RES_ERROR, -2, 0, NULL, NULL, 0);
    return;
  }
  fo_pending_t *pd = pending_new(conn, FO_STREAM_ROOM, room, len);
  if (pd == NULL) {
    fo__conn_close_ws(conn, FO_WS_CLOSE_INTERNAL, "out of memory");
    return;
  }
  pd->partition = fo_partition_of_key(room, len, st->npartitions[FO_STREAM_ROOM]);
  judge_since(pd, has_since, since, slen);
  locate(pd);
}

void fo__stream_left(fo_conn_t *conn, const char *room, size_t len) {
  fo_pending_t *pd = find_room(conn, room, len);
  if (pd == NULL)
    return;
  if (pd->fence) {
    pending_done(pd);
    return;
  }
  /* The join is still being answered: answer it now (the replies keep the
   * order of the requests), with the position known so far and no replay. */
  if (pd->h != NULL) {
    fo_replay_cancel(pd->h);
    pd->h = NULL;
  }
  wait_unlink(conn->srv->streams, pd);
  pd->has_since = false; /* not counted as a resume answer: the client left */
  for (uint32_t i = 0; i < pd->nheld; i++)
    fo_buf_unref(pd->held[i].frame);
  pd->nheld = 0;
  finish(pd, RES_ERROR, pd->end >= -1 ? pd->end : -2, (int64_t)fo_now_ms(), NULL, NULL, 0);
  pd = find_room(conn, room, len); /* a fence left behind: the room is left */
  if (pd != NULL)
    pending_done(pd);
}

/* Holds frame on pd (a replay runs). Over the hold's limit the resume can
 * no longer keep its promise: the connection is closed with 1013, and the
 * client comes back and resumes from what it has. */
static int hold(fo_pending_t *pd, int64_t offset, fo_buf_t *frame) {
  fo_conn_t *conn = pd->conn;
  uint32_t max = (uint32_t)conn->srv->cfg->resume_max_messages * 2 + 1024;
  if (pd->nheld == pd->capheld) {
    uint32_t ncap = pd->capheld ? pd->capheld * 2 : 8;
    held_t *nh = pd->nheld < max ? realloc(pd->held, ncap * sizeof(*nh)) : NULL;
    if (nh == NULL) {
      (*conn->srv->streams->hold_overflows)++;
      fo__conn_close_ws(conn, FO_WS_CLOSE_TRY_AGAIN, "resume overflow");
      return -ENOBUFS;
    }
    pd->held = nh;
    pd->capheld = ncap;
  }
  pd->held[pd->nheld].offset = offset;
  pd->held[pd->nheld++].frame = fo_buf_ref(frame);
  return 0;
}

int fo__stream_send_user(fo_conn_t *conn, int64_t offset, fo_buf_t *frame) {
  fo_pending_t *pd = find_user(conn);
  if (pd != NULL)
    return hold(pd, offset, frame);
  if (offset < 0)
    return fo__conn_send(conn, frame); /* on no stream */
  /* The user stream is one partition: offsets only grow. One at or before
   * what this connection has (its welcome, a replay, a message sent) is a
   * copy: the seam's, or a re-delivery after a rebalance. */
  if (offset <= conn->user_floor) {
    (*conn->srv->streams->seam_drops)++;
    return 0;
  }
  int rc = fo__conn_send(conn, frame);
  if (rc == 0)
    conn->user_floor = offset;
  return rc;
}

int fo__stream_send_room(fo_conn_t *conn, const char *room, size_t len, int64_t offset,
                         fo_buf_t *frame) {
  fo_pending_t *pd = find_room(conn, room, len);
  if (pd == NULL)
    return fo__conn_send(conn, frame);
  if (!pd->fence)
    return hold(pd, offset, frame);
  if (offset >= 0 && offset <= pd->end) {
    (*conn->srv->streams->seam_drops)++;
    return 0;
  }
  pending_done(pd); /* past the fence: live from here */
  return fo__conn_send(conn, frame);
}

/* ---- the module ---- */

static void on_collect(fo_streams_t *st) {
  *st->window_bytes = (int64_t)st->budget.bytes;
  *st->window_entries = (int64_t)st->budget.entries;
  *st->window_evictions = st->budget.evictions;
  if (st->replay != NULL) {
    fo_replay_metrics_t s;
    fo_replay_metrics(st->replay, &s);
    *st->rounds = s.rounds;
    *st->scanned = s.records_scanned;
  }
}

static void collect_cb(void *ud) {
  on_collect(ud);
}

int fo__streams_new(fo_server_t *srv, char *err, size_t errlen) {
  const fo_dcfg_t *cfg = srv->cfg;
  fo_streams_t *st = calloc(1, sizeof(*st));
  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  st->srv = srv;
  st->gen_next = 1;
  st->budget.max_bytes = (uint64_t)cfg->resume_window_bytes;
  fo_sb_init(&st->sb);
  srv->streams = st;
  fo_metrics_t *m = srv->metrics;
  for (int k = 0; k < 2; k++)
    for (int r = 0; r < RES_COUNT; r++) {
      char name[128];
      snprintf(name, sizeof(name), "fanout_delivery_resumes_total{stream=\"%s\",result=\"%s\"}",
               k == FO_STREAM_USER ? "user" : "room", res_names[r]);
      st->resumes[k][r] = fo_metrics_counter(
          m, name, "resumes asked (since on connect or join), by stream and answer");
    }
  st->replayed = fo_metrics_counter(m, "fanout_delivery_resume_replayed_total",
                                    "messages sent by resumes (from the window or from Kafka)");
  st->seam_drops = fo_metrics_counter(
      m, "fanout_delivery_resume_seam_drops_total",
      "live frames not sent because the connection already had them (the resume seam, a "
      "re-delivery after a rebalance)");
  st->resyncs[0] = fo_metrics_counter(
      m, "fanout_delivery_resyncs_total{result=\"replayed\"}",
      "user streams replayed by the server after its Pub/Sub connection came back");
  st->resyncs[1] = fo_metrics_counter(
      m, "fanout_delivery_resyncs_total{result=\"closed\"}",
      "connections closed with 1012 after Pub/Sub came back: the gap could not be replayed");
  st->hold_overflows = fo_metrics_counter(
      m, "fanout_delivery_resume_hold_overflows_total",
      "connections closed with 1013: too many live frames arrived while a replay ran");
  st->window_bytes = fo_metrics_gauge(m, "fanout_delivery_resume_window_bytes",
                                      "memory held by the resume windows (--resume-window-bytes)");
  st->window_entries =
      fo_metrics_gauge(m, "fanout_delivery_resume_window_records", "records in the resume windows");
  st->window_evictions =
      fo_metrics_counter(m, "fanout_delivery_resume_window_evictions_total",
                         "records dropped from the windows by age or by --resume-window-bytes");
  st->pending = fo_metrics_gauge(m, "fanout_delivery_resume_pending",
                                 "streams whose position or replay is being worked out");
  st->rounds = fo_metrics_counter(m, "fanout_delivery_resume_fetch_rounds_total",
                                  "rounds of the Kafka replay reader (one scan per partition)");
  st->scanned = fo_metrics_counter(m, "fanout_delivery_resume_records_scanned_total",
                                   "records the Kafka replay reader read");
  fo_metrics_on_collect(m, collect_cb, st);
  return 0;
}

int fo__streams_start(fo_server_t *srv, char *err, size_t errlen) {
  const fo_dcfg_t *cfg = srv->cfg;
  fo_streams_t *st = srv->streams;
  if (st == NULL)
    return 0;
  char client_id[300];
  snprintf(client_id, sizeof(client_id), "fanout-delivery-%s-replay", cfg->server_id);
  fo_replay_opts_t ro;
  memset(&ro, 0, sizeof(ro));
  ro.bootstrap = cfg->kafka;
  ro.client_id = client_id;
  ro.kafka_opts = cfg->kafka_opts;
  ro.users_topic = cfg->users_topic;
  ro.rooms_topic = cfg->rooms_topic;
  ro.timeout_ms = cfg->resume_timeout_ms;
  return fo_replay_new(srv->loop, &ro, err, errlen, &st->replay);
}

void fo__streams_close(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL || st->closed)
    return;
  st->closed = true;
  if (st->replay != NULL)
    fo_replay_close(st->replay);
}

void fo__streams_free(fo_server_t *srv) {
  fo_streams_t *st = srv->streams;
  if (st == NULL)
    return;
  for (int k = 0; k < 2; k++) {
    for (int32_t p = 0; p < st->nparts_seen[k]; p++)
      fo_window_free(st->parts[k][p].win);
    free(st->parts[k]);
  }
  fo_sb_free(&st->sb);
  free(st);
  srv->streams = NULL;
}

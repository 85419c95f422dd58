/* Kafka -> dispatch. Two consumers on the loop (librdkafka queue IO events):
 *  - fanout.users through the consumer group (common/kafka_consumer.c, the
 *    rebalance handling ingest's intake uses too): each record
 *    becomes one client frame routed by router.c; its offset is stored only
 *    when the router released it (written locally and PUBLISHed), and
 *    auto-commit commits what was stored.
 *  - fanout.rooms, room mode "kafka" (default): read in full by every
 *    server: all partitions assigned by hand (no group membership, no
 *    commits), starting at the end of each partition when the server starts:
 *    room messages are live broadcasts to whoever is connected now. Each
 *    record is encoded once and queued on every local member of the room.
 *  - fanout.rooms, room mode "redis": consumed once per deployment by the
 *    group "{group-id}.rooms"; each record is PUBLISHed to ws:room:{room}
 *    (router.c) and every server subscribed to that channel delivers it to
 *    its members. Offsets are stored after the PUBLISH reply, like users.
 *    Also built by common/kafka_consumer.c. The hand-assigned rooms
 *    consumer of room mode "kafka" is built here: the builder subscribes
 *    through a group, which that consumer must not join.
 * A grouped consumer defers a revoke until the router's queue of its
 * offsets is empty (or half the session timeout passed), so that what was
 * handed over is committed by us and not delivered again by the next owner.
 * Undecodable records are counted, logged once per kind of fault, skipped. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "delivery_int.h"
#include "consumer.h"
#include "router.h"
#include "hub.h"
#include "frame.h"
#include "envelope.h"
#include "kafka_consumer.h"
#include "kafka_uv.h"
#include "proto.h"
#include "stream.h"
#include "log.h"
#include "ws.h"

typedef struct {
  fo_kafka_consumer_t *kcon; /* grouped: the builder's consumer, owned; else NULL */
  rd_kafka_t *rk;            /* kcon's handle (owned by kcon), or the hand-assigned one (owned) */
  rd_kafka_queue_t *q;       /* hand-assigned only: its consumer queue, owned */
  fo_kafka_uv_t *kuv;        /* hand-assigned only */
  rd_kafka_topic_t *rkt;     /* hand-assigned only: for the metadata request */
  const char *topic;         /* cfg's */
  int64_t *next_off;         /* per partition: next offset to consume, -1 unknown */
  int32_t nparts;
  bool close_started;
  bool closed;
  bool revoke_pending;
  int rq;      /* router queue (FO_RQ_*) of its offsets */
  char letter; /* 'u' or 'r' in pos */
  uv_timer_t revoke_timer;
  struct fo_consumer *c;
} fo_kc_t;

struct fo_consumer {
  fo_server_t *srv;
  fo_kc_t users;
  fo_kc_t rooms;
  fo_sb_t sb;       /* frame text builder */
  bool room_pubsub; /* room mode "redis" */
  uv_timer_t meta_timer;
  uv_work_t meta_work;
  bool meta_busy;
  rd_kafka_topic_t *meta_rkt[2]; /* users, rooms topics on the users handle: for metadata */
  int meta_partitions[2];        /* result of the metadata request (users, rooms) */
  char meta_cluster[128];        /* the cluster id ("" unknown): part of the epoch */
  char meta_err[128];
  int open_handles;
  bool draining;
  unsigned logged_kinds; /* bit per decode fault already logged */
};

enum { FAULT_KAFKA = 1, FAULT_ENVELOPE = 2, FAULT_KIND = 4, FAULT_VERSION = 8 };

static void log_once(fo_consumer_t *c, unsigned kind, const char *topic, const char *why) {
  if (c->logged_kinds & kind)
    return;
  c->logged_kinds |= kind;
  FO_LOG_WARN("consumer", "skipping undecodable record (logged once per kind)",
              "topic=%s why=\"%s\"", topic, why);
}

/* ---- assignment bookkeeping ---- */

static void track_partition(fo_kc_t *kc, int32_t p, int64_t next) {
  if (p < 0 || p > 100000)
    return;
  if (p >= kc->nparts) {
    int32_t n = p + 1;
    int64_t *nn = realloc(kc->next_off, (size_t)n * sizeof(*nn));
    if (nn == NULL)
      return;
    for (int32_t i = kc->nparts; i < n; i++)
      nn[i] = -1;
    kc->next_off = nn;
    kc->nparts = n;
  }
  kc->next_off[p] = next;
}

/* The current assignment (librdkafka's: no copy to keep in step), or
 * NULL when none. The caller destroys it. */
static rd_kafka_topic_partition_list_t *assignment(const fo_kc_t *kc) {
  rd_kafka_topic_partition_list_t *l = NULL;
  if (kc->rk == NULL || kc->closed)
    return NULL;
  if (rd_kafka_assignment(kc->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR)
    return NULL;
  if (l != NULL && l->cnt == 0) {
    rd_kafka_topic_partition_list_destroy(l);
    l = NULL;
  }
  return l;
}

/* The assigned gauge, after a change; new partitions of a paused server
 * start paused. */
static void assignment_changed(fo_consumer_t *c, fo_kc_t *kc) {
  int64_t n = 0;
  for (int i = 0; i < 2; i++) {
    rd_kafka_topic_partition_list_t *l = assignment(i == 0 ? &c->users : &c->rooms);
    if (l != NULL) {
      n += l->cnt;
      rd_kafka_topic_partition_list_destroy(l);
    }
  }
  *c->srv->m.assigned_partitions = n;
  if (!fo_flow_paused(c->srv->flow))
    return;
  if (kc->kcon != NULL) {
    fo_kafka_consumer_pause(kc->kcon, true);
    return;
  }
  rd_kafka_topic_partition_list_t *l = assignment(kc);
  if (l != NULL) {
    rd_kafka_pause_partitions(kc->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
  }
}

/* ---- frames ---- */

/* The client frame text of a message, into c->sb (proto.c); its pos
 * carries the topic's epoch (0 until the metadata said it) and the record's
 * timestamp (stream.c's anchor). */
static int build_text(fo_consumer_t *c, const fo_env_t *env, int kind,
                      const rd_kafka_message_t *msg) {
  fo_pos_t pos = {kind == FO_STREAM_USER ? 'u' : 'r', 0, msg->partition, msg->offset,
                  rd_kafka_message_timestamp(msg, NULL)};
  fo__streams_epoch(c->srv, kind, &pos.epoch);
  if (pos.t_ms < 0)
    pos.t_ms = 0;
  return fo_proto_message(&c->sb, env, &pos);
}

/* The record's position goes to the streams layer (stream.c): the offset
 * processed, and for rooms the frame for its window. */
static void stream_record(fo_consumer_t *c, int kind, const rd_kafka_message_t *msg,
                          const fo_env_t *env, fo_buf_t *frame, bool first) {
  int64_t ts = rd_kafka_message_timestamp(msg, NULL);
  fo__streams_record(c->srv, kind, msg->partition, msg->offset, ts < 0 ? 0 : ts,
                     env != NULL ? env->target : NULL, env != NULL ? env->target_len : 0, frame,
                     first);
}

/* ---- records ---- */

static void on_user_record(fo_consumer_t *c, const rd_kafka_message_t *msg) {
  fo_server_t *srv = c->srv;
  fo_env_t env;
  char err[128];
  (*srv->m.msgs_in_users)++;
  bool first = msg->partition >= c->users.nparts || c->users.next_off[msg->partition] < 0;
  if (first)
    FO_LOG_INFO("consumer", "first record after assignment",
                "topic=%s partition=%" PRId32 " offset=%" PRId64, srv->cfg->users_topic,
                msg->partition, msg->offset);
  track_partition(&c->users, msg->partition, msg->offset + 1);
  int rc = fo_env_decode(msg->payload, msg->len, &env, err, sizeof(err));
  /* Before routing: a connection that opens while it is in flight must get
   * a position that covers it (routed and delivered to it, or not). */
  stream_record(c, FO_STREAM_USER, msg, NULL, NULL, first);
  if (rc != 0 || env.kind != FO_ENV_SEND) {
    (*srv->m.decode_errors)++;
    log_once(c,
             rc == -ENOTSUP ? FAULT_VERSION
             : rc != 0      ? FAULT_ENVELOPE
                            : FAULT_KIND,
             srv->cfg->users_topic, rc != 0 ? err : "not a send envelope");
    fo__router_skip(srv, FO_RQ_USERS, msg->partition, msg->offset);
    return;
  }
  if (build_text(c, &env, FO_STREAM_USER, msg) != 0) {
    (*srv->m.drops)++;
    fo__router_skip(srv, FO_RQ_USERS, msg->partition, msg->offset);
    return;
  }
  int64_t soff = fo__streams_offset(srv, FO_STREAM_USER, env.target, env.target_len, msg->partition,
                                    msg->offset);
  if (fo__router_user(srv, env.target, env.target_len, c->sb.data, c->sb.len, msg->partition,
                      msg->offset, soff) != 0) {
    (*srv->m.drops)++;
    fo__router_skip(srv, FO_RQ_USERS, msg->partition, msg->offset);
  }
}

static void on_room_record(fo_consumer_t *c, const rd_kafka_message_t *msg) {
  fo_server_t *srv = c->srv;
  fo_env_t env;
  char err[128];
  (*srv->m.msgs_in_rooms)++;
  if (srv->fanout_t0 == 0)
    srv->fanout_t0 = uv_hrtime();
  bool first = msg->partition >= c->rooms.nparts || c->rooms.next_off[msg->partition] < 0;
  track_partition(&c->rooms, msg->partition, msg->offset + 1);
  int rc = fo_env_decode(msg->payload, msg->len, &env, err, sizeof(err));
  if (rc != 0 || env.kind != FO_ENV_BROADCAST) {
    if (!c->room_pubsub)
      stream_record(c, FO_STREAM_ROOM, msg, NULL, NULL, first);
    (*srv->m.decode_errors)++;
    log_once(c,
             rc == -ENOTSUP ? FAULT_VERSION
             : rc != 0      ? FAULT_ENVELOPE
                            : FAULT_KIND,
             srv->cfg->rooms_topic, rc != 0 ? err : "not a broadcast envelope");
    if (c->room_pubsub)
      fo__router_skip(srv, FO_RQ_ROOMS, msg->partition, msg->offset);
    return;
  }
  if (build_text(c, &env, FO_STREAM_ROOM, msg) != 0) {
    (*srv->m.drops)++;
    if (c->room_pubsub)
      fo__router_skip(srv, FO_RQ_ROOMS, msg->partition, msg->offset);
    else
      stream_record(c, FO_STREAM_ROOM, msg, NULL, NULL, first);
    return;
  }
  if (c->room_pubsub) {
    /* Delivered by the subscribers of ws:room:{room}, this server included. */
    int64_t soff = fo__streams_offset(srv, FO_STREAM_ROOM, env.target, env.target_len,
                                      msg->partition, msg->offset);
    if (fo__router_room(srv, env.target, env.target_len, c->sb.data, c->sb.len, msg->partition,
                        msg->offset, soff) != 0) {
      (*srv->m.drops)++;
      fo__router_skip(srv, FO_RQ_ROOMS, msg->partition, msg->offset);
    }
    return;
  }
  fo_buf_t *frame = fo_frame_new(FO_WS_OP_TEXT, c->sb.data, c->sb.len);
  if (frame == NULL)
    (*srv->m.drops)++;
  /* Into the window first: a join answered from it meanwhile and this
   * broadcast must agree on where the room's stream stands. */
  stream_record(c, FO_STREAM_ROOM, msg, &env, frame, first);
  if (frame == NULL)
    return;
  fo__room_broadcast(srv, env.target, env.target_len,
                     fo__streams_offset(srv, FO_STREAM_ROOM, env.target, env.target_len,
                                        msg->partition, msg->offset),
                     frame, false);
  fo_buf_unref(frame);
}

static void on_progress(void *ud);

/* Router callback: everything up to this offset was handed over. */
static void on_done(void *ud, int32_t partition, int64_t offset) {
  fo_kc_t *kc = ud;
  if (kc->kcon != NULL && !kc->closed) {
    /* What is stored is the next record to consume: offset + 1, once (the
     * legacy rd_kafka_offset_store() added the 1 itself; adding it twice
     * skipped a record at the next owner). */
    rd_kafka_resp_err_t e = fo_kafka_consumer_store(kc->kcon, kc->topic, partition, offset + 1);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__STATE)
      FO_LOG_DEBUG("consumer", "offset store failed", "partition=%" PRId32 " err=%s", partition,
                   rd_kafka_err2str(e));
  }
}

/* ---- rebalance ---- */

/* Commits what was stored before the partitions go to the next owner. */
static void commit_stored(fo_kc_t *kc) {
  rd_kafka_topic_partition_list_t *l = assignment(kc);
  if (l != NULL) {
    rd_kafka_commit(kc->rk, NULL, 1);
    rd_kafka_topic_partition_list_destroy(l);
  }
}

static void finish_revoke(fo_consumer_t *c, fo_kc_t *kc) {
  kc->revoke_pending = false;
  uv_timer_stop(&kc->revoke_timer);
  commit_stored(kc);
  fo_kafka_consumer_revoke_done(kc->kcon);
  assignment_changed(c, kc);
  FO_LOG_INFO("consumer", "revoke done", "topic=%s", kc->topic);
}

static void on_revoke_timeout(uv_timer_t *t) {
  fo_kc_t *kc = t->data;
  if (kc->revoke_pending) {
    FO_LOG_WARN("consumer", "revoking with messages in flight", "inflight=%zu",
                fo__router_inflight_q(kc->c->srv, kc->rq));
    finish_revoke(kc->c, kc);
  }
}

static void check_revoke(fo_consumer_t *c, fo_kc_t *kc) {
  if (kc->revoke_pending && fo__router_inflight_q(c->srv, kc->rq) == 0)
    finish_revoke(c, kc);
}

/* Builder callbacks (grouped consumers; ud: the fo_kc_t). */
static void on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts) {
  fo_kc_t *kc = ud;
  kc->revoke_pending = false; /* the builder ended a deferred revoke first */
  uv_timer_stop(&kc->revoke_timer);
  for (int i = 0; i < parts->cnt; i++) {
    track_partition(kc, parts->elems[i].partition, -1);
    /* No position until its first record is seen here. */
    fo__streams_partition_lost(kc->c->srv, kc->letter == 'u' ? FO_STREAM_USER : FO_STREAM_ROOM,
                               parts->elems[i].partition);
  }
  assignment_changed(kc->c, kc);
}

static bool on_revoke(void *ud, const rd_kafka_topic_partition_list_t *parts, bool incremental) {
  (void)incremental;
  fo_kc_t *kc = ud;
  /* Whoever takes them over decides their positions from now on. */
  for (int i = 0; parts != NULL && i < parts->cnt; i++)
    fo__streams_partition_lost(kc->c->srv, kc->letter == 'u' ? FO_STREAM_USER : FO_STREAM_ROOM,
                               parts->elems[i].partition);
  if (fo__router_inflight_q(kc->c->srv, kc->rq) == 0) {
    commit_stored(kc);
    return true; /* the builder gives them up now; the gauge follows at the next collect */
  }
  /* Finish in-flight work first, so its offsets are committed by us. */
  kc->revoke_pending = true;
  uv_timer_start(&kc->revoke_timer, on_revoke_timeout,
                 (uint64_t)(kc->c->srv->cfg->session_timeout_ms / 2), 0);
  return false;
}

static void on_kafka_error(void *ud, rd_kafka_resp_err_t err) {
  (void)err; /* logged by the builder */
  fo_kc_t *kc = ud;
  (*kc->c->srv->m.kafka_errors)++;
}

static void on_record(void *ud, const rd_kafka_message_t *msg);

/* ---- events ---- */

static void serve_event(fo_consumer_t *c, fo_kc_t *kc, rd_kafka_event_t *ev) {
  fo_server_t *srv = c->srv;
  switch (rd_kafka_event_type(ev)) {
  case RD_KAFKA_EVENT_FETCH: {
    const rd_kafka_message_t *msg;
    while ((msg = rd_kafka_event_message_next(ev)) != NULL) {
      if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
          continue;
        (*srv->m.kafka_errors)++;
        FO_LOG_WARN("consumer", "fetch error", "err=\"%s\"", rd_kafka_err2str(msg->err));
        continue;
      }
      if (kc == &c->users)
        on_user_record(c, msg);
      else
        on_room_record(c, msg);
    }
    break;
  }
  case RD_KAFKA_EVENT_ERROR:
    (*srv->m.kafka_errors)++;
    FO_LOG_WARN("consumer", "kafka error", "err=\"%s\" fatal=%d", rd_kafka_event_error_string(ev),
                rd_kafka_event_error_is_fatal(ev));
    break;
  case RD_KAFKA_EVENT_OFFSET_COMMIT:
    if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      (*srv->m.kafka_errors)++;
      FO_LOG_DEBUG("consumer", "commit failed", "err=\"%s\"", rd_kafka_event_error_string(ev));
    }
    break;
  default:
    break;
  }
  /* The drain reads fo__consumer_closed() itself (drain.c). */
}

static void on_record(void *ud, const rd_kafka_message_t *msg) {
  fo_kc_t *kc = ud;
  if (kc == &kc->c->users)
    on_user_record(kc->c, msg);
  else
    on_room_record(kc->c, msg);
}

static void on_rooms_event(rd_kafka_event_t *ev, void *ud) {
  fo_consumer_t *c = ud;
  serve_event(c, &c->rooms, ev);
}

/* ---- rooms topic: metadata off the loop, then assign everything ---- */

/* Off the loop: the partition counts of both topics and the cluster id
 * (the rooms assignment needs the first, the positions' epochs all). */
static void meta_work(uv_work_t *w) {
  fo_consumer_t *c = w->data;
  c->meta_err[0] = '\0';
  for (int k = 0; k < 2; k++) {
    const struct rd_kafka_metadata *md = NULL;
    c->meta_partitions[k] = -1;
    rd_kafka_resp_err_t e = rd_kafka_metadata(c->users.rk, 0, c->meta_rkt[k], &md, 5000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      snprintf(c->meta_err, sizeof(c->meta_err), "%s", rd_kafka_err2str(e));
      continue;
    }
    if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
      c->meta_partitions[k] = md->topics[0].partition_cnt;
    else
      snprintf(c->meta_err, sizeof(c->meta_err), "%s",
               md->topic_cnt == 1 ? rd_kafka_err2str(md->topics[0].err) : "no topic");
    rd_kafka_metadata_destroy(md);
  }
  char *cid = rd_kafka_clusterid(c->users.rk, 5000);
  snprintf(c->meta_cluster, sizeof(c->meta_cluster), "%s", cid != NULL ? cid : "");
  if (cid != NULL)
    rd_kafka_mem_free(c->users.rk, cid);
}

static void on_meta_timer(uv_timer_t *t);

static void meta_after(uv_work_t *w, int status) {
  fo_consumer_t *c = w->data;
  fo_server_t *srv = c->srv;
  c->meta_busy = false;
  if (status != 0 || c->draining)
    return;
  bool have_cluster = c->meta_cluster[0] != '\0';
  for (int k = 0; k < 2 && have_cluster; k++)
    if (c->meta_partitions[k] > 0)
      fo__streams_topic(srv, k == 0 ? FO_STREAM_USER : FO_STREAM_ROOM, c->meta_cluster,
                        c->meta_partitions[k]);
  if (c->room_pubsub) {
    /* Nothing to assign: only the epochs; quicker again while unknown. */
    bool known = have_cluster && c->meta_partitions[0] > 0 && c->meta_partitions[1] > 0;
    uv_timer_start(&c->meta_timer, on_meta_timer, known ? 30000 : 1000, 0);
    return;
  }
  int n = c->meta_partitions[1];
  rd_kafka_topic_partition_list_t *cur = assignment(&c->rooms);
  int have = cur != NULL ? cur->cnt : 0;
  if (cur != NULL)
    rd_kafka_topic_partition_list_destroy(cur);
  if (n <= 0 || !have_cluster || c->meta_partitions[0] <= 0) {
    FO_LOG_WARN("consumer", "topic metadata failed", "topic=%s err=\"%s\"", srv->cfg->rooms_topic,
                c->meta_err);
    uv_timer_start(&c->meta_timer, on_meta_timer, 1000, 0);
    if (n <= 0)
      return;
  }
  if (n != have) {
    /* New partitions: keep the positions of the ones we had, start new ones at the end. */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) {
      int64_t off = RD_KAFKA_OFFSET_END;
      if (p < c->rooms.nparts && c->rooms.next_off[p] >= 0)
        off = c->rooms.next_off[p];
      rd_kafka_topic_partition_list_add(l, srv->cfg->rooms_topic, p)->offset = off;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(c->rooms.rk, l);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      FO_LOG_WARN("consumer", "rooms assign failed", "err=%s", rd_kafka_err2str(e));
    } else {
      assignment_changed(c, &c->rooms);
      FO_LOG_INFO("consumer", "rooms partitions assigned", "topic=%s count=%d",
                  srv->cfg->rooms_topic, n);
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  /* Look again now and then for added partitions. */
  if (!uv_is_active((uv_handle_t *)&c->meta_timer))
    uv_timer_start(&c->meta_timer, on_meta_timer, 30000, 0);
}

static void on_meta_timer(uv_timer_t *t) {
  fo_consumer_t *c = t->data;
  if (c->meta_busy || c->draining)
    return;
  c->meta_busy = true;
  c->meta_work.data = c;
  if (uv_queue_work(c->srv->loop, &c->meta_work, meta_work, meta_after) != 0)
    c->meta_busy = false;
}

/* ---- construction ---- */

/* A consumer-group member (users, or rooms in room mode "redis") through
 * the builder: offsets stored by the router's done callback and
 * auto-committed, a revoke deferred while the router holds its records. */
static int make_grouped(fo_consumer_t *c, fo_kc_t *kc, const char *group, const char *topic,
                        bool rooms, char *err, size_t errlen) {
  const fo_dcfg_t *cfg = c->srv->cfg;
  char client_id[300], reset[64];
  snprintf(client_id, sizeof(client_id), "fanout-delivery-%s%s", cfg->server_id,
           rooms ? "-rooms" : "");
  snprintf(reset, sizeof(reset), "auto.offset.reset=%s",
           rooms ? "latest" : cfg->users_offset_reset);
  char fetch_wait[48];
  snprintf(fetch_wait, sizeof(fetch_wait), "fetch.wait.max.ms=%lld",
           (long long)cfg->kafka_fetch_wait_ms);
  char *ours[] = {reset,
                  "enable.auto.commit=true",
                  "enable.auto.offset.store=false",
                  "enable.partition.eof=false",
                  fetch_wait,
                  NULL};
  const char *topics[] = {topic, NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = cfg->kafka,
                                .client_id = client_id,
                                .group = group,
                                .session_timeout_ms = cfg->session_timeout_ms,
                                .settings = ours,
                                .extra = cfg->kafka_opts,
                                .topics = topics,
                                .batch = 256,
                                .log_mod = "consumer"};
  fo_kafka_consumer_cbs_t cbs = {.on_message = on_record,
                                 .on_assign = on_assign,
                                 .on_revoke = on_revoke,
                                 .on_error = on_kafka_error};
  kc->topic = topic;
  kc->letter = rooms ? 'r' : 'u';
  kc->rq = rooms ? FO_RQ_ROOMS : FO_RQ_USERS;
  char why[256];
  int rc = fo_kafka_consumer_new(c->srv->loop, &o, &cbs, kc, why, sizeof(why), &kc->kcon);
  if (rc != 0) {
    snprintf(err, errlen, "kafka: %s", why);
    return rc;
  }
  kc->rk = fo_kafka_consumer_rk(kc->kcon);
  return 0;
}

/* The rooms consumer of room mode "kafka": all partitions assigned by hand
 * (meta_after), never joining the group nor committing. */
static int make_assigned(fo_consumer_t *c, fo_kc_t *kc, const char *group, const char *topic,
                         char *err, size_t errlen) {
  fo_server_t *srv = c->srv;
  const fo_dcfg_t *cfg = srv->cfg;
  char **extra = NULL;
  char client_id[300];
  snprintf(client_id, sizeof(client_id), "fanout-delivery-%s-rooms", cfg->server_id);
  /* --kafka-fetch-wait-ms first, then --kafka-opts (which win). */
  char opts[8300];
  snprintf(opts, sizeof(opts), "fetch.wait.max.ms=%lld%s%s", (long long)cfg->kafka_fetch_wait_ms,
           cfg->kafka_opts != NULL && cfg->kafka_opts[0] != '\0' ? "," : "",
           cfg->kafka_opts != NULL ? cfg->kafka_opts : "");
  if (fo_cfg_list_split(opts, &extra) < 0) {
    explicit_bzero(opts, sizeof(opts));
    snprintf(err, errlen, "kafka-opts: out of memory");
    return -ENOMEM;
  }
  explicit_bzero(opts, sizeof(opts)); /* --kafka-opts may hold SASL passwords */
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_CONSUMER, cfg->kafka, client_id, extra, err, errlen);
  fo_cfg_list_free(extra);
  if (conf == NULL)
    return -EINVAL;
  const char *kv[][2] = {
      {"group.id", group},
      {"auto.offset.reset", "latest"},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"enable.partition.eof", "false"},
  };
  char why[256];
  for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
    if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], why, sizeof(why)) != RD_KAFKA_CONF_OK) {
      snprintf(err, errlen, "kafka %s=%s: %s", kv[i][0], kv[i][1], why);
      rd_kafka_conf_destroy(conf);
      return -EINVAL;
    }
  }
  rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_FETCH | RD_KAFKA_EVENT_ERROR);
  kc->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
  if (kc->rk == NULL) {
    snprintf(err, errlen, "kafka: %s", why);
    rd_kafka_conf_destroy(conf);
    return -EINVAL;
  }
  rd_kafka_poll_set_consumer(kc->rk);
  kc->q = rd_kafka_queue_get_consumer(kc->rk);
  kc->rkt = rd_kafka_topic_new(kc->rk, topic, NULL);
  kc->topic = topic;
  kc->letter = 'r';
  kc->rq = FO_RQ_ROOMS;
  if (kc->q == NULL || kc->rkt == NULL) {
    snprintf(err, errlen, "kafka: no consumer queue");
    return -EINVAL;
  }
  int rc = fo_kafka_uv_start(srv->loop, kc->q, 256, on_rooms_event, c, &kc->kuv);
  if (rc != 0) {
    snprintf(err, errlen, "kafka: %s", fo_strerror(rc));
    return rc;
  }
  return 0;
}

int fo__consumer_new(fo_server_t *srv, char *err, size_t errlen) {
  const fo_dcfg_t *cfg = srv->cfg;
  fo_consumer_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return -ENOMEM;
  c->srv = srv;
  srv->consumer = c;
  fo_sb_init(&c->sb);
  c->room_pubsub = cfg->room_mode_id == FO_ROOM_MODE_REDIS;
  c->users.c = c->rooms.c = c;
  uv_timer_init(srv->loop, &c->users.revoke_timer);
  uv_timer_init(srv->loop, &c->rooms.revoke_timer);
  uv_timer_init(srv->loop, &c->meta_timer);
  c->users.revoke_timer.data = &c->users;
  c->rooms.revoke_timer.data = &c->rooms;
  c->meta_timer.data = c;
  c->open_handles = 3;
  fo__router_set_done_cb(srv, FO_RQ_USERS, on_done, &c->users);
  fo__router_set_done_cb(srv, FO_RQ_ROOMS, on_done, &c->rooms);
  fo__router_set_progress_cb(srv, on_progress, srv);

  int rc = make_grouped(c, &c->users, cfg->group_id, cfg->users_topic, false, err, errlen);
  if (rc != 0)
    return rc;
  c->meta_rkt[0] = rd_kafka_topic_new(c->users.rk, cfg->users_topic, NULL);
  c->meta_rkt[1] = rd_kafka_topic_new(c->users.rk, cfg->rooms_topic, NULL);
  if (c->meta_rkt[0] == NULL || c->meta_rkt[1] == NULL) {
    snprintf(err, errlen, "kafka: no topic handle");
    return -EINVAL;
  }
  char group[512];
  if (c->room_pubsub) {
    /* One consumer group for the deployment: each room record is consumed
     * once and PUBLISHed to its channel. */
    snprintf(group, sizeof(group), "%s.rooms", cfg->group_id);
    rc = make_grouped(c, &c->rooms, group, cfg->rooms_topic, true, err, errlen);
    if (rc == 0)
      on_meta_timer(&c->meta_timer);
    return rc;
  }
  /* A group id is needed for assign(); this server never joins it nor commits. */
  snprintf(group, sizeof(group), "%s.rooms.%s", cfg->group_id, cfg->server_id);
  rc = make_assigned(c, &c->rooms, group, cfg->rooms_topic, err, errlen);
  if (rc != 0)
    return rc;
  on_meta_timer(&c->meta_timer);
  return 0;
}

int64_t fo__consumer_room_position(fo_server_t *srv, int32_t partition) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL || c->room_pubsub || c->rooms.rk == NULL || c->rooms.closed)
    return -1;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, srv->cfg->rooms_topic, partition);
  int64_t off = -1;
  if (rd_kafka_position(c->rooms.rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR && l->elems[0].offset >= 0)
    off = l->elems[0].offset;
  rd_kafka_topic_partition_list_destroy(l);
  if (off < 0) {
    /* Nothing consumed yet (librdkafka's position is last consumed + 1):
     * the high watermark of the last fetch response, no request either.
     * Records before it that the consumer has not handed over yet arrive
     * later: the caller drops those (its fence). */
    int64_t lo = -1, hi = -1;
    if (rd_kafka_get_watermark_offsets(c->rooms.rk, srv->cfg->rooms_topic, partition, &lo, &hi) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        hi >= 0)
      off = hi;
  }
  return off;
}

void fo__consumer_pause(fo_server_t *srv, bool pause) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL)
    return;
  int64_t n = 0;
  for (int i_ = 0; i_ < 2; i_++) {
    fo_kc_t *kc = i_ == 0 ? &c->users : &c->rooms;
    rd_kafka_topic_partition_list_t *l = assignment(kc);
    if (l == NULL)
      continue;
    n += l->cnt;
    if (kc->kcon != NULL) {
      fo_kafka_consumer_pause(kc->kcon, pause); /* kicks on resume */
    } else {
      if (pause)
        rd_kafka_pause_partitions(kc->rk, l);
      else
        rd_kafka_resume_partitions(kc->rk, l);
      if (!pause && kc->kuv != NULL)
        fo_kafka_uv_kick(kc->kuv);
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  *srv->m.paused_partitions = pause ? n : 0;
}

/* Consumer lag: high watermark (cached from fetches) minus our position;
 * and the assigned gauge (a revoke given up at once lands here). */
void fo__consumer_collect(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  int64_t lag = 0, assigned = 0;
  if (c == NULL)
    return;
  for (int i_ = 0; i_ < 2; i_++) {
    fo_kc_t *kc = i_ == 0 ? &c->users : &c->rooms;
    rd_kafka_topic_partition_list_t *l = assignment(kc);
    if (l == NULL)
      continue;
    assigned += l->cnt;
    for (int i = 0; i < l->cnt; i++) {
      int32_t p = l->elems[i].partition;
      int64_t lo = 0, hi = 0;
      if (rd_kafka_get_watermark_offsets(kc->rk, l->elems[i].topic, p, &lo, &hi) !=
              RD_KAFKA_RESP_ERR_NO_ERROR ||
          hi < 0)
        continue;
      int64_t next = p < kc->nparts ? kc->next_off[p] : -1;
      if (next >= 0 && hi > next)
        lag += hi - next;
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  *srv->m.consumer_lag = lag;
  *srv->m.assigned_partitions = assigned;
}

/* Starts one consumer's close (a grouped one leaves its group). */
static void close_kc(fo_kc_t *kc) {
  if (kc->close_started)
    return;
  kc->close_started = true;
  if (kc->kcon != NULL) {
    if (fo_kafka_consumer_close_start(kc->kcon) != 0)
      kc->closed = true;
    return;
  }
  if (kc->rk == NULL)
    return;
  rd_kafka_error_t *e = rd_kafka_consumer_close_queue(kc->rk, kc->q);
  if (e != NULL) {
    FO_LOG_WARN("consumer", "close failed", "err=\"%s\"", rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    kc->closed = true;
  } else if (rd_kafka_consumer_closed(kc->rk)) {
    kc->closed = true;
  } else {
    fo_kafka_uv_kick(kc->kuv);
  }
}

void fo__consumer_drain(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL || c->draining)
    return;
  c->draining = true;
  uv_timer_stop(&c->meta_timer);
  close_kc(&c->users);
  if (c->rooms.kcon != NULL)
    close_kc(&c->rooms); /* grouped (room mode redis): another server takes its partitions */
}

void fo__consumer_drain_rooms(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  if (c != NULL)
    close_kc(&c->rooms);
}

/* Called by the router when messages were released (revoke may finish). */
/* Router callback: messages were released, so a pending revoke may finish. */
static void on_progress(void *ud) {
  fo_server_t *srv = ud; /* not the consumer: the router may outlive it */
  fo_consumer_t *c = srv->consumer;
  if (c != NULL) {
    check_revoke(c, &c->users);
    check_revoke(c, &c->rooms);
  }
}

bool fo__consumer_closed(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL)
    return true;
  for (int i_ = 0; i_ < 2; i_++) {
    fo_kc_t *kc = i_ == 0 ? &c->users : &c->rooms;
    if (kc->rk != NULL && !kc->closed) {
      if (kc->kcon != NULL ? fo_kafka_consumer_closed(kc->kcon) : rd_kafka_consumer_closed(kc->rk))
        kc->closed = true;
      else
        return false;
    }
  }
  return true;
}

static void on_consumer_timer_closed(uv_handle_t *h) {
  fo_consumer_t *c = h->data;
  c->open_handles--;
}

static void on_revoke_timer_closed(uv_handle_t *h) {
  fo_kc_t *kc = h->data;
  kc->c->open_handles--;
}

/* Closes the loop handles; the Kafka handles stay until fo__consumer_destroy. */
void fo__consumer_free(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL || c->open_handles < 3)
    return;
  for (int i_ = 0; i_ < 2; i_++) {
    fo_kc_t *kc = i_ == 0 ? &c->users : &c->rooms;
    if (kc->kcon != NULL)
      fo_kafka_consumer_close(kc->kcon);
    fo_kafka_uv_close(kc->kuv);
    kc->kuv = NULL;
  }
  uv_close((uv_handle_t *)&c->users.revoke_timer, on_revoke_timer_closed);
  uv_close((uv_handle_t *)&c->rooms.revoke_timer, on_revoke_timer_closed);
  uv_close((uv_handle_t *)&c->meta_timer, on_consumer_timer_closed);
}

/* After uv_run returned (no metadata work can be running): librdkafka's
 * destroy may block briefly, which is fine at exit. */
void fo__consumer_destroy(fo_server_t *srv) {
  fo_consumer_t *c = srv->consumer;
  if (c == NULL)
    return;
  srv->consumer = NULL;
  for (int k = 0; k < 2; k++)
    if (c->meta_rkt[k] != NULL)
      rd_kafka_topic_destroy(c->meta_rkt[k]);
  for (int i_ = 0; i_ < 2; i_++) {
    fo_kc_t *kc = i_ == 0 ? &c->users : &c->rooms;
    if (kc->kcon != NULL) {
      fo_kafka_consumer_free(kc->kcon); /* leaves the group unless the drain did */
      kc->kcon = NULL;
      kc->rk = NULL;
    }
    if (kc->rkt)
      rd_kafka_topic_destroy(kc->rkt);
    if (kc->q)
      rd_kafka_queue_destroy(kc->q);
    if (kc->rk)
      rd_kafka_destroy(kc->rk);
    free(kc->next_off);
  }
  fo_sb_free(&c->sb);
  free(c);
}

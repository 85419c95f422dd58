/* The intake: a consumer group on fanout.intake for backend services that
 * produce to Kafka (schemas/intake.md). Each record is either the msgpack
 * envelope (forwarded unchanged) or the JSON form {"user"|"room","data"}
 * (wrapped in a new envelope); valid ones are produced to fanout.users /
 * fanout.rooms, partitioned like the HTTP API's; anything else is copied to
 * fanout.dlq with the reason in the `fanout-error` header.
 *
 * Offsets: records of one intake partition sit in a FIFO in offset order; a
 * record is done when its produce was acknowledged; the offset after the
 * longest done prefix is stored (enable.auto.offset.store=false) and
 * committed by auto-commit. Nothing is committed ahead of an unacknowledged
 * record, and a bad record is done as soon as its DLQ copy is acknowledged,
 * so it never holds back the others. Failed produces are retried. */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "envelope.h"
#include "ingest_int.h"
#include "kafka_consumer.h"
#include "list.h"
#include "log.h"
#include "message.h"

#define RETRY_MS   500
#define MAX_REASON 200

typedef struct tracker tracker_t;
typedef struct rec rec_t;

struct rec {
  fo_prod_req_t preq; /* first: the opaque handed to the producer */
  fo_intake_t *in;
  tracker_t *tr;
  STAILQ_ENTRY(rec) fifo; /* tracker FIFO, in offset order */
  SLIST_ENTRY(rec) retry; /* retry list */
  LIST_ENTRY(rec) all;    /* every live record, for the final cleanup */
  int64_t offset;
  int32_t partition;
  fo_topic_t topic; /* where it goes now */
  bool done;
  bool dlq_trimmed; /* DLQ copy without the value (too large) */
  char *key;        /* owned copies */
  size_t keylen;
  uint8_t *val;
  size_t vallen;
  rd_kafka_headers_t *hdrs; /* template copied into each DLQ attempt, owned */
  char reason[MAX_REASON];
};

struct tracker {
  int32_t partition;
  bool attached; /* still in the assignment */
  int refs;      /* records pointing here, + 1 while attached */
  STAILQ_HEAD(, rec) recs;
};

struct fo_intake {
  fo_ingest_t *ing;
  fo_kafka_consumer_t *kc;
  tracker_t **trackers; /* by partition, attached ones */
  int ntrackers;
  size_t inflight;
  bool paused;
  bool stopping;
  uv_timer_t retry_timer; /* retry_timer.data == this */
  bool timer_closed;
  SLIST_HEAD(, rec) retries;
  LIST_HEAD(, rec) all;
  fo_log_ratelimit_t rl;
  uint64_t *c_forwarded, *c_dlq, *c_retries;
  int64_t *g_inflight;
};

static void rec_send(rec_t *rec);
static void on_retry(uv_timer_t *t);

/* ---- trackers ------------------------------------------------------------------ */

static void tracker_unref(tracker_t *tr) {
  if (--tr->refs == 0)
    free(tr);
}

static tracker_t *tracker_get(fo_intake_t *in, int32_t partition) {
  if (partition < 0 || partition > 100000)
    return NULL;
  if (partition >= in->ntrackers) {
    int n = partition + 1;
    tracker_t **grown = realloc(in->trackers, (size_t)n * sizeof(*grown));
    if (grown == NULL)
      return NULL;
    for (int i = in->ntrackers; i < n; i++)
      grown[i] = NULL;
    in->trackers = grown;
    in->ntrackers = n;
  }
  if (in->trackers[partition] == NULL) {
    tracker_t *tr = calloc(1, sizeof(*tr));
    if (tr == NULL)
      return NULL;
    tr->partition = partition;
    tr->attached = true;
    tr->refs = 1;
    STAILQ_INIT(&tr->recs);
    in->trackers[partition] = tr;
  }
  return in->trackers[partition];
}

static void tracker_detach(fo_intake_t *in, int32_t partition) {
  if (partition < 0 || partition >= in->ntrackers || in->trackers[partition] == NULL)
    return;
  tracker_t *tr = in->trackers[partition];
  in->trackers[partition] = NULL;
  tr->attached = false;
  tracker_unref(tr);
}

static void store_offset(fo_intake_t *in, int32_t partition, int64_t next_offset) {
  rd_kafka_resp_err_t err =
      fo_kafka_consumer_store(in->kc, in->ing->cfg->topic_intake, partition, next_offset);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
    FO_LOG_DEBUG("intake", "offset not stored", "partition=%d err=\"%s\"", (int)partition,
                 rd_kafka_err2str(err));
}

static void set_paused(fo_intake_t *in, bool pause) {
  if (in->paused == pause)
    return;
  fo_kafka_consumer_pause(in->kc, pause);
  in->paused = pause;
  FO_LOG_DEBUG("intake", pause ? "paused" : "resumed", "inflight=%zu", in->inflight);
}

static void rec_free(rec_t *rec) {
  LIST_REMOVE(rec, all);
  free(rec->key);
  free(rec->val);
  if (rec->hdrs != NULL)
    rd_kafka_headers_destroy(rec->hdrs);
  free(rec);
}

/* Pops the done prefix of the record's partition and stores the offset. */
static void tracker_advance(fo_intake_t *in, tracker_t *tr) {
  int64_t last = -1;
  rec_t *rec;
  while ((rec = STAILQ_FIRST(&tr->recs)) != NULL && rec->done) {
    STAILQ_REMOVE_HEAD(&tr->recs, fifo);
    last = rec->offset;
    rec_free(rec);
    in->inflight--;
    bool last_ref = tr->refs == 1; /* detached and now empty */
    tracker_unref(tr);
    if (last_ref) {
      tr = NULL;
      break;
    }
  }
  if (last >= 0 && tr != NULL && tr->attached)
    store_offset(in, tr->partition, last + 1);
  if (in->paused && !in->stopping && in->inflight <= (size_t)in->ing->cfg->intake_max_inflight / 2)
    set_paused(in, false);
}

/* ---- sending ----------------------------------------------------------------- */

static void to_dlq(rec_t *rec, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void to_dlq(rec_t *rec, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rec->reason, sizeof(rec->reason), fmt, ap);
  va_end(ap);
  rec->topic = FO_TOPIC_DLQ;
  uint64_t suppressed;
  if (fo_log_ratelimit(&rec->in->rl, fo_now_ms(), 1000, &suppressed))
    FO_LOG_INFO("intake", "record to dlq",
                "partition=%d offset=%" PRId64 " reason=\"%s\" suppressed=%llu",
                (int)rec->partition, rec->offset, rec->reason, (unsigned long long)suppressed);
}

static void retry_later(rec_t *rec) {
  fo_intake_t *in = rec->in;
  (*in->c_retries)++;
  SLIST_INSERT_HEAD(&in->retries, rec, retry);
  if (!in->timer_closed && !uv_is_active((uv_handle_t *)&in->retry_timer))
    uv_timer_start(&in->retry_timer, on_retry, RETRY_MS, 0);
}

static void rec_done(rec_t *rec) {
  rec->done = true;
  if (rec->topic == FO_TOPIC_DLQ)
    (*rec->in->c_dlq)++;
  else
    (*rec->in->c_forwarded)++;
  tracker_advance(rec->in, rec->tr);
}

/* Errors that mean Kafka will never take this record as it is. */
static bool refused_for_good(rd_kafka_resp_err_t err) {
  switch (err) {
  case RD_KAFKA_RESP_ERR_INVALID_MSG:
  case RD_KAFKA_RESP_ERR_INVALID_RECORD:
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
    return true;
  default:
    return false;
  }
}

static void on_produced(fo_prod_req_t *preq, rd_kafka_resp_err_t err, int32_t partition,
                        int64_t offset) {
  (void)partition;
  (void)offset;
  rec_t *rec = (rec_t *)preq;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    rec_done(rec);
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
    return; /* exiting: never committed, so consumed again after a restart */
  if (!refused_for_good(err)) {
    retry_later(rec);
    return;
  }
  if (rec->topic != FO_TOPIC_DLQ) {
    to_dlq(rec, "kafka refused the record: %s", rd_kafka_err2str(err));
  } else if (!rec->dlq_trimmed) {
    rec->dlq_trimmed = true; /* the DLQ copy goes without its value */
  } else {
    FO_LOG_ERROR("intake", "record dropped: the DLQ refused it",
                 "partition=%d offset=%" PRId64 " err=\"%s\"", (int)rec->partition, rec->offset,
                 rd_kafka_err2str(err));
    rec_done(rec);
    return;
  }
  rec_send(rec);
}

static rd_kafka_headers_t *dlq_headers(rec_t *rec) {
  rd_kafka_headers_t *h =
      rec->hdrs != NULL ? rd_kafka_headers_copy(rec->hdrs) : rd_kafka_headers_new(4);
  if (h == NULL)
    return NULL;
  char src[128];
  snprintf(src, sizeof(src), "%s/%d/%" PRId64, rec->in->ing->cfg->topic_intake, (int)rec->partition,
           rec->offset);
  rd_kafka_header_add(h, "fanout-error", -1, rec->reason, -1);
  rd_kafka_header_add(h, "fanout-source", -1, src, -1);
  if (rec->dlq_trimmed)
    rd_kafka_header_add(h, "fanout-value-dropped", -1, "too large", -1);
  return h;
}

static void rec_send(rec_t *rec) {
  fo_intake_t *in = rec->in;
  rd_kafka_headers_t *hdrs = NULL;
  const void *val = rec->val;
  size_t vallen = rec->vallen;
  if (rec->topic == FO_TOPIC_DLQ) {
    hdrs = dlq_headers(rec);
    if (hdrs == NULL) {
      retry_later(rec);
      return;
    }
    if (rec->dlq_trimmed) {
      val = NULL;
      vallen = 0;
    }
  }
  rd_kafka_resp_err_t err = fo__producer_send(in->ing->producer, rec->topic, rec->key, rec->keylen,
                                              val, vallen, hdrs, &rec->preq);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
    return;
  if (hdrs != NULL)
    rd_kafka_headers_destroy(hdrs);
  on_produced(&rec->preq, err, -1, -1); /* same handling as a failed delivery */
}

static void on_retry(uv_timer_t *t) {
  fo_intake_t *in = t->data;
  rec_t *rec;
  /* Taken one by one: rec_send may put a record back on the list, for
   * the next round. */
  SLIST_HEAD(, rec) list = {SLIST_FIRST(&in->retries)};
  SLIST_INIT(&in->retries);
  while ((rec = SLIST_FIRST(&list)) != NULL) {
    SLIST_REMOVE_HEAD(&list, retry);
    rec_send(rec);
  }
}

/* ---- classifying a record ------------------------------------------------------------ */

static bool is_msgpack_map(uint8_t b) {
  return (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
}

/* Decides where rec goes: its own bytes (envelope), a new envelope (JSON
 * form: rec->val replaced), or the DLQ with a reason. */
static void classify(fo_intake_t *in, rec_t *rec) {
  const fo_ingest_cfg_t *cfg = in->ing->cfg;
  if (rec->vallen > (size_t)cfg->intake_max_bytes) {
    to_dlq(rec, "record too large: %zu bytes (limit %" PRId64 ")", rec->vallen,
           cfg->intake_max_bytes);
    return;
  }
  if (rec->vallen == 0) {
    to_dlq(rec, "empty record");
    return;
  }
  if (is_msgpack_map(rec->val[0])) {
    fo_env_t env;
    char err[128] = "";
    int rc = fo_env_decode(rec->val, rec->vallen, &env, err, sizeof(err));
    if (rc != 0) {
      to_dlq(rec, "invalid envelope: %s", err[0] != '\0' ? err : fo_strerror(rc));
      return;
    }
    const char *why = fo__msg_target_invalid(env.target, env.target_len);
    if (why != NULL) {
      to_dlq(rec, "invalid envelope: target %s", why);
      return;
    }
    char *key = malloc(env.target_len > 0 ? env.target_len : 1);
    if (key == NULL) {
      to_dlq(rec, "out of memory");
      return;
    }
    memcpy(key, env.target, env.target_len);
    free(rec->key);
    rec->key = key;
    rec->keylen = env.target_len;
    rec->topic = env.kind == FO_ENV_BROADCAST ? FO_TOPIC_ROOMS : FO_TOPIC_USERS;
    return; /* forwarded byte for byte */
  }
  size_t i = 0;
  while (i < rec->vallen &&
         (rec->val[i] == ' ' || rec->val[i] == '\t' || rec->val[i] == '\r' || rec->val[i] == '\n'))
    i++;
  if (i == rec->vallen || rec->val[i] != '{') {
    to_dlq(rec, "neither a msgpack envelope nor a JSON object");
    return;
  }
  json_error_t jerr;
  json_t *root = json_loadb((const char *)rec->val, rec->vallen, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    to_dlq(rec, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    return;
  }
  fo_msg_t msg;
  const char *why = fo__msg_check(root, 0, &msg);
  if (why != NULL) {
    json_decref(root);
    to_dlq(rec, "invalid JSON form: %s", why);
    return;
  }
  fo_sb_t env;
  fo_sb_init(&env);
  uint8_t id[FO_ID_LEN];
  int rc = fo__msg_envelope(&in->ing->idgen, &msg, &env, id);
  char *key = rc == 0 ? strndup(msg.target, msg.target_len) : NULL;
  size_t keylen = msg.target_len;
  fo_env_kind_t kind = msg.kind;
  json_decref(root);
  if (rc != 0 || key == NULL) {
    free(key);
    fo_sb_free(&env);
    to_dlq(rec, "cannot build the envelope: %s", fo_strerror(rc != 0 ? rc : -ENOMEM));
    return;
  }
  /* The record now carries the envelope; the original is not needed again. */
  free(rec->val);
  rec->val = (uint8_t *)env.data;
  rec->vallen = env.len;
  free(rec->key);
  rec->key = key;
  rec->keylen = keylen;
  rec->topic = kind == FO_ENV_BROADCAST ? FO_TOPIC_ROOMS : FO_TOPIC_USERS;
}

static void on_record(fo_intake_t *in, const rd_kafka_message_t *msg) {
  tracker_t *tr = tracker_get(in, msg->partition);
  rec_t *rec = calloc(1, sizeof(*rec));
  if (tr == NULL || rec == NULL) {
    free(rec);
    FO_LOG_ERROR("intake", "out of memory: record left uncommitted", "partition=%d offset=%" PRId64,
                 (int)msg->partition, msg->offset);
    return;
  }
  rec->preq.done = on_produced;
  rec->in = in;
  rec->tr = tr;
  rec->offset = msg->offset;
  rec->partition = msg->partition;
  rec->keylen = msg->key_len;
  rec->key = malloc(msg->key_len > 0 ? msg->key_len : 1);
  rec->vallen = msg->len;
  rec->val = malloc(msg->len > 0 ? msg->len : 1);
  if (rec->key == NULL || rec->val == NULL) {
    free(rec->key);
    free(rec->val);
    free(rec);
    FO_LOG_ERROR("intake", "out of memory: record left uncommitted", "partition=%d offset=%" PRId64,
                 (int)msg->partition, msg->offset);
    return;
  }
  if (msg->key_len > 0)
    memcpy(rec->key, msg->key, msg->key_len);
  if (msg->len > 0)
    memcpy(rec->val, msg->payload, msg->len);
  rd_kafka_headers_t *h = NULL;
  if (rd_kafka_message_headers(msg, &h) == RD_KAFKA_RESP_ERR_NO_ERROR && h != NULL)
    rec->hdrs = rd_kafka_headers_copy(h);
  LIST_INSERT_HEAD(&in->all, rec, all);
  tr->refs++;
  STAILQ_INSERT_TAIL(&tr->recs, rec, fifo);
  in->inflight++;
  classify(in, rec);
  if (rec->topic != FO_TOPIC_DLQ) {
    /* the headers only matter for a DLQ copy */
    if (rec->hdrs != NULL)
      rd_kafka_headers_destroy(rec->hdrs);
    rec->hdrs = NULL;
  }
  rec_send(rec);
  if (!in->paused && in->inflight >= (size_t)in->ing->cfg->intake_max_inflight)
    set_paused(in, true);
}

/* ---- consumer events -------------------------------------------------------------------- */

static void on_message(void *ud, const rd_kafka_message_t *msg) {
  on_record(ud, msg);
}

static void on_assign(void *ud, const rd_kafka_topic_partition_list_t *parts) {
  (void)parts;
  fo_intake_t *in = ud;
  in->paused = false; /* a new assignment fetches */
  if (in->stopping || in->inflight >= (size_t)in->ing->cfg->intake_max_inflight)
    set_paused(in, true);
}

static bool on_revoke(void *ud, const rd_kafka_topic_partition_list_t *parts, bool incremental) {
  fo_intake_t *in = ud;
  /* In-flight records of revoked partitions still complete, but their
   * offsets are no longer ours to store: the new owner reads them again. */
  if (incremental) {
    for (int i = 0; i < parts->cnt; i++)
      tracker_detach(in, parts->elems[i].partition);
  } else {
    for (int32_t p = 0; p < in->ntrackers; p++)
      tracker_detach(in, p);
  }
  return true;
}

static void on_collect(void *ud) {
  fo_intake_t *in = ud;
  *in->g_inflight = (int64_t)in->inflight;
}

int fo__intake_new(fo_ingest_t *ing, fo_intake_t **out, char *err, size_t errlen) {
  const fo_ingest_cfg_t *cfg = ing->cfg;
  fo_intake_t *in = calloc(1, sizeof(*in));
  if (in == NULL)
    return -ENOMEM;
  in->ing = ing;
  fo_metrics_t *m = ing->metrics;
  in->c_forwarded =
      fo_metrics_counter(m, "fanout_ingest_intake_records_total{result=\"forwarded\"}",
                         "Intake records acknowledged, by destination");
  in->c_dlq = fo_metrics_counter(m, "fanout_ingest_intake_records_total{result=\"dlq\"}",
                                 "Intake records acknowledged, by destination");
  in->c_retries = fo_metrics_counter(m, "fanout_ingest_intake_retries_total",
                                     "Intake produces retried after a failure");
  in->g_inflight = fo_metrics_gauge(m, "fanout_ingest_intake_inflight",
                                    "Intake records taken and not yet acknowledged");
  if (in->c_forwarded == NULL || in->c_dlq == NULL || in->c_retries == NULL ||
      in->g_inflight == NULL || fo_metrics_on_collect(m, on_collect, in) != 0) {
    free(in);
    return -ENOMEM;
  }
  SLIST_INIT(&in->retries);
  LIST_INIT(&in->all);
  char fetch_wait[48];
  snprintf(fetch_wait, sizeof(fetch_wait), "fetch.wait.max.ms=%lld",
           (long long)cfg->kafka_fetch_wait_ms);
  char *ours[] = {"auto.offset.reset=earliest", fetch_wait, NULL};
  const char *topics[] = {cfg->topic_intake, NULL};
  fo_kafka_consumer_opts_t opts = {
      .bootstrap = cfg->kafka,
      .client_id = "fanout-ingest-intake",
      .group = cfg->intake_group,
      .session_timeout_ms = cfg->intake_session_timeout_ms,
      .settings = ours,
      .extra = cfg->kafka_options,
      .topics = topics,
      .batch = 256,
      .log_mod = "intake",
  };
  fo_kafka_consumer_cbs_t cbs = {
      .on_message = on_message, .on_assign = on_assign, .on_revoke = on_revoke};
  int rc = fo_kafka_consumer_new(ing->loop, &opts, &cbs, in, err, errlen, &in->kc);
  if (rc != 0) {
    free(in);
    return rc == -ENOMEM ? rc : -EINVAL;
  }
  uv_timer_init(ing->loop, &in->retry_timer);
  in->retry_timer.data = in;
  *out = in;
  return 0;
}

void fo__intake_stop(fo_intake_t *in) {
  if (in == NULL || in->stopping)
    return;
  in->stopping = true;
  set_paused(in, true);
  in->paused = true;
}

size_t fo__intake_inflight(const fo_intake_t *in) {
  return in->inflight;
}

static void on_timer_closed(uv_handle_t *h) {
  (void)h;
}

void fo__intake_close(fo_intake_t *in) {
  if (in == NULL)
    return;
  fo_kafka_consumer_close(in->kc);
  if (!in->timer_closed) {
    in->timer_closed = true;
    uv_close((uv_handle_t *)&in->retry_timer, on_timer_closed);
  }
}

void fo__intake_free(fo_intake_t *in) {
  if (in == NULL)
    return;
  fo__intake_close(in);
  /* Blocking, but the loop is over: leaves the group, commits stored offsets. */
  fo_kafka_consumer_free(in->kc);
  in->kc = NULL;
  /* Records never acknowledged (never committed either): freed here. */
  rec_t *rec;
  while ((rec = LIST_FIRST(&in->all)) != NULL) {
    tracker_t *tr = rec->tr;
    rec_free(rec);
    tracker_unref(tr);
  }
  for (int i = 0; i < in->ntrackers; i++) {
    tracker_t *tr = in->trackers[i];
    if (tr != NULL) {
      tr->attached = false;
      in->trackers[i] = NULL;
      tracker_unref(tr);
    }
  }
  free(in->trackers);
  free(in);
}

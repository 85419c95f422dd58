/* fo_kafka_consumer (kafka_consumer.h). The rebalance is taken as an event
 * (RD_KAFKA_EVENT_REBALANCE), so the assign/unassign calls happen on the
 * loop, next to the owner's state. */
#include "kafka_consumer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "kafka_uv.h"
#include "log.h"

struct fo_kafka_consumer {
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;
  fo_kafka_uv_t *kuv;
  fo_kafka_consumer_cbs_t cbs;
  void *ud;
  const char *mod;
  rd_kafka_topic_partition_list_t *revoking; /* a deferred revoke, owned */
  bool revoking_incremental;
  bool close_started, close_failed;
  char first_topic[256]; /* for the assignment log lines */
  fo_log_ratelimit_t rl;
};

static void report_error(fo_kafka_consumer_t *kc, rd_kafka_resp_err_t err) {
  if (kc->cbs.on_error != NULL)
    kc->cbs.on_error(kc->ud, err);
}

static bool cooperative(const fo_kafka_consumer_t *kc) {
  return strcmp(rd_kafka_rebalance_protocol(kc->rk), "COOPERATIVE") == 0;
}

static void give_up(fo_kafka_consumer_t *kc, const rd_kafka_topic_partition_list_t *parts,
                    bool incremental) {
  if (incremental) {
    rd_kafka_error_t *e = rd_kafka_incremental_unassign(kc->rk, parts);
    if (e != NULL) {
      FO_LOG_WARN(kc->mod, "incremental unassign failed", "err=\"%s\"", rd_kafka_error_string(e));
      rd_kafka_error_destroy(e);
    }
  } else {
    rd_kafka_assign(kc->rk, NULL);
  }
}

void fo_kafka_consumer_revoke_done(fo_kafka_consumer_t *kc) {
  if (kc->revoking == NULL)
    return;
  rd_kafka_topic_partition_list_t *parts = kc->revoking;
  kc->revoking = NULL;
  give_up(kc, parts, kc->revoking_incremental);
  rd_kafka_topic_partition_list_destroy(parts);
}

static void on_rebalance(fo_kafka_consumer_t *kc, rd_kafka_event_t *ev) {
  rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_event_topic_partition_list(ev);
  bool incremental = cooperative(kc);
  int count = parts != NULL ? parts->cnt : 0;
  /* A new rebalance ends any deferred one: librdkafka expects the calls in
   * order. */
  fo_kafka_consumer_revoke_done(kc);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    FO_LOG_INFO(kc->mod, "partitions assigned", "topic=%s count=%d", kc->first_topic, count);
    if (incremental) {
      rd_kafka_error_t *e = rd_kafka_incremental_assign(kc->rk, parts);
      if (e != NULL) {
        FO_LOG_WARN(kc->mod, "incremental assign failed", "err=\"%s\"", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
      }
    } else {
      rd_kafka_assign(kc->rk, parts);
    }
    if (kc->cbs.on_assign != NULL)
      kc->cbs.on_assign(kc->ud, parts);
    return;
  }
  FO_LOG_INFO(kc->mod, "partitions revoked", "topic=%s count=%d", kc->first_topic, count);
  rd_kafka_topic_partition_list_t empty = {0};
  const rd_kafka_topic_partition_list_t *list = parts != NULL ? parts : &empty;
  if (kc->cbs.on_revoke == NULL || kc->cbs.on_revoke(kc->ud, list, incremental)) {
    give_up(kc, parts, incremental);
    return;
  }
  kc->revoking = rd_kafka_topic_partition_list_copy(list);
  kc->revoking_incremental = incremental;
  if (kc->revoking == NULL)
    give_up(kc, parts, incremental); /* out of memory: cannot wait */
}

static void on_event(rd_kafka_event_t *ev, void *ud) {
  fo_kafka_consumer_t *kc = ud;
  switch (rd_kafka_event_type(ev)) {
  case RD_KAFKA_EVENT_FETCH: {
    const rd_kafka_message_t *msg;
    while ((msg = rd_kafka_event_message_next(ev)) != NULL) {
      if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        kc->cbs.on_message(kc->ud, msg);
      } else if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        report_error(kc, msg->err);
        uint64_t suppressed;
        if (fo_log_ratelimit(&kc->rl, fo_now_ms(), 1000, &suppressed))
          FO_LOG_WARN(kc->mod, "consume error", "err=\"%s\" suppressed=%llu",
                      rd_kafka_message_errstr(msg), (unsigned long long)suppressed);
      }
    }
    break;
  }
  case RD_KAFKA_EVENT_REBALANCE:
    on_rebalance(kc, ev);
    break;
  case RD_KAFKA_EVENT_ERROR:
    report_error(kc, rd_kafka_event_error(ev));
    FO_LOG_WARN(kc->mod, "consumer error", "err=\"%s\" fatal=%d", rd_kafka_event_error_string(ev),
                rd_kafka_event_error_is_fatal(ev));
    break;
  case RD_KAFKA_EVENT_OFFSET_COMMIT:
    /* No offset: nothing was stored since the last commit, not a fault. */
    if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      report_error(kc, rd_kafka_event_error(ev));
      FO_LOG_DEBUG(kc->mod, "commit failed", "err=\"%s\"", rd_kafka_event_error_string(ev));
    }
    break;
  default:
    break;
  }
}

/* ours + the operator's items, NULL-terminated; the items are freed with
 * fo_cfg_list_free(extra_items) and the array with free(). */
static char **settings_list(const fo_kafka_consumer_opts_t *o, char *group, char *session,
                            char *heartbeat, char ***extra_items) {
  int nextra = 0;
  *extra_items = NULL;
  if (o->extra != NULL && o->extra[0] != '\0') {
    nextra = fo_cfg_list_split(o->extra, extra_items);
    if (nextra < 0)
      return NULL;
  }
  size_t nours = 0;
  for (char *const *s = o->settings; s != NULL && *s != NULL; s++)
    nours++;
  char **all = calloc(3 + nours + (size_t)nextra + 1, sizeof(char *));
  if (all == NULL) {
    fo_cfg_list_free(*extra_items);
    *extra_items = NULL;
    return NULL;
  }
  size_t n = 0;
  all[n++] = group;
  all[n++] = session;
  all[n++] = heartbeat;
  for (size_t i = 0; i < nours; i++)
    all[n++] = o->settings[i];
  for (int i = 0; i < nextra; i++)
    all[n++] = (*extra_items)[i];
  return all;
}

/* How often the loop polls the queue when nothing arrives: a quarter of
 * max.poll.interval.ms, so a quiet topic never takes the consumer out of
 * its group (the loop is alive, which is what that interval checks). */
static uint64_t keepalive_period(const rd_kafka_conf_t *conf) {
  char v[32];
  size_t n = sizeof(v);
  long long ms = 300000; /* librdkafka's default */
  if (rd_kafka_conf_get(conf, "max.poll.interval.ms", v, &n) == RD_KAFKA_CONF_OK)
    ms = strtoll(v, NULL, 10);
  return ms >= 4 ? (uint64_t)ms / 4 : 1;
}

int fo_kafka_consumer_new(uv_loop_t *loop, const fo_kafka_consumer_opts_t *opts,
                          const fo_kafka_consumer_cbs_t *cbs, void *ud, char *err, size_t errlen,
                          fo_kafka_consumer_t **out) {
  fo_kafka_consumer_t *kc = calloc(1, sizeof(*kc));
  if (kc == NULL) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  kc->cbs = *cbs;
  kc->ud = ud;
  kc->mod = opts->log_mod != NULL ? opts->log_mod : "kafka";
  if (opts->topics != NULL && opts->topics[0] != NULL)
    snprintf(kc->first_topic, sizeof(kc->first_topic), "%s", opts->topics[0]);
  char group[512], session[64], heartbeat[64];
  int64_t hb = opts->session_timeout_ms / 6 > 100 ? opts->session_timeout_ms / 6 : 100;
  snprintf(group, sizeof(group), "group.id=%s", opts->group);
  snprintf(session, sizeof(session), "session.timeout.ms=%" PRId64, opts->session_timeout_ms);
  snprintf(heartbeat, sizeof(heartbeat), "heartbeat.interval.ms=%" PRId64, hb);
  char **extra_items = NULL;
  char **all = settings_list(opts, group, session, heartbeat, &extra_items);
  if (all == NULL) {
    free(kc);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_CONSUMER, opts->bootstrap, opts->client_id, all, err, errlen);
  free(all);
  fo_cfg_list_free(extra_items);
  if (conf == NULL) {
    free(kc);
    return -EINVAL;
  }
  rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_FETCH | RD_KAFKA_EVENT_REBALANCE |
                                     RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_OFFSET_COMMIT);
  uint64_t keepalive_ms = keepalive_period(conf);
  kc->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
  if (kc->rk == NULL) {
    rd_kafka_conf_destroy(conf);
    free(kc);
    return -EINVAL;
  }
  rd_kafka_poll_set_consumer(kc->rk);
  kc->q = rd_kafka_queue_get_consumer(kc->rk);
  int rc = -EINVAL;
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(2);
  if (topics == NULL) {
    rc = -ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail_destroy;
  }
  for (const char *const *t = opts->topics; t != NULL && *t != NULL; t++)
    rd_kafka_topic_partition_list_add(topics, *t, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t kerr = rd_kafka_subscribe(kc->rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
    snprintf(err, errlen, "subscribe %s: %s",
             opts->topics != NULL && opts->topics[0] != NULL ? opts->topics[0] : "(none)",
             rd_kafka_err2str(kerr));
    goto fail_destroy;
  }
  rc = fo_kafka_uv_start(loop, kc->q, opts->batch > 0 ? opts->batch : 256, on_event, kc, &kc->kuv);
  if (rc != 0) {
    snprintf(err, errlen, "kafka_uv: %s", fo_strerror(rc));
    goto fail_destroy;
  }
  fo_kafka_uv_keepalive(kc->kuv, keepalive_ms);
  *out = kc;
  return 0;
fail_destroy:
  rd_kafka_queue_destroy(kc->q);
  rd_kafka_destroy(kc->rk);
  free(kc);
  return rc;
}

void fo_kafka_consumer_pause(fo_kafka_consumer_t *kc, bool pause) {
  rd_kafka_topic_partition_list_t *parts = NULL;
  if (rd_kafka_assignment(kc->rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR && parts != NULL) {
    if (pause)
      rd_kafka_pause_partitions(kc->rk, parts);
    else
      rd_kafka_resume_partitions(kc->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
  }
  if (!pause && kc->kuv != NULL)
    fo_kafka_uv_kick(kc->kuv);
}

int fo_kafka_consumer_close_start(fo_kafka_consumer_t *kc) {
  if (kc->close_started)
    return kc->close_failed ? -EIO : 0;
  kc->close_started = true;
  /* The events of the close (revoke, commit) arrive on the consumer queue,
   * which the loop keeps serving. */
  rd_kafka_error_t *e = rd_kafka_consumer_close_queue(kc->rk, kc->q);
  if (e != NULL) {
    FO_LOG_WARN(kc->mod, "close failed", "err=\"%s\"", rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    kc->close_failed = true;
    return -EIO;
  }
  if (kc->kuv != NULL)
    fo_kafka_uv_kick(kc->kuv);
  return 0;
}

bool fo_kafka_consumer_closed(fo_kafka_consumer_t *kc) {
  return kc->close_failed || (kc->close_started && rd_kafka_consumer_closed(kc->rk));
}

rd_kafka_resp_err_t fo_kafka_consumer_store(fo_kafka_consumer_t *kc, const char *topic,
                                            int32_t partition, int64_t next_offset) {
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  if (list == NULL)
    return RD_KAFKA_RESP_ERR__FAIL; /* out of memory: nothing stored, the record is read again */
  rd_kafka_topic_partition_list_add(list, topic, partition)->offset = next_offset;
  rd_kafka_resp_err_t err = rd_kafka_offsets_store(kc->rk, list);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
    err = list->elems[0].err;
  rd_kafka_topic_partition_list_destroy(list);
  return err;
}

rd_kafka_t *fo_kafka_consumer_rk(fo_kafka_consumer_t *kc) {
  return kc->rk;
}

void fo_kafka_consumer_close(fo_kafka_consumer_t *kc) {
  if (kc == NULL || kc->kuv == NULL)
    return;
  fo_kafka_uv_close(kc->kuv);
  kc->kuv = NULL;
}

void fo_kafka_consumer_free(fo_kafka_consumer_t *kc) {
  if (kc == NULL)
    return;
  fo_kafka_consumer_close(kc);
  fo_kafka_consumer_revoke_done(kc);
  if (!kc->close_started) {
    uint64_t t0 = fo_now_ms();
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(kc->rk);
    FO_LOG_INFO(kc->mod, "consumer closed", "err=\"%s\" ms=%llu", rd_kafka_err2str(err),
                (unsigned long long)(fo_now_ms() - t0));
  } /* else rd_kafka_destroy finishes a close that did not end in time */
  rd_kafka_queue_destroy(kc->q);
  rd_kafka_destroy(kc->rk);
  free(kc);
}

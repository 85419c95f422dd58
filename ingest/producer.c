/* The Kafka producer of fanout-ingest: idempotent, acks=all, batching from
 * the configuration. Records for fanout.users / fanout.rooms are placed by
 * a partitioner callback running fo_partition_of_key() on the partition count
 * librdkafka learnt from metadata, so the loop never waits for metadata.
 * Every accepted record ends in exactly one fo_prod_req_t.done call, driven
 * by the delivery-report events on the librdkafka main queue (kafka_uv). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ingest_int.h"
#include "kafka_uv.h"
#include "log.h"
#include "partition.h"

struct fo_producer {
  fo_ingest_t *ing;
  rd_kafka_t *rk;
  rd_kafka_queue_t *q; /* main queue: DR, ERROR, STATS events */
  fo_kafka_uv_t *kuv;  /* NULL once closed */
  rd_kafka_topic_t *rkt[FO_TOPIC_COUNT];
  bool ready;
  bool fatal;
  fo_log_ratelimit_t rl;
  uint64_t *c_acked, *c_failed, *c_refused;
  int64_t *g_ready, *g_outq;
};

static int32_t partition_by_hash(const rd_kafka_topic_t *rkt, const void *key, size_t keylen,
                                 int32_t partition_cnt, void *rkt_opaque, void *msg_opaque) {
  (void)rkt;
  (void)rkt_opaque;
  (void)msg_opaque;
  if (partition_cnt <= 0)
    return RD_KAFKA_PARTITION_UA;
  return fo_partition_of_key(key != NULL ? key : "", key != NULL ? keylen : 0, partition_cnt);
}

/* Statistics tell whether any real broker (nodeid >= 0) is UP. */
static void on_stats(fo_producer_t *prod, const char *json) {
  json_error_t jerr;
  json_t *root = json_loads(json, 0, &jerr);
  if (root == NULL)
    return;
  bool up = false;
  json_t *brokers = json_object_get(root, "brokers");
  const char *name;
  json_t *b;
  json_object_foreach(brokers, name, b) {
    json_t *nodeid = json_object_get(b, "nodeid");
    const char *state = json_string_value(json_object_get(b, "state"));
    if (json_integer_value(nodeid) >= 0 && state != NULL && strcmp(state, "UP") == 0)
      up = true;
  }
  json_decref(root);
  if (up != prod->ready && !prod->fatal) {
    FO_LOG_INFO("kafka", up ? "producer connected" : "producer has no broker", "ready=%d",
                up ? 1 : 0);
    prod->ready = up;
  }
}

static void on_event(rd_kafka_event_t *ev, void *ud) {
  fo_producer_t *prod = ud;
  switch (rd_kafka_event_type(ev)) {
  case RD_KAFKA_EVENT_DR: {
    const rd_kafka_message_t *msg;
    while ((msg = rd_kafka_event_message_next(ev)) != NULL) {
      fo_prod_req_t *preq = msg->_private;
      if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        (*prod->c_acked)++;
        if (!prod->ready && !prod->fatal)
          prod->ready = true;
      } else {
        (*prod->c_failed)++;
        uint64_t suppressed;
        if (fo_log_ratelimit(&prod->rl, fo_now_ms(), 1000, &suppressed))
          FO_LOG_WARN("kafka", "delivery failed", "topic=%s err=\"%s\" suppressed=%llu",
                      msg->rkt != NULL ? rd_kafka_topic_name(msg->rkt) : "?",
                      rd_kafka_err2str(msg->err), (unsigned long long)suppressed);
      }
      if (preq != NULL)
        preq->done(preq, msg->err, msg->partition, msg->offset);
    }
    break;
  }
  case RD_KAFKA_EVENT_ERROR: {
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    if (rd_kafka_event_error_is_fatal(ev)) {
      char why[512];
      rd_kafka_fatal_error(prod->rk, why, sizeof(why));
      FO_LOG_ERROR("kafka", "fatal producer error", "err=\"%s\"", why);
      prod->fatal = true;
      prod->ready = false;
    } else {
      /* librdkafka logs the details itself (common/kafka_uv.c routes them). */
      if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        prod->ready = false;
        FO_LOG_WARN("kafka", "producer has no broker", "err=\"%s\"",
                    rd_kafka_event_error_string(ev));
      } else {
        FO_LOG_DEBUG("kafka", "producer error", "err=\"%s\"", rd_kafka_event_error_string(ev));
      }
    }
    break;
  }
  case RD_KAFKA_EVENT_STATS:
    on_stats(prod, rd_kafka_event_stats(ev));
    break;
  default:
    break;
  }
}

static void on_collect(void *ud) {
  fo_producer_t *prod = ud;
  *prod->g_ready = prod->ready ? 1 : 0;
  *prod->g_outq = prod->rk != NULL ? rd_kafka_outq_len(prod->rk) : 0;
}

/* The settings fanout-ingest imposes, then --kafka-opts (which win). */
static char **build_overrides(const fo_ingest_cfg_t *cfg) {
  char **extra = NULL;
  int nextra = 0;
  if (cfg->kafka_options != NULL && cfg->kafka_options[0] != '\0') {
    nextra = fo_cfg_list_split(cfg->kafka_options, &extra);
    if (nextra < 0)
      return NULL;
  }
  int64_t mto =
      cfg->produce_timeout_ms > 2000 ? cfg->produce_timeout_ms - 1000 : cfg->produce_timeout_ms / 2;
  int64_t max_msg = cfg->max_body_bytes + 65536;
  if (cfg->intake_max_bytes + 65536 > max_msg)
    max_msg = cfg->intake_max_bytes + 65536;
  if (max_msg < 1000000)
    max_msg = 1000000;
  char buf[16][96];
  int n = 0;
  snprintf(buf[n++], sizeof(buf[0]), "enable.idempotence=true");
  snprintf(buf[n++], sizeof(buf[0]), "acks=all");
  snprintf(buf[n++], sizeof(buf[0]), "linger.ms=%" PRId64, cfg->linger_ms);
  snprintf(buf[n++], sizeof(buf[0]), "batch.num.messages=%" PRId64, cfg->batch_num_messages);
  snprintf(buf[n++], sizeof(buf[0]), "batch.size=%" PRId64, cfg->batch_size_bytes);
  snprintf(buf[n++], sizeof(buf[0]), "queue.buffering.max.messages=%" PRId64,
           cfg->queue_max_messages);
  snprintf(buf[n++], sizeof(buf[0]), "queue.buffering.max.kbytes=%" PRId64, cfg->queue_max_kbytes);
  snprintf(buf[n++], sizeof(buf[0]), "message.timeout.ms=%" PRId64, mto);
  snprintf(buf[n++], sizeof(buf[0]), "message.max.bytes=%" PRId64, max_msg);
  snprintf(buf[n++], sizeof(buf[0]), "statistics.interval.ms=%" PRId64, cfg->stats_interval_ms);
  snprintf(buf[n++], sizeof(buf[0]), "topic.metadata.refresh.interval.ms=%" PRId64,
           cfg->metadata_refresh_ms);
  char **out = calloc((size_t)(n + nextra + 1), sizeof(char *));
  if (out == NULL) {
    fo_cfg_list_free(extra);
    return NULL;
  }
  for (int i = 0; i < n; i++)
    out[i] = strdup(buf[i]);
  for (int i = 0; i < nextra; i++) {
    out[n + i] = extra[i];
    extra[i] = NULL;
  }
  free(extra);
  for (int i = 0; i < n + nextra; i++) {
    if (out[i] == NULL) {
      fo_cfg_list_free(out);
      return NULL;
    }
  }
  return out;
}

int fo__producer_new(fo_ingest_t *ing, fo_producer_t **out, char *err, size_t errlen) {
  const fo_ingest_cfg_t *cfg = ing->cfg;
  fo_producer_t *prod = calloc(1, sizeof(*prod));
  if (prod == NULL)
    return -ENOMEM;
  prod->ing = ing;
  fo_metrics_t *m = ing->metrics;
  prod->c_acked = fo_metrics_counter(m, "fanout_ingest_kafka_records_total{result=\"acked\"}",
                                     "Records produced, by delivery result");
  prod->c_failed = fo_metrics_counter(m, "fanout_ingest_kafka_records_total{result=\"failed\"}",
                                      "Records produced, by delivery result");
  prod->c_refused = fo_metrics_counter(m, "fanout_ingest_kafka_records_total{result=\"refused\"}",
                                       "Records produced, by delivery result");
  prod->g_ready = fo_metrics_gauge(m, "fanout_ingest_kafka_ready", "1 when a broker is up");
  prod->g_outq = fo_metrics_gauge(m, "fanout_ingest_kafka_outq",
                                  "Records queued in the producer or awaiting acknowledgement");
  if (prod->c_acked == NULL || prod->c_failed == NULL || prod->c_refused == NULL ||
      prod->g_ready == NULL || prod->g_outq == NULL ||
      fo_metrics_on_collect(m, on_collect, prod) != 0) {
    free(prod);
    return -ENOMEM;
  }
  char **overrides = build_overrides(cfg);
  if (overrides == NULL) {
    free(prod);
    return -ENOMEM;
  }
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, cfg->kafka, "fanout-ingest", overrides, err, errlen);
  fo_cfg_list_free(overrides);
  if (conf == NULL) {
    free(prod);
    return -EINVAL;
  }
  rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_STATS);
  prod->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
  if (prod->rk == NULL) {
    rd_kafka_conf_destroy(conf);
    free(prod);
    return -EINVAL;
  }
  const char *names[FO_TOPIC_COUNT] = {cfg->topic_users, cfg->topic_rooms, cfg->topic_dlq};
  for (int t = 0; t < FO_TOPIC_COUNT; t++) {
    rd_kafka_topic_conf_t *tconf = rd_kafka_default_topic_conf_dup(prod->rk);
    if (tconf == NULL)
      goto fail_destroy;
    if (t != FO_TOPIC_DLQ)
      rd_kafka_topic_conf_set_partitioner_cb(tconf, partition_by_hash);
    prod->rkt[t] = rd_kafka_topic_new(prod->rk, names[t], tconf); /* takes tconf */
    if (prod->rkt[t] == NULL) {
      snprintf(err, errlen, "topic %s: %s", names[t], rd_kafka_err2str(rd_kafka_last_error()));
      goto fail_destroy;
    }
  }
  prod->q = rd_kafka_queue_get_main(prod->rk);
  int rc = fo_kafka_uv_start(ing->loop, prod->q, 64, on_event, prod, &prod->kuv);
  if (rc != 0) {
    snprintf(err, errlen, "kafka_uv: %s", fo_strerror(rc));
    goto fail_destroy;
  }
  *out = prod;
  return 0;
fail_destroy:
  if (prod->q != NULL)
    rd_kafka_queue_destroy(prod->q);
  for (int t = 0; t < FO_TOPIC_COUNT; t++) {
    if (prod->rkt[t] != NULL)
      rd_kafka_topic_destroy(prod->rkt[t]);
  }
  rd_kafka_destroy(prod->rk);
  free(prod);
  return -EINVAL;
}

rd_kafka_resp_err_t fo__producer_send(fo_producer_t *prod, fo_topic_t topic, const void *key,
                                      size_t keylen, const void *val, size_t vallen,
                                      rd_kafka_headers_t *hdrs, fo_prod_req_t *preq) {
  rd_kafka_resp_err_t err;
  if (prod->fatal) {
    err = RD_KAFKA_RESP_ERR__FATAL;
  } else if (hdrs != NULL) {
    err = rd_kafka_producev(prod->rk, RD_KAFKA_V_RKT(prod->rkt[topic]),
                            RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, keylen),
                            RD_KAFKA_V_VALUE((void *)val, vallen), RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_OPAQUE(preq), RD_KAFKA_V_END);
  } else {
    err = rd_kafka_producev(
        prod->rk, RD_KAFKA_V_RKT(prod->rkt[topic]), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, keylen),
        RD_KAFKA_V_VALUE((void *)val, vallen), RD_KAFKA_V_OPAQUE(preq), RD_KAFKA_V_END);
  }
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
    (*prod->c_refused)++;
  return err;
}

int fo__producer_outq(const fo_producer_t *prod) {
  return rd_kafka_outq_len(prod->rk);
}

bool fo__producer_ready(const fo_producer_t *prod) {
  return prod->ready && !prod->fatal;
}

bool fo__producer_fatal(const fo_producer_t *prod) {
  return prod->fatal;
}

void fo__producer_close(fo_producer_t *prod) {
  if (prod == NULL || prod->kuv == NULL)
    return;
  fo_kafka_uv_close(prod->kuv);
  prod->kuv = NULL;
}

void fo__producer_free(fo_producer_t *prod) {
  if (prod == NULL)
    return;
  fo__producer_close(prod);
  /* The loop has stopped: whatever is left is purged, and its done
   * callbacks run here so that no caller state leaks. */
  rd_kafka_purge(prod->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  for (int i = 0; i < 100 && rd_kafka_outq_len(prod->rk) > 0; i++) {
    rd_kafka_event_t *ev = rd_kafka_queue_poll(prod->q, 50);
    if (ev != NULL) {
      on_event(ev, prod);
      rd_kafka_event_destroy(ev);
    }
  }
  rd_kafka_event_t *ev;
  while ((ev = rd_kafka_queue_poll(prod->q, 0)) != NULL) {
    on_event(ev, prod);
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(prod->q);
  for (int t = 0; t < FO_TOPIC_COUNT; t++)
    rd_kafka_topic_destroy(prod->rkt[t]);
  rd_kafka_destroy(prod->rk);
  free(prod);
}

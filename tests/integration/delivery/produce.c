/* fanout-test-produce: a small producer for the delivery tests. Reads lines
 *   TOPIC KIND TARGET CONTENT-TYPE HEX-PAYLOAD
 * from stdin (KIND: send | broadcast | raw; raw writes the hex bytes as the
 * record value, to test undecodable records), produces each as an envelope
 * keyed by TARGET to partition fo_partition_of_key(TARGET, P), waits for
 * every acknowledgement and prints "produced=N" (exit 0) or an error (1). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "buf.h"
#include "envelope.h"
#include "digits.h"
#include "id.h"
#include "kafka_uv.h"
#include "log.h"
#include "partition.h"

static int failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *ud) {
  (void)rk, (void)ud;
  if (m->err) {
    fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(m->err));
    failed++;
  }
}

static int partitions_of(rd_kafka_t *rk, const char *topic) {
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  const struct rd_kafka_metadata *md = NULL;
  int n = -1;
  for (int i = 0; i < 50 && n <= 0; i++) {
    if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (md->topic_cnt == 1 && md->topics[0].err == 0)
        n = md->topics[0].partition_cnt;
      rd_kafka_metadata_destroy(md);
    }
  }
  rd_kafka_topic_destroy(rkt);
  return n;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fanout-test-produce BOOTSTRAP < lines\n");
    return 2;
  }
  char err[512];
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, argv[1], "fanout-test-produce", NULL, err, sizeof(err));
  if (conf == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  fo_id_gen_t gen = {0};
  char *line = NULL;
  size_t linecap = 0;
  int produced = 0;
  char cached_topic[256] = "";
  int cached_parts = 0;
  while (getline(&line, &linecap, stdin) > 0) {
    char topic[256], kind[32], target[1024], ct[256];
    char *hex = calloc(1, strlen(line) + 1); /* as long as the line: %s cannot overflow */
    int f = sscanf(line, "%255s %31s %1023s %255s %s", topic, kind, target, ct, hex);
    if (f < 4) {
      free(hex);
      continue;
    }
    size_t hl = strlen(hex);
    uint8_t *payload = malloc(hl / 2 + 1);
    size_t pl = 0;
    for (size_t i = 0; i + 1 < hl; i += 2)
      payload[pl++] = (uint8_t)(fo_hex_value(hex[i]) * 16 + fo_hex_value(hex[i + 1]));
    if (strcmp(cached_topic, topic) != 0) {
      cached_parts = partitions_of(rk, topic);
      snprintf(cached_topic, sizeof(cached_topic), "%s", topic);
    }
    if (cached_parts <= 0) {
      fprintf(stderr, "no metadata for %s\n", topic);
      return 1;
    }
    int32_t part = fo_partition_of_key(target, strlen(target), cached_parts);
    fo_sb_t sb;
    fo_sb_init(&sb);
    if (strcmp(kind, "raw") == 0) {
      fo_sb_append(&sb, payload, pl);
    } else {
      fo_env_t env;
      memset(&env, 0, sizeof(env));
      env.version = FO_ENV_VERSION;
      fo_id_next(&gen, fo_now_ms(), env.id);
      env.kind = strcmp(kind, "send") == 0 ? FO_ENV_SEND : FO_ENV_BROADCAST;
      env.target = target;
      env.target_len = strlen(target);
      env.payload = payload;
      env.payload_len = pl;
      env.content_type = ct;
      env.content_type_len = strlen(ct);
      env.created_ms = (int64_t)fo_now_ms();
      if (fo_env_encode(&env, &sb) != 0) {
        fprintf(stderr, "encode failed\n");
        return 1;
      }
    }
    rd_kafka_resp_err_t e;
    do {
      e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(part),
                            RD_KAFKA_V_KEY(target, strlen(target)),
                            RD_KAFKA_V_VALUE(sb.data, sb.len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 10);
    } while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
    if (e != 0) {
      fprintf(stderr, "produce: %s\n", rd_kafka_err2str(e));
      return 1;
    }
    fo_sb_free(&sb);
    free(payload);
    free(hex);
    produced++;
  }
  free(line);
  rd_kafka_flush(rk, 30000);
  rd_kafka_destroy(rk);
  if (failed) {
    fprintf(stderr, "%d failed\n", failed);
    return 1;
  }
  printf("produced=%d\n", produced);
  return 0;
}

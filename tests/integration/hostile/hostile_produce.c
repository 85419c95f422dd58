/* fanout-hostile-produce: writes records with any value, as a misbehaving
 * backend could, straight to a topic and partition:
 *   fanout-hostile-produce BOOTSTRAP TOPIC PARTITION [KEY] < lines
 * Each stdin line is one record value in hex; "NULL" sends a record with no
 * value (a tombstone) and an empty line an empty value. Waits for every
 * acknowledgement; prints "produced=N" and exits 0, or prints the error
 * and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "digits.h"

static int failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *ud) {
  (void)rk, (void)ud;
  if (m->err) {
    fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(m->err));
    failed++;
  }
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: fanout-hostile-produce BOOTSTRAP TOPIC PARTITION [KEY] < hex lines\n");
    return 2;
  }
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) != 0 ||
      rd_kafka_conf_set(conf, "message.max.bytes", "16000000", err, sizeof(err)) != 0 ||
      rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int32_t partition = (int32_t)strtol(argv[3], NULL, 10);
  const char *key = argc == 5 ? argv[4] : NULL;
  size_t cap = 1 << 16;
  char *line = malloc(cap);
  uint8_t *val = malloc(cap);
  size_t len = 0;
  int produced = 0;
  int c;
  for (;;) {
    c = getchar();
    if (c != '\n' && c != EOF) {
      if (len + 1 >= cap) {
        cap *= 2;
        line = realloc(line, cap);
        val = realloc(val, cap);
        if (line == NULL || val == NULL)
          return 1;
      }
      line[len++] = (char)c;
      continue;
    }
    if (c == EOF && len == 0)
      break;
    line[len] = '\0';
    void *payload = val;
    size_t n = 0;
    if (strcmp(line, "NULL") == 0) {
      payload = NULL;
    } else {
      for (size_t i = 0; i + 1 < len; i += 2) {
        int hi = fo_hex_value(line[i]), lo = fo_hex_value(line[i + 1]);
        if (hi < 0 || lo < 0) {
          fprintf(stderr, "bad hex on line %d\n", produced + 1);
          return 1;
        }
        val[n++] = (uint8_t)(hi << 4 | lo);
      }
    }
    rd_kafka_resp_err_t e =
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(argv[2]), RD_KAFKA_V_PARTITION(partition),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE(payload, n),
                          RD_KAFKA_V_KEY(key, key ? strlen(key) : 0), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      fprintf(stderr, "produce: %s\n", rd_kafka_err2str(e));
      return 1;
    }
    produced++;
    len = 0;
    if (c == EOF)
      break;
  }
  rd_kafka_flush(rk, 30000);
  if (rd_kafka_outq_len(rk) > 0 || failed) {
    fprintf(stderr, "not acknowledged: %d, failed: %d\n", rd_kafka_outq_len(rk), failed);
    return 1;
  }
  rd_kafka_destroy(rk);
  free(line);
  free(val);
  printf("produced=%d\n", produced);
  return 0;
}

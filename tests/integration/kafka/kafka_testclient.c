/* fanout-kafka-testclient: a plain librdkafka producer / group consumer that
 * the Kafka integration tests drive as a separate process, against the
 * embedded broker and the real Kafka alike. Every line it prints on stdout is
 * one fact the test reads:
 *
 *   produce: "acked=N failed=M" once every record was acknowledged or failed
 *            (acks=all, idempotent); exit 0 only if M is 0.
 *   consume: "assignment=P,Q,..." after each rebalance (partitions of the
 *            topic this member owns, sorted; empty when it owns none),
 *            "msg p=P o=O k=KEY v=VALUE" for each record, printed before its
 *            offset is committed (synchronously, one record at a time), and
 *            "closed" after a clean leave on SIGTERM/SIGINT or the time cap.
 *
 * usage: fanout-kafka-testclient produce --bootstrap B --topic T --count N
 *            [--prefix S] [-X key=value]...
 *        fanout-kafka-testclient consume --bootstrap B --topic T --group G
 *            [--max-seconds S] [-X key=value]...
 * Consumer defaults: session.timeout.ms=6000, range assignor,
 * auto.offset.reset=earliest, enable.auto.commit=false. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define TC_PROG          "fanout-kafka-testclient"
#define TC_MAX_OVERRIDES 32

typedef struct {
  const char *mode;
  const char *bootstrap;
  const char *topic;
  const char *group;
  const char *prefix;
  long count;
  long max_seconds;
  const char *overrides[TC_MAX_OVERRIDES];
  int noverrides;
} tc_opts_t;

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signum) {
  (void)signum;
  stop_requested = 1;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f) {
  fprintf(f, "usage: " TC_PROG " produce --bootstrap B --topic T --count N [--prefix S] "
             "[-X key=value]...\n"
             "       " TC_PROG " consume --bootstrap B --topic T --group G [--max-seconds S] "
             "[-X key=value]...\n");
}

static int parse_long(const char *name, const char *s, long min, long max, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
    fprintf(stderr, TC_PROG ": %s=%s: must be an integer in [%ld, %ld]\n", name, s, min, max);
    return -1;
  }
  *out = v;
  return 0;
}

/* Returns 0, 1 for --help, or -1 after printing one line naming the problem. */
static int parse_args(int argc, char **argv, tc_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->prefix = "r";
  o->max_seconds = 120;
  if (argc < 2) {
    usage(stderr);
    return -1;
  }
  if (strcmp(argv[1], "--help") == 0)
    return 1;
  o->mode = argv[1];
  if (strcmp(o->mode, "produce") != 0 && strcmp(o->mode, "consume") != 0) {
    fprintf(stderr, TC_PROG ": unknown mode '%s'\n", o->mode);
    return -1;
  }
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0)
      return 1;
    if (i + 1 >= argc) {
      fprintf(stderr, TC_PROG ": option '%s' needs a value (or is unknown)\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (strcmp(a, "--bootstrap") == 0) {
      o->bootstrap = v;
    } else if (strcmp(a, "--topic") == 0) {
      o->topic = v;
    } else if (strcmp(a, "--group") == 0) {
      o->group = v;
    } else if (strcmp(a, "--prefix") == 0) {
      o->prefix = v;
    } else if (strcmp(a, "--count") == 0) {
      if (parse_long("count", v, 0, 10000000, &o->count) != 0)
        return -1;
    } else if (strcmp(a, "--max-seconds") == 0) {
      if (parse_long("max-seconds", v, 1, 3600, &o->max_seconds) != 0)
        return -1;
    } else if (strcmp(a, "-X") == 0) {
      if (o->noverrides == TC_MAX_OVERRIDES || strchr(v, '=') == NULL) {
        fprintf(stderr, TC_PROG ": -X %s: want key=value (at most %d)\n", v, TC_MAX_OVERRIDES);
        return -1;
      }
      o->overrides[o->noverrides++] = v;
    } else {
      fprintf(stderr, TC_PROG ": unknown option '%s'\n", a);
      return -1;
    }
  }
  if (o->bootstrap == NULL || o->topic == NULL) {
    fprintf(stderr, TC_PROG ": --bootstrap and --topic are required\n");
    return -1;
  }
  if (strcmp(o->mode, "consume") == 0 && o->group == NULL) {
    fprintf(stderr, TC_PROG ": consume needs --group\n");
    return -1;
  }
  return 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v) {
  char errstr[512];
  if (rd_kafka_conf_set(conf, k, v, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, TC_PROG ": %s=%s: %s\n", k, v, errstr);
    return -1;
  }
  return 0;
}

/* Applies the -X key=value overrides after the defaults. */
static int conf_overrides(rd_kafka_conf_t *conf, const tc_opts_t *o) {
  for (int i = 0; i < o->noverrides; i++) {
    char kv[512];
    snprintf(kv, sizeof(kv), "%s", o->overrides[i]);
    char *eq = strchr(kv, '=');
    if (eq == NULL)
      return -1;
    *eq = '\0';
    if (conf_set(conf, kv, eq + 1) != 0)
      return -1;
  }
  return 0;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  fprintf(stderr, "rdkafka %s level=%d fac=%s %s\n", rd_kafka_name(rk), level, fac, buf);
}

/* ---- produce ------------------------------------------------------------- */

typedef struct {
  long acked;
  long failed;
} tc_dr_t;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  tc_dr_t *dr = opaque;
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    dr->acked++;
  } else {
    dr->failed++;
    fprintf(stderr, TC_PROG ": delivery failed: %s\n", rd_kafka_err2str(m->err));
  }
}

static int run_produce(const tc_opts_t *o) {
  tc_dr_t dr = {0, 0};
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set_opaque(conf, &dr);
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_log_cb(conf, log_cb);
  if (conf_set(conf, "bootstrap.servers", o->bootstrap) != 0 ||
      conf_set(conf, "acks", "all") != 0 || conf_set(conf, "enable.idempotence", "true") != 0 ||
      conf_set(conf, "linger.ms", "5") != 0 || conf_set(conf, "message.timeout.ms", "30000") != 0 ||
      conf_overrides(conf, o) != 0) {
    rd_kafka_conf_destroy(conf);
    return 2;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == NULL) {
    fprintf(stderr, TC_PROG ": rd_kafka_new: %s\n", errstr);
    rd_kafka_conf_destroy(conf);
    return 1;
  }
  for (long i = 0; i < o->count && !stop_requested; i++) {
    char val[128];
    int n = snprintf(val, sizeof(val), "%s-%ld", o->prefix, i);
    rd_kafka_resp_err_t err;
    do {
      err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_KEY(val, (size_t)n),
                              RD_KAFKA_V_VALUE(val, (size_t)n),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(rk, 50);
    } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !stop_requested);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      fprintf(stderr, TC_PROG ": produce: %s\n", rd_kafka_err2str(err));
      dr.failed++;
    }
    rd_kafka_poll(rk, 0);
  }
  /* message.timeout.ms bounds this: every record is acked or failed by then. */
  rd_kafka_flush(rk, 60000);
  long unresolved = o->count - dr.acked - dr.failed;
  printf("acked=%ld failed=%ld\n", dr.acked, dr.failed + unresolved);
  rd_kafka_destroy(rk);
  return dr.failed + unresolved == 0 ? 0 : 1;
}

/* ---- consume ------------------------------------------------------------- */

static void print_assignment(rd_kafka_t *rk, const char *topic) {
  rd_kafka_topic_partition_list_t *cur = NULL;
  if (rd_kafka_assignment(rk, &cur) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    fprintf(stderr, TC_PROG ": rd_kafka_assignment failed\n");
    return;
  }
  rd_kafka_topic_partition_list_sort(cur, NULL, NULL);
  char line[4096];
  size_t len = (size_t)snprintf(line, sizeof(line), "assignment=");
  bool first = true;
  for (int i = 0; i < cur->cnt && len < sizeof(line) - 16; i++) {
    if (strcmp(cur->elems[i].topic, topic) != 0)
      continue;
    len += (size_t)snprintf(line + len, sizeof(line) - len, "%s%" PRId32, first ? "" : ",",
                            cur->elems[i].partition);
    first = false;
  }
  printf("%s\n", line);
  rd_kafka_topic_partition_list_destroy(cur);
}

typedef struct {
  const char *topic;
} tc_consume_t;

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  tc_consume_t *c = opaque;
  bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  rd_kafka_error_t *error = NULL;
  rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (cooperative)
      error = rd_kafka_incremental_assign(rk, parts);
    else
      ret = rd_kafka_assign(rk, parts);
  } else {
    if (cooperative)
      error = rd_kafka_incremental_unassign(rk, parts);
    else
      ret = rd_kafka_assign(rk, NULL);
  }
  if (error != NULL) {
    fprintf(stderr, TC_PROG ": rebalance: %s\n", rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
  } else if (ret != RD_KAFKA_RESP_ERR_NO_ERROR) {
    fprintf(stderr, TC_PROG ": rebalance: %s\n", rd_kafka_err2str(ret));
  }
  print_assignment(rk, c->topic);
}

static int run_consume(const tc_opts_t *o) {
  tc_consume_t c = {o->topic};
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set_opaque(conf, &c);
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_log_cb(conf, log_cb);
  if (conf_set(conf, "bootstrap.servers", o->bootstrap) != 0 ||
      conf_set(conf, "group.id", o->group) != 0 ||
      conf_set(conf, "session.timeout.ms", "6000") != 0 ||
      conf_set(conf, "heartbeat.interval.ms", "500") != 0 ||
      conf_set(conf, "partition.assignment.strategy", "range") != 0 ||
      conf_set(conf, "auto.offset.reset", "earliest") != 0 ||
      conf_set(conf, "enable.auto.commit", "false") != 0 ||
      conf_set(conf, "fetch.wait.max.ms", "10") != 0 ||
      conf_set(conf, "topic.metadata.refresh.interval.ms", "2000") != 0 ||
      conf_overrides(conf, o) != 0) {
    rd_kafka_conf_destroy(conf);
    return 2;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (rk == NULL) {
    fprintf(stderr, TC_PROG ": rd_kafka_new: %s\n", errstr);
    rd_kafka_conf_destroy(conf);
    return 1;
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(sub, o->topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, sub);
  rd_kafka_topic_partition_list_destroy(sub);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    fprintf(stderr, TC_PROG ": subscribe: %s\n", rd_kafka_err2str(err));
    rd_kafka_destroy(rk);
    return 1;
  }
  int64_t deadline = now_ms() + o->max_seconds * 1000;
  while (!stop_requested && now_ms() < deadline) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (m == NULL)
      continue;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        fprintf(stderr, TC_PROG ": consume: %s\n", rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    printf("msg p=%" PRId32 " o=%" PRId64 " k=%.*s v=%.*s\n", m->partition, m->offset,
           (int)m->key_len, m->key != NULL ? (const char *)m->key : "", (int)m->len,
           m->payload != NULL ? (const char *)m->payload : "");
    /* Processed (printed), then committed: at-least-once, like delivery. */
    err = rd_kafka_commit_message(rk, m, 0);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
      fprintf(stderr, TC_PROG ": commit p=%" PRId32 " o=%" PRId64 ": %s\n", m->partition, m->offset,
              rd_kafka_err2str(err));
    rd_kafka_message_destroy(m);
  }
  err = rd_kafka_consumer_close(rk);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
    fprintf(stderr, TC_PROG ": close: %s\n", rd_kafka_err2str(err));
  rd_kafka_destroy(rk);
  printf("closed\n");
  return 0;
}

int main(int argc, char **argv) {
  tc_opts_t o;
  int rc = parse_args(argc, argv, &o);
  if (rc == 1) {
    usage(stdout);
    return 0;
  }
  if (rc != 0)
    return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  return strcmp(o.mode, "produce") == 0 ? run_produce(&o) : run_consume(&o);
}

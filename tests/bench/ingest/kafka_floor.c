/* fanout-bench-kafka-floor: the broker's own produce -> consume latency with
 * the services' client settings (bench_latency.py; a benchmark, not a test).
 *
 * The producer is built like fanout-ingest's (fo_kafka_conf_new(PRODUCER)
 * with ingest's defaults: idempotent, acks=all, linger.ms, batch sizes) and
 * paced from the main thread on an absolute schedule, --rate records a
 * second for --seconds, each keyed --key and carrying its send time. The
 * consumer is a group member with fanout-delivery's users-consumer settings
 * (fo_kafka_consumer_new: the same conf, session and heartbeat, offsets
 * stored per record and auto-committed, --fetch-wait-ms), run either
 *   --consumer uv:     on a libuv loop through kafka_consumer.c and
 *                      kafka_uv.c, the code delivery runs (the default), or
 *   --consumer thread: a bare rd_kafka_consumer_poll() loop, librdkafka
 *                      alone.
 * Latency = the clock read just before rd_kafka_producev() -> the clock read
 * when the record reaches the consumer's callback (one process, one clock).
 * Prints
 *   kafka-floor consumer=C sent=N got=M p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..
 *   kafka-floor acked p50_ms=.. p99_ms=.. (produce -> delivery report)
 * The first --warm-ms of records are left out. Probes are produced first until
 * the consumer has joined its group and sees new records; then a line
 *   pacing-starts rate=.. seconds=..
 * says the paced records begin (bench_latency.py --together waits for it). */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "config.h"
#include "kafka_consumer.h"
#include "kafka_uv.h"

static struct {
  const char *kafka, *topic, *key, *group, *mode, *extra;
  int rate, fetch_wait_ms, linger_ms, session_ms;
  double seconds, warm_ms;
} opt = {NULL, "fanout.users", "floor-lat", NULL, "uv", "", 1000, 500, 1, 10000, 20, 1000};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Written by the consumer thread only; read by main after it joined. */
static double *lat_ms; /* per paced record index, < 0 until seen; owned */
static double *ack_ms; /* per paced record index: produce -> delivery report; owned */
static atomic_long probes_seen, seen;
static atomic_int stop_consumer;
static long n_paced, n_warm;

/* Value: "p" for a probe, else "INDEX:SEND_NS". */
static void on_value(const rd_kafka_message_t *m) {
  uint64_t t = now_ns();
  if (m->key_len != strlen(opt.key) || memcmp(m->key, opt.key, m->key_len) != 0)
    return;
  char v[64];
  size_t n = m->len < sizeof(v) - 1 ? m->len : sizeof(v) - 1;
  memcpy(v, m->payload, n);
  v[n] = '\0';
  if (v[0] == 'p') {
    atomic_fetch_add(&probes_seen, 1);
    return;
  }
  long i;
  uint64_t t0;
  if (sscanf(v, "%ld:%" SCNu64, &i, &t0) != 2 || i < 0 || i >= n_paced)
    return;
  if (lat_ms[i] < 0) {
    lat_ms[i] = (double)(t - t0) / 1e6;
    atomic_fetch_add(&seen, 1);
  }
}

/* ---- consumer: delivery's code path (kafka_consumer.c + kafka_uv.c) ---- */

typedef struct {
  uv_loop_t loop;
  uv_timer_t tick; /* checks stop_consumer */
  fo_kafka_consumer_t *kc;
} uvc_t;

static void uv_on_message(void *ud, const rd_kafka_message_t *m) {
  uvc_t *u = ud;
  on_value(m);
  fo_kafka_consumer_store(u->kc, m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : opt.topic,
                          m->partition, m->offset + 1);
}

static void uv_on_tick(uv_timer_t *t) {
  uvc_t *u = t->data;
  if (atomic_load(&stop_consumer)) {
    fo_kafka_consumer_close(u->kc);
    uv_close((uv_handle_t *)&u->tick, NULL);
  }
}

static char *consumer_settings[8];

static void set_consumer_settings(void) {
  static char fw[48];
  snprintf(fw, sizeof(fw), "fetch.wait.max.ms=%d", opt.fetch_wait_ms);
  /* make_grouped() in delivery/consumer.c, with a fresh group at the end. */
  char *s[] = {"auto.offset.reset=latest",
               "enable.auto.commit=true",
               "enable.auto.offset.store=false",
               "enable.partition.eof=false",
               fw,
               NULL};
  memcpy(consumer_settings, s, sizeof(s));
}

static void *consumer_uv(void *arg) {
  (void)arg;
  uvc_t u = {0};
  uv_loop_init(&u.loop);
  const char *topics[] = {opt.topic, NULL};
  fo_kafka_consumer_opts_t o = {.bootstrap = opt.kafka,
                                .client_id = "fanout-bench-kafka-floor",
                                .group = opt.group,
                                .session_timeout_ms = opt.session_ms,
                                .settings = consumer_settings,
                                .extra = opt.extra,
                                .topics = topics,
                                .batch = 256,
                                .log_mod = "floor"};
  fo_kafka_consumer_cbs_t cbs = {.on_message = uv_on_message};
  char err[256];
  if (fo_kafka_consumer_new(&u.loop, &o, &cbs, &u, err, sizeof(err), &u.kc) != 0) {
    fprintf(stderr, "kafka-floor: consumer: %s\n", err);
    exit(1);
  }
  uv_timer_init(&u.loop, &u.tick);
  u.tick.data = &u;
  uv_timer_start(&u.tick, uv_on_tick, 50, 50);
  uv_run(&u.loop, UV_RUN_DEFAULT);
  fo_kafka_consumer_free(u.kc);
  uv_loop_close(&u.loop);
  return NULL;
}

/* ---- consumer: librdkafka alone ---- */

static void *consumer_thread(void *arg) {
  (void)arg;
  char group[512], session[64], heartbeat[64], err[256];
  int hb = opt.session_ms / 6 > 100 ? opt.session_ms / 6 : 100;
  snprintf(group, sizeof(group), "group.id=%s", opt.group);
  snprintf(session, sizeof(session), "session.timeout.ms=%d", opt.session_ms);
  snprintf(heartbeat, sizeof(heartbeat), "heartbeat.interval.ms=%d", hb);
  char **extra = NULL;
  int nextra = opt.extra[0] != '\0' ? fo_cfg_list_split(opt.extra, &extra) : 0;
  char *all[32];
  int n = 0;
  all[n++] = group;
  all[n++] = session;
  all[n++] = heartbeat;
  for (char **s = consumer_settings; *s != NULL; s++)
    all[n++] = *s;
  for (int i = 0; i < nextra && n < 31; i++)
    all[n++] = extra[i];
  all[n] = NULL;
  rd_kafka_conf_t *conf = fo_kafka_conf_new(FO_KAFKA_CONSUMER, opt.kafka,
                                            "fanout-bench-kafka-floor", all, err, sizeof(err));
  fo_cfg_list_free(extra);
  if (conf == NULL) {
    fprintf(stderr, "kafka-floor: consumer: %s\n", err);
    exit(1);
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "kafka-floor: consumer: %s\n", err);
    exit(1);
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(t, opt.topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(rk, t);
  rd_kafka_topic_partition_list_destroy(t);
  while (!atomic_load(&stop_consumer)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
    if (m == NULL)
      continue;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      on_value(m);
      rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(l, opt.topic, m->partition)->offset = m->offset + 1;
      rd_kafka_offsets_store(rk, l);
      rd_kafka_topic_partition_list_destroy(l);
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return NULL;
}

/* ---- producer: fanout-ingest's settings (ingest/producer.c) ---- */

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  (void)opaque;
  intptr_t i = (intptr_t)m->_private - 1;
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && i >= 0 && i < n_paced) {
    uint64_t t0;
    long idx;
    char v[64];
    size_t n = m->len < sizeof(v) - 1 ? m->len : sizeof(v) - 1;
    memcpy(v, m->payload, n);
    v[n] = '\0';
    if (sscanf(v, "%ld:%" SCNu64, &idx, &t0) == 2)
      ack_ms[i] = (double)(now_ns() - t0) / 1e6;
  }
}

static rd_kafka_t *producer_new(void) {
  char linger[48], err[256];
  snprintf(linger, sizeof(linger), "linger.ms=%d", opt.linger_ms);
  char *ours[] = {"enable.idempotence=true",
                  "acks=all",
                  linger,
                  "batch.num.messages=10000",
                  "batch.size=1000000",
                  "queue.buffering.max.messages=100000",
                  "queue.buffering.max.kbytes=1048576",
                  NULL};
  rd_kafka_conf_t *conf = fo_kafka_conf_new(FO_KAFKA_PRODUCER, opt.kafka,
                                            "fanout-bench-kafka-floor", ours, err, sizeof(err));
  if (conf == NULL) {
    fprintf(stderr, "kafka-floor: producer: %s\n", err);
    exit(1);
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == NULL) {
    fprintf(stderr, "kafka-floor: producer: %s\n", err);
    exit(1);
  }
  return rk;
}

static void produce(rd_kafka_t *rk, const char *v, intptr_t idx) {
  for (;;) {
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(opt.topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(opt.key, strlen(opt.key)), RD_KAFKA_V_VALUE((void *)v, strlen(v)),
        RD_KAFKA_V_OPAQUE((void *)(idx + 1)), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
      return;
    rd_kafka_poll(rk, 10);
  }
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *s, long n, double q) {
  if (n == 0)
    return -1;
  long i = (long)(q * (double)n);
  return s[i < n ? i : n - 1];
}

/* Sorts the values >= 0 among xs[from..to) into a new array; *n their count. */
static double *sorted(const double *xs, long from, long to, long *n) {
  double *s = malloc(sizeof(double) * (size_t)(to - from + 1));
  *n = 0;
  for (long i = from; i < to; i++)
    if (xs[i] >= 0)
      s[(*n)++] = xs[i];
  qsort(s, (size_t)*n, sizeof(double), cmp_d);
  return s;
}

static void usage(void) {
  fprintf(stderr,
          "usage: fanout-bench-kafka-floor --kafka HOST:PORT [--topic fanout.users] [--key K]\n"
          "  [--rate 1000] [--seconds 20] [--warm-ms 1000] [--fetch-wait-ms 500]\n"
          "  [--linger-ms 1] [--session-timeout-ms 10000] [--consumer uv|thread]\n"
          "  [--group G] [--kafka-opts k=v,k=v]\n");
  exit(2);
}

int main(int argc, char **argv) {
  static const struct option lo[] = {{"kafka", 1, 0, 'k'},
                                     {"topic", 1, 0, 't'},
                                     {"key", 1, 0, 'K'},
                                     {"rate", 1, 0, 'r'},
                                     {"seconds", 1, 0, 's'},
                                     {"warm-ms", 1, 0, 'w'},
                                     {"fetch-wait-ms", 1, 0, 'f'},
                                     {"linger-ms", 1, 0, 'l'},
                                     {"session-timeout-ms", 1, 0, 'S'},
                                     {"consumer", 1, 0, 'c'},
                                     {"group", 1, 0, 'g'},
                                     {"kafka-opts", 1, 0, 'o'},
                                     {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (ch) {
    case 'k':
      opt.kafka = optarg;
      break;
    case 't':
      opt.topic = optarg;
      break;
    case 'K':
      opt.key = optarg;
      break;
    case 'r':
      opt.rate = atoi(optarg);
      break;
    case 's':
      opt.seconds = atof(optarg);
      break;
    case 'w':
      opt.warm_ms = atof(optarg);
      break;
    case 'f':
      opt.fetch_wait_ms = atoi(optarg);
      break;
    case 'l':
      opt.linger_ms = atoi(optarg);
      break;
    case 'S':
      opt.session_ms = atoi(optarg);
      break;
    case 'c':
      opt.mode = optarg;
      break;
    case 'g':
      opt.group = optarg;
      break;
    case 'o':
      opt.extra = optarg;
      break;
    default:
      usage();
    }
  }
  bool uvmode = strcmp(opt.mode, "uv") == 0;
  if (opt.kafka == NULL || opt.rate <= 0 || opt.seconds <= 0 ||
      (!uvmode && strcmp(opt.mode, "thread") != 0))
    usage();
  char group[128];
  if (opt.group == NULL) {
    snprintf(group, sizeof(group), "fanout-bench-kafka-floor-%d", (int)getpid());
    opt.group = group;
  }
  n_paced = (long)((double)opt.rate * opt.seconds);
  n_warm = (long)((double)opt.rate * opt.warm_ms / 1000.0);
  lat_ms = malloc(sizeof(double) * (size_t)n_paced);
  ack_ms = malloc(sizeof(double) * (size_t)n_paced);
  for (long i = 0; i < n_paced; i++)
    lat_ms[i] = ack_ms[i] = -1;
  set_consumer_settings();

  rd_kafka_t *prod = producer_new();
  pthread_t th;
  pthread_create(&th, NULL, uvmode ? consumer_uv : consumer_thread, NULL);

  /* Probes until the consumer joined and sees new records. */
  uint64_t deadline = now_ns() + 120ull * 1000000000u;
  while (atomic_load(&probes_seen) == 0) {
    if (now_ns() > deadline) {
      fprintf(stderr, "kafka-floor: the consumer saw no probe in 120 s\n");
      return 1;
    }
    produce(prod, "p", -1);
    for (int i = 0; i < 20 && atomic_load(&probes_seen) == 0; i++)
      rd_kafka_poll(prod, 10);
  }

  /* bench_latency.py --together starts the end-to-end sender on this line. */
  printf("pacing-starts rate=%d seconds=%.0f\n", opt.rate, opt.seconds);
  fflush(stdout);

  /* The paced records, on an absolute schedule. */
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 0; i < n_paced; i++) {
    uint64_t at = (uint64_t)start.tv_sec * 1000000000u + (uint64_t)start.tv_nsec +
                  (uint64_t)((double)i * 1e9 / opt.rate);
    struct timespec ts = {(time_t)(at / 1000000000u), (long)(at % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
    char v[64];
    snprintf(v, sizeof(v), "%ld:%" PRIu64, i, now_ns());
    produce(prod, v, i);
    rd_kafka_poll(prod, 0); /* delivery reports, as ingest's loop serves them */
  }
  /* Up to 10 s for the rest to arrive. */
  deadline = now_ns() + 10ull * 1000000000u;
  while (atomic_load(&seen) < n_paced && now_ns() < deadline)
    rd_kafka_poll(prod, 10);
  rd_kafka_flush(prod, 5000);
  atomic_store(&stop_consumer, 1);
  pthread_join(th, NULL);
  rd_kafka_destroy(prod);

  long n, na;
  double *s = sorted(lat_ms, n_warm, n_paced, &n);
  double *a = sorted(ack_ms, n_warm, n_paced, &na);
  printf("kafka-floor consumer=%s fetch_wait_ms=%d linger_ms=%d sent=%ld got=%ld p50_ms=%.2f "
         "p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
         opt.mode, opt.fetch_wait_ms, opt.linger_ms, n_paced - n_warm, n, pct(s, n, .5),
         pct(s, n, .9), pct(s, n, .99), n > 0 ? s[n - 1] : -1);
  printf("kafka-floor acked p50_ms=%.2f p99_ms=%.2f (produce -> delivery report)\n", pct(a, na, .5),
         pct(a, na, .99));
  free(s);
  free(a);
  free(lat_ms);
  free(ack_ms);
  return n == n_paced - n_warm ? 0 : 3;
}

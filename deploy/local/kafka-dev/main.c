/* fanout-kafka-dev: the embedded Kafka broker for development and tests.
 *
 * A librdkafka mock cluster (rdkafka_mock.h) in its own process: Kafka
 * protocol over TCP on loopback, in memory, no Java. It creates the project's
 * topics, prints "bootstrap=HOST:PORT[,...]" as the first line of stdout once
 * its listeners accept connections, and runs until SIGINT/SIGTERM.
 * SIGUSR1 takes every broker down (connections dropped and refused), SIGUSR2
 * brings them up again, so tests can simulate an outage without losing the
 * ports (a new mock would listen on new random ports, empty).
 *
 * Signals are libuv uv_signal_t handles: the handlers run on the loop thread,
 * never in signal context. Logs go to stderr; stdout carries only the
 * bootstrap line. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <uv.h>

#include "config.h"
#include "log.h"

#define KDEV_PROG     "fanout-kafka-dev"
#define KDEV_NTOPICS  4
#define KDEV_NSIGNALS 4

/* ---- options (common/config.h: defaults, FANOUT_<NAME>, flags) ------------ */

typedef struct {
  int64_t partitions;
  int64_t brokers;
  int64_t replication;
  char *topics[KDEV_NTOPICS]; /* owned; freed by fo_cfg_free */
  char *log_level;            /* owned */
} kdev_opts_t;

static const fo_cfg_field_t opts_table[] = {
    /* name            type        offset                                min max   default */
    {"partitions", FO_CFG_INT, offsetof(kdev_opts_t, partitions), 1, 1000, "4",
     "partitions of each project topic"},
    {"brokers", FO_CFG_INT, offsetof(kdev_opts_t, brokers), 1, 16, "1",
     "mock brokers (each its own loopback port)"},
    {"replication", FO_CFG_INT, offsetof(kdev_opts_t, replication), 0, 16, "0",
     "replication factor of the topics (0 = min(brokers, 3))"},
    {"topic-users", FO_CFG_STR, offsetof(kdev_opts_t, topics[0]), 1, 249, "fanout.users",
     "user topic (partitioned by user-hash range)"},
    {"topic-rooms", FO_CFG_STR, offsetof(kdev_opts_t, topics[1]), 1, 249, "fanout.rooms",
     "room topic (read by every delivery server)"},
    {"topic-intake", FO_CFG_STR, offsetof(kdev_opts_t, topics[2]), 1, 249, "fanout.intake",
     "intake topic (backend services produce here)"},
    {"topic-dlq", FO_CFG_STR, offsetof(kdev_opts_t, topics[3]), 1, 249, "fanout.dlq",
     "dead-letter topic"},
    {"log-level", FO_CFG_STR, offsetof(kdev_opts_t, log_level), 1, 16, "info",
     "debug|info|warn|error"},
};
#define KDEV_NOPTS (sizeof(opts_table) / sizeof(opts_table[0]))

#define LOG_DEBUG(msg, ...) FO_LOG_DEBUG("kafka-dev", msg, __VA_ARGS__)
#define LOG_INFO(msg, ...)  FO_LOG_INFO("kafka-dev", msg, __VA_ARGS__)
#define LOG_WARN(msg, ...)  FO_LOG_WARN("kafka-dev", msg, __VA_ARGS__)
#define LOG_ERROR(msg, ...) FO_LOG_ERROR("kafka-dev", msg, __VA_ARGS__)

/* librdkafka's own log lines (from its threads), in the same format. */
static void kdev_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  fo_log_level_t lvl = level <= 3   ? FO_LOG_LVL_ERROR
                       : level <= 4 ? FO_LOG_LVL_WARN
                       : level <= 6 ? FO_LOG_LVL_INFO
                                    : FO_LOG_LVL_DEBUG;
  if (strcmp(fac, "CONFWARN") == 0)
    lvl = FO_LOG_LVL_DEBUG; /* "no bootstrap.servers": true, and by design */
  FO_LOG_(lvl, "kafka-dev", "rdkafka", "fac=%s detail=\"%s\"", fac, buf);
}

/* Cross-field rules, after every source was applied. */
static int opts_finalize(void *cfg, char *err, size_t errlen) {
  kdev_opts_t *opts = cfg;
  fo_log_level_t lvl;
  if (fo_log_parse_level(opts->log_level, &lvl) != 0) {
    snprintf(err, errlen, "log-level=%s: must be debug, info, warn or error", opts->log_level);
    return -EINVAL;
  }
  fo_log_set_level(lvl);
  if (opts->replication > opts->brokers) {
    snprintf(err, errlen, "replication=%lld: must be <= brokers=%lld", (long long)opts->replication,
             (long long)opts->brokers);
    return -EINVAL;
  }
  if (opts->replication == 0)
    opts->replication = opts->brokers < 3 ? opts->brokers : 3;
  for (int a = 0; a < KDEV_NTOPICS; a++) {
    for (int b = a + 1; b < KDEV_NTOPICS; b++) {
      if (strcmp(opts->topics[a], opts->topics[b]) == 0) {
        snprintf(err, errlen, "topic %s is named twice: the four topics must differ",
                 opts->topics[a]);
        return -EINVAL;
      }
    }
  }
  return 0;
}

/* ---- the broker ----------------------------------------------------------- */

typedef struct {
  uv_loop_t loop;
  uv_signal_t sigs[KDEV_NSIGNALS];
  int nsigs_open;
  rd_kafka_t *rk;
  rd_kafka_mock_cluster_t *mc;
  bool down;
  bool stopping;
} kdev_t;

static const int handled_signals[KDEV_NSIGNALS] = {SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

static void on_sig_closed(uv_handle_t *h) {
  kdev_t *kd = h->data;
  kd->nsigs_open--;
}

static void on_signal(uv_signal_t *h, int signum) {
  kdev_t *kd = h->data;
  if (signum == SIGUSR1 || signum == SIGUSR2) {
    bool down = signum == SIGUSR1;
    if (kd->down == down) {
      LOG_INFO("brokers already in that state", "state=%s", down ? "down" : "up");
      return;
    }
    rd_kafka_resp_err_t err =
        down ? rd_kafka_mock_broker_set_down(kd->mc, -1) : rd_kafka_mock_broker_set_up(kd->mc, -1);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      LOG_ERROR("cannot change broker state", "state=%s err=\"%s\"", down ? "down" : "up",
                rd_kafka_err2str(err));
      return;
    }
    kd->down = down;
    LOG_INFO(down ? "brokers down" : "brokers up", "signal=%s", down ? "SIGUSR1" : "SIGUSR2");
    return;
  }
  if (kd->stopping)
    return;
  kd->stopping = true;
  LOG_INFO("stopping", "signal=%s", signum == SIGINT ? "SIGINT" : "SIGTERM");
  for (int i = 0; i < KDEV_NSIGNALS; i++)
    uv_close((uv_handle_t *)&kd->sigs[i], on_sig_closed);
}

/* Creates the mock cluster and its topics. Returns 0 or -1 (logged). */
static int kdev_start_cluster(kdev_t *kd, const kdev_opts_t *opts) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "client.id", KDEV_PROG, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "log_level", fo_log_min_level == FO_LOG_LVL_DEBUG ? "7" : "6", errstr,
                        sizeof(errstr)) != RD_KAFKA_CONF_OK) {
    LOG_ERROR("rdkafka conf", "err=\"%s\"", errstr);
    rd_kafka_conf_destroy(conf);
    return -1;
  }
  rd_kafka_conf_set_log_cb(conf, kdev_rdkafka_log);
  /* The handle only hosts the mock cluster's thread: it never connects. */
  kd->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (kd->rk == NULL) {
    LOG_ERROR("rd_kafka_new failed", "err=\"%s\"", errstr);
    rd_kafka_conf_destroy(conf);
    return -1;
  }
  kd->mc = rd_kafka_mock_cluster_new(kd->rk, (int)opts->brokers);
  if (kd->mc == NULL) {
    LOG_ERROR("rd_kafka_mock_cluster_new failed", "brokers=%d", (int)opts->brokers);
    goto fail_rk;
  }
  for (int i = 0; i < KDEV_NTOPICS; i++) {
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(
        kd->mc, opts->topics[i], (int)opts->partitions, (int)opts->replication);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      LOG_ERROR("cannot create topic", "topic=%s partitions=%d err=\"%s\"", opts->topics[i],
                (int)opts->partitions, rd_kafka_err2str(err));
      goto fail_mc;
    }
  }
  return 0;

fail_mc:
  rd_kafka_mock_cluster_destroy(kd->mc);
  kd->mc = NULL;
fail_rk:
  rd_kafka_destroy(kd->rk);
  kd->rk = NULL;
  return -1;
}

static void kdev_stop_cluster(kdev_t *kd) {
  rd_kafka_mock_cluster_destroy(kd->mc);
  kd->mc = NULL;
  rd_kafka_destroy(kd->rk);
  kd->rk = NULL;
}

int main(int argc, char **argv) {
  kdev_opts_t opts;
  memset(&opts, 0, sizeof(opts));
  static const char about[] =
      "The embedded Kafka broker for development and tests: a librdkafka mock\n"
      "cluster on random loopback ports, in memory. Prints bootstrap=HOST:PORT[,...]\n"
      "on stdout once it accepts connections; runs until SIGINT/SIGTERM.\n"
      "SIGUSR1 takes all brokers down, SIGUSR2 brings them up again.";
  if (fo_cfg_main(KDEV_PROG, about, opts_table, KDEV_NOPTS, &opts, argc, argv, opts_finalize) ==
      FO_CFG_CHECK_ONLY) {
    fo_cfg_free(opts_table, KDEV_NOPTS, &opts);
    return 0;
  }
  int rc = 1;
  /* A peer that vanishes mid-write must not kill the broker. */
  signal(SIGPIPE, SIG_IGN);

  kdev_t kd;
  memset(&kd, 0, sizeof(kd));
  int uerr = uv_loop_init(&kd.loop);
  if (uerr != 0) {
    LOG_ERROR("uv_loop_init failed", "err=%s", uv_strerror(uerr));
    return 1;
  }
  /* Signals first, so a SIGTERM that arrives while starting is not lost. */
  for (int i = 0; i < KDEV_NSIGNALS; i++) {
    uv_signal_init(&kd.loop, &kd.sigs[i]); /* cannot fail on Linux */
    kd.sigs[i].data = &kd;
    kd.nsigs_open++;
  }
  for (int i = 0; i < KDEV_NSIGNALS; i++) {
    uerr = uv_signal_start(&kd.sigs[i], on_signal, handled_signals[i]);
    if (uerr != 0) {
      LOG_ERROR("uv_signal_start failed", "signal=%d err=%s", handled_signals[i],
                uv_strerror(uerr));
      goto fail_signals;
    }
  }
  if (kdev_start_cluster(&kd, &opts) != 0)
    goto fail_signals;

  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(kd.mc);
  LOG_INFO("ready", "bootstrap=%s brokers=%d partitions=%d replication=%d topics=%s,%s,%s,%s",
           bootstrap, (int)opts.brokers, (int)opts.partitions, (int)opts.replication,
           opts.topics[0], opts.topics[1], opts.topics[2], opts.topics[3]);
  /* The mock does not long-poll (see README, "The embedded broker"). */
  LOG_INFO("clients: pass --kafka-fetch-wait-ms 1 to fanout-ingest and fanout-delivery",
           "env=FANOUT_KAFKA_FETCH_WAIT_MS=1 why=\"%s\"",
           "an empty fetch is answered after fetch.wait.max.ms even when records arrive");
  printf("bootstrap=%s\n", bootstrap);
  fflush(stdout);

  uv_run(&kd.loop, UV_RUN_DEFAULT); /* returns once the signal handles are closed */
  kdev_stop_cluster(&kd);
  uv_loop_close(&kd.loop);
  LOG_INFO("stopped", "%s", "");
  fo_cfg_free(opts_table, KDEV_NOPTS, &opts);
  return 0;

fail_signals:
  for (int i = 0; i < KDEV_NSIGNALS; i++) {
    if (!uv_is_closing((uv_handle_t *)&kd.sigs[i]))
      uv_close((uv_handle_t *)&kd.sigs[i], on_sig_closed);
  }
  uv_run(&kd.loop, UV_RUN_DEFAULT);
  uv_loop_close(&kd.loop);
  fo_cfg_free(opts_table, KDEV_NOPTS, &opts);
  return rc;
}

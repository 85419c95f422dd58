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

#define KDEV_PROG "fanout-kafka-dev"
#define KDEV_NTOPICS 4
#define KDEV_NSIGNALS 4

/* ---- options -------------------------------------------------------------- */

typedef struct {
  int partitions;
  int brokers;
  int replication;
  const char *topics[KDEV_NTOPICS];
  int log_level; /* 0 debug, 1 info, 2 warn, 3 error */
} kdev_opts_t;

typedef enum { OPT_INT, OPT_STR, OPT_LEVEL } kdev_opt_type_t;

typedef struct {
  const char *name; /* flag without "--"; environment FANOUT_<NAME> */
  kdev_opt_type_t type;
  size_t offset;
  int min, max;
  const char *def;
  const char *help;
} kdev_opt_t;

static const kdev_opt_t opts_table[] = {
  /* name            type       offset                                    min max   default */
  { "partitions",   OPT_INT,   offsetof(kdev_opts_t, partitions),        1, 1000, "4",
    "partitions of each project topic" },
  { "brokers",      OPT_INT,   offsetof(kdev_opts_t, brokers),           1, 16,   "1",
    "mock brokers (each its own loopback port)" },
  { "replication",  OPT_INT,   offsetof(kdev_opts_t, replication),       0, 16,   "0",
    "replication factor of the topics (0 = min(brokers, 3))" },
  { "topic-users",  OPT_STR,   offsetof(kdev_opts_t, topics[0]),         1, 249,  "fanout.users",
    "user topic (partitioned by user-hash range)" },
  { "topic-rooms",  OPT_STR,   offsetof(kdev_opts_t, topics[1]),         1, 249,  "fanout.rooms",
    "room topic (read by every delivery server)" },
  { "topic-intake", OPT_STR,   offsetof(kdev_opts_t, topics[2]),         1, 249,  "fanout.intake",
    "intake topic (backend services produce here)" },
  { "topic-dlq",    OPT_STR,   offsetof(kdev_opts_t, topics[3]),         1, 249,  "fanout.dlq",
    "dead-letter topic" },
  { "log-level",    OPT_LEVEL, offsetof(kdev_opts_t, log_level),         0, 3,    "info",
    "debug|info|warn|error" },
};
#define KDEV_NOPTS (sizeof(opts_table) / sizeof(opts_table[0]))

static const char *const level_names[] = { "debug", "info", "warn", "error" };

/* ---- logging (logfmt on stderr, like common/log.h) ------------------------ */

static int log_min_level = 1;

static void kdev_log(int lvl, const char *msg, const char *kv, ...)
    __attribute__((format(printf, 3, 4)));

static void kdev_log(int lvl, const char *msg, const char *kv, ...) {
  if (lvl < log_min_level)
    return;
  struct timeval tv;
  struct tm tm;
  char ts[32];
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  char pairs[768];
  va_list ap;
  va_start(ap, kv);
  vsnprintf(pairs, sizeof(pairs), kv, ap);
  va_end(ap);
  fprintf(stderr, "ts=%s.%03dZ level=%s mod=kafka-dev msg=\"%s\"%s%s\n", ts,
          (int)(tv.tv_usec / 1000), level_names[lvl], msg, pairs[0] != '\0' ? " " : "", pairs);
}

#define LOG_DEBUG(msg, ...) kdev_log(0, msg, __VA_ARGS__)
#define LOG_INFO(msg, ...) kdev_log(1, msg, __VA_ARGS__)
#define LOG_WARN(msg, ...) kdev_log(2, msg, __VA_ARGS__)
#define LOG_ERROR(msg, ...) kdev_log(3, msg, __VA_ARGS__)

/* librdkafka's own log lines (from its threads), in the same format. */
static void kdev_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  int lvl = level <= 3 ? 3 : level <= 4 ? 2 : level <= 6 ? 1 : 0;
  if (strcmp(fac, "CONFWARN") == 0)
    lvl = 0; /* "no bootstrap.servers": true, and by design */
  kdev_log(lvl, "rdkafka", "fac=%s detail=\"%s\"", fac, buf);
}

/* ---- option parsing ------------------------------------------------------- */

/* Sets one option from text; returns 0, or -EINVAL with err naming it. */
static int opt_set(const kdev_opt_t *o, kdev_opts_t *opts, const char *val, const char *src,
                   char *err, size_t errlen) {
  char *field = (char *)opts + o->offset;
  switch (o->type) {
  case OPT_INT: {
    char *end = NULL;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno != 0 || end == val || *end != '\0' || v < o->min || v > o->max) {
      snprintf(err, errlen, "%s=%s (%s): must be an integer in [%d, %d]", o->name, val, src,
               o->min, o->max);
      return -EINVAL;
    }
    *(int *)(void *)field = (int)v;
    return 0;
  }
  case OPT_STR: {
    size_t len = strlen(val);
    if (len < (size_t)o->min || len > (size_t)o->max) {
      snprintf(err, errlen, "%s=%s (%s): length must be in [%d, %d]", o->name, val, src,
               o->min, o->max);
      return -EINVAL;
    }
    *(const char **)(void *)field = val;
    return 0;
  }
  case OPT_LEVEL:
    for (int i = 0; i < 4; i++) {
      if (strcmp(val, level_names[i]) == 0) {
        *(int *)(void *)field = i;
        return 0;
      }
    }
    snprintf(err, errlen, "%s=%s (%s): must be debug, info, warn or error", o->name, val, src);
    return -EINVAL;
  }
  return -EINVAL;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: " KDEV_PROG " [options]\n"
          "The embedded Kafka broker for development and tests: a librdkafka mock\n"
          "cluster on random loopback ports, in memory. Prints bootstrap=HOST:PORT[,...]\n"
          "on stdout once it accepts connections; runs until SIGINT/SIGTERM.\n"
          "SIGUSR1 takes all brokers down, SIGUSR2 brings them up again.\n\n"
          "options (each also settable as FANOUT_<NAME>, the flag wins):\n");
  for (size_t i = 0; i < KDEV_NOPTS; i++) {
    const kdev_opt_t *o = &opts_table[i];
    char env[64];
    size_t j = 0;
    for (const char *p = o->name; *p != '\0' && j < sizeof(env) - 1; p++)
      env[j++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    env[j] = '\0';
    fprintf(f, "  --%-14s %s (env FANOUT_%s, default %s)\n", o->name, o->help, env, o->def);
  }
  fprintf(f, "  --%-14s this text\n", "help");
}

static const kdev_opt_t *opt_find(const char *name, size_t len) {
  for (size_t i = 0; i < KDEV_NOPTS; i++) {
    if (strlen(opts_table[i].name) == len && strncmp(opts_table[i].name, name, len) == 0)
      return &opts_table[i];
  }
  return NULL;
}

/* Defaults, then FANOUT_<NAME>, then --flags. Returns 0, 1 for --help, or
 * -EINVAL with one line in err naming the option. */
static int opts_load(kdev_opts_t *opts, int argc, char **argv, char *err, size_t errlen) {
  memset(opts, 0, sizeof(*opts));
  for (size_t i = 0; i < KDEV_NOPTS; i++) {
    if (opt_set(&opts_table[i], opts, opts_table[i].def, "default", err, errlen) != 0)
      return -EINVAL;
  }
  for (size_t i = 0; i < KDEV_NOPTS; i++) {
    const kdev_opt_t *o = &opts_table[i];
    char env[80] = "FANOUT_";
    size_t j = strlen(env);
    for (const char *p = o->name; *p != '\0' && j < sizeof(env) - 1; p++)
      env[j++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    env[j] = '\0';
    const char *v = getenv(env);
    if (v != NULL && opt_set(o, opts, v, env, err, errlen) != 0)
      return -EINVAL;
  }
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
      return 1;
    if (strncmp(arg, "--", 2) != 0) {
      snprintf(err, errlen, "unexpected argument '%s'", arg);
      return -EINVAL;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    const kdev_opt_t *o = opt_find(name, len);
    if (o == NULL) {
      snprintf(err, errlen, "unknown option '--%.*s'", (int)len, name);
      return -EINVAL;
    }
    const char *val = eq != NULL ? eq + 1 : NULL;
    if (val == NULL) {
      if (i + 1 >= argc) {
        snprintf(err, errlen, "option '--%s' needs a value", o->name);
        return -EINVAL;
      }
      val = argv[++i];
    }
    if (opt_set(o, opts, val, "flag", err, errlen) != 0)
      return -EINVAL;
  }
  if (opts->replication > opts->brokers) {
    snprintf(err, errlen, "replication=%d (flag or env): must be <= brokers=%d",
             opts->replication, opts->brokers);
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

static const int handled_signals[KDEV_NSIGNALS] = { SIGINT, SIGTERM, SIGUSR1, SIGUSR2 };

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
    rd_kafka_resp_err_t err = down ? rd_kafka_mock_broker_set_down(kd->mc, -1)
                                   : rd_kafka_mock_broker_set_up(kd->mc, -1);
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
  if (rd_kafka_conf_set(conf, "client.id", KDEV_PROG, errstr, sizeof(errstr)) !=
          RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "log_level", opts->log_level == 0 ? "7" : "6", errstr,
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
  kd->mc = rd_kafka_mock_cluster_new(kd->rk, opts->brokers);
  if (kd->mc == NULL) {
    LOG_ERROR("rd_kafka_mock_cluster_new failed", "brokers=%d", opts->brokers);
    goto fail_rk;
  }
  for (int i = 0; i < KDEV_NTOPICS; i++) {
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(kd->mc, opts->topics[i],
                                                         opts->partitions, opts->replication);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      LOG_ERROR("cannot create topic", "topic=%s partitions=%d err=\"%s\"", opts->topics[i],
                opts->partitions, rd_kafka_err2str(err));
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
  char err[512];
  int rc = opts_load(&opts, argc, argv, err, sizeof(err));
  if (rc == 1) {
    usage(stdout);
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, KDEV_PROG ": %s\n", err);
    return 2;
  }
  log_min_level = opts.log_level;
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
           bootstrap, opts.brokers, opts.partitions, opts.replication, opts.topics[0],
           opts.topics[1], opts.topics[2], opts.topics[3]);
  printf("bootstrap=%s\n", bootstrap);
  fflush(stdout);

  uv_run(&kd.loop, UV_RUN_DEFAULT); /* returns once the signal handles are closed */
  kdev_stop_cluster(&kd);
  uv_loop_close(&kd.loop);
  LOG_INFO("stopped", "%s", "");
  return 0;

fail_signals:
  for (int i = 0; i < KDEV_NSIGNALS; i++) {
    if (!uv_is_closing((uv_handle_t *)&kd.sigs[i]))
      uv_close((uv_handle_t *)&kd.sigs[i], on_sig_closed);
  }
  uv_run(&kd.loop, UV_RUN_DEFAULT);
  uv_loop_close(&kd.loop);
  return 1;
}

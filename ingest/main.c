/* fanout-ingest: the HTTP API and the Kafka intake that hand messages to
 * the delivery tier through fanout.users / fanout.rooms (DESIGN.md).
 * Start-up: config -> producer -> intake -> presence -> HTTP server, then
 * "listening=HOST:PORT" on stdout. SIGTERM/SIGINT: stop accepting, let the
 * in-flight requests get their Kafka answer, stop the intake, exit. */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest_int.h"
#include "log.h"

#define F(name, type, field, min, max, def, help)                                                  \
  { name, type, offsetof(fo_ingest_cfg_t, field), min, max, def, help }
#define A(old, name)                                                                               \
  { old, FO_CFG_ALIAS, 0, 0, 0, name, NULL }

static const fo_cfg_field_t fields[] = {
    F("listen", FO_CFG_ADDR, listen, 0, 65535, "127.0.0.1:8080",
      "HTTP address (port 0: any free port)"),
    F("redis", FO_CFG_ADDRS, redis, 1, 65535, "127.0.0.1:6379",
      "Redis nodes holding the connection registry, HOST:PORT[,HOST:PORT...] (shards: "
      "schemas/redis-shards.md; the same list in the same order as the delivery servers')"),
    F("redis-password", FO_CFG_STR, redis_password, 0, 4096, "",
      "Redis AUTH password, sent first on every Redis connection (empty: no AUTH)"),
    F("redis-user", FO_CFG_STR, redis_user, 0, 256, "",
      "Redis 6+ ACL user for AUTH (empty: the default user); needs redis-password"),
    F("kafka", FO_CFG_STR, kafka, 1, 4096, "127.0.0.1:9092", "Kafka bootstrap servers"),
    F("api-keys", FO_CFG_STR, api_keys, 0, 0, "",
      "comma-separated API keys for /v1 (none: /v1 answers 401)"),
    F("log-level", FO_CFG_STR, log_level, 1, 16, "info", "debug, info, warn or error"),
    F("redis-prefix", FO_CFG_STR, redis_prefix, 0, 128, "", "prefix of every Redis key"),
    F("max-body-bytes", FO_CFG_INT, max_body_bytes, 64, 64 << 20, "1048576",
      "largest request body (413 above)"),
    F("max-header-bytes", FO_CFG_INT, max_header_bytes, 256, 1 << 20, "16384",
      "largest request line + headers (431 above)"),
    F("max-connections", FO_CFG_INT, max_connections, 1, 1000000, "10000",
      "open connections; more are answered 503 and closed"),
    F("max-pipeline", FO_CFG_INT, max_pipeline, 1, 4096, "64",
      "pipelined requests in flight per connection"),
    F("read-timeout-ms", FO_CFG_INT, read_timeout_ms, 100, 3600000, "10000",
      "time to receive a whole request (408 after) or to write a reply"),
    F("idle-timeout-ms", FO_CFG_INT, idle_timeout_ms, 100, 86400000, "60000",
      "keep-alive connections idle longer are closed"),
    F("produce-timeout-ms", FO_CFG_INT, produce_timeout_ms, 500, 600000, "5000",
      "deadline for Kafka's acknowledgement (503 after)"),
    F("retry-after-s", FO_CFG_INT, retry_after_s, 0, 3600, "1", "Retry-After on 429 and 503"),
    F("batch-max-items", FO_CFG_INT, batch_max_items, 1, 100000, "1000",
      "messages in one /v1/batch"),
    F("idempotency-window-s", FO_CFG_INT, idempotency_window_s, 0, 86400, "300",
      "how long an Idempotency-Key is remembered (0: ignored)"),
    F("idempotency-max-keys", FO_CFG_INT, idempotency_max_keys, 1, 10000000, "100000",
      "Idempotency-Keys remembered at most"),
    F("idempotency-max-bytes", FO_CFG_INT, idempotency_max_bytes, 65536, INT64_C(1) << 40,
      "67108864",
      "memory the Idempotency-Key cache may hold (keys + cached replies); oldest finished entries "
      "are evicted beyond it"),
    F("users-topic", FO_CFG_STR, topic_users, 1, 249, "fanout.users", "topic for /v1/send"),
    F("rooms-topic", FO_CFG_STR, topic_rooms, 1, 249, "fanout.rooms", "topic for /v1/broadcast"),
    F("intake-topic", FO_CFG_STR, topic_intake, 1, 249, "fanout.intake",
      "topic the intake consumes"),
    F("dlq-topic", FO_CFG_STR, topic_dlq, 1, 249, "fanout.dlq", "topic for invalid intake records"),
    F("intake", FO_CFG_BOOL, intake, 0, 0, "true", "consume the intake topic"),
    F("intake-group", FO_CFG_STR, intake_group, 1, 255, "fanout-ingest-intake",
      "consumer group of the intake"),
    F("intake-max-bytes", FO_CFG_INT, intake_max_bytes, 64, 64 << 20, "1048576",
      "larger intake records go to the DLQ"),
    F("intake-max-inflight", FO_CFG_INT, intake_max_inflight, 1, 1000000, "10000",
      "intake records awaiting acknowledgement before fetching pauses"),
    F("intake-session-timeout-ms", FO_CFG_INT, intake_session_timeout_ms, 1000, 300000, "10000",
      "consumer group session timeout"),
    F("linger-ms", FO_CFG_INT, linger_ms, 0, 900000, "1", "producer linger.ms"),
    F("batch-num-messages", FO_CFG_INT, batch_num_messages, 1, 1000000, "10000",
      "producer batch.num.messages"),
    F("batch-size-bytes", FO_CFG_INT, batch_size_bytes, 1, 2147483647, "1000000",
      "producer batch.size"),
    F("queue-max-messages", FO_CFG_INT, queue_max_messages, 1, 10000000, "100000",
      "producer queue.buffering.max.messages (429 when full)"),
    F("queue-max-kbytes", FO_CFG_INT, queue_max_kbytes, 1, 2147483647, "1048576",
      "producer queue.buffering.max.kbytes"),
    F("metadata-refresh-ms", FO_CFG_INT, metadata_refresh_ms, 1000, 3600000, "30000",
      "how often partition counts are refreshed"),
    F("stats-interval-ms", FO_CFG_INT, stats_interval_ms, 100, 60000, "1000",
      "producer statistics interval (readiness)"),
    F("kafka-fetch-wait-ms", FO_CFG_INT, kafka_fetch_wait_ms, 1, 10000, "500",
      "fetch.wait.max.ms of the intake consumer (see fanout-delivery --help); the embedded "
      "fanout-kafka-dev needs 1"),
    F("kafka-opts", FO_CFG_STR, kafka_options, 0, 0, "",
      "extra librdkafka settings k=v,k=v (win over ours; write a comma inside a value as \\,)"),
    F("redis-timeout-ms", FO_CFG_INT, redis_timeout_ms, 10, 60000, "1000",
      "Redis connect and command timeout"),
    F("shutdown-timeout-ms", FO_CFG_INT, shutdown_timeout_ms, 0, 600000, "10000",
      "longest wait for in-flight work at shutdown"),
    F("reuseport", FO_CFG_BOOL, reuseport, 0, 0, "true", "SO_REUSEPORT: processes share the port"),
    /* Old spellings (before the names were aligned with fanout-delivery's):
     * they still work, with a warning. */
    A("kafka-options", "kafka-opts"),
    A("topic-users", "users-topic"),
    A("topic-rooms", "rooms-topic"),
    A("topic-intake", "intake-topic"),
    A("topic-dlq", "dlq-topic"),
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static int finalize(void *p, char *err, size_t errlen) {
  fo_ingest_cfg_t *cfg = p;
  fo_log_level_t lvl;
  if (cfg->redis_user[0] != '\0' && cfg->redis_password[0] == '\0') {
    snprintf(err, errlen, "redis-user needs redis-password (FANOUT_REDIS_PASSWORD)");
    return -EINVAL;
  }
  if (fo_log_parse_level(cfg->log_level, &lvl) != 0) {
    snprintf(err, errlen, "log-level=%s: must be debug, info, warn or error", cfg->log_level);
    return -EINVAL;
  }
  /* Checked here so that the position is that of --kafka-opts; the item
   * itself is not printed (it may be the tail of a password). */
  char **opts = NULL;
  int nopts = fo_cfg_list_split(cfg->kafka_options, &opts);
  if (nopts < 0) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  for (int i = 0; i < nopts; i++) {
    if (opts[i][0] == '=' || strchr(opts[i], '=') == NULL) {
      snprintf(err, errlen,
               "kafka-opts: item %d is not key=value (a comma inside a value is "
               "written \\,)",
               i + 1);
      fo_cfg_list_free(opts);
      return -EINVAL;
    }
  }
  fo_cfg_list_free(opts);
  const char *topics[] = {cfg->topic_users, cfg->topic_rooms, cfg->topic_intake, cfg->topic_dlq};
  for (size_t i = 0; i < 4; i++) {
    for (size_t j = i + 1; j < 4; j++) {
      if (strcmp(topics[i], topics[j]) == 0) {
        snprintf(err, errlen, "topic %s is configured twice", topics[i]);
        return -EINVAL;
      }
    }
  }
  return 0;
}

typedef struct {
  fo_ingest_t *ing;
  uv_signal_t sigterm, sigint;
  uv_timer_t drain; /* polls for the end of in-flight work while stopping */
  uint64_t stop_deadline;
  int exit_code;
} app_t;

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

static void close_all(app_t *app) {
  fo_ingest_t *ing = app->ing;
  uv_close((uv_handle_t *)&app->sigterm, on_handle_closed);
  uv_close((uv_handle_t *)&app->sigint, on_handle_closed);
  uv_close((uv_handle_t *)&app->drain, on_handle_closed);
  fo__server_free(ing->server);
  ing->server = NULL;
  fo__api_close(ing->api);
  fo__intake_close(ing->intake);
  fo__producer_close(ing->producer);
  fo__presence_close(ing->presence);
  ing->presence = NULL;
}

static void on_drain(uv_timer_t *t) {
  app_t *app = t->data;
  fo_ingest_t *ing = app->ing;
  size_t conns = ing->server != NULL ? fo__server_connections(ing->server) : 0;
  size_t jobs = fo__api_pending(ing->api);
  size_t intake = ing->intake != NULL ? fo__intake_inflight(ing->intake) : 0;
  int outq = fo__producer_outq(ing->producer);
  bool late = uv_now(ing->loop) >= app->stop_deadline;
  if ((conns == 0 && jobs == 0 && intake == 0 && outq == 0) || late) {
    if (late)
      FO_LOG_WARN("main", "shutdown timeout: exiting with work in flight",
                  "connections=%zu requests=%zu intake=%zu outq=%d", conns, jobs, intake, outq);
    uv_timer_stop(t);
    close_all(app);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  app_t *app = s->data;
  fo_ingest_t *ing = app->ing;
  if (ing->stopping) {
    if (signum == SIGINT) { /* a second Ctrl-C: do not wait */
      app->stop_deadline = 0;
      on_drain(&app->drain);
    }
    return;
  }
  FO_LOG_INFO("main", "stopping", "signal=%d", signum);
  ing->stopping = true;
  fo__server_stop(ing->server);
  fo__intake_stop(ing->intake);
  app->stop_deadline = uv_now(ing->loop) + (uint64_t)ing->cfg->shutdown_timeout_ms;
  uv_timer_start(&app->drain, on_drain, 0, 20);
}

int main(int argc, char **argv) {
  fo_ingest_cfg_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  int rc =
      fo_cfg_main("fanout-ingest",
                  "The ingest service: HTTP API and Kafka intake -> fanout.users / fanout.rooms.",
                  fields, NFIELDS, &cfg, argc, argv, finalize);
  if (rc == FO_CFG_CHECK_ONLY) {
    fo_cfg_free(fields, NFIELDS, &cfg);
    return 0;
  }
  fo_log_level_t lvl = FO_LOG_LVL_INFO;
  fo_log_parse_level(cfg.log_level, &lvl);
  fo_log_set_level(lvl);
  signal(SIGPIPE, SIG_IGN);

  uv_loop_t loop;
  uv_loop_init(&loop);
  fo_ingest_t ing;
  memset(&ing, 0, sizeof(ing));
  ing.loop = &loop;
  ing.cfg = &cfg;
  app_t app;
  memset(&app, 0, sizeof(app));
  app.ing = &ing;
  char err[512] = "";
  int exit_code = 1;

  ing.metrics = fo_metrics_new();
  if (ing.metrics == NULL || fo__auth_new(cfg.api_keys, &ing.auth) != 0 ||
      fo__api_new(&ing, &ing.api) != 0) {
    fprintf(stderr, "fanout-ingest: out of memory\n");
    goto out;
  }
  if (fo__auth_count(ing.auth) == 0)
    FO_LOG_WARN("main", "no API keys configured: every /v1 request is answered 401", "keys=0");
  if (cfg.idempotency_window_s > 0 &&
      fo__idem_new((size_t)cfg.idempotency_max_keys, (size_t)cfg.idempotency_max_bytes,
                   (uint64_t)cfg.idempotency_window_s * 1000, &ing.idem) != 0) {
    fprintf(stderr, "fanout-ingest: out of memory\n");
    goto out;
  }
  if (fo__producer_new(&ing, &ing.producer, err, sizeof(err)) != 0) {
    fprintf(stderr, "fanout-ingest: kafka producer: %s\n", err);
    exit_code = 2;
    goto out;
  }
  if (cfg.intake && fo__intake_new(&ing, &ing.intake, err, sizeof(err)) != 0) {
    fprintf(stderr, "fanout-ingest: kafka intake: %s\n", err);
    exit_code = 2;
    goto out;
  }
  if (fo__presence_new(&ing, &ing.presence) != 0) {
    fprintf(stderr, "fanout-ingest: redis: out of memory\n");
    goto out;
  }
  char bound[128];
  fo_server_opts_t sopts = {
      .listen = {.host = cfg.listen.host, .port = cfg.listen.port, .reuseport = cfg.reuseport},
      .limits = {.max_header_bytes = (size_t)cfg.max_header_bytes,
                 .max_body_bytes = (size_t)cfg.max_body_bytes},
      .max_connections = (size_t)cfg.max_connections,
      .max_pipeline = (size_t)cfg.max_pipeline,
      .read_timeout_ms = (uint64_t)cfg.read_timeout_ms,
      .idle_timeout_ms = (uint64_t)cfg.idle_timeout_ms,
  };
  rc = fo__server_start(&loop, ing.metrics, &sopts, &fo__api_handler, &ing, bound, sizeof(bound),
                        &ing.server);
  if (rc != 0) {
    fprintf(stderr, "fanout-ingest: listen %s:%d: %s\n", cfg.listen.host, cfg.listen.port,
            fo_strerror(rc));
    goto out;
  }
  uv_signal_init(&loop, &app.sigterm);
  uv_signal_init(&loop, &app.sigint);
  uv_timer_init(&loop, &app.drain);
  app.sigterm.data = app.sigint.data = app.drain.data = &app;
  uv_signal_start(&app.sigterm, on_signal, SIGTERM);
  uv_signal_start(&app.sigint, on_signal, SIGINT);
  FO_LOG_INFO("main", "started", "listen=%s kafka=%s redis=%s:%d redis_nodes=%d intake=%d", bound,
              cfg.kafka, cfg.redis.v[0].host, cfg.redis.v[0].port, cfg.redis.n, cfg.intake ? 1 : 0);
  printf("listening=%s\n", bound);
  fflush(stdout);
  uv_run(&loop, UV_RUN_DEFAULT);
  exit_code = 0;
out:
  /* The loop is over (or never ran): close what is left, run the close
   * callbacks, then free. The producer goes first so that its last delivery
   * reports still find the intake and the API alive. */
  if (ing.server != NULL) {
    fo__server_free(ing.server);
    ing.server = NULL;
  }
  fo__api_close(ing.api);
  fo__intake_close(ing.intake);
  fo__producer_close(ing.producer);
  fo__presence_close(ing.presence);
  uv_run(&loop, UV_RUN_DEFAULT);
  fo__producer_free(ing.producer);
  fo__intake_free(ing.intake);
  fo__api_free(ing.api);
  fo__idem_free(ing.idem);
  fo__auth_free(ing.auth);
  fo_metrics_free(ing.metrics);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0)
    FO_LOG_WARN("main", "handles left open at exit", "loop=busy");
  fo_cfg_free(fields, NFIELDS, &cfg);
  FO_LOG_INFO("main", "stopped", "code=%d", exit_code);
  return exit_code;
}

/* fanout-delivery's configuration table: every option with its bounds,
 * default and help (--help prints them), and the cross-field rules. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "delivery_int.h"
#include "log.h"
#include "rkeys.h"

#define F(name, type, field, min, max, def, help)                                                  \
  { name, type, offsetof(fo_dcfg_t, field), min, max, def, help }

const fo_cfg_field_t fo_dcfg_fields[] = {
    F("listen", FO_CFG_ADDR, listen, 0, 65535, "127.0.0.1:8081",
      "address for WebSocket clients and /healthz, /readyz, /metrics (port 0: any free port)"),
    F("redis", FO_CFG_ADDRS, redis, 1, 65535, "127.0.0.1:6379",
      "Redis nodes for the registry and Pub/Sub, HOST:PORT[,HOST:PORT...]: several independent "
      "nodes are shards (schemas/redis-shards.md); every process of a deployment needs the same "
      "list in the same order"),
    F("redis-password", FO_CFG_STR, redis_password, 0, 4096, "",
      "Redis AUTH password, sent first on every Redis connection (empty: no AUTH)"),
    F("redis-user", FO_CFG_STR, redis_user, 0, 256, "",
      "Redis 6+ ACL user for AUTH (empty: the default user); needs redis-password"),
    F("redis-timeout-ms", FO_CFG_INT, redis_timeout_ms, 10, 60000, "1000",
      "Redis connect and command timeout"),
    F("kafka", FO_CFG_STR, kafka, 1, 4096, "127.0.0.1:9092", "Kafka bootstrap servers"),
    F("server-id", FO_CFG_STR, server_id, 1, FO_SERVER_ID_MAX, NULL,
      "this server's id in the registry (default: hostname-pid, the hostname cut to fit 64 bytes)"),
    F("jwt-secret", FO_CFG_STR, jwt_secret, 1, 4096, NULL,
      "HS256 secret for client tokens (required, at least 32 bytes)"),
    F("jwt-audience", FO_CFG_STR, jwt_audience, 0, 256, "",
      "when set, a token's aud (a string, or an array containing it) must equal this"),
    F("jwt-issuer", FO_CFG_STR, jwt_issuer, 0, 256, "", "when set, a token's iss must equal this"),
    F("max-token-lifetime-s", FO_CFG_INT, max_token_lifetime_s, 0, 315360000, "0",
      "refuse tokens (401) whose exp - iat (without iat: exp - now) exceeds this; 0: no limit"),
    F("log-level", FO_CFG_STR, log_level, 1, 16, "info", "debug, info, warn or error"),
    F("ping-interval-ms", FO_CFG_INT, ping_interval_ms, 10, 3600000, "30000",
      "protocol ping interval per connection"),
    F("pong-timeout-ms", FO_CFG_INT, pong_timeout_ms, 10, 3600000, "10000",
      "close a connection whose pong did not come within this time"),
    F("handshake-timeout-ms", FO_CFG_INT, handshake_timeout_ms, 10, 600000, "5000",
      "drop connections that have not completed the upgrade within this time"),
    F("close-timeout-ms", FO_CFG_INT, close_timeout_ms, 10, 600000, "2000",
      "wait this long for the client's close frame after ours"),
    F("max-connections", FO_CFG_INT, max_connections, 1, 10000000, "100000",
      "WebSocket connections per process (over it: HTTP 503 before the upgrade)"),
    F("max-connections-per-user", FO_CFG_INT, max_connections_per_user, 1, 10000000, "100",
      "WebSocket connections of one user (token sub) per process (over it: HTTP 429)"),
    F("max-pending-handshakes", FO_CFG_INT, max_pending_handshakes, 0, 10000000, "0",
      "connections that have not upgraded yet (handshakes, plain HTTP answers); over it a "
      "new TCP connection is closed at accept; 0: max(1024, max-connections/10)"),
    F("max-frame-bytes", FO_CFG_INT, max_frame_bytes, 125, 16777216, "65536",
      "largest client frame payload (over it: close 1009)"),
    F("max-message-bytes", FO_CFG_INT, max_message_bytes, 125, 16777216, "65536",
      "largest client message after reassembly (over it: close 1009)"),
    F("max-handshake-bytes", FO_CFG_INT, max_handshake_bytes, 512, 1048576, "8192",
      "largest upgrade request (request line and headers)"),
    F("max-rooms-per-conn", FO_CFG_INT, max_rooms_per_conn, 1, 100000, "64",
      "rooms one connection may join"),
    F("outq-max-bytes", FO_CFG_INT, outq_max_bytes, 1024, 1073741824, "1048576",
      "per-connection outbound queue limit, counting what queued frames cost in memory "
      "(over it: close 1013)"),
    F("high-water-bytes", FO_CFG_INT, high_water_bytes, 1024, 68719476736LL, "268435456",
      "pause Kafka when all queued output plus messages waiting for Redis exceed this"),
    F("low-water-bytes", FO_CFG_INT, low_water_bytes, 0, 68719476736LL, "134217728",
      "resume Kafka when queued output plus messages waiting for Redis fall below this"),
    F("users-topic", FO_CFG_STR, users_topic, 1, 249, "fanout.users", "topic of user messages"),
    F("rooms-topic", FO_CFG_STR, rooms_topic, 1, 249, "fanout.rooms", "topic of room broadcasts"),
    F("group-id", FO_CFG_STR, group_id, 1, 249, "fanout-delivery",
      "consumer group of the delivery servers (users topic)"),
    F("users-offset-reset", FO_CFG_STR, users_offset_reset, 1, 16, "earliest",
      "where a users partition without a committed offset starts: earliest or latest"),
    F("session-timeout-ms", FO_CFG_INT, session_timeout_ms, 1000, 600000, "10000",
      "consumer group session timeout (a dead server's partitions move after it)"),
    F("kafka-fetch-wait-ms", FO_CFG_INT, kafka_fetch_wait_ms, 1, 10000, "500",
      "fetch.wait.max.ms of the Kafka consumers: how long a broker may hold a fetch that "
      "found nothing. A real Kafka answers as soon as a record arrives, so this sets only the "
      "idle polling rate; the embedded fanout-kafka-dev does not, so its launchers pass 1"),
    F("kafka-opts", FO_CFG_STR, kafka_opts, 0, 8192, "",
      "extra librdkafka settings, comma-separated key=value (write a comma inside a value as \\,)"),
    F("redis-prefix", FO_CFG_STR, redis_prefix, 0, 128, "",
      "prefix of every Redis key and channel"),
    F("origins", FO_CFG_STR, origins, 0, 8192, "",
      "comma-separated Origin allow-list (empty: any; requests without Origin are allowed)"),
    F("room-mode", FO_CFG_STR, room_mode, 1, 8, "kafka",
      "kafka: every server reads the whole rooms topic; redis: the group {group-id}.rooms "
      "consumes it once and PUBLISHes to ws:room:{room}, servers subscribe per joined room"),
    F("drain-timeout-ms", FO_CFG_INT, drain_timeout_ms, 100, 600000, "10000",
      "SIGTERM: exit at the latest after this"),
    F("drain-spread-ms", FO_CFG_INT, drain_spread_ms, 0, 600000, "5000",
      "SIGTERM: close the open connections (1001) in batches every 50 ms spread over this "
      "time, longest quiet first, so their clients do not all reconnect elsewhere at once; open "
      "connections keep receiving until their batch (0: all at once). Must leave "
      "--close-timeout-ms within --drain-timeout-ms (else cut to fit, with a warning)"),
    F("drain-min-batch", FO_CFG_INT, drain_min_batch, 1, 10000000, "100",
      "SIGTERM: close at least this many connections per batch (a server holding few "
      "connections closes them at once)"),
    F("registry-refresh-ms", FO_CFG_INT, registry_refresh_ms, 100, 150000, "60000",
      "heartbeat pass re-sending every local registry entry with a fresh 300 s TTL"),
    F("alive-ttl-ms", FO_CFG_INT, alive_ttl_ms, 300, 600000, "10000",
      "TTL of this server's liveness key (refreshed every third of it)"),
    F("reuseport", FO_CFG_BOOL, reuseport, 0, 0, "true",
      "SO_REUSEPORT: several processes on one host share the port"),
    F("read-pause-bytes", FO_CFG_INT, read_pause_bytes, 1024, 1073741824, "65536",
      "stop reading a client while its outbound queue costs more than this (frames, their "
      "allocations and queue slots; at most half of --outq-max-bytes is used)"),
    F("client-msg-rate", FO_CFG_INT, client_msg_rate, 0, 1000000, "20",
      "client messages (text, binary, protocol pings) per second per connection, refilled "
      "into a bucket of --client-msg-burst; an empty bucket closes with 1008 (0: no limit)"),
    F("client-msg-burst", FO_CFG_INT, client_msg_burst, 1, 65535, "100",
      "client messages a connection may send at once; keep it above --max-rooms-per-conn "
      "(clients join their rooms right after connecting)"),
    F("resume-window-ms", FO_CFG_INT, resume_window_ms, 1000, 86400000, "120000",
      "resume (since): a stream resumes when its oldest missed message is at most this old"),
    F("resume-max-messages", FO_CFG_INT, resume_max_messages, 1, 100000, "1000",
      "resume: more missed messages than this on one stream answer recovered:false"),
    F("resume-window-bytes", FO_CFG_INT, resume_window_bytes, 0, 68719476736, "67108864",
      "memory for the recent room messages that resumes are served from (all partitions "
      "together; 0: none, every resume reads Kafka)"),
    F("resume-max-scan", FO_CFG_INT, resume_max_scan, 1, 100000000, "200000",
      "resume from Kafka: the most records of a partition one replay may read"),
    F("resume-timeout-ms", FO_CFG_INT, resume_timeout_ms, 100, 600000, "5000",
      "resume from Kafka: a replay that takes longer answers recovered:false"),
};
const size_t fo_dcfg_nfields = sizeof(fo_dcfg_fields) / sizeof(fo_dcfg_fields[0]);

/* Secrets printed in the repository's examples and deploy files: fine for a
 * laptop, a warning anywhere else. */
static const char *const example_secrets[] = {
    "dev-secret-change-me",
    "change-me-to-a-long-random-secret",
    FO_DEV_JWT_SECRET,
};
/* The deploy/ examples mark their placeholders with this prefix. */
#define EXAMPLE_PREFIX "CHANGE-ME"

int fo_dcfg_finalize(void *p, char *err, size_t errlen) {
  fo_dcfg_t *cfg = p;
  fo_log_level_t lvl;
  if (cfg->jwt_secret == NULL || cfg->jwt_secret[0] == '\0') {
    snprintf(err, errlen, "jwt-secret is required (--jwt-secret or FANOUT_JWT_SECRET)");
    return -EINVAL;
  }
  /* The value is never echoed: it is a secret. */
  if (strlen(cfg->jwt_secret) < FO_AUTH_MIN_SECRET) {
    snprintf(err, errlen, "jwt-secret must be at least %d bytes (it has %zu)", FO_AUTH_MIN_SECRET,
             strlen(cfg->jwt_secret));
    return -EINVAL;
  }
  bool example = strncmp(cfg->jwt_secret, EXAMPLE_PREFIX, sizeof(EXAMPLE_PREFIX) - 1) == 0;
  for (size_t i = 0; i < sizeof(example_secrets) / sizeof(example_secrets[0]); i++)
    example = example || strcmp(cfg->jwt_secret, example_secrets[i]) == 0;
  if (example)
    FO_LOG_WARN("config", "jwt-secret is an example value from the documentation",
                "hint=\"set a long random secret outside development\"");
  if (cfg->max_pending_handshakes == 0) {
    cfg->max_pending_handshakes = cfg->max_connections / 10;
    if (cfg->max_pending_handshakes < 1024)
      cfg->max_pending_handshakes = 1024;
  }
  if (fo_log_parse_level(cfg->log_level, &lvl) != 0) {
    snprintf(err, errlen, "log-level=%s: expected debug, info, warn or error", cfg->log_level);
    return -EINVAL;
  }
  if (cfg->redis_user[0] != '\0' && cfg->redis_password[0] == '\0') {
    snprintf(err, errlen, "redis-user needs redis-password (FANOUT_REDIS_PASSWORD)");
    return -EINVAL;
  }
  if (strcmp(cfg->room_mode, "kafka") == 0) {
    cfg->room_mode_id = FO_ROOM_MODE_KAFKA;
  } else if (strcmp(cfg->room_mode, "redis") == 0) {
    cfg->room_mode_id = FO_ROOM_MODE_REDIS;
  } else {
    snprintf(err, errlen, "room-mode=%s: expected kafka or redis", cfg->room_mode);
    return -EINVAL;
  }
  if (strcmp(cfg->users_offset_reset, "earliest") != 0 &&
      strcmp(cfg->users_offset_reset, "latest") != 0) {
    snprintf(err, errlen, "users-offset-reset=%s: expected earliest or latest",
             cfg->users_offset_reset);
    return -EINVAL;
  }
  if (cfg->low_water_bytes >= cfg->high_water_bytes) {
    snprintf(err, errlen, "low-water-bytes=%lld must be below high-water-bytes=%lld",
             (long long)cfg->low_water_bytes, (long long)cfg->high_water_bytes);
    return -EINVAL;
  }
  if (cfg->max_frame_bytes > cfg->max_message_bytes) {
    snprintf(err, errlen, "max-frame-bytes=%lld must not exceed max-message-bytes=%lld",
             (long long)cfg->max_frame_bytes, (long long)cfg->max_message_bytes);
    return -EINVAL;
  }
  if (cfg->registry_refresh_ms * 2 > FO_REGISTRY_TTL_S * 1000) {
    snprintf(err, errlen, "registry-refresh-ms=%lld must be at most half the 300 s TTL",
             (long long)cfg->registry_refresh_ms);
    return -EINVAL;
  }
  /* The last batch's clients get --close-timeout-ms to answer its 1001
   * before the deadline. Cut rather than refused: a short drain timeout
   * (tests, a laptop) should not need a second flag. */
  int64_t spread_max = cfg->drain_timeout_ms - cfg->close_timeout_ms;
  if (spread_max < 0)
    spread_max = 0;
  if (cfg->drain_spread_ms > spread_max) {
    FO_LOG_WARN("config", "drain-spread-ms cut to fit drain-timeout-ms",
                "drain_spread_ms=%lld used=%lld drain_timeout_ms=%lld close_timeout_ms=%lld",
                (long long)cfg->drain_spread_ms, (long long)spread_max,
                (long long)cfg->drain_timeout_ms, (long long)cfg->close_timeout_ms);
    cfg->drain_spread_ms = spread_max;
  }
  if (cfg->server_id == NULL) {
    char host[256] = "delivery";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    /* Cut the hostname so that "-pid" still fits the id's limit. */
    char pid[16];
    int plen = snprintf(pid, sizeof(pid), "-%d", (int)getpid());
    char id[FO_SERVER_ID_MAX + 1];
    snprintf(id, sizeof(id), "%.*s%s", FO_SERVER_ID_MAX - plen, host, pid);
    cfg->server_id = strdup(id);
    if (cfg->server_id == NULL) {
      snprintf(err, errlen, "out of memory");
      return -ENOMEM;
    }
  }
  for (const char *s = cfg->server_id; *s; s++) {
    if (*s == ' ' || *s == '\n' || *s == '\r') {
      snprintf(err, errlen, "server-id=%s: must not contain spaces", cfg->server_id);
      return -EINVAL;
    }
  }
  return 0;
}

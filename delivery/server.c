/* The per-process server: wires the pieces on one loop, owns the metrics,
 * the water marks that pause Kafka, and the SIGTERM drain. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "delivery_int.h"
#include "log.h"
#include "redis_uv.h"
#include "server.h"
#include "ws.h"



static void register_metrics(fo_server_t *srv) {
  fo_metrics_t *m = srv->metrics;
  fo_dmetrics_t *d = &srv->m;
#define G(field, name, help) d->field = fo_metrics_gauge(m, "fanout_delivery_" name, help)
#define C(field, name, help) d->field = fo_metrics_counter(m, "fanout_delivery_" name, help)
  G(connections, "connections", "open WebSocket connections");
  G(users, "users", "distinct users with a local connection");
  G(rooms, "rooms", "rooms with a local member");
  G(queued_bytes, "queued_bytes",
    "what the outbound queues of all connections cost (frames, their allocations, queue slots)");
  G(backlog_bytes, "routing_backlog_bytes",
    "bytes of messages waiting for Redis (routing script or room PUBLISH not answered yet); "
    "counted with queued_bytes against the high-water mark");
  G(paused_partitions, "paused_partitions", "Kafka partitions paused by the high-water mark");
  G(assigned_partitions, "assigned_partitions", "Kafka partitions assigned (users + rooms)");
  G(consumer_lag, "consumer_lag", "messages behind the high watermark, all assigned partitions");
  G(redis_up, "redis_up", "1 when the registry and Pub/Sub connections are up");
  G(last_fanout_us, "last_fanout_microseconds",
    "room records of the last loop turn: from taking the first off the queue to every "
    "frame handed to the kernel (or to libuv for a full socket)");
  C(accepted, "accepted_total", "TCP connections accepted");
  C(handshake_fail, "handshake_failures_total", "upgrade requests refused (any reason)");
  C(auth_fail, "auth_failures_total", "upgrade requests refused with 401");
  C(rejected_full, "rejected_full_total", "upgrade requests refused with 503");
  C(rejected_user, "rejected_user_limit_total",
    "upgrade requests refused with 429 (--max-connections-per-user)");
  C(rejected_pending, "rejected_pending_total",
    "TCP connections closed at accept (--max-pending-handshakes)");
  C(token_expired, "token_expired_closes_total", "connections closed with 4001 (token expired)");
  C(msgs_in_users, "messages_in_total{source=\"users\"}", "messages received");
  C(msgs_in_rooms, "messages_in_total{source=\"rooms\"}", "messages received");
  C(msgs_in_pubsub, "messages_in_total{source=\"pubsub\"}", "messages received");
  C(frames_out, "frames_out_total", "frames queued to clients");
  C(bytes_out, "bytes_out_total", "bytes written to clients");
  C(published, "published_total", "messages PUBLISHed to other servers");
  C(drops, "drops_total", "frames not delivered (queue full, out of memory)");
  C(slow_closes, "slow_client_closes_total", "connections closed for a full outbound queue");
  C(rate_limited, "rate_limited_total",
    "connections closed with 1008 for sending messages faster than --client-msg-rate");
  C(read_pauses, "read_pauses_total",
    "times a connection stopped being read because its outbound queue passed --read-pause-bytes");
  G(rx_bytes, "rx_buffered_bytes", "bytes held for incomplete client frames and messages");
  C(ping_timeouts, "ping_timeouts_total", "connections closed for a missing pong");
  C(protocol_errors, "protocol_errors_total", "connections closed for a protocol violation");
  C(decode_errors, "decode_errors_total", "records that could not be decoded (skipped)");
  C(redis_errors, "redis_errors_total", "Redis commands that failed");
  C(kafka_errors, "kafka_errors_total", "Kafka errors reported");
  C(dead_servers_cleaned, "dead_entries_cleaned_total",
    "registry entries removed because their server's liveness key was gone");
  d->redis_conn_errors = fo_metrics_counter(m, "fanout_delivery_redis_connection_errors_total",
                                         "Redis connect failures, timeouts and disconnects");
#undef G
#undef C
}

static void on_collect(void *ud) {
  fo_server_t *srv = ud;
  *srv->m.queued_bytes = (int64_t)srv->queued_bytes;
  *srv->m.backlog_bytes = (int64_t)srv->backlog_bytes;
  *srv->m.rx_bytes = (int64_t)srv->rx_bytes;
  *srv->m.redis_conn_errors = fo__rreg_errors(srv);
  fo__consumer_collect(srv);
}

/* ---- water marks ---- */

void fo__server_water(fo_server_t *srv) {
  const fo_dcfg_t *cfg = srv->cfg;
  uint64_t load = srv->queued_bytes + srv->backlog_bytes;
  if (!srv->paused && load > (uint64_t)cfg->high_water_bytes) {
    srv->paused = true;
    FO_LOG_WARN("server", "high-water mark: pausing Kafka", "queued=%" PRIu64 " backlog=%" PRIu64,
                srv->queued_bytes, srv->backlog_bytes);
    fo__consumer_pause(srv, true);
  } else if (srv->paused && load < (uint64_t)cfg->low_water_bytes) {
    srv->paused = false;
    FO_LOG_INFO("server", "low-water mark: resuming Kafka", "queued=%" PRIu64 " backlog=%" PRIu64,
                srv->queued_bytes, srv->backlog_bytes);
    fo__consumer_pause(srv, false);
  }
}

static void on_check(uv_check_t *h) {
  fo__rreg_flush(h->data);
  fo__server_flush(h->data);
}

/* ---- drain ---- */

static void close_noop(uv_handle_t *h) {
  (void)h;
}

static void finish(fo_server_t *srv) {
  if (srv->stopping)
    return;
  srv->stopping = true;
  /* Whatever is left after the deadline goes now. */
  while (srv->conns.next != &srv->conns)
    fo__conn_destroy(srv->conns.next);
  fo__listener_stop(srv);
  uv_close((uv_handle_t *)&srv->sweep, close_noop);
  uv_close((uv_handle_t *)&srv->flush_check, close_noop);
  uv_close((uv_handle_t *)&srv->drain_timer, close_noop);
  uv_close((uv_handle_t *)&srv->sigterm, close_noop);
  uv_close((uv_handle_t *)&srv->sigint, close_noop);
  fo__consumer_free(srv);
  fo__rreg_close(srv);
  FO_LOG_INFO("server", "drained", "ms=%" PRIu64, uv_now(srv->loop) - srv->drain_started);
}

static void on_barrier(fo_server_t *srv) {
  srv->redis_flushed = true;
  fo__server_drain_check(srv);
}

void fo__server_drain_check(fo_server_t *srv) {
  if (!srv->draining || srv->stopping)
    return;
  if (srv->nopen > 0 || fo__router_inflight(srv) > 0)
    return;
  if (!srv->redis_flushed) {
    if (!srv->barrier_asked) {
      srv->barrier_asked = true;
      fo__rreg_barrier(srv, on_barrier); /* the HDELs and DEL are written out */
    }
    return;
  }
  if (srv->nconns > 0 || !fo__consumer_closed(srv))
    return;
  finish(srv);
}

/* Ticks every 20 ms while draining: librdkafka finishes its close on its
 * own threads and does not always leave an event behind to wake us. */
static void on_drain_tick(uv_timer_t *t) {
  fo_server_t *srv = t->data;
  if (uv_now(srv->loop) - srv->drain_started < (uint64_t)srv->cfg->drain_timeout_ms) {
    fo__server_drain_check(srv);
    return;
  }
  FO_LOG_WARN("server", "drain deadline reached", "open=%" PRId64 " inflight=%zu", srv->nopen,
              fo__router_inflight(srv));
  srv->exit_code = 1;
  finish(srv);
}

static void start_drain(fo_server_t *srv) {
  if (srv->draining)
    return;
  srv->draining = true;
  srv->drain_started = uv_now(srv->loop);
  FO_LOG_INFO("server", "draining", "open=%" PRId64, srv->nopen);
  fo__listener_stop(srv);
  uv_timer_start(&srv->drain_timer, on_drain_tick, 20, 20);
  fo_conn_t *conn = srv->conns.next;
  while (conn != &srv->conns) {
    fo_conn_t *next = conn->next;
    if (conn->state == FO_CONN_OPEN)
      fo__conn_close_ws(conn, FO_WS_CLOSE_GOING_AWAY, "server shutting down");
    else if (conn->state != FO_CONN_CLOSING)
      fo__conn_destroy(conn);
    conn = next;
  }
  fo__rreg_drain(srv);
  fo__consumer_drain(srv);
  fo__server_drain_check(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
  fo_server_t *srv = h->data;
  if (srv->draining) {
    FO_LOG_WARN("server", "second signal: exiting now", "signal=%d", signum);
    srv->exit_code = 1;
    finish(srv);
    return;
  }
  start_drain(srv);
}

/* ---- start ---- */

static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  FO_LOG_INFO("server", "open files limit", "nofile=%llu capacity=%llu",
              (unsigned long long)rl.rlim_cur,
              (unsigned long long)(rl.rlim_cur > 64 ? rl.rlim_cur - 64 : 0));
}

int fo_server_init(fo_server_t *srv, uv_loop_t *loop, const fo_dcfg_t *cfg, char *err,
                   size_t errlen) {
  int rc;
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->cfg = cfg;
  srv->conns.next = srv->conns.prev = &srv->conns;
  srv->start_ms = fo_now_ms();
  srv->rbuf_len = 65536;
  srv->rbuf = malloc(srv->rbuf_len);
  srv->metrics = fo_metrics_new();
  fo_sb_init(&srv->scratch);
  if (srv->rbuf == NULL || srv->metrics == NULL) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  register_metrics(srv);
  fo_metrics_on_collect(srv->metrics, on_collect, srv);
  if (cfg->origins != NULL && cfg->origins[0] != '\0') {
    rc = fo_cfg_list_split(cfg->origins, &srv->origins);
    if (rc < 0) {
      snprintf(err, errlen, "out of memory");
      return rc;
    }
    srv->norigins = rc;
  }
  rc = fo__frame_init(srv);
  if (rc != 0) {
    snprintf(err, errlen, "out of memory");
    return rc;
  }
  raise_nofile();
  uv_check_init(loop, &srv->flush_check);
  srv->flush_check.data = srv;
  uv_check_start(&srv->flush_check, on_check);
  uv_timer_init(loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  uv_signal_init(loop, &srv->sigterm);
  uv_signal_init(loop, &srv->sigint);
  srv->sigterm.data = srv->sigint.data = srv;
  uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
  uv_signal_start(&srv->sigint, on_signal, SIGINT);
  rc = fo__heartbeat_start(srv);
  if (rc == 0)
    rc = fo__router_new(srv);
  if (rc == 0)
    rc = fo__rreg_new(srv);
  if (rc != 0) {
    snprintf(err, errlen, "start: %s", fo_strerror(rc));
    return rc;
  }
  rc = fo__consumer_new(srv, err, errlen);
  if (rc != 0)
    return rc;
  return fo__listener_start(srv, err, errlen);
}

void fo_server_cleanup(fo_server_t *srv) {
  fo__consumer_destroy(srv);
  fo__router_free(srv);
  fo__registry_free(srv);
  fo__rooms_free(srv);
  fo__frame_free(srv);
  fo__outq_pool_free(srv);
  fo_cfg_list_free(srv->origins);
  fo_metrics_free(srv->metrics);
  fo_sb_free(&srv->scratch);
  free(srv->iov);
  free(srv->rbuf);
}

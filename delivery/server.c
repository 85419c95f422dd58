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
#include "consumer.h"
#include "rreg.h"
#include "router.h"
#include "hub.h"
#include "log.h"
#include "redis_uv.h"
#include "server.h"
#include "stream.h"
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
  G(redis_up, "redis_up", "1 when the registry and Pub/Sub connections of every Redis node are up");
  G(redis_nodes_down, "redis_nodes_down",
    "Redis nodes (--redis) with a registry or Pub/Sub connection down (/readyz names them)");
  G(last_fanout_us, "last_fanout_microseconds",
    "room records of the last loop turn: from taking the first off the queue to every "
    "frame handed to the kernel (or to libuv for a full socket)");
  C(accepted, "accepted_total", "TCP connections accepted");
  C(handshake_fail, "handshake_failures_total", "upgrade requests refused (any reason)");
  C(auth_fail, "auth_failures_total",
    "upgrade requests refused for their token (401, or 4001/4003 with auth=close)");
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
  C(room_copies, "room_copies_dropped_total",
    "room frames over Pub/Sub dropped as copies of ones the members had (a room partition's "
    "new owner publishing again after a rebalance)");
  C(ping_timeouts, "ping_timeouts_total", "connections closed for a missing pong");
  C(protocol_errors, "protocol_errors_total", "connections closed for a protocol violation");
  C(decode_errors, "decode_errors_total", "records that could not be decoded (skipped)");
  C(redis_errors, "redis_errors_total", "Redis commands that failed");
  C(kafka_errors, "kafka_errors_total", "Kafka errors reported");
  C(dead_servers_cleaned, "dead_entries_cleaned_total",
    "registry entries removed because their server's liveness key was gone");
  C(routes_node_down, "routes_node_down_total",
    "with several Redis nodes: user messages and room PUBLISHes not routed to other servers "
    "because the Redis node they need was down (not held: that would stall every node's users)");
  d->redis_conn_errors = fo_metrics_counter(m, "fanout_delivery_redis_connection_errors_total",
                                            "Redis connect failures, timeouts and disconnects");
#undef G
#undef C
}

static void on_collect(void *ud) {
  fo_server_t *srv = ud;
  *srv->m.queued_bytes = (int64_t)fo_flow_queued_bytes(srv->flow);
  *srv->m.backlog_bytes = (int64_t)fo_flow_backlog_bytes(srv->flow);
  *srv->m.rx_bytes = (int64_t)srv->rx_bytes;
  *srv->m.redis_conn_errors = fo__rreg_errors(srv);
  fo__consumer_collect(srv);
}

/* ---- water marks ---- */

/* The flow's decision (flow.c): pause or resume every assigned partition. */
static void on_pause(void *ud, bool pause) {
  fo_server_t *srv = ud;
  if (srv->stopping)
    return; /* tearing down: the consumer is going or gone */
  uint64_t queued = fo_flow_queued_bytes(srv->flow), backlog = fo_flow_backlog_bytes(srv->flow);
  if (pause)
    FO_LOG_WARN("server", "high-water mark: pausing Kafka", "queued=%" PRIu64 " backlog=%" PRIu64,
                queued, backlog);
  else
    FO_LOG_INFO("server", "low-water mark: resuming Kafka", "queued=%" PRIu64 " backlog=%" PRIu64,
                queued, backlog);
  fo__consumer_pause(srv, pause);
}

static void on_check(uv_check_t *h) {
  fo_server_t *srv = h->data;
  /* The poll that just ran began after the previous check phase. Not this
   * phase's time: a poll cut short (epoll_wait's EINTR after SIGSTOP and
   * SIGCONT) returns with no reads done, and the time is updated all the same. */
  srv->polled_ms = srv->last_check_ms;
  srv->last_check_ms = uv_now(srv->loop);
  fo__router_flush(srv);
  fo__rreg_flush(srv);
  fo__streams_after_flush(srv); /* a barrier behind the registrations just sent */
  fo__server_flush(srv);
  if (srv->draining)
    fo__drain_poll(srv); /* after the flush: it may have closed the last connections */
}

/* ---- wiring: the connection layer's calls, and the upward events ---- */

static int conn_admit(fo_conn_t *conn, const char *user, size_t ulen, const void *rooms_json) {
  fo_server_t *srv = conn->srv;
  fo_user_t *u = fo__registry_user(srv, user, ulen);
  if (u != NULL && u->nconns >= (uint64_t)srv->cfg->max_connections_per_user)
    return 429;
  if (fo__registry_add(conn, user, ulen) != 0 || fo__perm_set(conn, rooms_json) != 0) {
    fo__registry_remove(conn);
    return 500;
  }
  return 0;
}

static void conn_unadmit(fo_conn_t *conn) {
  fo__perm_release(conn);
  fo__registry_remove(conn);
}

static void conn_opened(fo_conn_t *conn, const char *since, size_t slen) {
  fo__rreg_conn_added(conn->srv, conn);
  fo__stream_opened(conn, since, slen); /* the welcome, now or once its position is known */
}

static void conn_closed(fo_conn_t *conn) {
  fo__stream_closed(conn);
  fo__rooms_leave_all(conn);
  fo__rreg_conn_removed(conn->srv, conn);
  fo__registry_remove(conn);
  fo__perm_release(conn);
}

static int conn_room(fo_conn_t *conn, const char *room, size_t len, bool join, bool has_since,
                     const char *since, size_t slen) {
  if (!join) {
    fo__stream_left(conn, room, len);
    return fo__room_leave(conn, room, len);
  }
  int rc = fo__room_join(conn, room, len);
  if (rc == 0)
    fo__stream_joined(conn, room, len, has_since, since, slen); /* answers: joined */
  return rc;
}

/* Each heartbeat tick: the router's settle hold, the windows' age. */
static void on_sweep_tick(fo_server_t *srv) {
  fo__router_tick(srv);
  fo__streams_tick(srv);
}

static bool conn_ready(fo_server_t *srv) {
  return fo__rreg_ready(srv) && !srv->draining;
}

static void conn_ready_detail(fo_server_t *srv, fo_sb_t *out) {
  fo__rreg_down_nodes(srv, out);
}

void fo__server_wire(fo_server_t *srv) {
  srv->conn_ev.admit = conn_admit;
  srv->conn_ev.unadmit = conn_unadmit;
  srv->conn_ev.opened = conn_opened;
  srv->conn_ev.closed = conn_closed;
  srv->conn_ev.room = conn_room;
  srv->conn_ev.ready = conn_ready;
  srv->conn_ev.ready_detail = conn_ready_detail;
  /* hub_ev.user_gone: nobody needs it (rreg keeps its pending users by name) */
  if (srv->cfg->room_mode_id == FO_ROOM_MODE_REDIS)
    srv->hub_ev.room_sub = fo__rreg_room_sub;
  srv->hub_ev.member_frame = fo__stream_send_room;
  srv->rreg_ev.pubsub_user = fo__router_pubsub;
  srv->rreg_ev.pubsub_room = fo__router_room_pubsub;
  srv->rreg_ev.redis_up = fo__router_redis_up;
  srv->rreg_ev.resync = fo__streams_resync;
  srv->redis_cmd = fo__rreg_cmd;
  srv->on_sweep = on_sweep_tick;
  srv->room_position = fo__consumer_room_position;
}

/* ---- drain (drain.c) ---- */

static void close_noop(uv_handle_t *h) {
  (void)h;
}

/* The drain finished (or was cut short): the server's own handles close,
 * and with them the loop ends. */
static void on_stopped(fo_server_t *srv) {
  fo__streams_close(srv); /* the replay reader's thread and handle */
  uv_close((uv_handle_t *)&srv->sweep, close_noop);
  uv_close((uv_handle_t *)&srv->flush_check, close_noop);
  uv_close((uv_handle_t *)&srv->drain_timer, close_noop);
  uv_close((uv_handle_t *)&srv->sigterm, close_noop);
  uv_close((uv_handle_t *)&srv->sigint, close_noop);
}

static void on_signal(uv_signal_t *h, int signum) {
  fo_server_t *srv = h->data;
  if (srv->draining) {
    FO_LOG_WARN("server", "second signal: exiting now", "signal=%d", signum);
    srv->exit_code = 1;
    fo__drain_finish(srv);
    return;
  }
  fo__drain_start(srv);
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

int fo_server_core_init(fo_server_t *srv, uv_loop_t *loop, const fo_dcfg_t *cfg, char *err,
                        size_t errlen) {
  int rc;
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->cfg = cfg;
  for (int k = 0; k < FO_CL_N; k++)
    srv->clist[k].next = srv->clist[k].prev = &srv->clist[k];
  srv->on_stopped = on_stopped;
  fo__server_wire(srv);
  srv->start_ms = fo_now_ms();
  srv->rbuf_len = 65536;
  srv->rbuf = malloc(srv->rbuf_len);
  srv->metrics = fo_metrics_new();
  srv->flow =
      fo_flow_new((uint64_t)cfg->high_water_bytes, (uint64_t)cfg->low_water_bytes, on_pause, srv);
  fo_sb_init(&srv->scratch);
  if (srv->rbuf == NULL || srv->metrics == NULL || srv->flow == NULL) {
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
  return fo__streams_new(srv, err, errlen);
}

int fo_server_init(fo_server_t *srv, uv_loop_t *loop, const fo_dcfg_t *cfg, char *err,
                   size_t errlen) {
  int rc = fo_server_core_init(srv, loop, cfg, err, errlen);
  if (rc != 0)
    return rc;
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
  if (rc == 0)
    rc = fo__streams_start(srv, err, errlen);
  if (rc != 0)
    return rc;
  return fo__listener_start(srv, err, errlen);
}

void fo_server_cleanup(fo_server_t *srv) {
  srv->stopping = true; /* no pause/resume calls into a consumer being destroyed */
  fo__consumer_destroy(srv);
  fo__router_free(srv);
  fo__streams_free(srv);
  fo__registry_free(srv);
  fo__rooms_free(srv);
  fo__frame_free(srv);
  fo__outq_pool_free(srv);
  fo__conn_pool_free(srv);
  fo_cfg_list_free(srv->origins);
  fo_metrics_free(srv->metrics);
  fo_sb_free(&srv->scratch);
  free(srv->iov);
  free(srv->rbuf);
  fo_flow_free(srv->flow);
}

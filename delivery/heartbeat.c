/* One timer per process sweeps every connection's single deadline: the end
 * of the handshake, the next protocol ping, the pong deadline, or the end
 * of the close handshake; and the expiry of an open connection's token. No
 * uv_timer_t per connection (152 bytes each). */
#include <inttypes.h>

#include "delivery_int.h"
#include "log.h"
#include "ws.h"

/* Browsers answer protocol pings themselves and never show them to
 * JavaScript, so a page could not tell a frozen server from a quiet one:
 * a connection that asked for it (heartbeat=1) gets a text ping instead,
 * the same shared frame for all of them. */
static fo_buf_t *ping_for(const fo_conn_t *conn) {
  return conn->app_ping ? conn->srv->app_ping_frame : conn->srv->ping_frame;
}

void fo__heartbeat_app_pong(fo_conn_t *conn) {
  if (conn->state == FO_CONN_OPEN && conn->await_pong) {
    conn->await_pong = 0;
    conn->deadline = uv_now(conn->srv->loop) + (uint64_t)conn->srv->cfg->ping_interval_ms;
  }
}

static void on_sweep(uv_timer_t *t) {
  fo_server_t *srv = t->data;
  const fo_dcfg_t *cfg = srv->cfg;
  uint64_t now = uv_now(srv->loop);
  /* Token expiry is wall-clock time (exp is seconds since the epoch). */
  uint64_t wall_s = fo_now_ms() / 1000, start_s = srv->start_ms / 1000;
  uint32_t now_rel_s = wall_s > start_s ? (uint32_t)(wall_s - start_s) : 0;
  if (srv->on_sweep != NULL)
    srv->on_sweep(srv); /* the router's settle hold (wired by server.c) */
  uint32_t refill = fo__conn_rate_refill(srv, now);
  fo_conn_t *conn = srv->conns.next;
  while (conn != &srv->conns) {
    fo_conn_t *next = conn->next; /* destroy unlinks conn */
    if (refill != 0)
      fo__conn_refill(conn, refill);
    if (conn->state == FO_CONN_OPEN && conn->exp_s != 0 && now_rel_s >= conn->exp_s) {
      (*srv->m.token_expired)++;
      FO_LOG_DEBUG("heartbeat", "token expired: closing", "conn=%" PRIu32, conn->id);
      fo__conn_close_ws(conn, FO_WS_CLOSE_TOKEN_EXPIRED, "token expired");
    } else if (now >= conn->deadline) {
      switch (conn->state) {
      case FO_CONN_HANDSHAKE:
      case FO_CONN_HTTP:
      case FO_CONN_CLOSING:
        fo__conn_destroy(conn);
        break;
      case FO_CONN_OPEN:
        if (conn->await_pong) {
          (*srv->m.ping_timeouts)++;
          FO_LOG_DEBUG("heartbeat", "no pong: closing", "conn=%" PRIu32, conn->id);
          fo__conn_destroy(conn);
        } else {
          conn->await_pong = 1;
          conn->deadline = now + (uint64_t)cfg->pong_timeout_ms;
          fo__conn_send_now(conn, ping_for(conn));
        }
        break;
      default:
        break;
      }
    }
    conn = next;
  }
}

int fo__heartbeat_start(fo_server_t *srv) {
  const fo_dcfg_t *cfg = srv->cfg;
  int64_t tick = cfg->ping_interval_ms;
  if (cfg->pong_timeout_ms < tick)
    tick = cfg->pong_timeout_ms;
  if (cfg->handshake_timeout_ms < tick)
    tick = cfg->handshake_timeout_ms;
  if (cfg->close_timeout_ms < tick)
    tick = cfg->close_timeout_ms;
  tick /= 4;
  if (tick < 10)
    tick = 10;
  if (tick > 1000)
    tick = 1000;
  int rc = uv_timer_init(srv->loop, &srv->sweep);
  if (rc != 0)
    return rc;
  srv->sweep.data = srv;
  return uv_timer_start(&srv->sweep, on_sweep, (uint64_t)tick, (uint64_t)tick);
}

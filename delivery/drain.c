/* SIGTERM drain, one state machine: it is started once (fo__drain_start)
 * and then only *reads* the state of the others, from the server's check
 * handle (every loop turn) and from a 20 ms tick (librdkafka finishes its
 * close on its own threads and does not always leave an event behind to
 * wake the loop). Nobody pokes it; the steps, in order:
 *   1. every open connection got a 1001 close; the listener is closed;
 *      our liveness key is DELeted; the consumers leave their groups;
 *   2. wait: no WebSocket open (srv->nopen) and nothing in the router's
 *      FIFOs (fo__router_inflight: every offset released);
 *   3. a Redis barrier (a PING after the last HDEL) answered, or Redis down;
 *   4. wait: every socket freed (srv->nconns) and the consumers closed;
 *   5. finish: the rest of the handles close and the loop ends.
 * The deadline (--drain-timeout-ms) ends it at whatever step, exit code 1. */
#include <inttypes.h>

#include "delivery_int.h"
#include "consumer.h"
#include "rreg.h"
#include "router.h"
#include "log.h"
#include "ws.h"

void fo__drain_finish(fo_server_t *srv) {
  if (srv->stopping)
    return;
  srv->stopping = true;
  /* Whatever is left after the deadline goes now. */
  for (fo_conn_t *c; (c = fo__conn_any(srv)) != NULL;)
    fo__conn_destroy(c);
  fo__listener_stop(srv);
  fo__consumer_free(srv);
  fo__rreg_close(srv);
  if (srv->on_stopped != NULL)
    srv->on_stopped(srv); /* the server's own handles */
  FO_LOG_INFO("server", "drained", "ms=%" PRIu64, uv_now(srv->loop) - srv->drain_started);
}

static void on_barrier(fo_server_t *srv) {
  srv->redis_flushed = true; /* read by the next poll */
}

void fo__drain_poll(fo_server_t *srv) {
  if (!srv->draining || srv->stopping)
    return;
  if (srv->nopen > 0 || fo__router_inflight(srv) > 0)
    return;
  if (!srv->redis_flushed) {
    if (!srv->barrier_asked) {
      srv->barrier_asked = true;
      fo__rreg_barrier(srv, on_barrier); /* the HDELs and DEL are written out */
    }
    if (!srv->redis_flushed) /* the barrier may answer at once (Redis down) */
      return;
  }
  if (srv->nconns > 0 || !fo__consumer_closed(srv))
    return;
  fo__drain_finish(srv);
}

static void on_drain_tick(uv_timer_t *t) {
  fo_server_t *srv = t->data;
  if (uv_now(srv->loop) - srv->drain_started < (uint64_t)srv->cfg->drain_timeout_ms) {
    fo__drain_poll(srv);
    return;
  }
  FO_LOG_WARN("server", "drain deadline reached", "open=%" PRId64 " inflight=%zu", srv->nopen,
              fo__router_inflight(srv));
  srv->exit_code = 1;
  fo__drain_finish(srv);
}

void fo__drain_start(fo_server_t *srv) {
  if (srv->draining)
    return;
  srv->draining = true;
  srv->drain_started = uv_now(srv->loop);
  FO_LOG_INFO("server", "draining", "open=%" PRId64, srv->nopen);
  fo__listener_stop(srv);
  uv_timer_start(&srv->drain_timer, on_drain_tick, 20, 20);
  fo_conn_t *conn = fo__conn_any(srv);
  while (conn != NULL) {
    fo_conn_t *next = fo__conn_after(srv, conn); /* closing moves conn to the last list */
    if (conn->state == FO_CONN_OPEN)
      fo__conn_close_ws(conn, FO_WS_CLOSE_GOING_AWAY, "server shutting down");
    else if (conn->state != FO_CONN_CLOSING)
      fo__conn_destroy(conn);
    conn = next;
  }
  fo__rreg_drain(srv);
  fo__consumer_drain(srv);
  fo__drain_poll(srv);
}

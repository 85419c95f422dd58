/* SIGTERM drain, one state machine: it is started once (fo__drain_start)
 * and then only *reads* the state of the others, from the server's check
 * handle (every loop turn) and from a 20 ms tick (librdkafka finishes its
 * close on its own threads and does not always leave an event behind to
 * wake the loop). Nobody pokes it; the steps, in order:
 *   1. the listener is closed and unfinished handshakes dropped; the users
 *      consumer leaves its group (and the rooms one in room mode redis), so
 *      the other servers take the partitions over and route the messages
 *      of users still connected here to us over Redis Pub/Sub;
 *   2. the open connections get their 1001 close in batches every
 *      FO_DRAIN_BATCH_MS spread over --drain-spread-ms, longest quiet first
 *      (fo__drain_due), so their clients do not all reconnect elsewhere in
 *      the same second. Until its batch a connection is served as before:
 *      the liveness key and registry entries are kept fresh (the other
 *      servers' routing script publishes only to a live server), our
 *      channel stays subscribed and in room mode kafka the rooms consumer
 *      keeps reading. After the last batch: our liveness key is DELeted
 *      and the rooms consumer closes;
 *   3. wait: no WebSocket open (srv->nopen) and nothing in the router's
 *      FIFOs (fo__router_inflight: every offset released);
 *   4. a Redis barrier (a PING after the last HDEL) answered, or Redis down;
 *   5. wait: every socket freed (srv->nconns) and the consumers closed;
 *   6. finish: the rest of the handles close and the loop ends.
 * The deadline (--drain-timeout-ms, which the spread fits in: dconfig.c)
 * or a second signal ends it at whatever step, exit code 1. */
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

int64_t fo__drain_due(int64_t total, uint64_t elapsed_ms, int64_t spread_ms, int64_t min_batch) {
  if (total <= 0 || spread_ms < FO_DRAIN_BATCH_MS * 2)
    return total > 0 ? total : 0; /* one batch */
  int64_t nbatches = spread_ms / FO_DRAIN_BATCH_MS;
  int64_t batch = (total + nbatches - 1) / nbatches;
  if (batch < min_batch)
    batch = min_batch;
  uint64_t k = elapsed_ms / FO_DRAIN_BATCH_MS; /* batch 0 at the start */
  if (k >= (uint64_t)nbatches)
    return total;
  int64_t due = ((int64_t)k + 1) * batch; /* k < 12,000, batch <= 10^7: no overflow */
  return due < total ? due : total;
}

/* Step 2: the 1001s due by now, then what goes after the last one. Open
 * connections are walked in heartbeat-deadline order (FO_CL_PING first:
 * the longest quiet go first); closing ones sit on the last list, so each
 * batch visits only the connections it closes. */
static void close_due(fo_server_t *srv) {
  if (srv->drain_closes_done)
    return;
  int64_t due = fo__drain_due(srv->drain_total, uv_now(srv->loop) - srv->drain_started,
                              srv->cfg->drain_spread_ms, srv->cfg->drain_min_batch);
  if (srv->drain_closed < due)
    FO_LOG_DEBUG("server", "drain: batch", "ms=%" PRIu64 " closed=%" PRId64 " due=%" PRId64,
                 uv_now(srv->loop) - srv->drain_started, srv->drain_closed, due);
  fo_conn_t *conn = fo__conn_any(srv);
  while (srv->drain_closed < due && conn != NULL) {
    fo_conn_t *next = fo__conn_after(srv, conn); /* closing moves conn to the last list */
    if (conn->state == FO_CONN_OPEN) {
      fo__conn_close_ws(conn, FO_WS_CLOSE_GOING_AWAY, "server shutting down");
      srv->drain_closed++;
    }
    conn = next;
  }
  /* Done when none is open (a close unregisters at once; some clients
   * leave on their own before their batch). */
  if (srv->nopen > 0)
    return;
  srv->drain_closes_done = true;
  FO_LOG_INFO("server", "drain: every connection closed", "ms=%" PRIu64 " by_drain=%" PRId64,
              uv_now(srv->loop) - srv->drain_started, srv->drain_closed);
  fo__rreg_drain(srv);
  fo__consumer_drain_rooms(srv);
}

static void on_barrier(fo_server_t *srv) {
  srv->redis_flushed = true; /* read by the next poll */
}

void fo__drain_poll(fo_server_t *srv) {
  if (!srv->draining || srv->stopping)
    return;
  close_due(srv);
  if (!srv->drain_closes_done || srv->nopen > 0 || fo__router_inflight(srv) > 0)
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
  uv_update_time(srv->loop); /* the loop's clock is from before this turn's callbacks */
  srv->drain_started = uv_now(srv->loop);
  fo__listener_stop(srv);
  uv_timer_start(&srv->drain_timer, on_drain_tick, 20, 20);
  fo_conn_t *conn = fo__conn_any(srv);
  while (conn != NULL) {
    fo_conn_t *next = fo__conn_after(srv, conn); /* closing moves conn to the last list */
    if (conn->state == FO_CONN_OPEN)
      srv->drain_total++;
    else if (conn->state != FO_CONN_CLOSING)
      fo__conn_destroy(conn); /* not upgraded: nothing to lose */
    conn = next;
  }
  int64_t batch =
      fo__drain_due(srv->drain_total, 0, srv->cfg->drain_spread_ms, srv->cfg->drain_min_batch);
  FO_LOG_INFO("server", "draining", "open=%" PRId64 " spread_ms=%" PRId64 " batch=%" PRId64,
              srv->nopen, srv->cfg->drain_spread_ms, batch);
  fo__consumer_drain(srv);
  fo__drain_poll(srv); /* the first batch */
}

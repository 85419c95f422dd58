/* One timer per process looks at every connection's single deadline when
 * it comes: the end of the handshake, the next protocol ping, the pong
 * deadline, or the end of the close handshake; and the expiry of an open
 * connection's token. No uv_timer_t per connection (152 bytes each), and no
 * walk over all connections: they are kept in lists sorted by deadline
 * (FO_CL_* in delivery_int.h). */
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

void fo__heartbeat_pong(fo_conn_t *conn) {
  if (conn->state == FO_CONN_OPEN && conn->await_pong) {
    conn->await_pong = 0;
    fo__conn_queue(conn, FO_CL_PING);
  }
}

/* ---- the deadline lists (see FO_CL_* in delivery_int.h) ---- */

static bool is_head(const fo_server_t *srv, const fo_conn_t *c) {
  uintptr_t p = (uintptr_t)c, lo = (uintptr_t)&srv->clist[0], hi = (uintptr_t)&srv->clist[FO_CL_N];
  return p >= lo && p < hi;
}

void fo__conn_unqueue(fo_conn_t *conn) {
  if (conn->prev == NULL)
    return; /* never queued */
  conn->prev->next = conn->next;
  conn->next->prev = conn->prev;
  conn->prev = conn->next = conn;
}

/* Seconds since the server started, by the wall clock: token exp is
 * wall-clock time (seconds since the epoch). */
static uint32_t wall_rel_s(const fo_server_t *srv) {
  uint64_t wall_s = fo_now_ms() / 1000, start_s = srv->start_ms / 1000;
  return wall_s > start_s ? (uint32_t)(wall_s - start_s) : 0;
}

/* Each list's one delay: that every connection joins its list with the
 * same delay is what keeps the list in deadline order. */
static int64_t delay_of(const fo_server_t *srv, int kind) {
  switch (kind) {
  case FO_CL_HANDSHAKE:
    return srv->cfg->handshake_timeout_ms;
  case FO_CL_PING:
    return srv->cfg->ping_interval_ms;
  case FO_CL_PONG:
    return srv->cfg->pong_timeout_ms;
  default: /* FO_CL_CLOSING */
    return srv->cfg->close_timeout_ms;
  }
}

void fo__conn_queue(fo_conn_t *conn, int kind) {
  fo_server_t *srv = conn->srv;
  int64_t delay_ms = delay_of(srv, kind);
  conn->deadline = uv_now(srv->loop) + (uint64_t)delay_ms;
  if (kind == FO_CL_PING || kind == FO_CL_PONG) {
    if (conn->expiring)
      return; /* walked whole every sweep: the deadline is all it needs */
    /* The next look at conn is at the deadline: if the token ends before
     * it (2 s of slack for the wall clock's steps), every sweep looks. */
    if (conn->exp_s != 0 &&
        (uint64_t)conn->exp_s <= wall_rel_s(srv) + (uint64_t)delay_ms / 1000 + 2) {
      conn->expiring = 1;
      kind = FO_CL_EXPIRING;
    }
  } else {
    conn->expiring = 0;
  }
  fo__conn_unqueue(conn);
  fo_conn_t *head = &srv->clist[kind];
  conn->next = head;
  conn->prev = head->prev;
  head->prev->next = conn;
  head->prev = conn;
}

fo_conn_t *fo__conn_after(fo_server_t *srv, fo_conn_t *c) {
  c = c == NULL ? srv->clist[0].next : c->next;
  while (is_head(srv, c)) {
    size_t kind = (size_t)(c - srv->clist);
    if (kind + 1 == FO_CL_N)
      return NULL;
    c = srv->clist[kind + 1].next;
  }
  return c;
}

fo_conn_t *fo__conn_any(fo_server_t *srv) {
  return fo__conn_after(srv, NULL);
}

/* A deadline that waits on the peer (its upgrade request, its pong, its
 * close reply) counts as missed only once an I/O poll has run after it:
 * when the loop itself stalled past the deadline (a broadcast to every
 * connection on a saturated host, a mass disconnect, the process stopped
 * or starved), what the peer sent in time may wait unread. Those get the
 * next sweep, after the next poll has read them. A connection accepted in
 * such a stall would otherwise be closed with its request unread (a reset,
 * seen at 1,000,000 connections when every client left at once). */
static bool peer_judged(const fo_conn_t *conn) {
  return conn->deadline <= conn->srv->polled_ms;
}

/* conn's deadline has come. */
static void due(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  switch (conn->state) {
  case FO_CONN_OPEN:
    /* A pong not judged yet: conn stays where it is, for the next sweep. */
    if (conn->await_pong && !peer_judged(conn))
      return;
    fo__conn_refill(conn); /* at least once a ping cycle: its 16-bit clock never wraps */
    if (conn->await_pong) {
      (*srv->m.ping_timeouts)++;
      FO_LOG_DEBUG("heartbeat", "no pong: closing", "conn=%" PRIu32, conn->id);
      fo__conn_destroy(conn);
    } else {
      conn->await_pong = 1;
      fo__conn_queue(conn, FO_CL_PONG); /* before a send that may
                                                                    * destroy it */
      fo__conn_send_now(conn, ping_for(conn));
    }
    break;
  default: /* HANDSHAKE, HTTP, CLOSING: out of time (on_sweep judged it) */
    fo__conn_destroy(conn);
    break;
  }
}

static void on_sweep(uv_timer_t *t) {
  fo_server_t *srv = t->data;
  uint64_t now = uv_now(srv->loop);
  if (srv->on_sweep != NULL)
    srv->on_sweep(srv); /* the router's settle hold (wired by server.c) */
  static const int sorted[] = {FO_CL_HANDSHAKE, FO_CL_CLOSING, FO_CL_PONG, FO_CL_PING};
  for (size_t i = 0; i < sizeof(sorted) / sizeof(sorted[0]); i++) {
    fo_conn_t *head = &srv->clist[sorted[i]];
    /* due() takes the head off this list (destroyed, or queued at the tail
     * of another); the count bounds the loop all the same. */
    for (int64_t left = srv->nconns; left > 0 && head->next != head && now >= head->next->deadline;
         left--) {
      if (sorted[i] != FO_CL_PING && !peer_judged(head->next))
        break; /* the rest of the list is later still */
      due(head->next);
    }
  }
  fo_conn_t *head = &srv->clist[FO_CL_EXPIRING];
  uint32_t now_rel_s = wall_rel_s(srv);
  fo_conn_t *conn = head->next;
  while (conn != head) {
    fo_conn_t *next = conn->next; /* destroy unlinks conn; close moves it to CLOSING */
    if (conn->state == FO_CONN_OPEN && now_rel_s >= conn->exp_s) {
      (*srv->m.token_expired)++;
      FO_LOG_DEBUG("heartbeat", "token expired: closing", "conn=%" PRIu32, conn->id);
      fo__conn_close_ws(conn, FO_WS_CLOSE_TOKEN_EXPIRED, "token expired");
    } else if (now >= conn->deadline) {
      due(conn); /* stays on this list, or is gone */
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

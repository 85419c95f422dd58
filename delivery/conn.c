/* One client connection: reading frames, the outbound queue of shared
 * frames (coalesced into one write per socket and loop turn), the close
 * handshake, and the client's join/leave/ping messages. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "delivery_int.h"
#include "http.h"
#include "json_out.h"
#include "log.h"
#include "ws.h"

#define FO_IOV_MAX 1024
#define FO_OUTQ_POOL_MAX 1024

/* Output of a busy connection; a connection with nothing queued has none. */
struct fo_outq {
  uv_write_t req;           /* req.data == this */
  fo_conn_t *conn;
  fo_outq_t *dirty_next;
  fo_buf_t **bufs;          /* one reference each */
  uint32_t n, cap;
  uint32_t inflight;        /* bufs[0..inflight) belong to req while writing */
  uint32_t off;             /* bytes of bufs[0] already written */
  uint64_t bytes;           /* bytes of bufs not yet written */
  bool dirty;
  bool writing;
};

static fo_ws_limits_t limits_of(const fo_server_t *srv) {
  fo_ws_limits_t lim = {(size_t)srv->cfg->max_frame_bytes, (size_t)srv->cfg->max_message_bytes};
  return lim;
}

void fo__conn_id_str(const fo_conn_t *conn, char *out, size_t outlen) {
  snprintf(out, outlen, "%s-%" PRIx64 "-%" PRIx32, conn->srv->cfg->server_id,
           conn->srv->start_ms, conn->id);
}

/* ---- outbound queue ---- */

static fo_outq_t *outq_get(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  fo_outq_t *q = conn->out;
  if (q != NULL)
    return q;
  q = srv->outq_pool;
  if (q != NULL) {
    srv->outq_pool = q->dirty_next;
    srv->outq_pool_n--;
  } else {
    q = calloc(1, sizeof(*q));
    if (q == NULL)
      return NULL;
  }
  q->conn = conn;
  q->req.data = q;
  q->dirty_next = NULL;
  q->n = q->inflight = q->off = 0;
  q->bytes = 0;
  q->dirty = q->writing = false;
  conn->out = q;
  return q;
}

/* Returns an empty, idle queue to the pool (keeps its bufs array). */
static void outq_put(fo_server_t *srv, fo_outq_t *q) {
  if (srv->outq_pool_n < FO_OUTQ_POOL_MAX && q->cap <= 64) {
    q->dirty_next = srv->outq_pool;
    srv->outq_pool = q;
    srv->outq_pool_n++;
  } else {
    free(q->bufs);
    free(q);
  }
}

/* Drops every reference the queue holds (not the in-flight ones when
 * keep_inflight) and fixes the byte counts. */
static void outq_drop(fo_server_t *srv, fo_outq_t *q, bool keep_inflight) {
  uint32_t from = keep_inflight && q->writing ? q->inflight : 0;
  for (uint32_t i = from; i < q->n; i++) {
    uint32_t len = q->bufs[i]->len - (i == 0 ? q->off : 0);
    q->bytes -= len;
    srv->queued_bytes -= len;
    fo_buf_unref(q->bufs[i]);
  }
  q->n = from;
  if (from == 0)
    q->off = 0;
}

void fo__outq_pool_free(fo_server_t *srv) {
  while (srv->outq_pool != NULL) {
    fo_outq_t *q = srv->outq_pool;
    srv->outq_pool = q->dirty_next;
    free(q->bufs);
    free(q);
  }
  srv->outq_pool_n = 0;
}

static void mark_dirty(fo_server_t *srv, fo_outq_t *q) {
  if (q->dirty)
    return;
  q->dirty = true;
  q->dirty_next = srv->dirty;
  srv->dirty = q;
}

static void conn_flush(fo_conn_t *conn);

/* Appends buf to conn's queue (one reference). force skips the limit. */
static int enqueue(fo_conn_t *conn, fo_buf_t *buf, bool force) {
  fo_server_t *srv = conn->srv;
  if (!force && buf->len > (uint64_t)srv->cfg->outq_max_bytes) {
    /* A frame that could never fit: drop it (counted), keep the client. */
    (*srv->m.drops)++;
    uint64_t sup = 0;
    if (fo_log_ratelimit(&srv->big_frame_rl, fo_now_ms(), 5000, &sup))
      FO_LOG_WARN("conn", "frame larger than the outbound queue limit dropped",
                  "conn=%" PRIu32 " bytes=%" PRIu32 " suppressed=%" PRIu64, conn->id, buf->len,
                  sup);
    return -EMSGSIZE;
  }
  fo_outq_t *q = outq_get(conn);
  if (q == NULL)
    return -ENOMEM;
  if (!force && q->bytes + buf->len > (uint64_t)srv->cfg->outq_max_bytes && !q->writing) {
    /* Before calling the client slow, let the kernel take what it can. */
    conn_flush(conn);
    if (conn->state != FO_CONN_OPEN)
      return -EPIPE;
    q = outq_get(conn);
    if (q == NULL)
      return -ENOMEM;
  }
  if (!force && q->bytes + buf->len > (uint64_t)srv->cfg->outq_max_bytes) {
    (*srv->m.slow_closes)++;
    (*srv->m.drops)++;
    FO_LOG_INFO("conn", "slow client closed", "conn=%" PRIu32 " queued=%" PRIu64, conn->id,
                q->bytes);
    fo__conn_close_ws(conn, FO_WS_CLOSE_TRY_AGAIN, "outbound queue full");
    return -ENOBUFS;
  }
  if (q->n == q->cap) {
    uint32_t ncap = q->cap ? q->cap * 2 : 8;
    fo_buf_t **nb = realloc(q->bufs, ncap * sizeof(*nb));
    if (nb == NULL) {
      if (q->n == 0 && !q->writing) {
        conn->out = NULL;
        outq_put(srv, q);
      }
      return -ENOMEM;
    }
    q->bufs = nb;
    q->cap = ncap;
  }
  q->bufs[q->n++] = fo_buf_ref(buf);
  q->bytes += buf->len;
  srv->queued_bytes += buf->len;
  if (srv->queued_bytes + srv->backlog_bytes > (uint64_t)srv->cfg->high_water_bytes && !srv->paused)
    fo__server_water(srv);
  mark_dirty(srv, q);
  return 0;
}

int fo__conn_send_raw(fo_conn_t *conn, fo_buf_t *buf) {
  return enqueue(conn, buf, true);
}

int fo__conn_send(fo_conn_t *conn, fo_buf_t *buf) {
  if (conn->state != FO_CONN_OPEN)
    return -EPIPE;
  int rc = enqueue(conn, buf, false);
  if (rc == 0)
    (*conn->srv->m.frames_out)++;
  else if (rc == -ENOMEM)
    (*conn->srv->m.drops)++;
  return rc;
}

/* Removes the first `bytes` written bytes from the front of the queue. */
static void consume(fo_server_t *srv, fo_outq_t *q, size_t bytes) {
  uint32_t k = 0;
  q->bytes -= bytes;
  srv->queued_bytes -= bytes;
  *srv->m.bytes_out += bytes;
  while (bytes > 0 && k < q->n) {
    size_t rem = q->bufs[k]->len - q->off;
    if (bytes >= rem) {
      bytes -= rem;
      fo_buf_unref(q->bufs[k]);
      k++;
      q->off = 0;
    } else {
      q->off += (uint32_t)bytes;
      bytes = 0;
    }
  }
  if (k > 0) {
    memmove(q->bufs, q->bufs + k, (q->n - k) * sizeof(*q->bufs));
    q->n -= k;
  }
}

static int fill_iov(fo_server_t *srv, fo_outq_t *q) {
  uint32_t n = q->n < FO_IOV_MAX ? q->n : FO_IOV_MAX;
  if (srv->iov_cap < (int)n) {
    uv_buf_t *ni = realloc(srv->iov, FO_IOV_MAX * sizeof(*ni));
    if (ni == NULL)
      return -ENOMEM;
    srv->iov = ni;
    srv->iov_cap = FO_IOV_MAX;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t o = i == 0 ? q->off : 0;
    srv->iov[i] = uv_buf_init((char *)q->bufs[i]->data + o, q->bufs[i]->len - o);
  }
  return (int)n;
}

static void on_write(uv_write_t *req, int status);

/* Writes what is queued: one uv_try_write (writev) of everything, and a
 * uv_write for whatever the socket did not take. */
static void conn_flush(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  fo_outq_t *q = conn->out;
  if (q == NULL || q->writing || conn->state == FO_CONN_DEAD)
    return;
  while (q->n > 0) {
    int n = fill_iov(srv, q);
    if (n < 0) {
      fo__conn_destroy(conn);
      return;
    }
    int r = uv_try_write((uv_stream_t *)&conn->tcp, srv->iov, (unsigned)n);
    if (r == UV_EAGAIN || r == UV_ENOSYS)
      r = 0;
    if (r < 0) {
      fo__conn_destroy(conn);
      return;
    }
    consume(srv, q, (size_t)r);
    if (q->n == 0)
      break;
    /* The socket is full (or more than FO_IOV_MAX frames): hand the rest to libuv. */
    n = fill_iov(srv, q);
    if (n < 0) {
      fo__conn_destroy(conn);
      return;
    }
    int rc = uv_write(&q->req, (uv_stream_t *)&conn->tcp, srv->iov, (unsigned)n, on_write);
    if (rc != 0) {
      fo__conn_destroy(conn);
      return;
    }
    q->writing = true;
    q->inflight = (uint32_t)n;
    return;
  }
  conn->out = NULL;
  if (!q->dirty)
    outq_put(srv, q);
  else
    q->conn = NULL; /* still on the dirty list: fo__server_flush recycles it */
  if (conn->close_after_flush)
    fo__conn_destroy(conn);
}

static void on_write(uv_write_t *req, int status) {
  fo_outq_t *q = req->data;
  fo_conn_t *conn = q->conn;
  fo_server_t *srv = conn->srv;
  size_t written = 0;
  q->writing = false;
  if (status < 0 || conn->state == FO_CONN_DEAD) {
    /* The close callback frees the queue; only drop the in-flight frames. */
    uint32_t n = q->inflight;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t len = q->bufs[i]->len - (i == 0 ? q->off : 0);
      q->bytes -= len;
      srv->queued_bytes -= len;
      fo_buf_unref(q->bufs[i]);
    }
    memmove(q->bufs, q->bufs + n, (q->n - n) * sizeof(*q->bufs));
    q->n -= n;
    q->off = 0;
    q->inflight = 0;
    fo__conn_destroy(conn);
    return;
  }
  for (uint32_t i = 0; i < q->inflight; i++)
    written += q->bufs[i]->len - (i == 0 ? q->off : 0);
  consume(srv, q, written);
  q->inflight = 0;
  if (srv->paused && srv->queued_bytes + srv->backlog_bytes < (uint64_t)srv->cfg->low_water_bytes)
    fo__server_water(srv);
  conn_flush(conn);
}

void fo__conn_flush(fo_conn_t *conn) {
  conn_flush(conn);
}

void fo__server_flush(fo_server_t *srv) {
  while (srv->dirty != NULL) {
    fo_outq_t *q = srv->dirty;
    srv->dirty = q->dirty_next;
    q->dirty_next = NULL;
    q->dirty = false;
    if (q->conn == NULL) {     /* emptied and detached while dirty */
      outq_put(srv, q);
      continue;
    }
    if (q->conn->state == FO_CONN_DEAD)
      continue;                /* the close callback frees it */
    conn_flush(q->conn);
  }
  if (srv->paused && srv->queued_bytes + srv->backlog_bytes < (uint64_t)srv->cfg->low_water_bytes)
    fo__server_water(srv);
  if (srv->fanout_t0 != 0) {
    *srv->m.last_fanout_us = (int64_t)((uv_hrtime() - srv->fanout_t0) / 1000);
    srv->fanout_t0 = 0;
  }
}

/* ---- lifecycle ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  fo_conn_t *conn = h->data;
  fo_server_t *srv = conn->srv;
  /* One buffer per loop: read callbacks consume or copy it before returning. */
  *buf = uv_buf_init((char *)srv->rbuf, (unsigned)srv->rbuf_len);
}

static void unregister(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  if (!conn->registered)
    return;
  conn->registered = 0;
  fo__rooms_leave_all(conn);
  fo__rreg_conn_removed(srv, conn);
  fo__registry_remove(conn);
  fo__perm_release(conn);
  srv->nopen--;
  (*srv->m.connections)--;
  if (srv->draining)
    fo__server_drain_check(srv);
}

static void on_close(uv_handle_t *h) {
  fo_conn_t *conn = h->data;
  fo_server_t *srv = conn->srv;
  if (conn->out != NULL) {
    fo_outq_t *q = conn->out;
    outq_drop(srv, q, false);
    conn->out = NULL;
    if (q->dirty)
      q->conn = NULL; /* fo__server_flush recycles it (never happens: check runs first) */
    else
      outq_put(srv, q);
  }
  if (conn->in != NULL) {
    fo_ws_rx_t *rx = conn->in;
    fo_ws_rx_free(&rx);
    conn->in = NULL;
  }
  srv->nconns--;
  free(conn);
  if (srv->draining)
    fo__server_drain_check(srv);
}

void fo__conn_destroy(fo_conn_t *conn) {
  if (conn->state == FO_CONN_DEAD)
    return;
  if (conn->state == FO_CONN_HANDSHAKE || conn->state == FO_CONN_HTTP)
    fo__handshake_free(conn);
  unregister(conn);
  conn->state = FO_CONN_DEAD;
  conn->prev->next = conn->next;
  conn->next->prev = conn->prev;
  conn->prev = conn->next = conn;
  uv_close((uv_handle_t *)&conn->tcp, on_close);
}

static fo_buf_t *close_frame(fo_server_t *srv, uint16_t code, const char *reason) {
  uint8_t pl[125];
  size_t n = 0;
  if (code != 0) {
    pl[0] = (uint8_t)(code >> 8);
    pl[1] = (uint8_t)code;
    n = 2;
    if (reason != NULL) {
      size_t rl = strlen(reason);
      if (rl > sizeof(pl) - 2)
        rl = sizeof(pl) - 2;
      memcpy(pl + 2, reason, rl);
      n += rl;
    }
  }
  return fo__frame_new(srv, FO_WS_OP_CLOSE, pl, n);
}

void fo__conn_close_ws(fo_conn_t *conn, uint16_t code, const char *reason) {
  fo_server_t *srv = conn->srv;
  if (conn->state != FO_CONN_OPEN) {
    if (conn->state == FO_CONN_HANDSHAKE)
      fo__conn_destroy(conn);
    return;
  }
  unregister(conn);
  conn->state = FO_CONN_CLOSING;
  conn->deadline = uv_now(srv->loop) + (uint64_t)srv->cfg->close_timeout_ms;
  if (conn->out != NULL)
    outq_drop(srv, conn->out, true);  /* a closing client gets no more data */
  fo_buf_t *buf = close_frame(srv, code, reason);
  if (buf == NULL || enqueue(conn, buf, true) != 0) {
    fo_buf_unref(buf);
    fo__conn_destroy(conn);
    return;
  }
  fo_buf_unref(buf);
  if (conn->peer_closed)
    conn->close_after_flush = 1;
}

/* Called by the handshake once the 101 is queued. */
void fo__conn_opened(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  conn->state = FO_CONN_OPEN;
  conn->registered = 1;
  conn->deadline = uv_now(srv->loop) + (uint64_t)srv->cfg->ping_interval_ms;
  srv->nopen++;
  (*srv->m.connections)++;
  fo__rreg_conn_added(srv, conn);
}

/* ---- client messages ---- */

int fo__conn_send_text(fo_conn_t *conn, const char *s, size_t n) {
  fo_buf_t *buf = fo__frame_new(conn->srv, FO_WS_OP_TEXT, s, n);
  if (buf == NULL)
    return -ENOMEM;
  int rc = fo__conn_send(conn, buf);
  fo_buf_unref(buf);
  return rc;
}

static void reply_room(fo_conn_t *conn, const char *type, const char *room, size_t len) {
  fo_sb_t *sb = &conn->srv->scratch;
  fo_sb_reset(sb);
  fo_sb_puts(sb, "{\"type\":\"");
  fo_sb_puts(sb, type);
  fo_sb_puts(sb, "\",\"room\":");
  fo_json_put_str(sb, room, len);
  fo_sb_putc(sb, '}');
  if (!sb->oom)
    fo__conn_send_text(conn, sb->data, sb->len);
}

static void reply_error(fo_conn_t *conn, const char *code, const char *msg) {
  fo_sb_t *sb = &conn->srv->scratch;
  fo_sb_reset(sb);
  fo_sb_puts(sb, "{\"type\":\"error\",\"code\":\"");
  fo_sb_puts(sb, code);
  fo_sb_puts(sb, "\",\"message\":");
  fo_json_put_str(sb, msg, strlen(msg));
  fo_sb_putc(sb, '}');
  if (!sb->oom)
    fo__conn_send_text(conn, sb->data, sb->len);
}

void fo__client_message(fo_conn_t *conn, const uint8_t *p, size_t n) {
  json_error_t jerr;
  json_t *msg = json_loadb((const char *)p, n, 0, &jerr);
  const char *type = json_string_value(json_object_get(msg, "type"));
  if (type == NULL) {
    reply_error(conn, "bad_request", "expected a JSON object with a \"type\"");
    goto out;
  }
  if (strcmp(type, "ping") == 0) {
    static const char pong[] = "{\"type\":\"pong\"}";
    fo__conn_send_text(conn, pong, sizeof(pong) - 1);
  } else if (strcmp(type, "join") == 0 || strcmp(type, "leave") == 0) {
    json_t *room = json_object_get(msg, "room");
    const char *name = json_string_value(room);
    size_t len = json_string_length(room);
    if (name == NULL || len == 0 || len > 256) {
      reply_error(conn, "bad_request", "\"room\" must be a non-empty string of at most 256 bytes");
      goto out;
    }
    if (type[0] == 'l') {
      fo__room_leave(conn, name, len);
      reply_room(conn, "left", name, len);
      goto out;
    }
    int rc = fo__room_join(conn, name, len);
    if (rc == 0)
      reply_room(conn, "joined", name, len);
    else if (rc == -EPERM)
      reply_error(conn, "forbidden", "not allowed to join this room");
    else if (rc == -E2BIG)
      reply_error(conn, "too_many_rooms", "room limit per connection reached");
    else
      reply_error(conn, "internal", "out of memory");
  } else {
    reply_error(conn, "bad_request", "unknown message type");
  }
out:
  json_decref(msg);
}

/* ---- reading ---- */

static int on_ws_msg(void *ud, int opcode, uint8_t *p, size_t n) {
  fo_conn_t *conn = ud;
  fo_server_t *srv = conn->srv;
  switch (opcode) {
  case FO_WS_OP_TEXT:
    if (conn->state == FO_CONN_OPEN)
      fo__client_message(conn, p, n);
    break;
  case FO_WS_OP_BINARY:
    if (conn->state == FO_CONN_OPEN)
      reply_error(conn, "bad_request", "binary messages are not supported");
    break;
  case FO_WS_OP_PING:
    if (conn->state == FO_CONN_OPEN) {
      fo_buf_t *buf = fo__frame_new(srv, FO_WS_OP_PONG, p, n);
      if (buf != NULL) {
        /* Counted against the queue limit: a client that pings and never
         * reads is a slow client like any other. */
        enqueue(conn, buf, false);
        fo_buf_unref(buf);
      }
    }
    break;
  case FO_WS_OP_PONG:
    if (conn->state == FO_CONN_OPEN && conn->await_pong) {
      conn->await_pong = 0;
      conn->deadline = uv_now(srv->loop) + (uint64_t)srv->cfg->ping_interval_ms;
    }
    break;
  case FO_WS_OP_CLOSE:
    conn->peer_closed = 1;
    if (conn->state == FO_CONN_CLOSING) {
      /* Our close was answered: done once it has left the queue. */
      if (conn->out == NULL)
        fo__conn_destroy(conn);
      else
        conn->close_after_flush = 1;
      return 1;
    }
    {
      uint16_t code = n >= 2 ? (uint16_t)((p[0] << 8) | p[1]) : 0;
      fo__conn_close_ws(conn, code, NULL);
      conn->close_after_flush = 1;
    }
    return 1;
  }
  return conn->state == FO_CONN_DEAD ? 1 : 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  fo_conn_t *conn = s->data;
  fo_server_t *srv = conn->srv;
  if (nread == 0)
    return;
  if (nread < 0) {
    fo__conn_destroy(conn);
    return;
  }
  if (conn->state == FO_CONN_HANDSHAKE) {
    fo__handshake_feed(conn, (uint8_t *)buf->base, (size_t)nread);
    return;
  }
  if (conn->state == FO_CONN_HTTP || conn->state == FO_CONN_DEAD)
    return; /* answering a plain request: ignore the rest */
  if (conn->peer_closed || conn->rx_broken)
    return;
  fo_ws_limits_t lim = limits_of(srv);
  fo_ws_rx_t *rx = conn->in;
  int rc = fo_ws_rx_feed(&rx, (uint8_t *)buf->base, (size_t)nread, &lim, on_ws_msg, conn);
  conn->in = rx;
  if (rc > 1 || rc < 0) {
    (*srv->m.protocol_errors)++;
    fo_ws_rx_free(&rx);
    conn->in = NULL;
    /* The byte stream cannot be parsed any further: ignore the rest, send
     * the close frame and drop the socket once it is written (RFC 6455 7.1.7). */
    conn->rx_broken = 1;
    conn->close_after_flush = 1;
    if (rc < 0)
      fo__conn_destroy(conn);
    else if (conn->state == FO_CONN_OPEN)
      fo__conn_close_ws(conn, (uint16_t)rc,
                        rc == FO_WS_CLOSE_TOO_BIG  ? "message too big"
                        : rc == FO_WS_CLOSE_BAD_DATA ? "invalid UTF-8"
                                                     : "protocol error");
    else if (conn->out == NULL)
      fo__conn_destroy(conn);
  }
}

/* Feeds bytes that arrived with the upgrade request. */
void fo__conn_feed_early(fo_conn_t *conn, uint8_t *p, size_t n) {
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  on_read((uv_stream_t *)&conn->tcp, (ssize_t)n, &b);
}

int fo__conn_accept(fo_server_t *srv) {
  fo_conn_t *conn = calloc(1, sizeof(*conn));
  int rc;
  if (conn == NULL)
    return -ENOMEM;
  conn->srv = srv;
  rc = uv_tcp_init(srv->loop, &conn->tcp);
  if (rc != 0)
    goto fail_free;
  conn->tcp.data = conn;
  conn->prev = conn->next = conn;
  /* Sockets that are not open WebSockets (handshakes, HTTP answers, closing)
   * cost a descriptor and kernel memory before anyone authenticated: past
   * the cap a new one is taken off the backlog and closed at once. */
  bool over = srv->nconns - srv->nopen >= srv->cfg->max_pending_handshakes;
  srv->nconns++;
  rc = uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&conn->tcp);
  if (rc != 0)
    goto fail_close;
  if (over) {
    (*srv->m.rejected_pending)++;
    rc = 0; /* refused on purpose: not an accept failure to log */
    goto fail_close;
  }
  uv_tcp_nodelay(&conn->tcp, 1);
  conn->id = ++srv->next_conn_id;
  conn->state = FO_CONN_HANDSHAKE;
  conn->deadline = uv_now(srv->loop) + (uint64_t)srv->cfg->handshake_timeout_ms;
  /* link into the server's list */
  conn->next = srv->conns.next;
  conn->prev = &srv->conns;
  srv->conns.next->prev = conn;
  srv->conns.next = conn;
  (*srv->m.accepted)++;
  rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
  if (rc != 0) {
    fo__conn_destroy(conn);
    return rc;
  }
  return 0;
fail_close:
  conn->state = FO_CONN_DEAD;
  uv_close((uv_handle_t *)&conn->tcp, on_close);
  return rc;
fail_free:
  free(conn);
  return rc;
}

/* One client connection: reading frames, the outbound queue of shared
 * frames (coalesced into one write per socket and loop turn), the close
 * handshake, and the client's join/leave/ping messages. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "delivery_int.h"
#include "digits.h"
#include "frame.h"
#include "handshake.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "ws.h"

#define FO_IOV_MAX       1024
#define FO_OUTQ_POOL_MAX 1024

/* Output of a busy connection; a connection with nothing queued has none. */
struct fo_outq {
  uv_write_t req; /* req.data == this */
  fo_conn_t *conn;
  fo_outq_t *dirty_next;
  fo_buf_t **bufs; /* one reference each */
  uint32_t n, cap;
  uint32_t inflight; /* bufs[0..inflight) belong to req while writing */
  uint32_t off;      /* bytes of bufs[0] already written */
  uint64_t bytes;    /* what bufs cost: the sum of frame_cost() */
  bool dirty;
  bool writing;
};

/* What one queued frame costs, charged to its queue's --outq-max-bytes
 * and to the flow's queued bytes (the water marks, flow.h): the glibc chunk that holds
 * the fo_buf_t (header, data rounded up to 16 with 8 bytes of chunk
 * header, 32 at least) plus two pointer slots in q->bufs (one, and up to
 * one more of slack as the array doubles). A shared broadcast frame is
 * charged the same to every queue that holds it: its memory is freed only
 * when the last holder lets go, so one client that does not read keeps the
 * whole allocation alive; this over-counts a broadcast on the server total,
 * as counting its length per recipient did before. A 2-byte pong costs 48,
 * not 2: a client cannot pin memory with many tiny replies. Depends only on
 * buf->cap, which never changes, so adding and removing match. */
static uint64_t chunk_cost(const fo_buf_t *buf) {
  uint64_t chunk = (sizeof(fo_buf_t) + (uint64_t)buf->cap + 8 + 15) & ~(uint64_t)15;
  return chunk < 32 ? 32 : chunk;
}

#define SLOT_COST (2 * sizeof(fo_buf_t *))

static uint64_t frame_cost(const fo_buf_t *buf) {
  return chunk_cost(buf) + SLOT_COST;
}

/* The server total (the flow, against the water marks) counts real memory:
 * a slot per queue, and a frame's allocation once while any queue holds it.
 * Charging a broadcast's allocation once per recipient, as the per-queue
 * limit must, made a burst of 100 broadcasts to 15,000 sockets look like
 * 290 MB and paused Kafka at the 256 MiB high-water mark. */
static void flow_charge(fo_server_t *srv, fo_buf_t *buf) {
  uint64_t d = SLOT_COST + (buf->queued++ == 0 ? chunk_cost(buf) : 0);
  fo_flow_queued(srv->flow, (int64_t)d);
}

static void flow_uncharge(fo_server_t *srv, fo_buf_t *buf) {
  uint64_t d = SLOT_COST + (--buf->queued == 0 ? chunk_cost(buf) : 0);
  fo_flow_queued(srv->flow, -(int64_t)d);
}

/* Reading stops above this much queued (see read_update). */
static uint64_t pause_at(const fo_server_t *srv) {
  uint64_t half = (uint64_t)srv->cfg->outq_max_bytes / 2;
  uint64_t at = (uint64_t)srv->cfg->read_pause_bytes;
  return at < half ? at : half;
}

static fo_ws_limits_t limits_of(const fo_server_t *srv) {
  fo_ws_limits_t lim = {(size_t)srv->cfg->max_frame_bytes, (size_t)srv->cfg->max_message_bytes};
  return lim;
}

/* "%s-%" PRIx64 "-%" PRIx32, by hand: the registry pass builds one for every
 * open connection a minute, and snprintf was a sixth of that pass's CPU. */
void fo__conn_id_str(const fo_conn_t *conn, char *out, size_t outlen) {
  const char *sid = conn->srv->cfg->server_id;
  size_t sl = strlen(sid);
  if (sl > FO_SERVER_ID_MAX || outlen < FO_CONN_ID_LEN) { /* never, for ids we accept */
    snprintf(out, outlen, "%s-%" PRIx64 "-%" PRIx32, sid, conn->srv->start_ms, conn->id);
    return;
  }
  memcpy(out, sid, sl);
  char *p = out + sl;
  *p++ = '-';
  p += fo_put_hex(p, conn->srv->start_ms, 1);
  *p++ = '-';
  p += fo_put_hex(p, conn->id, 1);
  *p = '\0';
}

/* ---- connection slabs ---- */

_Static_assert(offsetof(fo_conn_t, tcp) == 0 && offsetof(uv_tcp_t, data) == 0 &&
                   offsetof(fo_conn_t, srv) == offsetof(uv_tcp_t, data),
               "fo__conn_of casts the handle; srv is the handle's data pointer");
_Static_assert(sizeof(void *) != 8 || sizeof(fo_conn_t) == FO_CONN_SIZE,
               "fo_conn_t changed size: see FO_CONN_SIZE");

/* Connections come from slabs of CONN_SLAB, not one malloc each: glibc
 * adds 8 bytes of header to a chunk and rounds it to 16 (352 bytes take
 * 368), at ~550 bytes a connection in all. Free slots are kept for the
 * next connections and the slabs until fo_server_cleanup: what a process
 * holds is its peak of connections (capped by --max-connections), about
 * what malloc kept of freed connections anyway, scattered between other
 * chunks. Under AddressSanitizer each connection is its own allocation, so
 * a use after free is still caught. */
#define CONN_SLAB 64

typedef struct conn_slab {
  struct conn_slab *next;
  fo_conn_t c[CONN_SLAB];
} conn_slab_t;

#if defined(__SANITIZE_ADDRESS__)
#define FO_CONN_SLABS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FO_CONN_SLABS 0
#endif
#endif
#ifndef FO_CONN_SLABS
#define FO_CONN_SLABS 1
#endif

static fo_conn_t *conn_alloc(fo_server_t *srv) {
  if (!FO_CONN_SLABS)
    return calloc(1, sizeof(fo_conn_t));
  if (srv->conn_free == NULL) {
    conn_slab_t *s = malloc(sizeof(*s));
    if (s == NULL)
      return NULL;
    s->next = srv->conn_slabs;
    srv->conn_slabs = s;
    for (int i = CONN_SLAB - 1; i >= 0; i--) {
      s->c[i].next = srv->conn_free;
      srv->conn_free = &s->c[i];
    }
  }
  fo_conn_t *conn = srv->conn_free;
  srv->conn_free = conn->next;
  memset(conn, 0, sizeof(*conn));
  return conn;
}

static void conn_release(fo_server_t *srv, fo_conn_t *conn) {
  if (!FO_CONN_SLABS) {
    free(conn);
    return;
  }
  conn->next = srv->conn_free;
  srv->conn_free = conn;
}

void fo__conn_pool_free(fo_server_t *srv) {
  while (srv->conn_slabs != NULL) {
    conn_slab_t *s = srv->conn_slabs;
    srv->conn_slabs = s->next;
    free(s);
  }
  srv->conn_free = NULL;
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

/* Takes frame i off the books and drops the queue's reference. */
static void uncharge(fo_server_t *srv, fo_outq_t *q, uint32_t i) {
  q->bytes -= frame_cost(q->bufs[i]);
  flow_uncharge(srv, q->bufs[i]);
  fo_buf_unref(q->bufs[i]);
}

/* Drops every reference the queue holds (not the in-flight ones when
 * keep_inflight) and fixes the byte counts. */
static void outq_drop(fo_server_t *srv, fo_outq_t *q, bool keep_inflight) {
  uint32_t from = keep_inflight && q->writing ? q->inflight : 0;
  for (uint32_t i = from; i < q->n; i++)
    uncharge(srv, q, i);
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
static void close_ws(fo_conn_t *conn, uint16_t code, const char *reason, bool drop_queue);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Input backpressure: a connection whose queue costs more than pause_at()
 * is not read (uv_read_stop) until the queue drains below it, so a client
 * that sends and does not read stops making replies. While a protocol ping
 * waits for its pong it is read anyway: the pong must be seen, or a slow
 * client that still answers would be closed as dead. That window is
 * bounded too: by the queue limit (1013) and the rate limit (1008). A
 * client that does not read our ping cannot answer it and is closed by the
 * sweep at the pong deadline, as before. */
static void read_update(fo_conn_t *conn) {
  if (conn->state != FO_CONN_OPEN && conn->state != FO_CONN_CLOSING)
    return;
  fo_server_t *srv = conn->srv;
  uint64_t cost = conn->out != NULL ? conn->out->bytes : 0;
  bool pause = (cost > pause_at(srv) && !conn->await_pong) || conn->hold_input;
  if (pause == (bool)conn->read_paused)
    return;
  conn->read_paused = pause;
  if (pause) {
    if (!conn->hold_input)
      (*srv->m.read_pauses)++;
    uv_read_stop((uv_stream_t *)&conn->tcp);
  } else if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) != 0) {
    /* Cannot happen on an open handle; if it did, the pong deadline ends it. */
    FO_LOG_WARN("conn", "could not resume reading", "conn=%" PRIu32, conn->id);
  }
}

/* RFC 6455 5.5.3 lets a pong answer only the latest ping: if the last
 * queued frame is a pong of ours that no write has taken yet, the new
 * payload replaces its own (pongs are allocated for 125 bytes), so a ping
 * flood holds one pong. Only the tail is looked at: replies keep their
 * order relative to everything else. */
static fo_buf_t *unsent_tail(fo_conn_t *conn) {
  fo_outq_t *q = conn->out;
  if (q == NULL || q->n == 0)
    return NULL;
  uint32_t i = q->n - 1;
  if ((q->writing && i < q->inflight) || (i == 0 && q->off > 0))
    return NULL;
  fo_buf_t *buf = q->bufs[i];
  return buf->refs == 1 ? buf : NULL; /* 1: only this queue holds it, a reply */
}

static bool pong_collapse(fo_conn_t *conn, const uint8_t *p, size_t n) {
  fo_buf_t *buf = unsent_tail(conn);
  if (buf == NULL || buf->len < 2 || buf->data[0] != (0x80 | FO_WS_OP_PONG) || buf->cap < n + 2)
    return false;
  buf->len = (uint32_t)fo_ws_header(buf->data, FO_WS_OP_PONG, true, n);
  memcpy(buf->data + buf->len, p, n);
  buf->len += (uint32_t)n;
  return true;
}

/* The same for {"type":"pong"}: while one is queued and unsent, another
 * would say nothing new. */
static bool app_pong_queued(fo_conn_t *conn) {
  fo_buf_t *buf = unsent_tail(conn);
  return buf != NULL && buf->len == 2 + FO_PROTO_PONG_LEN &&
         buf->data[0] == (0x80 | FO_WS_OP_TEXT) && buf->data[1] == FO_PROTO_PONG_LEN &&
         memcmp(buf->data + 2, FO_PROTO_PONG, FO_PROTO_PONG_LEN) == 0;
}

/* Appends buf to conn's queue (one reference). force skips the limit. */
static int enqueue(fo_conn_t *conn, fo_buf_t *buf, bool force) {
  fo_server_t *srv = conn->srv;
  uint64_t cost = frame_cost(buf);
  if (!force && cost > (uint64_t)srv->cfg->outq_max_bytes) {
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
  if (!force && q->bytes + cost > (uint64_t)srv->cfg->outq_max_bytes && !q->writing) {
    /* Before calling the client slow, let the kernel take what it can. */
    conn_flush(conn);
    if (conn->state != FO_CONN_OPEN)
      return -EPIPE;
    q = outq_get(conn);
    if (q == NULL)
      return -ENOMEM;
  }
  if (!force && q->bytes + cost > (uint64_t)srv->cfg->outq_max_bytes) {
    (*srv->m.slow_closes)++;
    (*srv->m.drops)++;
    FO_LOG_INFO("conn", "slow client closed", "conn=%" PRIu32 " queued=%" PRIu64, conn->id,
                q->bytes);
    close_ws(conn, FO_WS_CLOSE_TRY_AGAIN, "outbound queue full", true);
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
  q->bytes += cost;
  flow_charge(srv, buf);
  mark_dirty(srv, q);
  read_update(conn);
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

/* The heartbeat's ping to a connection with nothing queued goes straight
 * to the socket: through the queue, every connection due in one sweep got
 * an outbound queue at once (15,000 at a time after a mass connect), freed
 * by the next flush but kept by malloc, which is what made an idle
 * connection cost 720-777 B instead of 461 after a minute of heartbeats. A
 * busy connection, or a socket that takes only part of it, queues it. */
int fo__conn_send_now(fo_conn_t *conn, fo_buf_t *buf) {
  fo_server_t *srv = conn->srv;
  if (conn->state != FO_CONN_OPEN || conn->out != NULL)
    return fo__conn_send(conn, buf);
  /* send(), not uv_try_write's write(): write() goes through the VFS
   * layer first (fdget_pos, rw_verify_area, fsnotify), an eighth of the
   * ping's own system call time in perf. Nothing of libuv's is pending
   * (conn->out == NULL: no uv_write in flight), so writing past it keeps
   * the byte order. */
  uv_os_fd_t fd;
  if (uv_fileno((const uv_handle_t *)&conn->tcp, &fd) != 0)
    return fo__conn_send(conn, buf);
  ssize_t r;
  do
    r = send(fd, buf->data, buf->len, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  if (r == 0 || (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)))
    return fo__conn_send(conn, buf);
  if (r < 0) {
    fo__conn_destroy(conn);
    return -EPIPE;
  }
  *srv->m.bytes_out += (uint64_t)r;
  if ((uint32_t)r == buf->len) {
    (*srv->m.frames_out)++;
    return 0;
  }
  fo_buf_t *rest = fo_buf_new(buf->len - (uint32_t)r); /* the frame's tail, queued */
  if (rest == NULL) {
    fo__conn_destroy(conn); /* half a frame on the wire: the stream is broken */
    return -ENOMEM;
  }
  memcpy(rest->data, buf->data + r, buf->len - (uint32_t)r);
  rest->len = buf->len - (uint32_t)r;
  int rc = fo__conn_send(conn, rest);
  fo_buf_unref(rest);
  return rc;
}

/* Removes the first `bytes` written bytes from the front of the queue; a
 * frame is uncharged once all of it is written. */
static void consume(fo_server_t *srv, fo_outq_t *q, size_t bytes) {
  uint32_t k = 0;
  *srv->m.bytes_out += bytes;
  while (bytes > 0 && k < q->n) {
    size_t rem = q->bufs[k]->len - q->off;
    if (bytes >= rem) {
      bytes -= rem;
      uncharge(srv, q, k);
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
    read_update(conn);
    return;
  }
  conn->out = NULL;
  if (!q->dirty)
    outq_put(srv, q);
  else
    q->conn = NULL; /* still on the dirty list: fo__server_flush recycles it */
  if (conn->close_after_flush)
    fo__conn_destroy(conn);
  else
    read_update(conn);
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
    for (uint32_t i = 0; i < n; i++)
      uncharge(srv, q, i);
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
    if (q->conn == NULL) { /* emptied and detached while dirty */
      outq_put(srv, q);
      continue;
    }
    if (q->conn->state == FO_CONN_DEAD)
      continue; /* the close callback frees it */
    conn_flush(q->conn);
  }
  if (srv->fanout_t0 != 0) {
    *srv->m.last_fanout_us = (int64_t)((uv_hrtime() - srv->fanout_t0) / 1000);
    srv->fanout_t0 = 0;
  }
}

/* ---- lifecycle ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  fo_conn_t *conn = fo__conn_of(h);
  fo_server_t *srv = conn->srv;
  /* One buffer per loop: read callbacks consume or copy it before returning. */
  *buf = uv_buf_init((char *)srv->rbuf, (unsigned)srv->rbuf_len);
}

static void unregister(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  if (!conn->registered)
    return;
  conn->registered = 0;
  if (srv->conn_ev.closed != NULL)
    srv->conn_ev.closed(conn); /* rooms, Redis registry, user */
  srv->nopen--;
  (*srv->m.connections)--;
}

static void on_close(uv_handle_t *h) {
  fo_conn_t *conn = fo__conn_of(h);
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
  if (conn->in != NULL && conn->hold_input) {
    fo_buf_t *early = conn->in; /* bytes glued to the upgrade (see fo__conn_feed_early) */
    srv->rx_bytes -= early->len;
    fo_buf_unref(early);
    conn->in = NULL;
  } else if (conn->in != NULL) {
    fo_ws_rx_t *rx = conn->in;
    srv->rx_bytes -= fo_ws_rx_bytes(rx);
    fo_ws_rx_free(&rx);
    conn->in = NULL;
  }
  srv->nconns--;
  conn_release(srv, conn);
}

/* A connection left the not-upgraded-yet states (opened, or destroyed). */
static void srv_pending_done(fo_server_t *srv) {
  if (srv->npending > 0)
    srv->npending--;
}

void fo__conn_destroy(fo_conn_t *conn) {
  if (conn->state == FO_CONN_DEAD)
    return;
  if (conn->state == FO_CONN_HANDSHAKE || conn->state == FO_CONN_HTTP) {
    fo__handshake_free(conn);
    srv_pending_done(conn->srv);
  }
  unregister(conn);
  conn->state = FO_CONN_DEAD;
  fo__conn_unqueue(conn);
  uv_close((uv_handle_t *)&conn->tcp, on_close);
}

static fo_buf_t *close_frame(uint16_t code, const char *reason) {
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
  return fo_frame_new(FO_WS_OP_CLOSE, pl, n);
}

/* Frames queued before the close go out before it (RFC 6455: a pong for a
 * ping read just before the peer's close, the reply to a message read just
 * before a protocol violation). Only drop_queue (the slow-client close: its
 * queue is what is wrong) throws them away. Nothing is queued after it:
 * fo__conn_send refuses a closing connection. */
static void close_ws(fo_conn_t *conn, uint16_t code, const char *reason, bool drop_queue) {
  fo_server_t *srv = conn->srv;
  if (conn->state != FO_CONN_OPEN) {
    if (conn->state == FO_CONN_HANDSHAKE)
      fo__conn_destroy(conn);
    return;
  }
  unregister(conn);
  conn->state = FO_CONN_CLOSING;
  fo__conn_queue(conn, FO_CL_CLOSING);
  if (drop_queue && conn->out != NULL)
    outq_drop(srv, conn->out, true);
  fo_buf_t *buf = close_frame(code, reason);
  if (buf == NULL || enqueue(conn, buf, true) != 0) {
    fo_buf_unref(buf);
    fo__conn_destroy(conn);
    return;
  }
  fo_buf_unref(buf);
  if (conn->peer_closed)
    conn->close_after_flush = 1;
}

void fo__conn_close_ws(fo_conn_t *conn, uint16_t code, const char *reason) {
  close_ws(conn, code, reason, false);
}

void fo__conn_release_input(fo_conn_t *conn) {
  if (!conn->hold_input)
    return;
  conn->hold_input = 0;
  fo_buf_t *early = conn->in; /* only the stash can be there while input is held */
  conn->in = NULL;
  if (early != NULL) {
    conn->srv->rx_bytes -= early->len;
    if (conn->state == FO_CONN_OPEN)
      fo__conn_feed_early(conn, early->data, early->len);
    fo_buf_unref(early);
  }
  if (conn->state == FO_CONN_OPEN || conn->state == FO_CONN_CLOSING)
    read_update(conn);
}

/* Called by the handshake once the 101 is queued. */
void fo__conn_opened(fo_conn_t *conn, const char *since, size_t slen) {
  fo_server_t *srv = conn->srv;
  srv_pending_done(srv);
  conn->state = FO_CONN_OPEN;
  conn->registered = 1;
  fo__conn_queue(conn, FO_CL_PING);
  conn->tokens = (uint16_t)srv->cfg->client_msg_burst;
  conn->refill_s = (uint16_t)(uv_now(srv->loop) / 1000);
  srv->nopen++;
  (*srv->m.connections)++;
  if (srv->conn_ev.opened != NULL)
    srv->conn_ev.opened(conn, since, slen);
  /* The welcome may still be in the making (stream.c): no client frame is
   * read before it is queued, so that it is the first frame either way. */
  read_update(conn);
}

/* ---- client messages ---- */

int fo__conn_send_text(fo_conn_t *conn, const char *s, size_t n) {
  fo_buf_t *buf = fo_frame_new(FO_WS_OP_TEXT, s, n);
  if (buf == NULL)
    return -ENOMEM;
  int rc = fo__conn_send(conn, buf);
  fo_buf_unref(buf);
  return rc;
}

static void reply_room(fo_conn_t *conn, int joined, const char *room, size_t len) {
  fo_sb_t *sb = &conn->srv->scratch;
  if (fo_proto_room_reply(sb, joined, room, len) == 0)
    fo__conn_send_text(conn, sb->data, sb->len);
}

static void reply_error(fo_conn_t *conn, const char *code, const char *msg) {
  fo_sb_t *sb = &conn->srv->scratch;
  if (fo_proto_error(sb, code, msg) == 0)
    fo__conn_send_text(conn, sb->data, sb->len);
}

static int room_event(fo_conn_t *conn, const fo_proto_msg_t *msg, bool join) {
  fo_server_t *srv = conn->srv;
  return srv->conn_ev.room != NULL
             ? srv->conn_ev.room(conn, msg->room, msg->room_len, join, msg->has_since,
                                 msg->since_len > 0 ? msg->since : NULL, msg->since_len)
             : -EPERM;
}

void fo__client_message(fo_conn_t *conn, const uint8_t *p, size_t n) {
  fo_proto_msg_t msg;
  switch (fo_proto_parse(p, n, &msg)) {
  case FO_PROTO_BAD:
    reply_error(conn, msg.err_code, msg.err_msg);
    break;
  case FO_PROTO_PING:
    if (!app_pong_queued(conn))
      fo__conn_send_text(conn, FO_PROTO_PONG, FO_PROTO_PONG_LEN);
    break;
  case FO_PROTO_CLIENT_PONG:
    fo__heartbeat_pong(conn);
    break;
  case FO_PROTO_LEAVE:
    room_event(conn, &msg, false);
    reply_room(conn, 0, msg.room, msg.room_len);
    break;
  case FO_PROTO_JOIN: {
    /* Answered (joined, with its position) by the receiver when it worked. */
    int rc = room_event(conn, &msg, true);
    if (rc == -EPERM)
      reply_error(conn, "forbidden", "not allowed to join this room");
    else if (rc == -E2BIG)
      reply_error(conn, "too_many_rooms", "room limit per connection reached");
    else if (rc != 0)
      reply_error(conn, "internal", "out of memory");
    break;
  }
  }
}

/* ---- rate limit ---- */

/* One token bucket per connection for what makes us work and answer: data
 * messages and protocol pings cost one token each (a ping is cheap to
 * parse, but its pong is a reply like any other; clients ping every few
 * seconds at most). Pongs and close frames are free. The tokens come back
 * per whole second of uv_now(), added when one is taken and at every ping
 * (not by a walk over every connection): a 16-bit second count, which the
 * ping cycle (at most two hours) keeps from wrapping. */
void fo__conn_refill(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  uint64_t rate = (uint64_t)srv->cfg->client_msg_rate;
  uint16_t now_s = (uint16_t)(uv_now(srv->loop) / 1000);
  uint16_t secs = (uint16_t)(now_s - conn->refill_s);
  if (rate == 0 || secs == 0)
    return;
  conn->refill_s = now_s;
  uint64_t burst = (uint64_t)srv->cfg->client_msg_burst;
  uint64_t t = conn->tokens + secs * rate;
  conn->tokens = (uint16_t)(t < burst ? t : burst);
}

/* Takes a token; false (and the connection is closing with 1008) when the
 * bucket is empty. */
static bool rate_take(fo_conn_t *conn) {
  fo_server_t *srv = conn->srv;
  if (srv->cfg->client_msg_rate == 0)
    return true;
  fo__conn_refill(conn);
  if (conn->tokens > 0) {
    conn->tokens--;
    return true;
  }
  (*srv->m.rate_limited)++;
  uint64_t sup = 0;
  if (fo_log_ratelimit(&srv->rate_rl, fo_now_ms(), 5000, &sup))
    FO_LOG_INFO("conn", "client message rate limit exceeded: closing",
                "conn=%" PRIu32 " rate=%" PRId64 " burst=%" PRId64 " suppressed=%" PRIu64, conn->id,
                srv->cfg->client_msg_rate, srv->cfg->client_msg_burst, sup);
  fo__conn_close_ws(conn, FO_WS_CLOSE_POLICY, "rate limit exceeded");
  return false;
}

/* ---- reading ---- */

/* A pong for a client ping: collapsed into an unsent one, or a new frame
 * with room for any ping payload (125 bytes) so later pings can reuse it. */
static void send_pong(fo_conn_t *conn, const uint8_t *p, size_t n) {
  if (pong_collapse(conn, p, n))
    return;
  fo_buf_t *buf = fo_buf_new(2 + 125);
  if (buf == NULL)
    return;
  buf->len = (uint32_t)fo_ws_header(buf->data, FO_WS_OP_PONG, true, n);
  memcpy(buf->data + buf->len, p, n);
  buf->len += (uint32_t)n;
  /* Counted against the queue limit: a client that pings and never reads
   * is a slow client like any other. */
  enqueue(conn, buf, false);
  fo_buf_unref(buf);
}

static int on_ws_msg(void *ud, int opcode, uint8_t *p, size_t n) {
  fo_conn_t *conn = ud;
  if ((opcode == FO_WS_OP_TEXT || opcode == FO_WS_OP_BINARY || opcode == FO_WS_OP_PING) &&
      conn->state == FO_CONN_OPEN && !rate_take(conn))
    return conn->state == FO_CONN_DEAD ? 1 : 0; /* closing: the rest is ignored */
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
    if (conn->state == FO_CONN_OPEN)
      send_pong(conn, p, n);
    break;
  case FO_WS_OP_PONG:
    fo__heartbeat_pong(conn);
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
  fo_conn_t *conn = fo__conn_of(s);
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
  size_t held = fo_ws_rx_bytes(rx);
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
                        rc == FO_WS_CLOSE_TOO_BIG    ? "message too big"
                        : rc == FO_WS_CLOSE_BAD_DATA ? "invalid UTF-8"
                                                     : "protocol error");
    else if (conn->out == NULL)
      fo__conn_destroy(conn);
  }
  /* Unsigned: wraps back right when the state shrank. on_close takes off
   * what is still held then. */
  srv->rx_bytes += fo_ws_rx_bytes(conn->in) - held;
  read_update(conn); /* a pong may have ended the window that kept us reading */
}

/* Feeds bytes that arrived with the upgrade request; while the welcome is
 * in the making they wait in conn->in (a copy, at most one read buffer)
 * until fo__conn_release_input, so that the welcome stays the first frame. */
void fo__conn_feed_early(fo_conn_t *conn, uint8_t *p, size_t n) {
  if (conn->hold_input) {
    fo_buf_t *early = fo_buf_from(p, n);
    if (early == NULL) {
      fo__conn_destroy(conn);
      return;
    }
    conn->in = early;
    conn->srv->rx_bytes += n;
    return;
  }
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  on_read((uv_stream_t *)&conn->tcp, (ssize_t)n, &b);
}

/* Makes conn a live handshake connection of srv. */
static void conn_start(fo_server_t *srv, fo_conn_t *conn) {
  uv_tcp_nodelay(&conn->tcp, 1);
  conn->id = ++srv->next_conn_id;
  conn->state = FO_CONN_HANDSHAKE;
  srv->npending++;
  fo__conn_queue(conn, FO_CL_HANDSHAKE);
  (*srv->m.accepted)++;
}

/* A new, zeroed connection with its handle initialized (not linked). */
static fo_conn_t *conn_new(fo_server_t *srv, int *rc) {
  fo_conn_t *conn = conn_alloc(srv);
  if (conn == NULL) {
    *rc = -ENOMEM;
    return NULL;
  }
  *rc = uv_tcp_init(srv->loop, &conn->tcp);
  if (*rc != 0) {
    conn_release(srv, conn);
    return NULL;
  }
  conn->srv = srv; /* tcp.data: after uv_tcp_init, which does not write it either */
  conn->prev = conn->next = conn;
  return conn;
}

int fo__conn_adopt(fo_server_t *srv, uv_os_sock_t fd, bool read, fo_conn_t **out) {
  int rc;
  fo_conn_t *conn = conn_new(srv, &rc);
  if (conn == NULL)
    return rc;
  srv->nconns++;
  rc = uv_tcp_open(&conn->tcp, fd);
  if (rc != 0) {
    conn->state = FO_CONN_DEAD;
    uv_close((uv_handle_t *)&conn->tcp, on_close);
    return rc;
  }
  conn_start(srv, conn);
  if (read && (rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read)) != 0) {
    fo__conn_destroy(conn);
    return rc;
  }
  *out = conn;
  return 0;
}

int fo__conn_accept(fo_server_t *srv) {
  int rc;
  fo_conn_t *conn = conn_new(srv, &rc);
  if (conn == NULL)
    return rc;
  /* Connections that have not upgraded yet cost a descriptor and kernel
   * memory before anyone authenticated: past the cap a new one is taken off
   * the backlog and closed at once. WebSockets being closed do not count:
   * after a mass disconnect they must not lock new clients out. */
  bool over = srv->npending >= srv->cfg->max_pending_handshakes;
  srv->nconns++;
  rc = uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&conn->tcp);
  if (rc != 0)
    goto fail_close;
  if (over) {
    (*srv->m.rejected_pending)++;
    rc = 0; /* refused on purpose: not an accept failure to log */
    goto fail_close;
  }
  conn_start(srv, conn);
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
}

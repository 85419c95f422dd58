/* HTTP/1.1 connections for the ingest API (server.h): keep-alive, pipelined requests
 * answered in order, header/body limits (413 before reading a body that is
 * declared too large), read and idle timeouts swept by one timer per
 * process, a maximum number of connections, and SO_REUSEPORT so that
 * several processes can share a port. Parsing and response formatting are
 * common/http.c's; what a request means is the handler's (api.c). Responses
 * are counted here by status code. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "list.h"
#include "log.h"
#include "server.h"

#define READ_BUF_SIZE (64 * 1024)
#define LINGER_MS     2000       /* keep draining input this long after a final reply */
#define MAX_OUT_BYTES (4u << 20) /* stop reading while this much output is queued */

typedef struct fo_conn fo_conn_t;

struct fo_reply {
  STAILQ_ENTRY(fo_reply) link; /* in the connection's FIFO */
  fo_conn_t *conn;             /* NULL once detached (connection closed) */
  fo_buf_t *out;               /* formatted response, owned; set when done */
  bool done;
  bool keep_alive; /* the request allowed keep-alive */
  bool head;       /* a HEAD request: headers only */
};

typedef struct {
  uv_write_t req; /* first: the uv_write_t * is cast back */
  fo_buf_t *buf;
} conn_write_t;

struct fo_conn {
  uv_tcp_t tcp; /* tcp.data == this */
  fo_server_t *srv;
  LIST_ENTRY(fo_conn) link; /* server list */
  fo_http_parser_t *parser;
  STAILQ_HEAD(, fo_reply) replies; /* in request order */
  int inflight;                    /* replies in the FIFO */
  fo_sb_t rest;                    /* bytes received but not yet parsed (while paused) */
  fo_sb_t wbuf;                    /* replies gathered for one write */
  uint64_t last_active_ms;         /* last byte read or written */
  uint64_t req_start_ms;           /* first byte of the request being received, or 0 */
  uint64_t linger_start_ms;
  size_t write_queued; /* bytes handed to uv_write and not yet written */
  int writes;          /* uv_write requests in flight */
  bool reading;
  bool paused;    /* the parser is paused (pipeline full, or done) */
  bool no_more;   /* no further requests: close after the last reply */
  bool lingering; /* final reply written, draining input before close */
  bool in_feed;   /* inside fo_http_parser_feed */
  bool continued; /* "100 Continue" sent for the request being received */
  void *slot;     /* the handler's, freed with handler.slot_free */
  bool closing;
};

struct fo_server {
  uv_loop_t *loop;
  fo_metrics_t *metrics;
  fo_server_opts_t opts;
  fo_server_handler_t h;
  void *ud; /* the handler's */
  uv_tcp_t listener;
  uv_timer_t sweep;
  int open_handles;
  LIST_HEAD(, fo_conn) conns;
  size_t nconns;
  bool stopping;
  bool freeing;
  fo_http_limits_t limits;
  char rbuf[READ_BUF_SIZE]; /* one read buffer per loop, see on_alloc */
  fo_log_ratelimit_t rl;
  uint64_t *c_accepted, *c_rejected, *c_timeouts, *c_bad;
  int64_t *g_conns;
  uint64_t *c_status[600]; /* by status code, registered on first use */
};

static void conn_close(fo_conn_t *conn);
static void conn_flush(fo_conn_t *conn);
static void conn_feed(fo_conn_t *conn, const char *data, size_t n);
static void conn_read_start(fo_conn_t *conn);
static void conn_read_stop(fo_conn_t *conn);

static uint64_t now_ms(const fo_server_t *srv) {
  return uv_now(srv->loop);
}

static void count_status(fo_server_t *srv, int status) {
  if (status < 100 || status >= 600)
    return;
  if (srv->c_status[status] == NULL) {
    char name[96];
    snprintf(name, sizeof(name), "fanout_ingest_http_responses_total{code=\"%d\"}", status);
    srv->c_status[status] = fo_metrics_counter(srv->metrics, name, "HTTP responses by status");
    if (srv->c_status[status] == NULL)
      return;
  }
  (*srv->c_status[status])++;
}

/* ---- replies -------------------------------------------------------------- */

static fo_reply_t *reply_new(fo_conn_t *conn, bool keep_alive) {
  fo_reply_t *reply = calloc(1, sizeof(*reply));
  if (reply == NULL)
    return NULL;
  reply->conn = conn;
  reply->keep_alive = keep_alive;
  STAILQ_INSERT_TAIL(&conn->replies, reply, link);
  conn->inflight++;
  return reply;
}

/* Appends a response to sb; a HEAD request gets the headers only. */
static void format_response(fo_sb_t *sb, int status, const char *content_type,
                            const char *extra_headers, const void *body, size_t body_len,
                            bool keep_alive, bool head_only) {
  fo_http_format_head(sb, status, body != NULL ? content_type : NULL, extra_headers,
                      body != NULL ? body_len : 0, keep_alive);
  if (body != NULL && body_len > 0 && !head_only)
    fo_sb_append(sb, body, body_len);
}

void fo__reply_send(fo_reply_t *reply, int status, const char *content_type,
                    const char *extra_headers, const void *body, size_t body_len) {
  fo_conn_t *conn = reply->conn;
  if (conn == NULL) { /* the client is gone: the slot is ours to free */
    free(reply);
    return;
  }
  count_status(conn->srv, status);
  bool keep_alive = reply->keep_alive && !conn->srv->stopping && !conn->no_more;
  if (!keep_alive)
    conn->no_more = true;
  reply->done = true;
  if (reply == STAILQ_FIRST(&conn->replies)) {
    /* Next in line: straight into the connection's output. */
    format_response(&conn->wbuf, status, content_type, extra_headers, body, body_len, keep_alive,
                    reply->head);
    conn_flush(conn);
    return;
  }
  fo_sb_t sb;
  fo_sb_init(&sb);
  format_response(&sb, status, content_type, extra_headers, body, body_len, keep_alive,
                  reply->head);
  if (!sb.oom)
    reply->out = fo_sb_to_buf(&sb);
  fo_sb_free(&sb);
  if (reply->out == NULL) /* out of memory: the connection cannot go on */
    conn->no_more = true;
}

void **fo__reply_slot(fo_reply_t *reply) {
  return reply->conn != NULL ? &reply->conn->slot : NULL;
}

void fo__reply_error(fo_reply_t *reply, int status, const char *msg, const char *extra_headers) {
  fo_conn_t *conn = reply->conn;
  if (conn == NULL) {
    free(reply);
    return;
  }
  fo_sb_t body;
  fo_sb_init(&body);
  /* Only the body here, so that fo__reply_send decides keep-alive. */
  fo_http_error_body(&body, msg);
  fo__reply_send(reply, status, "application/json", extra_headers, body.data, body.len);
  fo_sb_free(&body);
}

/* ---- writing -------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  conn_write_t *w = (conn_write_t *)req;
  fo_conn_t *conn = req->handle->data; /* read before free(w) */
  conn->write_queued -= w->buf->len;
  conn->writes--;
  fo_buf_unref(w->buf);
  free(w);
  if (status < 0) {
    conn_close(conn);
    return;
  }
  conn->last_active_ms = now_ms(conn->srv);
  conn_flush(conn);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

/* Called when no more replies will come: drain input for a moment (so the
 * peer reads our last reply instead of a reset), then close. */
static void conn_finish(fo_conn_t *conn) {
  if (conn->lingering || conn->closing)
    return;
  conn->lingering = true;
  conn->linger_start_ms = now_ms(conn->srv);
  uv_shutdown_t *sreq = malloc(sizeof(*sreq));
  if (sreq == NULL || uv_shutdown(sreq, (uv_stream_t *)&conn->tcp, on_shutdown) != 0) {
    free(sreq);
    conn_close(conn);
    return;
  }
  conn_read_start(conn); /* on_read discards while lingering; EOF closes */
}

/* Moves finished replies at the head of the FIFO to the socket, resumes a
 * paused parser when the pipeline has room, and closes a finished conn. */
static void conn_flush(fo_conn_t *conn) {
  if (conn->closing)
    return;
  fo_server_t *srv = conn->srv;
  fo_reply_t *reply;
  while ((reply = STAILQ_FIRST(&conn->replies)) != NULL && reply->done) {
    STAILQ_REMOVE_HEAD(&conn->replies, link);
    conn->inflight--;
    if (reply->out != NULL)
      fo_sb_append(&conn->wbuf, reply->out->data, reply->out->len);
    fo_buf_unref(reply->out);
    free(reply);
  }
  if (conn->wbuf.oom) {
    conn_close(conn);
    return;
  }
  if (conn->wbuf.len > 0) {
    size_t off = 0;
    if (conn->writes == 0) { /* nothing queued: try to write right away */
      uv_buf_t b = uv_buf_init(conn->wbuf.data, (unsigned)conn->wbuf.len);
      int n = uv_try_write((uv_stream_t *)&conn->tcp, &b, 1);
      if (n > 0)
        off = (size_t)n;
      else if (n < 0 && n != UV_EAGAIN) {
        conn_close(conn);
        return;
      }
    }
    if (off < conn->wbuf.len) {
      conn_write_t *w = malloc(sizeof(*w));
      fo_buf_t *buf = fo_buf_from(conn->wbuf.data + off, conn->wbuf.len - off);
      if (w == NULL || buf == NULL) {
        free(w);
        fo_buf_unref(buf);
        conn_close(conn);
        return;
      }
      w->buf = buf;
      uv_buf_t b = uv_buf_init((char *)buf->data, buf->len);
      int rc = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &b, 1, on_write);
      if (rc != 0) {
        fo_buf_unref(buf);
        free(w);
        conn_close(conn);
        return;
      }
      conn->writes++;
      conn->write_queued += buf->len;
    }
    fo_sb_reset(&conn->wbuf);
    conn->last_active_ms = now_ms(srv);
  }
  if (conn->in_feed)
    return; /* conn_feed re-checks when the parser returns */
  if (conn->no_more) {
    if (STAILQ_EMPTY(&conn->replies) && conn->writes == 0)
      conn_finish(conn);
    return;
  }
  if (conn->paused && (size_t)conn->inflight < srv->opts.max_pipeline &&
      conn->write_queued < MAX_OUT_BYTES) {
    conn->paused = false;
    fo_http_parser_resume(conn->parser);
    if (conn->rest.len > 0) {
      /* Feed a private copy: conn_feed may store a new remainder in rest. */
      fo_sb_t rest = conn->rest;
      fo_sb_init(&conn->rest);
      conn_feed(conn, rest.data, rest.len);
      fo_sb_free(&rest);
    }
    if (!conn->paused && !conn->no_more && !conn->closing)
      conn_read_start(conn);
  }
}

/* ---- reading and parsing --------------------------------------------------- */

static int on_request(void *ud, fo_http_request_t *req) {
  fo_conn_t *conn = ud;
  fo_server_t *srv = conn->srv;
  conn->req_start_ms = 0;
  conn->continued = false;
  fo_reply_t *reply = reply_new(conn, req->keep_alive);
  if (reply == NULL) {
    conn->no_more = true;
    conn->paused = true;
    return 1;
  }
  reply->head = strcmp(req->method, "HEAD") == 0;
  if (req->upgrade)
    conn->no_more = true;             /* what follows is another protocol: we answer and close */
  srv->h.handle(srv->ud, reply, req); /* may answer (and flush) right away */
  if (conn->closing || conn->no_more || srv->stopping) {
    conn->no_more = true;
    conn->paused = true;
    return 1;
  }
  if ((size_t)conn->inflight >= srv->opts.max_pipeline || conn->write_queued >= MAX_OUT_BYTES) {
    conn->paused = true;
    return 1;
  }
  return 0;
}

/* The request's headers are in: the handler may refuse the body before
 * any of it is buffered. */
static int on_headers(void *ud, const fo_http_request_t *req) {
  fo_conn_t *conn = ud;
  fo_server_t *srv = conn->srv;
  fo_server_refusal_t refusal;
  if (srv->h.refuse_body == NULL || !srv->h.refuse_body(srv->ud, &conn->slot, req, &refusal))
    return 0;
  /* The body stays unread, so nothing after it can be parsed: answer and
   * close (conn_feed sees -ECANCELED). */
  conn->no_more = true;
  fo_reply_t *reply = reply_new(conn, false);
  if (reply == NULL) {
    conn_close(conn);
    return 1;
  }
  reply->head = strcmp(req->method, "HEAD") == 0;
  fo__reply_error(reply, refusal.status, refusal.msg, refusal.extra_headers);
  return 1;
}

/* Answers a protocol error in order (after the replies already queued) and
 * stops reading requests from this connection. */
static void conn_protocol_error(fo_conn_t *conn, int status, const char *msg) {
  fo_server_t *srv = conn->srv;
  (*srv->c_bad)++;
  uint64_t suppressed;
  if (fo_log_ratelimit(&srv->rl, now_ms(srv), 1000, &suppressed))
    FO_LOG_INFO("http", "bad request", "status=%d reason=\"%s\" suppressed=%llu", status, msg,
                (unsigned long long)suppressed);
  conn->no_more = true;
  fo_reply_t *reply = reply_new(conn, false);
  if (reply == NULL) {
    conn_close(conn);
    return;
  }
  fo__reply_error(reply, status, msg, NULL);
}

/* True when data holds a whole header block asking "Expect: 100-continue".
 * (The parser reports complete requests only; clients such as curl send the
 * headers in one piece and wait up to a second for this answer.) */
static bool wants_continue(const char *data, size_t n) {
  const char *end = memmem(data, n, "\r\n\r\n", 4);
  if (end == NULL)
    return false;
  for (const char *p = data; p + 20 <= end; p++) {
    if (p[0] == '\n' && strncasecmp(p + 1, "expect:", 7) == 0) {
      const char *v = p + 8;
      while (v < end && (*v == ' ' || *v == '\t'))
        v++;
      return end - v >= 12 && strncasecmp(v, "100-continue", 12) == 0;
    }
  }
  return false;
}

static void conn_feed(fo_conn_t *conn, const char *data, size_t n) {
  fo_server_t *srv = conn->srv;
  conn->in_feed = true;
  ssize_t used = fo_http_parser_feed(conn->parser, data, n);
  conn->in_feed = false;
  if (conn->closing)
    return;
  if (used == -ECANCELED) { /* refused after its headers, and answered */
    conn->paused = true;
    conn->req_start_ms = 0;
    conn_read_stop(conn);
    conn_flush(conn);
    return;
  }
  if (used < 0) {
    int status = 400;
    if (used == -EMSGSIZE)
      status = fo_http_parser_body_too_large(conn->parser) ? 413 : 431;
    else if (used == -ENOTSUP)
      status = 505;
    else if (used == -ENOMEM)
      status = 503;
    conn->paused = true;
    conn_read_stop(conn);
    conn_protocol_error(conn, status, fo_http_parser_error(conn->parser));
    return;
  }
  if ((size_t)used < n) {
    if (!conn->paused) /* not our pause: an upgrade; the rest is not HTTP */
      conn->no_more = true;
    if (!conn->no_more && fo_sb_append(&conn->rest, data + used, n - (size_t)used) != 0)
      conn->no_more = true;
    conn->paused = true;
  }
  if (fo_http_parser_mid_request(conn->parser)) {
    if (conn->req_start_ms == 0)
      conn->req_start_ms = now_ms(srv);
    if (!conn->continued && STAILQ_EMPTY(&conn->replies) && (size_t)used == n &&
        wants_continue(data, n)) {
      conn->continued = true;
      fo_sb_puts(&conn->wbuf, "HTTP/1.1 100 Continue\r\n\r\n");
    }
  } else {
    conn->req_start_ms = 0;
  }
  if (conn->paused || conn->no_more)
    conn_read_stop(conn);
  conn_flush(conn); /* what the callbacks answered synchronously */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  fo_conn_t *conn = h->data;
  /* One buffer per loop: every byte is consumed (parsed or copied to
   * conn->rest) before on_read returns, so connections can share it. */
  buf->base = conn->srv->rbuf;
  buf->len = sizeof(conn->srv->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  fo_conn_t *conn = s->data;
  if (nread == 0)
    return;
  if (nread < 0) {
    /* A peer that half-closes after its requests still gets the replies it
     * is owed; anything else (error, EOF while idle or lingering) closes. */
    if (nread == UV_EOF && !conn->lingering && !STAILQ_EMPTY(&conn->replies) &&
        !fo_http_parser_mid_request(conn->parser)) {
      conn->no_more = true;
      conn->paused = true;
      uv_read_stop(s);
      conn->reading = false;
      return;
    }
    conn_close(conn);
    return;
  }
  conn->last_active_ms = now_ms(conn->srv);
  if (conn->lingering || conn->no_more)
    return; /* draining after the final reply */
  conn_feed(conn, buf->base, (size_t)nread);
}

static void conn_read_start(fo_conn_t *conn) {
  if (conn->reading || conn->closing)
    return;
  if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0)
    conn->reading = true;
  else
    conn_close(conn);
}

static void conn_read_stop(fo_conn_t *conn) {
  if (!conn->reading || conn->lingering)
    return;
  uv_read_stop((uv_stream_t *)&conn->tcp);
  conn->reading = false;
}

/* ---- connection lifetime ----------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h) {
  fo_conn_t *conn = h->data;
  fo_server_t *srv = conn->srv;
  fo_http_parser_free(conn->parser);
  fo_sb_free(&conn->rest);
  fo_sb_free(&conn->wbuf);
  if (conn->slot != NULL && srv->h.slot_free != NULL)
    srv->h.slot_free(conn->slot);
  free(conn);
  if (srv->freeing && srv->nconns == 0 && srv->open_handles == 0)
    free(srv);
}

static void conn_close(fo_conn_t *conn) {
  if (conn->closing)
    return;
  fo_server_t *srv = conn->srv;
  conn->closing = true;
  /* Detach replies still owed by handlers; free the finished ones. */
  fo_reply_t *reply;
  while ((reply = STAILQ_FIRST(&conn->replies)) != NULL) {
    STAILQ_REMOVE_HEAD(&conn->replies, link);
    if (reply->done) {
      fo_buf_unref(reply->out);
      free(reply);
    } else {
      reply->conn = NULL;
    }
  }
  LIST_REMOVE(conn, link);
  srv->nconns--;
  (*srv->g_conns)--;
  uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
}

static void on_connection(uv_stream_t *ls, int status) {
  fo_server_t *srv = ls->data;
  if (status < 0) {
    FO_LOG_WARN("http", "accept failed", "err=%s", fo_strerror(status));
    return;
  }
  fo_conn_t *conn = calloc(1, sizeof(*conn));
  if (conn == NULL)
    return;
  conn->srv = srv;
  STAILQ_INIT(&conn->replies);
  if (uv_tcp_init(srv->loop, &conn->tcp) != 0) {
    free(conn);
    return;
  }
  conn->tcp.data = conn;
  /* Registered from here on: memory goes through uv_close. */
  LIST_INSERT_HEAD(&srv->conns, conn, link);
  srv->nconns++;
  (*srv->g_conns)++;
  conn->parser = fo_http_parser_new(&srv->limits, on_request, conn);
  if (conn->parser == NULL || uv_accept(ls, (uv_stream_t *)&conn->tcp) != 0) {
    conn_close(conn);
    return;
  }
  fo_http_parser_on_headers(conn->parser, on_headers);
  uv_tcp_nodelay(&conn->tcp, 1);
  conn->last_active_ms = now_ms(srv);
  (*srv->c_accepted)++;
  if (srv->nconns > srv->opts.max_connections) {
    (*srv->c_rejected)++;
    conn_read_start(conn);
    conn_protocol_error(conn, 503, "too many connections");
    return;
  }
  conn_read_start(conn);
}

/* ---- timeouts ----------------------------------------------------------------- */

static void on_sweep(uv_timer_t *t) {
  fo_server_t *srv = t->data;
  const fo_server_opts_t *cfg = &srv->opts;
  uint64_t now = now_ms(srv);
  fo_conn_t *conn, *next;
  LIST_FOREACH_SAFE(conn, &srv->conns, link, next) {
    if (conn->closing)
      continue;
    if (conn->lingering) {
      if (now - conn->linger_start_ms >= LINGER_MS)
        conn_close(conn);
      continue;
    }
    if (conn->writes > 0 && now - conn->last_active_ms >= (uint64_t)cfg->read_timeout_ms) {
      (*srv->c_timeouts)++; /* the peer does not read its replies */
      conn_close(conn);
      continue;
    }
    if (conn->req_start_ms != 0 && !conn->no_more &&
        now - conn->req_start_ms >= (uint64_t)cfg->read_timeout_ms) {
      (*srv->c_timeouts)++;
      conn->paused = true;
      conn_read_stop(conn);
      conn_protocol_error(conn, 408, "request not received in time");
      continue;
    }
    if (STAILQ_EMPTY(&conn->replies) && conn->writes == 0 && conn->req_start_ms == 0 &&
        now - conn->last_active_ms >= (uint64_t)cfg->idle_timeout_ms) {
      conn_close(conn); /* idle keep-alive connection */
    }
  }
}

/* ---- start / stop ----------------------------------------------------------- */

static void on_srv_handle_closed(uv_handle_t *h) {
  fo_server_t *srv = h->data;
  srv->open_handles--;
  if (srv->freeing && srv->nconns == 0 && srv->open_handles == 0)
    free(srv);
}

int fo__server_start(uv_loop_t *loop, fo_metrics_t *m, const fo_server_opts_t *opts,
                     const fo_server_handler_t *handler, void *ud, char *bound, size_t boundlen,
                     fo_server_t **out) {
  fo_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL)
    return -ENOMEM;
  srv->loop = loop;
  srv->metrics = m;
  srv->opts = *opts;
  srv->h = *handler;
  srv->ud = ud;
  srv->limits = opts->limits;
  LIST_INIT(&srv->conns);
  srv->c_accepted =
      fo_metrics_counter(m, "fanout_ingest_connections_accepted_total", "TCP connections accepted");
  srv->c_rejected = fo_metrics_counter(m, "fanout_ingest_connections_rejected_total",
                                       "Connections refused with 503 (max connections)");
  srv->c_timeouts = fo_metrics_counter(m, "fanout_ingest_connection_timeouts_total",
                                       "Connections timed out while reading or writing");
  srv->c_bad = fo_metrics_counter(m, "fanout_ingest_http_protocol_errors_total",
                                  "Requests refused by the HTTP parser or a timeout");
  srv->g_conns = fo_metrics_gauge(m, "fanout_ingest_connections", "Open HTTP connections");
  if (srv->c_accepted == NULL || srv->c_rejected == NULL || srv->c_timeouts == NULL ||
      srv->c_bad == NULL || srv->g_conns == NULL) {
    free(srv);
    return -ENOMEM;
  }
  int rc = uv_tcp_init(loop, &srv->listener);
  if (rc != 0) {
    free(srv);
    return rc;
  }
  srv->listener.data = srv;
  srv->open_handles = 1;
  uv_timer_init(loop, &srv->sweep);
  srv->sweep.data = srv;
  srv->open_handles++;
  rc = fo_listen(&srv->listener, &opts->listen, on_connection, bound, boundlen);
  if (rc != 0)
    goto fail_close;
  uint64_t period =
      opts->read_timeout_ms < opts->idle_timeout_ms ? opts->read_timeout_ms : opts->idle_timeout_ms;
  period = period / 4 < 50 ? 50 : period / 4 > 500 ? 500 : period / 4;
  uv_timer_start(&srv->sweep, on_sweep, period, period);
  uv_unref((uv_handle_t *)&srv->sweep);
  *out = srv;
  return 0;
fail_close:
  srv->freeing = true;
  uv_close((uv_handle_t *)&srv->sweep, on_srv_handle_closed);
  uv_close((uv_handle_t *)&srv->listener, on_srv_handle_closed);
  return rc;
}

void fo__server_stop(fo_server_t *srv) {
  if (srv->stopping)
    return;
  srv->stopping = true;
  uv_close((uv_handle_t *)&srv->listener, on_srv_handle_closed);
  fo_conn_t *conn, *next;
  LIST_FOREACH_SAFE(conn, &srv->conns, link, next) {
    conn->no_more = true;
    if (STAILQ_EMPTY(&conn->replies) && conn->writes == 0)
      conn_close(conn); /* nothing owed (a half-received request is dropped) */
    else
      conn_read_stop(conn); /* busy: closes after its last reply */
  }
}

size_t fo__server_connections(const fo_server_t *srv) {
  return srv->nconns;
}

void fo__server_free(fo_server_t *srv) {
  if (srv == NULL)
    return;
  fo__server_stop(srv);
  fo_conn_t *conn, *next;
  LIST_FOREACH_SAFE(conn, &srv->conns, link, next)
  conn_close(conn);
  srv->freeing = true;
  uv_close((uv_handle_t *)&srv->sweep, on_srv_handle_closed);
}

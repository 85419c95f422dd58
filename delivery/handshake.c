/* The HTTP side of a connection, until it is a WebSocket or answered: the
 * RFC 6455 upgrade with authentication (auth.c) and admission (the hub,
 * through conn_ev), /healthz, /readyz, /metrics on the same port, and the
 * plain HTTP answers (4xx/5xx, one request per connection). */
#include "handshake.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "auth.h"
#include "delivery_int.h"
#include "http.h"
#include "log.h"
#include "ws.h"

/* Bit flags kept in the parser callback's outcome. */
typedef struct {
  fo_conn_t *conn;
  bool done; /* a request was answered */
  bool kill; /* close the socket now */
} hs_state_t;

static void respond(fo_conn_t *conn, int status, const char *ctype, const char *extra,
                    const char *body, size_t len) {
  fo_sb_t sb;
  fo_sb_init(&sb);
  if (ctype == NULL && body == NULL)
    fo_http_format_response(&sb, status, NULL, extra, NULL, 0, false);
  else
    fo_http_format_response(&sb, status, ctype, extra, body, len, false);
  fo_buf_t *buf = sb.oom ? NULL : fo_sb_to_buf(&sb);
  fo_sb_free(&sb);
  conn->state = FO_CONN_HTTP;
  conn->close_after_flush = 1;
  if (buf == NULL || fo__conn_send_raw(conn, buf) != 0)
    conn->close_after_flush = 1; /* nothing queued: the sweep or flush closes it */
  fo_buf_unref(buf);
}

static void respond_error(fo_conn_t *conn, int status, const char *msg, const char *extra) {
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_http_format_error(&sb, status, msg, extra, false);
  fo_buf_t *buf = sb.oom ? NULL : fo_sb_to_buf(&sb);
  fo_sb_free(&sb);
  conn->state = FO_CONN_HTTP;
  conn->close_after_flush = 1;
  if (buf != NULL)
    fo__conn_send_raw(conn, buf);
  fo_buf_unref(buf);
}

/* A Sec-WebSocket-Key is the base64 of 16 bytes: 22 characters and "==". */
static bool ws_key_valid(const char *key, uint8_t out[32]) {
  if (key[21] == '=' || key[22] != '=' || key[23] != '=')
    return false;
  return EVP_DecodeBlock(out, (const unsigned char *)key, 24) == 18;
}

/* True if the comma-separated header value contains token (case-insensitive). */
static bool has_token(const char *value, const char *token) {
  size_t tl = strlen(token);
  const char *p = value;
  while (p != NULL && *p != '\0') {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    const char *end = p;
    while (*end != '\0' && *end != ',')
      end++;
    const char *e = end;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if ((size_t)(e - p) == tl && strncasecmp(p, token, tl) == 0)
      return true;
    p = end;
  }
  return false;
}

static bool origin_allowed(const fo_server_t *srv, const char *origin) {
  if (srv->origins == NULL || origin == NULL)
    return true; /* no list, or a non-browser client */
  for (int i = 0; i < srv->norigins; i++)
    if (strcasecmp(srv->origins[i], origin) == 0)
      return true;
  return false;
}

static void serve_metrics(fo_conn_t *conn) {
  fo_sb_t sb;
  fo_sb_init(&sb);
  if (fo_metrics_render(conn->srv->metrics, &sb) != 0) {
    fo_sb_free(&sb);
    respond_error(conn, 500, "out of memory", NULL);
    return;
  }
  respond(conn, 200, "text/plain; version=0.0.4", NULL, sb.data ? sb.data : "", sb.len);
  fo_sb_free(&sb);
}

/* What a client asked for in the /ws query besides its token and resume
 * position (schemas/client-protocol.md, "Browser options"). */
typedef struct {
  bool heartbeat;  /* heartbeat=1: {"type":"ping"} text frames, see heartbeat.c */
  bool auth_close; /* auth=close: a refused token completes the upgrade, closes 4001/4003 */
} ws_opts_t;

/* One flag of the query: absent or `off` -> false, `on` -> true, anything
 * else -> -EINVAL (a typo must not silently turn a feature off). */
static int query_flag(const char *query, const char *key, const char *off, const char *on,
                      bool *out) {
  char *v = fo_http_query_param(query, key);
  int rc = 0;
  *out = false;
  if (v != NULL && strcmp(v, on) == 0)
    *out = true;
  else if (v != NULL && strcmp(v, off) != 0)
    rc = -EINVAL;
  free(v);
  return rc;
}

static int parse_ws_opts(const char *query, ws_opts_t *o, const char **why) {
  if (query_flag(query, "heartbeat", "0", "1", &o->heartbeat) != 0) {
    *why = "heartbeat must be 0 or 1";
    return -EINVAL;
  }
  if (query_flag(query, "auth", "http", "close", &o->auth_close) != 0) {
    *why = "auth must be http or close";
    return -EINVAL;
  }
  return 0;
}

/* auth=close: a browser cannot see the status of a refused upgrade (its
 * WebSocket only reports 1006), so the upgrade completes and the close
 * frame says why: 4001 token expired (fetch a new one), 4003 invalid.
 * Nothing is admitted or registered: the connection stays in the HTTP
 * state, counted against --max-pending-handshakes like any other refusal,
 * and is closed once these bytes are written. */
/* The 101 response for a client's Sec-WebSocket-Key, into out (at least
 * 160 bytes); returns its length. */
static size_t switching_protocols(const char *key, char *out, size_t outlen) {
  char accept[29];
  fo_ws_accept_key(key, strlen(key), accept);
  int n = snprintf(out, outlen,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                   accept);
  return (size_t)n;
}

static void refuse_upgrade(fo_conn_t *conn, const char *key, bool expired) {
  uint16_t code = expired ? FO_WS_CLOSE_TOKEN_EXPIRED : FO_WS_CLOSE_TOKEN_INVALID;
  const char *reason = expired ? "token expired" : "invalid token";
  size_t rl = strlen(reason);
  char resp[192];
  size_t len = switching_protocols(key, resp, sizeof(resp));
  len += fo_ws_header((uint8_t *)resp + len, FO_WS_OP_CLOSE, true, 2 + rl);
  resp[len++] = (char)(code >> 8);
  resp[len++] = (char)(code & 0xff);
  memcpy(resp + len, reason, rl);
  len += rl;
  fo_buf_t *buf = fo_buf_from(resp, len);
  conn->state = FO_CONN_HTTP;
  conn->close_after_flush = 1;
  if (buf != NULL)
    fo__conn_send_raw(conn, buf);
  fo_buf_unref(buf);
}

static void upgrade(fo_conn_t *conn, fo_http_request_t *req) {
  fo_server_t *srv = conn->srv;
  const char *up = fo_http_header(req, "upgrade");
  const char *co = fo_http_header(req, "connection");
  const char *ver = fo_http_header(req, "sec-websocket-version");
  const char *key = fo_http_header(req, "sec-websocket-key");
  uint8_t kbuf[32];

  if (req->method_id != 1 /* HTTP_GET */) {
    respond_error(conn, 405, "method not allowed", "Allow: GET\r\n");
    return;
  }
  if (up == NULL || strcasecmp(up, "websocket") != 0 || co == NULL || !has_token(co, "upgrade")) {
    respond_error(conn, 426, "WebSocket upgrade required", "Upgrade: websocket\r\n");
    return;
  }
  if (ver == NULL || strcmp(ver, "13") != 0) {
    respond_error(conn, 426, "unsupported WebSocket version", "Sec-WebSocket-Version: 13\r\n");
    return;
  }
  if (key == NULL || strlen(key) != 24 || !ws_key_valid(key, kbuf)) {
    respond_error(conn, 400, "bad Sec-WebSocket-Key", NULL);
    return;
  }
  if (!origin_allowed(srv, fo_http_header(req, "origin"))) {
    (*srv->m.handshake_fail)++;
    respond_error(conn, 403, "origin not allowed", NULL);
    return;
  }
  ws_opts_t wo;
  const char *why = NULL;
  if (parse_ws_opts(req->query, &wo, &why) != 0) {
    respond_error(conn, 400, why, NULL);
    return;
  }
  /* Authenticate before anything is registered. */
  char *qtok = fo_http_query_param(req->query, "token");
  const char *tok = qtok != NULL ? qtok : fo_http_bearer(req);
  fo_auth_claims_t claims;
  char err[128];
  const fo_dcfg_t *cfg = srv->cfg;
  fo_auth_opts_t opts = {cfg->jwt_secret, strlen(cfg->jwt_secret),
                         cfg->jwt_audience[0] != '\0' ? cfg->jwt_audience : NULL,
                         cfg->jwt_issuer[0] != '\0' ? cfg->jwt_issuer : NULL,
                         cfg->max_token_lifetime_s};
  int64_t now_s = (int64_t)(fo_now_ms() / 1000);
  int rc = fo_auth_check(&opts, tok, tok ? strlen(tok) : 0, now_s, &claims, err, sizeof(err));
  free(qtok);
  if (rc != 0) {
    (*srv->m.auth_fail)++;
    FO_LOG_DEBUG("auth", "token refused", "conn=%" PRIu32 " why=\"%s\"", conn->id, err);
    /* The precise reason stays in the log: told to the client, it would say
     * which part of a forged token passed. Only a genuine token that expired
     * is told so, for the client to fetch a new one. */
    if (wo.auth_close)
      refuse_upgrade(conn, key, rc == -EKEYEXPIRED);
    else
      respond_error(conn, 401, rc == -EKEYEXPIRED ? "token expired" : "invalid token",
                    "WWW-Authenticate: Bearer\r\n");
    return;
  }
  if (srv->draining || srv->nopen >= cfg->max_connections) {
    fo_auth_claims_free(&claims);
    (*srv->m.rejected_full)++;
    respond_error(conn, 503, srv->draining ? "shutting down" : "too many connections",
                  "Retry-After: 1\r\n");
    return;
  }
  /* Kept relative to the start so that it fits 32 bits; the sweep closes
   * the connection with 4001 once it passes. Past 2^32 s: never. */
  int64_t exp_rel = claims.exp - (int64_t)(srv->start_ms / 1000);
  int admit = srv->conn_ev.admit != NULL
                  ? srv->conn_ev.admit(conn, claims.sub, claims.sub_len, claims.rooms)
                  : 0;
  fo_auth_claims_free(&claims);
  if (admit == 429) {
    /* One token must not fill the server (security review M1). */
    (*srv->m.rejected_user)++;
    respond_error(conn, 429, "too many connections for this user", "Retry-After: 5\r\n");
    return;
  }
  if (admit != 0) {
    respond_error(conn, 500, "out of memory", NULL);
    return;
  }
  conn->exp_s = exp_rel > 0 && exp_rel < (int64_t)UINT32_MAX ? (uint32_t)exp_rel : 0;
  conn->app_ping = wo.heartbeat;

  char resp[160];
  fo_buf_t *buf = fo_buf_from(resp, switching_protocols(key, resp, sizeof(resp)));
  if (buf == NULL || fo__conn_send_raw(conn, buf) != 0) {
    fo_buf_unref(buf);
    if (srv->conn_ev.unadmit != NULL)
      srv->conn_ev.unadmit(conn);
    conn->state = FO_CONN_HTTP;
    return;
  }
  fo_buf_unref(buf);
  /* `since` (a position, opaque text): judged by stream.c, any bytes. */
  char *since = fo_http_query_param(req->query, "since");
  fo__conn_opened(conn, since, since != NULL ? strlen(since) : 0);
  free(since);
}

static int on_request(void *ud, fo_http_request_t *req) {
  hs_state_t *hs = ud;
  fo_conn_t *conn = hs->conn;
  fo_server_t *srv = conn->srv;
  hs->done = true;
  if (strcmp(req->path, "/ws") == 0) {
    upgrade(conn, req);
    if (conn->state != FO_CONN_OPEN)
      (*srv->m.handshake_fail)++;
  } else if (req->method_id != 1 && req->method_id != 2 /* GET, HEAD */) {
    respond_error(conn, 405, "method not allowed", "Allow: GET\r\n");
  } else if (strcmp(req->path, "/healthz") == 0) {
    respond(conn, 200, "text/plain", NULL, "ok\n", 3);
  } else if (strcmp(req->path, "/readyz") == 0) {
    bool ready = srv->conn_ev.ready != NULL && srv->conn_ev.ready(srv);
    /* First line ready / not ready; then one line per Redis node down
     * ("redis node 1 127.0.0.1:6380 down"), ready or not. */
    fo_sb_t body;
    fo_sb_init(&body);
    fo_sb_puts(&body, ready ? "ready\n" : "not ready\n");
    if (srv->conn_ev.ready_detail != NULL)
      srv->conn_ev.ready_detail(srv, &body);
    if (body.oom)
      respond(conn, 503, "text/plain", NULL, "not ready\n", 10);
    else
      respond(conn, ready ? 200 : 503, "text/plain", NULL, body.data, body.len);
    fo_sb_free(&body);
  } else if (strcmp(req->path, "/metrics") == 0) {
    serve_metrics(conn);
  } else {
    respond_error(conn, 404, "not found", NULL);
  }
  return 1; /* one request per connection */
}

/* The parser's user data must outlive the feed call: it lives on the stack
 * of fo__handshake_feed and the parser is created there with it. Parsers
 * are per connection but only while the handshake lasts. */
typedef struct {
  fo_http_parser_t *parser;
  hs_state_t hs;
} hs_t;

void fo__handshake_free(fo_conn_t *conn) {
  hs_t *h = conn->in;
  if (h == NULL || (conn->state != FO_CONN_HANDSHAKE && conn->state != FO_CONN_HTTP))
    return;
  fo_http_parser_free(h->parser);
  free(h);
  conn->in = NULL;
}

int fo__handshake_feed(fo_conn_t *conn, uint8_t *p, size_t n) {
  fo_server_t *srv = conn->srv;
  hs_t *h = conn->in;
  if (h == NULL) {
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
      fo__conn_destroy(conn);
      return -ENOMEM;
    }
    fo_http_limits_t lim = {(size_t)srv->cfg->max_handshake_bytes, 0};
    h->hs.conn = conn;
    h->parser = fo_http_parser_new(&lim, on_request, &h->hs);
    if (h->parser == NULL) {
      free(h);
      fo__conn_destroy(conn);
      return -ENOMEM;
    }
    conn->in = h;
  }
  ssize_t r = fo_http_parser_feed(h->parser, (const char *)p, n);
  if (r < 0) {
    (*srv->m.handshake_fail)++;
    if (r == -EMSGSIZE)
      respond_error(conn, 431, "request header fields too large", NULL);
    else if (r == -ENOTSUP)
      respond_error(conn, 505, "HTTP version not supported", NULL);
    else
      respond_error(conn, 400, fo_http_parser_error(h->parser), NULL);
  }
  if (conn->state == FO_CONN_HANDSHAKE)
    return 0; /* need more bytes */
  /* Answered: the parser is no longer needed. */
  fo_http_parser_free(h->parser);
  free(h);
  conn->in = NULL;
  if (conn->state == FO_CONN_OPEN && r > 0 && (size_t)r < n) {
    /* Frames glued to the upgrade request: write the 101 first, so that a
     * close they cause cannot drop it from the queue (in flight it is kept). */
    fo__conn_flush(conn);
    if (conn->state == FO_CONN_OPEN)
      fo__conn_feed_early(conn, p + r, n - (size_t)r);
  }
  if (conn->state == FO_CONN_HTTP && conn->out == NULL)
    fo__conn_destroy(conn);
  return 0;
}

/* See fz_delivery.h. */
#define _GNU_SOURCE /* memmem */
#include "fz_delivery.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "config.h"
#include "json_out.h"
#include "log.h"
#include "server.h"
#include "ws.h"

#define FZ_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz invariant failed: %s: ", #cond);                                       \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static fo_server_t g_srv;
static fo_dcfg_t g_cfg;
static uv_loop_t g_loop;
static bool g_init;
static bool g_finishing; /* fz_finish cuts connections: output may end mid-frame */

fo_server_t *fz_server(const char *const *extra_opts) {
  if (g_init)
    return &g_srv;
  char *argv[64];
  int argc = 0;
  argv[argc++] = (char *)"fuzz";
  argv[argc++] = (char *)"--jwt-secret";
  argv[argc++] = (char *)FZ_SECRET;
  argv[argc++] = (char *)"--server-id";
  argv[argc++] = (char *)"fz";
  for (int i = 0; extra_opts != NULL && extra_opts[i] != NULL && argc < 63; i++)
    argv[argc++] = (char *)extra_opts[i];
  argv[argc] = NULL;
  char err[512];
  if (fo_cfg_load(fo_dcfg_fields, fo_dcfg_nfields, &g_cfg, argc, argv, err, sizeof(err)) !=
          FO_CFG_OK ||
      fo_dcfg_finalize(&g_cfg, err, sizeof(err)) != 0) {
    fprintf(stderr, "fz_server: config: %s\n", err);
    abort();
  }
  fo_log_set_level(FO_LOG_LVL_ERROR);
  signal(SIGPIPE, SIG_IGN);
  if (uv_loop_init(&g_loop) != 0)
    abort();

  fo_server_t *srv = &g_srv;
  /* The real constructor, minus the handles, Redis, Kafka and listener:
   * the harness drives the connections and the loop itself. */
  if (fo_server_core_init(srv, &g_loop, &g_cfg, err, sizeof(err)) != 0) {
    fprintf(stderr, "fz_server: %s\n", err);
    abort();
  }
  g_init = true;
  return srv;
}

/* ---- tokens ---- */

static void b64url(fo_sb_t *sb, const uint8_t *p, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    char o[4] = {tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63], tab[v & 63]};
    fo_sb_append(sb, o, 4);
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    char o[2] = {tab[v >> 18], tab[(v >> 12) & 63]};
    fo_sb_append(sb, o, 2);
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    char o[3] = {tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63]};
    fo_sb_append(sb, o, 3);
  }
}

char *fz_sign(const char *secret, const uint8_t *hdr, size_t hlen, const uint8_t *claims,
              size_t clen) {
  fo_sb_t sb;
  fo_sb_init(&sb);
  b64url(&sb, hdr, hlen);
  fo_sb_putc(&sb, '.');
  b64url(&sb, claims, clen);
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned maclen = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)sb.data, sb.len, mac, &maclen);
  fo_sb_putc(&sb, '.');
  b64url(&sb, mac, maclen);
  if (sb.oom)
    abort();
  char *out = strdup(fo_sb_cstr(&sb));
  fo_sb_free(&sb);
  return out;
}

char *fz_token(const char *sub, const char *rooms_json) {
  static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
  char claims[1024];
  int n = snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":4102444800%s%s}", sub,
                   rooms_json ? ",\"rooms\":" : "", rooms_json ? rooms_json : "");
  if (n < 0 || (size_t)n >= sizeof(claims))
    abort();
  return fz_sign(FZ_SECRET, (const uint8_t *)hdr, sizeof(hdr) - 1, (const uint8_t *)claims,
                 (size_t)n);
}

/* ---- connections ---- */

void fz_conn_open(fo_server_t *srv, fz_conn_t *fc) {
  int sv[2];
  memset(fc, 0, sizeof(*fc));
  fc->peer = -1;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
    abort();
  /* A small send buffer: a few frames fill it, so partial writes, uv_write
   * and the per-connection queue limit are all reached. */
  int small = 4096;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  fo_conn_t *conn = NULL;
  if (fo__conn_adopt(srv, sv[0], false, &conn) != 0)
    abort();
  fc->conn = conn;
  fc->peer = sv[1];
}

static bool conn_live(fo_server_t *srv, const fo_conn_t *conn) {
  for (fo_conn_t *c = fo__conn_any(srv); c != NULL; c = fo__conn_after(srv, c))
    if (c == conn)
      return true;
  return false;
}

/* Forgets connections the server destroyed (unlinked from its list; their
 * memory goes in the loop's close callbacks). Must run before uv_run. */
static void sync_conns(fo_server_t *srv, fz_conn_t *fcs, size_t nfc) {
  for (size_t i = 0; i < nfc; i++)
    if (fcs[i].conn != NULL && !conn_live(srv, fcs[i].conn))
      fcs[i].conn = NULL;
}

void fz_conn_feed(fz_conn_t *fc, const uint8_t *p, size_t n) {
  fo_conn_t *conn = fc->conn;
  if (conn == NULL || n == 0)
    return;
  /* An exact-size heap copy: ASan sees any read past the bytes received. */
  uint8_t *copy = malloc(n);
  if (copy == NULL)
    abort();
  memcpy(copy, p, n);
  if (conn->state == FO_CONN_HANDSHAKE)
    fo__handshake_feed(conn, copy, n);
  else if (conn->state == FO_CONN_OPEN || conn->state == FO_CONN_CLOSING)
    fo__conn_feed_early(conn, copy, n);
  free(copy);
}

/* ---- checking what the server wrote ---- */

static void check_text(const uint8_t *p, size_t n) {
  FZ_CHECK(fo_utf8_valid(p, n), "server text frame is not UTF-8 (%zu bytes)", n);
  json_error_t jerr;
  json_t *j = json_loadb((const char *)p, n, JSON_ALLOW_NUL, &jerr);
  FZ_CHECK(j != NULL, "server text frame is not JSON: %s: %.*s", jerr.text, (int)n, p);
  FZ_CHECK(json_is_string(json_object_get(j, "type")), "server message without a type: %.*s",
           (int)n, p);
  json_decref(j);
}

/* Parses complete units (head, frames) from fc->out; keeps the rest. */
static void parse_out(fz_conn_t *fc) {
  size_t off = 0;
  uint8_t *b = fc->out;
  if (!fc->head_done) {
    /* The first bytes on the wire are an HTTP status line, whatever follows. */
    size_t k = fc->out_len < 9 ? fc->out_len : 9;
    FZ_CHECK(memcmp(b, "HTTP/1.1 ", k) == 0, "the server's first bytes are not HTTP: %02x %02x",
             b[0], k > 1 ? b[1] : 0);
    uint8_t *end = memmem(b, fc->out_len, "\r\n\r\n", 4);
    if (end == NULL) {
      FZ_CHECK(fc->out_len < 65536, "no end of the HTTP head in %zu bytes", fc->out_len);
      return;
    }
    FZ_CHECK(fc->out_len >= 12 && memcmp(b, "HTTP/1.1 ", 9) == 0, "bad status line: %.*s",
             (int)(fc->out_len < 40 ? fc->out_len : 40), b);
    fc->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    FZ_CHECK(fc->status >= 100 && fc->status <= 599, "bad status %d", fc->status);
    fc->head_done = true;
    off = (size_t)(end - b) + 4;
    if (fc->status != 101) {
      /* A plain answer: Content-Length bytes of body, then nothing. */
      const char *cl = memmem(b, off, "Content-Length: ", 16);
      FZ_CHECK(cl != NULL, "HTTP %d without Content-Length", fc->status);
      fc->body_want = strtoul(cl + 16, NULL, 10);
      fc->out_len -= off;
      memmove(b, b + off, fc->out_len);
    }
  }
  if (fc->status != 101) {
    FZ_CHECK(fc->out_len <= fc->body_want, "bytes after an HTTP %d body", fc->status);
    return; /* the body stays in the buffer, counted */
  }
  for (;;) {
    size_t left = fc->out_len - off;
    const uint8_t *f = b + off;
    if (left < 2)
      break;
    FZ_CHECK(!fc->closed_frame, "a frame after the close frame");
    int op = f[0] & 0x0f;
    FZ_CHECK((f[0] & 0x80) != 0, "fragmented server frame");
    FZ_CHECK((f[0] & 0x70) == 0, "RSV bits in a server frame");
    FZ_CHECK((f[1] & 0x80) == 0, "masked server frame");
    uint64_t len = f[1] & 0x7f;
    size_t hl = 2;
    if (len == 126) {
      if (left < 4)
        break;
      len = (uint64_t)f[2] << 8 | f[3];
      FZ_CHECK(len >= 126, "non-minimal length");
      hl = 4;
    } else if (len == 127) {
      if (left < 10)
        break;
      len = 0;
      for (int i = 2; i < 10; i++)
        len = len << 8 | f[i];
      FZ_CHECK(len > 0xffff && len < ((uint64_t)1 << 32), "bad 64-bit length");
      hl = 10;
    }
    if (left - hl < len)
      break;
    const uint8_t *pl = f + hl;
    switch (op) {
    case FO_WS_OP_TEXT:
      check_text(pl, (size_t)len);
      break;
    case FO_WS_OP_CLOSE:
      FZ_CHECK(len <= 125 && len != 1, "bad close payload length %llu", (unsigned long long)len);
      if (len >= 2) {
        unsigned code = (unsigned)pl[0] << 8 | pl[1];
        FZ_CHECK(fo_ws_close_code_valid(code), "server close code %u", code);
        FZ_CHECK(fo_utf8_valid(pl + 2, (size_t)len - 2), "close reason not UTF-8");
      }
      fc->closed_frame = true;
      break;
    case FO_WS_OP_PING:
    case FO_WS_OP_PONG:
      FZ_CHECK(len <= 125, "control frame of %llu bytes", (unsigned long long)len);
      break;
    default:
      FZ_CHECK(0, "server sent opcode %d", op);
    }
    off += hl + (size_t)len;
  }
  fc->out_len -= off;
  memmove(b, b + off, fc->out_len);
}

/* Reads what is there; returns bytes read. */
static size_t read_peer(fz_conn_t *fc) {
  size_t total = 0;
  while (fc->peer >= 0 && !fc->paused) {
    if (fc->out_cap - fc->out_len < 65536) {
      size_t ncap = fc->out_cap ? fc->out_cap * 2 : 131072;
      uint8_t *nb = realloc(fc->out, ncap);
      if (nb == NULL)
        abort();
      fc->out = nb;
      fc->out_cap = ncap;
    }
    ssize_t r = read(fc->peer, fc->out + fc->out_len, fc->out_cap - fc->out_len);
    if (r > 0) {
      fc->out_len += (size_t)r;
      total += (size_t)r;
      parse_out(fc);
      continue;
    }
    if (r == 0 && !g_finishing && !fc->cut) {
      /* The server closed on its own: what it sent must be complete. */
      if (fc->head_done && fc->status == 101)
        FZ_CHECK(fc->out_len == 0, "%zu bytes of a cut frame before EOF", fc->out_len);
      else if (fc->head_done)
        FZ_CHECK(fc->out_len == fc->body_want, "HTTP %d body cut: %zu of %zu bytes", fc->status,
                 fc->out_len, fc->body_want);
    }
    if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      close(fc->peer);
      fc->peer = -1;
    }
    break;
  }
  return total;
}

void fz_conn_release(fz_conn_t *fc) {
  fc->paused = false;
  read_peer(fc);
  if (fc->peer >= 0)
    close(fc->peer);
  fc->peer = -1;
  free(fc->out);
  fc->out = NULL;
  fc->out_len = fc->out_cap = 0;
}

/* Output queued on the server stays within --outq-max-bytes per connection
 * (plus one frame that may go past it: the 101, a close, a reply). */
static void check_queued(fo_server_t *srv) {
  uint64_t per = (uint64_t)srv->cfg->outq_max_bytes + 4096;
  FZ_CHECK(fo_flow_queued_bytes(srv->flow) <= (uint64_t)srv->nconns * per,
           "%llu bytes queued for %lld connections (limit %lld each)",
           (unsigned long long)fo_flow_queued_bytes(srv->flow), (long long)srv->nconns,
           (long long)srv->cfg->outq_max_bytes);
}

void fz_pump(fo_server_t *srv, fz_conn_t *fcs, size_t nfc) {
  check_queued(srv);
  for (int round = 0; round < 64; round++) {
    sync_conns(srv, fcs, nfc);
    fo__server_flush(srv); /* the check handle's job */
    sync_conns(srv, fcs, nfc);
    uv_run(srv->loop, UV_RUN_NOWAIT);
    sync_conns(srv, fcs, nfc);
    size_t got = 0;
    for (size_t i = 0; i < nfc; i++)
      got += read_peer(&fcs[i]);
    if (got == 0 && srv->dirty == NULL)
      break;
  }
}

void fz_finish(fo_server_t *srv, fz_conn_t *fcs, size_t nfc) {
  sync_conns(srv, fcs, nfc);
  g_finishing = true;
  for (size_t i = 0; i < nfc; i++) {
    if (fcs[i].conn != NULL)
      fo__conn_destroy(fcs[i].conn);
    fcs[i].conn = NULL;
  }
  /* Connections the harness lost track of (none expected) go too. */
  for (fo_conn_t *c; (c = fo__conn_any(srv)) != NULL;)
    fo__conn_destroy(c);
  for (int round = 0; round < 1000 && srv->nconns > 0; round++) {
    fo__server_flush(srv);
    uv_run(srv->loop, UV_RUN_NOWAIT);
  }
  fo__server_flush(srv);
  for (size_t i = 0; i < nfc; i++)
    fz_conn_release(&fcs[i]);
  g_finishing = false;
  FZ_CHECK(srv->nconns == 0, "%lld connections not freed", (long long)srv->nconns);
  FZ_CHECK(srv->nopen == 0, "nopen=%lld", (long long)srv->nopen);
  FZ_CHECK(fo_flow_queued_bytes(srv->flow) == 0, "queued_bytes=%llu",
           (unsigned long long)fo_flow_queued_bytes(srv->flow));
  FZ_CHECK(srv->users.count == 0, "%u users left", srv->users.count);
  FZ_CHECK(srv->rooms.count == 0, "%u rooms left", srv->rooms.count);
  FZ_CHECK(srv->perms.count == 0, "%u permission sets left", srv->perms.count);
  FZ_CHECK(*srv->m.connections == 0, "connections gauge %lld", (long long)*srv->m.connections);
  FZ_CHECK(*srv->m.users == 0, "users gauge %lld", (long long)*srv->m.users);
  FZ_CHECK(*srv->m.rooms == 0, "rooms gauge %lld", (long long)*srv->m.rooms);
  FZ_CHECK(srv->dirty == NULL, "dirty queue list not empty");
}

size_t fz_client_frame(uint8_t *out, int opcode, bool fin, const uint8_t mask[4], const uint8_t *p,
                       size_t n) {
  size_t hl = fo_ws_header(out, opcode, fin, n);
  out[1] |= 0x80;
  memcpy(out + hl, mask, 4);
  hl += 4;
  for (size_t i = 0; i < n; i++)
    out[hl + i] = p[i] ^ mask[i & 3];
  return hl + n;
}

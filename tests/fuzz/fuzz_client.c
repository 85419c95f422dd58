/* libFuzzer target: an open delivery connection's life (delivery/conn.c,
 * hub.c): the client's JSON messages (join, leave, ping and
 * anything else), its frames (masked by the harness, or raw bytes), and the
 * server side of the same connections: broadcasts to rooms and messages to
 * users while some clients stop reading (so queues fill and slow clients
 * are closed with 1013), server-initiated closes and peers going away.
 * Up to four connections of two users share one server.
 *
 * The input is a list of operations, each [op][len][len bytes]:
 *   op & 0x0f  what (below), (op >> 4) & 3  which connection.
 *   0 open (handshake with that slot's token; the bytes follow the request)
 *   1 masked TEXT frame        2 raw bytes       3 TEXT in two fragments
 *   4 broadcast to room <bytes> (a frame of 16*len bytes)
 *   5 message to user alice/bob (by byte 0), 16*len bytes
 *   6 the client stops/starts reading    7 the peer goes away
 *   8 CLOSE frame with <bytes>           9 PING frame with <bytes>
 *  10 JSON message straight to fo__client_message (no framing)
 *  11 the server closes it (1001)
 *  12 a burst: 4 * (byte 0 + 1) PING frames with the rest as payload
 *  13 a burst: 4 * (byte 0 + 1) TEXT frames with the rest as payload
 * Everything the server writes is checked (fz_delivery.c), and the server
 * must be empty after all connections are gone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "fz_delivery.h"
#include "ws.h"
#include "fz_check.h"

#define NCONN 4

static char *g_tok[NCONN];
static const char *const g_user[NCONN] = {"alice", "alice", "bob", "bob"};
static const char *const g_rooms[NCONN] = {"[\"lobby\",\"team-*\"]", "[\"*\"]", NULL,
                                           "[\"lobby\",\"\",\"x\"]"};

static void open_slot(fo_server_t *srv, fz_conn_t *fc, int i, const uint8_t *extra, size_t elen) {
  char req[2048];
  int n = snprintf(req, sizeof(req),
                   "GET /ws?token=%s HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n",
                   g_tok[i]);
  if (n < 0 || (size_t)n >= sizeof(req))
    abort();
  uint8_t *b = malloc((size_t)n + elen);
  memcpy(b, req, (size_t)n);
  if (elen > 0)
    memcpy(b + n, extra, elen);
  fz_conn_open(srv, fc);
  fz_conn_feed(fc, b, (size_t)n + elen);
  free(b);
}

static void frame(fz_conn_t *fc, int op, bool fin, const uint8_t *p, size_t n, uint8_t salt) {
  uint8_t mask[4] = {salt, (uint8_t)(salt * 7), (uint8_t)(salt + 91), 0x5a};
  uint8_t *f = malloc(n + 14);
  size_t fl = fz_client_frame(f, op, fin, mask, p, n);
  fz_conn_feed(fc, f, fl);
  free(f);
}

static fo_buf_t *server_text(fo_server_t *srv, const char *kind, const uint8_t *p, size_t n,
                             size_t size) {
  (void)srv; /* frames no longer need the server (frame.c) */
  /* {"type":"message","room":"...","data":"xxxx"} with a JSON-safe name */
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_sb_puts(&sb, "{\"type\":\"message\",\"");
  fo_sb_puts(&sb, kind);
  fo_sb_puts(&sb, "\":\"");
  for (size_t i = 0; i < n; i++)
    fo_sb_printf(&sb, "%02x", p[i]);
  fo_sb_puts(&sb, "\",\"data\":\"");
  for (size_t i = 0; i < size; i++)
    fo_sb_putc(&sb, 'x');
  fo_sb_puts(&sb, "\"}");
  fo_buf_t *buf = fo_frame_new(FO_WS_OP_TEXT, sb.data, sb.len);
  fo_sb_free(&sb);
  return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const opts[] = {"--max-frame-bytes",
                                     "512",
                                     "--max-message-bytes",
                                     "2048",
                                     "--max-rooms-per-conn",
                                     "4",
                                     "--outq-max-bytes",
                                     "16384",
                                     "--high-water-bytes",
                                     "40000",
                                     "--low-water-bytes",
                                     "1024",
                                     NULL};
  fo_server_t *srv = fz_server(opts);
  if (g_tok[0] == NULL)
    for (int i = 0; i < NCONN; i++)
      g_tok[i] = fz_token(g_user[i], g_rooms[i]);
  if (size > 8192)
    return 0;
  fz_conn_t fcs[NCONN];
  for (int i = 0; i < NCONN; i++) {
    memset(&fcs[i], 0, sizeof(fcs[i]));
    fcs[i].peer = -1;
  }
  size_t off = 0;
  int ops = 0;
  while (off + 2 <= size && ops++ < 256) {
    uint8_t op = data[off];
    size_t len = data[off + 1];
    off += 2;
    if (len > size - off)
      len = size - off;
    const uint8_t *p = data + off;
    off += len;
    int i = (op >> 4) & 3;
    fz_conn_t *fc = &fcs[i];
    switch (op & 0x0f) {
    case 0:
      if (fc->conn == NULL) {
        fz_conn_release(fc); /* the old socket's leftovers go with it */
        open_slot(srv, fc, i, p, len);
      }
      break;
    case 1:
      frame(fc, 0x1, true, p, len, op);
      break;
    case 2:
      fz_conn_feed(fc, p, len);
      break;
    case 3: {
      size_t half = len / 2;
      frame(fc, 0x1, false, p, half, op);
      if (len & 1)
        frame(fc, 0x9, true, p, half < 125 ? half : 125, op);
      frame(fc, 0x0, true, p + half, len - half, (uint8_t)(op + 1));
      break;
    }
    case 4: {
      fo_buf_t *buf = server_text(srv, "room", p, 0, 16 * len);
      if (buf != NULL) {
        fo__room_broadcast(srv, (const char *)p, len, (int64_t)len, buf, (len & 2) != 0);
        fo_buf_unref(buf);
      }
      break;
    }
    case 5: {
      const char *u = len > 0 && (p[0] & 1) ? "bob" : "alice";
      fo_buf_t *buf = server_text(srv, "user", (const uint8_t *)u, strlen(u), 16 * len);
      if (buf != NULL) {
        fo__deliver_user_local(srv, u, strlen(u), (int64_t)len, buf);
        fo_buf_unref(buf);
      }
      break;
    }
    case 6:
      fc->paused = !fc->paused;
      break;
    case 7:
      if (fc->conn != NULL) {
        fc->cut = true;
        fo__conn_destroy(fc->conn);
      }
      break;
    case 8:
      frame(fc, 0x8, true, p, len < 125 ? len : 125, op);
      break;
    case 9:
      frame(fc, 0x9, true, p, len < 125 ? len : 125, op);
      break;
    case 10:
      if (fc->conn != NULL && fc->conn->state == FO_CONN_OPEN)
        fo__client_message(fc->conn, p, len);
      break;
    case 11:
      if (fc->conn != NULL)
        fo__conn_close_ws(fc->conn, 1001, "server shutting down");
      break;
    case 12:
    case 13:
      if (len > 0) {
        size_t count = 4 * ((size_t)p[0] + 1);
        size_t pl = len - 1 < 125 ? len - 1 : 125;
        uint8_t one[140];
        uint8_t mask[4] = {op, 1, 2, 3};
        size_t fl = fz_client_frame(one, (op & 0x0f) == 12 ? 0x9 : 0x1, true, mask, p + 1, pl);
        uint8_t *burst = malloc(fl * count);
        for (size_t k = 0; k < count; k++)
          memcpy(burst + k * fl, one, fl);
        fz_conn_feed(fc, burst, fl * count);
        free(burst);
      }
      break;
    default:
      break;
    }
    fz_pump(srv, fcs, NCONN);
  }
  fz_finish(srv, fcs, NCONN);
  return 0;
}

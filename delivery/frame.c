/* Server->client frames are unmasked, so their bytes are the same for every
 * recipient: each message is encoded once, here, into a refcounted fo_buf_t
 * that every recipient's queue references. The header is ten bytes at most
 * (fo_ws_header, ws.c), so the frame is one allocation and one memcpy; no
 * library encoder context (wslay's would copy through a callback, and its
 * event API copies each queued message once per connection: STYLE.md,
 * "Facts that bite" 2). */
#include <errno.h>
#include <string.h>

#include "delivery_int.h"
#include "frame.h"
#include "proto.h"
#include "ws.h"

fo_buf_t *fo_frame_new(int opcode, const void *payload, size_t n) {
  fo_buf_t *buf = fo_buf_new(n + 10);
  if (buf == NULL)
    return NULL;
  size_t hl = fo_ws_header(buf->data, opcode, true, n);
  if (n > 0)
    memcpy(buf->data + hl, payload, n);
  buf->len = (uint32_t)(hl + n);
  return buf;
}

int fo__frame_init(fo_server_t *srv) {
  srv->ping_frame = fo_frame_new(FO_WS_OP_PING, NULL, 0);
  srv->app_ping_frame = fo_frame_new(FO_WS_OP_TEXT, FO_PROTO_APP_PING, FO_PROTO_APP_PING_LEN);
  return srv->ping_frame && srv->app_ping_frame ? 0 : -ENOMEM;
}

void fo__frame_free(fo_server_t *srv) {
  fo_buf_unref(srv->ping_frame);
  srv->ping_frame = NULL;
  fo_buf_unref(srv->app_ping_frame);
  srv->app_ping_frame = NULL;
}

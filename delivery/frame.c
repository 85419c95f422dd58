/* Server->client frames are unmasked, so their bytes are the same for every
 * recipient: each message is encoded once, here, into a refcounted fo_buf_t
 * that every recipient's queue references. The encoding is wslay's own frame
 * encoder (one wslay frame context per loop, not per connection) writing into
 * that buffer; wslay's event API is not used because it copies each queued
 * message once per connection (STYLE.md, "Facts that bite" 2). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "delivery_int.h"

typedef struct {
  wslay_frame_context_ptr ctx;
  fo_buf_t *target;
} fo_wsenc_t;

static ssize_t enc_send(const uint8_t *data, size_t len, int flags, void *ud) {
  (void)flags;
  fo_wsenc_t *enc = ud;
  fo_buf_t *buf = enc->target;
  if (buf == NULL || buf->len + len > buf->cap)
    return WSLAY_ERR_WOULDBLOCK; /* cannot happen: the buffer is sized for the frame */
  memcpy(buf->data + buf->len, data, len);
  buf->len += (uint32_t)len;
  return (ssize_t)len;
}

static ssize_t enc_recv(uint8_t *buf, size_t len, int flags, void *ud) {
  (void)buf, (void)len, (void)flags, (void)ud;
  return WSLAY_ERR_WOULDBLOCK;
}

static int enc_genmask(uint8_t *buf, size_t len, void *ud) {
  (void)ud;
  memset(buf, 0, len); /* never asked: server frames are unmasked */
  return 0;
}

int fo__frame_init(fo_server_t *srv) {
  static const struct wslay_frame_callbacks cbs = {enc_send, enc_recv, enc_genmask};
  fo_wsenc_t *enc = calloc(1, sizeof(*enc));
  if (enc == NULL)
    return -ENOMEM;
  if (wslay_frame_context_init(&enc->ctx, &cbs, enc) != 0) {
    free(enc);
    return -ENOMEM;
  }
  srv->wsenc = enc;
  srv->ping_frame = fo__frame_new(srv, WSLAY_PING, NULL, 0);
  return srv->ping_frame ? 0 : -ENOMEM;
}

void fo__frame_free(fo_server_t *srv) {
  fo_wsenc_t *enc = srv->wsenc;
  fo_buf_unref(srv->ping_frame);
  srv->ping_frame = NULL;
  if (enc != NULL) {
    wslay_frame_context_free(enc->ctx);
    free(enc);
  }
  srv->wsenc = NULL;
}

fo_buf_t *fo__frame_new(fo_server_t *srv, int opcode, const void *payload, size_t n) {
  fo_wsenc_t *enc = srv->wsenc;
  fo_buf_t *buf = fo_buf_new(n + 10);
  if (buf == NULL)
    return NULL;
  struct wslay_frame_iocb iocb = {
      .fin = 1,
      .rsv = 0,
      .opcode = (uint8_t)opcode,
      .payload_length = n,
      .mask = 0,
      .data = payload,
      .data_length = n,
  };
  enc->target = buf;
  ssize_t r = wslay_frame_send(enc->ctx, &iocb);
  enc->target = NULL;
  if (r < 0 || (size_t)r != n || buf->len != n + (n < 126 ? 2 : n <= 0xffff ? 4 : 10)) {
    fo_buf_unref(buf);
    return NULL;
  }
  return buf;
}

/* delivery/ws.c: the client-frame parser fed from memory. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

typedef struct {
  int ops[16];
  char msgs[16][256];
  size_t lens[16];
  int n;
  int stop_after;
} sink_t;

static int on_msg(void *ud, int opcode, uint8_t *p, size_t n) {
  sink_t *s = ud;
  if (s->n < 16) {
    s->ops[s->n] = opcode;
    memcpy(s->msgs[s->n], p, n < 255 ? n : 255);
    s->msgs[s->n][n < 255 ? n : 255] = '\0';
    s->lens[s->n] = n;
  }
  s->n++;
  return s->stop_after && s->n >= s->stop_after;
}

/* Appends a masked client frame to out; returns its length. */
static size_t frame(uint8_t *out, int opcode, bool fin, const void *pl, size_t n, bool mask) {
  size_t h = 0;
  out[h++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  uint8_t m = mask ? 0x80 : 0;
  if (n < 126) {
    out[h++] = (uint8_t)(m | n);
  } else if (n <= 0xffff) {
    out[h++] = m | 126;
    out[h++] = (uint8_t)(n >> 8);
    out[h++] = (uint8_t)n;
  } else {
    out[h++] = m | 127;
    for (int i = 7; i >= 0; i--)
      out[h++] = (uint8_t)((uint64_t)n >> (8 * i));
  }
  const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  if (mask) {
    memcpy(out + h, key, 4);
    h += 4;
  }
  for (size_t i = 0; i < n; i++)
    out[h + i] = ((const uint8_t *)pl)[i] ^ (mask ? key[i & 3] : 0);
  return h + n;
}

static const fo_ws_limits_t lim = {1024, 4096};

static void ws_single_text_frame(void **state) {
  (void)state;
  uint8_t buf[256];
  size_t n = frame(buf, FO_WS_OP_TEXT, true, "{\"type\":\"ping\"}", 15, true);
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  assert_int_equal(fo_ws_rx_feed(&rx, buf, n, &lim, on_msg, &s), 0);
  assert_int_equal(s.n, 1);
  assert_int_equal(s.ops[0], FO_WS_OP_TEXT);
  assert_string_equal(s.msgs[0], "{\"type\":\"ping\"}");
  assert_null(rx); /* idle connections hold no parser state */
}

static void ws_byte_by_byte_and_fragments(void **state) {
  (void)state;
  uint8_t buf[512];
  size_t n = 0;
  n += frame(buf + n, FO_WS_OP_TEXT, false, "hel", 3, true);
  n += frame(buf + n, FO_WS_OP_PING, true, "p", 1, true); /* control inside a message */
  n += frame(buf + n, FO_WS_OP_CONT, false, "lo ", 3, true);
  n += frame(buf + n, FO_WS_OP_CONT, true, "world", 5, true);
  n += frame(buf + n, FO_WS_OP_BINARY, true, "\xff\x00", 2, true);
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  for (size_t i = 0; i < n; i++) {
    uint8_t b = buf[i];
    assert_int_equal(fo_ws_rx_feed(&rx, &b, 1, &lim, on_msg, &s), 0);
  }
  assert_int_equal(s.n, 3);
  assert_int_equal(s.ops[0], FO_WS_OP_PING);
  assert_int_equal(s.ops[1], FO_WS_OP_TEXT);
  assert_string_equal(s.msgs[1], "hello world");
  assert_int_equal(s.ops[2], FO_WS_OP_BINARY);
  assert_int_equal(s.lens[2], 2);
  assert_null(rx);
}

static int feed_one(const uint8_t *buf, size_t n) {
  uint8_t copy[8192];
  memcpy(copy, buf, n);
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  int rc = fo_ws_rx_feed(&rx, copy, n, &lim, on_msg, &s);
  fo_ws_rx_free(&rx);
  return rc;
}

static void ws_protocol_violations(void **state) {
  (void)state;
  uint8_t buf[8192];
  uint8_t big[2000];
  memset(big, 'a', sizeof(big));
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_TEXT, true, "x", 1, false)),
                   FO_WS_CLOSE_PROTOCOL);                                  /* unmasked */
  assert_int_equal(feed_one(buf, frame(buf, 0x3, true, "x", 1, true)), FO_WS_CLOSE_PROTOCOL);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CONT, true, "x", 1, true)),
                   FO_WS_CLOSE_PROTOCOL);                                  /* no start */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_PING, false, "x", 1, true)),
                   FO_WS_CLOSE_PROTOCOL);                                  /* fragmented control */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_PING, true, big, 126, true)),
                   FO_WS_CLOSE_PROTOCOL);                                  /* control > 125 */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_TEXT, true, big, 1500, true)),
                   FO_WS_CLOSE_TOO_BIG);                                   /* over max_frame */
  /* refused from the header alone: no payload needed */
  size_t h = frame(buf, FO_WS_OP_BINARY, true, big, 1500, true);
  (void)h;
  assert_int_equal(feed_one(buf, 8), FO_WS_CLOSE_TOO_BIG);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_TEXT, true, "\xc3\x28", 2, true)),
                   FO_WS_CLOSE_BAD_DATA);
  buf[0] = 0x80 | 0x40 | FO_WS_OP_TEXT; /* RSV1 */
  buf[1] = 0x80;
  memset(buf + 2, 0, 4);
  assert_int_equal(feed_one(buf, 6), FO_WS_CLOSE_PROTOCOL);
  /* non-minimal length encoding */
  uint8_t nm[] = {0x81, 0x80 | 126, 0x00, 0x05, 0, 0, 0, 0, 'a', 'b', 'c', 'd', 'e'};
  assert_int_equal(feed_one(nm, sizeof(nm)), FO_WS_CLOSE_PROTOCOL);
  /* message over max_message across fragments */
  size_t n = 0;
  for (int i = 0; i < 5; i++)
    n += frame(buf + n, i == 0 ? FO_WS_OP_TEXT : FO_WS_OP_CONT, false, big, 1000, true);
  assert_int_equal(feed_one(buf, n), FO_WS_CLOSE_TOO_BIG);
}

static void ws_close_payloads(void **state) {
  (void)state;
  uint8_t buf[256];
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "", 0, true)), 0);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03", 1, true)),
                   FO_WS_CLOSE_PROTOCOL);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03\xe8ok", 4, true)), 0);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03\xed", 2, true)),
                   FO_WS_CLOSE_PROTOCOL); /* 1005 must not be sent */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03\xe8\xff", 3, true)),
                   FO_WS_CLOSE_BAD_DATA);
  assert_true(fo_ws_close_code_valid(4000));
  assert_false(fo_ws_close_code_valid(1006));
  assert_false(fo_ws_close_code_valid(999));
}

static void ws_callback_stop_keeps_rest(void **state) {
  (void)state;
  uint8_t buf[256];
  size_t n = frame(buf, FO_WS_OP_TEXT, true, "a", 1, true);
  n += frame(buf + n, FO_WS_OP_TEXT, true, "b", 1, true);
  sink_t s = {.stop_after = 1};
  fo_ws_rx_t *rx = NULL;
  assert_int_equal(fo_ws_rx_feed(&rx, buf, n, &lim, on_msg, &s), 1);
  assert_int_equal(s.n, 1);
  fo_ws_rx_free(&rx);
}

static void ws_accept_key_rfc_example(void **state) {
  (void)state;
  char out[29];
  fo_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
  assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  uint8_t h[10];
  assert_int_equal(fo_ws_header(h, FO_WS_OP_TEXT, true, 5), 2);
  assert_int_equal(fo_ws_header(h, FO_WS_OP_TEXT, true, 300), 4);
  assert_int_equal(fo_ws_header(h, FO_WS_OP_TEXT, true, 70000), 10);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(ws_single_text_frame),
      cmocka_unit_test(ws_byte_by_byte_and_fragments),
      cmocka_unit_test(ws_protocol_violations),
      cmocka_unit_test(ws_close_payloads),
      cmocka_unit_test(ws_callback_stop_keeps_rest),
      cmocka_unit_test(ws_accept_key_rfc_example),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

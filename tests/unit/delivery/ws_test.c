/* delivery/ws.c: the client-frame parser fed from memory. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
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
                   FO_WS_CLOSE_PROTOCOL); /* unmasked */
  assert_int_equal(feed_one(buf, frame(buf, 0x3, true, "x", 1, true)), FO_WS_CLOSE_PROTOCOL);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CONT, true, "x", 1, true)),
                   FO_WS_CLOSE_PROTOCOL); /* no start */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_PING, false, "x", 1, true)),
                   FO_WS_CLOSE_PROTOCOL); /* fragmented control */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_PING, true, big, 126, true)),
                   FO_WS_CLOSE_PROTOCOL); /* control > 125 */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_TEXT, true, big, 1500, true)),
                   FO_WS_CLOSE_TOO_BIG); /* over max_frame */
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

/* Feeds buf[0..n) in the given cuts (cut[i] = end of read i); returns the
 * index of the read that failed (rc stored in *rc), or -1. */
static int feed_cuts(uint8_t *buf, size_t n, const size_t *cuts, int ncuts, sink_t *s,
                     fo_ws_rx_t **rx, int *rc) {
  size_t at = 0;
  for (int i = 0; i <= ncuts; i++) {
    size_t end = i < ncuts ? cuts[i] : n;
    *rc = fo_ws_rx_feed(rx, buf + at, end - at, &lim, on_msg, s);
    at = end;
    if (*rc != 0)
      return i;
  }
  return -1;
}

/* A text message whose first fragment holds a byte no continuation can
 * repair fails on that fragment, before the rest arrives (Autobahn 6.4.1). */
static void ws_utf8_fails_fast_per_fragment(void **state) {
  (void)state;
  static const char kosme[] = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
  uint8_t buf[256];
  char bad[64];
  int bn = snprintf(bad, sizeof(bad), "%s\xf4\x90\x80\x80", kosme);
  size_t n = frame(buf, FO_WS_OP_TEXT, false, bad, (size_t)bn, true);
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  assert_int_equal(fo_ws_rx_feed(&rx, buf, n, &lim, on_msg, &s), FO_WS_CLOSE_BAD_DATA);
  assert_int_equal(s.n, 0);
  fo_ws_rx_free(&rx);

  /* 6.4.2: the first fragment ends with a lead byte that is fine so far;
   * the second fragment's first byte makes it invalid. */
  char pre[64];
  int pn = snprintf(pre, sizeof(pre), "%s\xf4", kosme);
  n = frame(buf, FO_WS_OP_TEXT, false, pre, (size_t)pn, true);
  assert_int_equal(fo_ws_rx_feed(&rx, buf, n, &lim, on_msg, &s), 0);
  assert_non_null(rx);
  n = frame(buf, FO_WS_OP_CONT, false, "\x90\x80\x80", 3, true);
  assert_int_equal(fo_ws_rx_feed(&rx, buf, n, &lim, on_msg, &s), FO_WS_CLOSE_BAD_DATA);
  assert_int_equal(s.n, 0);
  fo_ws_rx_free(&rx);

  /* A message that ends inside a code point fails on its last fragment. */
  n = frame(buf, FO_WS_OP_TEXT, false, "ab", 2, true);
  n += frame(buf + n, FO_WS_OP_CONT, true, "\xe2\x82", 2, true);
  assert_int_equal(feed_one(buf, n), FO_WS_CLOSE_BAD_DATA);
}

/* One frame whose payload arrives in several reads fails with the read that
 * brings the bad byte (Autobahn 6.4.3/6.4.4), not when the frame is whole. */
static void ws_utf8_fails_fast_per_chunk(void **state) {
  (void)state;
  uint8_t buf[512];
  char pl[300];
  memset(pl, 'a', sizeof(pl));
  memcpy(pl + 100, "\xe2\x82\xac\xed\xa0\x80", 6); /* a euro sign, then a surrogate */
  size_t n = frame(buf, FO_WS_OP_TEXT, true, pl, sizeof(pl), true); /* 8-byte header */
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  int rc;
  /* header alone; 50 bytes; up to the \xed (fine so far); the \xa0 */
  size_t cuts[] = {3, 8, 58, 8 + 104, 8 + 105};
  assert_int_equal(feed_cuts(buf, n, cuts, 5, &s, &rx, &rc), 4);
  assert_int_equal(rc, FO_WS_CLOSE_BAD_DATA);
  assert_int_equal(s.n, 0);
  fo_ws_rx_free(&rx);

  /* The same frame without the surrogate, fed in the same reads, is handed
   * out whole once its last byte arrives; the state is gone afterwards. */
  memcpy(pl + 103, "xyz", 3);
  n = frame(buf, FO_WS_OP_TEXT, true, pl, sizeof(pl), true);
  memset(&s, 0, sizeof(s));
  assert_int_equal(feed_cuts(buf, n, cuts, 5, &s, &rx, &rc), -1);
  assert_int_equal(s.n, 1);
  assert_int_equal(s.lens[0], sizeof(pl));
  assert_memory_equal(s.msgs[0], pl, 255);
  assert_null(rx);

  /* Byte by byte, inside a fragmented message: the feed that brings the
   * 0xc0 (never valid) fails, the ones before it do not. */
  n = frame(buf, FO_WS_OP_TEXT, false, "ok", 2, true);
  size_t start = n;
  n += frame(buf + n, FO_WS_OP_CONT, true, "abc\xc0zz", 6, true);
  memset(&s, 0, sizeof(s));
  assert_int_equal(fo_ws_rx_feed(&rx, buf, start, &lim, on_msg, &s), 0);
  size_t bad_at = start + 6 + 3; /* header 2 + mask 4, then "abc" */
  for (size_t i = start; i < n; i++) {
    rc = fo_ws_rx_feed(&rx, buf + i, 1, &lim, on_msg, &s);
    if (i < bad_at) {
      assert_int_equal(rc, 0);
    } else {
      assert_int_equal(rc, FO_WS_CLOSE_BAD_DATA);
      break;
    }
  }
  fo_ws_rx_free(&rx);
}

/* Valid code points of every length, split at every byte position: across
 * two fragments, and across two reads of one frame (header included). */
static void ws_utf8_valid_split_everywhere(void **state) {
  (void)state;
  /* U+0041 U+0080 U+07FF U+0800 U+D7FF U+E000 U+FFFF U+10000 U+10FFFF U+00E9 */
  static const char txt[] = "A\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80"
                            "\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\xc3\xa9";
  const size_t tl = sizeof(txt) - 1;
  uint8_t buf[256];
  for (size_t k = 0; k <= tl; k++) {
    size_t n = frame(buf, FO_WS_OP_TEXT, false, txt, k, true);
    n += frame(buf + n, FO_WS_OP_PING, true, "\xc3\xa9", 2, true); /* control in between */
    n += frame(buf + n, FO_WS_OP_CONT, true, txt + k, tl - k, true);
    for (size_t cut = 0; cut <= n; cut++) {
      uint8_t copy[256];
      memcpy(copy, buf, n);
      sink_t s = {0};
      fo_ws_rx_t *rx = NULL;
      int rc;
      size_t cuts[] = {cut};
      assert_int_equal(feed_cuts(copy, n, cuts, 1, &s, &rx, &rc), -1);
      assert_int_equal(s.n, 2);
      assert_int_equal(s.ops[1], FO_WS_OP_TEXT);
      assert_int_equal(s.lens[1], tl);
      assert_memory_equal(s.msgs[1], txt, tl);
      assert_null(rx);
    }
  }
  size_t n = frame(buf, FO_WS_OP_TEXT, true, txt, tl, true);
  for (size_t a = 0; a <= n; a++) {
    for (size_t b = a; b <= n; b++) {
      uint8_t copy[256];
      memcpy(copy, buf, n);
      sink_t s = {0};
      fo_ws_rx_t *rx = NULL;
      int rc;
      size_t cuts[] = {a, b};
      assert_int_equal(feed_cuts(copy, n, cuts, 2, &s, &rx, &rc), -1);
      assert_int_equal(s.n, 1);
      assert_memory_equal(s.msgs[0], txt, tl);
      assert_null(rx);
    }
  }
}

/* Each bad sequence fails at its first impossible byte, fed byte by byte. */
static void ws_utf8_fails_at_the_first_bad_byte(void **state) {
  (void)state;
  static const struct {
    const char *s;
    size_t bad; /* index of the byte that makes it invalid */
  } cases[] = {
      {"\x80", 0},
      {"\xbf", 0},
      {"\xc0\xaf", 0},
      {"\xc1\xbf", 0},
      {"\xe0\x80\xaf", 1},
      {"\xe0\x9f\xbf", 1},
      {"\xed\xa0\x80", 1},
      {"\xed\xbf\xbf", 1},
      {"\xf0\x80\x80\xaf", 1},
      {"\xf0\x8f\xbf\xbf", 1},
      {"\xf4\x90\x80\x80", 1},
      {"\xf5\x80\x80\x80", 0},
      {"\xf8\x88\x80\x80", 0},
      {"\xfe", 0},
      {"\xff", 0},
      {"\xc2\x41", 1},
      {"\xe2\x82\x41", 2},
      {"\xf0\x9f\x98\x41", 3},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    char pl[16];
    size_t sl = strlen(cases[c].s);
    memcpy(pl, "ab", 2);
    memcpy(pl + 2, cases[c].s, sl);
    memcpy(pl + 2 + sl, "cd", 2);
    uint8_t buf[64];
    size_t n = frame(buf, FO_WS_OP_TEXT, true, pl, sl + 4, true);
    sink_t s = {0};
    fo_ws_rx_t *rx = NULL;
    size_t fail_at = 6 + 2 + cases[c].bad;
    for (size_t i = 0; i < n; i++) {
      int rc = fo_ws_rx_feed(&rx, buf + i, 1, &lim, on_msg, &s);
      if (i < fail_at) {
        assert_int_equal(rc, 0);
      } else {
        assert_int_equal(rc, FO_WS_CLOSE_BAD_DATA);
        break;
      }
    }
    assert_int_equal(s.n, 0);
    fo_ws_rx_free(&rx);
  }
}

/* Close reasons are still checked whole when the close frame is complete
 * (at most 125 bytes): fed byte by byte, the last byte fails. */
static void ws_close_reason_checked_when_complete(void **state) {
  (void)state;
  uint8_t buf[64];
  size_t n = frame(buf, FO_WS_OP_CLOSE, true, "\x03\xe8\xff\x61\x62", 5, true);
  sink_t s = {0};
  fo_ws_rx_t *rx = NULL;
  for (size_t i = 0; i < n; i++) {
    int rc = fo_ws_rx_feed(&rx, buf + i, 1, &lim, on_msg, &s);
    assert_int_equal(rc, i + 1 < n ? 0 : FO_WS_CLOSE_BAD_DATA);
  }
  fo_ws_rx_free(&rx);
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03\xe8\xe2\x82", 4, true)),
                   FO_WS_CLOSE_BAD_DATA); /* ends inside a code point */
  assert_int_equal(feed_one(buf, frame(buf, FO_WS_OP_CLOSE, true, "\x03\xe8\xe2\x82\xac", 5, true)),
                   0);
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
      cmocka_unit_test(ws_utf8_fails_fast_per_fragment),
      cmocka_unit_test(ws_utf8_fails_fast_per_chunk),
      cmocka_unit_test(ws_utf8_valid_split_everywhere),
      cmocka_unit_test(ws_utf8_fails_at_the_first_bad_byte),
      cmocka_unit_test(ws_close_reason_checked_when_complete),
      cmocka_unit_test(ws_accept_key_rfc_example),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

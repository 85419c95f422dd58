/* libFuzzer target: the RFC 6455 receive side of delivery (delivery/ws.c,
 * fo_ws_rx_feed). The first three bytes choose the frame and message limits
 * and how the stream is cut into reads; the rest is the client's byte
 * stream. The stream is parsed twice, whole and cut into reads, and both
 * runs must hand out the same messages and end with the same result (the
 * parser keeps partial frames itself). Every message handed out is checked
 * against RFC 6455 and the limits. A failure must be decided by the bytes
 * read so far (fail fast, e.g. invalid UTF-8 in a partial frame): the
 * stream cut after the read that failed, parsed whole, fails the same way. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_out.h"
#include "ws.h"
#include "fz_check.h"

#define MAX_EVENTS 4096

typedef struct {
  int op;
  size_t len;
  uint64_t hash;
} ev_t;

typedef struct {
  fo_ws_limits_t lim;
  ev_t ev[MAX_EVENTS];
  size_t nev;
} run_t;

static uint64_t fnv(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static int on_msg(void *ud, int op, uint8_t *p, size_t n) {
  run_t *r = ud;
  switch (op) {
  case FO_WS_OP_TEXT:
    CHECK(fo_utf8_valid(p, n));
    CHECK(n <= r->lim.max_message);
    break;
  case FO_WS_OP_BINARY:
    CHECK(n <= r->lim.max_message);
    break;
  case FO_WS_OP_CLOSE:
    CHECK(n <= 125 && n != 1);
    if (n >= 2) {
      CHECK(fo_ws_close_code_valid((unsigned)p[0] << 8 | p[1]));
      CHECK(fo_utf8_valid(p + 2, n - 2));
    }
    break;
  case FO_WS_OP_PING:
  case FO_WS_OP_PONG:
    CHECK(n <= 125);
    break;
  default:
    CHECK(!"unexpected opcode handed out");
  }
  /* Touch every byte: the payload must be readable and writable. */
  if (n > 0) {
    p[0] ^= 0;
    p[n - 1] ^= 0;
  }
  if (r->nev < MAX_EVENTS) {
    r->ev[r->nev].op = op;
    r->ev[r->nev].len = n;
    r->ev[r->nev].hash = fnv(p, n);
    r->nev++;
  }
  return 0;
}

static uint32_t next(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* Feeds the stream in reads of at most `max` bytes (0: all at once); *end
 * is where the last read fed ended. */
static int run(run_t *r, const uint8_t *data, size_t size, size_t max, uint32_t seed, size_t *end) {
  fo_ws_rx_t *rx = NULL;
  int rc = 0;
  size_t off = 0;
  while (off < size) {
    size_t n = size - off;
    if (max > 0) {
      size_t c = 1 + next(&seed) % max;
      if (c < n)
        n = c;
    }
    /* Each read in its own exact-size buffer, as the socket would give it. */
    uint8_t *chunk = malloc(n);
    memcpy(chunk, data + off, n);
    rc = fo_ws_rx_feed(&rx, chunk, n, &r->lim, on_msg, r);
    free(chunk);
    off += n;
    *end = off;
    if (rc != 0)
      break;
    /* Idle connections hold no state. */
    if (rx == NULL)
      CHECK(fo_ws_rx_bytes(rx) == 0);
    else
      CHECK(fo_ws_rx_bytes(rx) <= 2 * (r->lim.max_message + r->lim.max_frame) + 65536);
  }
  if (rc != 0)
    CHECK(rc == FO_WS_CLOSE_PROTOCOL || rc == FO_WS_CLOSE_BAD_DATA || rc == FO_WS_CLOSE_TOO_BIG ||
          rc == -ENOMEM);
  fo_ws_rx_free(&rx);
  CHECK(rx == NULL);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  static run_t a, b, c;
  fo_ws_limits_t lim;
  lim.max_frame = 125 + (size_t)data[0] * 16;
  lim.max_message = lim.max_frame + (size_t)data[1] * 64;
  size_t max = 1 + (data[2] & 0x7f);
  uint32_t seed = 0x12345u + data[2];
  data += 3;
  size -= 3;
  a.lim = b.lim = c.lim = lim;
  a.nev = b.nev = c.nev = 0;
  size_t end_a = 0, end_b = 0, end_c = 0;
  int ra = run(&a, data, size, 0, seed, &end_a);
  int rb = run(&b, data, size, max, seed, &end_b);
  if (ra != rb || a.nev != b.nev) {
    fprintf(stderr, "whole: rc=%d events=%zu; in reads of <= %zu: rc=%d events=%zu\n", ra, a.nev,
            max, rb, b.nev);
    abort();
  }
  for (size_t i = 0; i < a.nev; i++) {
    CHECK(a.ev[i].op == b.ev[i].op);
    CHECK(a.ev[i].len == b.ev[i].len);
    CHECK(a.ev[i].hash == b.ev[i].hash);
  }
  if (rb != 0 && rb != -ENOMEM) {
    int rc = run(&c, data, end_b, 0, seed, &end_c);
    if (rc != rb || c.nev != b.nev) {
      fprintf(stderr,
              "failed with %d in the read ending at %zu, but those %zu bytes alone: "
              "rc=%d events=%zu (not %zu)\n",
              rb, end_b, end_b, rc, c.nev, b.nev);
      abort();
    }
  }
  return 0;
}

/* libFuzzer target: delivery's HTTP side of a connection (delivery/handshake.c):
 * the RFC 6455 upgrade request with its header checks and authentication,
 * /healthz, /readyz, /metrics and errors, then whatever bytes follow the
 * upgrade (early frames). Runs on a real delivery server object with a
 * connection on a socketpair (see fz_delivery.h); everything the server
 * writes back is checked (HTTP head, then well-formed server frames), and
 * the server must be empty again after the connection is gone.
 * Byte 0 chooses how the rest is cut into reads. In the rest, "%T%" is
 * replaced by a valid token (sub "alice", rooms ["lobby","team-*"]) and
 * "%E%" by an expired one, so the fuzzer gets past authentication. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fz_delivery.h"
#include "fz_check.h"

static char *g_tok, *g_expired;

static uint32_t next(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void put(uint8_t **b, size_t *n, size_t *cap, const void *p, size_t len) {
  if (*n + len > *cap) {
    while (*n + len > *cap)
      *cap = *cap ? *cap * 2 : 1024;
    *b = realloc(*b, *cap);
    if (*b == NULL)
      abort();
  }
  memcpy(*b + *n, p, len);
  *n += len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const opts[] = {"--max-frame-bytes",
                                     "1024",
                                     "--max-message-bytes",
                                     "4096",
                                     "--max-handshake-bytes",
                                     "2048",
                                     "--origins",
                                     "https://ok.example,http://localhost",
                                     NULL};
  fo_server_t *srv = fz_server(opts);
  if (g_tok == NULL) {
    g_tok = fz_token("alice", "[\"lobby\",\"team-*\"]");
    static const char hdr[] = "{\"alg\":\"HS256\"}";
    static const char cl[] = "{\"sub\":\"alice\",\"exp\":1000}";
    g_expired = fz_sign(FZ_SECRET, (const uint8_t *)hdr, sizeof(hdr) - 1, (const uint8_t *)cl,
                        sizeof(cl) - 1);
  }
  if (size < 1 || size > 16384)
    return 0;
  uint8_t chunking = data[0];
  uint32_t rng = 0xabcdefu ^ chunking;
  data++;
  size--;
  uint8_t *in = NULL;
  size_t n = 0, cap = 0;
  for (size_t i = 0; i < size;) {
    if (i + 3 <= size && data[i] == '%' && data[i + 2] == '%' &&
        (data[i + 1] == 'T' || data[i + 1] == 'E')) {
      const char *t = data[i + 1] == 'T' ? g_tok : g_expired;
      put(&in, &n, &cap, t, strlen(t));
      i += 3;
    } else {
      put(&in, &n, &cap, &data[i], 1);
      i++;
    }
  }
  fz_conn_t fc;
  fz_conn_open(srv, &fc);
  size_t off = 0;
  while (off < n && fc.conn != NULL) {
    size_t len = n - off;
    if (chunking != 0xff) {
      size_t c = 1 + next(&rng) % (1 + (size_t)(chunking & 0x7f) * 4);
      if (c < len)
        len = c;
    }
    fz_conn_feed(&fc, in + off, len);
    fz_pump(srv, &fc, 1);
    off += len;
  }
  fz_finish(srv, &fc, 1);
  free(in);
  return 0;
}

/* libFuzzer target: HTTP/1.1 request parsing (common/http.c on Debian's
 * http-parser), the code in front of ingest's API and delivery's upgrade.
 * The first three input bytes choose the header and body limits and how
 * the rest is cut into reads (one byte at a time up to everything at once);
 * the request callback sometimes pauses, as the services do. Checks every
 * request handed out against the limits and the documented shape, and the
 * helpers (header lookup, query parameters, bearer token) on it. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "fz_check.h"

typedef struct {
  fo_http_limits_t lim;
  uint32_t rng;
  bool paused; /* the last callback asked to pause */
  bool last_upgrade;
  int requests;
} st_t;

static uint32_t next(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static int on_request(void *ud, fo_http_request_t *req) {
  st_t *st = ud;
  st->requests++;
  CHECK(req->method != NULL);
  CHECK(req->path != NULL);
  CHECK(req->nheaders >= 0 && req->nheaders <= FO_HTTP_MAX_HEADERS);
  CHECK(req->http_major == 1);
  CHECK(req->body.len <= st->lim.max_body_bytes);
  CHECK(strchr(req->path, '?') == NULL);
  size_t hdr_bytes = strlen(req->path) + (req->query ? strlen(req->query) : 0);
  for (int i = 0; i < req->nheaders; i++) {
    const fo_http_header_t *h = &req->headers[i];
    CHECK(h->name != NULL && h->value != NULL);
    for (const char *c = h->name; *c != '\0'; c++)
      CHECK(!isupper((unsigned char)*c));
    CHECK(fo_http_header(req, h->name) != NULL);
    hdr_bytes += strlen(h->name) + strlen(h->value);
  }
  CHECK(hdr_bytes <= st->lim.max_header_bytes);
  (void)fo_http_header(req, "host");
  const char *b = fo_http_bearer(req);
  if (b != NULL)
    CHECK(*b != '\0' && *b != ' ');
  static const char *const keys[] = {"token", "a", ""};
  for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
    char *v = fo_http_query_param(req->query, keys[k]);
    if (v != NULL)
      CHECK(strlen(v) <= strlen(req->query));
    free(v);
  }
  /* Steal a member, as a service may. */
  if (next(&st->rng) & 1) {
    free(req->path);
    req->path = NULL;
  }
  st->last_upgrade = req->upgrade;
  st->paused = (next(&st->rng) & 3) == 0;
  return st->paused;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  st_t st;
  memset(&st, 0, sizeof(st));
  st.lim.max_header_bytes = 64 + (size_t)data[0] * 64;
  st.lim.max_body_bytes = (size_t)data[1] * 32;
  uint8_t chunking = data[2];
  st.rng = 0x9e3779b9u ^ chunking;
  data += 3;
  size -= 3;
  fo_http_parser_t *p = fo_http_parser_new(&st.lim, on_request, &st);
  if (p == NULL)
    return 0;
  size_t off = 0;
  int guard = 0;
  while (off < size && guard++ < 100000) {
    size_t n = size - off;
    if (chunking != 0xff) {
      size_t max = 1 + (chunking & 0x3f);
      size_t c = 1 + next(&st.rng) % max;
      if (c < n)
        n = c;
    }
    /* An exact-size copy of this read: over-reads show up in ASan. */
    char *chunk = malloc(n);
    memcpy(chunk, data + off, n);
    st.paused = false;
    ssize_t r = fo_http_parser_feed(p, chunk, n);
    free(chunk);
    if (r < 0) {
      CHECK(r == -EMSGSIZE || r == -EPROTO || r == -ENOTSUP || r == -ENOMEM);
      CHECK(fo_http_parser_error(p) != NULL);
      /* Errors are sticky. */
      CHECK(fo_http_parser_feed(p, "x", 1) == r);
      break;
    }
    CHECK((size_t)r <= n);
    off += (size_t)r;
    if ((size_t)r < n) {
      if (st.paused) {
        fo_http_parser_resume(p);
        continue;
      }
      /* Not paused and not everything taken: only after an upgrade. */
      CHECK(st.last_upgrade);
      break;
    }
    if (st.paused)
      fo_http_parser_resume(p);
  }
  (void)fo_http_parser_mid_request(p);
  (void)fo_http_parser_body_too_large(p);
  fo_http_parser_free(p);
  return 0;
}

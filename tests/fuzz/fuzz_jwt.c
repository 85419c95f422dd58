/* libFuzzer target: JWT verification of the WebSocket handshake
 * (delivery/auth.c, fo_auth_verify) and its base64url decoder.
 * Input byte 0 picks the mode:
 *   even: the rest is a token as a client would send it (nothing the
 *         fuzzer makes can carry a valid signature, so it must be refused);
 *   odd:  the rest is "HEADER-JSON \0 CLAIMS-JSON": the harness signs it
 *         with the server's secret, so the header and claim checks run
 *         (alg, sub, exp, nbf, rooms), and an accepted token must have
 *         alg HS256, a non-empty sub of at most 256 bytes, exp in the future
 *         and rooms an array of strings; and the same token checked with
 *         --jwt-audience, --jwt-issuer and --max-token-lifetime-s set is
 *         only accepted when it passes those too. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth.h"
#include "fz_delivery.h"
#include "fz_check.h"

#define NOW 1700000000

static void check_accepted(const char *tok, size_t len, const fo_auth_claims_t *cl) {
  CHECK(cl->sub != NULL && cl->sub_len > 0 && cl->sub_len <= 256);
  CHECK(strlen(cl->sub) <= cl->sub_len);
  CHECK(cl->exp >= NOW);
  if (cl->rooms != NULL) {
    CHECK(json_is_array(cl->rooms));
    size_t i;
    json_t *r;
    json_array_foreach(cl->rooms, i, r) CHECK(json_is_string(r));
  }
  /* The header really says HS256. */
  const char *dot = memchr(tok, '.', len);
  CHECK(dot != NULL);
  size_t hl = (size_t)(dot - tok);
  uint8_t *hdr = malloc(hl * 3 / 4 + 3);
  int n = fo_b64url_decode(tok, hl, hdr);
  CHECK(n >= 0);
  json_t *h = json_loadb((const char *)hdr, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
  CHECK(h != NULL);
  const char *alg = json_string_value(json_object_get(h, "alg"));
  CHECK(alg != NULL && strcmp(alg, "HS256") == 0);
  CHECK(json_object_get(h, "crit") == NULL);
  json_decref(h);
  free(hdr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  int mode = data[0] & 1;
  data++;
  size--;
  fo_auth_claims_t cl;
  char err[128];
  if (mode == 0) {
    /* The decoder alone, into a buffer of exactly the documented size. */
    uint8_t *out = malloc(size * 3 / 4 + 3);
    int n = fo_b64url_decode((const char *)data, size, out);
    CHECK(n == -EINVAL || (n >= 0 && (size_t)n <= size * 3 / 4 + 3));
    free(out);
    char *tok = malloc(size ? size : 1);
    memcpy(tok, data, size);
    int rc = fo_auth_verify(tok, size, FZ_SECRET, strlen(FZ_SECRET), NOW, &cl, err, sizeof(err));
    if (rc == 0) {
      fprintf(stderr, "a token the fuzzer made was accepted: %.*s\n", (int)size, tok);
      abort();
    }
    CHECK(rc == -EACCES || rc == -EINVAL || rc == -ENOMEM);
    CHECK(cl.sub == NULL && cl.rooms == NULL);
    free(tok);
    return 0;
  }
  const uint8_t *z = memchr(data, 0, size);
  if (z == NULL)
    return 0;
  size_t hlen = (size_t)(z - data);
  char *tok = fz_sign(FZ_SECRET, data, hlen, z + 1, size - hlen - 1);
  size_t len = strlen(tok);
  int rc = fo_auth_verify(tok, len, FZ_SECRET, strlen(FZ_SECRET), NOW, &cl, err, sizeof(err));
  fo_auth_opts_t strict = {FZ_SECRET, strlen(FZ_SECRET), "fanout", "fz", 3600};
  fo_auth_claims_t scl;
  int src = fo_auth_check(&strict, tok, len, NOW, &scl, err, sizeof(err));
  if (src == 0) {
    CHECK(rc == 0); /* the options only ever refuse more */
    CHECK(scl.exp - NOW <= 3600);
    fo_auth_claims_free(&scl);
  } else {
    CHECK(src == -EACCES || src == -EINVAL || src == -ENOMEM || src == -EKEYEXPIRED);
  }
  if (rc == 0) {
    check_accepted(tok, len, &cl);
    fo_auth_claims_free(&cl);
    /* The same token signed with another key is refused. */
    char *wrong = fz_sign("another-secret", data, hlen, z + 1, size - hlen - 1);
    CHECK(fo_auth_verify(wrong, strlen(wrong), FZ_SECRET, strlen(FZ_SECRET), NOW, &cl, err,
                         sizeof(err)) == -EACCES);
    free(wrong);
    /* ...and so is every truncation of its signature. */
    CHECK(fo_auth_verify(tok, len - 1, FZ_SECRET, strlen(FZ_SECRET), NOW, &cl, err, sizeof(err)) !=
          0);
  } else {
    CHECK(rc == -EACCES || rc == -EINVAL || rc == -ENOMEM);
    CHECK(cl.sub == NULL && cl.rooms == NULL);
  }
  free(tok);
  return 0;
}

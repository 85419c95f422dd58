/* delivery/auth.c: HS256 JWT verification. Tokens made with the same
 * HMAC and base64url code paths as a client would (OpenSSL). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"

static void b64url(const void *in, size_t n, char *out) {
  char tmp[2048];
  int len = EVP_EncodeBlock((unsigned char *)tmp, in, (int)n);
  int o = 0;
  for (int i = 0; i < len; i++) {
    char c = tmp[i];
    if (c == '=')
      break;
    out[o++] = c == '+' ? '-' : c == '/' ? '_' : c;
  }
  out[o] = '\0';
}

static void make(char *tok, const char *secret, const char *hdr, const char *claims) {
  char h[1024], c[1024], sig[128];
  b64url(hdr, strlen(hdr), h);
  b64url(claims, strlen(claims), c);
  char signing[2200];
  snprintf(signing, sizeof(signing), "%s.%s", h, c);
  unsigned char md[32];
  unsigned mdlen = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)signing, strlen(signing), md,
       &mdlen);
  b64url(md, mdlen, sig);
  sprintf(tok, "%s.%s", signing, sig); /* sizes are bounded by the test data */
}

#define NOW 1700000000
static const char *HS = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static int verify(const char *tok, fo_auth_claims_t *cl) {
  char err[128];
  return fo_auth_verify(tok, strlen(tok), "k", 1, NOW, cl, err, sizeof(err));
}

static void auth_valid_token_with_rooms(void **state) {
  (void)state;
  char tok[4096];
  make(tok, "k", HS, "{\"sub\":\"alice\",\"exp\":1700000100,\"rooms\":[\"a\",\"news.*\"]}");
  fo_auth_claims_t cl;
  assert_int_equal(verify(tok, &cl), 0);
  assert_string_equal(cl.sub, "alice");
  assert_int_equal(cl.sub_len, 5);
  assert_int_equal(json_array_size(cl.rooms), 2);
  fo_auth_claims_free(&cl);
}

static void auth_rejections(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_claims_t cl;
  make(tok, "other", HS, "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* wrong key */
  make(tok, "k", "{\"alg\":\"HS512\"}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* alg */
  make(tok, "k", "{\"alg\":\"none\"}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1699999999}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* expired */
  make(tok, "k", HS, "{\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* no sub */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1e300}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* exp beyond int64 (fuzz_jwt) */
  make(tok, "k", HS, "{\"sub\":\"a\"}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* no exp */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"rooms\":\"x\"}");
  assert_int_equal(verify(tok, &cl), -EACCES);                  /* rooms not an array */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100}");
  tok[strlen(tok) - 2] ^= 1;                                    /* tampered signature */
  assert_int_equal(verify(tok, &cl), -EACCES);
  assert_int_not_equal(verify("a.b", &cl), 0);
  assert_int_not_equal(verify("a.b.c.d", &cl), 0);
  assert_int_equal(verify("", &cl), -EACCES);
}

static void auth_b64url(void **state) {
  (void)state;
  uint8_t out[16];
  assert_int_equal(fo_b64url_decode("aGk", 3, out), 2);
  assert_memory_equal(out, "hi", 2);
  assert_int_equal(fo_b64url_decode("a", 1, out), -EINVAL);
  assert_int_equal(fo_b64url_decode("aG+", 3, out), -EINVAL); /* not the url alphabet */
  assert_int_equal(fo_b64url_decode("aGl", 3, out), -EINVAL); /* non-canonical tail bits */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(auth_valid_token_with_rooms),
      cmocka_unit_test(auth_rejections),
      cmocka_unit_test(auth_b64url),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

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
#include "delivery_int.h"

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
  assert_int_equal(verify(tok, &cl), -EACCES); /* wrong key */
  make(tok, "k", "{\"alg\":\"HS512\"}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* alg */
  make(tok, "k", "{\"alg\":\"none\"}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1699999999}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* expired */
  make(tok, "k", HS, "{\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* no sub */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1e300}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* exp beyond int64 (fuzz_jwt) */
  make(tok, "k", HS, "{\"sub\":\"a\"}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* no exp */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"rooms\":\"x\"}");
  assert_int_equal(verify(tok, &cl), -EACCES); /* rooms not an array */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100}");
  tok[strlen(tok) - 2] ^= 1; /* tampered signature */
  assert_int_equal(verify(tok, &cl), -EACCES);
  assert_int_not_equal(verify("a.b", &cl), 0);
  assert_int_not_equal(verify("a.b.c.d", &cl), 0);
  assert_int_equal(verify("", &cl), -EACCES);
}

static int check(const fo_auth_opts_t *o, const char *tok) {
  char err[128];
  fo_auth_claims_t cl;
  int rc = fo_auth_check(o, tok, strlen(tok), NOW, &cl, err, sizeof(err));
  if (rc == 0)
    fo_auth_claims_free(&cl);
  return rc;
}

static void auth_duplicates_refused(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_claims_t cl;
  /* the last "sub" would win in a lenient parser */
  make(tok, "k", HS, "{\"sub\":\"alice\",\"exp\":1700000100,\"sub\":\"admin\"}");
  assert_int_equal(verify(tok, &cl), -EINVAL);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"exp\":4102444800}");
  assert_int_equal(verify(tok, &cl), -EINVAL);
  make(tok, "k", "{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EINVAL);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"rooms\":[\"x\",\"x\"]}");
  assert_int_equal(verify(tok, &cl), 0); /* repeated array items are no duplicate members */
  fo_auth_claims_free(&cl);
}

static void auth_crit_refused(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_claims_t cl;
  make(tok, "k", "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);
  make(tok, "k", "{\"alg\":\"HS256\",\"crit\":[]}", "{\"sub\":\"a\",\"exp\":1700000100}");
  assert_int_equal(verify(tok, &cl), -EACCES);
}

static void auth_audience_and_issuer(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_opts_t o = {"k", 1, "fanout", "https://id.example", 0};
  make(tok, "k", HS,
       "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"fanout\",\"iss\":\"https://id.example\"}");
  assert_int_equal(check(&o, tok), 0);
  make(tok, "k", HS,
       "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":[\"billing\",\"fanout\"],\"iss\":\"https://"
       "id.example\"}");
  assert_int_equal(check(&o, tok), 0);
  make(tok, "k", HS,
       "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"billing\",\"iss\":\"https://id.example\"}");
  assert_int_equal(check(&o, tok), -EACCES);
  make(tok, "k", HS,
       "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":[\"billing\"],\"iss\":\"https://id.example\"}");
  assert_int_equal(check(&o, tok), -EACCES);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"iss\":\"https://id.example\"}");
  assert_int_equal(check(&o, tok), -EACCES); /* no aud */
  make(tok, "k", HS,
       "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"fanout\",\"iss\":\"https://evil\"}");
  assert_int_equal(check(&o, tok), -EACCES);
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"fanout\"}");
  assert_int_equal(check(&o, tok), -EACCES); /* no iss */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"fanout\",\"iss\":7}");
  assert_int_equal(check(&o, tok), -EACCES);
  /* unset: not checked */
  fo_auth_opts_t none = {"k", 1, NULL, NULL, 0};
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700000100,\"aud\":\"billing\",\"iss\":\"x\"}");
  assert_int_equal(check(&none, tok), 0);
}

static void auth_max_lifetime(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_opts_t o = {"k", 1, NULL, NULL, 3600};
  make(tok, "k", HS, "{\"sub\":\"a\",\"iat\":1700000000,\"exp\":1700000600}");
  assert_int_equal(check(&o, tok), 0); /* 10 min */
  make(tok, "k", HS, "{\"sub\":\"a\",\"iat\":1700000000,\"exp\":1700003600}");
  assert_int_equal(check(&o, tok), 0); /* exactly the limit */
  make(tok, "k", HS, "{\"sub\":\"a\",\"iat\":1700000000,\"exp\":1731536000}");
  assert_int_equal(check(&o, tok), -EACCES); /* a year */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700003601}");
  assert_int_equal(check(&o, tok), -EACCES); /* no iat: exp - now */
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1700003000}");
  assert_int_equal(check(&o, tok), 0);
  make(tok, "k", HS, "{\"sub\":\"a\",\"iat\":1731530000,\"exp\":1731536000}");
  assert_int_equal(check(&o, tok), -EACCES); /* iat in the future */
  make(tok, "k", HS, "{\"sub\":\"a\",\"iat\":\"yesterday\",\"exp\":1700000600}");
  assert_int_equal(check(&o, tok), -EACCES);
  fo_auth_opts_t unlimited = {"k", 1, NULL, NULL, 0};
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":4102444800}");
  assert_int_equal(check(&unlimited, tok), 0);
}

static void auth_expired_is_told_apart(void **state) {
  (void)state;
  char tok[4096];
  fo_auth_opts_t o = {"k", 1, NULL, NULL, 0};
  make(tok, "k", HS, "{\"sub\":\"a\",\"exp\":1699999999}");
  assert_int_equal(check(&o, tok), -EKEYEXPIRED);
  make(tok, "other", HS, "{\"sub\":\"a\",\"exp\":1699999999}");
  assert_int_equal(check(&o, tok), -EACCES); /* forged: not "expired" */
}

static int finalize_with(const char *const *args, int n, fo_dcfg_t *cfg, char *err) {
  char *argv[16] = {"fanout-delivery"};
  for (int i = 0; i < n; i++)
    argv[i + 1] = (char *)args[i];
  memset(cfg, 0, sizeof(*cfg));
  if (fo_cfg_load(fo_dcfg_fields, fo_dcfg_nfields, cfg, n + 1, argv, err, 256) != FO_CFG_OK)
    return -1;
  return fo_dcfg_finalize(cfg, err, 256);
}

static void config_secret_and_server_id(void **state) {
  (void)state;
  fo_dcfg_t cfg;
  char err[256];
  const char *short_secret[] = {"--jwt-secret", "0123456789abcdef0123456789abcde"}; /* 31 */
  assert_int_equal(finalize_with(short_secret, 2, &cfg, err), -EINVAL);
  assert_non_null(strstr(err, "jwt-secret"));
  assert_null(strstr(err, "0123456789abcdef")); /* the value is not echoed */
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *ok[] = {"--jwt-secret", "0123456789abcdef0123456789abcdef"}; /* 32 */
  assert_int_equal(finalize_with(ok, 2, &cfg, err), 0);
  /* the default server id (hostname-pid) fits the limit */
  assert_true(strlen(cfg.server_id) <= FO_SERVER_ID_MAX);
  assert_int_equal(cfg.max_connections_per_user, 100);
  assert_int_equal(cfg.max_pending_handshakes, 10000); /* max(1024, 100000 / 10) */
  assert_int_equal(cfg.max_token_lifetime_s, 0);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  char id64[65], id65[66];
  memset(id64, 'x', 64);
  id64[64] = '\0';
  memset(id65, 'x', 65);
  id65[65] = '\0';
  const char *sid64[] = {"--jwt-secret", "0123456789abcdef0123456789abcdef", "--server-id", id64};
  assert_int_equal(finalize_with(sid64, 4, &cfg, err), 0);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *sid65[] = {"--jwt-secret", "0123456789abcdef0123456789abcdef", "--server-id", id65};
  assert_int_equal(finalize_with(sid65, 4, &cfg, err), -1);
  assert_non_null(strstr(err, "server-id"));
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *small[] = {"--jwt-secret", "0123456789abcdef0123456789abcdef", "--max-connections",
                         "2000"};
  assert_int_equal(finalize_with(small, 4, &cfg, err), 0);
  assert_int_equal(cfg.max_pending_handshakes, 1024);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
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
      cmocka_unit_test(auth_duplicates_refused),
      cmocka_unit_test(auth_crit_refused),
      cmocka_unit_test(auth_audience_and_issuer),
      cmocka_unit_test(auth_max_lifetime),
      cmocka_unit_test(auth_expired_is_told_apart),
      cmocka_unit_test(config_secret_and_server_id),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

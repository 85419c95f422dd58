#include "auth.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAX_TOKEN 8192

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '-')
    return 62;
  if (c == '_')
    return 63;
  return -1;
}

int fo_b64url_decode(const char *in, size_t len, uint8_t *out) {
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  if (len % 4 == 1)
    return -EINVAL;
  for (size_t i = 0; i < len; i++) {
    int v = b64val((unsigned char)in[i]);
    if (v < 0)
      return -EINVAL;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  /* Leftover bits must be zero (canonical encoding). */
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
    return -EINVAL;
  return (int)o;
}

static json_t *decode_json_part(const char *p, size_t n) {
  uint8_t *buf = malloc(n * 3 / 4 + 4);
  if (buf == NULL)
    return NULL;
  int m = fo_b64url_decode(p, n, buf);
  json_t *j = NULL;
  if (m >= 0)
    j = json_loadb((const char *)buf, (size_t)m, JSON_REJECT_DUPLICATES, NULL);
  free(buf);
  return j;
}

static int fail(char *err, size_t errlen, int code, const char *why) {
  snprintf(err, errlen, "%s", why);
  return code;
}

/* `aud` is a string or an array of strings (RFC 7519 4.1.3). */
static bool aud_matches(const json_t *aud, const char *want) {
  if (json_is_string(aud))
    return strcmp(json_string_value(aud), want) == 0;
  if (!json_is_array(aud))
    return false;
  size_t i;
  const json_t *a;
  json_array_foreach(aud, i, a) {
    if (json_is_string(a) && strcmp(json_string_value(a), want) == 0)
      return true;
  }
  return false;
}

int fo_auth_verify(const char *token, size_t len, const char *secret, size_t secret_len,
                   int64_t now_s, fo_auth_claims_t *out, char *err, size_t errlen) {
  fo_auth_opts_t opts = {secret, secret_len, NULL, NULL, 0};
  int rc = fo_auth_check(&opts, token, len, now_s, out, err, errlen);
  return rc == -EKEYEXPIRED ? -EACCES : rc;
}

int fo_auth_check(const fo_auth_opts_t *opts, const char *token, size_t len, int64_t now_s,
                  fo_auth_claims_t *out, char *err, size_t errlen) {
  const char *secret = opts->secret;
  size_t secret_len = opts->secret_len;
  json_t *hdr = NULL, *claims = NULL;
  int rc = 0;
  memset(out, 0, sizeof(*out));
  if (token == NULL || len == 0) {
    rc = fail(err, errlen, -EACCES, "no token");
    goto done;
  }
  if (len > MAX_TOKEN) {
    rc = fail(err, errlen, -EINVAL, "token too long");
    goto done;
  }
  const char *dot1 = memchr(token, '.', len);
  if (dot1 == NULL) {
    rc = fail(err, errlen, -EINVAL, "malformed token");
    goto done;
  }
  const char *dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
  if (dot2 == NULL) {
    rc = fail(err, errlen, -EINVAL, "malformed token");
    goto done;
  }
  const char *sig = dot2 + 1;
  size_t siglen = len - (size_t)(sig - token);
  if (memchr(sig, '.', siglen) != NULL) {
    rc = fail(err, errlen, -EINVAL, "malformed token");
    goto done;
  }

  hdr = decode_json_part(token, (size_t)(dot1 - token));
  if (!json_is_object(hdr)) {
    rc = fail(err, errlen, -EINVAL, "bad header");
    goto done;
  }
  const char *alg = json_string_value(json_object_get(hdr, "alg"));
  if (alg == NULL || strcmp(alg, "HS256") != 0) {
    rc = fail(err, errlen, -EACCES, "alg must be HS256");
    goto done;
  }
  /* RFC 7515 4.1.11: extensions listed in `crit` must be understood; we
   * understand none. */
  if (json_object_get(hdr, "crit") != NULL) {
    rc = fail(err, errlen, -EACCES, "crit not supported");
    goto done;
  }

  uint8_t want[EVP_MAX_MD_SIZE];
  unsigned wantlen = 0;
  if (HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)token,
           (size_t)(dot2 - token), want, &wantlen) == NULL) {
    rc = fail(err, errlen, -ENOMEM, "hmac failed");
    goto done;
  }
  uint8_t got[64];
  if (siglen > 86) {
    rc = fail(err, errlen, -EACCES, "bad signature");
    goto done;
  }
  int gotlen = fo_b64url_decode(sig, siglen, got);
  if (gotlen != (int)wantlen || CRYPTO_memcmp(got, want, wantlen) != 0) {
    rc = fail(err, errlen, -EACCES, "bad signature");
    goto done;
  }

  claims = decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
  if (!json_is_object(claims)) {
    rc = fail(err, errlen, -EINVAL, "bad claims");
    goto done;
  }
  json_t *sub = json_object_get(claims, "sub");
  if (!json_is_string(sub) || json_string_length(sub) == 0) {
    rc = fail(err, errlen, -EACCES, "no sub");
    goto done;
  }
  if (json_string_length(sub) > 256) {
    rc = fail(err, errlen, -EACCES, "sub too long");
    goto done;
  }
  json_t *exp = json_object_get(claims, "exp");
  if (!json_is_number(exp)) {
    rc = fail(err, errlen, -EACCES, "no exp");
    goto done;
  }
  double expv = json_number_value(exp);
  if (expv <= (double)now_s) {
    rc = fail(err, errlen, -EKEYEXPIRED, "expired");
    goto done;
  }
  if (!(expv < 9.0e18)) { /* would not fit the int64_t below (NaN included) */
    rc = fail(err, errlen, -EACCES, "exp out of range");
    goto done;
  }
  json_t *nbf = json_object_get(claims, "nbf");
  if (nbf != NULL && (!json_is_number(nbf) || json_number_value(nbf) > (double)now_s)) {
    rc = fail(err, errlen, -EACCES, "not yet valid");
    goto done;
  }
  if (opts->max_lifetime_s > 0) {
    /* Without `iat` the lifetime left is what counts; an `iat` in the
     * future does not shorten it. */
    json_t *iat = json_object_get(claims, "iat");
    if (iat != NULL && !json_is_number(iat)) {
      rc = fail(err, errlen, -EACCES, "iat not a number");
      goto done;
    }
    double from = (double)now_s;
    if (iat != NULL && json_number_value(iat) < from)
      from = json_number_value(iat);
    if (!(expv - from <= (double)opts->max_lifetime_s)) {
      rc = fail(err, errlen, -EACCES, "lifetime over the maximum");
      goto done;
    }
  }
  if (opts->audience != NULL && !aud_matches(json_object_get(claims, "aud"), opts->audience)) {
    rc = fail(err, errlen, -EACCES, "wrong aud");
    goto done;
  }
  if (opts->issuer != NULL) {
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    if (iss == NULL || strcmp(iss, opts->issuer) != 0) {
      rc = fail(err, errlen, -EACCES, "wrong iss");
      goto done;
    }
  }
  json_t *rooms = json_object_get(claims, "rooms");
  if (rooms != NULL && !json_is_null(rooms)) {
    if (!json_is_array(rooms)) {
      rc = fail(err, errlen, -EACCES, "rooms must be an array");
      goto done;
    }
    size_t i;
    json_t *r;
    json_array_foreach(rooms, i, r) {
      if (!json_is_string(r)) {
        rc = fail(err, errlen, -EACCES, "rooms must be strings");
        goto done;
      }
    }
    out->rooms = json_incref(rooms);
  }
  out->sub_len = json_string_length(sub);
  out->sub = malloc(out->sub_len + 1);
  if (out->sub == NULL) {
    rc = fail(err, errlen, -ENOMEM, "out of memory");
    goto done;
  }
  memcpy(out->sub, json_string_value(sub), out->sub_len + 1);
  out->exp = (int64_t)expv;
done:
  if (rc != 0)
    fo_auth_claims_free(out);
  json_decref(hdr);
  json_decref(claims);
  return rc;
}

void fo_auth_claims_free(fo_auth_claims_t *claims) {
  free(claims->sub);
  json_decref(claims->rooms);
  memset(claims, 0, sizeof(*claims));
}

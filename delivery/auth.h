/* HS256 JWT verification for the WebSocket handshake (DESIGN.md "Client
 * protocol"): signature by HMAC-SHA256 compared in constant time, header
 * `alg` must be exactly "HS256" and no `crit` member, no duplicate member in
 * the header or the claims, `sub` a non-empty string, `exp` a number in the
 * future (and within the optional maximum lifetime), `nbf` (if present) in
 * the past, `aud`/`iss` equal to the configured ones when those are set,
 * `rooms` (optional) an array of strings. */
#ifndef FO_AUTH_H
#define FO_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef struct {
  char *sub; /* owned, NUL-terminated */
  size_t sub_len;
  json_t *rooms; /* owned reference (array of strings) or NULL */
  int64_t exp;
} fo_auth_claims_t;

/* What a token is checked against. The strings are borrowed. */
typedef struct {
  const char *secret;
  size_t secret_len;
  const char *audience;   /* NULL: `aud` is not checked */
  const char *issuer;     /* NULL: `iss` is not checked */
  int64_t max_lifetime_s; /* 0: no limit; else exp - iat (or exp - now without iat) */
} fo_auth_opts_t;

/* Shortest secret accepted by the configuration (HS256 needs a key as long
 * as its output to resist offline guessing from one token). */
#define FO_AUTH_MIN_SECRET 32

/* Verifies token[0..len) with secret at time now_s (seconds since the
 * epoch). Returns 0 and fills *out (release with fo_auth_claims_free), or
 * -EACCES (bad signature, wrong alg, expired...) / -EINVAL (malformed) /
 * -ENOMEM, with a short reason in err. */
int fo_auth_verify(const char *token, size_t len, const char *secret, size_t secret_len,
                   int64_t now_s, fo_auth_claims_t *out, char *err, size_t errlen);
/* The same with every option; -EKEYEXPIRED (instead of -EACCES) when the
 * only fault of a genuine token is that it expired. */
int fo_auth_check(const fo_auth_opts_t *opts, const char *token, size_t len, int64_t now_s,
                  fo_auth_claims_t *out, char *err, size_t errlen);
void fo_auth_claims_free(fo_auth_claims_t *claims);

/* base64url without padding (as JWT uses); returns decoded length or -EINVAL.
 * out must hold at least len*3/4+3 bytes. */
int fo_b64url_decode(const char *in, size_t len, uint8_t *out);

#endif

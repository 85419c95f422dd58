/* HS256 JWT verification for the WebSocket handshake (DESIGN.md "Client
 * protocol"): signature by HMAC-SHA256 compared in constant time, header
 * `alg` must be exactly "HS256", `sub` a non-empty string, `exp` a number in
 * the future, `nbf` (if present) in the past, `rooms` (optional) an array of
 * strings. */
#ifndef FO_AUTH_H
#define FO_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef struct {
  char *sub;      /* owned, NUL-terminated */
  size_t sub_len;
  json_t *rooms;  /* owned reference (array of strings) or NULL */
  int64_t exp;
} fo_auth_claims_t;

/* Verifies token[0..len) with secret at time now_s (seconds since the
 * epoch). Returns 0 and fills *out (release with fo_auth_claims_free), or
 * -EACCES (bad signature, wrong alg, expired...) / -EINVAL (malformed) /
 * -ENOMEM, with a short reason in err. */
int fo_auth_verify(const char *token, size_t len, const char *secret, size_t secret_len,
                   int64_t now_s, fo_auth_claims_t *out, char *err, size_t errlen);
void fo_auth_claims_free(fo_auth_claims_t *claims);

/* base64url without padding (as JWT uses); returns decoded length or -EINVAL.
 * out must hold at least len*3/4+3 bytes. */
int fo_b64url_decode(const char *in, size_t len, uint8_t *out);

#endif

/* fanout-gentoken: mints a client token (HS256 JWT) for development and
 * operations, signed with the delivery servers' secret: the same
 * --jwt-secret / FANOUT_JWT_SECRET they read, so the one environment serves
 * both. Prints the token and a newline on stdout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "config.h"

typedef struct {
  char *jwt_secret;
  char *sub;
  char *rooms;
  int64_t ttl_s;
  int64_t exp;
  char *audience;
  char *issuer;
} gt_cfg_t;

#define F(name, type, field, min, max, def, help)                                                  \
  { name, type, offsetof(gt_cfg_t, field), min, max, def, help }

static const fo_cfg_field_t gt_fields[] = {
    F("jwt-secret", FO_CFG_STR, jwt_secret, FO_AUTH_MIN_SECRET, 4096, NULL,
      "HS256 secret of the delivery servers (required, at least 32 bytes)"),
    F("sub", FO_CFG_STR, sub, 1, 256, NULL, "the user id the token authenticates (required)"),
    F("rooms", FO_CFG_STR, rooms, 0, 65536, "",
      "comma-separated rooms the client may join (empty: no rooms claim)"),
    F("ttl-s", FO_CFG_INT, ttl_s, 1, 315360000, "3600", "lifetime: exp = now + this"),
    F("exp", FO_CFG_INT, exp, 0, 253402300799, "0",
      "absolute exp (seconds since the epoch) instead of now + ttl-s; 0: use ttl-s"),
    F("jwt-audience", FO_CFG_STR, audience, 0, 256, "", "aud claim (when delivery checks one)"),
    F("jwt-issuer", FO_CFG_STR, issuer, 0, 256, "", "iss claim (when delivery checks one)"),
};
#define GT_NFIELDS (sizeof(gt_fields) / sizeof(gt_fields[0]))

static int gt_finalize(void *p, char *err, size_t errlen) {
  gt_cfg_t *cfg = p;
  if (cfg->jwt_secret == NULL || cfg->sub == NULL) {
    snprintf(err, errlen, "--jwt-secret (or FANOUT_JWT_SECRET) and --sub are required");
    return -EINVAL;
  }
  return 0;
}

/* base64url without padding of in[0..len) into out, which holds
 * len*4/3+4 bytes; returns the length written (NUL-terminated). */
static size_t b64url(const unsigned char *in, size_t len, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  size_t i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    out[o++] = tab[v >> 6 & 63];
    out[o++] = tab[v & 63];
  }
  if (i < len) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    if (i + 1 < len) {
      out[o++] = tab[v >> 6 & 63];
    }
  }
  out[o] = '\0';
  return o;
}

/* The claims as compact JSON (owned by the caller, free()), or NULL when a
 * string is not UTF-8 (jansson refuses it) or memory ran out. */
static char *gt_claims(const gt_cfg_t *cfg, int64_t now) {
  json_t *claims = json_object();
  if (claims == NULL) {
    return NULL;
  }
  int64_t exp = cfg->exp != 0 ? cfg->exp : now + cfg->ttl_s;
  int rc = json_object_set_new(claims, "sub", json_string(cfg->sub));
  rc |= json_object_set_new(claims, "iat", json_integer(now));
  rc |= json_object_set_new(claims, "exp", json_integer(exp));
  if (cfg->rooms[0] != '\0') {
    char **list = NULL;
    int n = fo_cfg_list_split(cfg->rooms, &list);
    json_t *rooms = json_array();
    for (int i = 0; n > 0 && rooms != NULL && i < n; i++) {
      rc |= json_array_append_new(rooms, json_string(list[i]));
    }
    rc |= n < 0 || rooms == NULL;
    rc |= json_object_set_new(claims, "rooms", rooms);
    fo_cfg_list_free(list);
  }
  if (cfg->audience[0] != '\0') {
    rc |= json_object_set_new(claims, "aud", json_string(cfg->audience));
  }
  if (cfg->issuer[0] != '\0') {
    rc |= json_object_set_new(claims, "iss", json_string(cfg->issuer));
  }
  char *text = rc == 0 ? json_dumps(claims, JSON_COMPACT) : NULL;
  json_decref(claims);
  return text;
}

int main(int argc, char **argv) {
  gt_cfg_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  int rc = fo_cfg_main("fanout-gentoken",
                       "Prints a client token (HS256 JWT: sub, rooms, iat, exp) signed with the "
                       "delivery servers' secret. For development and operations.",
                       gt_fields, GT_NFIELDS, &cfg, argc, argv, gt_finalize);
  if (rc == FO_CFG_CHECK_ONLY) {
    fo_cfg_free(gt_fields, GT_NFIELDS, &cfg);
    return 0;
  }
  static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
  char *claims = gt_claims(&cfg, (int64_t)time(NULL));
  if (claims == NULL) {
    fprintf(stderr, "fanout-gentoken: cannot encode the claims (--sub or --rooms not UTF-8, "
                    "or out of memory)\n");
    fo_cfg_free(gt_fields, GT_NFIELDS, &cfg);
    return 1;
  }
  size_t clen = strlen(claims);
  /* header.claims.signature, each part at most len*4/3+4 bytes */
  size_t cap = (sizeof(header) + clen + 32) * 4 / 3 + 16;
  char *token = malloc(cap); /* owned here, freed below */
  if (token == NULL) {
    fprintf(stderr, "fanout-gentoken: out of memory\n");
    free(claims);
    fo_cfg_free(gt_fields, GT_NFIELDS, &cfg);
    return 1;
  }
  size_t n = b64url((const unsigned char *)header, sizeof(header) - 1, token);
  token[n++] = '.';
  n += b64url((const unsigned char *)claims, clen, token + n);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  if (HMAC(EVP_sha256(), cfg.jwt_secret, (int)strlen(cfg.jwt_secret), (unsigned char *)token, n,
           mac, &maclen) == NULL) {
    fprintf(stderr, "fanout-gentoken: HMAC failed\n");
    rc = 1;
  } else {
    token[n++] = '.';
    b64url(mac, maclen, token + n);
    printf("%s\n", token);
    rc = 0;
  }
  free(token);
  free(claims);
  fo_cfg_free(gt_fields, GT_NFIELDS, &cfg);
  return rc;
}

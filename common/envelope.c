#include "envelope.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

/* ---- encoding: msgpack-c's packer writing into an fo_sb_t ---------------- */

static int sb_write(void *data, const char *buf, size_t len) {
  return fo_sb_append(data, buf, len) == 0 ? 0 : -1;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n) {
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

int fo_env_encode(const fo_env_t *env, fo_sb_t *out) {
  if (env->target == NULL || env->target_len == 0 || env->target_len > FO_ENV_MAX_TARGET)
    return -EINVAL;
  if (env->kind != FO_ENV_SEND && env->kind != FO_ENV_BROADCAST)
    return -EINVAL;
  if (env->content_type_len > FO_ENV_MAX_CT || env->payload_len > UINT32_MAX)
    return -EINVAL;
  msgpack_packer pk;
  msgpack_packer_init(&pk, out, sb_write);
  size_t fields = 6 + (env->content_type != NULL ? 1 : 0);
  msgpack_pack_map(&pk, fields);
  pack_str(&pk, "v", 1);
  msgpack_pack_uint32(&pk, env->version ? env->version : FO_ENV_VERSION);
  pack_str(&pk, "id", 2);
  msgpack_pack_bin(&pk, FO_ID_LEN);
  msgpack_pack_bin_body(&pk, env->id, FO_ID_LEN);
  pack_str(&pk, "k", 1);
  const char *kind = fo_env_kind_name(env->kind);
  pack_str(&pk, kind, strlen(kind));
  pack_str(&pk, "t", 1);
  pack_str(&pk, env->target, env->target_len);
  pack_str(&pk, "p", 1);
  msgpack_pack_bin(&pk, env->payload_len);
  msgpack_pack_bin_body(&pk, env->payload, env->payload_len);
  if (env->content_type != NULL) {
    pack_str(&pk, "ct", 2);
    pack_str(&pk, env->content_type, env->content_type_len);
  }
  pack_str(&pk, "ts", 2);
  msgpack_pack_int64(&pk, env->created_ms);
  return out->oom ? -ENOMEM : 0;
}

const char *fo_env_kind_name(fo_env_kind_t kind) {
  return kind == FO_ENV_BROADCAST ? "broadcast" : "send";
}

/* ---- decoding: a bounds-checked cursor; nothing is allocated and no
 * length read from the wire is used before it is checked against what is
 * left of the input. ---------------------------------------------------- */

typedef struct {
  const uint8_t *p;
  size_t left;
  char *err;
  size_t errlen;
} cur_t;

#define MAX_DEPTH 32

static int fail(cur_t *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(cur_t *c, int code, const char *fmt, ...) {
  if (c->err != NULL && c->errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static int take(cur_t *c, size_t n, const uint8_t **out) {
  if (n > c->left)
    return fail(c, -EPROTO, "truncated: need %zu bytes, %zu left", n, c->left);
  *out = c->p;
  c->p += n;
  c->left -= n;
  return 0;
}

static int read_be(cur_t *c, size_t n, uint64_t *v) {
  const uint8_t *b = NULL;
  int rc = take(c, n, &b);
  if (rc != 0)
    return rc;
  *v = 0;
  for (size_t i = 0; i < n; i++)
    *v = *v << 8 | b[i];
  return 0;
}

typedef enum { T_NIL, T_BOOL, T_UINT, T_INT, T_FLOAT, T_STR, T_BIN, T_ARRAY, T_MAP, T_EXT } mtype_t;

typedef struct {
  mtype_t type;
  uint64_t u;         /* UINT value, or STR/BIN/ARRAY/MAP/EXT length */
  int64_t i;          /* INT value */
  const uint8_t *ptr; /* STR/BIN/EXT bytes */
} item_t;

static const char *type_name(mtype_t t) {
  static const char *const names[] = {"nil", "bool", "uint",  "int", "float",
                                      "str", "bin",  "array", "map", "ext"};
  return names[t];
}

/* Reads one item header; for str/bin/ext also takes its bytes (bounds-checked). */
static int read_item(cur_t *c, item_t *it) {
  const uint8_t *b = NULL;
  uint64_t v;
  int rc = take(c, 1, &b);
  if (rc != 0)
    return rc;
  uint8_t t = b[0];
  memset(it, 0, sizeof(*it));
  size_t lenbytes = 0;
  if (t <= 0x7f) {
    it->type = T_UINT;
    it->u = t;
    return 0;
  }
  if (t >= 0xe0) {
    it->type = T_INT;
    it->i = (int8_t)t;
    return 0;
  }
  if ((t & 0xf0) == 0x80) {
    it->type = T_MAP;
    it->u = t & 0x0f;
    return 0;
  }
  if ((t & 0xf0) == 0x90) {
    it->type = T_ARRAY;
    it->u = t & 0x0f;
    return 0;
  }
  if ((t & 0xe0) == 0xa0) {
    it->type = T_STR;
    it->u = t & 0x1f;
    return take(c, it->u, &it->ptr);
  }
  switch (t) {
  case 0xc0:
    it->type = T_NIL;
    return 0;
  case 0xc2:
  case 0xc3:
    it->type = T_BOOL;
    it->u = t & 1;
    return 0;
  case 0xc4:
  case 0xc5:
  case 0xc6:
    it->type = T_BIN;
    lenbytes = (size_t)1 << (t - 0xc4);
    break;
  case 0xc7:
  case 0xc8:
  case 0xc9:
    it->type = T_EXT;
    lenbytes = (size_t)1 << (t - 0xc7);
    break;
  case 0xca:
    it->type = T_FLOAT;
    return take(c, 4, &b);
  case 0xcb:
    it->type = T_FLOAT;
    return take(c, 8, &b);
  case 0xcc:
  case 0xcd:
  case 0xce:
  case 0xcf:
    it->type = T_UINT;
    return read_be(c, (size_t)1 << (t - 0xcc), &it->u);
  case 0xd0:
  case 0xd1:
  case 0xd2:
  case 0xd3: {
    size_t n = (size_t)1 << (t - 0xd0);
    rc = read_be(c, n, &v);
    if (rc != 0)
      return rc;
    it->type = T_INT;
    if (n < 8 && (v >> (8 * n - 1)) & 1)
      v |= ~0ull << (8 * n); /* sign-extend */
    it->i = (int64_t)v;
    return 0;
  }
  case 0xd4:
  case 0xd5:
  case 0xd6:
  case 0xd7:
  case 0xd8:
    it->type = T_EXT;
    it->u = (uint64_t)1 << (t - 0xd4);
    return take(c, 1 + it->u, &it->ptr); /* type byte + data */
  case 0xd9:
  case 0xda:
  case 0xdb:
    it->type = T_STR;
    lenbytes = (size_t)1 << (t - 0xd9);
    break;
  case 0xdc:
  case 0xdd:
    it->type = T_ARRAY;
    return read_be(c, t == 0xdc ? 2 : 4, &it->u);
  case 0xde:
  case 0xdf:
    it->type = T_MAP;
    return read_be(c, t == 0xde ? 2 : 4, &it->u);
  default:
    return fail(c, -EPROTO, "invalid msgpack type byte 0x%02x", t);
  }
  rc = read_be(c, lenbytes, &it->u);
  if (rc != 0)
    return rc;
  if (it->type == T_EXT)
    return take(c, it->u + 1, &it->ptr); /* type byte + data */
  return take(c, it->u, &it->ptr);
}

/* Skips one value of any type. Containers are walked element by element, so
 * a huge declared count costs nothing until its elements are really there. */
static int skip_value(cur_t *c, int depth) {
  item_t it;
  if (depth > MAX_DEPTH)
    return fail(c, -EPROTO, "nesting deeper than %d", MAX_DEPTH);
  int rc = read_item(c, &it);
  if (rc != 0)
    return rc;
  if (it.type == T_ARRAY || it.type == T_MAP) {
    uint64_t n = it.type == T_MAP ? it.u * 2 : it.u;
    if (it.type == T_MAP && it.u > UINT64_MAX / 2)
      return fail(c, -EPROTO, "map length overflow");
    for (uint64_t i = 0; i < n; i++) {
      if (c->left == 0)
        return fail(c, -EPROTO, "truncated: container declares %llu items",
                    (unsigned long long)it.u);
      rc = skip_value(c, depth + 1);
      if (rc != 0)
        return rc;
    }
  }
  return 0;
}

static int want(cur_t *c, const item_t *it, mtype_t type, const char *key) {
  if (it->type == type)
    return 0;
  return fail(c, -EPROTO, "field \"%s\": expected %s, got %s", key, type_name(type),
              type_name(it->type));
}

int fo_env_decode(const uint8_t *p, size_t n, fo_env_t *env, char *err, size_t errlen) {
  cur_t c = {p, n, err, errlen};
  item_t it, val;
  enum { F_V = 1, F_ID = 2, F_K = 4, F_T = 8, F_P = 16, F_CT = 32, F_TS = 64 };
  unsigned seen = 0;
  int rc;

  memset(env, 0, sizeof(*env));
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (n == 0)
    return fail(&c, -EPROTO, "empty record");
  rc = read_item(&c, &it);
  if (rc != 0)
    return rc;
  if (it.type != T_MAP)
    return fail(&c, -EPROTO, "envelope must be a msgpack map, got %s", type_name(it.type));
  uint64_t nfields = it.u;
  for (uint64_t i = 0; i < nfields; i++) {
    if (c.left == 0)
      return fail(&c, -EPROTO, "truncated: map declares %llu fields, %llu present",
                  (unsigned long long)nfields, (unsigned long long)i);
    rc = read_item(&c, &it);
    if (rc != 0)
      return rc;
    if (it.type != T_STR)
      return fail(&c, -EPROTO, "map key must be a string, got %s", type_name(it.type));
    unsigned bit = 0;
    if (it.u == 1 && it.ptr[0] == 'v')
      bit = F_V;
    else if (it.u == 2 && memcmp(it.ptr, "id", 2) == 0)
      bit = F_ID;
    else if (it.u == 1 && it.ptr[0] == 'k')
      bit = F_K;
    else if (it.u == 1 && it.ptr[0] == 't')
      bit = F_T;
    else if (it.u == 1 && it.ptr[0] == 'p')
      bit = F_P;
    else if (it.u == 2 && memcmp(it.ptr, "ct", 2) == 0)
      bit = F_CT;
    else if (it.u == 2 && memcmp(it.ptr, "ts", 2) == 0)
      bit = F_TS;
    if (bit == 0) { /* unknown: a newer minor version's field */
      rc = skip_value(&c, 1);
      if (rc != 0)
        return rc;
      continue;
    }
    char key[3] = {(char)it.ptr[0], it.u == 2 ? (char)it.ptr[1] : '\0', '\0'};
    if (seen & bit)
      return fail(&c, -EPROTO, "duplicate field \"%s\"", key);
    seen |= bit;
    if (c.left == 0)
      return fail(&c, -EPROTO, "truncated: field \"%s\" has no value", key);
    rc = read_item(&c, &val);
    if (rc != 0)
      return rc;
    switch (bit) {
    case F_V:
      if ((rc = want(&c, &val, T_UINT, key)) != 0)
        return rc;
      if (val.u == 0)
        return fail(&c, -EPROTO, "version 0 is invalid");
      if (val.u > FO_ENV_VERSION)
        return fail(&c, -ENOTSUP, "envelope version %llu is newer than supported %d",
                    (unsigned long long)val.u, FO_ENV_VERSION);
      env->version = (uint32_t)val.u;
      break;
    case F_ID:
      if ((rc = want(&c, &val, T_BIN, key)) != 0)
        return rc;
      if (val.u != FO_ID_LEN)
        return fail(&c, -EPROTO, "field \"id\": expected %d bytes, got %llu", FO_ID_LEN,
                    (unsigned long long)val.u);
      memcpy(env->id, val.ptr, FO_ID_LEN);
      break;
    case F_K:
      if ((rc = want(&c, &val, T_STR, key)) != 0)
        return rc;
      if (val.u == 4 && memcmp(val.ptr, "send", 4) == 0)
        env->kind = FO_ENV_SEND;
      else if (val.u == 9 && memcmp(val.ptr, "broadcast", 9) == 0)
        env->kind = FO_ENV_BROADCAST;
      else
        return fail(&c, -EPROTO, "field \"k\": unknown kind");
      break;
    case F_T:
      if ((rc = want(&c, &val, T_STR, key)) != 0)
        return rc;
      if (val.u == 0 || val.u > FO_ENV_MAX_TARGET)
        return fail(&c, -EPROTO, "field \"t\": length %llu not in 1..%d", (unsigned long long)val.u,
                    FO_ENV_MAX_TARGET);
      env->target = (const char *)val.ptr;
      env->target_len = val.u;
      break;
    case F_P:
      if (val.type != T_BIN && val.type != T_STR)
        return want(&c, &val, T_BIN, key);
      env->payload = val.ptr;
      env->payload_len = val.u;
      break;
    case F_CT:
      if ((rc = want(&c, &val, T_STR, key)) != 0)
        return rc;
      if (val.u > FO_ENV_MAX_CT)
        return fail(&c, -EPROTO, "field \"ct\": longer than %d", FO_ENV_MAX_CT);
      env->content_type = (const char *)val.ptr;
      env->content_type_len = val.u;
      break;
    case F_TS:
      if (val.type == T_UINT && val.u <= INT64_MAX)
        env->created_ms = (int64_t)val.u;
      else if (val.type == T_INT)
        env->created_ms = val.i;
      else
        return fail(&c, -EPROTO, "field \"ts\": expected int, got %s", type_name(val.type));
      break;
    }
    /* Containers as values of known fields were rejected by want() above,
     * so no element of them is left unread here. */
  }
  if (c.left != 0)
    return fail(&c, -EPROTO, "%zu trailing bytes after the envelope", c.left);
  static const struct {
    unsigned bit;
    const char *name;
  } required[] = {{F_V, "v"}, {F_ID, "id"}, {F_K, "k"}, {F_T, "t"}, {F_P, "p"}};
  for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
    if (!(seen & required[i].bit))
      return fail(&c, -EPROTO, "missing field \"%s\"", required[i].name);
  }
  if (!(seen & F_CT)) {
    env->content_type = "application/json";
    env->content_type_len = 16;
  }
  return 0;
}

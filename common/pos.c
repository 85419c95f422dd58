/* Position codec. The parser is the only code here that sees client bytes:
 * it walks the input once, field by field, and refuses anything the
 * formatter could not have written, so that format(parse(s)) == s. */
#include "pos.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH32_state_t on the stack */
#include <xxhash.h>

#include "digits.h"

int fo_pos_format(const fo_pos_t *p, char *out, size_t outlen) {
  if ((p->kind != 'u' && p->kind != 'r') || p->partition < 0 || p->offset < -1 || p->t_ms < 0)
    return -EINVAL;
  /* By hand: snprintf was a visible share of the consumer's time per
   * message (one position per record). */
  char tmp[FO_POS_MAX + 1];
  size_t n = 0;
  tmp[n++] = p->kind;
  tmp[n++] = '.';
  n += fo_put_hex(tmp + n, p->epoch, 8);
  tmp[n++] = '.';
  n += fo_put_dec(tmp + n, (uint64_t)p->partition);
  tmp[n++] = '.';
  if (p->offset < 0)
    tmp[n++] = '-';
  n += fo_put_dec(tmp + n, p->offset < 0 ? 1 : (uint64_t)p->offset);
  tmp[n++] = '.';
  n += fo_put_hex(tmp + n, (uint64_t)p->t_ms, 1);
  if (n >= outlen) {
    if (outlen > 0)
      out[0] = '\0';
    return -ENOSPC;
  }
  memcpy(out, tmp, n);
  out[n] = '\0';
  return (int)n;
}

/* Decimal digits up to '.' or the end, no sign, no leading zero unless the
 * field is "0", value <= max. Returns the digits consumed, or -1. */
static int parse_dec(const char *s, size_t len, uint64_t max, uint64_t *v) {
  size_t i = 0;
  uint64_t acc = 0;
  while (i < len && s[i] >= '0' && s[i] <= '9') {
    unsigned d = (unsigned)(s[i] - '0');
    if (acc > (max - d) / 10)
      return -1;
    acc = acc * 10 + d;
    i++;
  }
  if (i == 0 || (s[0] == '0' && i > 1))
    return -1;
  *v = acc;
  return (int)i;
}

/* Lowercase only: the formatter never writes uppercase. */
static int hexval(char c) {
  return c >= 'A' && c <= 'F' ? -1 : fo_hex_value(c);
}

/* Lowercase hex; fixed: exactly `fixed` digits (leading zeros allowed),
 * else 1+ digits without leading zeros, value <= max. */
static int parse_hex(const char *s, size_t len, size_t fixed, uint64_t max, uint64_t *v) {
  size_t i = 0;
  uint64_t acc = 0;
  int d;
  while (i < len && (d = hexval(s[i])) >= 0) {
    if (acc > (max - (unsigned)d) / 16)
      return -1;
    acc = acc * 16 + (unsigned)d;
    i++;
  }
  if (fixed ? i != fixed : (i == 0 || (s[0] == '0' && i > 1)))
    return -1;
  *v = acc;
  return (int)i;
}

int fo_pos_parse(const char *s, size_t len, fo_pos_t *out) {
  if (s == NULL || len < 2 || len > FO_POS_MAX)
    return -EINVAL;
  fo_pos_t p;
  uint64_t v;
  int n;
  size_t i = 0;
  if ((s[0] != 'u' && s[0] != 'r') || s[1] != '.')
    return -EINVAL;
  p.kind = s[0];
  i = 2;
  if ((n = parse_hex(s + i, len - i, 8, UINT32_MAX, &v)) < 0)
    return -EINVAL;
  p.epoch = (uint32_t)v;
  i += (size_t)n;
  if (i >= len || s[i++] != '.')
    return -EINVAL;
  if ((n = parse_dec(s + i, len - i, INT32_MAX, &v)) < 0)
    return -EINVAL;
  p.partition = (int32_t)v;
  i += (size_t)n;
  if (i >= len || s[i++] != '.')
    return -EINVAL;
  if (i + 1 < len && s[i] == '-' && s[i + 1] == '1') {
    p.offset = -1;
    i += 2;
  } else {
    if ((n = parse_dec(s + i, len - i, INT64_MAX, &v)) < 0)
      return -EINVAL;
    p.offset = (int64_t)v;
    i += (size_t)n;
  }
  if (i >= len || s[i++] != '.')
    return -EINVAL;
  if ((n = parse_hex(s + i, len - i, 0, INT64_MAX, &v)) < 0)
    return -EINVAL;
  p.t_ms = (int64_t)v;
  i += (size_t)n;
  if (i != len)
    return -EINVAL;
  *out = p;
  return 0;
}

uint32_t fo_pos_epoch(const char *cluster_id, const char *topic, int32_t partitions) {
  char buf[512];
  size_t cl = strlen(cluster_id), tl = strlen(topic);
  char num[16];
  int nl = snprintf(num, sizeof(num), "%" PRId32, partitions);
  size_t total = cl + 1 + tl + 1 + (size_t)nl;
  if (total <= sizeof(buf)) {
    memcpy(buf, cluster_id, cl + 1);
    memcpy(buf + cl + 1, topic, tl + 1);
    memcpy(buf + cl + 1 + tl + 1, num, (size_t)nl);
    return XXH32(buf, total, FO_POS_EPOCH_SEED);
  }
  /* Names longer than Kafka allows (249 for topics): stream the hash. */
  XXH32_state_t st;
  XXH32_reset(&st, FO_POS_EPOCH_SEED);
  XXH32_update(&st, cluster_id, cl + 1);
  XXH32_update(&st, topic, tl + 1);
  XXH32_update(&st, num, (size_t)nl);
  return XXH32_digest(&st);
}

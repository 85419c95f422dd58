#include "json_out.h"

#include <errno.h>
#include <stdint.h>

size_t fo_utf8_seq(const uint8_t *p, size_t n) {
  uint8_t c = p[0];
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    return (n >= 2 && (p[1] & 0xc0) == 0x80) ? 2 : 0;
  }
  if (c >= 0xe0 && c <= 0xef) {
    if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
      return 0;
    if (c == 0xe0 && p[1] < 0xa0)
      return 0; /* overlong */
    if (c == 0xed && p[1] >= 0xa0)
      return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
      return 0;
    if (c == 0xf0 && p[1] < 0x90)
      return 0; /* overlong */
    if (c == 0xf4 && p[1] >= 0x90)
      return 0; /* > U+10FFFF */
    return 4;
  }
  return 0;
}

bool fo_utf8_valid(const void *data, size_t n) {
  const uint8_t *p = data;
  size_t i = 0;
  while (i < n) {
    /* Fast path for ASCII runs. */
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    size_t k = fo_utf8_seq(p + i, n - i);
    if (k == 0)
      return false;
    i += k;
  }
  return true;
}

int fo_json_put_str(fo_sb_t *sb, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const uint8_t *p = (const uint8_t *)s;
  int rc = fo_sb_reserve(sb, n + 2);
  if (rc != 0)
    return rc;
  fo_sb_putc(sb, '"');
  size_t i = 0, run = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      i++;
      run++;
      continue;
    }
    fo_sb_append(sb, p + i - run, run);
    run = 0;
    if (c >= 0x80) {
      size_t k = fo_utf8_seq(p + i, n - i);
      if (k == 0) {
        fo_sb_append(sb, "\xef\xbf\xbd", 3); /* U+FFFD */
        i++;
      } else {
        fo_sb_append(sb, p + i, k);
        i += k;
      }
      continue;
    }
    char esc[7] = {'\\', 0, 0, 0, 0, 0, 0};
    size_t elen = 2;
    switch (c) {
    case '"':
      esc[1] = '"';
      break;
    case '\\':
      esc[1] = '\\';
      break;
    case '\n':
      esc[1] = 'n';
      break;
    case '\r':
      esc[1] = 'r';
      break;
    case '\t':
      esc[1] = 't';
      break;
    case '\b':
      esc[1] = 'b';
      break;
    case '\f':
      esc[1] = 'f';
      break;
    default:
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      elen = 6;
    }
    fo_sb_append(sb, esc, elen);
    i++;
  }
  fo_sb_append(sb, p + i - run, run);
  return fo_sb_putc(sb, '"');
}

int fo_base64_put(fo_sb_t *sb, const void *data, size_t n) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const uint8_t *p = data;
  int rc = fo_sb_reserve(sb, (n + 2) / 3 * 4);
  if (rc != 0)
    return rc;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    char o[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], tbl[(v >> 6) & 63], tbl[v & 63]};
    fo_sb_append(sb, o, 4);
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    char o[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], '=', '='};
    fo_sb_append(sb, o, 4);
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    char o[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], tbl[(v >> 6) & 63], '='};
    fo_sb_append(sb, o, 4);
  }
  return sb->oom ? -ENOMEM : 0;
}

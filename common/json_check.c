/* fo_json_check (json_check.h): one pass with an explicit stack, so a deep
 * text costs no recursion. */
#include "json_check.h"

#include <stdbool.h>
#include <stdint.h>

#include "digits.h"
#include "json_out.h"

static const uint8_t *ws(const uint8_t *p, const uint8_t *e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  return p;
}

static int hex4(const uint8_t *p, const uint8_t *e) {
  if (e - p < 4)
    return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int d = fo_hex_value(p[i]);
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  return v;
}

/* The string whose opening quote is at p: returns the byte after its closing
 * quote, or NULL if invalid; *nul is set when it holds an escaped U+0000. */
static const uint8_t *string(const uint8_t *p, const uint8_t *e, bool *nul) {
  p++;
  while (p < e) {
    uint8_t c = *p;
    if (c == '"')
      return p + 1;
    if (c < 0x20)
      return NULL;
    if (c < 0x80 && c != '\\') {
      p++;
      continue;
    }
    if (c >= 0x80) {
      size_t l = fo_utf8_seq(p, (size_t)(e - p));
      if (l == 0)
        return NULL;
      p += l;
      continue;
    }
    if (e - p < 2)
      return NULL;
    switch (p[1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
      p += 2;
      continue;
    case 'u':
      break;
    default:
      return NULL;
    }
    int v = hex4(p + 2, e);
    if (v < 0)
      return NULL;
    p += 6;
    if (v == 0)
      *nul = true;
    if (v >= 0xdc00 && v <= 0xdfff)
      return NULL; /* a low surrogate alone */
    if (v >= 0xd800 && v <= 0xdbff) {
      if (e - p < 2 || p[0] != '\\' || p[1] != 'u')
        return NULL;
      int lo = hex4(p + 2, e);
      if (lo < 0xdc00 || lo > 0xdfff)
        return NULL;
      p += 6;
    }
  }
  return NULL;
}

/* The number at p: the byte after it, or NULL if invalid; *unsure when it
 * may not convert (jansson refuses integers beyond 64 bits and reals that
 * overflow a double). */
static const uint8_t *number(const uint8_t *p, const uint8_t *e, bool *unsure) {
  if (*p == '-')
    p++;
  const uint8_t *d = p;
  if (p < e && *p == '0') {
    p++;
  } else if (p < e && *p >= '1' && *p <= '9') {
    while (p < e && *p >= '0' && *p <= '9')
      p++;
  } else {
    return NULL;
  }
  if (p - d >= 19)
    *unsure = true;
  if (p < e && *p == '.') {
    p++;
    if (p == e || *p < '0' || *p > '9')
      return NULL;
    while (p < e && *p >= '0' && *p <= '9')
      p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    *unsure = true;
    p++;
    if (p < e && (*p == '+' || *p == '-'))
      p++;
    if (p == e || *p < '0' || *p > '9')
      return NULL;
    while (p < e && *p >= '0' && *p <= '9')
      p++;
  }
  return p;
}

static const uint8_t *word(const uint8_t *p, const uint8_t *e, const char *w, size_t n) {
  if ((size_t)(e - p) < n)
    return NULL;
  for (size_t i = 0; i < n; i++)
    if (p[i] != (uint8_t)w[i])
      return NULL;
  return p + n;
}

fo_json_check_t fo_json_check(const void *vp, size_t n) {
  const uint8_t *p = vp, *e = p + n;
  bool obj[FO_JSON_CHECK_DEPTH]; /* per open container: an object (else an array) */
  int depth = 0;
  bool unsure = false, nul = false;
  p = ws(p, e);
value:
  if (p == e)
    return FO_JSON_INVALID;
  switch (*p) {
  case '{':
    p = ws(p + 1, e);
    if (p < e && *p == '}') {
      p++;
      goto after;
    }
    if (depth == FO_JSON_CHECK_DEPTH)
      return FO_JSON_UNSURE;
    obj[depth++] = true;
    goto key;
  case '[':
    p = ws(p + 1, e);
    if (p < e && *p == ']') {
      p++;
      goto after;
    }
    if (depth == FO_JSON_CHECK_DEPTH)
      return FO_JSON_UNSURE;
    obj[depth++] = false;
    goto value;
  case '"':
    p = string(p, e, &nul); /* U+0000 in a value is fine (JSON_ALLOW_NUL) */
    break;
  case 't':
    p = word(p, e, "true", 4);
    break;
  case 'f':
    p = word(p, e, "false", 5);
    break;
  case 'n':
    p = word(p, e, "null", 4);
    break;
  default:
    p = number(p, e, &unsure);
    break;
  }
  if (p == NULL)
    return FO_JSON_INVALID;
after:
  p = ws(p, e);
  if (depth == 0)
    return p != e ? FO_JSON_INVALID : unsure ? FO_JSON_UNSURE : FO_JSON_VALID;
  if (p == e)
    return FO_JSON_INVALID;
  if (*p == ',') {
    p = ws(p + 1, e);
    if (obj[depth - 1])
      goto key;
    goto value;
  }
  if (*p != (obj[depth - 1] ? '}' : ']'))
    return FO_JSON_INVALID;
  depth--;
  p++;
  goto after;
key:
  if (p == e || *p != '"')
    return FO_JSON_INVALID;
  nul = false;
  p = string(p, e, &nul);
  if (p == NULL)
    return FO_JSON_INVALID;
  if (nul)
    unsure = true; /* jansson refuses U+0000 in a key, even with JSON_ALLOW_NUL */
  p = ws(p, e);
  if (p == e || *p != ':')
    return FO_JSON_INVALID;
  p = ws(p + 1, e);
  goto value;
}

/* Numbers to and from text by hand, where snprintf/strtoul cost more than
 * the rest of the work (positions, Pub/Sub headers, connection ids) or where
 * every caller had its own copy (hex digits of ids, percent-encoding, the
 * test tools). */
#ifndef FO_DIGITS_H
#define FO_DIGITS_H

#include <stddef.h>
#include <stdint.h>

/* The value of one hex digit, either case, or -1. */
static inline int fo_hex_value(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Writes v in decimal at o (no terminator); returns the digits written (1-20). */
static inline size_t fo_put_dec(char *o, uint64_t v) {
  char t[20];
  size_t n = 0;
  do {
    t[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (size_t i = 0; i < n; i++)
    o[i] = t[n - 1 - i];
  return n;
}

/* Writes v in lowercase hex at o, at least `width` digits (zero-padded, at
 * most 16), no terminator; returns the digits written. */
static inline size_t fo_put_hex(char *o, uint64_t v, size_t width) {
  static const char hex[] = "0123456789abcdef";
  char t[16];
  size_t n = 0;
  do {
    t[n++] = hex[v & 15];
    v >>= 4;
  } while (v != 0);
  while (n < width && n < sizeof(t))
    t[n++] = '0';
  for (size_t i = 0; i < n; i++)
    o[i] = t[n - 1 - i];
  return n;
}

#endif

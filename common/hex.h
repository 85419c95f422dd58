/* Hex digits: one decoder for ids, positions, percent-encoding and the test
 * tools, which each had their own copy. */
#ifndef FO_HEX_H
#define FO_HEX_H

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

#endif

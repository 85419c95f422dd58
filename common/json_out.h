/* Minimal JSON writing helpers for hot paths (frames, replies) where building
 * a jansson tree would cost an allocation per value. Parsing uses jansson. */
#ifndef FO_JSON_OUT_H
#define FO_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Appends s[0..n) as a quoted JSON string, escaping as RFC 8259 requires.
 * Invalid UTF-8 bytes are replaced by U+FFFD. Returns 0 or -ENOMEM. */
int fo_json_put_str(fo_sb_t *sb, const char *s, size_t n);
/* Returns true if p[0..n) is valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, max U+10FFFF). */
bool fo_utf8_valid(const void *p, size_t n);
/* Length of the valid UTF-8 sequence at p[0..n) (n >= 1: 1 for ASCII, 2-4),
 * or 0 if it is invalid (same rules): for checkers that walk text
 * themselves (json_check.c). */
size_t fo_utf8_seq(const uint8_t *p, size_t n);
/* Appends base64 (RFC 4648, padded) of p[0..n). Returns 0 or -ENOMEM. */
int fo_base64_put(fo_sb_t *sb, const void *p, size_t n);

#endif

/* Minimal JSON writing helpers for hot paths (frames, replies) where building
 * a jansson tree would cost an allocation per value. Parsing uses jansson. */
#ifndef FO_JSON_OUT_H
#define FO_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* Appends s[0..n) as a quoted JSON string, escaping as RFC 8259 requires.
 * Invalid UTF-8 bytes are replaced by U+FFFD. Returns 0 or -ENOMEM. */
int fo_json_put_str(fo_sb_t *sb, const char *s, size_t n);
/* Returns true if p[0..n) is valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, max U+10FFFF). */
bool fo_utf8_valid(const void *p, size_t n);
/* Appends base64 (RFC 4648, padded) of p[0..n). Returns 0 or -ENOMEM. */
int fo_base64_put(fo_sb_t *sb, const void *p, size_t n);

#endif

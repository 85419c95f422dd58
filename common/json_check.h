/* A JSON text checker for the hot path (the payload of every user and room
 * message is checked once): no allocation, no tree. It agrees with jansson's
 * json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL), the parser the rest of the
 * code uses, except where only jansson's conversions know (a number that may
 * not fit, "\u0000" that jansson refuses in object keys, deep nesting):
 * there it answers FO_JSON_UNSURE and the caller asks jansson. One
 * difference on purpose: jansson's lexer loses a raw NUL byte that follows
 * a number or a literal ("1\0", "[true\0]" parse), which inserted raw would
 * be a NUL in a client's frame; the checker refuses every raw NUL it reads,
 * as RFC 8259 does (fo_proto_json_valid refuses them on the unsure path). */
#ifndef FO_JSON_CHECK_H
#define FO_JSON_CHECK_H

#include <stddef.h>

typedef enum {
  FO_JSON_INVALID = 0,
  FO_JSON_VALID = 1,
  FO_JSON_UNSURE = 2, /* only jansson knows: parse it with jansson */
} fo_json_check_t;

/* Nesting the checker follows; deeper texts are FO_JSON_UNSURE. */
#define FO_JSON_CHECK_DEPTH 256

/* Checks p[0..n) as one JSON text (RFC 8259: any value at the top,
 * whitespace around it, strings in UTF-8). */
fo_json_check_t fo_json_check(const void *p, size_t n);

#endif

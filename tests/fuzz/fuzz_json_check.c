/* libFuzzer target: the JSON checker (common/json_check.c) against jansson,
 * on any bytes as a message payload would be. Checks: where the checker is
 * sure, it says what jansson's json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL)
 * says (the delivery servers insert a payload raw on its word), except on
 * a raw NUL byte, which the checker and fo_proto_json_valid (jansson
 * behind it) always refuse. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_check.h"
#include "fz_check.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy, so ASan sees a read one byte too far. */
  uint8_t *p = malloc(size ? size : 1);
  if (p == NULL)
    return 0;
  memcpy(p, data, size);
  fo_json_check_t v = fo_json_check(p, size);
  json_t *j = json_loadb((const char *)p, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  /* jansson loses a NUL byte that follows a number or a literal (its
   * lexer's unget): a raw NUL is never JSON, the checker refuses it. */
  if (memchr(p, 0, size) != NULL) {
    if (v == FO_JSON_VALID || fo_proto_json_valid(p, size)) {
      fprintf(stderr, "checker accepts a raw NUL (%d)\n", (int)v);
      abort();
    }
  } else if (v != FO_JSON_UNSURE && (v == FO_JSON_VALID) != (j != NULL)) {
    fprintf(stderr, "checker says %d, jansson %d: %.*s\n", (int)v, j != NULL, (int)size,
            (const char *)p);
    abort();
  }
  json_decref(j);
  free(p);
  return 0;
}

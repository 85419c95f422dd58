/* libFuzzer target: the position parser (common/pos.c), fed any bytes as a
 * client's ?since= or join "since" would be. Checks: an accepted input is
 * exactly what the formatter writes for the parsed fields (so parse ->
 * format -> parse is the identity and no two texts name one position);
 * a refused one leaves the output untouched. The same bytes, read as raw
 * field values, also drive format -> parse. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pos.h"
#include "fz_check.h"

static int same(const fo_pos_t *a, const fo_pos_t *b) {
  return a->kind == b->kind && a->epoch == b->epoch && a->partition == b->partition &&
         a->offset == b->offset && a->t_ms == b->t_ms;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy, so ASan sees a read one byte too far. */
  char *buf = malloc(size ? size : 1);
  if (buf == NULL)
    return 0;
  memcpy(buf, data, size);
  fo_pos_t p, q;
  memset(&p, 0x5a, sizeof(p));
  fo_pos_t untouched = p;
  char text[FO_POS_MAX];
  int rc = fo_pos_parse(buf, size, &p);
  if (rc != 0) {
    CHECK(rc == -EINVAL);
    CHECK(memcmp(&p, &untouched, sizeof(p)) == 0);
  } else {
    CHECK(size <= FO_POS_MAX);
    CHECK(p.kind == 'u' || p.kind == 'r');
    CHECK(p.partition >= 0 && p.offset >= -1 && p.t_ms >= 0);
    int n = fo_pos_format(&p, text, sizeof(text));
    CHECK(n > 0 && (size_t)n == size && memcmp(text, buf, size) == 0);
    CHECK(fo_pos_parse(text, (size_t)n, &q) == 0 && same(&p, &q));
    /* Too small a buffer: refused, never cut. */
    CHECK(fo_pos_format(&p, text, (size_t)n) == -ENOSPC && text[0] == '\0');
  }

  /* format -> parse from raw field bytes. */
  if (size >= 1 + 4 + 4 + 8 + 8) {
    memcpy(&p.epoch, data + 1, 4);
    memcpy(&p.partition, data + 5, 4);
    memcpy(&p.offset, data + 9, 8);
    memcpy(&p.t_ms, data + 17, 8);
    p.kind = (data[0] & 1) ? 'u' : 'r';
    int n = fo_pos_format(&p, text, sizeof(text));
    if (p.partition < 0 || p.offset < -1 || p.t_ms < 0) {
      CHECK(n == -EINVAL);
    } else {
      CHECK(n > 0 && n < FO_POS_MAX && strlen(text) == (size_t)n);
      CHECK(fo_pos_parse(text, (size_t)n, &q) == 0 && same(&p, &q));
    }
  }
  free(buf);
  return 0;
}

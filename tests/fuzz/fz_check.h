/* What every fuzz target shares: libFuzzer's entry point, and the check of an
 * invariant, which aborts so that libFuzzer reports and keeps the input. */
#ifndef FO_FZ_CHECK_H
#define FO_FZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz invariant failed: %s\n", #cond);                                       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#endif

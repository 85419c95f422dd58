/* common/hash.c: the per-process seeded hash of the internal tables (M2). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "partition.h"

static const char *self;

/* Runs this binary again with --print: a new process, hence a new seed. */
static unsigned long hash_in_child(void) {
  char cmd[4200];
  snprintf(cmd, sizeof(cmd), "'%s' --print", self);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  unsigned long h = 0;
  assert_int_equal(fscanf(p, "%lx", &h), 1);
  assert_int_equal(pclose(p), 0);
  return h;
}

static void hash_differs_between_processes(void **state) {
  (void)state;
  /* Three processes: a 2^-32 chance per pair of equal values, so demand
   * that not all three agree. */
  unsigned long a = hash_in_child(), b = hash_in_child(), c = hash_in_child();
  assert_false(a == b && b == c);
  /* Stable within one process. */
  assert_int_equal(fo_hash_private("room-1", 6), fo_hash_private("room-1", 6));
}

static void hash_depends_on_seed_not_on_xxh32(void **state) {
  (void)state;
  assert_int_not_equal(fo_hash_seeded("room-1", 6, 1), fo_hash_seeded("room-1", 6, 2));
  assert_int_equal(fo_hash_seeded("room-1", 6, 1), fo_hash_seeded("room-1", 6, 1));
  /* The partitioner's contract hash is untouched: XXH32 seed 0. */
  assert_int_equal(fo_hash32("", 0), 0x02CC5D05u);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--print") == 0) {
    printf("%08x\n", fo_hash_private("room-1", 6));
    return 0;
  }
  self = argv[0];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(hash_differs_between_processes),
      cmocka_unit_test(hash_depends_on_seed_not_on_xxh32),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

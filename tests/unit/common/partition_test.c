#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"
#include "vectors.h"

static long partition_of(const char *key, size_t len, long partitions) {
  return fo_partition_of_key(key, len, (int32_t)partitions);
}

static void partition_matches_schema_vectors(void **state) {
  (void)state;
  int nps = 0;
  int rows = vectors_check("partition.tsv", "P=", partition_of, &nps);
  assert_true(nps >= 5);
  assert_true(rows >= 10);
}

static void partition_ranges_are_contiguous(void **state) {
  (void)state;
  /* partition p owns [p*2^32/P, (p+1)*2^32/P): edges land where they should */
  assert_int_equal(fo_partition_of_hash(0, 8), 0);
  assert_int_equal(fo_partition_of_hash(0x1fffffff, 8), 0);
  assert_int_equal(fo_partition_of_hash(0x20000000, 8), 1);
  assert_int_equal(fo_partition_of_hash(0xffffffff, 8), 7);
  assert_int_equal(fo_partition_of_hash(0xffffffff, 1), 0);
  assert_int_equal(fo_partition_of_hash(12345, 0), 0); /* nonsense P: no crash */
  for (uint64_t h = 0; h <= 0xffffffffu; h += 0x00ffffffu) {
    int32_t p = fo_partition_of_hash((uint32_t)h, 3);
    assert_true(p >= 0 && p < 3);
  }
}

static void partition_spreads_users(void **state) {
  (void)state;
  int counts[8] = {0};
  char user[32];
  for (int i = 0; i < 8000; i++) {
    int n = snprintf(user, sizeof(user), "user-%d", i);
    counts[fo_partition_of_key(user, (size_t)n, 8)]++;
  }
  for (int i = 0; i < 8; i++)
    assert_true(counts[i] > 800 && counts[i] < 1200);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(partition_matches_schema_vectors),
      cmocka_unit_test(partition_ranges_are_contiguous),
      cmocka_unit_test(partition_spreads_users),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

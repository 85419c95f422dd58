/* common/rshard.c against schemas/vectors/redis-shards.tsv (written by
 * schemas/vectors/generate.py with an implementation of its own), and the
 * properties the document promises: even spread, few moves on growth. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"
#include "rshard.h"
#include "vectors.h"

static long node_of(const char *name, size_t len, long nodes) {
  return (long)fo_rshard_node(name, len, (uint32_t)nodes);
}

static void rshard_matches_schema_vectors(void **state) {
  (void)state;
  int nns = 0;
  int rows = vectors_check("redis-shards.tsv", "N=", node_of, &nns);
  assert_true(nns >= 5);
  assert_true(rows >= 15);
}

/* 30,000 names over 3 nodes: each within 3 % of a third; from 3 to 4 nodes
 * only names that move to the new node move (about a quarter). */
static void rshard_spreads_and_moves_little(void **state) {
  (void)state;
  enum { N = 30000 };
  int count[3] = {0};
  int moved = 0, moved_elsewhere = 0;
  for (int i = 0; i < N; i++) {
    char name[32];
    int len = snprintf(name, sizeof(name), "user%d", i);
    uint32_t a = fo_rshard_node(name, (size_t)len, 3);
    uint32_t b = fo_rshard_node(name, (size_t)len, 4);
    count[a]++;
    if (a != b) {
      moved++;
      moved_elsewhere += b != 3;
    }
  }
  for (int k = 0; k < 3; k++)
    assert_true(count[k] > N / 3 * 97 / 100 && count[k] < N / 3 * 103 / 100);
  assert_int_equal(moved_elsewhere, 0);
  assert_true(moved > N / 4 * 9 / 10 && moved < N / 4 * 11 / 10);
  assert_int_equal(fo_rshard_node("x", 1, 0), 0);
  assert_int_equal(fo_rshard_node("x", 1, 1), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(rshard_matches_schema_vectors),
      cmocka_unit_test(rshard_spreads_and_moves_little),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

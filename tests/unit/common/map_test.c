/* delivery/map.c: random inserts and deletes checked against a plain array. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>
#include <time.h>

#include "xxh32_collide.h"
#include "map.h"
#include "partition.h"

typedef struct {
  fo_mapent_t ent;
  char name[24];
  int present;
} item_t;

static void map_random_ops_match_reference(void **state) {
  (void)state;
  enum { N = 3000 };
  static item_t items[N];
  fo_map_t map = {0};
  for (int i = 0; i < N; i++) {
    snprintf(items[i].name, sizeof(items[i].name), "user-%d", i);
    items[i].ent.len = (uint32_t)strlen(items[i].name);
    items[i].ent.key = items[i].name;
    items[i].ent.hash = fo_map_hash(items[i].name, items[i].ent.len);
  }
  srand(7);
  for (int step = 0; step < 50000; step++) {
    item_t *it = &items[rand() % N];
    fo_mapent_t *e = fo_map_get(&map, it->name, it->ent.len, it->ent.hash);
    assert_true((e != NULL) == (it->present != 0));
    if (it->present) {
      assert_ptr_equal(e, &it->ent);
      fo_map_del(&map, &it->ent);
      it->present = 0;
    } else {
      assert_int_equal(fo_map_put(&map, &it->ent), 0);
      it->present = 1;
    }
  }
  uint32_t count = 0, cur = 0;
  while (fo_map_next(&map, &cur) != NULL)
    count++;
  assert_int_equal(count, map.count);
  for (int i = 0; i < N; i++) {
    fo_mapent_t *e = fo_map_get(&map, items[i].name, items[i].ent.len, items[i].ent.hash);
    assert_true((e != NULL) == (items[i].present != 0));
  }
  fo_map_free(&map);
}

/* ---- hash flooding (M2) ---- */

/* 20,000 keys sharing one public XXH32 value (so one home slot under the
 * old unseeded hash, and an O(n^2) build) stay spread out in the map. */
static void map_survives_seed0_collisions(void **state) {
  (void)state;
  enum { N = 20000 };
  static struct {
    fo_mapent_t ent;
    char key[8];
  } items[N];
  for (uint32_t i = 0; i < N; i++) {
    colliding_key(i * 2654435761u, 0x5eed0000u, items[i].key);
    assert_int_equal(fo_hash32(items[i].key, 8), 0x5eed0000u); /* really collide */
    items[i].ent.key = items[i].key;
    items[i].ent.len = 8;
    items[i].ent.hash = fo_map_hash(items[i].key, 8);
  }
  fo_map_t map = {0};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < N; i++) {
    assert_null(fo_map_get(&map, items[i].key, 8, items[i].ent.hash));
    assert_int_equal(fo_map_put(&map, &items[i].ent), 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  /* Probe length of an entry = its distance from its home slot. */
  uint64_t total = 0, longest = 0;
  uint32_t mask = map.cap - 1;
  for (uint32_t i = 0; i < map.cap; i++) {
    if (map.slots[i] == NULL)
      continue;
    uint64_t d = (i - (map.slots[i]->hash & mask)) & mask;
    total += d;
    longest = d > longest ? d : longest;
  }
  double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  printf("seed-0 collisions: %d keys, mean probe %.2f, longest %llu, build %.1f ms\n", N,
         (double)total / N, (unsigned long long)longest, ms);
  assert_true(total < 4 * (uint64_t)N); /* unseeded: ~N/2 per key */
  assert_true(longest < 200);           /* unseeded: N - 1 */
  for (int i = 0; i < N; i++)
    assert_ptr_equal(fo_map_get(&map, items[i].key, 8, items[i].ent.hash), &items[i].ent);
  fo_map_free(&map);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(map_random_ops_match_reference),
      cmocka_unit_test(map_survives_seed0_collisions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

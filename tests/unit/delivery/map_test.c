/* delivery/map.c: random inserts and deletes checked against a plain array. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "map.h"

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(map_random_ops_match_reference),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

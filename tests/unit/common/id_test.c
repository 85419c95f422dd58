#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "id.h"

static void id_is_uuidv7_and_formats(void **state) {
  (void)state;
  fo_id_gen_t gen = {0};
  uint8_t id[FO_ID_LEN], back[FO_ID_LEN];
  fo_id_next(&gen, 1700000000000ull, id);
  assert_int_equal(id[6] >> 4, 7); /* version */
  assert_int_equal(id[8] >> 6, 2); /* variant 10 */
  assert_int_equal(fo_id_time_ms(id), 1700000000000ull);
  char text[FO_ID_STR_LEN + 1];
  fo_id_format(id, text);
  assert_int_equal(strlen(text), FO_ID_STR_LEN);
  assert_int_equal(text[8], '-');
  assert_int_equal(text[14], '7');
  assert_int_equal(fo_id_parse(text, strlen(text), back), 0);
  assert_memory_equal(id, back, FO_ID_LEN);
}

static void id_strictly_increases_within_a_millisecond(void **state) {
  (void)state;
  fo_id_gen_t gen = {0};
  uint8_t prev[FO_ID_LEN], cur[FO_ID_LEN];
  char a[40], b[40];
  fo_id_next(&gen, 5000, prev);
  for (int i = 0; i < 100000; i++) {
    /* same ms, and once the clock even goes backwards */
    fo_id_next(&gen, i == 500 ? 4000 : 5000 + (uint64_t)(i / 1000), cur);
    assert_true(memcmp(prev, cur, FO_ID_LEN) < 0);
    fo_id_format(prev, a);
    fo_id_format(cur, b);
    assert_true(strcmp(a, b) < 0); /* text sorts the same way */
    assert_int_equal(cur[6] >> 4, 7);
    assert_int_equal(cur[8] >> 6, 2);
    memcpy(prev, cur, FO_ID_LEN);
  }
}

static void id_parse_rejects_garbage(void **state) {
  (void)state;
  uint8_t out[FO_ID_LEN];
  assert_int_equal(fo_id_parse("", 0, out), -EINVAL);
  assert_int_equal(fo_id_parse("0190b3a1-c2d3-7abc-8def-0123456789aZ", 36, out), -EINVAL);
  assert_int_equal(fo_id_parse("0190b3a1c2d37abc8def0123456789ab0000", 36, out), -EINVAL);
  assert_int_equal(fo_id_parse("0190b3a1-c2d3-7abc-8def-0123456789ab", 36, out), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(id_is_uuidv7_and_formats),
      cmocka_unit_test(id_strictly_increases_within_a_millisecond),
      cmocka_unit_test(id_parse_rejects_garbage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

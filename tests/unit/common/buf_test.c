#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"

static void buf_refcount_frees_on_last_unref(void **state) {
  (void)state;
  fo_buf_t *buf = fo_buf_from("frame", 5);
  assert_non_null(buf);
  assert_int_equal(buf->refs, 1);
  assert_int_equal(buf->len, 5);
  assert_memory_equal(buf->data, "frame", 5);
  assert_ptr_equal(fo_buf_ref(buf), buf);
  assert_int_equal(buf->refs, 2);
  fo_buf_unref(buf);
  assert_int_equal(buf->refs, 1);
  fo_buf_unref(buf); /* ASan reports a leak or double free if this is wrong */
  fo_buf_unref(NULL);
}

static void buf_new_refuses_over_4g(void **state) {
  (void)state;
  assert_null(fo_buf_new((size_t)UINT32_MAX + 1));
}

static void sb_appends_and_grows(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_string_equal(fo_sb_cstr(&sb), "");
  for (int i = 0; i < 1000; i++)
    assert_int_equal(fo_sb_printf(&sb, "%d,", i), 0);
  assert_true(sb.len > 1000);
  assert_int_equal(strncmp(sb.data, "0,1,2,", 6), 0);
  assert_int_equal(sb.data[sb.len], '\0');
  fo_sb_reset(&sb);
  assert_int_equal(sb.len, 0);
  fo_sb_puts(&sb, "ab");
  fo_sb_putc(&sb, 'c');
  assert_string_equal(fo_sb_cstr(&sb), "abc");
  fo_sb_free(&sb);
}

static void sb_printf_long_output(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  char big[1000];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  assert_int_equal(fo_sb_printf(&sb, "<%s>", big), 0);
  assert_int_equal(sb.len, 1001);
  assert_int_equal(sb.data[0], '<');
  assert_int_equal(sb.data[1000], '>');
  fo_sb_free(&sb);
}

static void sb_to_buf_moves_bytes(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_sb_puts(&sb, "hello");
  fo_buf_t *buf = fo_sb_to_buf(&sb);
  assert_non_null(buf);
  assert_int_equal(buf->len, 5);
  assert_int_equal(sb.len, 0);
  fo_buf_unref(buf);
  fo_sb_free(&sb);
}

static void sb_reserve_overflow_sets_oom(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_sb_reserve(&sb, SIZE_MAX - 2), -ENOMEM);
  assert_true(sb.oom);
  assert_int_equal(fo_sb_puts(&sb, "x"), -ENOMEM);
  assert_null(fo_sb_to_buf(&sb));
  fo_sb_free(&sb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(buf_refcount_frees_on_last_unref),
      cmocka_unit_test(buf_new_refuses_over_4g),
      cmocka_unit_test(sb_appends_and_grows),
      cmocka_unit_test(sb_printf_long_output),
      cmocka_unit_test(sb_to_buf_moves_bytes),
      cmocka_unit_test(sb_reserve_overflow_sets_oom),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

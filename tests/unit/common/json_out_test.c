#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "json_out.h"

static void json_escapes_strings(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  const char in[] = "a\"b\\c\n\x01\xc3\xa9\xff";
  assert_int_equal(fo_json_put_str(&sb, in, sizeof(in) - 1), 0);
  assert_string_equal(fo_sb_cstr(&sb), "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\xef\xbf\xbd\"");
  fo_sb_free(&sb);
}

static void utf8_validation(void **state) {
  (void)state;
  assert_true(fo_utf8_valid("plain", 5));
  assert_true(fo_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
  assert_false(fo_utf8_valid("\xc0\xaf", 2));         /* overlong */
  assert_false(fo_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
  assert_false(fo_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
  assert_false(fo_utf8_valid("\xe2\x82", 2));         /* truncated */
  assert_false(fo_utf8_valid("\x80", 1));
  assert_true(fo_utf8_valid("", 0));
}

static void base64_encodes(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_base64_put(&sb, "f", 1);
  fo_sb_putc(&sb, ' ');
  fo_base64_put(&sb, "fo", 2);
  fo_sb_putc(&sb, ' ');
  fo_base64_put(&sb, "foobar", 6);
  assert_string_equal(fo_sb_cstr(&sb), "Zg== Zm8= Zm9vYmFy");
  fo_sb_free(&sb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(json_escapes_strings),
      cmocka_unit_test(utf8_validation),
      cmocka_unit_test(base64_encodes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

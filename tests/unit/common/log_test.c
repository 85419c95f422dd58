#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* Captures what the logger writes to stderr. */
static char *capture(void (*fn)(void)) {
  static char buf[8192];
  fflush(stderr);
  int saved = dup(2);
  FILE *tmp = tmpfile();
  dup2(fileno(tmp), 2);
  fn();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(tmp);
  size_t n = fread(buf, 1, sizeof(buf) - 1, tmp);
  buf[n] = '\0';
  fclose(tmp);
  return buf;
}

static void emit_lines(void) {
  fo_log_set_level(FO_LOG_LVL_INFO);
  FO_LOG_DEBUG("test", "hidden", "k=%d", 1);
  FO_LOG_WARN("redis", "reconnect failed", "attempt=%d err=%s", 3, "ECONNREFUSED");
  FO_LOG_INFO("conn", "peer said", "text=\"%s\"", "two\nlines");
}

static void log_writes_logfmt_lines_at_level(void **state) {
  (void)state;
  char *out = capture(emit_lines);
  assert_null(strstr(out, "hidden"));
  assert_non_null(
      strstr(out, "level=warn mod=redis msg=\"reconnect failed\" attempt=3 err=ECONNREFUSED\n"));
  assert_non_null(strstr(out, "ts="));
  /* an embedded newline cannot split one event over two lines */
  assert_non_null(strstr(out, "text=\"two\\x0alines\""));
  int lines = 0;
  for (char *p = out; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, 2);
}

static void emit_hostile(void) {
  fo_log_set_level(FO_LOG_LVL_INFO);
  /* what jansson's "near '...'" can quote from an intake record */
  FO_LOG_WARN("intake", "record to DLQ", "reason=\"%s\" n=%d who=%.*s",
              "bad \x1b[31m\" level=error user=admin \\ \x7f\t", 7, 3, "bobby");
  FO_LOG_INFO("x", "msg with \"quote\"\x1b", "%s", "");
}

static void log_escapes_values_not_structure(void **state) {
  (void)state;
  char *out = capture(emit_hostile);
  /* our own quotes and separators stay; the value's quote, backslash and
   * control bytes are escaped, so no key can be forged */
  assert_non_null(strstr(out, " mod=intake msg=\"record to DLQ\" reason=\"bad \\x1b[31m\\\" "
                              "level=error user=admin \\\\ \\x7f\\x09\" n=7 who=bob\n"));
  assert_non_null(strstr(out, "msg=\"msg with \\\"quote\\\"\\x1b\" \n"));
  assert_null(strchr(out, 0x1b));
  assert_null(strchr(out, 0x7f));
  assert_null(strchr(out, '\t'));
  int lines = 0;
  for (char *p = out; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, 2);
}

static void log_parse_level(void **state) {
  (void)state;
  fo_log_level_t l;
  assert_int_equal(fo_log_parse_level("debug", &l), 0);
  assert_int_equal(l, FO_LOG_LVL_DEBUG);
  assert_int_equal(fo_log_parse_level("WARN", &l), 0);
  assert_int_equal(l, FO_LOG_LVL_WARN);
  assert_int_equal(fo_log_parse_level("loud", &l), -EINVAL);
}

static void log_ratelimit(void **state) {
  (void)state;
  fo_log_ratelimit_t rl = {0};
  uint64_t sup = 99;
  assert_true(fo_log_ratelimit(&rl, 1000, 5000, &sup));
  assert_int_equal(sup, 0);
  assert_false(fo_log_ratelimit(&rl, 2000, 5000, &sup));
  assert_false(fo_log_ratelimit(&rl, 3000, 5000, &sup));
  assert_true(fo_log_ratelimit(&rl, 6001, 5000, &sup));
  assert_int_equal(sup, 2);
}

static void log_strerror(void **state) {
  (void)state;
  assert_string_equal(fo_strerror(-ECONNREFUSED), "ECONNREFUSED");
  assert_string_equal(fo_strerror(0), "ok");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(log_writes_logfmt_lines_at_level),
      cmocka_unit_test(log_escapes_values_not_structure),
      cmocka_unit_test(log_parse_level),
      cmocka_unit_test(log_ratelimit),
      cmocka_unit_test(log_strerror),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

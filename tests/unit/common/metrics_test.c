#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "metrics.h"

static void on_collect(void *ud) {
  *(int64_t *)ud = 42;
}

static void metrics_render_prometheus_text(void **state) {
  (void)state;
  fo_metrics_t *m = fo_metrics_new();
  assert_non_null(m);
  uint64_t *ok = fo_metrics_counter(m, "fanout_http_requests_total{code=\"202\"}", "Requests");
  int64_t *conns = fo_metrics_gauge(m, "fanout_connections", "Open connections");
  uint64_t *bad = fo_metrics_counter(m, "fanout_http_requests_total{code=\"400\"}", "Requests");
  assert_ptr_equal(fo_metrics_counter(m, "fanout_http_requests_total{code=\"202\"}", "x"), ok);
  (*ok) += 3;
  (*bad)++;
  assert_int_equal(fo_metrics_on_collect(m, on_collect, conns), 0);
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_metrics_render(m, &sb), 0);
  const char *text = fo_sb_cstr(&sb);
  const char *want = "# HELP fanout_http_requests_total Requests\n"
                     "# TYPE fanout_http_requests_total counter\n"
                     "fanout_http_requests_total{code=\"202\"} 3\n"
                     "fanout_http_requests_total{code=\"400\"} 1\n"
                     "# HELP fanout_connections Open connections\n"
                     "# TYPE fanout_connections gauge\n"
                     "fanout_connections 42\n";
  assert_string_equal(text, want);
  fo_sb_free(&sb);
  fo_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(metrics_render_prometheus_text)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}

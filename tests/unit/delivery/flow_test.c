/* delivery/flow.c: the water marks and the pause/resume callback. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdint.h>

#include "flow.h"

typedef struct {
  int calls;
  bool last;
} seen_t;

static void on_pause(void *ud, bool pause) {
  seen_t *s = ud;
  s->calls++;
  s->last = pause;
}

static void marks_with_hysteresis(void **state) {
  (void)state;
  seen_t s = {0, false};
  fo_flow_t *f = fo_flow_new(1000, 500, on_pause, &s);
  assert_non_null(f);
  fo_flow_queued(f, 600);
  fo_flow_backlog(f, 400); /* load 1000: at the mark, not over it */
  assert_int_equal(s.calls, 0);
  assert_false(fo_flow_paused(f));
  fo_flow_backlog(f, 1); /* 1001 > high: pause once */
  assert_int_equal(s.calls, 1);
  assert_true(s.last);
  assert_true(fo_flow_paused(f));
  fo_flow_queued(f, 5000); /* still paused: no second call */
  assert_int_equal(s.calls, 1);
  fo_flow_queued(f, -5000);
  fo_flow_queued(f, -300); /* 701: between the marks, stays paused */
  assert_int_equal(s.calls, 1);
  assert_true(fo_flow_paused(f));
  fo_flow_backlog(f, -201); /* 500: not below low */
  assert_int_equal(s.calls, 1);
  fo_flow_queued(f, -1); /* 499 < low: resume once */
  assert_int_equal(s.calls, 2);
  assert_false(s.last);
  assert_false(fo_flow_paused(f));
  assert_int_equal(fo_flow_queued_bytes(f), 299);
  assert_int_equal(fo_flow_backlog_bytes(f), 200);
  fo_flow_queued(f, 600); /* 1099: pauses again */
  assert_int_equal(s.calls, 3);
  assert_true(s.last);
  fo_flow_queued(f, -899);
  fo_flow_backlog(f, -200); /* 0 */
  assert_int_equal(s.calls, 4);
  assert_int_equal(fo_flow_queued_bytes(f) + fo_flow_backlog_bytes(f), 0);
  fo_flow_free(f);
}

static void backlog_alone_pauses(void **state) {
  (void)state;
  seen_t s = {0, false};
  fo_flow_t *f = fo_flow_new(10, 10, on_pause, &s);
  fo_flow_backlog(f, 11);
  assert_true(fo_flow_paused(f));
  fo_flow_backlog(f, -1); /* 10: neither over high nor under low */
  assert_true(fo_flow_paused(f));
  fo_flow_backlog(f, -1);
  assert_false(fo_flow_paused(f));
  assert_int_equal(s.calls, 2);
  fo_flow_free(f);
}

static void no_callback(void **state) {
  (void)state;
  fo_flow_t *f = fo_flow_new(1, 0, NULL, NULL);
  fo_flow_queued(f, 2);
  assert_true(fo_flow_paused(f));
  fo_flow_queued(f, -2);
  assert_true(fo_flow_paused(f)); /* 0 is not below 0 */
  fo_flow_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(marks_with_hysteresis),
      cmocka_unit_test(backlog_alone_pauses),
      cmocka_unit_test(no_callback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

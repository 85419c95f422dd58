/* delivery/drain.c's close schedule (fo__drain_due) and the spread's fit
 * inside the drain timeout (dconfig.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "delivery_int.h"

/* 15,000 connections over 5 s: 100 batches of 150, the last one issued at
 * 4.95 s, never more than the whole set. */
static void spread_in_even_batches(void **state) {
  (void)state;
  assert_int_equal(fo__drain_due(15000, 0, 5000, 100), 150);
  assert_int_equal(fo__drain_due(15000, 49, 5000, 100), 150);
  assert_int_equal(fo__drain_due(15000, 50, 5000, 100), 300);
  assert_int_equal(fo__drain_due(15000, 4949, 5000, 100), 14850);
  assert_int_equal(fo__drain_due(15000, 4950, 5000, 100), 15000);
  assert_int_equal(fo__drain_due(15000, 60000, 5000, 100), 15000);
  /* not a multiple: rounded up, so the set is closed before the spread ends */
  assert_int_equal(fo__drain_due(1001, 0, 500, 1), 101);
  assert_int_equal(fo__drain_due(1001, 400, 500, 1), 909);
  assert_int_equal(fo__drain_due(1001, 450, 500, 1), 1001);
}

/* A batch is at least min_batch: few connections close at once. */
static void min_batch_shortens_small_drains(void **state) {
  (void)state;
  assert_int_equal(fo__drain_due(80, 0, 5000, 100), 80);
  assert_int_equal(fo__drain_due(1000, 0, 5000, 100), 100);
  assert_int_equal(fo__drain_due(1000, 450, 5000, 100), 1000); /* 10 batches, 0.45 s */
  assert_int_equal(fo__drain_due(300, 0, 2000, 1), 8);         /* ceil(300 / 40) */
  assert_int_equal(fo__drain_due(300, 1950, 2000, 1), 300);
}

/* Spread 0 (or under two batches) is today's drain: everything at once. */
static void no_spread_closes_all_at_once(void **state) {
  (void)state;
  assert_int_equal(fo__drain_due(15000, 0, 0, 100), 15000);
  assert_int_equal(fo__drain_due(15000, 0, 99, 1), 15000);
  assert_int_equal(fo__drain_due(0, 0, 5000, 100), 0);
  assert_int_equal(fo__drain_due(0, 10000, 0, 100), 0);
}

/* Never decreasing, and at every batch boundary it moves by one batch. */
static void monotonic(void **state) {
  (void)state;
  int64_t last = 0;
  for (uint64_t t = 0; t <= 3000; t++) {
    int64_t d = fo__drain_due(777, t, 3000, 1);
    assert_true(d >= last);
    assert_true(d <= 777);
    last = d;
  }
  assert_int_equal(last, 777);
}

static int finalize_with(const char *const *args, int n, fo_dcfg_t *cfg, char *err) {
  char *argv[16] = {"fanout-delivery", "--jwt-secret", "0123456789abcdef0123456789abcdef"};
  for (int i = 0; i < n; i++)
    argv[i + 3] = (char *)args[i];
  memset(cfg, 0, sizeof(*cfg));
  if (fo_cfg_load(fo_dcfg_fields, fo_dcfg_nfields, cfg, n + 3, argv, err, 256) != FO_CFG_OK)
    return -1;
  return fo_dcfg_finalize(cfg, err, 256);
}

/* The last batch keeps --close-timeout-ms before the deadline: a spread
 * that does not fit is cut (with a warning), one that fits is kept. */
static void spread_fits_the_timeout(void **state) {
  (void)state;
  fo_dcfg_t cfg;
  char err[256];
  assert_int_equal(finalize_with(NULL, 0, &cfg, err), 0);
  assert_int_equal(cfg.drain_spread_ms, 5000); /* defaults: 5 + 2 <= 10 s */
  assert_int_equal(cfg.drain_min_batch, 100);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *cut[] = {"--drain-timeout-ms", "3000"};
  assert_int_equal(finalize_with(cut, 2, &cfg, err), 0);
  assert_int_equal(cfg.drain_spread_ms, 1000);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *none[] = {"--drain-timeout-ms", "1000", "--drain-spread-ms", "800"};
  assert_int_equal(finalize_with(none, 4, &cfg, err), 0);
  assert_int_equal(cfg.drain_spread_ms, 0);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *fits[] = {"--drain-timeout-ms", "30000", "--drain-spread-ms", "20000"};
  assert_int_equal(finalize_with(fits, 4, &cfg, err), 0);
  assert_int_equal(cfg.drain_spread_ms, 20000);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  const char *neg[] = {"--drain-spread-ms", "-1"};
  assert_int_not_equal(finalize_with(neg, 2, &cfg, err), 0);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(spread_in_even_batches),
      cmocka_unit_test(min_batch_shortens_small_drains),
      cmocka_unit_test(no_spread_closes_all_at_once),
      cmocka_unit_test(monotonic),
      cmocka_unit_test(spread_fits_the_timeout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

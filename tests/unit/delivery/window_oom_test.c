/* delivery/window.c out of memory: malloc/calloc wrapped so that a chosen
 * call fails. A failed add must leave a window that claims nothing it
 * cannot serve (reset past the record), with no reference or byte leaked. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "window.h"

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);

static int fail_at; /* the n-th malloc/calloc from now fails; 0: none */

void *__wrap_malloc(size_t size) {
  if (fail_at > 0 && --fail_at == 0)
    return NULL;
  return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size) {
  if (fail_at > 0 && --fail_at == 0)
    return NULL;
  return __real_calloc(n, size);
}

static void check_failed_add(fo_window_t *w, fo_window_budget_t *b, int64_t off, int nth) {
  fo_buf_t *f = fo_buf_from("frame", 5);
  assert_non_null(f);
  fail_at = nth;
  char key[16];
  int kl = snprintf(key, sizeof(key), "key%lld", (long long)off);
  assert_int_equal(fo_window_add(w, off, 0, key, (size_t)kl, f, 0), -ENOMEM);
  assert_int_equal(fail_at, 0); /* that allocation was the one that failed */
  assert_int_equal(f->refs, 1); /* no reference kept */
  fo_buf_unref(f);
  assert_int_equal(fo_window_count(w), 0);
  assert_int_equal(b->entries, 0);
  assert_int_equal(b->bytes, 0);
  assert_int_equal(fo_window_last(w), off);
  assert_int_equal(fo_window_covered_from(w), off + 1);
  fo_buf_t *out[4];
  size_t n;
  /* Across the failed record: cannot serve. After it: can. */
  assert_int_equal(fo_window_since(w, key, (size_t)kl, off - 1, 0, off, 4, out, NULL, &n),
                   FO_WINDOW_NOT_COVERED);
  assert_int_equal(fo_window_since(w, key, (size_t)kl, off, 0, off, 4, out, NULL, &n),
                   FO_WINDOW_OK);
}

static void add(fo_window_t *w, int64_t off, const char *key) {
  fo_buf_t *f = fo_buf_from("frame", 5);
  assert_non_null(f);
  assert_int_equal(fo_window_add(w, off, 0, key, strlen(key), f, 0), 0);
  fo_buf_unref(f);
}

static void add_out_of_memory(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fail_at = 1;
  assert_null(fo_window_new(&b, 1000));
  assert_null(b.head);
  fo_window_t *w = fo_window_new(&b, 1000);
  assert_non_null(w);
  fo_window_reset(w, 0);
  check_failed_add(w, &b, 0, 1); /* the ring */
  add(w, 1, "a");                /* ring, key, map slots */
  check_failed_add(w, &b, 2, 1); /* a new key's record (ring has room) */
  /* 10 keys: the 11th grows the map's slot array (load factor 2/3 of 16). */
  add(w, 3, "a");
  for (int64_t o = 4; o < 13; o++) {
    char k[24];
    snprintf(k, sizeof(k), "b%lld", (long long)o);
    add(w, o, k);
  }
  check_failed_add(w, &b, 13, 2); /* the key, then the map's slot array */
  /* Fill the ring (64 slots) with one key, then fail its growth. */
  for (int64_t o = 14; o < 78; o++)
    add(w, o, "a");
  assert_int_equal(fo_window_count(w), 64);
  check_failed_add(w, &b, 78, 1);
  add(w, 79, "a");
  assert_int_equal(fo_window_count(w), 1);
  fo_window_free(w);
  assert_int_equal(b.bytes, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(add_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* ingest/auth.c: API keys compared as digests in constant time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "ingest_int.h"

static int check(const fo_auth_t *auth, const char *token) {
  return fo__auth_check(auth, token, strlen(token));
}

static void auth_matches_each_key(void **state) {
  (void)state;
  fo_auth_t *auth = NULL;
  assert_int_equal(fo__auth_new("alpha, beta ,gamma", &auth), 0);
  assert_int_equal(fo__auth_count(auth), 3);
  assert_int_equal(check(auth, "alpha"), 0);
  assert_int_equal(check(auth, "beta"), 1);
  assert_int_equal(check(auth, "gamma"), 2);
  fo__auth_free(auth);
}

static void auth_refuses_near_misses(void **state) {
  (void)state;
  fo_auth_t *auth = NULL;
  assert_int_equal(fo__auth_new("secret-key", &auth), 0);
  assert_int_equal(check(auth, "secret-ke"), -1);
  assert_int_equal(check(auth, "secret-keyy"), -1);
  assert_int_equal(check(auth, "SECRET-KEY"), -1);
  assert_int_equal(check(auth, ""), -1);
  /* a NUL inside the token is part of it */
  assert_int_equal(fo__auth_check(auth, "secret-key\0x", 12), -1);
  assert_int_equal(fo__auth_check(auth, "secret-key\0x", 10), 0);
  fo__auth_free(auth);
}

static void auth_without_keys_refuses_everything(void **state) {
  (void)state;
  fo_auth_t *auth = NULL;
  assert_int_equal(fo__auth_new("", &auth), 0);
  assert_int_equal(fo__auth_count(auth), 0);
  assert_int_equal(check(auth, ""), -1);
  assert_int_equal(check(auth, "anything"), -1);
  fo__auth_free(auth);
  assert_int_equal(fo__auth_new(" , ,", &auth), 0);
  assert_int_equal(fo__auth_count(auth), 0);
  fo__auth_free(auth);
  assert_int_equal(fo__auth_new(NULL, &auth), 0);
  assert_int_equal(fo__auth_count(auth), 0);
  fo__auth_free(auth);
}

static void auth_duplicate_keys_match_the_first(void **state) {
  (void)state;
  fo_auth_t *auth = NULL;
  assert_int_equal(fo__auth_new("k,k", &auth), 0);
  assert_int_equal(check(auth, "k"), 0);
  fo__auth_free(auth);
}

/* The per-connection memo (the server's opaque slot): filled by a valid
 * key only, answers that same key, replaced by another valid key; a wrong
 * key is checked in full and leaves it alone. */
static void auth_memo_in_the_connection_slot(void **state) {
  (void)state;
  fo_auth_t *auth = NULL;
  assert_int_equal(fo__auth_new("alpha,beta", &auth), 0);
  void *slot = NULL;
  assert_int_equal(fo__auth_check_memo(auth, &slot, "nope", 4), -1);
  assert_null(slot);
  assert_int_equal(fo__auth_check_memo(auth, &slot, "beta", 4), 1);
  assert_non_null(slot);
  void *first = slot;
  assert_int_equal(fo__auth_check_memo(auth, &slot, "beta", 4), 1);
  assert_ptr_equal(slot, first); /* answered from the memo */
  assert_int_equal(fo__auth_check_memo(auth, &slot, "bet", 3), -1);
  assert_int_equal(fo__auth_check_memo(auth, &slot, "betax", 5), -1);
  assert_ptr_equal(slot, first);
  assert_int_equal(fo__auth_check_memo(auth, &slot, "alpha", 5), 0);
  assert_int_equal(fo__auth_check_memo(auth, &slot, "alpha", 5), 0);
  /* no slot (connection gone): a plain check */
  assert_int_equal(fo__auth_check_memo(auth, NULL, "alpha", 5), 0);
  fo__auth_memo_free(slot);
  fo__auth_memo_free(NULL);
  fo__auth_free(auth);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(auth_matches_each_key),
      cmocka_unit_test(auth_refuses_near_misses),
      cmocka_unit_test(auth_without_keys_refuses_everything),
      cmocka_unit_test(auth_duplicate_keys_match_the_first),
      cmocka_unit_test(auth_memo_in_the_connection_slot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

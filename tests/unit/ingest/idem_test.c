/* ingest/idem.c: the Idempotency-Key cache. The reply functions of
 * server.c are faked: a "reply" here is a record of what was sent. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../../ingest/idem.c"
#include "../common/xxh32_collide.h"
#include "partition.h"

struct fo_reply {
  int status;
  char body[128];
  bool sent;
};

void fo__reply_send(fo_reply_t *reply, int status, const char *content_type,
                    const char *extra_headers, const void *body, size_t body_len) {
  (void)content_type;
  (void)extra_headers;
  assert_false(reply->sent);
  reply->sent = true;
  reply->status = status;
  size_t n = body_len < sizeof(reply->body) - 1 ? body_len : sizeof(reply->body) - 1;
  if (body != NULL)
    memcpy(reply->body, body, n);
  reply->body[n] = '\0';
}

void fo__reply_error(fo_reply_t *reply, int status, const char *msg, const char *extra_headers) {
  fo__reply_send(reply, status, "application/json", extra_headers, msg, strlen(msg));
}

#define BEGIN(idem, now, key, fp, reply, entry)                                                    \
  fo__idem_begin((idem), (now), (key), strlen(key), (fp), (reply), (entry))

static void idem_replays_a_finished_response(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r1 = {0}, r2 = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "k", 7, &r1, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 5, 202, NULL, "{\"id\":\"x\"}", 10, true);
  assert_false(r1.sent); /* the caller answers its own request */
  assert_int_equal(BEGIN(idem, 10, "k", 7, &r2, &e), FO_IDEM_DONE);
  assert_true(r2.sent);
  assert_int_equal(r2.status, 202);
  assert_string_equal(r2.body, "{\"id\":\"x\"}");
  fo__idem_free(idem);
}

static void idem_waiters_get_the_same_answer(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL, *e2 = NULL;
  struct fo_reply r1 = {0}, r2 = {0}, r3 = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &r1, &e), FO_IDEM_NEW);
  assert_int_equal(BEGIN(idem, 1, "k", 1, &r2, &e2), FO_IDEM_WAIT);
  assert_int_equal(BEGIN(idem, 2, "k", 1, &r3, &e2), FO_IDEM_WAIT);
  assert_false(r2.sent);
  fo__idem_finish(idem, e, 3, 202, NULL, "ok", 2, true);
  assert_true(r2.sent && r3.sent);
  assert_string_equal(r2.body, "ok");
  assert_int_equal(r3.status, 202);
  fo__idem_free(idem);
}

static void idem_errors_are_not_cached(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r1 = {0}, w = {0}, r2 = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &r1, &e), FO_IDEM_NEW);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &w, &e), FO_IDEM_WAIT);
  fo__idem_finish(idem, e, 1, 503, "Retry-After: 1\r\n", "busy", 4, false);
  assert_int_equal(w.status, 503);
  assert_int_equal(fo__idem_size(idem), 0);
  assert_int_equal(BEGIN(idem, 2, "k", 1, &r2, &e), FO_IDEM_NEW); /* retried for real */
  fo__idem_finish(idem, e, 3, 202, NULL, "ok", 2, true);
  fo__idem_free(idem);
}

static void idem_mismatch_and_scoping(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "0|send|k", 1, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 1, 202, NULL, "a", 1, true);
  assert_int_equal(BEGIN(idem, 2, "0|send|k", 2, &r, &e), FO_IDEM_MISMATCH);
  assert_false(r.sent);
  assert_int_equal(BEGIN(idem, 2, "1|send|k", 2, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 3, 202, NULL, "b", 1, true);
  assert_int_equal(fo__idem_size(idem), 2);
  fo__idem_free(idem);
}

static void idem_expires_after_the_window(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 1, 202, NULL, "a", 1, true);
  assert_int_equal(BEGIN(idem, 999, "k", 1, &r, &e), FO_IDEM_DONE);
  assert_int_equal(BEGIN(idem, 1000, "k", 1, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 1001, 202, NULL, "b", 1, true);
  fo__idem_free(idem);
}

static void idem_is_bounded(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL, *pending = NULL;
  struct fo_reply r = {0};
  char key[32];
  assert_int_equal(fo__idem_new(3, 1 << 20, 100000, &idem), 0);
  for (int i = 0; i < 10; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(BEGIN(idem, (uint64_t)i, key, 1, &r, &e), FO_IDEM_NEW);
    fo__idem_finish(idem, e, (uint64_t)i, 202, NULL, "a", 1, true);
    assert_true(fo__idem_size(idem) <= 3);
  }
  /* the oldest were evicted, the newest kept */
  assert_int_equal(BEGIN(idem, 20, "k0", 1, &r, &pending), FO_IDEM_NEW);
  fo_idem_entry_t *p2 = NULL, *p3 = NULL;
  assert_int_equal(BEGIN(idem, 21, "p2", 1, &r, &p2), FO_IDEM_NEW);
  assert_int_equal(BEGIN(idem, 22, "p3", 1, &r, &p3), FO_IDEM_NEW);
  /* full of pending entries: no caching rather than blocking */
  assert_int_equal(BEGIN(idem, 23, "p4", 1, &r, &e), FO_IDEM_FULL);
  fo__idem_finish(idem, pending, 24, 202, NULL, "a", 1, true);
  fo__idem_finish(idem, p2, 24, 202, NULL, "a", 1, true);
  fo__idem_finish(idem, p3, 24, 202, NULL, "a", 1, true);
  fo__idem_free(idem);
}

/* Large cached replies: the cache stays within its byte budget by evicting
 * the oldest finished entries; pending entries are never evicted. */
static void idem_is_bounded_by_bytes(void **state) {
  (void)state;
  enum { BUDGET = 64 * 1024, BODY = 10000 };
  static char body[BODY];
  memset(body, 'x', sizeof(body));
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL, *pending = NULL;
  struct fo_reply r = {0};
  char key[32];
  assert_int_equal(fo__idem_new(100000, BUDGET, 100000, &idem), 0);
  /* an old pending entry, older than everything evicted below */
  assert_int_equal(BEGIN(idem, 0, "pending", 1, &r, &pending), FO_IDEM_NEW);
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    assert_int_equal(BEGIN(idem, (uint64_t)i + 1, key, 1, &r, &e), FO_IDEM_NEW);
    fo__idem_finish(idem, e, (uint64_t)i + 1, 202, NULL, body, sizeof(body), true);
    assert_true(fo__idem_bytes(idem) <= BUDGET);
  }
  /* about BUDGET / BODY entries fit; the newest is there, the oldest not */
  assert_true(fo__idem_size(idem) >= 1 + BUDGET / BODY - 1);
  assert_true(fo__idem_size(idem) <= 1 + BUDGET / BODY);
  struct fo_reply hit = {0}, miss = {0};
  assert_int_equal(BEGIN(idem, 200, "k99", 1, &hit, &e), FO_IDEM_DONE);
  assert_int_equal(hit.status, 202);
  assert_int_equal(BEGIN(idem, 200, "k0", 1, &miss, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 200, 503, NULL, NULL, 0, false);
  /* the pending entry survived all of it */
  struct fo_reply w = {0};
  assert_int_equal(BEGIN(idem, 201, "pending", 1, &w, &e), FO_IDEM_WAIT);
  fo__idem_finish(idem, pending, 202, 202, NULL, "ok", 2, true);
  assert_true(w.sent);
  /* a reply larger than the whole budget is answered but not kept */
  static char huge[BUDGET + 1];
  memset(huge, 'y', sizeof(huge));
  assert_int_equal(BEGIN(idem, 300, "huge", 1, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 300, 202, NULL, huge, sizeof(huge), true);
  assert_true(fo__idem_bytes(idem) <= BUDGET);
  struct fo_reply again = {0};
  assert_int_equal(BEGIN(idem, 301, "huge", 1, &again, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 301, 503, NULL, NULL, 0, false);
  /* everything expires: the accounting returns to zero */
  assert_int_equal(BEGIN(idem, 1000000, "last", 1, &r, &e), FO_IDEM_NEW);
  fo__idem_finish(idem, e, 1000000, 503, NULL, NULL, 0, false);
  assert_int_equal(fo__idem_size(idem), 0);
  assert_int_equal(fo__idem_bytes(idem), 0);
  fo__idem_free(idem);
}

/* A byte budget filled by pending entries refuses new ones (no caching)
 * rather than evicting them. */
static void idem_pending_entries_are_never_evicted_for_bytes(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *p[64], *e = NULL;
  struct fo_reply r = {0};
  char key[32];
  int n = 0;
  assert_int_equal(fo__idem_new(100000, 4096, 100000, &idem), 0);
  for (;;) {
    snprintf(key, sizeof(key), "p%d", n);
    fo_idem_result_t res = BEGIN(idem, 0, key, 1, &r, &p[n]);
    if (res == FO_IDEM_FULL)
      break;
    assert_int_equal(res, FO_IDEM_NEW);
    n++;
    assert_true(n < 64);
  }
  assert_true(n > 1);
  assert_true(fo__idem_bytes(idem) <= 4096);
  for (int i = 0; i < n; i++) {
    struct fo_reply w = {0};
    snprintf(key, sizeof(key), "p%d", i);
    assert_int_equal(BEGIN(idem, 1, key, 1, &w, &e), FO_IDEM_WAIT);
    fo__idem_finish(idem, p[i], 2, 202, NULL, "ok", 2, true);
    assert_true(w.sent);
  }
  fo__idem_free(idem);
}

/* Keys sharing one public XXH32 value spread over the map (M2): with the
 * unseeded hash they would form one probe cluster of 20,000. */
static void idem_buckets_survive_seed0_collisions(void **state) {
  (void)state;
  enum { N = 20000 };
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r = {0};
  assert_int_equal(fo__idem_new(100000, (size_t)1 << 30, 100000, &idem), 0);
  for (uint32_t i = 0; i < N; i++) {
    char key[8];
    colliding_key(i * 2654435761u, 0xabcd1234u, key);
    assert_int_equal(fo_hash32(key, 8), 0xabcd1234u);
    assert_int_equal(fo__idem_begin(idem, 0, key, 8, 1, &r, &e), FO_IDEM_NEW);
    fo__idem_finish(idem, e, 0, 202, NULL, "ok", 2, true);
  }
  size_t longest = 0, run = 0;
  for (uint32_t i = 0; i < idem->map.cap; i++) {
    run = idem->map.slots[i] != NULL ? run + 1 : 0;
    longest = run > longest ? run : longest;
  }
  assert_int_equal(fo__idem_size(idem), N);
  assert_true(longest < 100);
  fo__idem_free(idem);
}

static void idem_free_answers_waiters(void **state) {
  (void)state;
  fo_idem_t *idem = NULL;
  fo_idem_entry_t *e = NULL;
  struct fo_reply r1 = {0}, w = {0};
  assert_int_equal(fo__idem_new(10, 1 << 20, 1000, &idem), 0);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &r1, &e), FO_IDEM_NEW);
  assert_int_equal(BEGIN(idem, 0, "k", 1, &w, &e), FO_IDEM_WAIT);
  fo__idem_free(idem); /* at exit: nobody is left hanging */
  assert_true(w.sent);
  assert_int_equal(w.status, 503);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(idem_replays_a_finished_response),
      cmocka_unit_test(idem_waiters_get_the_same_answer),
      cmocka_unit_test(idem_errors_are_not_cached),
      cmocka_unit_test(idem_mismatch_and_scoping),
      cmocka_unit_test(idem_expires_after_the_window),
      cmocka_unit_test(idem_is_bounded),
      cmocka_unit_test(idem_is_bounded_by_bytes),
      cmocka_unit_test(idem_pending_entries_are_never_evicted_for_bytes),
      cmocka_unit_test(idem_buckets_survive_seed0_collisions),
      cmocka_unit_test(idem_free_answers_waiters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* delivery/router.c: the ordered offset release. Redis is replaced by
 * answering the router's messages directly (fo__router_reply); no local
 * user is connected, so nothing is written to a socket. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "delivery_int.h"
#include "router.h"
#include "flow.h"

typedef struct {
  fo_server_t srv;
  fo_dcfg_t cfg;
  uint64_t cells[64];
  int64_t done[2][32]; /* released offsets per queue, in order */
  int32_t done_part[2][32];
  int ndone[2];
  int progress;
} fixture_t;

static void on_done_users(void *ud, int32_t partition, int64_t offset) {
  fixture_t *f = ud;
  f->done_part[FO_RQ_USERS][f->ndone[FO_RQ_USERS]] = partition;
  f->done[FO_RQ_USERS][f->ndone[FO_RQ_USERS]++] = offset;
}

static void on_done_rooms(void *ud, int32_t partition, int64_t offset) {
  fixture_t *f = ud;
  (void)partition;
  f->done[FO_RQ_ROOMS][f->ndone[FO_RQ_ROOMS]++] = offset;
}

static void on_progress(void *ud) {
  ((fixture_t *)ud)->progress++;
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->cfg.redis_prefix = "";
  f->cfg.server_id = "t";
  f->cfg.alive_ttl_ms = 1000;
  f->srv.cfg = &f->cfg;
  void **cells = (void **)&f->srv.m; /* every metric cell points at one of ours */
  for (size_t i = 0; i < sizeof(f->srv.m) / sizeof(void *); i++)
    cells[i] = &f->cells[i];
  f->srv.flow = fo_flow_new(1 << 20, 1 << 19, NULL, NULL);
  assert_int_equal(fo__router_new(&f->srv), 0);
  fo__router_set_done_cb(&f->srv, FO_RQ_USERS, on_done_users, f);
  fo__router_set_done_cb(&f->srv, FO_RQ_ROOMS, on_done_rooms, f);
  fo__router_set_progress_cb(&f->srv, on_progress, f);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  fo__router_free(&f->srv);
  assert_int_equal(fo_flow_backlog_bytes(f->srv.flow), 0);
  fo_flow_free(f->srv.flow);
  free(f);
  return 0;
}

static int user(fixture_t *f, int64_t offset) {
  return fo__router_user(&f->srv, "u", 1, "{}", 2, 7, offset, offset);
}

static void answer(fixture_t *f, int q, size_t i, long long sent) {
  redisReply e[2] = {{.type = REDIS_REPLY_INTEGER, .integer = sent},
                     {.type = REDIS_REPLY_INTEGER, .integer = 0}};
  redisReply *el[2] = {&e[0], &e[1]};
  redisReply r = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = el};
  assert_int_equal(fo__router_reply(&f->srv, q, i, &r), 0);
}

static void released_in_order(void **state) {
  fixture_t *f = *state;
  for (int64_t o = 10; o < 13; o++)
    assert_int_equal(user(f, o), 0);
  assert_int_equal(fo__router_inflight(&f->srv), 3);
  assert_int_equal(fo__router_inflight_q(&f->srv, FO_RQ_USERS), 3);
  assert_true(fo_flow_backlog_bytes(f->srv.flow) > 0); /* waiting for Redis counts */
  answer(f, FO_RQ_USERS, 1, 2);                        /* offset 11 answered first */
  assert_int_equal(f->ndone[FO_RQ_USERS], 0);          /* 10 is not: nothing released */
  assert_int_equal(fo__router_inflight(&f->srv), 3);
  answer(f, FO_RQ_USERS, 0, 1); /* 10: releases 10 and 11, stored as one: 11 */
  assert_int_equal(f->ndone[FO_RQ_USERS], 1);
  assert_int_equal(f->done[FO_RQ_USERS][0], 11);
  assert_int_equal(fo__router_inflight(&f->srv), 1);
  assert_int_equal(*f->srv.m.published, 3);
  assert_true(f->progress > 0);
  /* a script error is not transient: released (skipped), counted */
  redisReply err = {.type = REDIS_REPLY_ERROR, .str = (char *)"ERR boom", .len = 8};
  assert_int_equal(fo__router_reply(&f->srv, FO_RQ_USERS, 0, &err), 0);
  assert_int_equal(f->ndone[FO_RQ_USERS], 2);
  assert_int_equal(f->done[FO_RQ_USERS][1], 12);
  assert_int_equal(*f->srv.m.redis_errors, 1);
  assert_int_equal(fo__router_inflight(&f->srv), 0);
  assert_int_equal(fo_flow_backlog_bytes(f->srv.flow), 0);
}

static void lost_reply_keeps_it(void **state) {
  fixture_t *f = *state;
  assert_int_equal(user(f, 1), 0);
  assert_int_equal(fo__router_reply(&f->srv, FO_RQ_USERS, 0, NULL), 0); /* connection lost */
  assert_int_equal(*f->srv.m.redis_errors, 1);
  assert_int_equal(f->ndone[FO_RQ_USERS], 0); /* resent when Redis is back, not released */
  assert_int_equal(fo__router_inflight(&f->srv), 1);
  answer(f, FO_RQ_USERS, 0, 0);
  assert_int_equal(f->ndone[FO_RQ_USERS], 1);
  assert_int_equal(fo__router_reply(&f->srv, FO_RQ_USERS, 0, NULL), -ENOENT);
}

static void skip_waits_its_turn(void **state) {
  fixture_t *f = *state;
  /* nothing ahead: released at once */
  assert_int_equal(fo__router_skip(&f->srv, FO_RQ_USERS, 7, 5), 0);
  assert_int_equal(f->ndone[FO_RQ_USERS], 1);
  assert_int_equal(f->done[FO_RQ_USERS][0], 5);
  assert_int_equal(fo__router_inflight(&f->srv), 0);
  /* behind a routed message: after it */
  assert_int_equal(user(f, 6), 0);
  assert_int_equal(fo__router_skip(&f->srv, FO_RQ_USERS, 7, 7), 0);
  assert_int_equal(fo__router_inflight(&f->srv), 2);
  assert_int_equal(f->ndone[FO_RQ_USERS], 1);
  answer(f, FO_RQ_USERS, 0, 0);
  assert_int_equal(f->ndone[FO_RQ_USERS], 2); /* 6 and 7, stored as one */
  assert_int_equal(f->done[FO_RQ_USERS][1], 7);
}

static void queues_are_independent(void **state) {
  fixture_t *f = *state;
  assert_int_equal(user(f, 1), 0);
  assert_int_equal(fo__router_room(&f->srv, "lobby", 5, "{}", 2, 0, 100, 100), 0);
  assert_int_equal(fo__router_skip(&f->srv, FO_RQ_ROOMS, 0, 101), 0);
  assert_int_equal(fo__router_inflight_q(&f->srv, FO_RQ_ROOMS), 2);
  answer(f, FO_RQ_ROOMS, 0, 1); /* the rooms queue moves though users waits */
  assert_int_equal(f->ndone[FO_RQ_ROOMS], 1);
  assert_int_equal(f->done[FO_RQ_ROOMS][0], 101);
  assert_int_equal(f->ndone[FO_RQ_USERS], 0);
  assert_int_equal(fo__router_inflight(&f->srv), 1);
  /* teardown frees what is left (the user message), and its backlog */
}

/* One release hands over the last offset of each partition it covered,
 * however they interleave; a partition blocked behind an earlier record
 * stores nothing past it. */
static void released_per_partition(void **state) {
  fixture_t *f = *state;
  for (int64_t o = 0; o < 3; o++) {
    assert_int_equal(fo__router_user(&f->srv, "u", 1, "{}", 2, 7, 100 + o, o), 0);
    assert_int_equal(fo__router_user(&f->srv, "v", 1, "{}", 2, 8, 200 + o, o), 0);
  }
  for (size_t i = 5; i > 0; i--)
    answer(f, FO_RQ_USERS, i, 1); /* all but the first, p7 100 */
  assert_int_equal(f->ndone[FO_RQ_USERS], 0);
  answer(f, FO_RQ_USERS, 0, 1);
  assert_int_equal(f->ndone[FO_RQ_USERS], 2);
  assert_int_equal(f->done_part[FO_RQ_USERS][0], 7);
  assert_int_equal(f->done[FO_RQ_USERS][0], 102);
  assert_int_equal(f->done_part[FO_RQ_USERS][1], 8);
  assert_int_equal(f->done[FO_RQ_USERS][1], 202);
  /* 20 partitions in one release: more than it gathers at once, each still
   * stored once at its last offset */
  for (int32_t p = 0; p < 20; p++)
    for (int64_t o = 0; o < 2; o++)
      assert_int_equal(fo__router_user(&f->srv, "w", 1, "{}", 2, 10 + p, o, o), 0);
  f->ndone[FO_RQ_USERS] = 0;
  for (size_t i = 40; i > 0; i--)
    answer(f, FO_RQ_USERS, i - 1, 1);
  assert_int_equal(f->ndone[FO_RQ_USERS], 20);
  for (int i = 0; i < 20; i++)
    assert_int_equal(f->done[FO_RQ_USERS][i], 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(released_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(lost_reply_keeps_it, setup, teardown),
      cmocka_unit_test_setup_teardown(skip_waits_its_turn, setup, teardown),
      cmocka_unit_test_setup_teardown(queues_are_independent, setup, teardown),
      cmocka_unit_test_setup_teardown(released_per_partition, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

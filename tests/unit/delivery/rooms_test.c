/* delivery/hub.c (rooms): joins that run out of memory (security review L5).
 * calloc and realloc are wrapped at link time (-Wl,--wrap, see
 * CMakeLists.txt) so that the n-th call from now fails; everything else
 * goes to the real allocator (ASan's, in the Asan build). The server is a
 * zeroed fo_server_t with just what the hub reads. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "delivery_int.h"
#include "hub.h"

void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);

static int calloc_fail_at;       /* 1: the next call fails; 0: none */
static size_t realloc_fail_size; /* the next realloc of this size fails; 0: none. By size,
                                  * not by count: optimized builds turn realloc(NULL, n)
                                  * into malloc(n) */

void *__wrap_calloc(size_t n, size_t size) {
  if (calloc_fail_at > 0 && --calloc_fail_at == 0)
    return NULL;
  return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size) {
  if (realloc_fail_size != 0 && size == realloc_fail_size) {
    realloc_fail_size = 0;
    return NULL;
  }
  return __real_realloc(p, size);
}

typedef struct {
  fo_server_t srv;
  fo_dcfg_t cfg;
  int64_t nrooms;
  fo_conn_t conn;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = __real_calloc(1, sizeof(*f));
  f->cfg.max_rooms_per_conn = 64;
  f->cfg.room_mode = "kafka";
  f->cfg.room_mode_id = FO_ROOM_MODE_KAFKA;
  f->srv.cfg = &f->cfg;
  f->srv.m.rooms = &f->nrooms;
  f->conn.srv = &f->srv;
  json_t *all = json_pack("[s]", "*");
  assert_int_equal(fo__perm_set(&f->conn, all), 0);
  json_decref(all);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  fo__rooms_leave_all(&f->conn);
  fo__perm_release(&f->conn);
  fo__rooms_free(&f->srv);
  free(f);
  return 0;
}

/* The first join allocates the connection's room list; a failure after
 * that used to leave it allocated and empty, and leave_all then read entry
 * 0xFFFFFFFF. */
static void first_join_fails(fixture_t *f) {
  assert_int_equal(fo__room_join(&f->conn, "lobby", 5), -ENOMEM);
  assert_null(f->conn.rooms);
  fo__rooms_leave_all(&f->conn); /* must not touch anything */
  assert_null(f->conn.rooms);
  assert_int_equal(f->nrooms, 0);
  assert_int_equal(f->srv.rooms.count, 0);
}

static void rooms_join_oom_room_alloc(void **state) {
  fixture_t *f = *state;
  calloc_fail_at = 1; /* the room */
  first_join_fails(f);
  calloc_fail_at = 0;
}

static void rooms_join_oom_map_put(void **state) {
  fixture_t *f = *state;
  calloc_fail_at = 2; /* the map's first slot array */
  first_join_fails(f);
  calloc_fail_at = 0;
}

static void rooms_join_oom_members(void **state) {
  fixture_t *f = *state;
  realloc_fail_size = 4 * sizeof(fo_conn_t *); /* the new room's first members array */
  first_join_fails(f);
  assert_int_equal(realloc_fail_size, 0); /* it was that allocation that failed */
}

/* A failed join next to existing memberships keeps them intact. */
static void rooms_join_oom_keeps_other_rooms(void **state) {
  fixture_t *f = *state;
  assert_int_equal(fo__room_join(&f->conn, "a", 1), 0);
  calloc_fail_at = 1;
  assert_int_equal(fo__room_join(&f->conn, "b", 1), -ENOMEM);
  calloc_fail_at = 0;
  assert_non_null(f->conn.rooms);
  assert_int_equal(f->nrooms, 1);
  /* and everything still works afterwards */
  assert_int_equal(fo__room_join(&f->conn, "b", 1), 0);
  assert_int_equal(f->nrooms, 2);
  fo__rooms_leave_all(&f->conn);
  assert_null(f->conn.rooms);
  assert_int_equal(f->nrooms, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(rooms_join_oom_room_alloc, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_join_oom_map_put, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_join_oom_members, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_join_oom_keeps_other_rooms, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

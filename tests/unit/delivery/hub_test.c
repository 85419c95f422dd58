/* delivery/hub.c: users -> connections, rooms -> members, permissions, and
 * the upward events (last connection of a user, first/last member of a
 * room). The server is a zeroed fo_server_t with what the hub reads; the
 * connections are never opened (no socket is touched). */
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

#define NCONN 4

typedef struct {
  fo_server_t srv;
  fo_dcfg_t cfg;
  int64_t nusers, nrooms;
  uint64_t copies; /* srv.m.room_copies */
  int frames;      /* member_frame events */
  int64_t last_offset;
  fo_conn_t conn[NCONN];
  int gone; /* user_gone events */
  char gone_name[32];
  int subs, unsubs; /* room_sub events */
  char last_room[32];
} fixture_t;

static fixture_t *g_f;

static void on_user_gone(fo_server_t *srv, fo_user_t *user) {
  (void)srv;
  size_t len;
  const char *name = fo__user_name(user, &len);
  g_f->gone++;
  snprintf(g_f->gone_name, sizeof(g_f->gone_name), "%.*s", (int)len, name);
}

static void on_room_sub(fo_server_t *srv, const char *room, size_t len, bool on) {
  (void)srv;
  if (on)
    g_f->subs++;
  else
    g_f->unsubs++;
  snprintf(g_f->last_room, sizeof(g_f->last_room), "%.*s", (int)len, room);
}

static int on_member_frame(fo_conn_t *conn, const char *room, size_t len, int64_t offset,
                           fo_buf_t *frame) {
  (void)conn;
  (void)room;
  (void)len;
  (void)frame;
  g_f->frames++;
  g_f->last_offset = offset;
  return 0;
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->cfg.max_rooms_per_conn = 3;
  f->cfg.room_mode = "redis";
  f->cfg.room_mode_id = FO_ROOM_MODE_REDIS;
  f->srv.cfg = &f->cfg;
  f->srv.m.users = &f->nusers;
  f->srv.m.rooms = &f->nrooms;
  f->srv.m.room_copies = &f->copies;
  f->srv.hub_ev.user_gone = on_user_gone;
  f->srv.hub_ev.room_sub = on_room_sub;
  for (int i = 0; i < NCONN; i++)
    f->conn[i].srv = &f->srv;
  g_f = f;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  for (int i = 0; i < NCONN; i++) {
    fo__rooms_leave_all(&f->conn[i]);
    fo__perm_release(&f->conn[i]);
    fo__registry_remove(&f->conn[i]);
  }
  fo__registry_free(&f->srv);
  fo__rooms_free(&f->srv);
  free(f);
  return 0;
}

static int count_conns(fo_user_t *u) {
  int n = 0;
  for (fo_conn_t *c = fo__user_conns(u); c != NULL; c = c->user_next)
    n++;
  return n;
}

static void users(void **state) {
  fixture_t *f = *state;
  assert_null(fo__registry_user(&f->srv, "ann", 3));
  assert_int_equal(fo__registry_add(&f->conn[0], "ann", 3), 0);
  assert_int_equal(fo__registry_add(&f->conn[1], "ann", 3), 0);
  assert_int_equal(fo__registry_add(&f->conn[2], "bob", 3), 0);
  assert_int_equal(f->nusers, 2);
  fo_user_t *ann = fo__registry_user(&f->srv, "ann", 3);
  assert_non_null(ann);
  assert_ptr_equal(f->conn[0].user, ann);
  assert_ptr_equal(f->conn[1].user, ann); /* interned: one struct per name */
  assert_int_equal(ann->nconns, 2);
  assert_int_equal(count_conns(ann), 2);
  size_t len;
  assert_memory_equal(fo__user_name(ann, &len), "ann", 3);
  assert_int_equal(len, 3);
  assert_null(fo__registry_user(&f->srv, "an", 2));
  assert_null(fo__user_conns(NULL));

  fo__registry_remove(&f->conn[0]);
  assert_null(f->conn[0].user);
  assert_int_equal(f->gone, 0); /* ann still has one */
  assert_int_equal(count_conns(ann), 1);
  assert_ptr_equal(fo__user_conns(ann), &f->conn[1]);
  fo__registry_remove(&f->conn[1]);
  assert_int_equal(f->gone, 1);
  assert_string_equal(f->gone_name, "ann");
  assert_null(fo__registry_user(&f->srv, "ann", 3));
  assert_int_equal(f->nusers, 1);
  fo__registry_remove(&f->conn[1]); /* not registered: nothing happens */
  assert_int_equal(f->gone, 1);
}

static void each_user(fo_user_t *user, void *ud) {
  (void)user;
  (*(int *)ud)++;
}

static void users_walked_in_chunks(void **state) {
  fixture_t *f = *state;
  const char *names[NCONN] = {"a", "b", "c", "d"};
  for (int i = 0; i < NCONN; i++)
    assert_int_equal(fo__registry_add(&f->conn[i], names[i], 1), 0);
  int seen = 0, rounds = 0;
  uint32_t cur = 0;
  do {
    cur = fo__registry_each_user(&f->srv, cur, 1, each_user, &seen);
    rounds++;
  } while (cur != 0 && rounds < 100);
  assert_int_equal(seen, NCONN);
}

static void set_perm(fo_conn_t *conn, const char *json) {
  json_t *j = json ? json_loads(json, 0, NULL) : NULL;
  assert_int_equal(fo__perm_set(conn, j), 0);
  json_decref(j);
}

static void permissions(void **state) {
  fixture_t *f = *state;
  set_perm(&f->conn[0], "[\"lobby\", \"news.*\"]");
  set_perm(&f->conn[1], "[\"lobby\", \"news.*\"]");
  assert_ptr_equal(f->conn[0].perm, f->conn[1].perm); /* interned */
  const fo_perm_t *p = f->conn[0].perm;
  assert_true(fo__perm_allows(p, "lobby", 5));
  assert_false(fo__perm_allows(p, "lobb", 4));
  assert_false(fo__perm_allows(p, "lobby2", 6));
  assert_true(fo__perm_allows(p, "news.", 5));
  assert_true(fo__perm_allows(p, "news.sport", 10));
  assert_false(fo__perm_allows(p, "news", 4));
  assert_false(fo__perm_allows(NULL, "lobby", 5));
  set_perm(&f->conn[2], "[\"*\"]");
  assert_true(fo__perm_allows(f->conn[2].perm, "anything", 8));
  set_perm(&f->conn[3], NULL);
  assert_null(f->conn[3].perm);
  set_perm(&f->conn[3], "[]");
  assert_null(f->conn[3].perm);
  fo__perm_release(&f->conn[0]);
  assert_null(f->conn[0].perm);
  assert_true(fo__perm_allows(f->conn[1].perm, "lobby", 5)); /* still held by conn 1 */
}

static void rooms(void **state) {
  fixture_t *f = *state;
  set_perm(&f->conn[0], "[\"r.*\"]");
  set_perm(&f->conn[1], "[\"r.*\"]");
  assert_int_equal(fo__room_join(&f->conn[0], "x", 1), -EPERM);
  assert_null(f->conn[0].rooms);
  assert_int_equal(fo__room_join(&f->conn[0], "r.1", 3), 0);
  assert_int_equal(f->subs, 1); /* first local member */
  assert_string_equal(f->last_room, "r.1");
  assert_int_equal(fo__room_join(&f->conn[0], "r.1", 3), 0); /* already in it */
  assert_int_equal(fo__room_join(&f->conn[1], "r.1", 3), 0);
  assert_int_equal(f->subs, 1);
  assert_int_equal(f->nrooms, 1);
  assert_int_equal(fo__room_join(&f->conn[0], "r.2", 3), 0);
  assert_int_equal(fo__room_join(&f->conn[0], "r.3", 3), 0);
  assert_int_equal(fo__room_join(&f->conn[0], "r.4", 3), -E2BIG); /* 3 per connection */
  assert_int_equal(f->nrooms, 3);
  assert_int_equal(f->subs, 3);

  assert_int_equal(fo__room_leave(&f->conn[0], "r.1", 3), 0);
  assert_int_equal(f->unsubs, 0); /* conn 1 is still in r.1 */
  assert_int_equal(fo__room_leave(&f->conn[0], "nope", 4), 0);
  assert_int_equal(fo__room_leave(&f->conn[1], "r.1", 3), 0);
  assert_int_equal(f->unsubs, 1); /* last local member */
  assert_string_equal(f->last_room, "r.1");
  assert_null(f->conn[1].rooms);
  fo__rooms_leave_all(&f->conn[0]);
  assert_null(f->conn[0].rooms);
  assert_int_equal(f->unsubs, 3);
  assert_int_equal(f->nrooms, 0);
  /* no member: a broadcast reaches nobody */
  assert_int_equal(fo__room_broadcast(&f->srv, "r.2", 3, -1, NULL, false), 0);
}

/* Many members, removed in an order that makes the swap-remove move the
 * last member into a middle slot: the moved member's index must follow. */
static void rooms_swap_remove(void **state) {
  fixture_t *f = *state;
  for (int i = 0; i < NCONN; i++) {
    set_perm(&f->conn[i], "[\"*\"]");
    assert_int_equal(fo__room_join(&f->conn[i], "big", 3), 0);
    assert_int_equal(fo__room_join(&f->conn[i], "small", 5), 0);
  }
  assert_int_equal(fo__room_leave(&f->conn[1], "big", 3), 0); /* conn 3 moves to slot 1 */
  assert_int_equal(fo__room_leave(&f->conn[3], "big", 3), 0); /* found at its new slot */
  assert_int_equal(fo__room_leave(&f->conn[0], "big", 3), 0);
  assert_int_equal(f->unsubs, 0);
  assert_int_equal(fo__room_leave(&f->conn[2], "big", 3), 0);
  assert_int_equal(f->unsubs, 1);
  assert_int_equal(f->nrooms, 1); /* "small" */
}

/* A room's member array grows by half (4, 6, 9, 13, ...) and each
 * connection's room list from one entry: 100 members joining two rooms,
 * then leaving in an order that moves members around, keep every index
 * right (ASan checks the arrays' bounds). */
static void rooms_grow(void **state) {
  fixture_t *f = *state;
  enum { N = 100 };
  fo_conn_t *c = calloc(N, sizeof(*c));
  assert_non_null(c);
  for (int i = 0; i < N; i++) {
    c[i].srv = &f->srv;
    set_perm(&c[i], "[\"*\"]");
    assert_int_equal(fo__room_join(&c[i], "big", 3), 0);
    assert_int_equal(c[i].rooms != NULL, 1);
    assert_int_equal(fo__room_join(&c[i], i % 2 ? "odd" : "even", i % 2 ? 3 : 4), 0);
  }
  assert_int_equal(f->subs, 3);
  for (int i = 0; i < N; i += 3)
    assert_int_equal(fo__room_leave(&c[i], "big", 3), 0);
  for (int i = N - 1; i >= 0; i--) {
    fo__rooms_leave_all(&c[i]);
    assert_null(c[i].rooms);
    fo__perm_release(&c[i]);
  }
  assert_int_equal(f->unsubs, 3);
  assert_int_equal(f->nrooms, 0);
  free(c);
}

/* Room mode redis: after a rebalance the room partition's new owner
 * publishes again what the old one had; a `once` broadcast at or before
 * the room's last offset is a copy. Records on no stream (-1) and the
 * Kafka path (once = false) always go; a new epoch forgets the offsets. */
static void room_copies_dropped(void **state) {
  fixture_t *f = *state;
  static struct fo_cstreams *dummy; /* member_frame is called for conns with stream state */
  f->conn[0].cs = (struct fo_cstreams *)&dummy;
  f->srv.hub_ev.member_frame = on_member_frame;
  set_perm(&f->conn[0], "[\"*\"]");
  assert_int_equal(fo__room_join(&f->conn[0], "r", 1), 0);
  for (int64_t o = 5; o <= 8; o++)
    assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, o, NULL, true), 1);
  assert_int_equal(f->frames, 4);
  /* the new owner starts again at 6 */
  for (int64_t o = 6; o <= 8; o++)
    assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, o, NULL, true), 0);
  assert_int_equal(f->copies, 3);
  assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, 9, NULL, true), 1);
  assert_int_equal(f->last_offset, 9);
  assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, -1, NULL, true), 1); /* on no stream */
  assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, 3, NULL, false), 1); /* Kafka path */
  assert_int_equal(f->frames, 7);
  fo__rooms_forget_offsets(&f->srv);
  assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, 0, NULL, true), 1);
  assert_int_equal(f->copies, 3);
  /* a room created again (last member gone) starts with no offset */
  assert_int_equal(fo__room_leave(&f->conn[0], "r", 1), 0);
  assert_int_equal(fo__room_join(&f->conn[0], "r", 1), 0);
  assert_int_equal(fo__room_broadcast(&f->srv, "r", 1, 0, NULL, true), 1);
  f->conn[0].cs = NULL;
}

/* Room mode kafka: no subscriptions are asked for (server.c wires none). */
static void rooms_without_events(void **state) {
  fixture_t *f = *state;
  f->srv.hub_ev.room_sub = NULL;
  set_perm(&f->conn[0], "[\"*\"]");
  assert_int_equal(fo__room_join(&f->conn[0], "k", 1), 0);
  fo__rooms_leave_all(&f->conn[0]);
  assert_int_equal(f->subs + f->unsubs, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(users, setup, teardown),
      cmocka_unit_test_setup_teardown(users_walked_in_chunks, setup, teardown),
      cmocka_unit_test_setup_teardown(permissions, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_swap_remove, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_grow, setup, teardown),
      cmocka_unit_test_setup_teardown(rooms_without_events, setup, teardown),
      cmocka_unit_test_setup_teardown(room_copies_dropped, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

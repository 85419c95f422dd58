#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "rkeys.h"

static void rkeys_follow_the_contract(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_rkey_connections(&sb, "", "alice", 5);
  assert_string_equal(fo_sb_cstr(&sb), "ws:connections:alice");
  fo_sb_reset(&sb);
  fo_rkey_server_channel(&sb, "", "d1");
  assert_string_equal(fo_sb_cstr(&sb), "ws:server:d1");
  fo_sb_reset(&sb);
  fo_rkey_alive(&sb, "prod:", "d1");
  assert_string_equal(fo_sb_cstr(&sb), "prod:ws:alive:d1");
  fo_sb_reset(&sb);
  fo_rkey_room_channel(&sb, "x:", "lobby", 5);
  assert_string_equal(fo_sb_cstr(&sb), "x:ws:room:lobby");
  fo_sb_free(&sb);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(rkeys_follow_the_contract)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}

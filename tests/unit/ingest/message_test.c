/* ingest/message.c: one validation rule for the HTTP API and the intake,
 * and the envelope built from a valid message. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "message.h"

/* The reason for `json` checked as `want` (NULL when valid). */
static const char *reason(const char *json, int want) {
  json_error_t jerr;
  json_t *obj = json_loads(json, JSON_DECODE_ANY, &jerr);
  assert_non_null(obj);
  fo_msg_t msg;
  const char *why = fo__msg_check(obj, want, &msg);
  json_decref(obj);
  return why;
}

static void message_reasons(void **state) {
  (void)state;
  static const struct {
    const char *json;
    int want;
    const char *why;
  } cases[] = {
      {"[1]", 0, "message must be a JSON object"},
      {"{\"data\":1}", 0, "missing user or room"},
      {"{\"data\":1}", FO_ENV_SEND, "missing user"},
      {"{\"data\":1}", FO_ENV_BROADCAST, "missing room"},
      {"{\"user\":\"a\",\"room\":\"b\",\"data\":1}", 0, "give either user or room, not both"},
      {"{\"user\":5,\"room\":\"b\",\"data\":1}", 0, "give either user or room, not both"},
      {"{\"user\":5,\"data\":1}", 0, "user must be a string"},
      {"{\"user\":null,\"data\":1}", FO_ENV_SEND, "user must be a string"},
      {"{\"room\":[],\"data\":1}", FO_ENV_BROADCAST, "room must be a string"},
      {"{\"room\":1,\"data\":1}", 0, "room must be a string"},
      {"{\"user\":\"\",\"data\":1}", FO_ENV_SEND, "invalid user"},
      {"{\"user\":\"a\\u0001b\",\"data\":1}", 0, "invalid user"},
      {"{\"room\":\"a\\u007fb\",\"data\":1}", 0, "invalid room"},
      {"{\"user\":\"u\"}", FO_ENV_SEND, "missing data"},
      {"{\"room\":\"r\"}", 0, "missing data"},
      /* a single send ignores a "room" member */
      {"{\"user\":\"u\",\"room\":\"r\",\"data\":null}", FO_ENV_SEND, NULL},
      {"{\"room\":\"r\",\"data\":{\"x\":[1,2]}}", 0, NULL},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const char *why = reason(cases[i].json, cases[i].want);
    if (cases[i].why == NULL)
      assert_null(why);
    else
      assert_string_equal(why != NULL ? why : "(valid)", cases[i].why);
  }
}

static void message_target_limits(void **state) {
  (void)state;
  char name[FO_ENV_MAX_TARGET + 1];
  memset(name, 'x', sizeof(name));
  assert_null(fo__msg_target_invalid(name, FO_ENV_MAX_TARGET));
  assert_string_equal(fo__msg_target_invalid(name, FO_ENV_MAX_TARGET + 1), "longer than 256 bytes");
  assert_string_equal(fo__msg_target_invalid("", 0), "must not be empty");
  assert_string_equal(fo__msg_target_invalid("\xff", 1), "not valid UTF-8");
  assert_string_equal(fo__msg_target_invalid("a\nb", 3), "contains control characters");
  assert_null(fo__msg_target_invalid("caf\xc3\xa9 +1", 8));
}

static void message_builds_envelope(void **state) {
  (void)state;
  json_error_t jerr;
  json_t *obj = json_loads("{\"room\":\"lobby\",\"data\":{\"b\":[1, 2],\"a\":\"x\"}}", 0, &jerr);
  assert_non_null(obj);
  fo_msg_t msg;
  assert_null(fo__msg_check(obj, 0, &msg));
  assert_int_equal(msg.kind, FO_ENV_BROADCAST);
  fo_id_gen_t gen;
  memset(&gen, 0, sizeof(gen));
  fo_sb_t out;
  fo_sb_init(&out);
  uint8_t id[FO_ID_LEN];
  assert_int_equal(fo__msg_envelope(&gen, &msg, &out, id), 0);
  fo_env_t env;
  char err[128];
  assert_int_equal(fo_env_decode((const uint8_t *)out.data, out.len, &env, err, sizeof(err)), 0);
  assert_int_equal(env.kind, FO_ENV_BROADCAST);
  assert_int_equal(env.target_len, 5);
  assert_memory_equal(env.target, "lobby", 5);
  assert_memory_equal(env.id, id, FO_ID_LEN);
  const char want[] = "{\"b\":[1,2],\"a\":\"x\"}";
  assert_int_equal(env.payload_len, sizeof(want) - 1);
  assert_memory_equal(env.payload, want, sizeof(want) - 1);
  assert_int_equal(env.content_type_len, 16);
  assert_memory_equal(env.content_type, "application/json", 16);
  fo_sb_free(&out);
  json_decref(obj);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(message_reasons),
      cmocka_unit_test(message_target_limits),
      cmocka_unit_test(message_builds_envelope),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

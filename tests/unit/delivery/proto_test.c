/* delivery/proto.c: every client-visible text, the client messages parsed
 * (bad input included), the server-to-server payload; and frame.c's frames. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "frame.h"
#include "json_check.h"
#include "proto.h"
#include "ws.h"

static fo_env_t env_of(const char *target, const char *payload, size_t plen, const char *ct) {
  fo_env_t e;
  memset(&e, 0, sizeof(e));
  for (int i = 0; i < FO_ID_LEN; i++)
    e.id[i] = (uint8_t)(0x10 + i);
  e.kind = FO_ENV_SEND;
  e.target = target;
  e.target_len = strlen(target);
  e.payload = (const uint8_t *)payload;
  e.payload_len = plen;
  e.content_type = ct;
  e.content_type_len = strlen(ct);
  return e;
}

static void assert_sb(fo_sb_t *sb, const char *want) {
  assert_false(sb->oom);
  assert_int_equal(sb->len, strlen(want));
  assert_memory_equal(sb->data, want, sb->len);
}

static void message_frames(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_env_t e = env_of("alice", "{\"a\":1}", 7, "application/json; charset=utf-8");
  fo_pos_t pu = {'u', 0x1f3a9c2e, 3, 42, 0x18c2f3a4b5e};
  assert_int_equal(fo_proto_message(&sb, &e, &pu), 0);
  assert_sb(&sb, "{\"type\":\"message\",\"id\":\"10111213-1415-1617-1819-1a1b1c1d1e1f\","
                 "\"user\":\"alice\",\"pos\":\"u.1f3a9c2e.3.42.18c2f3a4b5e\",\"data\":{\"a\":1}}");
  /* JSON content type but not JSON: a string */
  e = env_of("lob\"by", "{nope", 5, "application/json");
  fo_pos_t pr = {'r', 0, 0, 7, 0};
  assert_int_equal(fo_proto_message(&sb, &e, &pr), 0);
  assert_sb(&sb, "{\"type\":\"message\",\"id\":\"10111213-1415-1617-1819-1a1b1c1d1e1f\","
                 "\"room\":\"lob\\\"by\",\"pos\":\"r.00000000.0.7.0\",\"data\":\"{nope\"}");
  /* not UTF-8: base64 */
  e = env_of("bob", "\xff\xfe", 2, "application/octet-stream");
  fo_pos_t pb = {'u', 0xabcdef01, 1, 2, 5};
  assert_int_equal(fo_proto_message(&sb, &e, &pb), 0);
  assert_sb(
      &sb,
      "{\"type\":\"message\",\"id\":\"10111213-1415-1617-1819-1a1b1c1d1e1f\","
      "\"user\":\"bob\",\"pos\":\"u.abcdef01.1.2.5\",\"data\":\"//4=\",\"encoding\":\"base64\"}");
  fo_sb_free(&sb);
}

static void replies(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_proto_joined(&sb, "a\"b", 3, "r.1.2.3.4", -1), 0);
  assert_sb(&sb, "{\"type\":\"joined\",\"room\":\"a\\\"b\",\"pos\":\"r.1.2.3.4\"}");
  assert_int_equal(fo_proto_joined(&sb, "x", 1, "p", 1), 0);
  assert_sb(&sb, "{\"type\":\"joined\",\"room\":\"x\",\"pos\":\"p\",\"recovered\":true}");
  assert_int_equal(fo_proto_welcome(&sb, "u.1.2.3.4", 0, 0), 0);
  assert_sb(&sb, "{\"type\":\"welcome\",\"pos\":\"u.1.2.3.4\",\"recovered\":false}");
  assert_int_equal(fo_proto_welcome(&sb, "u.1.2.3.4", -1, 0), 0);
  assert_sb(&sb, "{\"type\":\"welcome\",\"pos\":\"u.1.2.3.4\"}");
  assert_int_equal(fo_proto_welcome(&sb, "p", 1, 30000), 0);
  assert_sb(&sb, "{\"type\":\"welcome\",\"pos\":\"p\",\"recovered\":true,\"ping_ms\":30000}");
  assert_int_equal(fo_proto_room_reply(&sb, 0, "x", 1), 0);
  assert_sb(&sb, "{\"type\":\"left\",\"room\":\"x\"}");
  assert_int_equal(fo_proto_error(&sb, "forbidden", "not \"allowed\""), 0);
  assert_sb(&sb, "{\"type\":\"error\",\"code\":\"forbidden\",\"message\":\"not \\\"allowed\\\"\"}");
  assert_int_equal(FO_PROTO_PONG_LEN, strlen("{\"type\":\"pong\"}"));
  fo_sb_free(&sb);
}

/* The welcome's heartbeat members: only for heartbeat=1 connections. */
static void welcome_heartbeat(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_sb_puts(&sb, "{\"type\":\"welcome\"");
  assert_int_equal(fo_proto_welcome_heartbeat(&sb, 0, 30000), 0);
  fo_sb_putc(&sb, '}');
  assert_memory_equal(sb.data, "{\"type\":\"welcome\"}", sb.len);
  fo_sb_reset(&sb);
  fo_sb_puts(&sb, "{\"type\":\"welcome\"");
  assert_int_equal(fo_proto_welcome_heartbeat(&sb, 1, 30000), 0);
  fo_sb_putc(&sb, '}');
  assert_int_equal(sb.len, strlen("{\"type\":\"welcome\",\"ping_ms\":30000}"));
  assert_memory_equal(sb.data, "{\"type\":\"welcome\",\"ping_ms\":30000}", sb.len);
  assert_int_equal(FO_PROTO_APP_PING_LEN, strlen("{\"type\":\"ping\"}"));
  fo_sb_free(&sb);
}

static fo_proto_kind_t parse(const char *s, fo_proto_msg_t *m) {
  return fo_proto_parse((const uint8_t *)s, strlen(s), m);
}

static void client_messages(void **state) {
  (void)state;
  fo_proto_msg_t m;
  assert_int_equal(parse("{\"type\":\"ping\"}", &m), FO_PROTO_PING);
  /* the answer to our app-level ping (heartbeat=1) */
  assert_int_equal(parse("{\"type\":\"pong\"}", &m), FO_PROTO_CLIENT_PONG);
  assert_int_equal(parse("{\"type\":\"pong\",\"extra\":[1]}", &m), FO_PROTO_CLIENT_PONG);
  assert_int_equal(parse("{\"type\":\"join\",\"room\":\"news\"}", &m), FO_PROTO_JOIN);
  assert_int_equal(m.room_len, 4);
  assert_string_equal(m.room, "news");
  assert_int_equal(parse("{\"room\":\"a\\u00e9b\",\"type\":\"leave\"}", &m), FO_PROTO_LEAVE);
  assert_int_equal(m.room_len, 4);
  assert_memory_equal(m.room,
                      "a\xc3\xa9"
                      "b",
                      4);
  /* a NUL inside a string is refused by the parser (no JSON_ALLOW_NUL) */
  assert_int_equal(parse("{\"type\":\"join\",\"room\":\"a\\u0000b\"}", &m), FO_PROTO_BAD);
  char big[400];
  memset(big, 'r', sizeof(big));
  snprintf(big, sizeof(big), "{\"type\":\"join\",\"room\":\"%0256d\"}", 0);
  assert_int_equal(parse(big, &m), FO_PROTO_JOIN);
  assert_int_equal(m.room_len, 256);
  snprintf(big, sizeof(big), "{\"type\":\"join\",\"room\":\"%0257d\"}", 0);
  assert_int_equal(parse(big, &m), FO_PROTO_BAD);
  assert_string_equal(m.err_code, "bad_request");
  static const char *const bads[] = {
      "",
      "null",
      "[1]",
      "{\"type\":1}",
      "{\"type\":\"jump\"}",
      "{\"type\":\"join\"}",
      "{\"type\":\"join\",\"room\":\"\"}",
      "{\"type\":\"leave\",\"room\":5}",
      "{\"type\":\"ping\"",
      "\xff\xfe",
  };
  for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
    assert_int_equal(parse(bads[i], &m), FO_PROTO_BAD);
    assert_string_equal(m.err_code, "bad_request");
    assert_non_null(m.err_msg);
  }
  assert_string_equal((parse("{\"type\":\"x\"}", &m), m.err_msg), "unknown message type");
}

static void pubsub_payload(void **state) {
  (void)state;
  uint32_t off = 0;
  fo_buf_t *b = fo_proto_pub_user("alice", 5, 42, "{\"x\":1}", 7, &off);
  assert_non_null(b);
  assert_int_equal(off, 6);
  assert_int_equal(b->len, 18);
  assert_memory_equal(b->data, "@42:5:alice{\"x\":1}", 18);
  const char *u, *j;
  size_t ul, jl;
  int64_t o = 0;
  assert_int_equal(fo_proto_pub_parse((const char *)b->data, b->len, &o, &u, &ul, &j, &jl), 0);
  assert_int_equal(o, 42);
  assert_int_equal(ul, 5);
  assert_memory_equal(u, "alice", 5);
  assert_int_equal(jl, 7);
  assert_memory_equal(j, "{\"x\":1}", 7);
  fo_buf_unref(b);
  /* The version before sent no offset: still parsed, offset unknown. */
  assert_int_equal(fo_proto_pub_parse("5:alice{}", 9, &o, &u, &ul, &j, &jl), 0);
  assert_int_equal(o, -1);
  static const char *const bads[] = {
      "",         ":",           "5:ali",        "5:alice", "0:{}", "x:a{}", "1234567:a{}",
      "5alice{}", "@:5:alice{}", "@x:5:alice{}", "@1",      "@12:"};
  for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++)
    assert_int_equal(fo_proto_pub_parse(bads[i], strlen(bads[i]), &o, &u, &ul, &j, &jl), -EPROTO);
  assert_int_equal(fo_proto_pub_room_parse("@7:{}", 5, &o, &j, &jl), 0);
  assert_int_equal(o, 7);
  assert_int_equal(jl, 2);
  assert_int_equal(fo_proto_pub_room_parse("{}", 2, &o, &j, &jl), 0);
  assert_int_equal(o, -1);
  assert_int_equal(fo_proto_pub_room_parse("@7:", 3, &o, &j, &jl), -EPROTO);
}

/* jansson's verdict, the reference fo_proto_json_valid must agree with. */
static int jansson_valid(const void *p, size_t n) {
  json_t *j = json_loadb((const char *)p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  json_decref(j);
  return j != NULL;
}

/* One text: the checker's sure answers and the whole judgement agree with
 * jansson; returns the checker's answer. */
static fo_json_check_t agree(const void *p, size_t n) {
  fo_json_check_t v = fo_json_check(p, n);
  int want = jansson_valid(p, n);
  if (v != FO_JSON_UNSURE && (v == FO_JSON_VALID) != want)
    fail_msg("checker says %d, jansson %d: \"%.*s\"", v, want, (int)n, (const char *)p);
  assert_int_equal(fo_proto_json_valid(p, n), want);
  return v;
}

static void json_check_agrees_with_jansson(void **state) {
  (void)state;
  static const char *const valid[] = {"{}",
                                      "[]",
                                      " {\"a\":1} ",
                                      "\"s\"",
                                      "0",
                                      "-0",
                                      "1.5",
                                      "-12.25",
                                      "true",
                                      "false",
                                      "null",
                                      "{\"a\":[1,{\"b\":null}],\"c\":\"\\u00e9\\n\\\"\"}",
                                      "\"\\ud83d\\ude00\"",
                                      "\"\xc3\xa9\"",
                                      "\"\\u0000\"",
                                      "[\"\xf0\x9f\x98\x80\", \"\x7f\"]",
                                      "{\"a\":1,\"a\":2}",
                                      "\t\r\n[ ]\n",
                                      "9223372036854775",
                                      "\"\\/\\b\\f\\r\\t\"",
                                      "[[[[[]]]]]"};
  static const char *const invalid[] = {"",
                                        " ",
                                        "{",
                                        "}",
                                        "[1,]",
                                        "{\"a\":1,}",
                                        "{\"a\"}",
                                        "{a:1}",
                                        "01",
                                        "-",
                                        "1.",
                                        ".5",
                                        "+1",
                                        "1e",
                                        "tru",
                                        "truex",
                                        "nul",
                                        "\"abc",
                                        "\"\\x\"",
                                        "\"\\u12\"",
                                        "\"\\udc00\"",
                                        "\"\\ud800\"",
                                        "\"\\ud800\\u0041\"",
                                        "\"\xc0\xaf\"",
                                        "\"\xed\xa0\x80\"",
                                        "\"\xf4\x90\x80\x80\"",
                                        "\"\x01\"",
                                        "\"\xe2\x82\"",
                                        "[1 2]",
                                        "{} {}",
                                        "1 1",
                                        "[1}",
                                        "{\"a\":1]",
                                        "\xef\xbb\xbf{}",
                                        "NaN"};
  static const char *const unsure[] = {"1e5", "12345678901234567890", "-99999999999999999999",
                                       "1.5E-3", "{\"a\\u0000\":1}"};
  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
    assert_int_equal(agree(valid[i], strlen(valid[i])), FO_JSON_VALID);
  assert_int_equal(agree("\"a\\u0000b\"", 10), FO_JSON_VALID);
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
    assert_int_equal(agree(invalid[i], strlen(invalid[i])), FO_JSON_INVALID);
  assert_int_equal(agree("[\"a\0\"]", 6), FO_JSON_INVALID); /* a raw NUL */
  /* jansson loses a NUL after a number or a literal; the checker does not */
  assert_int_equal(fo_json_check("1\0", 2), FO_JSON_INVALID);
  assert_false(fo_proto_json_valid("1\0", 2));
  assert_false(fo_proto_json_valid("[true\0]", 7));
  for (size_t i = 0; i < sizeof(unsure) / sizeof(unsure[0]); i++)
    assert_int_equal(agree(unsure[i], strlen(unsure[i])), FO_JSON_UNSURE);
  /* Deeper than the checker follows: jansson decides (it refuses past 2048). */
  char deep[6000];
  for (int d = FO_JSON_CHECK_DEPTH - 1; d <= 2100; d += 1850 - FO_JSON_CHECK_DEPTH) {
    memset(deep, '[', (size_t)d);
    memset(deep + d, ']', (size_t)d);
    agree(deep, 2 * (size_t)d);
  }

  /* Mutations of a text with every kind of token: each byte replaced, cut
   * and doubled in turn, with bytes that matter to the grammar. */
  static const char seed[] = "{\"k\":[1,-2.5,\"x\\u00e9\\ud83d\\ude00\xc3\xa9\",true,false,null,"
                             "{\"n\":{}},[]],\"e\":0.25}";
  static const char subst[] = "{}[]\",:\\-+.0123eEtfnu \t\x01\x7f\x80\xc3\xed\xff";
  size_t n = sizeof(seed) - 1;
  char buf[sizeof(seed) * 2];
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < sizeof(subst) - 1; k++) {
      memcpy(buf, seed, n);
      buf[i] = subst[k];
      agree(buf, n);
    }
    agree(seed, i);           /* cut */
    memcpy(buf, seed, i + 1); /* one byte doubled */
    memcpy(buf + i + 1, seed + i, n - i);
    agree(buf, n + 1);
    memcpy(buf, seed, i); /* one byte dropped */
    memcpy(buf + i, seed + i + 1, n - i - 1);
    agree(buf, n - 1);
  }
}

static void frames(void **state) {
  (void)state;
  static const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70000};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    size_t n = sizes[i];
    uint8_t *p = malloc(n + 1);
    memset(p, 'x', n + 1);
    fo_buf_t *b = fo_frame_new(FO_WS_OP_TEXT, p, n);
    assert_non_null(b);
    size_t hl = n < 126 ? 2 : n <= 0xffff ? 4 : 10;
    assert_int_equal(b->len, hl + n);
    assert_int_equal(b->data[0], 0x81);
    assert_int_equal(b->data[1] & 0x80, 0); /* unmasked */
    if (hl == 2)
      assert_int_equal(b->data[1], n);
    else if (hl == 4)
      assert_int_equal((b->data[2] << 8) | b->data[3], n);
    else
      assert_int_equal(b->data[1], 127);
    assert_memory_equal(b->data + hl, p, n);
    fo_buf_unref(b);
    free(p);
  }
  fo_buf_t *ping = fo_frame_new(FO_WS_OP_PING, NULL, 0);
  assert_int_equal(ping->len, 2);
  assert_memory_equal(ping->data, "\x89\x00", 2);
  fo_buf_unref(ping);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(message_frames),
      cmocka_unit_test(replies),
      cmocka_unit_test(client_messages),
      cmocka_unit_test(pubsub_payload),
      cmocka_unit_test(frames),
      cmocka_unit_test(welcome_heartbeat),
      cmocka_unit_test(json_check_agrees_with_jansson),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

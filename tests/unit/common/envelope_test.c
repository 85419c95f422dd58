#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

static const char *const ID_TEXT = "0190b3a1-c2d3-7abc-8def-0123456789ab";

static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
  size_t n = 0;
  while (hex[0] != '\0' && hex[0] != '\t' && hex[0] != '\n' && hex[1] != '\0') {
    unsigned v;
    assert_int_equal(sscanf(hex, "%2x", &v), 1);
    assert_true(n < cap);
    out[n++] = (uint8_t)v;
    hex += 2;
  }
  return n;
}

/* Pulls "key": value out of the flat JSON object of the vectors file. */
static int json_field(const char *json, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\": ", key);
  const char *p = strstr(json, pat);
  if (p == NULL)
    return -1;
  p += strlen(pat);
  size_t n = 0;
  if (*p == '"') {
    for (p++; *p != '"' && n + 1 < cap; p++) {
      if (*p == '\\')
        p++;
      out[n++] = *p;
    }
  } else {
    while (*p != ',' && *p != '}' && n + 1 < cap)
      out[n++] = *p++;
  }
  out[n] = '\0';
  return 0;
}

static char *next_col(char **s) {
  char *col = *s;
  char *tab = strchr(col, '\t');
  if (tab != NULL) {
    *tab = '\0';
    *s = tab + 1;
  } else {
    col[strcspn(col, "\n")] = '\0';
    *s = col + strlen(col);
  }
  return col;
}

static void envelope_matches_schema_vectors(void **state) {
  (void)state;
  FILE *f = fopen(FO_SOURCE_DIR "/schemas/vectors/envelope.tsv", "r");
  assert_non_null(f);
  char line[4096];
  uint8_t bytes[2048];
  int valid = 0, invalid = 0;
  uint8_t want_id[FO_ID_LEN];
  assert_int_equal(fo_id_parse(ID_TEXT, strlen(ID_TEXT), want_id), 0);
  while (fgets(line, sizeof(line), f) != NULL) {
    if (line[0] == '#')
      continue;
    char *s = line;
    char *kind = next_col(&s);
    char *name = next_col(&s);
    char *hex = next_col(&s);
    size_t n = unhex(hex, bytes, sizeof(bytes));
    /* Decode from an exact-size heap copy so ASan catches any over-read. */
    uint8_t *exact = malloc(n ? n : 1);
    memcpy(exact, bytes, n);
    fo_env_t env;
    char err[256];
    int rc = fo_env_decode(exact, n, &env, err, sizeof(err));
    if (strcmp(kind, "valid") == 0) {
      char *fields = next_col(&s);
      char v[512];
      print_message("valid %s\n", name);
      assert_int_equal(rc, 0);
      assert_memory_equal(env.id, want_id, FO_ID_LEN);
      assert_int_equal(json_field(fields, "kind", v, sizeof(v)), 0);
      assert_string_equal(fo_env_kind_name(env.kind), v);
      assert_int_equal(json_field(fields, "target", v, sizeof(v)), 0);
      assert_int_equal(env.target_len, strlen(v));
      assert_memory_equal(env.target, v, env.target_len);
      if (json_field(fields, "payload", v, sizeof(v)) == 0) {
        assert_int_equal(env.payload_len, strlen(v));
        assert_memory_equal(env.payload, v, env.payload_len);
      } else {
        assert_int_equal(json_field(fields, "payload_hex", v, sizeof(v)), 0);
        uint8_t pb[256];
        size_t pn = unhex(v, pb, sizeof(pb));
        assert_int_equal(env.payload_len, pn);
        assert_memory_equal(env.payload, pb, pn);
      }
      assert_int_equal(json_field(fields, "ct", v, sizeof(v)), 0);
      assert_int_equal(env.content_type_len, strlen(v));
      assert_memory_equal(env.content_type, v, env.content_type_len);
      assert_int_equal(json_field(fields, "ts", v, sizeof(v)), 0);
      assert_int_equal(env.created_ms, strtoll(v, NULL, 10));
      /* The encoder must produce exactly the documented bytes, except for
       * vectors that exercise decoder-only leniency. */
      if (strcmp(name, "unknown-fields-skipped") != 0) {
        fo_sb_t out;
        fo_sb_init(&out);
        fo_env_t copy = env;
        if (strcmp(name, "no-content-type-defaults-to-json") == 0)
          copy.content_type = NULL, copy.content_type_len = 0;
        assert_int_equal(fo_env_encode(&copy, &out), 0);
        assert_int_equal(out.len, n);
        assert_memory_equal(out.data, bytes, n);
        fo_sb_free(&out);
      }
      valid++;
    } else {
      char *code = next_col(&s);
      char *sub = next_col(&s);
      print_message("invalid %s -> %d %s\n", name, rc, err);
      assert_int_equal(rc, strcmp(code, "ENOTSUP") == 0 ? -ENOTSUP : -EPROTO);
      assert_non_null(strstr(err, sub));
      invalid++;
    }
    free(exact);
  }
  fclose(f);
  assert_true(valid >= 5);
  assert_true(invalid >= 15);
}

static void envelope_roundtrip(void **state) {
  (void)state;
  fo_id_gen_t gen = {0};
  fo_env_t env = {0}, out;
  fo_id_next(&gen, 1700000000000ull, env.id);
  env.kind = FO_ENV_BROADCAST;
  env.target = "room-9";
  env.target_len = 6;
  env.payload = (const uint8_t *)"{\"x\":1}";
  env.payload_len = 7;
  env.content_type = "application/json";
  env.content_type_len = 16;
  env.created_ms = 1700000000123;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_env_encode(&env, &sb), 0);
  char err[128];
  assert_int_equal(fo_env_decode((uint8_t *)sb.data, sb.len, &out, err, sizeof(err)), 0);
  assert_int_equal(out.version, FO_ENV_VERSION);
  assert_memory_equal(out.id, env.id, FO_ID_LEN);
  assert_int_equal(out.kind, FO_ENV_BROADCAST);
  assert_int_equal(out.target_len, 6);
  assert_memory_equal(out.target, "room-9", 6);
  assert_int_equal(out.payload_len, 7);
  assert_int_equal(out.created_ms, 1700000000123);
  /* Every strict prefix is refused with a clear error, never a crash. */
  for (size_t cut = 0; cut < sb.len; cut++) {
    uint8_t *p = malloc(cut ? cut : 1);
    memcpy(p, sb.data, cut);
    assert_int_equal(fo_env_decode(p, cut, &out, err, sizeof(err)), -EPROTO);
    assert_true(err[0] != '\0');
    free(p);
  }
  fo_sb_free(&sb);
}

static void envelope_encode_rejects_bad_input(void **state) {
  (void)state;
  fo_env_t env = {0};
  fo_sb_t sb;
  fo_sb_init(&sb);
  env.kind = FO_ENV_SEND;
  assert_int_equal(fo_env_encode(&env, &sb), -EINVAL); /* no target */
  char big[FO_ENV_MAX_TARGET + 1];
  memset(big, 'u', sizeof(big));
  env.target = big;
  env.target_len = sizeof(big);
  assert_int_equal(fo_env_encode(&env, &sb), -EINVAL);
  env.target_len = 1;
  env.kind = (fo_env_kind_t)7;
  assert_int_equal(fo_env_encode(&env, &sb), -EINVAL);
  fo_sb_free(&sb);
}

static void envelope_survives_random_mutations(void **state) {
  (void)state;
  fo_env_t env = {0}, out;
  env.kind = FO_ENV_SEND;
  env.target = "alice";
  env.target_len = 5;
  env.payload = (const uint8_t *)"[1,2,3]";
  env.payload_len = 7;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_env_encode(&env, &sb), 0);
  uint32_t x = 2463534242u;
  char err[128];
  for (int round = 0; round < 20000; round++) {
    uint8_t *p = malloc(sb.len);
    memcpy(p, sb.data, sb.len);
    for (int k = 0; k < 3; k++) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      p[x % sb.len] = (uint8_t)(x >> 8);
    }
    int rc = fo_env_decode(p, sb.len, &out, err, sizeof(err));
    assert_true(rc == 0 || rc == -EPROTO || rc == -ENOTSUP);
    if (rc == 0) {
      assert_true(out.target_len >= 1 && out.target_len <= FO_ENV_MAX_TARGET);
      assert_true(out.payload + out.payload_len <= p + sb.len);
    }
    free(p);
  }
  fo_sb_free(&sb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(envelope_matches_schema_vectors),
      cmocka_unit_test(envelope_roundtrip),
      cmocka_unit_test(envelope_encode_rejects_bad_input),
      cmocka_unit_test(envelope_survives_random_mutations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

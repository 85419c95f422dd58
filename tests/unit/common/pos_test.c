#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pos.h"

static int parse_str(const char *s, fo_pos_t *p) {
  return fo_pos_parse(s, strlen(s), p);
}

static void format_example(void **state) {
  (void)state;
  fo_pos_t p = {'u', 0x1f3a9c2e, 3, 12345, 0x18c2f3a4b5e};
  char buf[FO_POS_MAX];
  int n = fo_pos_format(&p, buf, sizeof(buf));
  assert_int_equal(n, strlen("u.1f3a9c2e.3.12345.18c2f3a4b5e"));
  assert_string_equal(buf, "u.1f3a9c2e.3.12345.18c2f3a4b5e");
  fo_pos_t r = {'r', 0xa, 0, -1, 0};
  assert_int_equal(fo_pos_format(&r, buf, sizeof(buf)), 17);
  assert_string_equal(buf, "r.0000000a.0.-1.0");
}

static void format_limits(void **state) {
  (void)state;
  /* The longest position: every field at its maximum. */
  fo_pos_t p = {'r', UINT32_MAX, INT32_MAX, INT64_MAX, INT64_MAX};
  char buf[FO_POS_MAX];
  int n = fo_pos_format(&p, buf, sizeof(buf));
  assert_int_equal(n, 58);
  assert_string_equal(buf, "r.ffffffff.2147483647.9223372036854775807.7fffffffffffffff");
  assert_true(n < FO_POS_MAX);
  /* Too small: -ENOSPC and an empty string, never a cut position. */
  char small[58];
  assert_int_equal(fo_pos_format(&p, small, sizeof(small)), -ENOSPC);
  assert_string_equal(small, "");
  assert_int_equal(fo_pos_format(&p, buf, 0), -ENOSPC);
  /* Fields out of range. */
  fo_pos_t bad[] = {{'x', 1, 0, 0, 0}, {'u', 1, -1, 0, 0}, {'u', 1, 0, -2, 0}, {'u', 1, 0, 0, -1}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(fo_pos_format(&bad[i], buf, sizeof(buf)), -EINVAL);
}

static void parse_good(void **state) {
  (void)state;
  fo_pos_t p;
  assert_int_equal(parse_str("u.1f3a9c2e.3.12345.18c2f3a4b5e", &p), 0);
  assert_int_equal(p.kind, 'u');
  assert_int_equal(p.epoch, 0x1f3a9c2e);
  assert_int_equal(p.partition, 3);
  assert_int_equal(p.offset, 12345);
  assert_int_equal(p.t_ms, 0x18c2f3a4b5e);
  assert_int_equal(parse_str("r.00000000.0.-1.0", &p), 0);
  assert_int_equal(p.kind, 'r');
  assert_int_equal(p.offset, -1);
  assert_int_equal(parse_str("r.ffffffff.2147483647.9223372036854775807.7fffffffffffffff", &p), 0);
  assert_int_equal(p.epoch, UINT32_MAX);
  assert_int_equal(p.partition, INT32_MAX);
  assert_true(p.offset == INT64_MAX);
  assert_true(p.t_ms == INT64_MAX);
  /* Only len bytes are read: what follows does not matter. */
  const char *s = "u.00000001.0.5.aXYZ";
  assert_int_equal(fo_pos_parse(s, strlen(s) - 3, &p), 0);
  assert_int_equal(p.t_ms, 0xa);
}

static void parse_bad(void **state) {
  (void)state;
  const char *bad[] = {
      "",
      "u",
      "u.",
      "x.1f3a9c2e.3.12345.18c",
      "U.1f3a9c2e.3.12345.18c",
      "u.1F3A9C2E.3.12345.18c",             /* uppercase epoch */
      "u.1f3a9c2e.3.12345.18C",             /* uppercase t */
      "u.1f3a9c2.3.12345.18c",              /* epoch 7 digits */
      "u.1f3a9c2e0.3.12345.18c",            /* epoch 9 digits */
      "u.1f3a9c2e.03.12345.18c",            /* leading zero */
      "u.1f3a9c2e.3.012345.18c",            /* leading zero */
      "u.1f3a9c2e.3.12345.018c",            /* leading zero */
      "u.1f3a9c2e.3.12345.00",              /* leading zero */
      "u.1f3a9c2e.-0.1.1",                  /* sign */
      "u.1f3a9c2e.+3.1.1",                  /* sign */
      "u.1f3a9c2e.3.+1.1",                  /* sign */
      "u.1f3a9c2e.3.-2.1",                  /* negative offset other than -1 */
      "u.1f3a9c2e.3.-10.1",                 /* -1 followed by a digit */
      "u.1f3a9c2e.3.-01.1",                 /* not -1 */
      "u.1f3a9c2e.3.-.1",                   /* sign only */
      "u.1f3a9c2e.3.1.-1",                  /* negative t */
      "u.1f3a9c2e.2147483648.1.1",          /* partition overflow */
      "u.1f3a9c2e.3.9223372036854775808.1", /* offset overflow */
      "u.1f3a9c2e.3.99999999999999999999.1",
      "u.1f3a9c2e.3.1.8000000000000000",  /* t overflow */
      "u.1f3a9c2e.3.1.10000000000000000", /* t overflow, 17 digits */
      "u.1f3a9c2e.3.1",                   /* missing t */
      "u.1f3a9c2e.3.1.",                  /* empty t */
      "u.1f3a9c2e..1.1",                  /* empty partition */
      "u.1f3a9c2e.3..1",                  /* empty offset */
      "u.1f3a9c2e.3.1.1.",                /* trailing dot */
      "u.1f3a9c2e.3.1.1.1",               /* extra field */
      "u.1f3a9c2e.3.1.1 ",                /* trailing space */
      " u.1f3a9c2e.3.1.1",                /* leading space */
      "u.1f3a9c2e. 3.1.1",
      "u.1f3a9c2e.3.1.1\n",
      "u.0x1f3a9c.3.1.1",
      "u-1f3a9c2e.3.1.1",
      "u.1f3a9c2e,3.1.1",
      "u.1f3a9c2e.3.1.g",
      "u.1f3a9c2e.3.1e3.1",
      "uu.1f3a9c2e.3.1.1",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    fo_pos_t p = {'z', 7, 7, 7, 7};
    if (parse_str(bad[i], &p) != -EINVAL)
      fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(p.kind, 'z'); /* untouched */
  }
  fo_pos_t p;
  /* A NUL inside the given length. */
  const char nul[] = "u.1f3a9c2e.3.1.1\0";
  assert_int_equal(fo_pos_parse(nul, sizeof(nul) - 1, &p), -EINVAL);
  const char nul2[] = "u.1f3a9c2e.3\0.1.1";
  assert_int_equal(fo_pos_parse(nul2, sizeof(nul2) - 1, &p), -EINVAL);
  assert_int_equal(fo_pos_parse(NULL, 0, &p), -EINVAL);
  /* Longer than FO_POS_MAX, even if it would otherwise parse. */
  char longer[FO_POS_MAX + 2];
  memset(longer, 'a', sizeof(longer));
  memcpy(longer, "u.00000001.0.1.", 15);
  assert_int_equal(fo_pos_parse(longer, sizeof(longer), &p), -EINVAL);
}

/* Returns a random int64 spread over every magnitude. */
static int64_t rnd64(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  unsigned bits = (unsigned)(*s % 64);
  return (int64_t)((*s >> 1) >> (63 - bits < 63 ? 63 - bits : 0)) & INT64_MAX;
}

static void roundtrip_property(void **state) {
  (void)state;
  uint64_t s = 0x9e3779b97f4a7c15ull;
  char buf[FO_POS_MAX], again[FO_POS_MAX];
  for (int i = 0; i < 200000; i++) {
    fo_pos_t p = {(i & 1) ? 'u' : 'r', (uint32_t)rnd64(&s), (int32_t)(rnd64(&s) & INT32_MAX),
                  rnd64(&s) - 1, rnd64(&s)};
    if (p.offset < -1)
      p.offset = -1;
    int n = fo_pos_format(&p, buf, sizeof(buf));
    assert_true(n > 0 && n < FO_POS_MAX);
    fo_pos_t q;
    assert_int_equal(fo_pos_parse(buf, (size_t)n, &q), 0);
    assert_int_equal(q.kind, p.kind);
    assert_int_equal(q.epoch, p.epoch);
    assert_int_equal(q.partition, p.partition);
    assert_true(q.offset == p.offset);
    assert_true(q.t_ms == p.t_ms);
    assert_int_equal(fo_pos_format(&q, again, sizeof(again)), n);
    assert_string_equal(again, buf);
    /* Every strict prefix is refused, except those that end inside t
     * (they are another valid position) -- check the shape instead. */
    size_t cut = (size_t)(s % (uint64_t)n);
    if (fo_pos_parse(buf, cut, &q) == 0) {
      assert_int_equal(fo_pos_format(&q, again, sizeof(again)), (int)cut);
      assert_memory_equal(again, buf, cut);
    }
  }
}

/* Vectors also in schemas/positions.md; computed independently with
 * python3-xxhash: xxhash.xxh32(b"...", seed=0x66706f73). */
static void epoch_vectors(void **state) {
  (void)state;
  assert_int_equal(fo_pos_epoch("", "", 0), 0xb41164cf);
  assert_int_equal(fo_pos_epoch("MkU3OEVBNTcwNTJENDM2Qk", "fanout.users", 8), 0x013aec43);
  assert_int_equal(fo_pos_epoch("MkU3OEVBNTcwNTJENDM2Qk", "fanout.users", 16), 0x799555b0);
  assert_int_equal(fo_pos_epoch("MkU3OEVBNTcwNTJENDM2Qk", "fanout.rooms", 8), 0xe5347df1);
  char longid[301];
  memset(longid, 'a', 300);
  longid[300] = '\0';
  assert_int_equal(fo_pos_epoch(longid, "fanout.users", 8), 0xdc6c0ec3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(format_example),     cmocka_unit_test(format_limits),
      cmocka_unit_test(parse_good),         cmocka_unit_test(parse_bad),
      cmocka_unit_test(roundtrip_property), cmocka_unit_test(epoch_vectors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"

/* Decodes the JSON string in the first column (only \uXXXX escapes of the
 * BMP and plain characters occur in the vectors). */
static size_t json_unquote(const char *s, char *out) {
  size_t o = 0;
  for (const char *p = s + 1; *p != '"' && *p != '\0'; p++) {
    if (*p == '\\' && p[1] == 'u') {
      unsigned cp = (unsigned)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
      if (cp < 0x80) {
        out[o++] = (char)cp;
      } else if (cp < 0x800) {
        out[o++] = (char)(0xc0 | cp >> 6);
        out[o++] = (char)(0x80 | (cp & 0x3f));
      } else {
        out[o++] = (char)(0xe0 | cp >> 12);
        out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[o++] = (char)(0x80 | (cp & 0x3f));
      }
      p += 5;
    } else {
      out[o++] = *p;
    }
  }
  return o;
}

static void partition_matches_schema_vectors(void **state) {
  (void)state;
  FILE *f = fopen(FO_SOURCE_DIR "/schemas/vectors/partition.tsv", "r");
  assert_non_null(f);
  char line[1024];
  int32_t ps[16];
  int nps = 0, rows = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (line[0] == '#') {
      for (char *p = strstr(line, "P="); p != NULL && nps < 16; p = strstr(p + 1, "P="))
        ps[nps++] = (int32_t)strtol(p + 2, NULL, 10);
      continue;
    }
    char key[512];
    char *tab = strchr(line, '\t');
    assert_non_null(tab);
    *tab = '\0';
    size_t klen = json_unquote(line, key);
    char *rest = tab + 1;
    uint32_t want_hash = (uint32_t)strtoul(rest, &rest, 16);
    assert_int_equal(fo_hash32(key, klen), want_hash);
    for (int i = 0; i < nps; i++) {
      long want = strtol(rest, &rest, 10);
      assert_int_equal(fo_partition_of_key(key, klen, ps[i]), want);
    }
    rows++;
  }
  fclose(f);
  assert_true(nps >= 5);
  assert_true(rows >= 10);
}

static void partition_ranges_are_contiguous(void **state) {
  (void)state;
  /* partition p owns [p*2^32/P, (p+1)*2^32/P): edges land where they should */
  assert_int_equal(fo_partition_of_hash(0, 8), 0);
  assert_int_equal(fo_partition_of_hash(0x1fffffff, 8), 0);
  assert_int_equal(fo_partition_of_hash(0x20000000, 8), 1);
  assert_int_equal(fo_partition_of_hash(0xffffffff, 8), 7);
  assert_int_equal(fo_partition_of_hash(0xffffffff, 1), 0);
  assert_int_equal(fo_partition_of_hash(12345, 0), 0); /* nonsense P: no crash */
  for (uint64_t h = 0; h <= 0xffffffffu; h += 0x00ffffffu) {
    int32_t p = fo_partition_of_hash((uint32_t)h, 3);
    assert_true(p >= 0 && p < 3);
  }
}

static void partition_spreads_users(void **state) {
  (void)state;
  int counts[8] = {0};
  char user[32];
  for (int i = 0; i < 8000; i++) {
    int n = snprintf(user, sizeof(user), "user-%d", i);
    counts[fo_partition_of_key(user, (size_t)n, 8)]++;
  }
  for (int i = 0; i < 8; i++)
    assert_true(counts[i] > 800 && counts[i] < 1200);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(partition_matches_schema_vectors),
      cmocka_unit_test(partition_ranges_are_contiguous),
      cmocka_unit_test(partition_spreads_users),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

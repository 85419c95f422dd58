/* common/rshard.c against schemas/vectors/redis-shards.tsv (written by
 * schemas/vectors/generate.py with an implementation of its own), and the
 * properties the document promises: even spread, few moves on growth. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"
#include "rshard.h"

/* The first column's JSON string: plain characters and \uXXXX of the BMP. */
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

static void rshard_matches_schema_vectors(void **state) {
  (void)state;
  FILE *f = fopen(FO_SOURCE_DIR "/schemas/vectors/redis-shards.tsv", "r");
  assert_non_null(f);
  char line[1024];
  uint32_t ns[16];
  int nns = 0, rows = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (line[0] == '#') {
      for (char *p = strstr(line, "N="); p != NULL && nns < 16; p = strstr(p + 1, "N="))
        ns[nns++] = (uint32_t)strtoul(p + 2, NULL, 10);
      continue;
    }
    char name[512];
    char *tab = strchr(line, '\t');
    assert_non_null(tab);
    *tab = '\0';
    size_t len = json_unquote(line, name);
    char *rest = tab + 1;
    uint32_t want = (uint32_t)strtoul(rest, &rest, 16);
    assert_int_equal(fo_hash32(name, len), want);
    for (int i = 0; i < nns; i++) {
      long node = strtol(rest, &rest, 10);
      assert_int_equal(fo_rshard_node(name, len, ns[i]), node);
    }
    rows++;
  }
  fclose(f);
  assert_true(nns >= 5);
  assert_true(rows >= 15);
}

/* 30,000 names over 3 nodes: each within 3 % of a third; from 3 to 4 nodes
 * only names that move to the new node move (about a quarter). */
static void rshard_spreads_and_moves_little(void **state) {
  (void)state;
  enum { N = 30000 };
  int count[3] = {0};
  int moved = 0, moved_elsewhere = 0;
  for (int i = 0; i < N; i++) {
    char name[32];
    int len = snprintf(name, sizeof(name), "user%d", i);
    uint32_t a = fo_rshard_node(name, (size_t)len, 3);
    uint32_t b = fo_rshard_node(name, (size_t)len, 4);
    count[a]++;
    if (a != b) {
      moved++;
      moved_elsewhere += b != 3;
    }
  }
  for (int k = 0; k < 3; k++)
    assert_true(count[k] > N / 3 * 97 / 100 && count[k] < N / 3 * 103 / 100);
  assert_int_equal(moved_elsewhere, 0);
  assert_true(moved > N / 4 * 9 / 10 && moved < N / 4 * 11 / 10);
  assert_int_equal(fo_rshard_node("x", 1, 0), 0);
  assert_int_equal(fo_rshard_node("x", 1, 1), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(rshard_matches_schema_vectors),
      cmocka_unit_test(rshard_spreads_and_moves_little),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

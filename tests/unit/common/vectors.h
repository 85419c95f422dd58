/* The contract vectors of schemas/vectors/ *.tsv (written by
 * schemas/vectors/generate.py with implementations of its own), read the
 * same way for every placement function: a header line names the column
 * parameters ("# ... P=4 P=8" or "N=1 N=2"), then each row is a JSON string
 * key, its hash32 in hex, and one expected placement per parameter. Include
 * after cmocka.h; for the unit tests only. */
#ifndef FO_TEST_VECTORS_H
#define FO_TEST_VECTORS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"

/* The first column's JSON string: plain characters and \u escapes (four hex digits) of the BMP. */
static size_t vectors_unquote(const char *s, char *out) {
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

/* Checks every row of `file` (under schemas/vectors/): the key's hash32,
 * and place(key, len, param) against each column, param being the value
 * after `tag` ("P=", "N=") in the header. Returns the number of rows;
 * *nparams gets the number of parameters. */
static int vectors_check(const char *file, const char *tag,
                         long (*place)(const char *key, size_t len, long param), int *nparams) {
  char path[512];
  snprintf(path, sizeof(path), "%s/schemas/vectors/%s", FO_SOURCE_DIR, file);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char line[1024];
  long params[16];
  int np = 0, rows = 0;
  size_t taglen = strlen(tag);
  while (fgets(line, sizeof(line), f) != NULL) {
    if (line[0] == '#') {
      for (char *p = strstr(line, tag); p != NULL && np < 16; p = strstr(p + 1, tag))
        params[np++] = strtol(p + taglen, NULL, 10);
      continue;
    }
    char key[512];
    char *tab = strchr(line, '\t');
    assert_non_null(tab);
    *tab = '\0';
    size_t len = vectors_unquote(line, key);
    char *rest = tab + 1;
    uint32_t want_hash = (uint32_t)strtoul(rest, &rest, 16);
    assert_int_equal(fo_hash32(key, len), want_hash);
    for (int i = 0; i < np; i++) {
      long want = strtol(rest, &rest, 10);
      assert_int_equal(place(key, len, params[i]), want);
    }
    rows++;
  }
  fclose(f);
  *nparams = np;
  return rows;
}

#endif

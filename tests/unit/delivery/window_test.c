/* delivery/window.c: the resume window (coverage, eviction, lookups). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "window.h"

static fo_buf_t *frame_of(const char *s) {
  fo_buf_t *b = fo_buf_from(s, strlen(s));
  assert_non_null(b);
  return b;
}

/* Adds a record with a fresh frame whose text is "<key>@<offset>"; the
 * window keeps its reference, ours is dropped. */
static void add(fo_window_t *w, int64_t off, int64_t ts, const char *key, uint64_t now) {
  char text[64];
  snprintf(text, sizeof(text), "%s@%lld", key, (long long)off);
  fo_buf_t *b = frame_of(text);
  assert_int_equal(fo_window_add(w, off, ts, key, strlen(key), b, now), 0);
  assert_int_equal(b->refs, 2);
  fo_buf_unref(b);
}

static int since(fo_window_t *w, const char *key, int64_t s, int64_t t, int64_t end, size_t cap,
                 int64_t *offs, size_t *n) {
  fo_buf_t *out[64];
  assert_true(cap <= 64);
  int rc = fo_window_since(w, key, strlen(key), s, t, end, cap, out, offs, n);
  for (size_t i = 0; i < *n; i++) {
    char text[64];
    snprintf(text, sizeof(text), "%s@%lld", key, (long long)offs[i]);
    assert_int_equal(out[i]->len, strlen(text));
    assert_memory_equal(out[i]->data, text, out[i]->len);
  }
  return rc;
}

static void order_and_coverage(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fo_window_t *w = fo_window_new(&b, 60000);
  assert_non_null(w);
  assert_true(fo_window_last(w) == INT64_MIN);
  int64_t offs[64];
  size_t n = 99;
  /* Never reset: covers nothing. */
  assert_int_equal(since(w, "u1", 5, 0, 5, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  assert_int_equal(n, 0);
  fo_window_reset(w, 100);
  assert_int_equal(fo_window_last(w), 99);
  /* Nothing seen yet, nothing missed: (99, 99] is empty and covered. */
  assert_int_equal(since(w, "u1", 99, 0, 99, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 0);
  /* 100..109 without 105 (a gap), keys alternating u1/u2, 106 nobody's. */
  for (int64_t o = 100; o < 110; o++) {
    if (o == 105)
      continue;
    if (o == 106) {
      assert_int_equal(fo_window_add(w, o, 1000 + o, NULL, 0, NULL, 1), 0);
      continue;
    }
    add(w, o, 1000 + o, (o & 1) ? "u2" : "u1", 1);
  }
  assert_int_equal(fo_window_last(w), 109);
  assert_int_equal(fo_window_covered_from(w), 100);
  assert_int_equal(fo_window_count(w), 9);
  assert_int_equal(b.entries, 9);
  assert_int_equal(b.bytes, fo_window_bytes(w));
  /* Out of order, repeated, negative, frame without key: refused. */
  fo_buf_t *f = frame_of("x");
  assert_int_equal(fo_window_add(w, 109, 0, "u1", 2, f, 1), -EINVAL);
  assert_int_equal(fo_window_add(w, 50, 0, "u1", 2, f, 1), -EINVAL);
  assert_int_equal(fo_window_add(w, -1, 0, "u1", 2, f, 1), -EINVAL);
  assert_int_equal(fo_window_add(w, 200, 0, NULL, 0, f, 1), -EINVAL);
  assert_int_equal(f->refs, 1);
  fo_buf_unref(f);
  assert_int_equal(fo_window_last(w), 109);

  /* u1 after 100: 102, 104, 108 (106 is nobody's), oldest first. */
  assert_int_equal(since(w, "u1", 100, 1100, 109, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 3);
  assert_int_equal(offs[0], 102);
  assert_int_equal(offs[1], 104);
  assert_int_equal(offs[2], 108);
  /* end bounds the range. */
  assert_int_equal(since(w, "u1", 100, 1100, 104, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 2);
  assert_int_equal(offs[1], 104);
  /* From the reset boundary (99: not a record the window holds). */
  assert_int_equal(since(w, "u1", 99, 0, 109, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 4);
  assert_int_equal(offs[0], 100);
  /* since on the nobody's record 106: it anchors too. */
  assert_int_equal(since(w, "u2", 106, 1106, 109, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 2);
  assert_int_equal(offs[0], 107);
  assert_int_equal(offs[1], 109);
  /* Unknown key: covered, nothing missed. */
  assert_int_equal(since(w, "u3", 100, 1100, 109, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 0);
  /* Up to date. */
  assert_int_equal(since(w, "u1", 109, 1109, 109, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 0);

  /* Not covered: before the window, end or since beyond what it saw. */
  assert_int_equal(since(w, "u1", 98, 0, 109, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  assert_int_equal(since(w, "u1", -1, 0, 109, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  assert_int_equal(since(w, "u1", 100, 1100, 110, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  assert_int_equal(since(w, "u1", 110, 9999, 109, 10, offs, &n), FO_WINDOW_NOT_COVERED);

  /* Reset: everything dropped, coverage restarts. */
  fo_window_reset(w, 500);
  assert_int_equal(fo_window_count(w), 0);
  assert_int_equal(b.entries, 0);
  assert_int_equal(b.bytes, 0);
  assert_int_equal(fo_window_last(w), 499);
  assert_int_equal(since(w, "u1", 100, 1100, 109, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  fo_window_free(w);
  assert_null(b.head);
}

static void foreign_positions(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fo_window_t *w = fo_window_new(&b, 60000);
  int64_t offs[64];
  size_t n;
  fo_window_reset(w, 0);
  add(w, 0, 5000, "r", 1);
  add(w, 1, 5001, "r", 1);
  add(w, 3, 5003, "r", 1); /* 2 is a gap */
  add(w, 4, 5004, "r", 1);
  /* -1 (before the first record) with the window covering from 0. */
  assert_int_equal(since(w, "r", -1, 0, 4, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 4);
  /* t == the record's timestamp: fine; t one ms earlier: foreign. */
  assert_int_equal(since(w, "r", 1, 5001, 4, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 2);
  assert_int_equal(since(w, "r", 1, 5000, 4, 10, offs, &n), FO_WINDOW_FOREIGN);
  assert_int_equal(n, 0);
  /* Later t (a welcome made from the wall clock): fine. */
  assert_int_equal(since(w, "r", 1, 99999, 4, 10, offs, &n), FO_WINDOW_OK);
  /* An offset inside coverage that no record has. */
  assert_int_equal(since(w, "r", 2, 99999, 4, 10, offs, &n), FO_WINDOW_FOREIGN);
  /* The foreign check holds for any key, even one with no entries. */
  assert_int_equal(since(w, "zz", 3, 5002, 4, 10, offs, &n), FO_WINDOW_FOREIGN);
  fo_window_free(w);
}

static void over_cap(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fo_window_t *w = fo_window_new(&b, 60000);
  int64_t offs[64];
  size_t n;
  fo_window_reset(w, 10);
  for (int64_t o = 10; o < 30; o++)
    add(w, o, o, (o % 4 == 0) ? "k" : "other", 1); /* k: 12 16 20 24 28 */
  assert_int_equal(since(w, "k", 9, 0, 29, 5, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 5);
  assert_int_equal(since(w, "k", 9, 0, 29, 4, offs, &n), FO_WINDOW_OVER_CAP);
  assert_int_equal(n, 0);
  assert_int_equal(since(w, "k", 12, 12, 29, 4, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 4);
  assert_int_equal(since(w, "k", 9, 0, 29, 0, offs, &n), FO_WINDOW_OVER_CAP);
  assert_int_equal(since(w, "k", 28, 28, 29, 0, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 0);
  fo_window_free(w);
}

static void eviction_by_age(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fo_window_t *w = fo_window_new(&b, 1000);
  int64_t offs[64];
  size_t n;
  fo_window_reset(w, 0);
  add(w, 0, 0, "a", 10000);
  add(w, 1, 0, "a", 10500);
  add(w, 2, 0, "a", 11000); /* 0 is exactly 1000 old: kept */
  assert_int_equal(fo_window_count(w), 3);
  add(w, 3, 0, "a", 11001); /* 0 is now too old */
  assert_int_equal(fo_window_count(w), 3);
  assert_int_equal(fo_window_covered_from(w), 1);
  assert_int_equal(b.evictions, 1);
  /* since 0: its record is gone but everything after it is here. */
  assert_int_equal(since(w, "a", 0, 0, 3, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 3);
  assert_int_equal(since(w, "a", -1, 0, 3, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  /* An idle partition: the timer's expire empties it; coverage stays at
   * the last offset seen + 1, so "up to date" is still answered. */
  fo_window_expire(w, 20000);
  assert_int_equal(fo_window_count(w), 0);
  assert_int_equal(b.entries, 0);
  assert_int_equal(b.bytes, 0);
  assert_int_equal(b.evictions, 4);
  assert_int_equal(fo_window_covered_from(w), 4);
  assert_int_equal(since(w, "a", 3, 0, 3, 10, offs, &n), FO_WINDOW_OK);
  assert_int_equal(n, 0);
  assert_int_equal(since(w, "a", 2, 0, 3, 10, offs, &n), FO_WINDOW_NOT_COVERED);
  /* A clock that went back does not evict (and does not wrap). */
  add(w, 4, 0, "a", 30000);
  fo_window_expire(w, 100);
  assert_int_equal(fo_window_count(w), 1);
  fo_window_free(w);
}

static void eviction_by_budget_two_windows(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 0};
  fo_window_t *w1 = fo_window_new(&b, 1000000);
  fo_window_t *w2 = fo_window_new(&b, 1000000);
  /* Measure one entry's cost (same-size frame, same-length key). */
  fo_window_reset(w1, 0);
  b.max_bytes = UINT64_MAX;
  add(w1, 0, 0, "k0", 1);
  uint64_t first = b.bytes; /* entry + key */
  add(w1, 1, 0, "k0", 1);
  uint64_t per = b.bytes - first; /* entry only (key shared) */
  assert_true(per >= 48 + sizeof(fo_buf_t) + strlen("k0@1"));
  fo_window_reset(w1, 0);
  assert_int_equal(b.bytes, 0);
  /* Room for 10 records of key k0 in total. */
  b.max_bytes = first + 9 * per + 8; /* + 8: "k0@10" is a byte longer */
  for (int64_t o = 0; o < 10; o++)
    add(w1, o, 0, "k0", 1 + (uint64_t)o);
  assert_int_equal(fo_window_count(w1), 10);
  assert_int_equal(b.evictions, 0);
  /* w1 grows: it evicts its own front. */
  add(w1, 10, 0, "k0", 20);
  assert_int_equal(fo_window_count(w1), 10);
  assert_int_equal(fo_window_covered_from(w1), 1);
  assert_int_equal(b.evictions, 1);
  assert_true(b.bytes <= b.max_bytes);
  /* w2 starts: w1's entries are the oldest, so w1 pays, one per add. */
  fo_window_reset(w2, 0);
  add(w2, 0, 0, "k0", 30);
  assert_int_equal(fo_window_count(w2), 1);
  assert_true(b.bytes <= b.max_bytes);
  assert_int_equal(fo_window_count(w1) + fo_window_count(w2), b.entries);
  assert_int_equal(fo_window_bytes(w1) + fo_window_bytes(w2), b.bytes);
  assert_true(fo_window_count(w1) < 10);
  /* w2 grows while w1's older entries go, until w1 is empty; then w2
   * evicts its own oldest. */
  for (int64_t o = 1; o < 30; o++) {
    size_t c1 = fo_window_count(w1), c2 = fo_window_count(w2);
    add(w2, o, 0, "k0", 31 + (uint64_t)o);
    assert_true(b.bytes <= b.max_bytes);
    if (c1 > 0)
      assert_true(fo_window_count(w1) < c1 && fo_window_count(w2) == c2 + 1);
  }
  assert_int_equal(fo_window_count(w1), 0);
  assert_int_equal(fo_window_covered_from(w1), 11);
  assert_true(fo_window_count(w2) >= 9);
  assert_int_equal(fo_window_count(w1) + fo_window_count(w2), b.entries);
  assert_int_equal(fo_window_bytes(w1) + fo_window_bytes(w2), b.bytes);
  /* A frame larger than the whole budget: held alone, over by one entry. */
  fo_buf_t *big = fo_buf_new((size_t)b.max_bytes * 2);
  big->len = 1;
  assert_int_equal(fo_window_add(w2, 100, 0, "k0", 2, big, 100), 0);
  fo_buf_unref(big);
  assert_int_equal(fo_window_count(w2), 1);
  assert_true(b.bytes > b.max_bytes);
  /* The next small one pushes it out. */
  add(w2, 101, 0, "k0", 101);
  assert_int_equal(fo_window_count(w2), 1);
  assert_true(b.bytes <= b.max_bytes);
  assert_int_equal(fo_window_covered_from(w2), 101);
  fo_window_free(w1);
  fo_window_free(w2);
  assert_int_equal(b.bytes, 0);
  assert_int_equal(b.entries, 0);
  assert_null(b.head);
}

static void references(void **state) {
  (void)state;
  fo_window_budget_t b = {.max_bytes = 1 << 20};
  fo_window_t *w = fo_window_new(&b, 100);
  fo_buf_t *f = frame_of("shared");
  fo_window_reset(w, 0);
  /* The same frame under two offsets (two keys): two references. */
  assert_int_equal(fo_window_add(w, 0, 0, "a", 1, f, 0), 0);
  assert_int_equal(fo_window_add(w, 1, 0, "b", 1, f, 50), 0);
  assert_int_equal(f->refs, 3);
  fo_buf_t *out[4];
  size_t n;
  assert_int_equal(fo_window_since(w, "b", 1, -1, 0, 1, 4, out, NULL, &n), FO_WINDOW_OK);
  assert_int_equal(n, 1);
  assert_ptr_equal(out[0], f);
  assert_int_equal(f->refs, 3); /* lookups take none */
  fo_window_expire(w, 101);     /* offset 0 ages out */
  assert_int_equal(f->refs, 2);
  fo_window_reset(w, 2);
  assert_int_equal(f->refs, 1);
  assert_int_equal(fo_window_add(w, 2, 0, "a", 1, f, 0), 0);
  fo_window_free(w); /* drops the last window reference */
  assert_int_equal(f->refs, 1);
  fo_buf_unref(f);
}

/* Keys that share bytes, prefixes, NULs and hash slots, under random
 * eviction by budget, checked against a plain list of every record. */
typedef struct {
  int64_t off, ts;
  int key; /* -1: no frame */
} rec_t;

#define NKEYS 300
static char keys[NKEYS][16];
static size_t keylens[NKEYS];

static void keys_and_model(void **state) {
  (void)state;
  for (int i = 0; i < NKEYS; i++) {
    /* "a", "aa", "aaa"...: prefixes; "x\0<i>": embedded NUL. */
    if (i < 10) {
      memset(keys[i], 'a', (size_t)i + 1);
      keylens[i] = (size_t)i + 1;
    } else {
      keys[i][0] = 'x';
      keys[i][1] = '\0';
      keylens[i] = 2 + (size_t)snprintf(keys[i] + 2, 14, "%d", i);
    }
  }
  fo_window_budget_t b = {.max_bytes = 200000};
  fo_window_t *w = fo_window_new(&b, 1000000);
  fo_window_t *other = fo_window_new(&b, 1000000);
  rec_t *recs = calloc(20000, sizeof(*recs));
  size_t nrec = 0;
  uint64_t s = 12345;
  int64_t off = 0;
  fo_window_reset(w, 0);
  fo_window_reset(other, 0);
  fo_buf_t *out[64];
  int64_t offs[64];
  for (int step = 0; step < 20000; step++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t r = (uint32_t)(s >> 33);
    off += 1 + (r % 7 == 0); /* gaps */
    int k = (r % 10 == 1) ? -1 : (int)((r >> 4) % (r % 3 ? 12 : NKEYS));
    int64_t ts = 1000 + off;
    if (k < 0) {
      assert_int_equal(fo_window_add(w, off, ts, NULL, 0, NULL, (uint64_t)step), 0);
    } else {
      fo_buf_t *f = fo_buf_new((r >> 8) % 400);
      f->len = 0;
      assert_int_equal(fo_window_add(w, off, ts, keys[k], keylens[k], f, (uint64_t)step), 0);
      fo_buf_unref(f);
    }
    recs[nrec++] = (rec_t){off, ts, k};
    if (step % 5 == 0) {
      fo_buf_t *f = fo_buf_new(300);
      assert_int_equal(fo_window_add(other, step, 0, "o", 1, f, (uint64_t)step), 0);
      fo_buf_unref(f);
    }
    /* Over budget only by one entry held alone. */
    if (b.bytes > b.max_bytes)
      assert_true(fo_window_count(w) + fo_window_count(other) == 1);
    assert_int_equal(fo_window_bytes(w) + fo_window_bytes(other), b.bytes);
    assert_int_equal(fo_window_count(w) + fo_window_count(other), b.entries);
    if (step % 7 != 0)
      continue;
    /* A query against the model. */
    int qk = (int)((r >> 3) % 12);
    int64_t cf = fo_window_covered_from(w);
    int64_t last = fo_window_last(w);
    int64_t since = last - (int64_t)((r >> 12) % 600);
    int64_t end = (r & 0x100) ? last : last - (int64_t)((r >> 20) % 20);
    int64_t t = 1000 + since - ((r & 0x200) ? 1 : 0);
    size_t cap = (r >> 25) % 40;
    size_t n;
    int rc = fo_window_since(w, keys[qk], keylens[qk], since, t, end, cap, out, offs, &n);
    int want;
    size_t nm = 0;
    int64_t mo[1000];
    if (since < cf - 1) {
      want = FO_WINDOW_NOT_COVERED;
    } else {
      want = FO_WINDOW_OK;
      int found = since < cf;
      for (size_t i = 0; i < nrec; i++) {
        if (recs[i].off == since && since >= cf) {
          found = 1;
          if (recs[i].ts > t)
            want = FO_WINDOW_FOREIGN;
        }
        if (recs[i].off > since && recs[i].off <= end && recs[i].key == qk)
          mo[nm++] = recs[i].off;
      }
      if (!found)
        want = FO_WINDOW_FOREIGN;
      if (want == FO_WINDOW_OK && nm > cap)
        want = FO_WINDOW_OVER_CAP;
    }
    assert_int_equal(rc, want);
    if (rc == FO_WINDOW_OK) {
      assert_int_equal(n, nm);
      for (size_t i = 0; i < n; i++)
        assert_int_equal(offs[i], mo[i]);
    } else {
      assert_int_equal(n, 0);
    }
  }
  assert_true(b.evictions > 0);
  fo_window_free(w);
  fo_window_free(other);
  free(recs);
  assert_int_equal(b.bytes, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(order_and_coverage),
      cmocka_unit_test(foreign_positions),
      cmocka_unit_test(over_cap),
      cmocka_unit_test(eviction_by_age),
      cmocka_unit_test(eviction_by_budget_two_windows),
      cmocka_unit_test(references),
      cmocka_unit_test(keys_and_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Resume window: a ring of entries in offset order (binary search by
 * offset; eviction pops the front) plus a map key -> that key's newest
 * entry, each entry linking to the previous entry of its key. Links are
 * sequence numbers, not pointers: an entry's slot is seq & (cap - 1), and a
 * link to a seq below the ring's head simply points at an evicted entry, so
 * eviction never has to patch links. A lookup walks one key's chain
 * backwards from its newest entry and stops at `since`. */
#include "window.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "map.h"

#define NO_SEQ         UINT64_MAX
/* What malloc adds to each allocation (glibc: 8-byte header, 16-byte
 * alignment): charged so that the budget means resident bytes. */
#define ALLOC_OVERHEAD 16

typedef struct wkey {
  fo_mapent_t ent; /* ent.key points at name */
  uint64_t newest; /* seq of this key's newest entry */
  uint32_t refs;   /* entries with this key; the key is freed at 0 */
  char name[];
} wkey_t;

/* 48 bytes. */
typedef struct went {
  int64_t offset;
  int64_t ts_ms;     /* the record's Kafka timestamp */
  uint64_t added_ms; /* when it was added: what age eviction looks at */
  fo_buf_t *frame;   /* one reference owned by the entry, or NULL */
  wkey_t *key;       /* NULL when frame is NULL */
  uint64_t prev;     /* seq of the previous entry of key, or NO_SEQ */
} went_t;

struct fo_window {
  fo_window_budget_t *budget;
  fo_window_t *next, *prev; /* on budget->head */
  uint64_t max_age_ms;
  went_t *ring; /* cap slots, cap a power of two or 0; owned */
  uint64_t cap;
  uint64_t head; /* seq of the oldest entry */
  uint64_t tail; /* seq the next entry gets */
  int started;   /* reset or added to at least once */
  int64_t covered_from;
  int64_t last;
  uint64_t bytes; /* charged to budget for this window */
  fo_map_t keys;  /* wkey_t by name */
};

static uint64_t entry_cost(const fo_buf_t *frame) {
  uint64_t c = sizeof(went_t);
  if (frame != NULL)
    c += sizeof(fo_buf_t) + frame->cap + ALLOC_OVERHEAD;
  return c;
}

/* The key struct and name, plus two map slots (load factor <= 1/2). */
static uint64_t key_cost(size_t keylen) {
  return sizeof(wkey_t) + keylen + 1 + ALLOC_OVERHEAD + 2 * sizeof(void *);
}

static void charge(fo_window_t *w, uint64_t c) {
  w->bytes += c;
  w->budget->bytes += c;
}

static void discharge(fo_window_t *w, uint64_t c) {
  w->bytes -= c;
  w->budget->bytes -= c;
}

static went_t *at(const fo_window_t *w, uint64_t seq) {
  return &w->ring[seq & (w->cap - 1)];
}

static void key_release(fo_window_t *w, wkey_t *k) {
  if (--k->refs > 0)
    return;
  fo_map_del(&w->keys, &k->ent);
  discharge(w, key_cost(k->ent.len));
  free(k);
}

static void drop_front(fo_window_t *w) {
  went_t *e = at(w, w->head);
  if (e->key != NULL)
    key_release(w, e->key);
  discharge(w, entry_cost(e->frame));
  fo_buf_unref(e->frame);
  w->budget->entries--;
  w->head++;
  /* Every record up to e->offset was seen; the ones after it are held. */
  w->covered_from = e->offset + 1;
}

static void drop_all(fo_window_t *w) {
  while (w->head != w->tail)
    drop_front(w);
  fo_map_free(&w->keys);
  free(w->ring);
  w->ring = NULL;
  w->cap = 0;
  discharge(w, w->bytes); /* nothing should be left; stay exact if it is */
}

fo_window_t *fo_window_new(fo_window_budget_t *budget, uint64_t max_age_ms) {
  fo_window_t *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return NULL;
  w->budget = budget;
  w->max_age_ms = max_age_ms;
  w->covered_from = INT64_MAX;
  w->last = INT64_MIN;
  w->next = budget->head;
  if (budget->head != NULL)
    budget->head->prev = w;
  budget->head = w;
  return w;
}

void fo_window_free(fo_window_t *w) {
  if (w == NULL)
    return;
  drop_all(w);
  if (w->prev != NULL)
    w->prev->next = w->next;
  else
    w->budget->head = w->next;
  if (w->next != NULL)
    w->next->prev = w->prev;
  free(w);
}

void fo_window_reset(fo_window_t *w, int64_t next_offset) {
  drop_all(w);
  if (next_offset < 0)
    next_offset = 0;
  w->started = 1;
  w->covered_from = next_offset;
  w->last = next_offset - 1;
}

static int grow(fo_window_t *w) {
  uint64_t ncap = w->cap ? w->cap * 2 : 64;
  went_t *nr = malloc(ncap * sizeof(*nr));
  if (nr == NULL)
    return -ENOMEM;
  for (uint64_t s = w->head; s != w->tail; s++)
    nr[s & (ncap - 1)] = *at(w, s);
  free(w->ring);
  w->ring = nr;
  w->cap = ncap;
  return 0;
}

void fo_window_expire(fo_window_t *w, uint64_t now_ms) {
  while (w->head != w->tail) {
    const went_t *e = at(w, w->head);
    if (now_ms <= e->added_ms || now_ms - e->added_ms <= w->max_age_ms)
      break;
    drop_front(w);
    w->budget->evictions++;
  }
}

/* Evicts the oldest entry (by insertion time) of all windows on the budget
 * until it fits, keeping the entry just added: so every window keeps about
 * the same span of time, and the total exceeds the budget by at most that
 * one entry, when it alone is larger than the rest. (Evicting the growing
 * window first would starve a window created after the budget filled: it
 * could never hold more than its newest entry while the others keep theirs
 * until they age out.) O(windows) per eviction. */
static void enforce_budget(fo_window_t *w) {
  fo_window_budget_t *b = w->budget;
  while (b->bytes > b->max_bytes) {
    fo_window_t *victim = NULL;
    if (w->tail - w->head > 1)
      victim = w; /* wins ties */
    for (fo_window_t *o = b->head; o != NULL; o = o->next) {
      if (o == w || o->head == o->tail)
        continue;
      if (victim == NULL || at(o, o->head)->added_ms < at(victim, victim->head)->added_ms)
        victim = o;
    }
    if (victim == NULL)
      break;
    drop_front(victim);
    b->evictions++;
  }
}

int fo_window_add(fo_window_t *w, int64_t offset, int64_t ts_ms, const char *key, size_t keylen,
                  fo_buf_t *frame, uint64_t now_ms) {
  if (offset < 0 || offset == INT64_MAX || (w->started && offset <= w->last) ||
      (frame != NULL && (key == NULL || keylen == 0 || keylen > UINT32_MAX)))
    return -EINVAL;
  if (!w->started)
    fo_window_reset(w, offset); /* coverage starts at the first record seen */
  if (w->tail - w->head == w->cap && grow(w) != 0)
    goto oom;
  wkey_t *k = NULL;
  if (frame != NULL) {
    uint32_t h = fo_map_hash(key, keylen);
    k = (wkey_t *)fo_map_get(&w->keys, key, keylen, h);
    if (k == NULL) {
      k = malloc(sizeof(*k) + keylen + 1);
      if (k == NULL)
        goto oom;
      memcpy(k->name, key, keylen);
      k->name[keylen] = '\0';
      k->ent.hash = h;
      k->ent.len = (uint32_t)keylen;
      k->ent.key = k->name;
      k->newest = NO_SEQ;
      k->refs = 0;
      if (fo_map_put(&w->keys, &k->ent) != 0) {
        free(k);
        goto oom;
      }
      charge(w, key_cost(keylen));
    }
  }
  went_t *e = at(w, w->tail);
  e->offset = offset;
  e->ts_ms = ts_ms;
  e->added_ms = now_ms;
  e->frame = frame != NULL ? fo_buf_ref(frame) : NULL;
  e->key = k;
  e->prev = NO_SEQ;
  if (k != NULL) {
    e->prev = k->newest;
    k->newest = w->tail;
    k->refs++;
  }
  w->tail++;
  w->last = offset;
  charge(w, entry_cost(frame));
  w->budget->entries++;
  fo_window_expire(w, now_ms);
  enforce_budget(w);
  return 0;
oom:
  fo_window_reset(w, offset + 1);
  return -ENOMEM;
}

/* The seq of the entry at offset, or NO_SEQ. */
static uint64_t find_offset(const fo_window_t *w, int64_t offset) {
  uint64_t lo = w->head, hi = w->tail;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    int64_t o = at(w, mid)->offset;
    if (o == offset)
      return mid;
    if (o < offset)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NO_SEQ;
}

int fo_window_since(const fo_window_t *w, const char *key, size_t keylen, int64_t since,
                    int64_t since_t_ms, int64_t end, size_t cap, fo_buf_t **out,
                    int64_t *out_offsets, size_t *n_out) {
  *n_out = 0;
  if (!w->started || end > w->last || since > w->last || since < w->covered_from - 1)
    return FO_WINDOW_NOT_COVERED;
  if (since >= 0 && since >= w->covered_from) {
    uint64_t s = find_offset(w, since);
    if (s == NO_SEQ || at(w, s)->ts_ms > since_t_ms)
      return FO_WINDOW_FOREIGN;
  }
  if (since >= end || keylen == 0 || keylen > UINT32_MAX)
    return FO_WINDOW_OK;
  const wkey_t *k = (const wkey_t *)fo_map_get(&w->keys, key, keylen, fo_map_hash(key, keylen));
  if (k == NULL)
    return FO_WINDOW_OK;
  size_t n = 0;
  /* Newest first; entries below head are evicted, hence <= since. */
  for (uint64_t s = k->newest; s != NO_SEQ && s >= w->head; s = at(w, s)->prev) {
    const went_t *e = at(w, s);
    if (e->offset <= since)
      break;
    if (e->offset > end)
      continue;
    if (n == cap)
      return FO_WINDOW_OVER_CAP;
    out[n] = e->frame;
    if (out_offsets != NULL)
      out_offsets[n] = e->offset;
    n++;
  }
  for (size_t i = 0; i < n / 2; i++) {
    fo_buf_t *b = out[i];
    out[i] = out[n - 1 - i];
    out[n - 1 - i] = b;
    if (out_offsets != NULL) {
      int64_t o = out_offsets[i];
      out_offsets[i] = out_offsets[n - 1 - i];
      out_offsets[n - 1 - i] = o;
    }
  }
  *n_out = n;
  return FO_WINDOW_OK;
}

int64_t fo_window_last(const fo_window_t *w) {
  return w->last;
}

int64_t fo_window_covered_from(const fo_window_t *w) {
  return w->covered_from;
}

size_t fo_window_count(const fo_window_t *w) {
  return (size_t)(w->tail - w->head);
}

uint64_t fo_window_bytes(const fo_window_t *w) {
  return w->bytes;
}

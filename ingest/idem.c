/* The Idempotency-Key cache: a request carrying a key already seen within
 * the window gets the first request's response again instead of producing a
 * second record; a request arriving while the first is still waiting for
 * Kafka waits for the same answer. Bounded by a number of keys and by the
 * bytes the entries hold (key, cached response, bookkeeping), so that large
 * cached replies cannot grow the process without limit; entries expire
 * `window` after they were created (oldest first). When over a bound, the
 * oldest finished entries go first; pending ones are never evicted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest_int.h"
#include "hash.h"

typedef struct waiter {
  struct waiter *next;
  fo_reply_t *reply;
} waiter_t;

struct fo_idem_entry {
  fo_idem_entry_t *hnext;       /* hash chain */
  fo_idem_entry_t *older, *newer; /* age list */
  uint32_t hash;
  uint32_t fingerprint;
  bool pending;
  uint64_t created_ms;
  int status;
  char *extra;   /* owned; extra header lines, or NULL */
  fo_buf_t *body; /* owned; the response body */
  waiter_t *waiters;
  size_t cost;    /* bytes charged to the cache for this entry */
  size_t keylen;
  char key[];
};

/* Allocator and bucket overhead charged per entry on top of what it holds. */
#define ENTRY_OVERHEAD 64

struct fo_idem {
  size_t max, count;
  size_t max_bytes, bytes;
  uint64_t window_ms;
  size_t nbuckets; /* a power of two */
  fo_idem_entry_t **buckets;
  fo_idem_entry_t *oldest, *newest;
};

int fo__idem_new(size_t max_keys, size_t max_bytes, uint64_t window_ms, fo_idem_t **out) {
  fo_idem_t *idem = calloc(1, sizeof(*idem));
  if (idem == NULL)
    return -ENOMEM;
  idem->max = max_keys;
  idem->max_bytes = max_bytes;
  idem->window_ms = window_ms;
  idem->nbuckets = 64;
  while (idem->nbuckets < max_keys && idem->nbuckets < (1u << 24))
    idem->nbuckets <<= 1;
  idem->buckets = calloc(idem->nbuckets, sizeof(*idem->buckets));
  if (idem->buckets == NULL) {
    free(idem);
    return -ENOMEM;
  }
  *out = idem;
  return 0;
}

static void entry_unlink(fo_idem_t *idem, fo_idem_entry_t *e) {
  fo_idem_entry_t **pp = &idem->buckets[e->hash & (idem->nbuckets - 1)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  if (e->older != NULL)
    e->older->newer = e->newer;
  else
    idem->oldest = e->newer;
  if (e->newer != NULL)
    e->newer->older = e->older;
  else
    idem->newest = e->older;
  idem->count--;
  idem->bytes -= e->cost;
}

static void entry_free(fo_idem_entry_t *e) {
  for (waiter_t *w = e->waiters, *next; w != NULL; w = next) {
    next = w->next;
    fo__reply_error(w->reply, 503, "shutting down", NULL);
    free(w);
  }
  free(e->extra);
  fo_buf_unref(e->body);
  free(e);
}

void fo__idem_free(fo_idem_t *idem) {
  if (idem == NULL)
    return;
  for (fo_idem_entry_t *e = idem->oldest, *next; e != NULL; e = next) {
    next = e->newer;
    entry_free(e);
  }
  free(idem->buckets);
  free(idem);
}

size_t fo__idem_size(const fo_idem_t *idem) { return idem->count; }

size_t fo__idem_bytes(const fo_idem_t *idem) { return idem->bytes; }

/* Pending entries make_room steps over at most, so that a cache full of
 * them costs a bounded walk per request (they end within the produce
 * deadline anyway). */
#define MAX_SKIP 64

/* Evicts the oldest finished entries (skipping pending ones, and `keep`)
 * until `need` more bytes fit and, when `key_slot`, one more key. Returns
 * false when that cannot be reached. */
static bool make_room(fo_idem_t *idem, size_t need, bool key_slot, const fo_idem_entry_t *keep) {
  fo_idem_entry_t *e = idem->oldest;
  int skipped = 0;
  while ((idem->bytes + need > idem->max_bytes || (key_slot && idem->count >= idem->max)) &&
         e != NULL && skipped <= MAX_SKIP) {
    fo_idem_entry_t *next = e->newer;
    if (!e->pending && e != keep) {
      entry_unlink(idem, e);
      entry_free(e);
    } else {
      skipped++;
    }
    e = next;
  }
  return idem->bytes + need <= idem->max_bytes && (!key_slot || idem->count < idem->max);
}

static void expire(fo_idem_t *idem, uint64_t now_ms) {
  while (idem->oldest != NULL && !idem->oldest->pending &&
         idem->oldest->created_ms + idem->window_ms <= now_ms) {
    fo_idem_entry_t *e = idem->oldest;
    entry_unlink(idem, e);
    entry_free(e);
  }
}

fo_idem_result_t fo__idem_begin(fo_idem_t *idem, uint64_t now_ms, const char *key, size_t keylen,
                                uint32_t fingerprint, fo_reply_t *reply,
                                fo_idem_entry_t **entry) {
  expire(idem, now_ms);
  uint32_t hash = fo_hash_private(key, keylen);
  for (fo_idem_entry_t *e = idem->buckets[hash & (idem->nbuckets - 1)]; e != NULL; e = e->hnext) {
    if (e->hash != hash || e->keylen != keylen || memcmp(e->key, key, keylen) != 0)
      continue;
    if (e->fingerprint != fingerprint)
      return FO_IDEM_MISMATCH;
    if (e->pending) {
      waiter_t *w = malloc(sizeof(*w));
      if (w == NULL) {
        fo__reply_error(reply, 503, "out of memory", NULL);
        return FO_IDEM_DONE;
      }
      w->reply = reply;
      w->next = e->waiters;
      e->waiters = w;
      return FO_IDEM_WAIT;
    }
    char extra[256];
    snprintf(extra, sizeof(extra), "%sIdempotent-Replayed: true\r\n",
             e->extra != NULL ? e->extra : "");
    fo__reply_send(reply, e->status, "application/json", extra,
                   e->body != NULL ? e->body->data : NULL, e->body != NULL ? e->body->len : 0);
    return FO_IDEM_DONE;
  }
  size_t cost = sizeof(fo_idem_entry_t) + keylen + ENTRY_OVERHEAD;
  if (!make_room(idem, cost, true, NULL))
    return FO_IDEM_FULL;
  fo_idem_entry_t *e = calloc(1, sizeof(*e) + keylen);
  if (e == NULL)
    return FO_IDEM_FULL;
  memcpy(e->key, key, keylen);
  e->keylen = keylen;
  e->cost = cost;
  e->hash = hash;
  e->fingerprint = fingerprint;
  e->pending = true;
  e->created_ms = now_ms;
  size_t b = hash & (idem->nbuckets - 1);
  e->hnext = idem->buckets[b];
  idem->buckets[b] = e;
  e->older = idem->newest;
  if (idem->newest != NULL)
    idem->newest->newer = e;
  else
    idem->oldest = e;
  idem->newest = e;
  idem->count++;
  idem->bytes += cost;
  *entry = e;
  return FO_IDEM_NEW;
}

void fo__idem_finish(fo_idem_t *idem, fo_idem_entry_t *e, uint64_t now_ms, int status,
                     const char *extra_headers, const void *body, size_t body_len, bool cache) {
  (void)now_ms;
  waiter_t *waiters = e->waiters;
  e->waiters = NULL;
  e->pending = false;
  for (waiter_t *w = waiters, *next; w != NULL; w = next) {
    next = w->next;
    fo__reply_send(w->reply, status, "application/json", extra_headers, body, body_len);
    free(w);
  }
  size_t held = (body_len > 0 ? sizeof(fo_buf_t) + body_len : 0) +
                (extra_headers != NULL ? strlen(extra_headers) + 1 : 0);
  if (cache && make_room(idem, held, false, e)) {
    e->status = status;
    e->body = body_len > 0 ? fo_buf_from(body, body_len) : NULL;
    e->extra = extra_headers != NULL ? strdup(extra_headers) : NULL;
    e->cost += held;
    idem->bytes += held;
    if ((body_len == 0 || e->body != NULL) && (extra_headers == NULL || e->extra != NULL))
      return;
  }
  entry_unlink(idem, e);
  entry_free(e);
}

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
#include "list.h"
#include "map.h"

typedef struct waiter {
  SLIST_ENTRY(waiter) link;
  fo_reply_t *reply;
} waiter_t;

SLIST_HEAD(waiters, waiter);

struct fo_idem_entry {
  fo_mapent_t ment;               /* in idem->map; ment.key == key */
  TAILQ_ENTRY(fo_idem_entry) age; /* oldest first */
  uint32_t fingerprint;
  bool pending;
  uint64_t created_ms;
  int status;
  char *extra;    /* owned; extra header lines, or NULL */
  fo_buf_t *body; /* owned; the response body */
  struct waiters waiters;
  size_t cost; /* bytes charged to the cache for this entry */
  size_t keylen;
  char key[];
};

/* Allocator and map-slot overhead charged per entry on top of what it holds. */
#define ENTRY_OVERHEAD 64

struct fo_idem {
  size_t max, count;
  size_t max_bytes, bytes;
  uint64_t window_ms;
  fo_map_t map; /* key -> entry */
  TAILQ_HEAD(, fo_idem_entry) ages;
};

int fo__idem_new(size_t max_keys, size_t max_bytes, uint64_t window_ms, fo_idem_t **out) {
  fo_idem_t *idem = calloc(1, sizeof(*idem));
  if (idem == NULL)
    return -ENOMEM;
  idem->max = max_keys;
  idem->max_bytes = max_bytes;
  idem->window_ms = window_ms;
  TAILQ_INIT(&idem->ages);
  *out = idem;
  return 0;
}

static void entry_unlink(fo_idem_t *idem, fo_idem_entry_t *e) {
  fo_map_del(&idem->map, &e->ment);
  TAILQ_REMOVE(&idem->ages, e, age);
  idem->count--;
  idem->bytes -= e->cost;
}

static void entry_free(fo_idem_entry_t *e) {
  waiter_t *w;
  while ((w = SLIST_FIRST(&e->waiters)) != NULL) {
    SLIST_REMOVE_HEAD(&e->waiters, link);
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
  fo_idem_entry_t *e, *next;
  TAILQ_FOREACH_SAFE(e, &idem->ages, age, next)
  entry_free(e);
  fo_map_free(&idem->map);
  free(idem);
}

size_t fo__idem_size(const fo_idem_t *idem) {
  return idem->count;
}

size_t fo__idem_bytes(const fo_idem_t *idem) {
  return idem->bytes;
}

/* Pending entries make_room steps over at most, so that a cache full of
 * them costs a bounded walk per request (they end within the produce
 * deadline anyway). */
#define MAX_SKIP 64

/* Evicts the oldest finished entries (skipping pending ones, and `keep`)
 * until `need` more bytes fit and, when `key_slot`, one more key. Returns
 * false when that cannot be reached. */
static bool make_room(fo_idem_t *idem, size_t need, bool key_slot, const fo_idem_entry_t *keep) {
  fo_idem_entry_t *e = TAILQ_FIRST(&idem->ages);
  int skipped = 0;
  while ((idem->bytes + need > idem->max_bytes || (key_slot && idem->count >= idem->max)) &&
         e != NULL && skipped <= MAX_SKIP) {
    fo_idem_entry_t *next = TAILQ_NEXT(e, age);
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
  fo_idem_entry_t *e;
  while ((e = TAILQ_FIRST(&idem->ages)) != NULL && !e->pending &&
         e->created_ms + idem->window_ms <= now_ms) {
    entry_unlink(idem, e);
    entry_free(e);
  }
}

fo_idem_result_t fo__idem_begin(fo_idem_t *idem, uint64_t now_ms, const char *key, size_t keylen,
                                uint32_t fingerprint, fo_reply_t *reply, fo_idem_entry_t **entry) {
  expire(idem, now_ms);
  uint32_t hash = fo_map_hash(key, keylen);
  fo_mapent_t *found = fo_map_get(&idem->map, key, keylen, hash);
  if (found != NULL) {
    fo_idem_entry_t *e = (fo_idem_entry_t *)found;
    if (e->fingerprint != fingerprint)
      return FO_IDEM_MISMATCH;
    if (e->pending) {
      waiter_t *w = malloc(sizeof(*w));
      if (w == NULL) {
        fo__reply_error(reply, 503, "out of memory", NULL);
        return FO_IDEM_DONE;
      }
      w->reply = reply;
      SLIST_INSERT_HEAD(&e->waiters, w, link);
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
  e->ment.hash = hash;
  e->ment.len = (uint32_t)keylen;
  e->ment.key = e->key;
  e->cost = cost;
  e->fingerprint = fingerprint;
  e->pending = true;
  e->created_ms = now_ms;
  SLIST_INIT(&e->waiters);
  if (fo_map_put(&idem->map, &e->ment) != 0) {
    free(e);
    return FO_IDEM_FULL;
  }
  TAILQ_INSERT_TAIL(&idem->ages, e, age);
  idem->count++;
  idem->bytes += cost;
  *entry = e;
  return FO_IDEM_NEW;
}

void fo__idem_finish(fo_idem_t *idem, fo_idem_entry_t *e, uint64_t now_ms, int status,
                     const char *extra_headers, const void *body, size_t body_len, bool cache) {
  (void)now_ms;
  struct waiters waiters = e->waiters;
  SLIST_INIT(&e->waiters);
  e->pending = false;
  waiter_t *w, *next;
  SLIST_FOREACH_SAFE(w, &waiters, link, next) {
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

/* The in-memory resume window of ONE partition this server consumes: the
 * already-encoded client frames of its last records, indexed by key (user
 * or room) and by offset, bounded by age and by a byte budget shared by
 * every window of the process. It answers "the frames of key K after offset
 * P up to E" when it has seen every record of that range, and says so when
 * it has not (the caller then re-reads Kafka). Not thread-safe: one loop. */
#ifndef FO_WINDOW_H
#define FO_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Shared by all windows of a process; zero it, set max_bytes, then create
 * windows on it. Read-only for everyone but this module (metrics). It must
 * outlive its windows. */
typedef struct fo_window_budget {
  uint64_t max_bytes;     /* total the windows may hold (a new entry may exceed it alone) */
  uint64_t bytes;         /* charged now: frames' allocations, keys, entries */
  uint64_t entries;       /* records held */
  uint64_t evictions;     /* records dropped by age or by budget (not by reset) */
  struct fo_window *head; /* windows on this budget (for eviction elsewhere) */
} fo_window_budget_t;

typedef struct fo_window fo_window_t;

enum {
  FO_WINDOW_OK = 0,
  FO_WINDOW_NOT_COVERED = 1, /* the window has not seen every record in (since, end] */
  FO_WINDOW_FOREIGN = 2,     /* `since` is not a record of this log (see fo_window_since) */
  FO_WINDOW_OVER_CAP = 3,    /* more than cap frames match */
};

/* A window that covers nothing until fo_window_reset or its first add.
 * max_age_ms: records inserted more than this long ago are dropped.
 * Returns NULL on OOM. */
fo_window_t *fo_window_new(fo_window_budget_t *budget, uint64_t max_age_ms);
/* Drops every entry (unrefs their frames) and frees the window. NULL ok. */
void fo_window_free(fo_window_t *w);

/* Drops everything; from now on the window has seen every record from
 * next_offset on (call on assign, seek, rebalance, consumer restart). */
void fo_window_reset(fo_window_t *w, int64_t next_offset);

/* Records the record at `offset` (> every offset added since the reset;
 * gaps are fine, Kafka offsets skip) with its timestamp. frame != NULL: the
 * window takes one reference to it (the caller keeps its own) and indexes
 * it under key[0..keylen) (keylen > 0). frame == NULL: a record that is no
 * one's message; it still advances coverage and still anchors positions
 * (its timestamp is checked), key ignored. Then evicts this window's
 * entries added more than max_age_ms before now_ms (insertion time, not
 * the record timestamp: producer clocks skew and timestamps are not
 * monotonic within a partition, while eviction from the front needs a
 * monotonic key so coverage only moves forward), and, while the budget is
 * over max_bytes, the oldest entry of all windows on it (never the one just
 * added). Returns 0; -EINVAL (offset not increasing, < 0 or INT64_MAX,
 * frame without key; window unchanged); -ENOMEM (the window is reset to
 * offset + 1: it never claims a range it cannot serve). */
int fo_window_add(fo_window_t *w, int64_t offset, int64_t ts_ms, const char *key, size_t keylen,
                  fo_buf_t *frame, uint64_t now_ms);

/* Evicts entries inserted more than max_age_ms before now_ms (a timer may
 * call it on an idle partition; fo_window_add does it too). */
void fo_window_expire(fo_window_t *w, uint64_t now_ms);

/* The frames of key with since < offset <= end, oldest first.
 *   FO_WINDOW_OK: out[0..*n_out) (and out_offsets[] when not NULL); the
 *     references stay the window's: take your own (fo_buf_ref) for any
 *     frame kept beyond the next fo_window_add/expire/reset.
 *   FO_WINDOW_NOT_COVERED: since < covered_from - 1, or end or since beyond
 *     the last offset seen (the window cannot vouch for that range).
 *   FO_WINDOW_FOREIGN: since >= 0 lies in the covered range and either the
 *     record at `since` has a timestamp > since_t_ms (a re-created topic) or
 *     there is no record at `since`. An offset in a gap names no record, so
 *     it cannot have come from this log. (A transaction's control record
 *     also takes an offset no consumer sees: positions must be made from
 *     offsets of delivered records, not from "high watermark - 1", when
 *     producers use transactions.) since == covered_from - 1 is not checked
 *     (its record is gone) and is served.
 *   FO_WINDOW_OVER_CAP: more than cap frames match (*n_out = 0).
 * Cost: O(log n) + the entries of key after since. */
int fo_window_since(const fo_window_t *w, const char *key, size_t keylen, int64_t since,
                    int64_t since_t_ms, int64_t end, size_t cap, fo_buf_t **out,
                    int64_t *out_offsets, size_t *n_out);

/* The last offset seen, or next_offset - 1 after a reset (INT64_MIN on a
 * window that was never reset nor added to). */
int64_t fo_window_last(const fo_window_t *w);
/* The first offset from which every record up to fo_window_last was seen
 * (INT64_MAX when the window covers nothing). */
int64_t fo_window_covered_from(const fo_window_t *w);
/* Records held and the bytes charged to the budget for them. */
size_t fo_window_count(const fo_window_t *w);
uint64_t fo_window_bytes(const fo_window_t *w);

#endif

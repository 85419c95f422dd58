/* The process's one Kafka replay reader (issue 9, "tier 2"): re-reads a
 * partition of fanout.users or fanout.rooms by offset to serve a resume.
 * One rd_kafka_t consumer without group membership (assign only, never
 * subscribes or commits; the group.id librdkafka requires is a unique dummy),
 * auto.offset.reset=error, fetch.wait.max.ms=10, run on its own thread that
 * blocks in librdkafka; results come back to the loop through one uv_async_t.
 *
 * Requests are coalesced: a round takes every request submitted before it
 * started, asks each partition's watermarks once, then scans each partition
 * once, from the smallest `since` of its requests to the largest end, every
 * record being handed to each request whose range and key it matches; the
 * scans of several partitions run together (one assign). Requests submitted
 * in one loop iteration start in the same round.
 *
 * Everything here is called on the loop thread. */
#ifndef FO_REPLAY_H
#define FO_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct fo_replay fo_replay_t;
typedef struct fo_replay_handle fo_replay_handle_t;

typedef enum {
  FO_REPLAY_OK = 0,
  /* since < the low watermark (history deleted; since == -1 needs the log to
   * start at 0), auto.offset.reset's error during the scan, or the first
   * matching record after since is older than max_age_ms. */
  FO_REPLAY_EXPIRED,
  /* since >= the high watermark (from the future), the record at since has
   * a timestamp > since_t_ms (a re-created topic), no record at since, or an
   * explicit end at or beyond the high watermark. */
  FO_REPLAY_FOREIGN,
  FO_REPLAY_OVER_CAP, /* more than cap matching records */
  FO_REPLAY_TOO_FAR,  /* end - since > max_scan */
  FO_REPLAY_ERROR,    /* a Kafka error, the round's timeout, or fo_replay_close */
  FO_REPLAY_NSTATUS
} fo_replay_status_t;

/* "ok", "expired", "foreign", "over_cap", "too_far", "error" (static). */
const char *fo_replay_status_name(int status);

typedef struct {
  char kind;         /* 'u': the users topic, 'r': the rooms topic */
  int32_t partition; /* >= 0 */
  /* The last offset the client has; replayed: since < offset <= end.
   * -1: from the first record (no anchor to check; EXPIRED unless the log
   *     starts at 0). -2: no replay, just answer the end (OK, no records).
   * Any other negative value is below every log start: EXPIRED. */
  int64_t since;
  int64_t since_t_ms; /* the record at since must have timestamp <= this */
  /* -1: the high watermark - 1 as seen by this request's round (asked after
   * the request was submitted); else an explicit last offset (the caller's
   * own consumer position). since >= end: OK with no records, no fetch
   * (since == end without even a watermark query). */
  int64_t end;
  const char *key;     /* only records with this key; NULL (keylen 0): every record */
  size_t keylen;       /* copied by fo_replay_submit */
  size_t cap;          /* at most this many matching records, else OVER_CAP */
  uint64_t max_scan;   /* end - since above this: TOO_FAR (0: no limit) */
  uint64_t max_age_ms; /* 0: no limit */
} fo_replay_req_t;

typedef struct {
  int64_t offset;
  int64_t t_ms; /* the record's timestamp */
  const char *key;
  size_t keylen;
  const void *value; /* the raw Kafka record value */
  size_t len;
} fo_replay_rec_t;

/* Called on the loop, exactly once per request unless it was cancelled.
 * status: fo_replay_status_t. end: the last offset covered (the request's
 * explicit end, or high watermark - 1; -1 when unknown, e.g. on ERROR or
 * when the partition is empty). end_t_ms: the timestamp of the record at
 * end when the scan read it, else the wall clock after the watermark query
 * (>= the timestamp of every record up to end, clocks permitting).
 * recs (n of them, in offset order; only with OK) and everything they point
 * to are valid during the call only. */
typedef void (*fo_replay_cb)(void *ud, int status, int64_t end, int64_t end_t_ms,
                             fo_replay_rec_t *recs, size_t n);

typedef struct {
  const char *bootstrap;
  const char *client_id;   /* e.g. "fanout-delivery-<server-id>-replay" */
  const char *kafka_opts;  /* the operator's "k=v,k=v" (--kafka-opts), may be NULL */
  const char *users_topic; /* kind 'u' */
  const char *rooms_topic; /* kind 'r' */
  int64_t timeout_ms;      /* a round's limit (<= 0: 5000); pending requests -> ERROR */
} fo_replay_opts_t;

/* Counters, written by the reader thread; copied by fo_replay_metrics. */
typedef struct {
  uint64_t rounds;
  uint64_t watermark_queries; /* one per partition per round */
  uint64_t scans;             /* partitions scanned (one per partition per round at most) */
  uint64_t records_scanned;
  uint64_t cancelled;
  uint64_t by_status[FO_REPLAY_NSTATUS];
} fo_replay_metrics_t;

/* Builds the consumer (no network yet) and starts the thread. opts' strings
 * are copied. Returns 0, or a negative errno with err filled (a bad Kafka
 * setting). */
int fo_replay_new(uv_loop_t *loop, const fo_replay_opts_t *opts, char *err, size_t errlen,
                  fo_replay_t **out);

/* Queues a request; `cb(ud, ...)` comes later on the loop (never from inside
 * this call). *h (may be NULL) is valid until the callback returns or
 * fo_replay_cancel. Returns 0, -EINVAL (kind not u/r, partition < 0, end < -1,
 * NULL key with keylen > 0, no cb), -ENOMEM,
 * or -ESHUTDOWN after fo_replay_close. */
int fo_replay_submit(fo_replay_t *r, const fo_replay_req_t *req, fo_replay_cb cb, void *ud,
                     fo_replay_handle_t **h);

/* The requester went away: no callback for h afterwards; the module frees
 * it (possibly later, when the reader thread has let go of it). */
void fo_replay_cancel(fo_replay_handle_t *h);

void fo_replay_metrics(const fo_replay_t *r, fo_replay_metrics_t *out);

/* Stops the thread (blocks until its current librdkafka call returns, at
 * most the round timeout), calls back every pending request not cancelled
 * with FO_REPLAY_ERROR (from inside this call), destroys the consumer and
 * frees r from its handles' close callbacks. r must not be used after. */
void fo_replay_close(fo_replay_t *r);

#endif

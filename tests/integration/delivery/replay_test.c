/* fanout-test-replay BOOTSTRAP test|bench [TOPIC-USERS TOPIC-ROOMS]
 * delivery/replay.c against a real broker process (started by
 * replay_test.py): produces keyed records with librdkafka to the project's
 * topics, then checks the replay reader's answers ("test"), or measures it
 * ("bench": submit-to-callback latency of a 100-record gap on an idle
 * handle, and resumes/s of 10,000 requests for 1,000 keys on one partition).
 * Keys carry the process id, so records of other tests on a shared broker
 * never match; exact watermark checks allow for their records too.
 * Prints "ok N checks" and exits 0, or "FAIL ..." and exits 1. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "kafka_uv.h"
#include "log.h"
#include "replay.h"

static const char *users = "fanout.users", *rooms = "fanout.rooms";
static rd_kafka_t *prod;
static uv_loop_t *loop;
static fo_replay_t *rp;
static int checks;

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    checks++;                                                                                      \
    if (!(cond)) {                                                                                 \
      printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                       \
      printf(__VA_ARGS__);                                                                         \
      printf("\n");                                                                                \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

/* ---- producing ----------------------------------------------------------- */

typedef struct {
  int64_t offset, t_ms;
  char key[64];
  char value[96];
} sent_t;

static sent_t *sent; /* the records of the current produce() */
static int nsent, nacked, nfailed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *ud) {
  (void)rk, (void)ud;
  sent_t *s = m->_private;
  if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    nfailed++;
    return;
  }
  s->offset = m->offset;
  nacked++;
}

/* Produces n records to (topic, partition), the i-th keyed keys[i % nkeys],
 * waits for every acknowledgement. Returns the array (owned by the caller). */
static sent_t *produce(const char *topic, int32_t partition, char keys[][64], int nkeys, int n) {
  sent = calloc((size_t)n, sizeof(*sent));
  nsent = n;
  nacked = nfailed = 0;
  for (int i = 0; i < n; i++) {
    snprintf(sent[i].key, sizeof(sent[i].key), "%s", keys[i % nkeys]);
    snprintf(sent[i].value, sizeof(sent[i].value), "v-%s-%d", keys[i % nkeys], i);
    /* Our own timestamp (CreateTime), known here whatever the broker's
     * delivery report carries. */
    sent[i].t_ms = (int64_t)fo_now_ms();
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                    RD_KAFKA_V_KEY(sent[i].key, strlen(sent[i].key)),
                                    RD_KAFKA_V_VALUE(sent[i].value, strlen(sent[i].value)),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_OPAQUE(&sent[i]), RD_KAFKA_V_TIMESTAMP(sent[i].t_ms),
                                    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(prod, 10);
    CHECK(err == RD_KAFKA_RESP_ERR_NO_ERROR, "produce: %s", rd_kafka_err2str(err));
  }
  rd_kafka_flush(prod, 30000);
  CHECK(nacked == n && nfailed == 0, "acked %d of %d, %d failed", nacked, n, nfailed);
  return sent;
}

static void watermarks(const char *topic, int32_t partition, int64_t *lo, int64_t *hi) {
  rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(prod, topic, partition, lo, hi, 10000);
  CHECK(err == RD_KAFKA_RESP_ERR_NO_ERROR, "watermarks: %s", rd_kafka_err2str(err));
}

/* ---- one replay ------------------------------------------------------------ */

typedef struct {
  bool called;
  int status;
  int64_t end, end_t_ms;
  size_t n;
  int64_t *offs;    /* n of them, malloc'd by on_replay */
  char (*vals)[96]; /* idem */
  uint64_t t_submit, t_done;
} result_t;

static size_t outstanding;

static void on_replay(void *ud, int status, int64_t end, int64_t end_t_ms, fo_replay_rec_t *recs,
                      size_t n) {
  result_t *res = ud;
  CHECK(!res->called, "called twice");
  res->called = true;
  res->status = status;
  res->end = end;
  res->end_t_ms = end_t_ms;
  res->n = n;
  res->t_done = uv_hrtime();
  free(res->offs);
  free(res->vals);
  res->offs = calloc(n + 1, sizeof(*res->offs));
  res->vals = calloc(n + 1, sizeof(*res->vals));
  CHECK(res->offs != NULL && res->vals != NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    res->offs[i] = recs[i].offset;
    snprintf(res->vals[i], sizeof(res->vals[i]), "%.*s", (int)recs[i].len,
             (const char *)recs[i].value);
  }
  outstanding--;
}

static fo_replay_req_t req(char kind, int32_t partition, int64_t since, int64_t since_t,
                           int64_t end, const char *key) {
  return (fo_replay_req_t){.kind = kind,
                           .partition = partition,
                           .since = since,
                           .since_t_ms = since_t,
                           .end = end,
                           .key = key,
                           .keylen = key != NULL ? strlen(key) : 0,
                           .cap = 1000,
                           .max_scan = 200000,
                           .max_age_ms = 0};
}

static fo_replay_handle_t *submit(const fo_replay_req_t *q, result_t *res) {
  free(res->offs);
  free(res->vals);
  memset(res, 0, sizeof(*res));
  fo_replay_handle_t *h = NULL;
  res->t_submit = uv_hrtime();
  int rc = fo_replay_submit(rp, q, on_replay, res, &h);
  CHECK(rc == 0, "submit: %d", rc);
  outstanding++;
  return h;
}

/* Runs the loop until every submitted request was answered (bounded). */
static void wait_all(void) {
  uint64_t deadline = uv_hrtime() + 30ull * 1000000000ull;
  while (outstanding > 0 && uv_hrtime() < deadline)
    uv_run(loop, UV_RUN_ONCE);
  CHECK(outstanding == 0, "%zu requests unanswered after 30 s", outstanding);
}

static void one(const fo_replay_req_t *q, result_t *res) {
  submit(q, res);
  wait_all();
}

static void onev(fo_replay_req_t q, result_t *res) {
  one(&q, res);
}

static fo_replay_handle_t *submitv(fo_replay_req_t q, result_t *res) {
  return submit(&q, res);
}

static void free_results(result_t *res, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(res[i].offs);
    free(res[i].vals);
  }
  free(res);
}

static fo_replay_metrics_t metrics(void) {
  fo_replay_metrics_t m;
  fo_replay_metrics(rp, &m);
  return m;
}

/* The records of `key` in s[0..n) with since < offset <= end, in order,
 * compared with res. */
static void expect_recs(const result_t *res, const sent_t *s, int n, const char *key, int64_t since,
                        int64_t end) {
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    if (strcmp(s[i].key, key) != 0 || s[i].offset <= since || s[i].offset > end)
      continue;
    CHECK(k < res->n, "key %s: only %zu records, expected more (offset %" PRId64 ")", key, res->n,
          s[i].offset);
    CHECK(res->offs[k] == s[i].offset && strcmp(res->vals[k], s[i].value) == 0,
          "key %s rec %zu: got %" PRId64 " %s, expected %" PRId64 " %s", key, k, res->offs[k],
          res->vals[k], s[i].offset, s[i].value);
    k++;
  }
  CHECK(k == res->n, "key %s: %zu records, expected %zu", key, res->n, k);
}

static int64_t now_ms(void) {
  return (int64_t)fo_now_ms();
}

/* ---- the checks ----------------------------------------------------------- */

static void run_tests(void) {
  char keys[3][64];
  for (int i = 0; i < 3; i++)
    snprintf(keys[i], sizeof(keys[i]), "rt-%d-%c", (int)getpid(), 'a' + i);
  const int32_t P = 1;
  sent_t *s = produce(users, P, keys, 3, 30);
  int64_t lo, hi_before, hi_after;
  watermarks(users, P, &lo, &hi_before);
  result_t *res = calloc(1, sizeof(*res));
  fo_replay_metrics_t m0, m1;

  /* Bad requests are refused at submit. */
  fo_replay_req_t bad = req('x', P, 0, 0, -1, NULL);
  CHECK(fo_replay_submit(rp, &bad, on_replay, res, NULL) == -EINVAL, "kind x accepted");
  bad = req('u', -1, 0, 0, -1, NULL);
  CHECK(fo_replay_submit(rp, &bad, on_replay, res, NULL) == -EINVAL, "partition -1 accepted");

  /* (1) A key's records after since, in order; end=-1 is hw-1 as seen by
   * the round, queried after the submit (other tests may add records). */
  int64_t since = s[4].offset, since_t = s[4].t_ms;
  m0 = metrics();
  onev(req('u', P, since, since_t, -1, keys[0]), res);
  watermarks(users, P, &lo, &hi_after);
  m1 = metrics();
  CHECK(res->status == FO_REPLAY_OK, "status %s", fo_replay_status_name(res->status));
  CHECK(res->end >= hi_before - 1 && res->end <= hi_after - 1,
        "end %" PRId64 " not hw-1 (%" PRId64 "..%" PRId64 ")", res->end, hi_before - 1,
        hi_after - 1);
  expect_recs(res, s, 30, keys[0], since, res->end);
  CHECK(res->n == 8, "%zu records of key a after s[4]", res->n);
  CHECK(m1.rounds == m0.rounds + 1 && m1.watermark_queries == m0.watermark_queries + 1 &&
            m1.scans == m0.scans + 1,
        "rounds %" PRIu64 " wm %" PRIu64 " scans %" PRIu64, m1.rounds - m0.rounds,
        m1.watermark_queries - m0.watermark_queries, m1.scans - m0.scans);
  printf("key replay: %zu records, end=%" PRId64 ", %" PRIu64 " scanned, %.2f ms\n", res->n,
         res->end, m1.records_scanned - m0.records_scanned,
         (double)(res->t_done - res->t_submit) / 1e6);

  /* (1b) An explicit end: up to it, and end_t_ms is that record's time. */
  onev(req('u', P, since, since_t, s[20].offset, keys[2]), res);
  CHECK(res->status == FO_REPLAY_OK && res->end == s[20].offset, "status %s end %" PRId64,
        fo_replay_status_name(res->status), res->end);
  CHECK(res->end_t_ms == s[20].t_ms, "end_t_ms %" PRId64 " != %" PRId64, res->end_t_ms, s[20].t_ms);
  expect_recs(res, s, 30, keys[2], since, s[20].offset);

  /* (2) since == end: OK, nothing, no round, no query, no fetch. */
  m0 = metrics();
  onev(req('u', P, s[7].offset, s[7].t_ms, s[7].offset, keys[0]), res);
  m1 = metrics();
  CHECK(res->status == FO_REPLAY_OK && res->n == 0 && res->end == s[7].offset, "status %s n %zu",
        fo_replay_status_name(res->status), res->n);
  CHECK(m1.rounds == m0.rounds && m1.watermark_queries == m0.watermark_queries &&
            m1.records_scanned == m0.records_scanned,
        "since == end made a round");

  /* (2b) since == -2: just the end. */
  onev(req('u', P, -2, 0, -1, keys[0]), res);
  CHECK(res->status == FO_REPLAY_OK && res->n == 0 && res->end >= s[29].offset,
        "since=-2: status %s end %" PRId64, fo_replay_status_name(res->status), res->end);

  /* (3) EXPIRED: below the low watermark. Neither broker here deletes
   * records on demand (the mock cannot; a real one only by retention), so
   * "below" is a negative offset other than -1/-2, which is below any log
   * start (0); the comparison is the same one (since < low watermark). */
  m0 = metrics();
  onev(req('u', P, -5, 0, -1, keys[0]), res);
  m1 = metrics();
  CHECK(res->status == FO_REPLAY_EXPIRED, "since=-5: status %s",
        fo_replay_status_name(res->status));
  CHECK(m1.scans == m0.scans, "expired needed a fetch");
  /* since == -1 (from the first record) with a log starting at 0: every
   * record of the key. */
  if (lo == 0) {
    onev(req('u', P, -1, 0, -1, keys[1]), res);
    CHECK(res->status == FO_REPLAY_OK, "since=-1: %s", fo_replay_status_name(res->status));
    expect_recs(res, s, 30, keys[1], -1, res->end);
    CHECK(res->n == 10, "since=-1: %zu", res->n);
  }
  /* The first missed record older than max_age_ms. */
  usleep(20000);
  fo_replay_req_t q = req('u', P, since, since_t, -1, keys[0]);
  q.max_age_ms = 5;
  one(&q, res);
  CHECK(res->status == FO_REPLAY_EXPIRED, "max_age: status %s", fo_replay_status_name(res->status));
  q.max_age_ms = 600000;
  one(&q, res);
  CHECK(res->status == FO_REPLAY_OK && res->n == 8, "max_age 10 min: status %s",
        fo_replay_status_name(res->status));

  /* (4) FOREIGN: from the future (no fetch), anchor newer than t, and an
   * explicit end beyond the log. */
  m0 = metrics();
  onev(req('u', P, hi_after + 100, now_ms(), -1, keys[0]), res);
  m1 = metrics();
  CHECK(res->status == FO_REPLAY_FOREIGN, "future: %s", fo_replay_status_name(res->status));
  CHECK(m1.scans == m0.scans, "future needed a fetch");
  onev(req('u', P, since, since_t - 1, -1, keys[0]), res);
  CHECK(res->status == FO_REPLAY_FOREIGN, "anchor t-1: %s", fo_replay_status_name(res->status));
  onev(req('u', P, since, since_t, hi_after + 1000, keys[0]), res);
  CHECK(res->status == FO_REPLAY_FOREIGN, "end beyond log: %s", fo_replay_status_name(res->status));

  /* (5) OVER_CAP: 8 records, cap 7 (cap 8 is fine); TOO_FAR. */
  q = req('u', P, since, since_t, s[29].offset, keys[0]);
  q.cap = 7;
  one(&q, res);
  CHECK(res->status == FO_REPLAY_OVER_CAP && res->n == 0, "cap 7: %s",
        fo_replay_status_name(res->status));
  q.cap = 8;
  one(&q, res);
  CHECK(res->status == FO_REPLAY_OK && res->n == 8, "cap 8: %s %zu",
        fo_replay_status_name(res->status), res->n);
  q.max_scan = (uint64_t)(s[29].offset - since - 1);
  one(&q, res);
  CHECK(res->status == FO_REPLAY_TOO_FAR, "max_scan: %s", fo_replay_status_name(res->status));

  /* (6) 200 concurrent requests on one partition, submitted in one loop
   * iteration: one round, one watermark query, one scan from the smallest
   * since; each gets exactly its records. */
  enum { NC = 200 };
  result_t *many = calloc(NC, sizeof(*many));
  m0 = metrics();
  for (int i = 0; i < NC; i++) {
    int from = i % 25; /* since = s[from] */
    submitv(req('u', P, s[from].offset, s[from].t_ms, s[29].offset, keys[i % 3]), &many[i]);
  }
  wait_all();
  m1 = metrics();
  for (int i = 0; i < NC; i++) {
    CHECK(many[i].status == FO_REPLAY_OK, "concurrent %d: %s", i,
          fo_replay_status_name(many[i].status));
    expect_recs(&many[i], s, 30, keys[i % 3], s[i % 25].offset, s[29].offset);
  }
  CHECK(m1.rounds - m0.rounds == 1 && m1.watermark_queries - m0.watermark_queries == 1 &&
            m1.scans - m0.scans == 1,
        "200 requests: %" PRIu64 " rounds, %" PRIu64 " queries, %" PRIu64 " scans",
        m1.rounds - m0.rounds, m1.watermark_queries - m0.watermark_queries, m1.scans - m0.scans);
  CHECK(m1.records_scanned - m0.records_scanned == 30,
        "200 requests scanned %" PRIu64 " records, not the 30 from the smallest since",
        m1.records_scanned - m0.records_scanned);
  printf("200 concurrent: 1 round, 1 watermark query, 1 scan of %" PRIu64 " records\n",
         m1.records_scanned - m0.records_scanned);

  /* (7) Several partitions in one round: one scan each, together. */
  sent_t *sp[4];
  char pk[1][64];
  for (int p = 0; p < 4; p++) {
    snprintf(pk[0], sizeof(pk[0]), "rt-%d-p%d", (int)getpid(), p);
    sp[p] = produce(rooms, p, pk, 1, 5);
  }
  m0 = metrics();
  for (int p = 0; p < 4; p++)
    submitv(req('r', p, sp[p][0].offset, sp[p][0].t_ms, sp[p][4].offset, sp[p][0].key), &many[p]);
  wait_all();
  m1 = metrics();
  for (int p = 0; p < 4; p++) {
    CHECK(many[p].status == FO_REPLAY_OK, "rooms p%d: %s", p,
          fo_replay_status_name(many[p].status));
    expect_recs(&many[p], sp[p], 5, sp[p][0].key, sp[p][0].offset, sp[p][4].offset);
    CHECK(many[p].n == 4, "rooms p%d: %zu", p, many[p].n);
    free(sp[p]);
  }
  CHECK(m1.rounds - m0.rounds == 1 && m1.scans - m0.scans == 4,
        "4 partitions: %" PRIu64 " rounds %" PRIu64 " scans", m1.rounds - m0.rounds,
        m1.scans - m0.scans);

  /* (8) Cancel before the callback: never called; the other one is. */
  m0 = metrics();
  result_t *cres = &many[10];
  fo_replay_handle_t *h = submitv(req('u', P, since, since_t, -1, keys[0]), cres);
  fo_replay_cancel(h);
  outstanding--; /* never answered */
  onev(req('u', P, since, since_t, -1, keys[1]), res);
  for (int i = 0; i < 20; i++)
    uv_run(loop, UV_RUN_NOWAIT);
  m1 = metrics();
  CHECK(!cres->called, "cancelled request called back");
  CHECK(res->status == FO_REPLAY_OK, "after cancel: %s", fo_replay_status_name(res->status));
  CHECK(m1.cancelled - m0.cancelled == 1, "cancelled %" PRIu64, m1.cancelled - m0.cancelled);
  /* Cancelled while in the reader's round: also never called back. */
  h = submitv(req('u', P, since, since_t, -1, keys[0]), cres);
  /* The idle hands it to the reader; the loop then stays out of the way
   * (no call back can run) until the reader's round took it. */
  uint64_t rounds0 = metrics().rounds;
  uv_run(loop, UV_RUN_NOWAIT);
  for (int i = 0; i < 5000 && metrics().rounds == rounds0; i++)
    usleep(1000);
  CHECK(metrics().rounds > rounds0 && !cres->called, "the reader did not take the request");
  fo_replay_cancel(h);
  outstanding--;
  onev(req('u', P, since, since_t, -1, keys[1]), res);
  uint64_t deadline = uv_hrtime() + 5000000000ull;
  while (metrics().cancelled - m0.cancelled < 2 && uv_hrtime() < deadline)
    uv_run(loop, UV_RUN_ONCE);
  CHECK(!cres->called && metrics().cancelled - m0.cancelled == 2, "second cancel");

  /* (9) Close with a request pending: called back with ERROR. */
  submitv(req('u', P, since, since_t, -1, keys[0]), cres);
  fo_replay_close(rp);
  CHECK(cres->called && cres->status == FO_REPLAY_ERROR, "close: called %d status %s", cres->called,
        fo_replay_status_name(cres->status));
  rp = NULL;
  free_results(many, NC);
  free_results(res, 1);
  free(s);
}

/* ---- figures ---------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void run_bench(void) {
  /* (a) Latency of a 100-record gap on an idle handle: 100 records of one
   * key on partition 2, then 100 times: submit since = the record before
   * them, end = -1, wait for the callback, stay idle 20 ms. */
  char key[1][64];
  snprintf(key[0], sizeof(key[0]), "rb-%d-lat", (int)getpid());
  const int32_t P = 2;
  sent_t *s = produce(users, P, key, 1, 101);
  result_t *res = calloc(1, sizeof(*res));
  enum { RUNS = 100 };
  uint64_t lat[RUNS];
  onev(req('u', P, s[0].offset, s[0].t_ms, -1, key[0]), res);
  printf("bench first replay after start (not counted): %.2f ms\n",
         (double)(res->t_done - res->t_submit) / 1e6);
  for (int i = 0; i < RUNS; i++) {
    usleep(20000);
    onev(req('u', P, s[0].offset, s[0].t_ms, -1, key[0]), res);
    CHECK(res->status == FO_REPLAY_OK && res->n == 100, "latency run %d: %s %zu", i,
          fo_replay_status_name(res->status), res->n);
    lat[i] = res->t_done - res->t_submit;
  }
  qsort(lat, RUNS, sizeof(lat[0]), cmp_u64);
  printf("bench latency: 100-record gap, idle handle, %d runs: p50=%.2f ms p99=%.2f ms "
         "min=%.2f ms max=%.2f ms\n",
         RUNS, (double)lat[RUNS / 2] / 1e6, (double)lat[RUNS * 99 / 100] / 1e6,
         (double)lat[0] / 1e6, (double)lat[RUNS - 1] / 1e6);
  free(s);

  /* (b) 10,000 requests for 1,000 keys on one partition at once: 10
   * records per key (10,000 records), each key asked 10 times from
   * different positions. */
  enum { NKEYS = 1000, NREQ = 10000 };
  static char keys[NKEYS][64];
  for (int k = 0; k < NKEYS; k++)
    snprintf(keys[k], sizeof(keys[k]), "rb-%d-k%d", (int)getpid(), k);
  const int32_t Q = 3;
  s = produce(users, Q, keys, NKEYS, NREQ);
  result_t *many = calloc(NREQ, sizeof(*many));
  fo_replay_metrics_t m0 = metrics();
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < NREQ; i++) {
    int k = i % NKEYS, j = i / NKEYS; /* since = the key's j-th record - 1 */
    int64_t since = s[j * NKEYS + k].offset - 1;
    fo_replay_req_t q = req('u', Q, since, now_ms(), -1, keys[k]);
    submit(&q, &many[i]);
  }
  wait_all();
  uint64_t t1 = uv_hrtime();
  fo_replay_metrics_t m1 = metrics();
  size_t total = 0;
  for (int i = 0; i < NREQ; i++) {
    CHECK(many[i].status == FO_REPLAY_OK && many[i].n == (size_t)(10 - i / NKEYS),
          "req %d: %s n=%zu", i, fo_replay_status_name(many[i].status), many[i].n);
    total += many[i].n;
  }
  double secs = (double)(t1 - t0) / 1e9;
  printf("bench mass: %d requests, %d keys, 1 partition: %.1f ms, %.0f resumes/s, %zu records "
         "replayed; %" PRIu64 " rounds, %" PRIu64 " watermark queries, %" PRIu64 " scans, %" PRIu64
         " records scanned\n",
         NREQ, NKEYS, secs * 1e3, NREQ / secs, total, m1.rounds - m0.rounds,
         m1.watermark_queries - m0.watermark_queries, m1.scans - m0.scans,
         m1.records_scanned - m0.records_scanned);
  free(s);

  /* (c) One hot key: 10,000 members of one room resume it at once, 50
   * records missed each. */
  char room[1][64];
  snprintf(room[0], sizeof(room[0]), "rb-%d-room", (int)getpid());
  s = produce(rooms, 0, room, 1, 51);
  m0 = metrics();
  t0 = uv_hrtime();
  for (int i = 0; i < NREQ; i++)
    submitv(req('r', 0, s[0].offset, s[0].t_ms, s[50].offset, room[0]), &many[i]);
  wait_all();
  t1 = uv_hrtime();
  m1 = metrics();
  for (int i = 0; i < NREQ; i++)
    CHECK(many[i].status == FO_REPLAY_OK && many[i].n == 50, "room req %d: %s n=%zu", i,
          fo_replay_status_name(many[i].status), many[i].n);
  secs = (double)(t1 - t0) / 1e9;
  printf("bench hot room: %d requests for one key, 50 records each: %.1f ms, %.0f resumes/s; "
         "%" PRIu64 " rounds, %" PRIu64 " records scanned\n",
         NREQ, secs * 1e3, NREQ / secs, m1.rounds - m0.rounds,
         m1.records_scanned - m0.records_scanned);
  free_results(many, NREQ);
  free_results(res, 1);
  free(s);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fanout-test-replay BOOTSTRAP test|bench [USERS ROOMS]\n");
    return 2;
  }
  if (argc >= 5) {
    users = argv[3];
    rooms = argv[4];
  }
  char err[512];
  rd_kafka_conf_t *conf =
      fo_kafka_conf_new(FO_KAFKA_PRODUCER, argv[1], "replay-test", NULL, err, sizeof(err));
  CHECK(conf != NULL, "%s", err);
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  prod = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  CHECK(prod != NULL, "%s", err);
  if (getenv("REPLAY_DEBUG") != NULL)
    fo_log_set_level(FO_LOG_LVL_DEBUG);
  loop = uv_default_loop();
  fo_replay_opts_t o = {.bootstrap = argv[1],
                        .client_id = "replay-test",
                        .kafka_opts = getenv("REPLAY_KAFKA_OPTS"),
                        .users_topic = users,
                        .rooms_topic = rooms,
                        .timeout_ms = 10000};
  int rc = fo_replay_new(loop, &o, err, sizeof(err), &rp);
  CHECK(rc == 0, "fo_replay_new: %s", err);
  if (strcmp(argv[2], "bench") == 0)
    run_bench();
  else
    run_tests();
  if (rp != NULL)
    fo_replay_close(rp);
  uv_run(loop, UV_RUN_DEFAULT);
  rd_kafka_destroy(prod);
  printf("ok %d checks\n", checks);
  return 0;
}

/* Shared internals of fanout-ingest: the configuration, the per-process
 * context and the interfaces between its files. Nothing outside ingest/
 * (and its unit tests) includes this.
 *
 *   main.c      config table, start-up, signals, shutdown
 *   server.c    HTTP/1.1 connections (keep-alive, pipelining, limits, timeouts),
 *               server.h; the reply slot handlers answer, reply.h
 *   api.c       routes -> handlers, produce deadlines (the server's handler)
 *   message.c   {user|room, data} validation and the envelope, message.h
 *   auth.c      API keys, compared in constant time
 *   idem.c      Idempotency-Key cache
 *   producer.c  the Kafka producer (idempotent, acks=all, delivery reports)
 *   intake.c    consumer group on fanout.intake -> produce -> store offsets
 *   presence.c  GET /v1/presence from the Redis registry */
#ifndef FO_INGEST_INT_H
#define FO_INGEST_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "http.h"
#include "id.h"
#include "metrics.h"
#include "reply.h"
#include "server.h"

/* ---- configuration (main.c owns the table) ------------------------------ */

typedef struct fo_ingest_cfg {
  fo_addr_t listen;
  fo_addrs_t redis;     /* the Redis nodes, in order (schemas/redis-shards.md) */
  char *redis_password; /* "" = no AUTH */
  char *redis_user;     /* "" = default user */
  char *kafka;
  char *api_keys;
  char *log_level;
  char *redis_prefix;
  int64_t max_body_bytes;
  int64_t max_header_bytes;
  int64_t max_connections;
  int64_t max_pipeline;
  int64_t read_timeout_ms;
  int64_t idle_timeout_ms;
  int64_t produce_timeout_ms;
  int64_t retry_after_s;
  int64_t batch_max_items;
  int64_t idempotency_window_s;
  int64_t idempotency_max_keys;
  int64_t idempotency_max_bytes;
  char *topic_users;
  char *topic_rooms;
  char *topic_intake;
  char *topic_dlq;
  bool intake;
  char *intake_group;
  int64_t intake_max_bytes;
  int64_t intake_max_inflight;
  int64_t intake_session_timeout_ms;
  int64_t linger_ms;
  int64_t batch_num_messages;
  int64_t batch_size_bytes;
  int64_t queue_max_messages;
  int64_t queue_max_kbytes;
  int64_t metadata_refresh_ms;
  int64_t stats_interval_ms;
  char *kafka_options;
  int64_t kafka_fetch_wait_ms; /* the intake consumer's fetch.wait.max.ms */
  int64_t redis_timeout_ms;
  int64_t shutdown_timeout_ms;
  bool reuseport;
} fo_ingest_cfg_t;

/* ---- the per-process context ------------------------------------------- */

typedef struct fo_server fo_server_t;
typedef struct fo_producer fo_producer_t;
typedef struct fo_intake fo_intake_t;
typedef struct fo_presence fo_presence_t;
typedef struct fo_idem fo_idem_t;
typedef struct fo_auth fo_auth_t;
typedef struct fo_api fo_api_t;

typedef struct fo_ingest {
  uv_loop_t *loop;
  const fo_ingest_cfg_t *cfg; /* read-only after start-up */
  fo_metrics_t *metrics;
  fo_id_gen_t idgen;
  fo_server_t *server;
  fo_producer_t *producer;
  fo_intake_t *intake;     /* NULL when --intake=false */
  fo_presence_t *presence; /* NULL when no Redis is configured */
  fo_idem_t *idem;         /* NULL when the window is 0 */
  fo_auth_t *auth;
  fo_api_t *api;
  bool stopping; /* SIGTERM/SIGINT seen */
} fo_ingest_t;

/* ---- api.c: routing ----------------------------------------------------- */

int fo__api_new(fo_ingest_t *ing, fo_api_t **out);
/* Stops the deadline timer (closing it); memory goes in fo__api_free. */
void fo__api_close(fo_api_t *api);
void fo__api_free(fo_api_t *api);
/* The request handler given to the HTTP server (ud = the fo_ingest_t). */
extern const fo_server_handler_t fo__api_handler;
/* Jobs still waiting for Kafka. */
size_t fo__api_pending(const fo_api_t *api);

/* ---- auth.c ------------------------------------------------------------- */

/* Parses "K1,K2". Returns 0 or -ENOMEM; *out is set even with no keys. */
int fo__auth_new(const char *keys_csv, fo_auth_t **out);
void fo__auth_free(fo_auth_t *auth);
size_t fo__auth_count(const fo_auth_t *auth);
/* Returns the index of the matching key (>= 0) or -1. Takes the same time
 * whatever the token is and whichever key (if any) matches. */
int fo__auth_check(const fo_auth_t *auth, const char *token, size_t len);
/* fo__auth_check with a per-connection memo of the last key accepted there,
 * kept in *slot (the server's per-connection slot; NULL: no memo), so that a
 * keep-alive client's key is not hashed again on every request. Comparing
 * with a token this same client already proved valid leaks nothing. The
 * server frees the memo with fo__auth_memo_free. */
int fo__auth_check_memo(const fo_auth_t *auth, void **slot, const char *token, size_t len);
void fo__auth_memo_free(void *memo);

/* ---- idem.c: Idempotency-Key cache --------------------------------------- */

typedef struct fo_idem_entry fo_idem_entry_t;
typedef enum {
  FO_IDEM_NEW = 0,  /* *entry created (pending): the caller runs the request and
                        must call fo__idem_finish(*entry, ...) */
  FO_IDEM_DONE,     /* answered from the cache: the reply has been sent */
  FO_IDEM_WAIT,     /* same request in flight: the reply will be sent when it ends */
  FO_IDEM_MISMATCH, /* key reused with another request: nothing sent */
  FO_IDEM_FULL,     /* cache full of pending entries: run without caching */
} fo_idem_result_t;

/* At most max_keys entries holding at most max_bytes (keys, cached bodies
 * and bookkeeping). */
int fo__idem_new(size_t max_keys, size_t max_bytes, uint64_t window_ms, fo_idem_t **out);
void fo__idem_free(fo_idem_t *idem);
/* `key` scopes the entry (caller includes API key and route); `fingerprint`
 * identifies the request body. Takes nothing from the caller; on FO_IDEM_DONE
 * and FO_IDEM_WAIT it takes the reply. */
fo_idem_result_t fo__idem_begin(fo_idem_t *idem, uint64_t now_ms, const char *key, size_t keylen,
                                uint32_t fingerprint, fo_reply_t *reply, fo_idem_entry_t **entry);
/* Ends a pending entry: replies to its waiters with the same response and
 * keeps it for the window when `cache` (else forgets it). It is forgotten
 * too when it cannot fit the byte budget even after evicting finished
 * entries. */
void fo__idem_finish(fo_idem_t *idem, fo_idem_entry_t *entry, uint64_t now_ms, int status,
                     const char *extra_headers, const void *body, size_t body_len, bool cache);
size_t fo__idem_size(const fo_idem_t *idem);
/* Bytes charged to the cache (<= max_bytes). */
size_t fo__idem_bytes(const fo_idem_t *idem);

/* ---- producer.c ---------------------------------------------------------- */

typedef enum {
  FO_TOPIC_USERS = 0,
  FO_TOPIC_ROOMS = 1,
  FO_TOPIC_DLQ = 2,
  FO_TOPIC_COUNT
} fo_topic_t;

typedef struct fo_prod_req fo_prod_req_t;
/* Called exactly once per accepted record, from the delivery report (or a
 * purge at exit): err is RD_KAFKA_RESP_ERR_NO_ERROR when Kafka has it. */
typedef void (*fo_prod_done_cb)(fo_prod_req_t *preq, rd_kafka_resp_err_t err, int32_t partition,
                                int64_t offset);
/* Embed first in the caller's struct; it must stay alive until done runs. */
struct fo_prod_req {
  fo_prod_done_cb done;
};

int fo__producer_new(fo_ingest_t *ing, fo_producer_t **out, char *err, size_t errlen);
/* Produces one record (key and value copied). FO_TOPIC_USERS/ROOMS are
 * partitioned with fo_partition_of_key(key); the DLQ with librdkafka's
 * default. `hdrs` is taken on success (left to the caller on error).
 * Returns NO_ERROR (then preq->done will run), or the error with nothing
 * queued: __QUEUE_FULL, MSG_SIZE_TOO_LARGE, __FATAL, ... */
rd_kafka_resp_err_t fo__producer_send(fo_producer_t *prod, fo_topic_t topic, const void *key,
                                      size_t keylen, const void *val, size_t vallen,
                                      rd_kafka_headers_t *hdrs, fo_prod_req_t *preq);
/* Records produced and not yet reported. */
int fo__producer_outq(const fo_producer_t *prod);
/* True once a broker is up (from statistics / deliveries), false while all
 * are down or after a fatal error. */
bool fo__producer_ready(const fo_producer_t *prod);
/* True after a fatal error (e.g. the idempotent producer lost its sequence):
 * the producer cannot recover; /healthz then fails so the process is restarted. */
bool fo__producer_fatal(const fo_producer_t *prod);
/* Stops watching the event queue. After uv_run returns, fo__producer_free
 * purges what is left (done runs with __PURGE_*) and destroys the handle. */
void fo__producer_close(fo_producer_t *prod);
void fo__producer_free(fo_producer_t *prod);

/* ---- intake.c ------------------------------------------------------------ */

int fo__intake_new(fo_ingest_t *ing, fo_intake_t **out, char *err, size_t errlen);
/* Stops fetching new records (in-flight ones still complete). */
void fo__intake_stop(fo_intake_t *in);
/* Records taken from the intake topic whose produce is not yet acknowledged. */
size_t fo__intake_inflight(const fo_intake_t *in);
void fo__intake_close(fo_intake_t *in);
/* After uv_run: closes the consumer (commits stored offsets) and frees. */
void fo__intake_free(fo_intake_t *in);

/* ---- presence.c ---------------------------------------------------------- */

int fo__presence_new(fo_ingest_t *ing, fo_presence_t **out);
/* Answers reply with {"user":..,"online":..,"connections":N} or 503. */
void fo__presence_get(fo_presence_t *pr, const char *user, size_t user_len, fo_reply_t *reply);
bool fo__presence_connected(const fo_presence_t *pr);
/* Appends the Redis nodes that are down as JSON array items
 * ({"node":I,"addr":"HOST:PORT"}, comma-separated) to out. */
void fo__presence_down_nodes(const fo_presence_t *pr, fo_sb_t *out);
void fo__presence_close(fo_presence_t *pr);

#endif

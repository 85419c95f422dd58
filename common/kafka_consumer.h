/* A Kafka consumer-group member on the libuv loop, built the same way by
 * every service: the conf (bootstrap, group, session timeout with
 * heartbeat = session/6 (at least 100 ms), our settings, then the
 * operator's extra options, whose values never reach an error message),
 * the subscription, and the rebalance handling for both protocols (EAGER:
 * assign / unassign everything; COOPERATIVE: incremental assign / unassign).
 * Events are served on the loop through kafka_uv, and the queue is polled
 * at least every max.poll.interval.ms / 4 even when nothing arrives, so a
 * quiet topic does not take the consumer out of its group. Offsets are stored by the
 * owner (enable.auto.offset.store=false; auto-commit commits what was
 * stored), e.g. once a record's work is done. */
#ifndef FO_KAFKA_CONSUMER_H
#define FO_KAFKA_CONSUMER_H

#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>
#include <uv.h>

typedef struct fo_kafka_consumer fo_kafka_consumer_t;

typedef struct {
  const char *bootstrap;
  const char *client_id;
  const char *group;
  int64_t session_timeout_ms;
  char *const *settings;     /* our own "k=v" items, NULL-terminated, may be NULL */
  const char *extra;         /* the operator's "k=v,k=v" list (win over ours), or NULL */
  const char *const *topics; /* to subscribe to, NULL-terminated */
  int batch;                 /* events served per loop iteration (<= 0: 256) */
  const char *log_mod;       /* log module of its lines, e.g. "intake" */
} fo_kafka_consumer_opts_t;

/* Called on the loop. `parts` are valid during the call only. */
typedef struct {
  /* A record (never an error: those are logged here). It is destroyed after
   * the call: copy what must outlive it. */
  void (*on_message)(void *ud, const rd_kafka_message_t *msg);
  /* Optional: `parts` were just assigned (fetching starts unpaused). */
  void (*on_assign)(void *ud, const rd_kafka_topic_partition_list_t *parts);
  /* Optional: `parts` are being taken away (incremental: only these; else
   * the whole assignment). Return true to give them up now, or false to
   * defer until the owner calls fo_kafka_consumer_revoke_done() (e.g. when
   * in-flight records are done and their offsets stored); the group waits
   * meanwhile, up to max.poll.interval.ms. */
  bool (*on_revoke)(void *ud, const rd_kafka_topic_partition_list_t *parts, bool incremental);
  /* Optional: an error was reported (and logged here): a failed fetch, an
   * error event, a commit that failed; for the owner's error counter. */
  void (*on_error)(void *ud, rd_kafka_resp_err_t err);
} fo_kafka_consumer_cbs_t;

/* Builds, subscribes and starts serving events. cbs is copied. Returns 0,
 * or a negative errno with err filled (a bad setting, a failed subscribe). */
int fo_kafka_consumer_new(uv_loop_t *loop, const fo_kafka_consumer_opts_t *opts,
                          const fo_kafka_consumer_cbs_t *cbs, void *ud, char *err, size_t errlen,
                          fo_kafka_consumer_t **out);
/* Completes a deferred revoke (no-op when none is pending). */
void fo_kafka_consumer_revoke_done(fo_kafka_consumer_t *kc);
/* Pauses or resumes fetching from the whole current assignment (a resume
 * also serves what was queued meanwhile at once). */
void fo_kafka_consumer_pause(fo_kafka_consumer_t *kc, bool pause);
/* Stores next_offset (the offset after the last record done) for commit.
 * Returns librdkafka's error (e.g. when the partition is no longer ours). */
rd_kafka_resp_err_t fo_kafka_consumer_store(fo_kafka_consumer_t *kc, const char *topic,
                                            int32_t partition, int64_t next_offset);
/* The handle, for what this module does not wrap (metadata, watermarks,
 * an asynchronous close). Owned by kc. */
rd_kafka_t *fo_kafka_consumer_rk(fo_kafka_consumer_t *kc);
/* Starts leaving the group without blocking the loop (a drain): the
 * revoke comes through on_revoke as usual and the stored offsets are
 * committed; poll fo_kafka_consumer_closed() for the end. Returns 0, or a
 * negative errno (logged) when librdkafka refused: nothing to wait for. */
int fo_kafka_consumer_close_start(fo_kafka_consumer_t *kc);
/* True once the close started above is complete (or never can be). */
bool fo_kafka_consumer_closed(fo_kafka_consumer_t *kc);
/* Stops serving events (closes the loop handles); call before uv_run ends. */
void fo_kafka_consumer_close(fo_kafka_consumer_t *kc);
/* After the loop: leaves the group (blocking; commits stored offsets)
 * unless fo_kafka_consumer_close_start did, destroys the handle and frees
 * kc. */
void fo_kafka_consumer_free(fo_kafka_consumer_t *kc);

#endif

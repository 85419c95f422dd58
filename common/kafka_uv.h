/* librdkafka on the libuv loop. A queue's IO event (rd_kafka_queue_io_event_enable)
 * writes to a non-blocking pipe when the queue becomes non-empty; a uv_poll_t
 * watches the pipe and the queue is drained with rd_kafka_queue_poll(q, 0).
 * Nothing here blocks the loop. Use the event API: set the event types on the
 * conf with rd_kafka_conf_set_events() before rd_kafka_new(), and do not set
 * dr_msg_cb / rebalance_cb / error_cb callbacks. */
#ifndef FO_KAFKA_UV_H
#define FO_KAFKA_UV_H

#include <librdkafka/rdkafka.h>
#include <uv.h>

typedef struct fo_kafka_uv fo_kafka_uv_t;

/* Called for every event taken off the queue. The event is destroyed by the
 * glue after the callback returns (so are FETCH messages in it): copy what
 * must outlive the callback. */
typedef void (*fo_kafka_uv_event_cb)(rd_kafka_event_t *ev, void *ud);

/* Starts watching q (borrowed: the caller keeps and later destroys it, after
 * fo_kafka_uv_close). At most `batch` events are served per loop iteration;
 * the rest on the next one, so a busy topic cannot starve sockets.
 * Returns 0 or a negative errno with *out untouched. */
int fo_kafka_uv_start(uv_loop_t *loop, rd_kafka_queue_t *q, int batch, fo_kafka_uv_event_cb cb,
                      void *ud, fo_kafka_uv_t **out);
/* Stops delivering events (even from inside the callback), disables the IO
 * event and frees the watcher from its close callbacks. */
void fo_kafka_uv_close(fo_kafka_uv_t *kuv);
/* Serves events now (e.g. after resuming partitions). */
void fo_kafka_uv_kick(fo_kafka_uv_t *kuv);
/* Also serves the queue every period_ms (0: never, the default), empty or
 * not. A group consumer needs it: librdkafka counts the time since the
 * application last polled, and a consumer whose topic stays quiet for
 * max.poll.interval.ms would otherwise never poll and be taken out of its
 * group (a rebalance of everyone, every 5 minutes by default). */
void fo_kafka_uv_keepalive(fo_kafka_uv_t *kuv, uint64_t period_ms);

typedef enum { FO_KAFKA_PRODUCER, FO_KAFKA_CONSUMER } fo_kafka_role_t;

/* Builds a conf with bootstrap.servers = bootstrap, client.id = client_id,
 * librdkafka's logs routed to ours (mod=kafka), the role's low-latency
 * defaults (producer: linger.ms=1, acks=all, enable.idempotence=true;
 * consumer: enable.auto.offset.store=false,
 * partition.assignment.strategy=range, session.timeout.ms=6000) and then each
 * "key=value" of `overrides` (NULL-terminated, may be NULL), which win.
 * Returns NULL with err filled on a bad setting. */
rd_kafka_conf_t *fo_kafka_conf_new(fo_kafka_role_t role, const char *bootstrap,
                                   const char *client_id, char *const *overrides, char *err,
                                   size_t errlen);

#endif

/* Streams, positions and resume (stream.c, schemas/positions.md): the
 * welcome and joined positions, `since` on connect and on join, the seam
 * between a replay and live messages. Sits between the connection layer
 * and the hub/router: conn events come in through server.c's wiring, live
 * frames pass through fo__stream_send_*() when a connection has stream
 * state, records of the partitions this server consumes feed the windows.
 * Replays come from the in-memory window (window.c) or from Kafka
 * (replay.c). */
#ifndef FO_STREAM_H
#define FO_STREAM_H

#include "delivery_int.h"
#include "pos.h"

typedef struct fo_streams fo_streams_t;

/* Stream kinds: the user stream (users topic) and room streams. */
enum { FO_STREAM_USER = 0, FO_STREAM_ROOM = 1 };

int fo__streams_new(fo_server_t *srv, char *err, size_t errlen);
/* Starts the Kafka replay reader (not in harnesses without Kafka). */
int fo__streams_start(fo_server_t *srv, char *err, size_t errlen);
/* Stops the replay reader (its thread and handle) and cancels every
 * pending resume; the loop can end afterwards. Idempotent. */
void fo__streams_close(fo_server_t *srv);
void fo__streams_free(fo_server_t *srv);

/* From the consumer's metadata refresh: the topic's cluster id and
 * partition count (they make the epoch). */
void fo__streams_topic(fo_server_t *srv, int kind, const char *cluster_id, int32_t partitions);
/* offset if the record (key, partition) is on its key's stream, that is
 * in the partition the contract's partitioner gives the key; else -1: a
 * record another producer put elsewhere is delivered live but is on no
 * stream (never replayed, never held or dropped by a seam). */
int64_t fo__streams_offset(const fo_server_t *srv, int kind, const char *key, size_t keylen,
                           int32_t partition, int64_t offset);
/* The epoch of a stream kind's topic, and whether it is known yet. */
bool fo__streams_epoch(const fo_server_t *srv, int kind, uint32_t *epoch);

/* From the consumer: a record of a partition this server consumes (frame:
 * its client frame, or NULL when it is no one's message), in offset order.
 * reset: the records before it were not all seen (first record after an
 * assignment, a seek). */
void fo__streams_record(fo_server_t *srv, int kind, int32_t partition, int64_t offset,
                        int64_t ts_ms, const char *key, size_t keylen, fo_buf_t *frame, bool reset);
/* The partition is no longer consumed here (revoked). */
void fo__streams_partition_lost(fo_server_t *srv, int kind, int32_t partition);

/* Each heartbeat tick: drops window entries past --resume-window-ms. */
void fo__streams_tick(fo_server_t *srv);
/* Pub/Sub to this server was lost and is back (rreg_ev.resync): every
 * connection whose user messages come through it replays its user stream
 * from what it was last sent, held and merged like a resume, without a new
 * welcome; one that cannot be replayed is closed with 1012 so that its
 * client resumes (and learns recovered:false) itself. */
void fo__streams_resync(fo_server_t *srv);
/* After the registry flush of a loop turn (server.c's check handle). */
void fo__streams_after_flush(fo_server_t *srv);

/* ---- connections ---- */
/* The WebSocket opened (registered in the hub, the Redis registration
 * queued): sends the welcome now or once the position is known. since:
 * the client's `since` (NULL: none; any bytes). */
void fo__stream_opened(fo_conn_t *conn, const char *since, size_t slen);
void fo__stream_closed(fo_conn_t *conn);
/* The welcome is not sent yet: the client's frames wait (conn.c). */
bool fo__stream_holds_input(const fo_conn_t *conn);
/* A join the hub accepted: sends joined (with the replay) now or later.
 * has_since: the client gave `since` (since NULL/0: not a usable text). */
void fo__stream_joined(fo_conn_t *conn, const char *room, size_t len, bool has_since,
                       const char *since, size_t slen);
void fo__stream_left(fo_conn_t *conn, const char *room, size_t len);

/* Live frames for a connection that has stream state (conn->cs != NULL)
 * or a user floor: queued, held for the seam, or dropped as already
 * covered. Returns 0 when queued or held, like fo__conn_send otherwise. */
int fo__stream_send_user(fo_conn_t *conn, int64_t offset, fo_buf_t *frame);
int fo__stream_send_room(fo_conn_t *conn, const char *room, size_t len, int64_t offset,
                         fo_buf_t *frame);

#endif

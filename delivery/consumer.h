/* The Kafka consumers (consumer.c): records -> messages for the router
 * and the hub. */
#ifndef FO_CONSUMER_H
#define FO_CONSUMER_H

#include "delivery_int.h"

int fo__consumer_new(fo_server_t *srv, char *err, size_t errlen);
void fo__consumer_pause(fo_server_t *srv, bool pause);
/* Drain: starts the close of the grouped consumers (users; rooms in room
 * mode redis), so the other servers take their partitions over; cb-less:
 * check _closed. */
void fo__consumer_drain(fo_server_t *srv);
/* Drain, after the last connection closed: also the rooms consumer of room
 * mode kafka (every server reads the whole topic for its own members). */
void fo__consumer_drain_rooms(fo_server_t *srv);
bool fo__consumer_closed(fo_server_t *srv);
/* Closes the consumer's loop handles. */
void fo__consumer_free(fo_server_t *srv);
/* After the loop ended: destroys the Kafka handles. */
void fo__consumer_destroy(fo_server_t *srv);
/* Refreshes the lag gauge (metrics collect). */
void fo__consumer_collect(fo_server_t *srv);

/* Room mode "kafka": the next offset the rooms consumer will hand over
 * for this partition (librdkafka's position, else the high watermark of its
 * last fetch; no request), or -1 when neither is known yet. */
int64_t fo__consumer_room_position(fo_server_t *srv, int32_t partition);

#endif

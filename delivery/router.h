/* Routing of user and room messages, and the ordered offset release
 * (router.c). Releases reach the consumer through the done/progress
 * callbacks it sets. */
#ifndef FO_ROUTER_H
#define FO_ROUTER_H

#include "delivery_int.h"

int fo__router_new(fo_server_t *srv);
void fo__router_free(fo_server_t *srv);
/* The router's ordered queues: offsets are released per queue, in order. */
enum { FO_RQ_USERS = 0, FO_RQ_ROOMS = 1, FO_RQ_COUNT = 2 };
/* Delivers a user message: local sockets now, other servers via Redis.
 * The done callback gets (partition, offset) once it and every message
 * before it were handed over. json is copied. stream_offset: its offset on
 * the user's stream (-1: on none), for the receivers' resume seam. */
typedef void (*fo_route_done_cb)(void *ud, int32_t partition, int64_t offset);
int fo__router_user(fo_server_t *srv, const char *user, size_t ulen, const char *json, size_t jlen,
                    int32_t partition, int64_t offset, int64_t stream_offset);
/* Room mode "redis": PUBLISHes a room message's client frame text to
 * ws:room:{room}; released (FO_RQ_ROOMS) when Redis answered. json is copied. */
int fo__router_room(fo_server_t *srv, const char *room, size_t rlen, const char *json, size_t jlen,
                    int32_t partition, int64_t offset, int64_t stream_offset);
/* Releases an offset of queue q that needed no routing, after those before it. */
int fo__router_skip(fo_server_t *srv, int q, int32_t partition, int64_t offset);
void fo__router_set_done_cb(fo_server_t *srv, int q, fo_route_done_cb cb, void *ud);
/* Called after every release (a pending revoke may finish). */
void fo__router_set_progress_cb(fo_server_t *srv, void (*cb)(void *ud), void *ud);
/* A Pub/Sub message on ws:server:{self}. */
void fo__router_pubsub(fo_server_t *srv, const char *p, size_t n);
/* A Pub/Sub message on ws:room:{room}. */
void fo__router_room_pubsub(fo_server_t *srv, const char *room, size_t rlen, const char *p,
                            size_t n);
/* Redis node `node` came back: resend what waits. */
void fo__router_redis_up(fo_server_t *srv, uint32_t node);
/* End of a loop turn (the server's check handle): sends the user routes of
 * the turn as one script call (one Redis node). */
void fo__router_flush(fo_server_t *srv);
/* From the sweep timer: sends user routes held while the registry settles. */
void fo__router_tick(fo_server_t *srv);
size_t fo__router_inflight(fo_server_t *srv);
/* For unit tests (Redis replaced): message i (0 = oldest) of queue q is
 * answered with reply, as by Redis. -ENOENT: no such message not done. */
struct redisReply;
int fo__router_reply(fo_server_t *srv, int q, size_t i, struct redisReply *reply);
size_t fo__router_inflight_q(fo_server_t *srv, int q);
/* Delivers a JSON text frame (the record at offset of the user's
 * partition, -1 unknown) to every local connection of the user. */
size_t fo__deliver_user_local(fo_server_t *srv, const char *user, size_t ulen, int64_t offset,
                              fo_buf_t *frame);

#endif

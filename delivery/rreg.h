/* The Redis registry and the Pub/Sub subscriber (rreg.c). What arrives
 * goes up through srv->rreg_ev. */
#ifndef FO_RREG_H
#define FO_RREG_H

#include "delivery_int.h"

int fo__rreg_new(fo_server_t *srv);
void fo__rreg_conn_added(fo_server_t *srv, fo_conn_t *conn);
void fo__rreg_conn_removed(fo_server_t *srv, fo_conn_t *conn);
/* Sends the registrations collected this loop turn: per user one HSET with
 * every new connection, then one EXPIRE (from the server's check handle). */
void fo__rreg_flush(fo_server_t *srv);
bool fo__rreg_ready(fo_server_t *srv);
void fo__rreg_drain(fo_server_t *srv);
void fo__rreg_close(fo_server_t *srv);
/* hub_ev.room_sub in room mode "redis": subscribe/unsubscribe ws:room:{room}. */
void fo__rreg_room_sub(fo_server_t *srv, const char *room, size_t len, bool on);
/* The command connection of Redis node `node` (NULL before start or past
 * the last node); for the router. */
struct fo_redis *fo__rreg_cmd(fo_server_t *srv, uint32_t node);
/* Appends a line per Redis node that is down ("redis node I HOST:PORT
 * down") to out, for /readyz. */
void fo__rreg_down_nodes(fo_server_t *srv, fo_sb_t *out);
/* Calls cb once everything queued on every node's command connection before
 * it was answered (a PING each), or at once when Redis is down. */
void fo__rreg_barrier(fo_server_t *srv, void (*cb)(fo_server_t *srv));
/* Connect failures, timeouts and drops counted by the Redis glue. */
uint64_t fo__rreg_errors(fo_server_t *srv);

#endif

/* The local hub (hub.c): users -> connections, rooms -> members, the
 * interned room permissions. Upward events through srv->hub_ev. */
#ifndef FO_HUB_H
#define FO_HUB_H

#include "delivery_int.h"

/* ---- users ---- */
/* Registers conn under user name (interning it). Returns 0 or -ENOMEM. */
int fo__registry_add(fo_conn_t *conn, const char *user, size_t len);
void fo__registry_remove(fo_conn_t *conn);
fo_user_t *fo__registry_user(fo_server_t *srv, const char *user, size_t len);
/* First connection of a user (iterate with conn->user_next). */
fo_conn_t *fo__user_conns(fo_user_t *user);
const char *fo__user_name(const fo_user_t *user, size_t *len);
void fo__registry_free(fo_server_t *srv);
/* Calls cb for every user (for heartbeats); cursor-based: returns the next
 * cursor, 0 when done. */
uint32_t fo__registry_each_user(fo_server_t *srv, uint32_t cursor, uint32_t max,
                                void (*cb)(fo_user_t *user, void *ud), void *ud);

/* ---- rooms and permissions ---- */
/* Parses the JWT `rooms` claim (jansson array, may be NULL) into an interned
 * permission set: conn->perm takes one reference. Returns 0 or -ENOMEM/-EINVAL. */
int fo__perm_set(fo_conn_t *conn, const void *rooms_json);
void fo__perm_release(fo_conn_t *conn);
bool fo__perm_allows(const fo_perm_t *perm, const char *room, size_t len);
/* Join/leave; reply frames are sent by the caller. Return 0, -EPERM, -E2BIG, -ENOMEM. */
int fo__room_join(fo_conn_t *conn, const char *room, size_t len);
int fo__room_leave(fo_conn_t *conn, const char *room, size_t len);
void fo__rooms_leave_all(fo_conn_t *conn);
/* Queues buf (the frame of the room's record at offset, -1 unknown) on
 * every local member; returns the number of recipients. once: the frame
 * came over Pub/Sub (room mode redis), where after a rebalance the room
 * partition's new owner publishes again what the old one had published: a
 * frame at or before the last offset given to the room is dropped. */
size_t fo__room_broadcast(fo_server_t *srv, const char *room, size_t len, int64_t offset,
                          fo_buf_t *buf, bool once);
/* The rooms topic's offsets started over (a new epoch): no copy is known. */
void fo__rooms_forget_offsets(fo_server_t *srv);
void fo__rooms_free(fo_server_t *srv);

#endif

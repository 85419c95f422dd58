/* Redis key and channel names (contract, schemas/redis.md). `prefix` is the
 * configurable key prefix ("" by default); names are appended to sb. */
#ifndef FO_RKEYS_H
#define FO_RKEYS_H

#include <stddef.h>

#include "buf.h"

#define FO_REGISTRY_TTL_S 300

/* {prefix}ws:connections:{user}  hash: connection id -> server id */
int fo_rkey_connections(fo_sb_t *sb, const char *prefix, const char *user, size_t user_len);
/* {prefix}ws:server:{server_id}  Pub/Sub channel of one delivery server */
int fo_rkey_server_channel(fo_sb_t *sb, const char *prefix, const char *server_id);
/* {prefix}ws:alive:{server_id}   liveness key, short TTL */
int fo_rkey_alive(fo_sb_t *sb, const char *prefix, const char *server_id);
/* {prefix}ws:room:{room}         optional Pub/Sub room channel */
int fo_rkey_room_channel(fo_sb_t *sb, const char *prefix, const char *room, size_t room_len);

#endif

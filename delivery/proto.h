/* The client protocol of fanout-delivery (schemas/client-protocol.md), as
 * text: every JSON text a client sees (message, joined, left, pong, error),
 * the parsing of what a client sends (ping, join, leave), and the payload
 * servers PUBLISH to each other for a user ("<len>:<user><json>"). Pure
 * code: no sockets, no loop, no server state; frames are built by the
 * caller (ws.h) around these texts. */
#ifndef FO_PROTO_H
#define FO_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "envelope.h"
#include "pos.h"

/* Longest room name a client may send (bytes). */
#define FO_PROTO_ROOM_MAX 256

/* {"type":"pong"}, the answer to a client's {"type":"ping"}. */
#define FO_PROTO_PONG     "{\"type\":\"pong\"}"
#define FO_PROTO_PONG_LEN (sizeof(FO_PROTO_PONG) - 1)

/* {"type":"ping"}, the heartbeat a connection that asked for one
 * (heartbeat=1) gets instead of protocol pings: JavaScript cannot see those.
 * Encoded once per process (srv->app_ping_frame). */
#define FO_PROTO_APP_PING     "{\"type\":\"ping\"}"
#define FO_PROTO_APP_PING_LEN (sizeof(FO_PROTO_APP_PING) - 1)

/* The welcome frame's heartbeat members, appended to sb (not reset) while
 * the welcome object is being built: ,"ping_ms":<interval> for a connection
 * with heartbeat=1, so the client knows how long silence may last; nothing
 * for others. Returns 0 or -ENOMEM. */
int fo_proto_welcome_heartbeat(fo_sb_t *sb, int app_ping, int64_t ping_ms);

/* The message frame text of a decoded envelope, into sb (reset first):
 * {"type":"message","id":..,"user"|"room":..,"pos":"<pos>","data":..}.
 * pos->kind is 'u' (user message) or 'r' (room broadcast). A JSON payload
 * (content type application/json) that parses is inserted raw; other
 * payloads become a JSON string, or base64 with "encoding":"base64" when
 * not UTF-8. Returns 0 or -ENOMEM. */
int fo_proto_message(fo_sb_t *sb, const fo_env_t *env, const fo_pos_t *pos);

/* {"type":"welcome","pos":..[,"recovered":true|false][,"ping_ms":N]} into
 * sb (reset first): the first frame of every connection. recovered < 0: the
 * client did not ask to resume (no member). ping_ms > 0: the connection asked
 * for the app-level heartbeat (fo_proto_welcome_heartbeat). */
int fo_proto_welcome(fo_sb_t *sb, const char *pos, int recovered, int64_t ping_ms);

/* {"type":"joined","room":..,"pos":..[,"recovered":..]} (recovered as above). */
int fo_proto_joined(fo_sb_t *sb, const char *room, size_t len, const char *pos, int recovered);

/* Is this content type application/json (any case, parameters allowed)?
 * Such payloads are inserted raw when they parse. */
int fo_proto_json_ct(const char *ct, size_t n);

/* Is p[0..n) one JSON text (any value), as jansson's json_loadb with
 * JSON_DECODE_ANY | JSON_ALLOW_NUL judges it? Checked without a tree
 * (json_check.h), jansson only for what the checker leaves to it. */
int fo_proto_json_valid(const void *p, size_t n);

/* {"type":"joined"|"left","room":..} into sb (reset first); joined = 0: left. */
int fo_proto_room_reply(fo_sb_t *sb, int joined, const char *room, size_t len);

/* {"type":"error","code":..,"message":..} into sb (reset first). */
int fo_proto_error(fo_sb_t *sb, const char *code, const char *message);

/* A client message, parsed. */
typedef enum {
  FO_PROTO_BAD = 0, /* not understood: answer with error (err_code, err_msg) */
  FO_PROTO_PING,
  FO_PROTO_JOIN,
  FO_PROTO_LEAVE,
  FO_PROTO_CLIENT_PONG, /* {"type":"pong"}: answers our {"type":"ping"} */
} fo_proto_kind_t;

typedef struct {
  fo_proto_kind_t kind;
  const char *err_code; /* FO_PROTO_BAD: static strings */
  const char *err_msg;
  size_t room_len;                  /* JOIN/LEAVE */
  char room[FO_PROTO_ROOM_MAX + 1]; /* NUL-terminated copy (the name may hold NULs) */
  /* JOIN: "since" was given (any JSON value); its text when it is a string
   * of at most FO_POS_MAX bytes, else since_len = 0 (a position nobody
   * can resume from: answered recovered:false). */
  bool has_since;
  size_t since_len;
  char since[FO_POS_MAX + 1];
} fo_proto_msg_t;

/* Parses one text message of a client (any bytes). Fills *out; returns
 * out->kind. */
fo_proto_kind_t fo_proto_parse(const uint8_t *p, size_t n, fo_proto_msg_t *out);

/* The Pub/Sub payload for a user message:
 * "@<offset>:<decimal user length>:<user><json>", where json is the client
 * frame's text, framed as is by the receiver, and offset the record's
 * offset in the user's partition (the receiver's resume seam needs it).
 * Returns a buffer (refs 1) and the user's offset in it, or NULL on OOM. */
fo_buf_t *fo_proto_pub_user(const char *user, size_t ulen, int64_t offset, const char *json,
                            size_t jlen, uint32_t *user_off);
/* Parses that payload (pointers into p); returns 0 or -EPROTO. A payload
 * without "@<offset>:" (a server of the version before) gives offset -1. */
int fo_proto_pub_parse(const char *p, size_t n, int64_t *offset, const char **user, size_t *ulen,
                       const char **json, size_t *jlen);
/* Room mode "redis": the payload on ws:room:{room} is "@<offset>:<json>".
 * Returns the length of the "@<offset>:" prefix written into out (>= 24
 * bytes), or parses it: *offset (-1 without the prefix) and the json. */
int fo_proto_pub_room_prefix(char *out, size_t outlen, int64_t offset);
int fo_proto_pub_room_parse(const char *p, size_t n, int64_t *offset, const char **json,
                            size_t *jlen);

#endif

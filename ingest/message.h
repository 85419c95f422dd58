/* The one rule for a message {"user"|"room": NAME, "data": ANY}: used by
 * the HTTP API (send, broadcast and each batch item) and by the intake's
 * JSON form, so that the same bad input gets the same reason in a 400 and
 * in the DLQ's fanout-error header. Also builds the envelope
 * (schemas/envelope.md) for a valid message. No state, no I/O. */
#ifndef FO_INGEST_MESSAGE_H
#define FO_INGEST_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "buf.h"
#include "envelope.h"
#include "id.h"

typedef struct {
  fo_env_kind_t kind;
  const char *target; /* borrowed from the JSON object, valid while it lives */
  size_t target_len;
  json_t *data; /* borrowed likewise */
} fo_msg_t;

/* Validates a user or room name: non-empty, at most FO_ENV_MAX_TARGET bytes,
 * valid UTF-8, no control characters. Returns NULL or a reason. */
const char *fo__msg_target_invalid(const char *s, size_t len);

/* Checks obj as a message of kind `want`: FO_ENV_SEND ("user" required; a
 * "room" member is ignored), FO_ENV_BROADCAST ("room" required), or 0
 * (either one, not both: a batch item or the intake's JSON form). Returns
 * NULL with *out filled, or the reason (static text, e.g. "missing user"). */
const char *fo__msg_check(const json_t *obj, int want, fo_msg_t *out);

/* Appends the envelope of msg (a new id from idgen, created now, content
 * type application/json, data as compact JSON) to out and writes the id into
 * id_out. Returns 0, -ENOMEM, or fo_env_encode's negative errno. */
int fo__msg_envelope(fo_id_gen_t *idgen, const fo_msg_t *msg, fo_sb_t *out,
                     uint8_t id_out[FO_ID_LEN]);

#endif

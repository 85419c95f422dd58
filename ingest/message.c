/* Message validation and envelope building (message.h). The reasons are
 * part of the HTTP API (schemas/http-api.md) and of the DLQ's fanout-error
 * header (schemas/intake.md): change them in one place, here. */
#include "message.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "json_out.h"
#include "log.h"

const char *fo__msg_target_invalid(const char *s, size_t len) {
  if (len == 0)
    return "must not be empty";
  if (len > FO_ENV_MAX_TARGET)
    return "longer than 256 bytes";
  if (!fo_utf8_valid(s, len))
    return "not valid UTF-8";
  for (size_t i = 0; i < len; i++) {
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return "contains control characters";
  }
  return NULL;
}

const char *fo__msg_check(const json_t *obj, int want, fo_msg_t *out) {
  if (!json_is_object(obj))
    return "message must be a JSON object";
  json_t *target;
  fo_env_kind_t kind;
  if (want == FO_ENV_SEND || want == FO_ENV_BROADCAST) {
    kind = (fo_env_kind_t)want;
    target = json_object_get(obj, kind == FO_ENV_SEND ? "user" : "room");
    if (target == NULL)
      return kind == FO_ENV_SEND ? "missing user" : "missing room";
  } else {
    json_t *user = json_object_get(obj, "user");
    json_t *room = json_object_get(obj, "room");
    if (user != NULL && room != NULL)
      return "give either user or room, not both";
    if (user == NULL && room == NULL)
      return "missing user or room";
    kind = user != NULL ? FO_ENV_SEND : FO_ENV_BROADCAST;
    target = user != NULL ? user : room;
  }
  if (!json_is_string(target))
    return kind == FO_ENV_SEND ? "user must be a string" : "room must be a string";
  const char *name = json_string_value(target);
  size_t name_len = json_string_length(target);
  if (fo__msg_target_invalid(name, name_len) != NULL)
    return kind == FO_ENV_SEND ? "invalid user" : "invalid room";
  json_t *data = json_object_get(obj, "data");
  if (data == NULL)
    return "missing data";
  out->kind = kind;
  out->target = name;
  out->target_len = name_len;
  out->data = data;
  return NULL;
}

int fo__msg_envelope(fo_id_gen_t *idgen, const fo_msg_t *msg, fo_sb_t *out,
                     uint8_t id_out[FO_ID_LEN]) {
  char *text = json_dumps(msg->data, JSON_COMPACT | JSON_ENCODE_ANY);
  if (text == NULL)
    return -ENOMEM;
  fo_env_t env;
  memset(&env, 0, sizeof(env));
  uint64_t now = fo_now_ms();
  env.version = FO_ENV_VERSION;
  fo_id_next(idgen, now, env.id);
  env.kind = msg->kind;
  env.target = msg->target;
  env.target_len = msg->target_len;
  env.payload = (const uint8_t *)text;
  env.payload_len = strlen(text);
  env.content_type = "application/json";
  env.content_type_len = strlen(env.content_type);
  env.created_ms = (int64_t)now;
  memcpy(id_out, env.id, FO_ID_LEN);
  int rc = fo_env_encode(&env, out);
  free(text);
  return rc;
}

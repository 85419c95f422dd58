/* The client protocol as text (proto.h, schemas/client-protocol.md). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "digits.h"
#include "id.h"
#include "json_check.h"
#include "json_out.h"
#include "proto.h"

int fo_proto_json_ct(const char *ct, size_t n) {
  static const char js[] = "application/json";
  size_t jl = sizeof(js) - 1;
  if (n < jl || strncasecmp(ct, js, jl) != 0)
    return 0;
  return n == jl || ct[jl] == ';' || ct[jl] == ' ';
}

int fo_proto_json_valid(const void *p, size_t n) {
  /* The checker allocates nothing; jansson (a tree: an allocation per value,
   * most of the consumer's time per message) only where it cannot tell. */
  fo_json_check_t v = fo_json_check(p, n);
  if (v != FO_JSON_UNSURE)
    return v == FO_JSON_VALID;
  if (memchr(p, 0, n) != NULL)
    return 0; /* jansson would lose some of them (json_check.h) */
  json_t *j = json_loadb((const char *)p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  json_decref(j);
  return j != NULL;
}

int fo_proto_message(fo_sb_t *sb, const fo_env_t *env, const fo_pos_t *pos) {
  char id[FO_ID_STR_LEN + 1], ptxt[FO_POS_MAX + 1];
  fo_sb_reset(sb);
  fo_id_format(env->id, id);
  if (fo_pos_format(pos, ptxt, sizeof(ptxt)) < 0)
    return -EINVAL;
  fo_sb_puts(sb, "{\"type\":\"message\",\"id\":\"");
  fo_sb_puts(sb, id);
  fo_sb_puts(sb, pos->kind == 'u' ? "\",\"user\":" : "\",\"room\":");
  fo_json_put_str(sb, env->target, env->target_len);
  fo_sb_puts(sb, ",\"pos\":\"");
  fo_sb_puts(sb, ptxt);
  fo_sb_puts(sb, "\",\"data\":");
  int done = 0;
  if (fo_proto_json_ct(env->content_type, env->content_type_len)) {
    /* Checked once per message, inserted raw for every recipient. */
    if (fo_proto_json_valid(env->payload, env->payload_len)) {
      fo_sb_append(sb, env->payload, env->payload_len);
      done = 1;
    }
  }
  if (!done) {
    if (fo_utf8_valid(env->payload, env->payload_len)) {
      fo_json_put_str(sb, (const char *)env->payload, env->payload_len);
    } else {
      fo_sb_putc(sb, '"');
      fo_base64_put(sb, env->payload, env->payload_len);
      fo_sb_puts(sb, "\",\"encoding\":\"base64\"");
    }
  }
  fo_sb_putc(sb, '}');
  return sb->oom ? -ENOMEM : 0;
}

int fo_proto_welcome_heartbeat(fo_sb_t *sb, int app_ping, int64_t ping_ms) {
  if (app_ping)
    fo_sb_printf(sb, ",\"ping_ms\":%" PRId64, ping_ms);
  return sb->oom ? -ENOMEM : 0;
}

int fo_proto_room_reply(fo_sb_t *sb, int joined, const char *room, size_t len) {
  fo_sb_reset(sb);
  fo_sb_puts(sb, joined ? "{\"type\":\"joined\",\"room\":" : "{\"type\":\"left\",\"room\":");
  fo_json_put_str(sb, room, len);
  fo_sb_putc(sb, '}');
  return sb->oom ? -ENOMEM : 0;
}

static void put_recovered(fo_sb_t *sb, int recovered) {
  if (recovered >= 0)
    fo_sb_puts(sb, recovered ? ",\"recovered\":true" : ",\"recovered\":false");
}

int fo_proto_welcome(fo_sb_t *sb, const char *pos, int recovered, int64_t ping_ms) {
  fo_sb_reset(sb);
  fo_sb_puts(sb, "{\"type\":\"welcome\",\"pos\":");
  fo_json_put_str(sb, pos, strlen(pos));
  put_recovered(sb, recovered);
  fo_proto_welcome_heartbeat(sb, ping_ms > 0, ping_ms);
  fo_sb_putc(sb, '}');
  return sb->oom ? -ENOMEM : 0;
}

int fo_proto_joined(fo_sb_t *sb, const char *room, size_t len, const char *pos, int recovered) {
  fo_sb_reset(sb);
  fo_sb_puts(sb, "{\"type\":\"joined\",\"room\":");
  fo_json_put_str(sb, room, len);
  fo_sb_puts(sb, ",\"pos\":");
  fo_json_put_str(sb, pos, strlen(pos));
  put_recovered(sb, recovered);
  fo_sb_putc(sb, '}');
  return sb->oom ? -ENOMEM : 0;
}

int fo_proto_error(fo_sb_t *sb, const char *code, const char *message) {
  fo_sb_reset(sb);
  fo_sb_puts(sb, "{\"type\":\"error\",\"code\":\"");
  fo_sb_puts(sb, code);
  fo_sb_puts(sb, "\",\"message\":");
  fo_json_put_str(sb, message, strlen(message));
  fo_sb_putc(sb, '}');
  return sb->oom ? -ENOMEM : 0;
}

static fo_proto_kind_t bad(fo_proto_msg_t *out, const char *code, const char *msg) {
  out->kind = FO_PROTO_BAD;
  out->err_code = code;
  out->err_msg = msg;
  return FO_PROTO_BAD;
}

fo_proto_kind_t fo_proto_parse(const uint8_t *p, size_t n, fo_proto_msg_t *out) {
  json_error_t jerr;
  out->room_len = 0;
  out->room[0] = '\0';
  out->has_since = false;
  out->since_len = 0;
  out->since[0] = '\0';
  json_t *msg = json_loadb((const char *)p, n, 0, &jerr);
  const char *type = json_string_value(json_object_get(msg, "type"));
  fo_proto_kind_t kind;
  if (type == NULL) {
    kind = bad(out, "bad_request", "expected a JSON object with a \"type\"");
  } else if (strcmp(type, "ping") == 0) {
    kind = out->kind = FO_PROTO_PING;
  } else if (strcmp(type, "pong") == 0) {
    kind = out->kind = FO_PROTO_CLIENT_PONG;
  } else if (strcmp(type, "join") == 0 || strcmp(type, "leave") == 0) {
    json_t *room = json_object_get(msg, "room");
    const char *name = json_string_value(room);
    size_t len = json_string_length(room);
    if (name == NULL || len == 0 || len > FO_PROTO_ROOM_MAX) {
      kind = bad(out, "bad_request", "\"room\" must be a non-empty string of at most 256 bytes");
    } else {
      memcpy(out->room, name, len);
      out->room[len] = '\0';
      out->room_len = len;
      kind = out->kind = type[0] == 'j' ? FO_PROTO_JOIN : FO_PROTO_LEAVE;
      json_t *since = kind == FO_PROTO_JOIN ? json_object_get(msg, "since") : NULL;
      if (since != NULL && !json_is_null(since)) {
        out->has_since = true;
        size_t sl = json_string_length(since);
        if (json_is_string(since) && sl > 0 && sl <= FO_POS_MAX) {
          memcpy(out->since, json_string_value(since), sl);
          out->since[sl] = '\0';
          out->since_len = sl;
        }
      }
    }
  } else {
    kind = bad(out, "bad_request", "unknown message type");
  }
  json_decref(msg);
  return kind;
}

fo_buf_t *fo_proto_pub_user(const char *user, size_t ulen, int64_t offset, const char *json,
                            size_t jlen, uint32_t *user_off) {
  char hdr[48]; /* by hand: snprintf cost more than the rest of the payload */
  size_t hl = 0;
  if (offset >= 0) { /* else on no stream */
    hdr[hl++] = '@';
    hl += fo_put_dec(hdr + hl, (uint64_t)offset);
    hdr[hl++] = ':';
  }
  hl += fo_put_dec(hdr + hl, ulen);
  hdr[hl++] = ':';
  fo_buf_t *pub = fo_buf_new(hl + ulen + jlen);
  if (pub == NULL)
    return NULL;
  memcpy(pub->data, hdr, hl);
  memcpy(pub->data + hl, user, ulen);
  memcpy(pub->data + hl + ulen, json, jlen);
  pub->len = (uint32_t)(hl + ulen + jlen);
  *user_off = (uint32_t)hl;
  return pub;
}

/* "@<offset>:" at p: its length (0 when absent), *offset (-1 when absent),
 * or -EPROTO when it starts but is malformed. */
static int parse_offset_prefix(const char *p, size_t n, int64_t *offset) {
  *offset = -1;
  if (n == 0 || p[0] != '@')
    return 0;
  size_t i = 1;
  int64_t v = 0;
  while (i < n && i < 20 && p[i] >= '0' && p[i] <= '9')
    v = v * 10 + (p[i++] - '0');
  if (i == 1 || i >= n || p[i] != ':')
    return -EPROTO;
  *offset = v;
  return (int)i + 1;
}

int fo_proto_pub_room_prefix(char *out, size_t outlen, int64_t offset) {
  if (offset < 0) { /* on no stream: no prefix */
    if (outlen > 0)
      out[0] = '\0';
    return 0;
  }
  int n = snprintf(out, outlen, "@%" PRId64 ":", offset);
  return n < 0 || (size_t)n >= outlen ? -ENOSPC : n;
}

int fo_proto_pub_room_parse(const char *p, size_t n, int64_t *offset, const char **json,
                            size_t *jlen) {
  int k = parse_offset_prefix(p, n, offset);
  if (k < 0 || (size_t)k >= n)
    return -EPROTO;
  *json = p + k;
  *jlen = n - (size_t)k;
  return 0;
}

int fo_proto_pub_parse(const char *p, size_t n, int64_t *offset, const char **user, size_t *ulen,
                       const char **json, size_t *jlen) {
  int k = parse_offset_prefix(p, n, offset);
  if (k < 0)
    return -EPROTO;
  p += k;
  n -= (size_t)k;
  size_t i = 0, len = 0;
  while (i < n && i < 6 && p[i] >= '0' && p[i] <= '9')
    len = len * 10 + (size_t)(p[i++] - '0');
  if (i == 0 || i >= n || p[i] != ':' || len == 0 || len > n - i - 1)
    return -EPROTO;
  *user = p + i + 1;
  *ulen = len;
  *json = *user + len;
  *jlen = n - i - 1 - len;
  return *jlen > 0 ? 0 : -EPROTO;
}

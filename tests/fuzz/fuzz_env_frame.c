/* libFuzzer target: a Kafka record as delivery's consumer turns it into the
 * client's JSON text (delivery/consumer.c's build_text, which is proto.c's
 * fo_proto_message, reached by including the file, as unit tests do for
 * statics). Any record value that decodes
 * as an envelope must give one valid JSON object with the documented
 * fields: type "message", the id, "user" or "room" = the target, "pos",
 * and "data": the payload itself when it is JSON with a JSON content type,
 * else a string (base64 with "encoding":"base64" when it is not UTF-8).
 * Records that do not decode must be counted and skipped (on_room_record
 * on a server without members). */
#include "consumer.c"

#include <jansson.h>

#include "json_out.h"

#include "fz_delivery.h"
#include "fz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fo_consumer_t c;
  fo_server_t *srv = fz_server(NULL);
  if (c.srv == NULL) {
    c.srv = srv;
    fo_sb_init(&c.sb);
  }
  uint8_t *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  fo_env_t env;
  char err[128];
  int rc = fo_env_decode(buf, size, &env, err, sizeof(err));
  uint64_t before = *srv->m.decode_errors;
  rd_kafka_message_t msg;
  memset(&msg, 0, sizeof(msg));
  msg.payload = buf;
  msg.len = size;
  msg.partition = (int32_t)(size % 7);
  msg.offset = (int64_t)size * 1000;
  on_room_record(&c, &msg);
  if (rc != 0 || env.kind != FO_ENV_BROADCAST)
    CHECK(*srv->m.decode_errors == before + 1);
  else
    CHECK(*srv->m.decode_errors == before);
  if (rc != 0) {
    free(buf);
    return 0;
  }
  for (int pass = 0; pass < 2; pass++) {
    char letter = pass == 0 ? 'u' : 'r';
    rd_kafka_message_t rec;
    memset(&rec, 0, sizeof(rec));
    rec.partition = 3;
    rec.offset = 1234567;
    CHECK(build_text(&c, &env, pass == 0 ? FO_STREAM_USER : FO_STREAM_ROOM, &rec) == 0);
    json_error_t jerr;
    json_t *j = json_loadb(c.sb.data, c.sb.len, JSON_ALLOW_NUL, &jerr);
    if (j == NULL) {
      fprintf(stderr, "not JSON: %s\n%.*s\n", jerr.text, (int)c.sb.len, c.sb.data);
      abort();
    }
    CHECK(fo_utf8_valid(c.sb.data, c.sb.len));
    CHECK(strcmp(json_string_value(json_object_get(j, "type")), "message") == 0);
    json_t *t = json_object_get(j, letter == 'u' ? "user" : "room");
    /* The target goes out as a JSON string; invalid UTF-8 cannot. */
    if (fo_utf8_valid(env.target, env.target_len))
      CHECK(json_is_string(t) && json_string_length(t) == env.target_len &&
            memcmp(json_string_value(t), env.target, env.target_len) == 0);
    CHECK(json_is_string(json_object_get(j, "id")));
    const char *pos = json_string_value(json_object_get(j, "pos"));
    /* No epoch known in the harness (00000000); the timestamp of a record
     * not made by librdkafka is whatever it reads: only its shape is checked. */
    const char *want = letter == 'u' ? "u.00000000.3.1234567." : "r.00000000.3.1234567.";
    fo_pos_t pp;
    CHECK(pos != NULL && strncmp(pos, want, strlen(want)) == 0 &&
          fo_pos_parse(pos, strlen(pos), &pp) == 0);
    json_t *d = json_object_get(j, "data");
    CHECK(d != NULL);
    json_t *enc = json_object_get(j, "encoding");
    if (enc != NULL)
      CHECK(json_is_string(d) && !fo_utf8_valid(env.payload, env.payload_len));
    else if (json_is_string(d) && !fo_proto_json_ct(env.content_type, env.content_type_len))
      CHECK(json_string_length(d) == env.payload_len &&
            memcmp(json_string_value(d), env.payload, env.payload_len) == 0);
    json_decref(j);
  }
  free(buf);
  return 0;
}

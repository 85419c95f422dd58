/* libFuzzer target: the envelope decoder (common/envelope.c), fed any bytes
 * as a Kafka record value would be. Checks: decoded fields point inside the
 * input, stay within the documented limits, and survive an encode/decode
 * round trip unchanged. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "envelope.h"
#include "fz_check.h"

static int inside(const void *p, size_t n, const uint8_t *buf, size_t size) {
  const uint8_t *q = p;
  return n == 0 || (q >= buf && q + n <= buf + size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size heap copy, so ASan sees a read one byte too far. */
  uint8_t *buf = malloc(size ? size : 1);
  if (buf == NULL)
    return 0;
  memcpy(buf, data, size);
  fo_env_t env;
  char err[128];
  int rc = fo_env_decode(buf, size, &env, err, sizeof(err));
  if (rc != 0) {
    CHECK(rc == -EPROTO || rc == -ENOTSUP);
    CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
    free(buf);
    return 0;
  }
  CHECK(env.kind == FO_ENV_SEND || env.kind == FO_ENV_BROADCAST);
  CHECK(env.version <= FO_ENV_VERSION);
  CHECK(env.target != NULL && env.target_len > 0 && env.target_len <= FO_ENV_MAX_TARGET);
  CHECK(inside(env.target, env.target_len, buf, size));
  CHECK(inside(env.payload, env.payload_len, buf, size));
  CHECK(env.content_type != NULL && env.content_type_len <= FO_ENV_MAX_CT);

  /* Round trip. */
  fo_sb_t sb;
  fo_sb_init(&sb);
  rc = fo_env_encode(&env, &sb);
  CHECK(rc == 0);
  fo_env_t again;
  rc = fo_env_decode((const uint8_t *)sb.data, sb.len, &again, err, sizeof(err));
  if (rc != 0)
    fprintf(stderr, "re-decode failed: %s\n", err);
  CHECK(rc == 0);
  CHECK(again.kind == env.kind);
  CHECK(memcmp(again.id, env.id, sizeof(env.id)) == 0);
  CHECK(again.target_len == env.target_len &&
        memcmp(again.target, env.target, env.target_len) == 0);
  CHECK(again.payload_len == env.payload_len &&
        (env.payload_len == 0 || memcmp(again.payload, env.payload, env.payload_len) == 0));
  CHECK(again.content_type_len == env.content_type_len &&
        memcmp(again.content_type, env.content_type, env.content_type_len) == 0);
  CHECK(again.created_ms == env.created_ms);
  fo_sb_free(&sb);
  free(buf);
  return 0;
}

/* The message envelope carried in fanout.users / fanout.rooms records
 * (contract, schemas/envelope.md). A msgpack map with short string keys:
 *   "v"  uint  major version (FO_ENV_VERSION); a larger one is refused
 *   "id" bin16 message id (UUIDv7)
 *   "k"  str   "send" | "broadcast"
 *   "t"  str   target: user id (send) or room name (broadcast)
 *   "p"  bin   payload bytes
 *   "ct" str   payload content type, e.g. "application/json"
 *   "ts" int   created-at, Unix milliseconds
 * Unknown keys are skipped, so minor additions stay compatible. */
#ifndef FO_ENVELOPE_H
#define FO_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "id.h"

#define FO_ENV_VERSION    1
/* Limits enforced by the decoder (anything longer is refused). */
#define FO_ENV_MAX_TARGET 256
#define FO_ENV_MAX_CT     128

typedef enum { FO_ENV_SEND = 1, FO_ENV_BROADCAST = 2 } fo_env_kind_t;

/* Decoded fields point into the input bytes (borrowed, zero-copy): they are
 * valid only as long as the buffer given to fo_env_decode(). */
typedef struct {
  uint32_t version;
  uint8_t id[FO_ID_LEN];
  fo_env_kind_t kind;
  const char *target;
  size_t target_len;
  const uint8_t *payload;
  size_t payload_len;
  const char *content_type; /* "application/json" when absent */
  size_t content_type_len;
  int64_t created_ms;
} fo_env_t;

/* Appends the msgpack encoding of env to out. Returns 0, -EINVAL (missing
 * target, over-long field) or -ENOMEM. */
int fo_env_encode(const fo_env_t *env, fo_sb_t *out);

/* Decodes p[0..n). Never reads past n, never allocates, never trusts a
 * declared length. Returns 0, or -EPROTO (malformed: truncated, wrong type,
 * missing field, trailing bytes) or -ENOTSUP (newer major version), with a
 * reason in err. */
int fo_env_decode(const uint8_t *p, size_t n, fo_env_t *env, char *err, size_t errlen);

const char *fo_env_kind_name(fo_env_kind_t kind);

#endif

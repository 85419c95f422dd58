/* Message ids: UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version, random;
 * monotonic within one process, so ids sort by time as text and as bytes. */
#ifndef FO_ID_H
#define FO_ID_H

#include <stddef.h>
#include <stdint.h>

#define FO_ID_LEN     16
#define FO_ID_STR_LEN 36 /* canonical 8-4-4-4-12 form, without the NUL */

/* Zero-initialise; seeded from getrandom() on first use. */
typedef struct {
  uint64_t last_ms;
  uint64_t rng;
  uint8_t last[FO_ID_LEN];
} fo_id_gen_t;

/* Fills out with a new id; ids from one generator strictly increase. */
void fo_id_next(fo_id_gen_t *gen, uint64_t now_ms, uint8_t out[FO_ID_LEN]);
/* Writes FO_ID_STR_LEN chars and a NUL into out (size >= 37). */
void fo_id_format(const uint8_t id[FO_ID_LEN], char *out);
/* Parses the canonical form; returns 0 or -EINVAL. */
int fo_id_parse(const char *s, size_t len, uint8_t out[FO_ID_LEN]);
/* Milliseconds since the epoch stored in a v7 id. */
uint64_t fo_id_time_ms(const uint8_t id[FO_ID_LEN]);

#endif

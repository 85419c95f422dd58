/* Stream positions ("pos", schemas/positions.md): the text a client keeps
 * to resume a stream, `<k>.<epoch>.<partition>.<offset>.<t>`, e.g.
 * u.1f3a9c2e.3.12345.18c2f3a4b5e. Opaque to clients; the server parses it
 * strictly because it comes back from outside (?since=, join.since). */
#ifndef FO_POS_H
#define FO_POS_H

#include <stddef.h>
#include <stdint.h>

/* Longest text fo_pos_format writes is 58 bytes + NUL; a buffer of this
 * size always suffices, and longer input is never a position. */
#define FO_POS_MAX 64

/* The seed of fo_pos_epoch (ASCII "fpos"). Changing it makes every
 * position clients hold foreign: never change it. */
#define FO_POS_EPOCH_SEED 0x66706f73u

typedef struct fo_pos {
  char kind;         /* 'u' user stream (fanout.users), 'r' room stream */
  uint32_t epoch;    /* fo_pos_epoch() of the stream's topic */
  int32_t partition; /* >= 0 */
  int64_t offset;    /* >= -1; -1: before the first record */
  int64_t t_ms;      /* >= 0: the record at offset has timestamp <= t_ms */
} fo_pos_t;

/* Writes p as text into out (NUL-terminated). Returns the length written
 * (without the NUL), -ENOSPC when outlen is too small (out then holds ""
 * if outlen > 0), or -EINVAL when a field is out of its range. */
int fo_pos_format(const fo_pos_t *p, char *out, size_t outlen);

/* Parses exactly s[0..len) (no NUL needed; a NUL inside is refused).
 * Strict: the exact shape, lowercase hex, decimal without sign or leading
 * zeros (except "0" and the offset "-1"), no overflow, len <= FO_POS_MAX.
 * Returns 0 and fills *out, or -EINVAL with *out untouched. */
int fo_pos_parse(const char *s, size_t len, fo_pos_t *out);

/* The epoch of a stream: XXH32 with seed FO_POS_EPOCH_SEED over the bytes
 * cluster_id NUL topic NUL <partitions in decimal> (no trailing NUL). A
 * position from another cluster, a topic of another name or a changed
 * partition count carries another epoch. cluster_id and topic: non-NULL,
 * NUL-terminated. */
uint32_t fo_pos_epoch(const char *cluster_id, const char *topic, int32_t partitions);

#endif

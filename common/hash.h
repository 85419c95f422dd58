/* A hash for in-memory tables whose keys a peer chooses (room and user
 * names, Idempotency-Keys): XXH3 keyed with a random per-process seed, so
 * that colliding keys cannot be computed offline (hash flooding). Its values
 * differ between processes and runs: never store them or send them
 * anywhere; the partitioner's contract hash is fo_hash32 (partition.h). */
#ifndef FO_HASH_H
#define FO_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The first call draws the seed (getrandom); thread-safe. */
uint32_t fo_hash_private(const void *key, size_t len);
/* The same hash under an explicit seed (tests). */
uint32_t fo_hash_seeded(const void *key, size_t len, uint64_t seed);

#endif

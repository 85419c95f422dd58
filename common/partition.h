/* The user-hash range partitioner (contract, schemas/topics.md):
 *   hash32(key)  = XXH32(key bytes, seed 0)
 *   partition    = floor(hash32 * P / 2^32)
 * so partition p owns the contiguous hash range [p*2^32/P, (p+1)*2^32/P). */
#ifndef FO_PARTITION_H
#define FO_PARTITION_H

#include <stddef.h>
#include <stdint.h>

uint32_t fo_hash32(const void *key, size_t len);
/* partitions must be >= 1; returns a value in [0, partitions). */
int32_t fo_partition_of_hash(uint32_t hash, int32_t partitions);
int32_t fo_partition_of_key(const void *key, size_t len, int32_t partitions);

#endif

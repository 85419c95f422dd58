#include "partition.h"

#include <xxhash.h>

uint32_t fo_hash32(const void *key, size_t len) {
  return XXH32(key, len, 0);
}

int32_t fo_partition_of_hash(uint32_t hash, int32_t partitions) {
  if (partitions <= 1)
    return 0;
  return (int32_t)(((uint64_t)hash * (uint64_t)partitions) >> 32);
}

int32_t fo_partition_of_key(const void *key, size_t len, int32_t partitions) {
  return fo_partition_of_hash(fo_hash32(key, len), partitions);
}

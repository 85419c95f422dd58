/* The shard function of schemas/redis-shards.md. Jump hash rather than
 * rendezvous hashing: the contract names nodes by their index in one list
 * that every process shares, which is exactly jump hash's input, so a
 * backend needs only the name and the node count (rendezvous needs a stable
 * identity per node, and addresses differ between clients that reach the
 * same node by different names); it is O(log n) without a table, and
 * growing the list by one node at its end moves only 1/(n+1) of the names.
 * Its input is the hash a backend already computes for partitions (the
 * node and the partition come out independent: jump mixes the key). */
#include "rshard.h"

#include "partition.h"

uint32_t fo_rshard_jump(uint64_t key, uint32_t n) {
  int64_t b = -1, j = 0;
  while (j < (int64_t)n) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
  }
  return (uint32_t)b;
}

uint32_t fo_rshard_node(const void *name, size_t len, uint32_t n) {
  if (n <= 1)
    return 0;
  return fo_rshard_jump(fo_hash32(name, len), n);
}

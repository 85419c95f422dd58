/* Which Redis node holds a name (contract, schemas/redis-shards.md): with
 * several independent Redis nodes (--redis A,B,C), a user's registry entry
 * lives on the node of the user's name, a server's channel and liveness key
 * on the node of its id, a room's channel on the node of the room's name.
 * The node is jump consistent hash (Lamping & Veach 2014) of the contract's
 * hash32 of the name's bytes (XXH32 seed 0, the partitioner's hash of
 * schemas/topics.md; the key prefix is not hashed) over the number of
 * nodes; the index is into the --redis list as given, which every process
 * of a deployment must get in the same order. */
#ifndef FO_RSHARD_H
#define FO_RSHARD_H

#include <stddef.h>
#include <stdint.h>

/* Jump consistent hash: a bucket in [0, n) for key; n >= 1. */
uint32_t fo_rshard_jump(uint64_t key, uint32_t n);
/* The node of name among n nodes (0 when n <= 1). */
uint32_t fo_rshard_node(const void *name, size_t len, uint32_t n);

#endif

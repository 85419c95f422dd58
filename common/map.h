/* A small open-addressing hash map for interned names (users, rooms,
 * permission sets). Entries are intrusive: each starts with fo_mapent_t and
 * owns its key bytes (usually stored right after the struct). The map only
 * holds pointers (8 bytes per slot) and never allocates entries. */
#ifndef FO_MAP_H
#define FO_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct fo_mapent {
  uint32_t hash;
  uint32_t len;
  const char *key; /* owned by the entry */
} fo_mapent_t;

typedef struct fo_map {
  fo_mapent_t **slots;
  uint32_t cap; /* power of two, or 0 */
  uint32_t count;
} fo_map_t;

/* Seeded per process (hash.h): store it in entries, never outside. */
uint32_t fo_map_hash(const char *key, size_t len);
/* Returns the entry with this key, or NULL. */
fo_mapent_t *fo_map_get(const fo_map_t *map, const char *key, size_t len, uint32_t hash);
/* Inserts ent (its hash/len/key set, key not present). Returns 0 or -ENOMEM
 * (map unchanged). The map borrows ent until fo_map_del. */
int fo_map_put(fo_map_t *map, fo_mapent_t *ent);
/* Removes ent (must be present). */
void fo_map_del(fo_map_t *map, fo_mapent_t *ent);
/* Iteration by slot index: returns the next entry at or after *cursor and
 * moves *cursor past it, or NULL at the end. Do not insert while iterating;
 * deleting the returned entry is fine if *cursor is reset to its slot. */
fo_mapent_t *fo_map_next(const fo_map_t *map, uint32_t *cursor);
void fo_map_free(fo_map_t *map);

#endif

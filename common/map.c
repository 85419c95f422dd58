/* Linear probing with backward-shift deletion; load factor <= 2/3 (a
 * slot is 8 bytes of per-user memory: at <= 1/2, 16,700 users took 65,536
 * slots, 31 bytes a user; a probe run at 2/3 averages 2 slots for a hit and
 * 5 for a miss). Keys
 * come from clients, so the hash is seeded per process (hash.h): with a
 * public hash, colliding names would pile into one probe cluster. */
#include "map.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

uint32_t fo_map_hash(const char *key, size_t len) {
  return fo_hash_private(key, len);
}

fo_mapent_t *fo_map_get(const fo_map_t *map, const char *key, size_t len, uint32_t hash) {
  if (map->cap == 0)
    return NULL;
  uint32_t mask = map->cap - 1;
  for (uint32_t i = hash & mask;; i = (i + 1) & mask) {
    fo_mapent_t *e = map->slots[i];
    if (e == NULL)
      return NULL;
    if (e->hash == hash && e->len == len && memcmp(e->key, key, len) == 0)
      return e;
  }
}

static void place(fo_mapent_t **slots, uint32_t cap, fo_mapent_t *e) {
  uint32_t mask = cap - 1;
  uint32_t i = e->hash & mask;
  while (slots[i] != NULL)
    i = (i + 1) & mask;
  slots[i] = e;
}

static int grow(fo_map_t *map) {
  uint32_t ncap = map->cap ? map->cap * 2 : 16;
  fo_mapent_t **ns = calloc(ncap, sizeof(*ns));
  if (ns == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < map->cap; i++)
    if (map->slots[i] != NULL)
      place(ns, ncap, map->slots[i]);
  free(map->slots);
  map->slots = ns;
  map->cap = ncap;
  return 0;
}

int fo_map_put(fo_map_t *map, fo_mapent_t *ent) {
  if ((uint64_t)(map->count + 1) * 3 > (uint64_t)map->cap * 2) {
    int rc = grow(map);
    if (rc != 0)
      return rc;
  }
  place(map->slots, map->cap, ent);
  map->count++;
  return 0;
}

void fo_map_del(fo_map_t *map, fo_mapent_t *ent) {
  uint32_t mask = map->cap - 1;
  uint32_t i = ent->hash & mask;
  while (map->slots[i] != ent)
    i = (i + 1) & mask;
  map->slots[i] = NULL;
  map->count--;
  /* Backward shift: re-seat the following cluster so lookups stay correct. */
  for (uint32_t j = (i + 1) & mask; map->slots[j] != NULL; j = (j + 1) & mask) {
    fo_mapent_t *e = map->slots[j];
    uint32_t home = e->hash & mask;
    /* e may move to hole i if i lies cyclically in [home, j). */
    if (((j - home) & mask) >= ((j - i) & mask)) {
      map->slots[i] = e;
      map->slots[j] = NULL;
      i = j;
    }
  }
}

fo_mapent_t *fo_map_next(const fo_map_t *map, uint32_t *cursor) {
  for (uint32_t i = *cursor; i < map->cap; i++) {
    if (map->slots[i] != NULL) {
      *cursor = i + 1;
      return map->slots[i];
    }
  }
  *cursor = map->cap;
  return NULL;
}

void fo_map_free(fo_map_t *map) {
  free(map->slots);
  map->slots = NULL;
  map->cap = map->count = 0;
}

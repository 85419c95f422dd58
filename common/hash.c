#include "hash.h"

#include <pthread.h>
#include <stdbool.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

static uint64_t seed;
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;

static void seed_init(void) {
  uint64_t s = 0;
  if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s)) {
    /* No entropy yet (early boot) or no getrandom: still differ per process,
     * which is all that the tables need to stay unpredictable offline. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15u ^ (uint64_t)ts.tv_sec ^
        (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&s;
  }
  seed = s;
}

uint32_t fo_hash_seeded(const void *key, size_t len, uint64_t s) {
  uint64_t h = XXH3_64bits_withSeed(key, len, s);
  return (uint32_t)(h ^ h >> 32);
}

uint32_t fo_hash_private(const void *key, size_t len) {
  pthread_once(&seed_once, seed_init);
  return fo_hash_seeded(key, len, seed);
}

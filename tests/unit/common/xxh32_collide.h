/* Test helper: 8-byte keys with a chosen XXH32 (seed 0) value, computed the
 * way an attacker would offline. XXH32 of a short input is two invertible
 * rounds and an invertible finaliser, so the second word follows from the
 * first. Used to show that the internal tables no longer hash with it. */
#ifndef FO_TEST_XXH32_COLLIDE_H
#define FO_TEST_XXH32_COLLIDE_H

#include <stdint.h>

#define XC_P1 0x9E3779B1u
#define XC_P2 0x85EBCA77u
#define XC_P3 0xC2B2AE3Du
#define XC_P4 0x27D4EB2Fu
#define XC_P5 0x165667B1u

static inline uint32_t rotl(uint32_t x, int r) {
  return x << r | x >> (32 - r);
}
static inline uint32_t rotr(uint32_t x, int r) {
  return x >> r | x << (32 - r);
}
static inline uint32_t inv(uint32_t a) { /* odd a: inverse mod 2^32 by Newton's iteration */
  uint32_t x = a;
  for (int i = 0; i < 5; i++)
    x *= 2 - a * x;
  return x;
}
static inline uint32_t unavalanche(uint32_t h) {
  h ^= h >> 16;
  h *= inv(XC_P3);
  h ^= h >> 13 ^ h >> 26;
  h *= inv(XC_P2);
  h ^= h >> 15 ^ h >> 30;
  return h;
}

/* An 8-byte key (w1, w2 little-endian) whose XXH32 with seed 0 is `target`:
 * XXH32 of a short input is two invertible rounds and an invertible
 * finaliser, so w2 follows from w1 -- what an attacker does offline. */
static inline void colliding_key(uint32_t w1, uint32_t target, char out[8]) {
  uint32_t h = XC_P5 + 8;
  h = rotl(h + w1 * XC_P3, 17) * XC_P4;
  uint32_t w2 = (rotr(unavalanche(target) * inv(XC_P4), 17) - h) * inv(XC_P3);
  for (int i = 0; i < 4; i++) {
    out[i] = (char)(w1 >> (8 * i));
    out[4 + i] = (char)(w2 >> (8 * i));
  }
}

#endif

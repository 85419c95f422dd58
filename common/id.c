#include "id.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "digits.h"

/* splitmix64: fast, and seeded once from the kernel; ids need uniqueness and
 * order, not secrecy. */
static uint64_t rng_next(fo_id_gen_t *gen) {
  if (gen->rng == 0) {
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
      seed = (uint64_t)(uintptr_t)gen ^ 0x9e3779b97f4a7c15ull;
    gen->rng = seed | 1;
  }
  uint64_t z = (gen->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void put_ms(uint8_t *out, uint64_t ms) {
  for (int i = 0; i < 6; i++)
    out[i] = (uint8_t)(ms >> (40 - 8 * i));
}

/* Adds one to the 74 random bits (12 of rand_a, 62 of rand_b) keeping the
 * version and variant bits; returns 1 on overflow. */
static int increment(uint8_t *id) {
  for (int i = 15; i >= 6; i--) {
    uint8_t mask = 0xff;
    if (i == 6)
      mask = 0x0f; /* low nibble only: high nibble is the version */
    else if (i == 8)
      mask = 0x3f; /* low 6 bits only: top 2 are the variant */
    uint8_t v = (uint8_t)((id[i] & mask) + 1) & mask;
    id[i] = (uint8_t)((id[i] & (uint8_t)~mask) | v);
    if (v != 0)
      return 0;
  }
  return 1;
}

void fo_id_next(fo_id_gen_t *gen, uint64_t now_ms, uint8_t out[FO_ID_LEN]) {
  if (gen->last_ms != 0 && now_ms <= gen->last_ms) {
    /* Same millisecond (or the clock went back): keep order by counting. */
    memcpy(out, gen->last, FO_ID_LEN);
    if (increment(out) != 0) {
      gen->last_ms++;
      put_ms(out, gen->last_ms);
    }
  } else {
    uint64_t a = rng_next(gen), b = rng_next(gen);
    gen->last_ms = now_ms;
    put_ms(out, now_ms);
    for (int i = 0; i < 8; i++)
      out[8 + i] = (uint8_t)(a >> (8 * i));
    out[6] = (uint8_t)(b & 0xff);
    out[7] = (uint8_t)((b >> 8) & 0xff);
    /* Start the counter in the lower half so increments rarely overflow. */
    out[8] &= 0x1f;
  }
  out[6] = (uint8_t)((out[6] & 0x0f) | 0x70); /* version 7 */
  out[8] = (uint8_t)((out[8] & 0x3f) | 0x80); /* variant 10 */
  memcpy(gen->last, out, FO_ID_LEN);
}

void fo_id_format(const uint8_t id[FO_ID_LEN], char *out) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < FO_ID_LEN; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      out[o++] = '-';
    out[o++] = hex[id[i] >> 4];
    out[o++] = hex[id[i] & 15];
  }
  out[o] = '\0';
}

int fo_id_parse(const char *s, size_t len, uint8_t out[FO_ID_LEN]) {
  if (len != FO_ID_STR_LEN)
    return -EINVAL;
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-')
        return -EINVAL;
      i++;
      continue;
    }
    int hi = fo_hex_value(s[i]), lo = fo_hex_value(s[i + 1]);
    if (hi < 0 || lo < 0)
      return -EINVAL;
    out[o++] = (uint8_t)(hi << 4 | lo);
    i += 2;
  }
  return o == FO_ID_LEN ? 0 : -EINVAL;
}

uint64_t fo_id_time_ms(const uint8_t id[FO_ID_LEN]) {
  uint64_t ms = 0;
  for (int i = 0; i < 6; i++)
    ms = ms << 8 | id[i];
  return ms;
}

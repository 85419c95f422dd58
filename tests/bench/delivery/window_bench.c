/* Resume-window figures (prints, never fails): one partition receiving
 * RATE records/s of FRAME-byte client frames for SECS s of simulated time,
 * keyed by USERS distinct users, window age 120 s; then the time of a
 * lookup for a key that missed 10 messages.
 *   fanout-bench-window [rate=1000] [secs=120] [frame=300] [users=10000] */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "window.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  long rate = argc > 1 ? atol(argv[1]) : 1000;
  long secs = argc > 2 ? atol(argv[2]) : 120;
  long fsize = argc > 3 ? atol(argv[3]) : 300;
  long users = argc > 4 ? atol(argv[4]) : 10000;
  if (rate <= 0 || secs <= 0 || fsize <= 0 || users <= 0)
    return 2;
  fo_window_budget_t budget = {.max_bytes = UINT64_MAX};
  fo_window_t *w = fo_window_new(&budget, 120000);
  if (w == NULL)
    return 1;
  fo_window_reset(w, 0);
  long total = rate * secs;
  /* The target user's 10 messages are spread over the last 10 s. */
  long first_target = total - 10 * rate;
  uint64_t seed = 42;
  char key[32];
  uint64_t t0 = now_ns();
  int64_t since = -1;
  for (long i = 0; i < total; i++) {
    uint64_t ms = (uint64_t)(i * 1000 / rate);
    int kl;
    if (i >= first_target && (i - first_target) % rate == 0) {
      kl = snprintf(key, sizeof(key), "target-user");
    } else {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      kl = snprintf(key, sizeof(key), "user-%" PRIu64, (seed >> 33) % (uint64_t)users);
    }
    if (i == first_target - 1)
      since = i;
    fo_buf_t *f = fo_buf_new((size_t)fsize);
    if (f == NULL)
      return 1;
    f->len = (uint32_t)fsize;
    memset(f->data, 'x', (size_t)fsize);
    if (fo_window_add(w, i, (int64_t)ms, key, (size_t)kl, f, ms) != 0)
      return 1;
    fo_buf_unref(f);
  }
  uint64_t t1 = now_ns();
  printf("records added: %ld (%ld/s x %ld s), %.0f ns per add\n", total, rate, secs,
         (double)(t1 - t0) / (double)total);
  printf("window: %zu entries, %" PRIu64 " bytes per partition (%.1f MiB), %.0f bytes per record "
         "(frame %ld)\n",
         fo_window_count(w), fo_window_bytes(w), (double)fo_window_bytes(w) / 1048576.0,
         (double)fo_window_bytes(w) / (double)fo_window_count(w), fsize);

  fo_buf_t *out[16];
  int64_t offs[16];
  size_t n = 0;
  int64_t end = fo_window_last(w);
  const int iters = 200000;
  int rc = 0;
  t0 = now_ns();
  for (int i = 0; i < iters; i++)
    rc |= fo_window_since(w, "target-user", 11, since, (int64_t)1 << 60, end, 16, out, offs, &n);
  t1 = now_ns();
  printf("lookup, key with 10 missed messages: %.0f ns (rc %d, %zu frames)\n",
         (double)(t1 - t0) / iters, rc, n);
  t0 = now_ns();
  for (int i = 0; i < iters; i++)
    rc |= fo_window_since(w, "nobody", 6, since, (int64_t)1 << 60, end, 16, out, offs, &n);
  t1 = now_ns();
  printf("lookup, key with nothing missed: %.0f ns (rc %d)\n", (double)(t1 - t0) / iters, rc);
  fo_window_free(w);
  return 0;
}

/* The water marks (flow.h). */
#include <stdlib.h>

#include "flow.h"

struct fo_flow {
  uint64_t queued;  /* outbound queues: see frame_cost() in conn.c */
  uint64_t backlog; /* routed messages waiting for Redis (router.c) */
  uint64_t high, low;
  bool paused;
  fo_flow_pause_cb on_pause;
  void *ud;
};

fo_flow_t *fo_flow_new(uint64_t high, uint64_t low, fo_flow_pause_cb on_pause, void *ud) {
  fo_flow_t *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return NULL;
  f->high = high;
  f->low = low;
  f->on_pause = on_pause;
  f->ud = ud;
  return f;
}

void fo_flow_free(fo_flow_t *f) {
  free(f);
}

static void apply(fo_flow_t *f) {
  uint64_t load = f->queued + f->backlog;
  if (!f->paused && load > f->high) {
    f->paused = true;
    if (f->on_pause != NULL)
      f->on_pause(f->ud, true);
  } else if (f->paused && load < f->low) {
    f->paused = false;
    if (f->on_pause != NULL)
      f->on_pause(f->ud, false);
  }
}

void fo_flow_queued(fo_flow_t *f, int64_t delta) {
  f->queued += (uint64_t)delta; /* unsigned wrap: a negative delta subtracts */
  apply(f);
}

void fo_flow_backlog(fo_flow_t *f, int64_t delta) {
  f->backlog += (uint64_t)delta;
  apply(f);
}

uint64_t fo_flow_queued_bytes(const fo_flow_t *f) {
  return f->queued;
}

uint64_t fo_flow_backlog_bytes(const fo_flow_t *f) {
  return f->backlog;
}

bool fo_flow_paused(const fo_flow_t *f) {
  return f->paused;
}

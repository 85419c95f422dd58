/* (lead's placeholder; replaced by the r9-replay branch) */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"

struct fo_replay {
  int dummy;
};

fo_replay_t *fo_replay_new(uv_loop_t *loop, const fo_replay_cfg_t *cfg, char *err, size_t errlen) {
  (void)loop, (void)cfg, (void)err, (void)errlen;
  return calloc(1, sizeof(fo_replay_t));
}

int fo_replay_submit(fo_replay_t *r, const fo_replay_req_t *req, fo_replay_cb cb, void *ud,
                     fo_replay_handle_t **h) {
  (void)r, (void)req, (void)cb, (void)ud;
  *h = NULL;
  return -ENOSYS;
}

void fo_replay_cancel(fo_replay_handle_t *h) {
  (void)h;
}

void fo_replay_stats(fo_replay_t *r, fo_replay_stats_t *out) {
  (void)r;
  memset(out, 0, sizeof(*out));
}

void fo_replay_close(fo_replay_t *r) {
  free(r);
}

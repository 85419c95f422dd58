/* (lead's placeholder; replaced by the r9-replay branch) */
#ifndef FO_REPLAY_H
#define FO_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct fo_replay fo_replay_t;
typedef struct fo_replay_handle fo_replay_handle_t;

enum {
  FO_REPLAY_OK = 0,
  FO_REPLAY_EXPIRED,
  FO_REPLAY_FOREIGN,
  FO_REPLAY_OVER_CAP,
  FO_REPLAY_TOO_FAR,
  FO_REPLAY_ERROR,
};

typedef struct {
  const char *bootstrap;
  const char *kafka_opts;
  const char *users_topic;
  const char *rooms_topic;
  int64_t timeout_ms;
} fo_replay_cfg_t;

typedef struct {
  char kind;
  int32_t partition;
  int64_t since;
  int64_t since_t_ms;
  int64_t end;
  const char *key;
  size_t keylen;
  size_t cap;
  uint64_t max_scan;
  uint64_t max_age_ms;
} fo_replay_req_t;

typedef struct {
  int64_t offset;
  int64_t ts_ms;
  const char *key;
  size_t keylen;
  const void *value;
  size_t len;
} fo_replay_rec_t;

typedef struct {
  uint64_t rounds;
  uint64_t scanned;
} fo_replay_stats_t;

typedef void (*fo_replay_cb)(void *ud, int status, int64_t end, int64_t end_t_ms,
                             fo_replay_rec_t *recs, size_t n);

fo_replay_t *fo_replay_new(uv_loop_t *loop, const fo_replay_cfg_t *cfg, char *err, size_t errlen);
int fo_replay_submit(fo_replay_t *r, const fo_replay_req_t *req, fo_replay_cb cb, void *ud,
                     fo_replay_handle_t **h);
void fo_replay_cancel(fo_replay_handle_t *h);
void fo_replay_stats(fo_replay_t *r, fo_replay_stats_t *out);
void fo_replay_close(fo_replay_t *r);

#endif

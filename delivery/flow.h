/* Flow control of one delivery process: what the outbound queues of all
 * connections cost (queued) plus what waits for Redis in the router
 * (backlog) is the load; above the high-water mark the owner is told to
 * pause Kafka, below the low-water mark to resume it (hysteresis: between
 * the two nothing changes). One object holds the counts and makes the
 * decision; conn.c and router.c only report their changes. Pure code. */
#ifndef FO_FLOW_H
#define FO_FLOW_H

#include <stdbool.h>
#include <stdint.h>

typedef struct fo_flow fo_flow_t;

/* pause: true above the high-water mark, false back below the low one.
 * Called at the change only, from inside fo_flow_queued/fo_flow_backlog. */
typedef void (*fo_flow_pause_cb)(void *ud, bool pause);

/* low <= high. Returns NULL on OOM. */
fo_flow_t *fo_flow_new(uint64_t high, uint64_t low, fo_flow_pause_cb on_pause, void *ud);
void fo_flow_free(fo_flow_t *f);

/* Adds delta (negative: removes) to the outbound queues' cost / the
 * routing backlog, then applies the water marks. */
void fo_flow_queued(fo_flow_t *f, int64_t delta);
void fo_flow_backlog(fo_flow_t *f, int64_t delta);

uint64_t fo_flow_queued_bytes(const fo_flow_t *f);
uint64_t fo_flow_backlog_bytes(const fo_flow_t *f);
bool fo_flow_paused(const fo_flow_t *f);

#endif

/* A tiny metrics registry with Prometheus text exposition (format 0.0.4).
 * Hot paths keep the returned pointer and do `(*counter)++`: no lookups. */
#ifndef FO_METRICS_H
#define FO_METRICS_H

#include <stdint.h>

#include "buf.h"

typedef struct fo_metrics fo_metrics_t;

fo_metrics_t *fo_metrics_new(void);
void fo_metrics_free(fo_metrics_t *m);

/* Registers a series. `name` may carry labels: "x_total{code=\"202\"}";
 * series sharing the base name share one HELP/TYPE block. The returned cell
 * lives as long as the registry. Returns NULL on OOM. Registering the same
 * full name twice returns the same cell. */
uint64_t *fo_metrics_counter(fo_metrics_t *m, const char *name, const char *help);
int64_t *fo_metrics_gauge(fo_metrics_t *m, const char *name, const char *help);

/* Called at the start of every render so owners can refresh gauges. */
typedef void (*fo_metrics_collect_cb)(void *ud);
int fo_metrics_on_collect(fo_metrics_t *m, fo_metrics_collect_cb cb, void *ud);

/* Appends the exposition text to out. Returns 0 or -ENOMEM. */
int fo_metrics_render(fo_metrics_t *m, fo_sb_t *out);

#endif

#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct fo_metric {
  struct fo_metric *next;
  char *name;       /* full series name, labels included */
  size_t base_len;  /* length of the name before '{' */
  const char *help; /* static string from the caller */
  bool is_gauge;
  union {
    uint64_t counter;
    int64_t gauge;
  } v;
} fo_metric_t;

typedef struct collect {
  struct collect *next;
  fo_metrics_collect_cb cb;
  void *ud;
} collect_t;

struct fo_metrics {
  fo_metric_t *head, *tail; /* registration order */
  collect_t *collectors;
};

fo_metrics_t *fo_metrics_new(void) {
  return calloc(1, sizeof(fo_metrics_t));
}

void fo_metrics_free(fo_metrics_t *m) {
  if (m == NULL)
    return;
  for (fo_metric_t *x = m->head, *next; x != NULL; x = next) {
    next = x->next;
    free(x->name);
    free(x);
  }
  for (collect_t *c = m->collectors, *next; c != NULL; c = next) {
    next = c->next;
    free(c);
  }
  free(m);
}

static fo_metric_t *series(fo_metrics_t *m, const char *name, const char *help, bool gauge) {
  for (fo_metric_t *x = m->head; x != NULL; x = x->next) {
    if (strcmp(x->name, name) == 0)
      return x;
  }
  fo_metric_t *x = calloc(1, sizeof(*x));
  if (x == NULL)
    return NULL;
  x->name = strdup(name);
  if (x->name == NULL) {
    free(x);
    return NULL;
  }
  const char *brace = strchr(name, '{');
  x->base_len = brace != NULL ? (size_t)(brace - name) : strlen(name);
  x->help = help;
  x->is_gauge = gauge;
  if (m->tail != NULL)
    m->tail->next = x;
  else
    m->head = x;
  m->tail = x;
  return x;
}

uint64_t *fo_metrics_counter(fo_metrics_t *m, const char *name, const char *help) {
  fo_metric_t *x = series(m, name, help, false);
  return x != NULL ? &x->v.counter : NULL;
}

int64_t *fo_metrics_gauge(fo_metrics_t *m, const char *name, const char *help) {
  fo_metric_t *x = series(m, name, help, true);
  return x != NULL ? &x->v.gauge : NULL;
}

int fo_metrics_on_collect(fo_metrics_t *m, fo_metrics_collect_cb cb, void *ud) {
  collect_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return -ENOMEM;
  c->cb = cb;
  c->ud = ud;
  c->next = m->collectors;
  m->collectors = c;
  return 0;
}

int fo_metrics_render(fo_metrics_t *m, fo_sb_t *out) {
  for (collect_t *c = m->collectors; c != NULL; c = c->next)
    c->cb(c->ud);
  /* Series of one family are printed together under one HELP/TYPE, even if
   * they were registered apart. */
  for (fo_metric_t *x = m->head; x != NULL; x = x->next) {
    bool first = true;
    for (fo_metric_t *y = m->head; y != x; y = y->next) {
      if (y->base_len == x->base_len && strncmp(y->name, x->name, x->base_len) == 0) {
        first = false;
        break;
      }
    }
    if (!first)
      continue;
    fo_sb_printf(out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)x->base_len, x->name,
                 x->help != NULL ? x->help : "", (int)x->base_len, x->name,
                 x->is_gauge ? "gauge" : "counter");
    for (fo_metric_t *y = x; y != NULL; y = y->next) {
      if (y->base_len != x->base_len || strncmp(y->name, x->name, x->base_len) != 0)
        continue;
      if (y->is_gauge)
        fo_sb_printf(out, "%s %" PRId64 "\n", y->name, y->v.gauge);
      else
        fo_sb_printf(out, "%s %" PRIu64 "\n", y->name, y->v.counter);
    }
  }
  return out->oom ? -ENOMEM : 0;
}

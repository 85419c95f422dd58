/* Intrusive lists: glibc's <sys/queue.h> (LIST_, SLIST_, STAILQ_, TAILQ_),
 * plus the *_FOREACH_SAFE forms that the BSDs have and glibc lacks (they
 * allow removing the current element while iterating). */
#ifndef FO_LIST_H
#define FO_LIST_H

#include <sys/queue.h>

#ifndef LIST_FOREACH_SAFE
#define LIST_FOREACH_SAFE(var, head, field, tvar)                                                  \
  for ((var) = LIST_FIRST(head); (var) != NULL && ((tvar) = LIST_NEXT(var, field), 1);             \
       (var) = (tvar))
#endif
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                                                 \
  for ((var) = TAILQ_FIRST(head); (var) != NULL && ((tvar) = TAILQ_NEXT(var, field), 1);           \
       (var) = (tvar))
#endif
#ifndef SLIST_FOREACH_SAFE
#define SLIST_FOREACH_SAFE(var, head, field, tvar)                                                 \
  for ((var) = SLIST_FIRST(head); (var) != NULL && ((tvar) = SLIST_NEXT(var, field), 1);           \
       (var) = (tvar))
#endif
#ifndef STAILQ_FOREACH_SAFE
#define STAILQ_FOREACH_SAFE(var, head, field, tvar)                                                \
  for ((var) = STAILQ_FIRST(head); (var) != NULL && ((tvar) = STAILQ_NEXT(var, field), 1);         \
       (var) = (tvar))
#endif

#endif

/* One line per event on stderr, logfmt: ts level mod msg key=value...
 * stdout is kept for the machine-readable lines (listening=..., bootstrap=...). */
#ifndef FO_LOG_H
#define FO_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
  FO_LOG_LVL_DEBUG = 0,
  FO_LOG_LVL_INFO = 1,
  FO_LOG_LVL_WARN = 2,
  FO_LOG_LVL_ERROR = 3,
} fo_log_level_t;

/* Process-wide level, set once at start-up (like Redis's verbosity). */
extern fo_log_level_t fo_log_min_level;

/* Parses "debug|info|warn|error"; returns 0 or -EINVAL. */
int fo_log_parse_level(const char *s, fo_log_level_t *out);
void fo_log_set_level(fo_log_level_t lvl);
/* `kv` is a printf format for the key=value part ("" for none). */
void fo_log_write(fo_log_level_t lvl, const char *mod, const char *msg, const char *kv, ...)
    __attribute__((format(printf, 4, 5)));

#define FO_LOG_(lvl, mod, msg, ...)                                                                \
  do {                                                                                             \
    if ((lvl) >= fo_log_min_level)                                                                 \
      fo_log_write((lvl), (mod), (msg), __VA_ARGS__);                                              \
  } while (0)
#define FO_LOG_DEBUG(mod, msg, ...) FO_LOG_(FO_LOG_LVL_DEBUG, mod, msg, __VA_ARGS__)
#define FO_LOG_INFO(mod, msg, ...)  FO_LOG_(FO_LOG_LVL_INFO, mod, msg, __VA_ARGS__)
#define FO_LOG_WARN(mod, msg, ...)  FO_LOG_(FO_LOG_LVL_WARN, mod, msg, __VA_ARGS__)
#define FO_LOG_ERROR(mod, msg, ...) FO_LOG_(FO_LOG_LVL_ERROR, mod, msg, __VA_ARGS__)

/* For lines an outside peer can trigger: at most one per interval, the
 * number suppressed meanwhile is returned so the next line can report it. */
typedef struct {
  uint64_t last_ms;
  uint64_t suppressed;
} fo_log_ratelimit_t;
/* Returns true when a line may be written now; *suppressed gets the count of
 * lines dropped since the last allowed one. */
bool fo_log_ratelimit(fo_log_ratelimit_t *rl, uint64_t now_ms, uint64_t interval_ms,
                      uint64_t *suppressed);

/* Wall-clock milliseconds since the epoch. */
uint64_t fo_now_ms(void);
/* Returns a static description of a negative errno / libuv code. */
const char *fo_strerror(int code);

#endif

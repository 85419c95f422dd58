#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <uv.h>

fo_log_level_t fo_log_min_level = FO_LOG_LVL_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int fo_log_parse_level(const char *s, fo_log_level_t *out) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *out = (fo_log_level_t)i;
      return 0;
    }
  }
  if (strcasecmp(s, "warning") == 0) {
    *out = FO_LOG_LVL_WARN;
    return 0;
  }
  return -EINVAL;
}

void fo_log_set_level(fo_log_level_t lvl) { fo_log_min_level = lvl; }

uint64_t fo_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void fo_log_write(fo_log_level_t lvl, const char *mod, const char *msg, const char *kv, ...) {
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line),
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s msg=\"%s\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, level_names[lvl & 3], mod, msg);
  if (n < 0)
    return;
  size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
  if (kv != NULL && kv[0] != '\0' && len < sizeof(line) - 2) {
    line[len++] = ' ';
    va_list ap;
    va_start(ap, kv);
    int m = vsnprintf(line + len, sizeof(line) - len, kv, ap);
    va_end(ap);
    if (m > 0)
      len += (size_t)m < sizeof(line) - len ? (size_t)m : sizeof(line) - len - 1;
  }
  /* Keep one event on one line whatever the peer sent us. */
  for (size_t i = 0; i < len; i++) {
    if (line[i] == '\n' || line[i] == '\r')
      line[i] = ' ';
  }
  line[len++] = '\n';
  fwrite(line, 1, len, stderr);
}

bool fo_log_ratelimit(fo_log_ratelimit_t *rl, uint64_t now_ms, uint64_t interval_ms,
                      uint64_t *suppressed) {
  if (rl->last_ms != 0 && now_ms - rl->last_ms < interval_ms) {
    rl->suppressed++;
    return false;
  }
  if (suppressed != NULL)
    *suppressed = rl->suppressed;
  rl->suppressed = 0;
  rl->last_ms = now_ms;
  return true;
}

const char *fo_strerror(int code) {
  if (code >= 0)
    return "ok";
  /* libuv codes are -errno on Linux; uv_err_name also knows UV_EOF & co. */
  return uv_err_name(code);
}

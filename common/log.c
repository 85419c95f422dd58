#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
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

void fo_log_set_level(fo_log_level_t lvl) {
  fo_log_min_level = lvl;
}

uint64_t fo_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Appends s[0..n) to line, escaping what could forge a field or reach a
 * terminal: '"' and '\' get a backslash, control bytes become \xNN. */
static size_t put_escaped(char *line, size_t len, size_t cap, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      if (len + 2 > cap)
        break;
      line[len++] = '\\';
      line[len++] = (char)c;
    } else if (c < 0x20 || c == 0x7f) {
      if (len + 4 > cap)
        break;
      line[len++] = '\\';
      line[len++] = 'x';
      line[len++] = hex[c >> 4];
      line[len++] = hex[c & 15];
    } else {
      if (len + 1 > cap)
        break;
      line[len++] = (char)c;
    }
  }
  return len;
}

/* Formats the key=value part: the literal text of `kv` is ours and is copied
 * as is (our separators and quotes), while each conversion is formatted on
 * its own and escaped, since arguments may carry peer bytes. */
static size_t put_kv(char *line, size_t len, size_t cap, const char *kv, va_list ap) {
  const char *p = kv;
  while (*p != '\0' && len < cap) {
    if (*p != '%') {
      line[len++] = *p++;
      continue;
    }
    if (p[1] == '%') {
      line[len++] = '%';
      p += 2;
      continue;
    }
    /* One conversion: %[flags][width][.precision][length]conv. */
    char spec[32];
    size_t sl = 0;
    int star_w = 0, star_p = 0, longs = 0;
    char lenmod = 0;
    spec[sl++] = *p++;
    while (*p != '\0' && strchr("-+ #0", *p) != NULL && sl < 20)
      spec[sl++] = *p++;
    if (*p == '*') {
      star_w = 1;
      spec[sl++] = *p++;
    }
    while (*p >= '0' && *p <= '9' && sl < 20)
      spec[sl++] = *p++;
    if (*p == '.') {
      spec[sl++] = *p++;
      if (*p == '*') {
        star_p = 1;
        spec[sl++] = *p++;
      }
      while (*p >= '0' && *p <= '9' && sl < 24)
        spec[sl++] = *p++;
    }
    while (*p != '\0' && strchr("hlzjtL", *p) != NULL && sl < 28) {
      if (*p == 'l')
        longs++;
      lenmod = *p;
      spec[sl++] = *p++;
    }
    if (*p == '\0')
      break;
    char conv = *p++;
    spec[sl++] = conv;
    spec[sl] = '\0';
    int w = star_w ? va_arg(ap, int) : 0;
    int pr = star_p ? va_arg(ap, int) : 0;
    char tmp[1024];
    int m;
#define FO_FMT_(arg)                                                                               \
  (star_w && star_p ? snprintf(tmp, sizeof(tmp), spec, w, pr, arg)                                 \
   : star_w         ? snprintf(tmp, sizeof(tmp), spec, w, arg)                                     \
   : star_p         ? snprintf(tmp, sizeof(tmp), spec, pr, arg)                                    \
                    : snprintf(tmp, sizeof(tmp), spec, arg))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    switch (conv) {
    case 'd':
    case 'i':
    case 'u':
    case 'x':
    case 'X':
    case 'o':
    case 'c':
      if (lenmod == 'z' || lenmod == 't')
        m = FO_FMT_(va_arg(ap, size_t));
      else if (lenmod == 'j')
        m = FO_FMT_(va_arg(ap, intmax_t));
      else if (longs >= 2)
        m = FO_FMT_(va_arg(ap, long long));
      else if (longs == 1)
        m = FO_FMT_(va_arg(ap, long));
      else
        m = FO_FMT_(va_arg(ap, int));
      break;
    case 'e':
    case 'E':
    case 'f':
    case 'F':
    case 'g':
    case 'G':
    case 'a':
    case 'A':
      if (lenmod == 'L')
        m = FO_FMT_(va_arg(ap, long double));
      else
        m = FO_FMT_(va_arg(ap, double));
      break;
    case 's': {
      const char *s = va_arg(ap, const char *);
      m = FO_FMT_(s != NULL ? s : "(null)");
      break;
    }
    case 'p':
      m = FO_FMT_(va_arg(ap, void *));
      break;
    default: /* unknown conversion: stop rather than misread the arguments */
      return len;
    }
#pragma GCC diagnostic pop
#undef FO_FMT_
    if (m > 0)
      len = put_escaped(line, len, cap, tmp, (size_t)m < sizeof(tmp) ? (size_t)m : sizeof(tmp) - 1);
  }
  return len;
}

void fo_log_write(fo_log_level_t lvl, const char *mod, const char *msg, const char *kv, ...) {
  char line[2048];
  const size_t cap = sizeof(line) - 1; /* room for the final '\n' */
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line),
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, level_names[lvl & 3]);
  if (n < 0)
    return;
  size_t len = (size_t)n < cap ? (size_t)n : cap;
  len = put_escaped(line, len, cap, mod, strlen(mod));
  if (len + 6 <= cap) {
    memcpy(line + len, " msg=\"", 6);
    len += 6;
    len = put_escaped(line, len, cap - 1, msg, strlen(msg));
    line[len++] = '"';
  }
  if (kv != NULL && kv[0] != '\0' && len + 1 < cap) {
    line[len++] = ' ';
    va_list ap;
    va_start(ap, kv);
    len = put_kv(line, len, cap, kv, ap);
    va_end(ap);
  }
  /* Keep one event on one line even if a format string itself had one. */
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

#include "buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

fo_buf_t *fo_buf_new(size_t cap) {
  if (cap > UINT32_MAX)
    return NULL;
  fo_buf_t *buf = malloc(sizeof(*buf) + cap);
  if (buf == NULL)
    return NULL;
  buf->refs = 1;
  buf->len = 0;
  buf->cap = (uint32_t)cap;
  buf->queued = 0;
  return buf;
}

fo_buf_t *fo_buf_from(const void *p, size_t n) {
  fo_buf_t *buf = fo_buf_new(n);
  if (buf == NULL)
    return NULL;
  if (n > 0)
    memcpy(buf->data, p, n);
  buf->len = (uint32_t)n;
  return buf;
}

void fo_buf_unref(fo_buf_t *buf) {
  if (buf != NULL && --buf->refs == 0)
    free(buf);
}

void fo_sb_init(fo_sb_t *sb) {
  memset(sb, 0, sizeof(*sb));
}

void fo_sb_free(fo_sb_t *sb) {
  free(sb->data);
  fo_sb_init(sb);
}

void fo_sb_reset(fo_sb_t *sb) {
  sb->len = 0;
  if (sb->data != NULL)
    sb->data[0] = '\0';
}

int fo_sb_reserve(fo_sb_t *sb, size_t extra) {
  if (sb->oom)
    return -ENOMEM;
  if (extra > SIZE_MAX / 2 - sb->len - 1)
    goto oom;
  size_t need = sb->len + extra + 1; /* +1 keeps room for the NUL */
  if (need <= sb->cap)
    return 0;
  size_t cap = sb->cap ? sb->cap : 64;
  while (cap < need)
    cap *= 2;
  char *p = realloc(sb->data, cap);
  if (p == NULL)
    goto oom;
  sb->data = p;
  sb->cap = cap;
  return 0;
oom:
  sb->oom = 1;
  return -ENOMEM;
}

int fo_sb_append(fo_sb_t *sb, const void *p, size_t n) {
  int rc = fo_sb_reserve(sb, n);
  if (rc != 0)
    return rc;
  if (n > 0)
    memcpy(sb->data + sb->len, p, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
  return 0;
}

int fo_sb_puts(fo_sb_t *sb, const char *s) {
  return fo_sb_append(sb, s, strlen(s));
}

int fo_sb_putc(fo_sb_t *sb, char c) {
  return fo_sb_append(sb, &c, 1);
}

int fo_sb_vprintf(fo_sb_t *sb, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  char small[256];
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  int rc;
  if (n < 0) {
    rc = -EINVAL;
  } else if ((size_t)n < sizeof(small)) {
    rc = fo_sb_append(sb, small, (size_t)n);
  } else {
    rc = fo_sb_reserve(sb, (size_t)n);
    if (rc == 0) {
      vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap2);
      sb->len += (size_t)n;
    }
  }
  va_end(ap2);
  return rc;
}

int fo_sb_printf(fo_sb_t *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = fo_sb_vprintf(sb, fmt, ap);
  va_end(ap);
  return rc;
}

const char *fo_sb_cstr(fo_sb_t *sb) {
  return sb->data != NULL ? sb->data : "";
}

fo_buf_t *fo_sb_to_buf(fo_sb_t *sb) {
  if (sb->oom)
    return NULL;
  fo_buf_t *buf = fo_buf_from(sb->data, sb->len);
  if (buf != NULL)
    fo_sb_reset(sb);
  return buf;
}

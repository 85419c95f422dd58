/* Refcounted byte buffers (one encoded frame shared by many sockets) and a
 * growable string builder for building replies, records and metrics text. */
#ifndef FO_BUF_H
#define FO_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* A shared, immutable-once-published byte buffer. Refcounts are plain ints:
 * a buffer belongs to one loop thread. */
typedef struct fo_buf {
  uint32_t refs;
  uint32_t len; /* bytes used in data */
  uint32_t cap; /* bytes allocated for data */
  /* Outbound queues holding a reference (delivery's memory accounting
   * counts a shared frame's allocation once, while any queue holds it). */
  uint32_t queued;
  uint8_t data[];
} fo_buf_t;

/* Returns a buffer with refs == 1, len == 0 and room for cap bytes, or NULL. */
fo_buf_t *fo_buf_new(size_t cap);
/* Returns a buffer with refs == 1 holding a copy of p[0..n), or NULL. */
fo_buf_t *fo_buf_from(const void *p, size_t n);
/* Takes one more reference; returns buf. */
static inline fo_buf_t *fo_buf_ref(fo_buf_t *buf) {
  buf->refs++;
  return buf;
}
/* Drops one reference; the last one frees the buffer. NULL is a no-op. */
void fo_buf_unref(fo_buf_t *buf);

/* A growable byte string. Owns `data` (NUL-terminated when len > 0 or after
 * fo_sb_cstr); zero-initialise or fo_sb_init() before use, fo_sb_free() after. */
typedef struct fo_sb {
  char *data;
  size_t len;
  size_t cap;
  int oom; /* set once an allocation failed; further appends are ignored */
} fo_sb_t;

void fo_sb_init(fo_sb_t *sb);
void fo_sb_free(fo_sb_t *sb);
void fo_sb_reset(fo_sb_t *sb); /* len = 0, keeps the allocation */
/* Each returns 0 or -ENOMEM (and then sets sb->oom). */
int fo_sb_reserve(fo_sb_t *sb, size_t extra);
int fo_sb_append(fo_sb_t *sb, const void *p, size_t n);
int fo_sb_puts(fo_sb_t *sb, const char *s);
int fo_sb_putc(fo_sb_t *sb, char c);
int fo_sb_printf(fo_sb_t *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fo_sb_vprintf(fo_sb_t *sb, const char *fmt, va_list ap);
/* Returns a NUL-terminated view ("" when empty); valid until the next append. */
const char *fo_sb_cstr(fo_sb_t *sb);
/* Moves the bytes into a new fo_buf_t (refs == 1) and resets sb; NULL on OOM. */
fo_buf_t *fo_sb_to_buf(fo_sb_t *sb);

#endif

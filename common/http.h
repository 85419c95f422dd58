/* HTTP/1.1 request parsing (on Debian's http-parser 2.9) with limits, shared
 * by ingest's API server and delivery's WebSocket handshake, plus response
 * formatting helpers. Connection handling lives in each service. */
#ifndef FO_HTTP_H
#define FO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"

#define FO_HTTP_MAX_HEADERS 32

typedef struct {
  char *name;  /* lower-cased; owned by the request */
  char *value; /* owned by the request */
} fo_http_header_t;

typedef struct {
  const char *method; /* static string, e.g. "POST" */
  int method_id;      /* enum http_method */
  char *path;         /* decoded-free raw path, without the query; owned */
  char *query;        /* raw query without '?', or NULL; owned */
  fo_http_header_t headers[FO_HTTP_MAX_HEADERS];
  int nheaders;
  fo_sb_t body; /* owned */
  int http_major, http_minor;
  bool keep_alive;
  bool upgrade;      /* Connection: upgrade + Upgrade: present */
  bool body_follows; /* Content-Length > 0 or chunked (set with the headers) */
} fo_http_request_t;

/* Limits and outcome codes. */
typedef struct {
  size_t max_header_bytes; /* request line + headers */
  size_t max_body_bytes;
} fo_http_limits_t;

typedef struct fo_http_parser fo_http_parser_t;

/* Called once per complete request. `req` is owned by the parser and valid
 * until the callback returns; it may steal members (set them to NULL) to keep
 * them. Return 0 to continue parsing pipelined requests, non-zero to pause
 * (fo_http_parser_feed then returns how many bytes it consumed). */
typedef int (*fo_http_request_cb)(void *ud, fo_http_request_t *req);

/* Optional: called once per request when its headers are complete, before
 * any body byte is read, with the same ud. `req` has everything but the
 * body (and keep_alive/upgrade); it is valid during the call only and must
 * not be modified. Return 0 to read the body and go on, non-zero to refuse
 * it: fo_http_parser_feed then returns -ECANCELED and the parser takes no
 * more bytes (the body was not consumed, so the connection cannot be
 * reused); the callback answers the request itself. */
typedef int (*fo_http_headers_cb)(void *ud, const fo_http_request_t *req);

fo_http_parser_t *fo_http_parser_new(const fo_http_limits_t *limits, fo_http_request_cb cb,
                                     void *ud);
void fo_http_parser_on_headers(fo_http_parser_t *p, fo_http_headers_cb cb);
void fo_http_parser_free(fo_http_parser_t *p);

/* Feeds bytes. Returns bytes consumed (< n when paused by the callback or
 * after an upgrade request: the rest belongs to the new protocol), or:
 *   -EMSGSIZE  headers over the limit (431) or body over the limit (413;
 *              reported as soon as Content-Length declares it)
 *   -EPROTO    malformed request (400); fo_http_parser_error() says why
 *   -ENOTSUP   unsupported method or version (501 / 505)
 *   -ECANCELED the headers callback refused the request (it answered) */
ssize_t fo_http_parser_feed(fo_http_parser_t *p, const char *data, size_t n);
/* True when the request that caused -EMSGSIZE was over the body limit. */
bool fo_http_parser_body_too_large(const fo_http_parser_t *p);
const char *fo_http_parser_error(const fo_http_parser_t *p);
/* Resumes after a pause. */
void fo_http_parser_resume(fo_http_parser_t *p);
/* True while a request is partially received. */
bool fo_http_parser_mid_request(const fo_http_parser_t *p);

/* Case-insensitive header lookup; returns the value or NULL. */
const char *fo_http_header(const fo_http_request_t *req, const char *lower_name);
/* How fo_http_pct_decode treats its input:
 *   FO_PCT_PATH   a path segment (RFC 3986): '%' must start "%XX" (else
 *                 -EINVAL); '+' is a plus sign.
 *   FO_PCT_QUERY  a query value (HTML form encoding, as browsers send it):
 *                 '+' is a space; a '%' not followed by two hex digits is
 *                 kept as it is. */
typedef enum { FO_PCT_PATH, FO_PCT_QUERY } fo_pct_mode_t;
/* Percent-decodes s[0..len) into out (outlen bytes, no NUL appended).
 * Returns the decoded length, -EINVAL (bad escape, FO_PCT_PATH) or
 * -EMSGSIZE (does not fit outlen). Decoding never grows: len bytes suffice. */
ssize_t fo_http_pct_decode(const char *s, size_t len, fo_pct_mode_t mode, char *out, size_t outlen);
/* Finds key in a query string ("a=1&b=2") and returns a malloc'd,
 * NUL-terminated copy decoded with FO_PCT_QUERY, or NULL when absent. */
char *fo_http_query_param(const char *query, const char *key);
/* "Bearer X" -> X (pointer into value) or NULL. */
const char *fo_http_bearer(const fo_http_request_t *req);

const char *fo_http_status_text(int status);
/* The one response formatter of both services (printf-free: it runs once
 * per request). Appends the status line, Content-Type (when content_type is
 * not NULL), "Content-Length: content_length", "Connection: close" unless
 * keep_alive, any extra header lines (each "Name: value\r\n", may be NULL)
 * and the blank line; the caller appends the body (or not, for HEAD).
 * Returns 0 or -ENOMEM (out->oom). */
int fo_http_format_head(fo_sb_t *out, int status, const char *content_type,
                        const char *extra_headers, size_t content_length, bool keep_alive);
/* A complete response: fo_http_format_head (Content-Type only when body is
 * not NULL; Content-Length 0 when it is NULL), then the body. Returns 0 or
 * -ENOMEM. */
int fo_http_format_response(fo_sb_t *out, int status, const char *content_type,
                            const char *extra_headers, const void *body, size_t body_len,
                            bool keep_alive);
/* Appends the JSON error body `{"error":"msg"}` (msg escaped). */
void fo_http_error_body(fo_sb_t *out, const char *msg);
/* Appends `{"error":"msg"}` as a complete JSON error response. */
int fo_http_format_error(fo_sb_t *out, int status, const char *msg, const char *extra_headers,
                         bool keep_alive);

#endif

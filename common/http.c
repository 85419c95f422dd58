#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "digits.h"
#include "json_out.h"

struct fo_http_parser {
  http_parser hp; /* hp.data == this */
  http_parser_settings settings;
  fo_http_limits_t limits;
  fo_http_request_cb cb;
  fo_http_headers_cb headers_cb; /* or NULL */
  void *ud;
  fo_http_request_t req;
  fo_sb_t url;
  fo_sb_t field, value; /* header being received (may arrive in pieces) */
  bool in_value;
  bool in_message;
  size_t header_bytes;
  int error; /* our own error, beyond http-parser's */
  bool body_too_large;
  const char *errmsg;
};

static void req_clear(fo_http_request_t *req) {
  free(req->path);
  free(req->query);
  for (int i = 0; i < req->nheaders; i++) {
    free(req->headers[i].name);
    free(req->headers[i].value);
  }
  fo_sb_free(&req->body);
  memset(req, 0, sizeof(*req));
}

static int fail(fo_http_parser_t *p, int code, const char *msg) {
  p->error = code;
  p->errmsg = msg;
  return -1; /* makes http_parser_execute stop with HPE_CB_* */
}

static int on_message_begin(http_parser *hp) {
  fo_http_parser_t *p = hp->data;
  req_clear(&p->req);
  fo_sb_reset(&p->url);
  fo_sb_reset(&p->field);
  fo_sb_reset(&p->value);
  p->in_value = false;
  p->in_message = true;
  p->header_bytes = 0;
  return 0;
}

static int count_header_bytes(fo_http_parser_t *p, size_t n) {
  p->header_bytes += n;
  if (p->header_bytes > p->limits.max_header_bytes)
    return fail(p, -EMSGSIZE, "request headers too large");
  return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n) {
  fo_http_parser_t *p = hp->data;
  if (count_header_bytes(p, n) != 0)
    return -1;
  return fo_sb_append(&p->url, at, n) == 0 ? 0 : fail(p, -ENOMEM, "out of memory");
}

static int commit_header(fo_http_parser_t *p) {
  fo_http_request_t *req = &p->req;
  if (req->nheaders >= FO_HTTP_MAX_HEADERS)
    return fail(p, -EMSGSIZE, "too many request headers");
  char *name = strndup(fo_sb_cstr(&p->field), p->field.len);
  char *value = strndup(fo_sb_cstr(&p->value), p->value.len);
  if (name == NULL || value == NULL) {
    free(name);
    free(value);
    return fail(p, -ENOMEM, "out of memory");
  }
  for (char *c = name; *c != '\0'; c++)
    *c = (char)tolower((unsigned char)*c);
  req->headers[req->nheaders].name = name;
  req->headers[req->nheaders].value = value;
  req->nheaders++;
  fo_sb_reset(&p->field);
  fo_sb_reset(&p->value);
  p->in_value = false;
  return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n) {
  fo_http_parser_t *p = hp->data;
  if (count_header_bytes(p, n) != 0)
    return -1;
  if (p->in_value && commit_header(p) != 0)
    return -1;
  return fo_sb_append(&p->field, at, n) == 0 ? 0 : fail(p, -ENOMEM, "out of memory");
}

static int on_header_value(http_parser *hp, const char *at, size_t n) {
  fo_http_parser_t *p = hp->data;
  if (count_header_bytes(p, n) != 0)
    return -1;
  p->in_value = true;
  return fo_sb_append(&p->value, at, n) == 0 ? 0 : fail(p, -ENOMEM, "out of memory");
}

static int on_headers_complete(http_parser *hp) {
  fo_http_parser_t *p = hp->data;
  fo_http_request_t *req = &p->req;
  if ((p->in_value || p->field.len > 0) && commit_header(p) != 0)
    return -1;
  if (hp->http_major != 1)
    return fail(p, -ENOTSUP, "HTTP version not supported");
  req->http_major = hp->http_major;
  req->http_minor = hp->http_minor;
  req->method_id = (int)hp->method;
  req->method = http_method_str((enum http_method)hp->method);
  /* Split "path?query#fragment". */
  const char *url = fo_sb_cstr(&p->url);
  size_t plen = strcspn(url, "?#");
  req->path = strndup(url, plen);
  if (url[plen] == '?') {
    size_t qlen = strcspn(url + plen + 1, "#");
    req->query = strndup(url + plen + 1, qlen);
    if (req->query == NULL)
      return fail(p, -ENOMEM, "out of memory");
  }
  if (req->path == NULL)
    return fail(p, -ENOMEM, "out of memory");
  if (req->path[0] != '/' && hp->method != HTTP_CONNECT && hp->method != HTTP_OPTIONS)
    return fail(p, -EPROTO, "request target must be an absolute path");
  req->body_follows =
      (hp->flags & F_CHUNKED) != 0 || (hp->content_length != ULLONG_MAX && hp->content_length > 0);
  /* The service first (e.g. 401 comes before 413 for an unknown client). */
  if (p->headers_cb != NULL && p->headers_cb(p->ud, req) != 0)
    return fail(p, -ECANCELED, "refused after the headers");
  /* Declared too large: refuse before a single body byte is read. */
  if ((hp->flags & F_CHUNKED) == 0 && hp->content_length != ULLONG_MAX &&
      hp->content_length > p->limits.max_body_bytes) {
    p->body_too_large = true;
    return fail(p, -EMSGSIZE, "request body too large");
  }
  return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n) {
  fo_http_parser_t *p = hp->data;
  if (p->req.body.len + n > p->limits.max_body_bytes) {
    p->body_too_large = true;
    return fail(p, -EMSGSIZE, "request body too large");
  }
  return fo_sb_append(&p->req.body, at, n) == 0 ? 0 : fail(p, -ENOMEM, "out of memory");
}

static int on_message_complete(http_parser *hp) {
  fo_http_parser_t *p = hp->data;
  fo_http_request_t *req = &p->req;
  req->keep_alive = http_should_keep_alive(hp) != 0;
  req->upgrade = hp->upgrade != 0;
  p->in_message = false;
  int pause = p->cb(p->ud, req);
  req_clear(req);
  if (pause != 0)
    http_parser_pause(hp, 1);
  return 0;
}

fo_http_parser_t *fo_http_parser_new(const fo_http_limits_t *limits, fo_http_request_cb cb,
                                     void *ud) {
  fo_http_parser_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  http_parser_init(&p->hp, HTTP_REQUEST);
  p->hp.data = p;
  http_parser_settings_init(&p->settings);
  p->settings.on_message_begin = on_message_begin;
  p->settings.on_url = on_url;
  p->settings.on_header_field = on_header_field;
  p->settings.on_header_value = on_header_value;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  p->limits = *limits;
  p->cb = cb;
  p->ud = ud;
  return p;
}

void fo_http_parser_on_headers(fo_http_parser_t *p, fo_http_headers_cb cb) {
  p->headers_cb = cb;
}

void fo_http_parser_free(fo_http_parser_t *p) {
  if (p == NULL)
    return;
  req_clear(&p->req);
  fo_sb_free(&p->url);
  fo_sb_free(&p->field);
  fo_sb_free(&p->value);
  free(p);
}

ssize_t fo_http_parser_feed(fo_http_parser_t *p, const char *data, size_t n) {
  if (p->error != 0)
    return p->error;
  size_t done = http_parser_execute(&p->hp, &p->settings, data, n);
  enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
  if (e == HPE_PAUSED)
    return (ssize_t)done;
  if (p->error != 0)
    return p->error;
  if (e != HPE_OK) {
    p->errmsg = http_errno_description(e);
    p->error = e == HPE_HEADER_OVERFLOW ? -EMSGSIZE : -EPROTO;
    return p->error;
  }
  return (ssize_t)done;
}

bool fo_http_parser_body_too_large(const fo_http_parser_t *p) {
  return p->body_too_large;
}

const char *fo_http_parser_error(const fo_http_parser_t *p) {
  return p->errmsg != NULL ? p->errmsg : "ok";
}

void fo_http_parser_resume(fo_http_parser_t *p) {
  http_parser_pause(&p->hp, 0);
}

bool fo_http_parser_mid_request(const fo_http_parser_t *p) {
  return p->in_message;
}

const char *fo_http_header(const fo_http_request_t *req, const char *lower_name) {
  for (int i = 0; i < req->nheaders; i++) {
    if (req->headers[i].name != NULL && strcmp(req->headers[i].name, lower_name) == 0)
      return req->headers[i].value;
  }
  return NULL;
}

ssize_t fo_http_pct_decode(const char *s, size_t len, fo_pct_mode_t mode, char *out,
                           size_t outlen) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      int hi = i + 1 < len ? fo_hex_value((unsigned char)s[i + 1]) : -1;
      int lo = hi >= 0 && i + 2 < len ? fo_hex_value((unsigned char)s[i + 2]) : -1;
      if (hi >= 0 && lo >= 0) {
        c = hi << 4 | lo;
        i += 2;
      } else if (mode == FO_PCT_PATH) {
        return -EINVAL;
      }
    } else if (c == '+' && mode == FO_PCT_QUERY) {
      c = ' ';
    }
    if (o >= outlen)
      return -EMSGSIZE;
    out[o++] = (char)c;
  }
  return (ssize_t)o;
}

char *fo_http_query_param(const char *query, const char *key) {
  if (query == NULL)
    return NULL;
  size_t klen = strlen(key);
  const char *s = query;
  while (*s != '\0') {
    const char *end = strchr(s, '&');
    size_t len = end != NULL ? (size_t)(end - s) : strlen(s);
    if (len > klen && strncmp(s, key, klen) == 0 && s[klen] == '=') {
      const char *v = s + klen + 1;
      size_t vlen = len - klen - 1;
      char *out = malloc(vlen + 1);
      if (out == NULL)
        return NULL;
      ssize_t o = fo_http_pct_decode(v, vlen, FO_PCT_QUERY, out, vlen);
      out[o >= 0 ? (size_t)o : 0] = '\0'; /* cannot fail: lenient, and never grows */
      return out;
    }
    if (end == NULL)
      break;
    s = end + 1;
  }
  return NULL;
}

const char *fo_http_bearer(const fo_http_request_t *req) {
  const char *v = fo_http_header(req, "authorization");
  if (v == NULL || strncasecmp(v, "Bearer ", 7) != 0)
    return NULL;
  v += 7;
  while (*v == ' ')
    v++;
  return *v != '\0' ? v : NULL;
}

const char *fo_http_status_text(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 207:
    return "Multi-Status";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 411:
    return "Length Required";
  case 413:
    return "Content Too Large";
  case 415:
    return "Unsupported Media Type";
  case 426:
    return "Upgrade Required";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

int fo_http_format_head(fo_sb_t *out, int status, const char *content_type,
                        const char *extra_headers, size_t content_length, bool keep_alive) {
  char num[24];
  int n = 0;
  size_t v = content_length;
  do {
    num[sizeof(num) - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0 && n < 20);
  if (status < 100 || status > 999)
    status = 500;
  char code[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                  (char)('0' + status % 10), ' '};
  fo_sb_append(out, "HTTP/1.1 ", 9);
  fo_sb_append(out, code, 4);
  fo_sb_puts(out, fo_http_status_text(status));
  if (content_type != NULL) {
    fo_sb_append(out, "\r\nContent-Type: ", 16);
    fo_sb_puts(out, content_type);
  }
  fo_sb_append(out, "\r\nContent-Length: ", 18);
  fo_sb_append(out, num + sizeof(num) - n, (size_t)n);
  fo_sb_append(out, "\r\n", 2);
  if (!keep_alive)
    fo_sb_append(out, "Connection: close\r\n", 19);
  if (extra_headers != NULL)
    fo_sb_puts(out, extra_headers);
  fo_sb_append(out, "\r\n", 2);
  return out->oom ? -ENOMEM : 0;
}

int fo_http_format_response(fo_sb_t *out, int status, const char *content_type,
                            const char *extra_headers, const void *body, size_t body_len,
                            bool keep_alive) {
  fo_http_format_head(out, status, body != NULL ? content_type : NULL, extra_headers,
                      body != NULL ? body_len : 0, keep_alive);
  if (body != NULL && body_len > 0)
    fo_sb_append(out, body, body_len);
  return out->oom ? -ENOMEM : 0;
}

void fo_http_error_body(fo_sb_t *out, const char *msg) {
  fo_sb_puts(out, "{\"error\":");
  /* msg is ours, but may quote peer input: escape it properly. */
  fo_json_put_str(out, msg, strlen(msg));
  fo_sb_puts(out, "}");
}

int fo_http_format_error(fo_sb_t *out, int status, const char *msg, const char *extra_headers,
                         bool keep_alive) {
  fo_sb_t body;
  fo_sb_init(&body);
  fo_http_error_body(&body, msg);
  int rc = body.oom ? -ENOMEM
                    : fo_http_format_response(out, status, "application/json", extra_headers,
                                              body.data, body.len, keep_alive);
  fo_sb_free(&body);
  return rc;
}

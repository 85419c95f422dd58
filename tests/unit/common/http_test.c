#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "http.h"

typedef struct {
  int count;
  int pause_after;
  char method[16];
  char path[128];
  char query[128];
  char body[256];
  char host[64];
  bool keep_alive, upgrade;
} seen_t;

static int on_request(void *ud, fo_http_request_t *req) {
  seen_t *s = ud;
  s->count++;
  snprintf(s->method, sizeof(s->method), "%s", req->method);
  snprintf(s->path, sizeof(s->path), "%s", req->path);
  snprintf(s->query, sizeof(s->query), "%s", req->query ? req->query : "");
  snprintf(s->body, sizeof(s->body), "%.*s", (int)req->body.len, fo_sb_cstr(&req->body));
  const char *h = fo_http_header(req, "host");
  snprintf(s->host, sizeof(s->host), "%s", h ? h : "");
  s->keep_alive = req->keep_alive;
  s->upgrade = req->upgrade;
  return s->pause_after > 0 && s->count >= s->pause_after;
}

static const fo_http_limits_t limits = {1024, 64};

static void http_parses_a_post_byte_by_byte(void **state) {
  (void)state;
  seen_t s = {0};
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  const char req[] = "POST /v1/send?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
  for (size_t i = 0; i < sizeof(req) - 1; i++)
    assert_int_equal(fo_http_parser_feed(p, req + i, 1), 1);
  assert_int_equal(s.count, 1);
  assert_string_equal(s.method, "POST");
  assert_string_equal(s.path, "/v1/send");
  assert_string_equal(s.query, "x=1");
  assert_string_equal(s.body, "hello");
  assert_string_equal(s.host, "h");
  assert_true(s.keep_alive);
  fo_http_parser_free(p);
}

static void http_pipelined_and_chunked_with_pause(void **state) {
  (void)state;
  seen_t s = {0};
  s.pause_after = 1;
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  const char reqs[] = "GET /a HTTP/1.1\r\n\r\n"
                      "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  ssize_t n = fo_http_parser_feed(p, reqs, sizeof(reqs) - 1);
  assert_int_equal(n, 19); /* paused after the first request */
  assert_string_equal(s.path, "/a");
  fo_http_parser_resume(p);
  s.pause_after = 0;
  ssize_t m = fo_http_parser_feed(p, reqs + n, sizeof(reqs) - 1 - (size_t)n);
  assert_int_equal(m, (ssize_t)(sizeof(reqs) - 1) - n);
  assert_int_equal(s.count, 2);
  assert_string_equal(s.path, "/b");
  assert_string_equal(s.body, "abcde");
  fo_http_parser_free(p);
}

static void http_refuses_declared_large_body_before_reading_it(void **state) {
  (void)state;
  seen_t s = {0};
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  const char req[] = "POST /v1/send HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
  assert_int_equal(fo_http_parser_feed(p, req, sizeof(req) - 1), -EMSGSIZE);
  assert_true(fo_http_parser_body_too_large(p));
  assert_int_equal(s.count, 0);
  fo_http_parser_free(p);
}

typedef struct {
  seen_t seen;
  int calls;
  bool body_follows;
  char auth[64];
} gate_t;

/* Refuses requests without "Authorization: good" when a body follows. */
static int on_headers(void *ud, const fo_http_request_t *req) {
  gate_t *g = ud;
  g->calls++;
  g->body_follows = req->body_follows;
  const char *a = fo_http_header(req, "authorization");
  snprintf(g->auth, sizeof(g->auth), "%s", a ? a : "");
  assert_int_equal(req->body.len, 0);
  return req->body_follows && (a == NULL || strcmp(a, "good") != 0);
}

static int on_gated_request(void *ud, fo_http_request_t *req) {
  return on_request(&((gate_t *)ud)->seen, req);
}

static void http_headers_callback_can_refuse_before_the_body(void **state) {
  (void)state;
  const fo_http_limits_t big = {1024, 1 << 20};
  gate_t g = {0};
  fo_http_parser_t *p = fo_http_parser_new(&big, on_gated_request, &g);
  fo_http_parser_on_headers(p, on_headers);
  /* accepted: pipelined requests go on as before, with and without bodies */
  const char ok[] = "POST /a HTTP/1.1\r\nAuthorization: good\r\nContent-Length: 2\r\n\r\nhi"
                    "GET /b HTTP/1.1\r\n\r\n";
  assert_int_equal(fo_http_parser_feed(p, ok, sizeof(ok) - 1), (ssize_t)sizeof(ok) - 1);
  assert_int_equal(g.calls, 2);
  assert_int_equal(g.seen.count, 2);
  assert_false(g.body_follows);
  /* refused right after the headers: the body is neither needed nor read */
  const char bad[] = "POST /c HTTP/1.1\r\nAuthorization: bad\r\nContent-Length: 1000000\r\n\r\n";
  assert_int_equal(fo_http_parser_feed(p, bad, sizeof(bad) - 1), -ECANCELED);
  assert_int_equal(g.calls, 3);
  assert_true(g.body_follows);
  assert_string_equal(g.auth, "bad");
  assert_int_equal(g.seen.count, 2);
  /* and nothing more is taken */
  assert_int_equal(fo_http_parser_feed(p, "xxxx", 4), -ECANCELED);
  assert_int_equal(g.seen.count, 2);
  fo_http_parser_free(p);
}

static void http_refuses_chunked_body_over_limit(void **state) {
  (void)state;
  seen_t s = {0};
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  const char req[] =
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "50\r\n01234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n";
  assert_int_equal(fo_http_parser_feed(p, req, sizeof(req) - 1), -EMSGSIZE);
  assert_true(fo_http_parser_body_too_large(p));
  fo_http_parser_free(p);
}

static void http_refuses_huge_headers(void **state) {
  (void)state;
  seen_t s = {0};
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  char big[3000];
  int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-A: %02000d\r\n\r\n", 0);
  assert_int_equal(fo_http_parser_feed(p, big, (size_t)n), -EMSGSIZE);
  assert_false(fo_http_parser_body_too_large(p));
  fo_http_parser_free(p);
}

static void http_rejects_malformed(void **state) {
  (void)state;
  static const char *const bad[] = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      "GET nopath HTTP/1.1\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    seen_t s = {0};
    fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
    ssize_t rc = fo_http_parser_feed(p, bad[i], strlen(bad[i]));
    print_message("%zu -> %zd %s\n", i, rc, fo_http_parser_error(p));
    assert_true(rc == -EPROTO || rc == -ENOTSUP);
    assert_int_equal(s.count, 0);
    /* a failed parser stays failed */
    assert_true(fo_http_parser_feed(p, "GET / HTTP/1.1\r\n\r\n", 18) < 0);
    fo_http_parser_free(p);
  }
}

static void http_upgrade_leaves_the_rest(void **state) {
  (void)state;
  seen_t s = {0};
  fo_http_parser_t *p = fo_http_parser_new(&limits, on_request, &s);
  const char req[] = "GET /ws?token=a%2Eb HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     "Upgrade: websocket\r\n\r\n\x81\x80";
  ssize_t n = fo_http_parser_feed(p, req, sizeof(req) - 1);
  assert_int_equal(n, (ssize_t)sizeof(req) - 3);
  assert_true(s.upgrade);
  char *tok = fo_http_query_param(s.query, "token");
  assert_string_equal(tok, "a.b");
  free(tok);
  assert_null(fo_http_query_param(s.query, "tok"));
  fo_http_parser_free(p);
}

static void http_formats_responses(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  fo_http_format_error(&sb, 503, "kafka \"down\"", "Retry-After: 1\r\n", true);
  assert_string_equal(
      fo_sb_cstr(&sb),
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
      "Content-Length: 26\r\nRetry-After: 1\r\n\r\n{\"error\":\"kafka \\\"down\\\"\"}");
  fo_sb_reset(&sb);
  fo_http_format_response(&sb, 202, "application/json", NULL, "{}", 2, false);
  assert_non_null(strstr(fo_sb_cstr(&sb), "Connection: close\r\n"));
  fo_sb_free(&sb);
}

/* One decoder, two modes: a path segment is strict and keeps '+'; a query
 * value turns '+' into a space and keeps a stray '%'. */
static void http_pct_decode_modes(void **state) {
  (void)state;
  char out[16];
  ssize_t n = fo_http_pct_decode("a%2Fb+c", 7, FO_PCT_PATH, out, sizeof(out));
  assert_int_equal(n, 5);
  assert_memory_equal(out, "a/b+c", 5);
  n = fo_http_pct_decode("a%2fb+c", 7, FO_PCT_QUERY, out, sizeof(out));
  assert_int_equal(n, 5);
  assert_memory_equal(out, "a/b c", 5);
  /* bad or cut escapes */
  assert_int_equal(fo_http_pct_decode("a%2", 3, FO_PCT_PATH, out, sizeof(out)), -EINVAL);
  assert_int_equal(fo_http_pct_decode("a%zz", 4, FO_PCT_PATH, out, sizeof(out)), -EINVAL);
  assert_int_equal(fo_http_pct_decode("%", 1, FO_PCT_PATH, out, sizeof(out)), -EINVAL);
  n = fo_http_pct_decode("a%2", 3, FO_PCT_QUERY, out, sizeof(out));
  assert_int_equal(n, 3);
  assert_memory_equal(out, "a%2", 3);
  n = fo_http_pct_decode("%zz%41", 6, FO_PCT_QUERY, out, sizeof(out));
  assert_int_equal(n, 4);
  assert_memory_equal(out, "%zzA", 4);
  /* %00 decodes to a NUL byte: the length says where the value ends */
  n = fo_http_pct_decode("x%00y", 5, FO_PCT_PATH, out, sizeof(out));
  assert_int_equal(n, 3);
  assert_memory_equal(out, "x\0y", 3);
  /* room: exactly outlen fits, one more does not */
  assert_int_equal(fo_http_pct_decode("abcd", 4, FO_PCT_PATH, out, 4), 4);
  assert_int_equal(fo_http_pct_decode("abcde", 5, FO_PCT_PATH, out, 4), -EMSGSIZE);
  assert_int_equal(fo_http_pct_decode("%41%42%43%44", 12, FO_PCT_PATH, out, 4), 4);
  assert_int_equal(fo_http_pct_decode("", 0, FO_PCT_QUERY, out, 0), 0);
  char *v = fo_http_query_param("x=1&q=a+b%20c%2", "q");
  assert_string_equal(v, "a b c%2");
  free(v);
}

static void http_formats_head_only(void **state) {
  (void)state;
  fo_sb_t sb;
  fo_sb_init(&sb);
  assert_int_equal(fo_http_format_head(&sb, 200, "text/plain", "X-A: 1\r\n", 1234567, true), 0);
  assert_string_equal(fo_sb_cstr(&sb), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                       "Content-Length: 1234567\r\nX-A: 1\r\n\r\n");
  fo_sb_reset(&sb);
  fo_http_format_response(&sb, 404, "application/json", NULL, NULL, 0, false);
  assert_string_equal(fo_sb_cstr(&sb), "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n");
  fo_sb_free(&sb);
}

static void http_bearer(void **state) {
  (void)state;
  fo_http_request_t req;
  memset(&req, 0, sizeof(req));
  char name[] = "authorization", value[] = "Bearer  abc";
  req.headers[0].name = name;
  req.headers[0].value = value;
  req.nheaders = 1;
  assert_string_equal(fo_http_bearer(&req), "abc");
  char basic[] = "Basic abc";
  req.headers[0].value = basic;
  assert_null(fo_http_bearer(&req));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(http_parses_a_post_byte_by_byte),
      cmocka_unit_test(http_pipelined_and_chunked_with_pause),
      cmocka_unit_test(http_refuses_declared_large_body_before_reading_it),
      cmocka_unit_test(http_refuses_chunked_body_over_limit),
      cmocka_unit_test(http_headers_callback_can_refuse_before_the_body),
      cmocka_unit_test(http_refuses_huge_headers),
      cmocka_unit_test(http_rejects_malformed),
      cmocka_unit_test(http_upgrade_leaves_the_rest),
      cmocka_unit_test(http_formats_responses),
      cmocka_unit_test(http_bearer),
      cmocka_unit_test(http_pct_decode_modes),
      cmocka_unit_test(http_formats_head_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

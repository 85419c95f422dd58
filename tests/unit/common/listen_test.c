/* common/listen.c: names resolve, the bound address comes back, and
 * SO_REUSEPORT lets two sockets share a port (and nothing else does). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "listen.h"

static int accepted;

static void on_conn(uv_stream_t *s, int status) {
  (void)s;
  (void)status;
  accepted++;
}

static void on_closed(uv_handle_t *h) {
  (void)h;
}

static int port_of(const char *bound) {
  return atoi(strrchr(bound, ':') + 1);
}

static void listen_resolves_a_name(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_tcp_t tcp;
  uv_tcp_init(&loop, &tcp);
  char bound[64] = "";
  fo_listen_opts_t o = {.host = "localhost", .port = 0};
  assert_int_equal(fo_listen(&tcp, &o, on_conn, bound, sizeof(bound)), 0);
  assert_true(strncmp(bound, "127.0.0.1:", 10) == 0 || strncmp(bound, "[::1]:", 6) == 0);
  assert_true(port_of(bound) > 0);
  uv_close((uv_handle_t *)&tcp, on_closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void listen_reuseport_and_errors(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_tcp_t a, b, c, d;
  uv_tcp_init(&loop, &a);
  uv_tcp_init(&loop, &b);
  uv_tcp_init(&loop, &c);
  uv_tcp_init(&loop, &d);
  char bound[64], bound2[64];
  fo_listen_opts_t o = {.host = "127.0.0.1", .port = 0, .reuseport = true};
  assert_int_equal(fo_listen(&a, &o, on_conn, bound, sizeof(bound)), 0);
  o.port = port_of(bound);
  assert_int_equal(fo_listen(&b, &o, on_conn, bound2, sizeof(bound2)), 0);
  assert_string_equal(bound, bound2);
  o.reuseport = false;
  assert_int_equal(fo_listen(&c, &o, on_conn, bound2, sizeof(bound2)), -EADDRINUSE);
  fo_listen_opts_t bad = {.host = "no-such-host.invalid", .port = 0};
  assert_int_equal(fo_listen(&d, &bad, on_conn, bound2, sizeof(bound2)), -EADDRNOTAVAIL);
  uv_close((uv_handle_t *)&a, on_closed);
  uv_close((uv_handle_t *)&b, on_closed);
  uv_close((uv_handle_t *)&c, on_closed);
  uv_close((uv_handle_t *)&d, on_closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void listen_formats_ipv6(void **state) {
  (void)state;
  struct sockaddr_in6 a6;
  uv_ip6_addr("::1", 8081, &a6);
  char out[64];
  fo_listen_format((const struct sockaddr *)&a6, out, sizeof(out));
  assert_string_equal(out, "[::1]:8081");
  struct sockaddr_in a4;
  uv_ip4_addr("10.1.2.3", 80, &a4);
  fo_listen_format((const struct sockaddr *)&a4, out, sizeof(out));
  assert_string_equal(out, "10.1.2.3:80");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(listen_resolves_a_name),
      cmocka_unit_test(listen_reuseport_and_errors),
      cmocka_unit_test(listen_formats_ipv6),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

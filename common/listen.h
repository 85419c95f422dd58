/* A listening TCP socket on the loop, the same way in both services: the
 * host may be a name (resolved with getaddrinfo) or a numeric IPv4/IPv6
 * address, SO_REUSEADDR always, SO_REUSEPORT on request (several processes
 * share the port), and the address actually bound (port 0 picks a free
 * one) returned as text for the "listening=HOST:PORT" line. */
#ifndef FO_LISTEN_H
#define FO_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

typedef struct {
  const char *host; /* name or numeric address; "" or NULL: all IPv4 addresses */
  int port;         /* 0: any free port */
  bool reuseport;
  int backlog; /* <= 0: 1024 */
} fo_listen_opts_t;

/* `tcp` is initialised by the caller (uv_tcp_init) and stays the caller's:
 * it closes it with uv_close whether this succeeds or not. Resolves (this
 * blocks: call before the loop runs), binds the first address that works,
 * puts the socket into `tcp` and starts uv_listen with cb. Writes the bound
 * address into bound ("127.0.0.1:8080" or "[::1]:8080"). Returns 0 or a
 * negative errno (-EADDRNOTAVAIL when the name does not resolve). */
int fo_listen(uv_tcp_t *tcp, const fo_listen_opts_t *opts, uv_connection_cb cb, char *bound,
              size_t boundlen);

/* Formats a socket address as "HOST:PORT" or "[HOST]:PORT". */
void fo_listen_format(const struct sockaddr *sa, char *out, size_t outlen);

#endif

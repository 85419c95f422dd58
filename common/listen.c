/* fo_listen: the socket is created, configured and bound by hand, then
 * handed to libuv with uv_tcp_open, because SO_REUSEPORT must be set before
 * bind() and uv_tcp_bind offers no hook for it. */
#include "listen.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void fo_listen_format(const struct sockaddr *sa, char *out, size_t outlen) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, host, sizeof(host));
    snprintf(out, outlen, "[%s]:%d", host, ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, host, sizeof(host));
    snprintf(out, outlen, "%s:%d", host, ntohs(a->sin_port));
  }
}

/* A bound socket for one address, or a negative errno. */
static int bind_one(const struct addrinfo *ai, bool reuseport) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
      bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  return fd;
}

int fo_listen(uv_tcp_t *tcp, const fo_listen_opts_t *opts, uv_connection_cb cb, char *bound,
              size_t boundlen) {
  struct addrinfo hints, *res = NULL;
  char port[16];
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", opts->port);
  const char *host = opts->host != NULL && opts->host[0] != '\0' ? opts->host : "0.0.0.0";
  if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
    return -EADDRNOTAVAIL;
  int fd = -EADDRNOTAVAIL;
  for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = bind_one(ai, opts->reuseport);
    if (fd >= 0)
      break;
  }
  freeaddrinfo(res);
  if (fd < 0)
    return fd;
  int rc = uv_tcp_open(tcp, fd);
  if (rc != 0) {
    close(fd); /* not the handle's yet */
    return rc;
  }
  rc = uv_listen((uv_stream_t *)tcp, opts->backlog > 0 ? opts->backlog : 1024, cb);
  if (rc != 0)
    return rc;
  struct sockaddr_storage name;
  int namelen = sizeof(name);
  rc = uv_tcp_getsockname(tcp, (struct sockaddr *)&name, &namelen);
  if (rc != 0)
    return rc;
  fo_listen_format((const struct sockaddr *)&name, bound, boundlen);
  return 0;
}

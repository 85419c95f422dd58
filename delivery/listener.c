/* The listening socket (common/listen.c: a host name or numeric address,
 * SO_REUSEPORT so one delivery process per core can share a port) and the
 * accept loop; what an accepted socket says first is handshake.c's. */
#include <inttypes.h>
#include <stdio.h>

#include "delivery_int.h"
#include "listen.h"
#include "log.h"

static fo_log_ratelimit_t accept_rl;

static void on_connection(uv_stream_t *server, int status) {
  fo_server_t *srv = server->data;
  if (status < 0) {
    uint64_t sup = 0;
    if (fo_log_ratelimit(&accept_rl, fo_now_ms(), 1000, &sup))
      FO_LOG_WARN("listen", "accept failed", "err=%s suppressed=%" PRIu64, fo_strerror(status),
                  sup);
    return;
  }
  int rc = fo__conn_accept(srv);
  if (rc != 0) {
    uint64_t sup = 0;
    if (fo_log_ratelimit(&accept_rl, fo_now_ms(), 1000, &sup))
      FO_LOG_WARN("listen", "accept failed", "err=%s suppressed=%" PRIu64, fo_strerror(rc), sup);
  }
}

int fo__listener_start(fo_server_t *srv, char *err, size_t errlen) {
  const fo_dcfg_t *cfg = srv->cfg;
  int rc = uv_tcp_init(srv->loop, &srv->listener);
  if (rc != 0) {
    snprintf(err, errlen, "uv_tcp_init: %s", uv_strerror(rc));
    return rc;
  }
  srv->listener.data = srv;
  srv->listening = true; /* from here fo__listener_stop closes it, on failure too */
  /* 4096: a reconnect storm after a deploy arrives faster than one accept
   * pass; the kernel caps it at somaxconn anyway. */
  fo_listen_opts_t opts = {cfg->listen.host, cfg->listen.port, cfg->reuseport, 4096};
  char bound[80];
  rc = fo_listen(&srv->listener, &opts, on_connection, bound, sizeof(bound));
  if (rc != 0) {
    snprintf(err, errlen, "listen %s:%d: %s", cfg->listen.host, cfg->listen.port,
             rc == -EADDRNOTAVAIL ? "address not available (does the name resolve?)"
                                  : fo_strerror(rc));
    return rc;
  }
  FO_LOG_INFO("listen", "accepting", "addr=%s reuseport=%d", bound, cfg->reuseport);
  printf("listening=%s\n", bound);
  fflush(stdout);
  return 0;
}

static void on_listener_closed(uv_handle_t *h) {
  (void)h;
}

void fo__listener_stop(fo_server_t *srv) {
  if (!srv->listening)
    return;
  srv->listening = false;
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

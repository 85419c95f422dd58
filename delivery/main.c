/* fanout-delivery: WebSocket delivery server (DESIGN.md, "delivery/"). */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "delivery_int.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv) {
  /* glibc's default threshold moves: after a freed mmapped chunk (the
   * users map's old slot array as it grows), chunks up to that size come
   * from the heap and, once freed (Redis's output buffer of a registry
   * pass), leave holes between the connections that only small chunks
   * fill again: 16-20 bytes a connection at 16,700 (tests/bench/scale).
   * Fixed at its default, big buffers come and go as mappings of their own. */
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  fo_dcfg_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  int rc = fo_cfg_main("fanout-delivery",
                       "Holds WebSocket client connections and delivers fanout messages.",
                       fo_dcfg_fields, fo_dcfg_nfields, &cfg, argc, argv, fo_dcfg_finalize);
  if (rc == FO_CFG_CHECK_ONLY) {
    fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
    return 0;
  }
  fo_log_level_t lvl = FO_LOG_LVL_INFO;
  fo_log_parse_level(cfg.log_level, &lvl);
  fo_log_set_level(lvl);
  signal(SIGPIPE, SIG_IGN);

  uv_loop_t *loop = uv_default_loop();
  fo_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) {
    fprintf(stderr, "fanout-delivery: out of memory\n");
    return 1;
  }
  char err[512] = "";
  rc = fo_server_init(srv, loop, &cfg, err, sizeof(err));
  if (rc != 0) {
    FO_LOG_ERROR("server", "start failed", "err=\"%s\"", err);
    fprintf(stderr, "fanout-delivery: %s\n", err);
    return 1; /* not worth a clean unwind: the process ends */
  }
  FO_LOG_INFO("server", "started", "server_id=%s", cfg.server_id);
  uv_run(loop, UV_RUN_DEFAULT);
  int code = srv->exit_code;
  fo_server_cleanup(srv);
  free(srv);
  uv_loop_close(loop);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &cfg);
  return code;
}

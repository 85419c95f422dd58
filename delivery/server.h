/* The delivery server as main.c sees it. */
#ifndef FO_DELIVERY_SERVER_H
#define FO_DELIVERY_SERVER_H

#include <stddef.h>

#include <uv.h>

#include "delivery_int.h"

/* Starts everything on loop (listener last, so "listening=" means ready to
 * accept). Returns 0, or a negative errno with a reason in err; on failure
 * run the loop to let handles close, then fo_server_cleanup. */
int fo_server_init(fo_server_t *srv, uv_loop_t *loop, const fo_dcfg_t *cfg, char *err,
                   size_t errlen);
/* The part of fo_server_init that starts nothing: the server context,
 * metrics, flow control, the shared frames, the wiring of the modules. No
 * handle, timer, Redis, Kafka or listener: for harnesses and tests that
 * drive connections themselves (fo__conn_adopt). */
int fo_server_core_init(fo_server_t *srv, uv_loop_t *loop, const fo_dcfg_t *cfg, char *err,
                        size_t errlen);
/* After uv_run returned: frees what is left. */
void fo_server_cleanup(fo_server_t *srv);

#endif

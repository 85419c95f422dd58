/* HTTP/1.1 connections for the ingest API (server.c). The server knows
 * nothing of the routes: a handler (api.c) gets each complete request with
 * a reply slot (reply.h), and may refuse a body once the headers are in. */
#ifndef FO_INGEST_SERVER_H
#define FO_INGEST_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "http.h"
#include "listen.h"
#include "metrics.h"
#include "reply.h"

typedef struct fo_server fo_server_t;

/* An answer given instead of reading a request's body (static strings). */
typedef struct {
  int status;
  const char *msg;
  const char *extra_headers; /* or NULL */
} fo_server_refusal_t;

/* `slot` is the connection's pointer for the handler's own per-connection
 * state (e.g. auth.c's API-key memo): NULL at first, freed with slot_free
 * when the connection closes. */
typedef struct {
  /* Optional. The request's headers are complete and its body is not read
   * yet: return false to read it, or true with *refusal filled to answer at
   * once and close (so that, e.g., unauthenticated clients cannot make us
   * buffer bodies). `req` is valid during the call only. */
  bool (*refuse_body)(void *ud, void **slot, const fo_http_request_t *req,
                      fo_server_refusal_t *refusal);
  /* One complete request; `req` is valid during the call only. */
  void (*handle)(void *ud, fo_reply_t *reply, fo_http_request_t *req);
  /* Optional: frees what a connection's slot holds. */
  void (*slot_free)(void *slot);
} fo_server_handler_t;

typedef struct {
  fo_listen_opts_t listen;
  fo_http_limits_t limits;
  size_t max_connections; /* more are answered 503 and closed */
  size_t max_pipeline;    /* requests in flight per connection */
  uint64_t read_timeout_ms;
  uint64_t idle_timeout_ms;
} fo_server_opts_t;

/* Listens (common/listen.c) and starts accepting. Writes the bound
 * "HOST:PORT" into bound. The handler table is copied; ud is passed to it.
 * Returns 0 or a negative errno. */
int fo__server_start(uv_loop_t *loop, fo_metrics_t *metrics, const fo_server_opts_t *opts,
                     const fo_server_handler_t *handler, void *ud, char *bound, size_t boundlen,
                     fo_server_t **out);
/* Stops accepting; idle connections close now, busy ones after their last
 * reply (which says Connection: close). */
void fo__server_stop(fo_server_t *srv);
/* Number of open connections (stopping: when 0, the server is drained). */
size_t fo__server_connections(const fo_server_t *srv);
/* Frees the server once every connection is closed (call after stop). */
void fo__server_free(fo_server_t *srv);

#endif

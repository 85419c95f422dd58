/* The reply slot a request handler answers (api.c, idem.c, presence.c).
 * The HTTP connection layer (server.c) implements it: one slot per request,
 * answered in request order whatever order the handlers finish in. */
#ifndef FO_INGEST_REPLY_H
#define FO_INGEST_REPLY_H

#include <stddef.h>

typedef struct fo_reply fo_reply_t;

/* The handler that receives a reply must call fo__reply_send() or
 * fo__reply_error() exactly once, now or later; that call frees the slot
 * if its connection is gone. Strings and body are copied. */
void fo__reply_send(fo_reply_t *reply, int status, const char *content_type,
                    const char *extra_headers, const void *body, size_t body_len);
/* Sends {"error":msg} as application/json. */
void fo__reply_error(fo_reply_t *reply, int status, const char *msg, const char *extra_headers);
/* The connection's slot for the handler's per-connection state (see
 * fo_server_handler_t), or NULL once the connection is gone. */
void **fo__reply_slot(fo_reply_t *reply);

#endif

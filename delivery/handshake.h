/* The HTTP side of one delivery connection (handshake.c): the RFC 6455
 * upgrade with authentication, /healthz, /readyz, /metrics and the plain
 * HTTP answers. conn.c feeds it the bytes a connection reads while it is in
 * the handshake state; the fuzz harness feeds it directly. */
#ifndef FO_DELIVERY_HANDSHAKE_H
#define FO_DELIVERY_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

typedef struct fo_conn fo_conn_t;

/* Feeds handshake bytes (p is the caller's; frames glued to an accepted
 * upgrade are passed on to the connection). Returns 0, or <0 when the
 * connection was closed. */
int fo__handshake_feed(fo_conn_t *conn, uint8_t *p, size_t n);
/* Frees the parser of a connection still in the handshake or HTTP state
 * (from conn.c when the connection is destroyed). */
void fo__handshake_free(fo_conn_t *conn);

#endif

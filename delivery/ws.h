/* RFC 6455 receive side for the server: a careful incremental parser of
 * client frames. Its state lives in a small fo_ws_rx_t that exists only
 * while a frame or a fragmented message is incomplete, so idle connections
 * carry none (8 bytes for the pointer). Pure code: no sockets, no libuv. */
#ifndef FO_WS_H
#define FO_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
  FO_WS_OP_CONT = 0x0,
  FO_WS_OP_TEXT = 0x1,
  FO_WS_OP_BINARY = 0x2,
  FO_WS_OP_CLOSE = 0x8,
  FO_WS_OP_PING = 0x9,
  FO_WS_OP_PONG = 0xA,
};

/* Close codes used by the server. */
enum {
  FO_WS_CLOSE_NORMAL = 1000,
  FO_WS_CLOSE_GOING_AWAY = 1001,
  FO_WS_CLOSE_PROTOCOL = 1002,
  FO_WS_CLOSE_UNSUPPORTED = 1003,
  FO_WS_CLOSE_NO_STATUS = 1005,
  FO_WS_CLOSE_BAD_DATA = 1007,
  FO_WS_CLOSE_POLICY = 1008,
  FO_WS_CLOSE_TOO_BIG = 1009,
  FO_WS_CLOSE_INTERNAL = 1011,
  FO_WS_CLOSE_SERVICE_RESTART = 1012,
  FO_WS_CLOSE_TRY_AGAIN = 1013,
  FO_WS_CLOSE_TOKEN_EXPIRED = 4001, /* application range: DESIGN.md "token expired" */
  FO_WS_CLOSE_TOKEN_INVALID = 4003, /* auth=close: the token of the upgrade was refused */
};

typedef struct {
  size_t max_frame;   /* payload bytes of one frame */
  size_t max_message; /* payload bytes of one (possibly fragmented) message */
} fo_ws_limits_t;

typedef struct fo_ws_rx fo_ws_rx_t;

/* One complete message (TEXT/BINARY, reassembled and, for TEXT, UTF-8
 * checked) or control frame (CLOSE payload already validated: empty or a
 * valid code + UTF-8 reason). p is unmasked, writable and valid only during
 * the call. Return 0 to go on, non-zero to stop feeding (e.g. closing). */
typedef int (*fo_ws_msg_cb)(void *ud, int opcode, uint8_t *p, size_t n);

/* Feeds p[0..n) (unmasked in place). *rx is NULL while idle; it is
 * allocated when bytes of an incomplete frame or message must be kept and
 * freed when the connection is idle again. Returns 0, 1 if the callback
 * stopped the feed, -ENOMEM, or a close code (1002, 1007, 1009) for a
 * protocol violation (the caller closes; *rx may still hold state: call
 * fo_ws_rx_free). */
int fo_ws_rx_feed(fo_ws_rx_t **rx, uint8_t *p, size_t n, const fo_ws_limits_t *lim, fo_ws_msg_cb cb,
                  void *ud);
void fo_ws_rx_free(fo_ws_rx_t **rx);
/* Bytes held by the state (for memory accounting); 0 when NULL. */
size_t fo_ws_rx_bytes(const fo_ws_rx_t *rx);

/* Close code rules (RFC 6455 7.4): may this code appear on the wire? */
bool fo_ws_close_code_valid(unsigned code);

/* Sec-WebSocket-Accept for a key: writes 28 chars and a NUL into out. */
void fo_ws_accept_key(const char *key, size_t len, char out[29]);

/* Writes the header of an unmasked server frame into out (<= 10 bytes);
 * returns its length. Every server frame is encoded with it (frame.c). */
size_t fo_ws_header(uint8_t out[10], int opcode, bool fin, uint64_t len);

#endif

/* Server->client WebSocket frames, encoded once per message. */
#ifndef FO_FRAME_H
#define FO_FRAME_H

#include <stddef.h>

#include "buf.h"

/* A complete unmasked frame (FIN set): the 2-10 byte header of
 * fo_ws_header() and the payload, in one buffer with refs == 1 that every
 * recipient's queue references. NULL on OOM. */
fo_buf_t *fo_frame_new(int opcode, const void *payload, size_t n);

#endif

/* A delivery server on a libuv loop for the fuzz targets, with no Redis, no
 * Kafka and no listener: connections are created by hand on one end of a
 * socketpair, fed bytes directly (fo__handshake_feed / fo__conn_feed_early,
 * the same functions the read callback uses), and whatever the server writes
 * is read from the other end and checked: a valid HTTP head, then unmasked
 * server frames whose text payloads are valid UTF-8 and valid JSON.
 * Not thread-safe; one server per fuzz process, created on first use. */
#ifndef FO_FZ_DELIVERY_H
#define FO_FZ_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "delivery_int.h"
#include "handshake.h"
#include "hub.h"
#include "router.h"

#define FZ_SECRET "fuzz-secret-0123456789abcdef-0123456789"

typedef struct {
  fo_conn_t *conn; /* NULL once the server closed it (memory freed by the loop) */
  int peer;        /* our end of the socketpair, or -1 */
  uint8_t *out;    /* bytes read from the server, not yet parsed */
  size_t out_len, out_cap;
  bool head_done;    /* HTTP response head parsed */
  int status;        /* its status */
  bool closed_frame; /* a close frame was seen: nothing may follow */
  size_t body_want;  /* Content-Length of a plain (non-101) answer */
  bool paused;       /* the client stops reading (a slow consumer) */
  bool cut;          /* the harness dropped the connection: output may be cut */
} fz_conn_t;

/* The server (created once; argv-style extra options may change limits on
 * the first call only). Aborts on setup failure. */
fo_server_t *fz_server(const char *const *extra_opts);

/* header.claims (raw JSON texts) -> a compact JWT signed with secret
 * (malloc'd). */
char *fz_sign(const char *secret, const uint8_t *hdr, size_t hlen, const uint8_t *claims,
              size_t clen);
/* A valid HS256 token for sub with the rooms claim (JSON array text or NULL). */
char *fz_token(const char *sub, const char *rooms_json);

/* Accepts a connection in the handshake state (aborts on failure). */
void fz_conn_open(fo_server_t *srv, fz_conn_t *fc);
/* Closes our end of a connection the server no longer has (fc->conn NULL)
 * after reading and checking what is left, and frees its buffers. */
void fz_conn_release(fz_conn_t *fc);
/* Feeds bytes as the read callback would. */
void fz_conn_feed(fz_conn_t *fc, const uint8_t *p, size_t n);
/* Lets the loop write, close and free (non-blocking), and reads and checks
 * everything the server wrote to every connection given. */
void fz_pump(fo_server_t *srv, fz_conn_t *fcs, size_t nfc);
/* Closes every connection still open, runs the loop until everything is
 * freed, and checks the server is back to empty (maps, counters, queues). */
void fz_finish(fo_server_t *srv, fz_conn_t *fcs, size_t nfc);

/* Builds a masked client frame into out (cap >= n + 14); returns its length. */
size_t fz_client_frame(uint8_t *out, int opcode, bool fin, const uint8_t mask[4], const uint8_t *p,
                       size_t n);

#endif

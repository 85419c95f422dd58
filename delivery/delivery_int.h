/* Shared internals of fanout-delivery: the configuration, the metrics
 * cells, the connection and server structs, and the fo__ functions not yet
 * in a header of their own (proto.h, frame.h, flow.h, hub.h, router.h,
 * rreg.h, consumer.h, ws.h, auth.h are). Layers, each calling only downward; upward events go through the
 * function pointers in fo_server_t that server.c wires (conn_ev, hub_ev,
 * rreg_ev, redis_cmd, on_sweep, on_stopped) and the router's done/progress
 * callbacks (set by the consumer):
 *   L6 server.c (wiring), drain.c (the SIGTERM state machine), main.c
 *   L5 consumer.c       Kafka record -> decoded message + release
 *   L4 router.c         ordered release FIFOs; rreg.c: Redis registry, Pub/Sub
 *   L3 hub.c            users, rooms, permissions
 *   L2 conn.c, handshake.c (upgrade, /healthz /readyz /metrics), listener.c
 *      (listen + accept), heartbeat.c
 *   L1 proto.c, ws.c, frame.c, flow.c, auth.c, dconfig.c
 * Nothing outside delivery/ and its tests includes this. */
#ifndef FO_DELIVERY_INT_H
#define FO_DELIVERY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "log.h"
#include "config.h"
#include "metrics.h"

#include "map.h"
#include "flow.h"

typedef struct fo_conn fo_conn_t;
typedef struct fo_user fo_user_t;
typedef struct fo_room fo_room_t;
typedef struct fo_perm fo_perm_t;
typedef struct fo_outq fo_outq_t;
typedef struct fo_consumer fo_consumer_t;
typedef struct fo_rreg fo_rreg_t;
typedef struct fo_router fo_router_t;
typedef struct fo_server fo_server_t;

/* Longest --server-id; connection ids ("<server-id>-<start ms hex>-<conn id
 * hex>") are sized from it so that they can never be cut. */
#define FO_SERVER_ID_MAX 64
#define FO_CONN_ID_LEN   (FO_SERVER_ID_MAX + 1 + 16 + 1 + 8 + 1)

/* The example secret of deploy/local and the examples (32+ bytes, but warned
 * about at start: everyone knows it). */
#define FO_DEV_JWT_SECRET "dev-secret-change-me-not-for-production"

/* The configuration (one struct, one table in config_table.c). Read-only
 * once the loop starts. */
typedef struct {
  fo_addr_t listen;
  fo_addrs_t redis;         /* the Redis nodes, in the order given (schemas/redis-shards.md) */
  char *redis_password;     /* "" = no AUTH */
  char *redis_user;         /* "" = default user */
  int64_t redis_timeout_ms; /* connect and command timeout (not the subscriber's commands) */
  char *kafka;
  char *server_id;
  char *jwt_secret;
  char *jwt_audience; /* "" = not checked */
  char *jwt_issuer;   /* "" = not checked */
  int64_t max_token_lifetime_s;
  char *log_level;
  int64_t ping_interval_ms;
  int64_t pong_timeout_ms;
  int64_t handshake_timeout_ms;
  int64_t close_timeout_ms;
  int64_t max_connections;
  int64_t max_connections_per_user;
  int64_t max_pending_handshakes; /* 0 in the table is resolved by fo_dcfg_finalize */
  int64_t max_frame_bytes;
  int64_t max_message_bytes;
  int64_t max_handshake_bytes;
  int64_t max_rooms_per_conn;
  int64_t outq_max_bytes;
  int64_t high_water_bytes;
  int64_t low_water_bytes;
  char *users_topic;
  char *rooms_topic;
  char *group_id;
  char *users_offset_reset;
  int64_t session_timeout_ms;
  char *kafka_opts;
  int64_t kafka_fetch_wait_ms; /* fetch.wait.max.ms, before --kafka-opts */
  char *redis_prefix;
  char *origins;
  char *room_mode;  /* the flag's text; room_mode_id is what code reads */
  int room_mode_id; /* FO_ROOM_MODE_*, set by fo_dcfg_finalize */
  int64_t drain_timeout_ms;
  int64_t drain_spread_ms; /* drain.c: the 1001 closes are spread over this */
  int64_t drain_min_batch; /* ... in batches of at least this many */
  int64_t registry_refresh_ms;
  int64_t alive_ttl_ms;
  bool reuseport;
  bool kafka_enabled;
  int64_t read_pause_bytes; /* input backpressure (conn.c) */
  int64_t client_msg_rate;  /* token bucket per connection; 0 = no limit */
  int64_t client_msg_burst;
  int64_t resume_window_ms;    /* stream.c: how old a missed message may be */
  int64_t resume_max_messages; /* per stream */
  int64_t resume_window_bytes; /* the in-memory windows together */
  int64_t resume_max_scan;     /* records a Kafka replay may read */
  int64_t resume_timeout_ms;   /* a Kafka replay round */
} fo_dcfg_t;

/* --room-mode */
enum { FO_ROOM_MODE_KAFKA = 0, FO_ROOM_MODE_REDIS = 1 };

extern const fo_cfg_field_t fo_dcfg_fields[];
extern const size_t fo_dcfg_nfields;
int fo_dcfg_finalize(void *cfg, char *err, size_t errlen);

/* Metrics cells, looked up once. */
typedef struct {
  int64_t *connections;
  int64_t *users;
  int64_t *rooms;
  int64_t *queued_bytes;
  int64_t *backlog_bytes;
  int64_t *paused_partitions;
  int64_t *assigned_partitions;
  int64_t *consumer_lag;
  int64_t *redis_up;
  int64_t *redis_nodes_down;
  int64_t *last_fanout_us;
  uint64_t *accepted;
  uint64_t *handshake_fail;
  uint64_t *auth_fail;
  uint64_t *rejected_full;
  uint64_t *rejected_user;
  uint64_t *rejected_pending;
  uint64_t *token_expired;
  uint64_t *msgs_in_users;
  uint64_t *msgs_in_rooms;
  uint64_t *msgs_in_pubsub;
  uint64_t *frames_out;
  uint64_t *bytes_out;
  uint64_t *published;
  uint64_t *drops;
  uint64_t *slow_closes;
  uint64_t *ping_timeouts;
  uint64_t *protocol_errors;
  uint64_t *decode_errors;
  uint64_t *redis_errors;
  uint64_t *kafka_errors;
  uint64_t *dead_servers_cleaned;
  uint64_t *routes_node_down;
  uint64_t *redis_conn_errors;
  uint64_t *rate_limited;
  uint64_t *read_pauses;
  uint64_t *room_copies;
  int64_t *rx_bytes;
} fo_dmetrics_t;

/* Connection states. */
enum {
  FO_CONN_HANDSHAKE = 0, /* reading the HTTP request */
  FO_CONN_HTTP,          /* answering a plain HTTP request, closes after the write */
  FO_CONN_OPEN,          /* WebSocket open */
  FO_CONN_CLOSING,       /* close frame queued/sent; waiting for the peer's or the deadline */
  FO_CONN_DEAD,          /* uv_close called */
};

/* The server keeps its connections in one list per kind of deadline. A
 * connection is appended with deadline = now + that kind's fixed delay, so
 * each list stays in deadline order and the sweep (heartbeat.c) looks only
 * at the due heads: at 19,000 idle connections a walk of all of them twice a
 * second (a cache miss each) was most of an idle process's own CPU. Open
 * connections whose token expires within a ping cycle sit on EXPIRING,
 * which the sweep walks whole. CLOSING is last: a walk over all lists that
 * closes connections meets them again there. */
enum {
  FO_CL_HANDSHAKE, /* HANDSHAKE and HTTP: --handshake-timeout-ms */
  FO_CL_PING,      /* OPEN, next ping due: --ping-interval-ms */
  FO_CL_PONG,      /* OPEN, ping sent: --pong-timeout-ms */
  FO_CL_EXPIRING,  /* OPEN, either of the two, token expiring soon */
  FO_CL_CLOSING,   /* CLOSING: --close-timeout-ms */
  FO_CL_N
};

/* One client connection. Kept small: this is the per-connection memory.
 * Everything that only a busy connection needs (handshake parser, partial
 * input, outbound queue, room list) hangs off a pointer that is NULL while
 * the connection is idle. Its size is asserted (FO_CONN_SIZE, conn.c):
 * connections come from slabs in conn.c, so every byte counts (no malloc
 * rounding hides a field added). */
struct fo_conn {
  /* The handle's own data pointer holds the server: the handle is the
   * connection's first member, so its callbacks cast the handle back to the
   * connection (fo__conn_of) and a data pointer to the connection would
   * repeat the handle's own address in 8 bytes of every connection. */
  union {
    uv_tcp_t tcp;
    struct {
      fo_server_t *srv; /* == tcp.data; set after uv_tcp_init (libuv never writes it) */
    };
  };
  fo_conn_t *prev, *next;      /* the server's list of this connection's deadline kind
                                * (srv->clist, heartbeat.c) */
  fo_conn_t *user_next;        /* next connection of the same user */
  fo_user_t *user;             /* interned, one reference; NULL before auth */
  void *in;                    /* HANDSHAKE: fo_http_parser_t *; OPEN while hold_input: a
                                * fo_buf_t * of bytes glued to the upgrade, or NULL;
                                * else fo_ws_rx_t * or NULL */
  fo_outq_t *out;              /* NULL when nothing is queued */
  struct fo_conn_rooms *rooms; /* NULL when in no room */
  fo_perm_t *perm;             /* interned rooms claim; NULL = no rooms allowed */
  uint64_t deadline;           /* uv_now() ms: handshake end, next ping, pong or close deadline
                                * (set only by fo__conn_queue, which keeps each list sorted) */
  uint32_t id;                 /* per-process sequence number */
  uint32_t exp_s;              /* token exp in seconds after srv->start_ms / 1000; 0 = none */
  uint8_t state;
  uint8_t await_pong : 1;
  uint8_t registered : 1; /* in the local maps and (if connected) Redis */
  uint8_t close_after_flush : 1;
  uint8_t peer_closed : 1;
  uint8_t rx_broken : 1;   /* protocol error: input is ignored */
  uint8_t reg_pending : 1; /* rreg.c's: HSET not sent yet, batched at the end of the loop
                              * turn (one bit here costs nothing: it shares the flags byte) */
  uint8_t read_paused : 1; /* uv_read_stop'd: the outbound queue is over --read-pause-bytes */
  uint8_t hold_input : 1;  /* stream.c's: the welcome is not queued yet, frames wait */
  uint8_t app_ping : 1;    /* heartbeat=1: {"type":"ping"} text frames instead of protocol
                             * pings, answered by {"type":"pong"} (heartbeat.c); a 9th flag
                             * bit: the byte it starts sits in what was padding */
  uint8_t expiring : 1;    /* on FO_CL_EXPIRING: the token expires within a ping cycle */
  uint16_t tokens;         /* client messages left in the rate bucket */
  uint16_t refill_s;       /* uv_now() seconds (mod 2^16) up to which tokens were added:
                             * refilled when taken and at each ping (fo__conn_refill);
                             * tokens and this fill what was padding */
  int64_t user_floor;      /* stream.c's: user frames at or before this offset of the
                             * user's partition are already covered (welcome/resume) */
  struct fo_cstreams *cs;  /* stream.c's: streams whose position is being worked out;
                             * NULL for an idle connection */
};

/* An interned user with its local connections (hub.c). */
struct fo_user {
  fo_mapent_t ent;  /* key = name */
  fo_conn_t *conns; /* singly linked through conn->user_next */
  uint32_t nconns;
  char name[]; /* NUL-terminated */
};

struct fo_server {
  uv_loop_t *loop;
  fo_log_ratelimit_t big_frame_rl; /* frames over the queue limit dropped */
  const fo_dcfg_t *cfg;
  uv_tcp_t listener;
  uv_timer_t sweep;
  uv_check_t flush_check;
  uv_timer_t drain_timer;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  bool listening;
  bool draining;
  bool stopping;
  int exit_code;

  uint8_t *rbuf; /* the one read buffer of the loop */
  size_t rbuf_len;
  bool rbuf_busy;

  fo_conn_t clist[FO_CL_N]; /* the connections by deadline kind (sentinels; only prev/next
                             * used): see fo__conn_queue */
  int64_t nconns;           /* everything accepted and not yet freed */
  int64_t nopen;            /* WebSocket connections open */
  int64_t npending;         /* accepted, not upgraded yet (HANDSHAKE or HTTP state):
                             * what --max-pending-handshakes caps */
  uint32_t next_conn_id;
  uint64_t start_ms;
  uint64_t polled_ms;     /* the last I/O poll whose reads all ran started after
                           * this loop time: a deadline that waits on the peer
                           * (request, pong, close reply) later than it cannot
                           * be judged yet (what it sent may wait unread) */
  uint64_t last_check_ms; /* loop time at the last check phase */

  fo_map_t users; /* name -> fo_user_t */
  fo_map_t rooms; /* name -> fo_room_t */
  fo_map_t perms; /* canonical claim -> fo_perm_t */

  fo_outq_t *dirty;     /* connections with output to flush this turn */
  fo_outq_t *outq_pool; /* free outbound queues, reused */
  int outq_pool_n;
  fo_conn_t *conn_free;       /* free connection slots, linked through next (conn.c) */
  void *conn_slabs;           /* owned: the slabs they are in, freed by fo_server_cleanup */
  fo_flow_t *flow;            /* owned: outbound queue cost + routing backlog against the
                             * water marks; pauses Kafka through server.c's callback */
  uint64_t rx_bytes;          /* partial client input held (fo_ws_rx_bytes of every connection):
                             * a gauge only; not in the water marks, since pausing Kafka
                             * frees none of it (per connection it is capped by the frame
                             * and message limits) */
  fo_log_ratelimit_t rate_rl; /* "rate limit exceeded" lines */
  uv_buf_t *iov;              /* scratch for writes */
  int iov_cap;

  char **origins; /* allow-list, NULL = any */
  int norigins;

  fo_metrics_t *metrics;
  fo_dmetrics_t m;

  fo_buf_t *ping_frame;     /* shared, pre-encoded */
  fo_buf_t *app_ping_frame; /* {"type":"ping"} for heartbeat=1 connections: shared too */
  fo_sb_t scratch;          /* per-loop builder for frames */

  /* Upward events, wired by server.c: the emitting module calls through
   * these and knows nothing of the receiver (NULL: nobody listens). */
  struct {
    /* The upgrade was authenticated: admit conn for user and the rooms
     * claim (jansson array or NULL) into the hub. Returns 0, 429 (the
     * per-user limit) or 500 (out of memory). */
    int (*admit)(fo_conn_t *conn, const char *user, size_t ulen, const void *rooms_json);
    void (*unadmit)(fo_conn_t *conn); /* the 101 could not be queued */
    /* The WebSocket is open; since: the client's `since` query (NULL: none). */
    void (*opened)(fo_conn_t *conn, const char *since, size_t slen);
    void (*closed)(fo_conn_t *conn); /* ... and is closing: leave rooms, registry */
    /* A client's join (join) or leave: 0, -EPERM, -E2BIG, -ENOMEM. A
     * successful join is answered (joined) by the receiver; has_since/since:
     * the join's `since` (since NULL: not a usable text). */
    int (*room)(fo_conn_t *conn, const char *room, size_t len, bool join, bool has_since,
                const char *since, size_t slen);
    bool (*ready)(fo_server_t *srv); /* /readyz */
    /* /readyz's body after its first line: Redis nodes that are down. */
    void (*ready_detail)(fo_server_t *srv, fo_sb_t *out);
  } conn_ev;
  struct {
    void (*user_gone)(fo_server_t *srv, fo_user_t *user); /* last local connection */
    void (*room_sub)(fo_server_t *srv, const char *room, size_t len,
                     bool on); /* first/last member */
    /* A room frame for a member with stream state (conn->cs != NULL):
     * returns like fo__conn_send. */
    int (*member_frame)(fo_conn_t *conn, const char *room, size_t len, int64_t offset,
                        fo_buf_t *frame);
  } hub_ev;
  struct {
    void (*pubsub_user)(fo_server_t *srv, const char *p, size_t n); /* on ws:server:{self} */
    void (*pubsub_room)(fo_server_t *srv, const char *room, size_t rlen, const char *p, size_t n);
    void (*redis_up)(fo_server_t *srv,
                     uint32_t node); /* a node's command connection (re)connected */
    /* Our channel is subscribed again after it was lost, and the
     * registrations are re-sent: Pub/Sub messages of the gap are gone. */
    void (*resync)(fo_server_t *srv);
  } rreg_ev;
  /* For the router: the command connection of Redis node `node`, or NULL. */
  struct fo_redis *(*redis_cmd)(fo_server_t *srv, uint32_t node);
  void (*on_sweep)(fo_server_t *srv); /* each heartbeat tick (router's settle) */
  /* The consumer's next offset of a rooms partition (room mode kafka), -1
   * unknown: for stream.c, wired by server.c. */
  int64_t (*room_position)(fo_server_t *srv, int32_t partition);

  struct fo_streams *streams; /* owned: positions, resume (stream.c) */
  fo_rreg_t *rreg;            /* Redis registry + Pub/Sub */
  fo_router_t *router;
  fo_consumer_t *consumer;

  /* drain.c's state (drain.c writes it; others read draining/stopping) */
  uint64_t drain_started;
  int64_t drain_total;                  /* drain: connections open at its start (to close) */
  int64_t drain_closed;                 /* ... of which the drain has sent 1001 so far */
  bool drain_closes_done;               /* ... all of them: the liveness key is gone */
  bool barrier_asked;                   /* drain: a PING was sent after the last HDEL */
  bool redis_flushed;                   /* drain: ... and answered (or Redis is down) */
  void (*on_stopped)(fo_server_t *srv); /* server.c: closes its own handles at the end */
  uint64_t fanout_t0;                   /* uv_hrtime() of the first room record not yet flushed */
};

/* ---- conn.c ---- */
/* fo_conn_t's size on LP64 (a static assert in conn.c): 248 bytes of
 * uv_tcp_t and 104 of ours. Raise it only knowingly: at ~16,700 idle
 * connections a process, it is two thirds of the memory per connection
 * (tests/bench/scale/README.md). */
#define FO_CONN_SIZE 352
/* The connection whose handle h is (h: &conn->tcp, from a libuv callback). */
static inline fo_conn_t *fo__conn_of(void *h) {
  return (fo_conn_t *)h; /* tcp is the first member */
}
/* Accepts one connection from srv->listener and starts reading it. */
int fo__conn_accept(fo_server_t *srv);
/* The connection constructor for a socket that is already connected (fd,
 * owned from here on): linked into srv in the handshake state like an
 * accepted one, read by the loop when read, else fed by the caller
 * (harnesses: fo__handshake_feed / fo__conn_feed_early). *out is valid
 * until the connection is destroyed. */
int fo__conn_adopt(fo_server_t *srv, uv_os_sock_t fd, bool read, fo_conn_t **out);
/* Queues buf (takes one reference on success). Returns 0, -EPIPE when the
 * connection no longer takes frames, or -ENOBUFS when it was over its queue
 * limit (the connection is then being closed with 1013). */
int fo__conn_send(fo_conn_t *conn, fo_buf_t *buf);
/* The same for a small control frame (the heartbeat's ping): written at
 * once when nothing is queued, without allocating a queue. */
int fo__conn_send_now(fo_conn_t *conn, fo_buf_t *buf);
/* Starts the close handshake with `code` (idempotent). Frames queued before
 * it are written before the close frame. */
void fo__conn_close_ws(fo_conn_t *conn, uint16_t code, const char *reason);
/* Closes the socket now (idempotent); unregisters. */
void fo__conn_destroy(fo_conn_t *conn);
/* Flushes every connection with queued output (from the check handle). */
void fo__server_flush(fo_server_t *srv);
/* Adds the rate tokens conn earned since its last refill (whole seconds). */
void fo__conn_refill(fo_conn_t *conn);
/* Writes conn's queue now (one uv_try_write; the rest via uv_write). */
void fo__conn_flush(fo_conn_t *conn);
/* Frees the pooled outbound queues (at exit). */
void fo__outq_pool_free(fo_server_t *srv);
/* Frees the connection slabs (at exit, every connection closed). */
void fo__conn_pool_free(fo_server_t *srv);
/* Sends a small JSON text frame built from s. */
int fo__conn_send_text(fo_conn_t *conn, const char *s, size_t n);
void fo__conn_opened(fo_conn_t *conn, const char *since, size_t slen);
/* Ends hold_input (the welcome is queued): bytes that came with the
 * upgrade are parsed now, and reading starts (input backpressure
 * permitting). */
void fo__conn_release_input(fo_conn_t *conn);
/* Builds "conn id" text for Redis into out (FO_CONN_ID_LEN bytes: never cut). */
void fo__conn_id_str(const fo_conn_t *conn, char *out, size_t outlen);

/* conn.c helpers for handshake.c (fo__handshake_* in handshake.h) */
int fo__conn_send_raw(fo_conn_t *conn, fo_buf_t *buf);
void fo__conn_feed_early(fo_conn_t *conn, uint8_t *p, size_t n);

/* ---- listener.c ---- */
/* Binds --listen, prints "listening=HOST:PORT" and accepts (fo__conn_accept). */
int fo__listener_start(fo_server_t *srv, char *err, size_t errlen);
void fo__listener_stop(fo_server_t *srv);

/* ---- frame.c (fo_frame_new in frame.h) ---- */
/* The shared, pre-encoded ping frame (srv->ping_frame). */
int fo__frame_init(fo_server_t *srv);
void fo__frame_free(fo_server_t *srv);

/* ---- heartbeat.c ---- */
int fo__heartbeat_start(fo_server_t *srv);
/* Moves conn to the tail of list `kind` (FO_CL_*) with deadline now + that
 * kind's configured delay; PING and PONG go to EXPIRING instead when the
 * token ends before the next look. */
void fo__conn_queue(fo_conn_t *conn, int kind);
/* Unlinks conn from its list (idempotent). */
void fo__conn_unqueue(fo_conn_t *conn);
/* Every connection, list after list: c = fo__conn_after(srv, NULL) is the
 * first, NULL the end. A connection closed meanwhile moves to CLOSING, the
 * last list, and comes once more. */
fo_conn_t *fo__conn_after(fo_server_t *srv, fo_conn_t *c);
/* Any connection, or NULL (to destroy them all). */
fo_conn_t *fo__conn_any(fo_server_t *srv);
/* A pong came (a protocol pong, or a client's {"type":"pong"} answering
 * the app-level ping): the next ping is due a ping interval from now. */
void fo__heartbeat_pong(fo_conn_t *conn);

/* ---- client messages (conn.c) ---- */
void fo__client_message(fo_conn_t *conn, const uint8_t *p, size_t n);

/* ---- server.c ---- */
/* Sets the upward event pointers (conn_ev, hub_ev, rreg_ev, ...) to the
 * modules that handle them; fo_server_init does it, harnesses that build a
 * server by hand call it too. */
void fo__server_wire(fo_server_t *srv);

/* ---- drain.c ---- */
/* SIGTERM: starts the drain (idempotent). */
void fo__drain_start(fo_server_t *srv);
/* Moves the drain on if what it waits for is done (from the check handle). */
void fo__drain_poll(fo_server_t *srv);
/* Ends now: closes what is left (second signal, deadline). */
void fo__drain_finish(fo_server_t *srv);
/* The drain's close schedule: the 1001 closes go out in batches every
 * FO_DRAIN_BATCH_MS; how many of total connections should have been closed
 * elapsed_ms after the drain started (total once the batches are done, at
 * the latest (spread_ms / FO_DRAIN_BATCH_MS - 1) batches after the first). */
#define FO_DRAIN_BATCH_MS 50
int64_t fo__drain_due(int64_t total, uint64_t elapsed_ms, int64_t spread_ms, int64_t min_batch);

#endif

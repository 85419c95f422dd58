/* delivery/conn.c: the outbound queue of one open connection over a
 * socketpair, built with the real constructors (fo_server_core_init,
 * fo__conn_adopt): what a queued frame is charged, pongs collapsed, the
 * order of replies and the close frame, partial writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "delivery_int.h"
#include "flow.h"
#include "frame.h"
#include "server.h"
#include "ws.h"

typedef struct {
  uv_loop_t loop;
  fo_dcfg_t cfg;
  fo_server_t srv;
  fo_conn_t *conn;
  int peer;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  char *argv[] = {"t",
                  "--jwt-secret",
                  "0123456789abcdef0123456789abcdef",
                  "--server-id",
                  "t",
                  "--outq-max-bytes",
                  "1048576",
                  "--read-pause-bytes",
                  "524288",
                  NULL};
  char err[256];
  assert_int_equal(fo_cfg_load(fo_dcfg_fields, fo_dcfg_nfields, &f->cfg, 9, argv, err, sizeof(err)),
                   FO_CFG_OK);
  assert_int_equal(fo_dcfg_finalize(&f->cfg, err, sizeof(err)), 0);
  fo_log_set_level(FO_LOG_LVL_ERROR);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(fo_server_core_init(&f->srv, &f->loop, &f->cfg, err, sizeof(err)), 0);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
  int small = 4096;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  assert_int_equal(fo__conn_adopt(&f->srv, sv[0], false, &f->conn), 0);
  assert_int_equal(f->srv.nconns, 1);
  fo__conn_opened(f->conn, NULL, 0); /* as the handshake does once the 101 is queued */
  assert_int_equal(f->conn->state, FO_CONN_OPEN);
  f->peer = sv[1];
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  /* What the server's check handle does every loop turn (core init starts
   * no handle): queues marked for writing are written or recycled. */
  fo__server_flush(&f->srv);
  for (fo_conn_t *c; (c = fo__conn_any(&f->srv)) != NULL;)
    fo__conn_destroy(c);
  uv_run(&f->loop, UV_RUN_NOWAIT); /* close callbacks free the connection */
  fo__server_flush(&f->srv);
  assert_int_equal(f->srv.nconns, 0);
  assert_int_equal(fo_flow_queued_bytes(f->srv.flow), 0);
  fo_server_cleanup(&f->srv);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  close(f->peer);
  fo_cfg_free(fo_dcfg_fields, fo_dcfg_nfields, &f->cfg);
  free(f);
  return 0;
}

/* A masked client frame. */
static size_t client_frame(uint8_t *out, int op, const char *p, size_t n) {
  static const uint8_t mask[4] = {1, 2, 3, 4};
  out[0] = (uint8_t)(0x80 | op);
  out[1] = (uint8_t)(0x80 | n); /* n < 126 here */
  memcpy(out + 2, mask, 4);
  for (size_t i = 0; i < n; i++)
    out[6 + i] = (uint8_t)(p[i] ^ mask[i & 3]);
  return 6 + n;
}

static void feed(fixture_t *f, uint8_t *p, size_t n) {
  fo__conn_feed_early(f->conn, p, n);
}

/* Writes what is queued and reads everything the peer got (up to cap). */
static size_t drain_peer(fixture_t *f, uint8_t *out, size_t cap) {
  size_t got = 0;
  int idle = 0;
  fo__server_flush(&f->srv);
  for (int spins = 0; spins < 100000 && idle < 2; spins++) {
    ssize_t r = read(f->peer, out + got, cap - got);
    if (r > 0) {
      got += (size_t)r;
      idle = 0;
      continue;
    }
    if (r == 0)
      break; /* the server closed the socket */
    /* Nothing to read: let the loop write more; done once it has nothing
     * left to do and a read after that found nothing either. */
    idle = uv_run(&f->loop, UV_RUN_NOWAIT) == 0 ? idle + 1 : 0;
  }
  return got;
}

static uint64_t cost_of(const fo_buf_t *b) {
  uint64_t chunk = (sizeof(fo_buf_t) + (uint64_t)b->cap + 8 + 15) & ~(uint64_t)15;
  return (chunk < 32 ? 32 : chunk) + 2 * sizeof(fo_buf_t *);
}

static void real_cost_charged(void **state) {
  fixture_t *f = *state;
  fo_buf_t *tiny = fo_frame_new(FO_WS_OP_TEXT, "x", 1);
  fo_buf_t *big = fo_frame_new(FO_WS_OP_TEXT, NULL, 0);
  assert_int_equal(fo__conn_send(f->conn, tiny), 0);
  assert_int_equal(fo_flow_queued_bytes(f->srv.flow), cost_of(tiny));
  assert_true(cost_of(tiny) >= 48); /* a 3-byte frame is not 3 bytes of memory */
  /* Queued again: the queue's limit is charged the whole cost again, the
   * server total only the slot (the allocation is counted once). */
  assert_int_equal(fo__conn_send(f->conn, tiny), 0);
  assert_int_equal(fo__conn_send(f->conn, big), 0);
  assert_int_equal(fo_flow_queued_bytes(f->srv.flow),
                   cost_of(tiny) + 2 * sizeof(fo_buf_t *) + cost_of(big));
  uint8_t out[64];
  assert_int_equal(drain_peer(f, out, sizeof(out)), 3 + 3 + 2);
  assert_int_equal(fo_flow_queued_bytes(f->srv.flow), 0);
  fo_buf_unref(tiny);
  fo_buf_unref(big);
}

static void pongs_collapse(void **state) {
  fixture_t *f = *state;
  uint8_t in[256];
  size_t n = client_frame(in, FO_WS_OP_PING, "one", 3);
  n += client_frame(in + n, FO_WS_OP_PING, "two!", 4);
  n += client_frame(in + n, FO_WS_OP_TEXT, "{\"type\":\"ping\"}", 15);
  n += client_frame(in + n, FO_WS_OP_TEXT, "{\"type\":\"ping\"}", 15);
  feed(f, in, n);
  uint8_t out[256];
  size_t got = drain_peer(f, out, sizeof(out));
  /* one pong with the latest payload, one {"type":"pong"} */
  assert_int_equal(got, 2 + 4 + 2 + 15);
  assert_memory_equal(out, "\x8a\x04two!", 6);
  assert_memory_equal(out + 6, "\x81\x0f{\"type\":\"pong\"}", 17);
}

/* RFC 6455: a ping answered before the close frame that followed it. */
static void pong_before_close(void **state) {
  fixture_t *f = *state;
  uint8_t in[64];
  size_t n = client_frame(in, FO_WS_OP_PING, "p", 1);
  n += client_frame(in + n, FO_WS_OP_CLOSE, "\x03\xe8", 2);
  feed(f, in, n);
  uint8_t out[64];
  size_t got = drain_peer(f, out, sizeof(out));
  assert_int_equal(got, 3 + 4);
  assert_memory_equal(out, "\x8a\x01p", 3);
  assert_memory_equal(out + 3, "\x88\x02\x03\xe8", 4);
}

/* A reply queued before a protocol violation goes out before the 1002. */
static void reply_before_protocol_close(void **state) {
  fixture_t *f = *state;
  uint8_t in[64];
  size_t n = client_frame(in, FO_WS_OP_TEXT, "{\"type\":\"ping\"}", 15);
  in[n++] = 0x81; /* an unmasked text frame: 1002 */
  in[n++] = 0x01;
  in[n++] = 'x';
  feed(f, in, n);
  uint8_t out[128];
  size_t got = drain_peer(f, out, sizeof(out));
  assert_true(got >= 17 + 4);
  assert_memory_equal(out, "\x81\x0f{\"type\":\"pong\"}", 17);
  assert_memory_equal(out + 17, "\x88", 1);
  assert_int_equal((out[19] << 8) | out[20], 1002);
}

/* More than the socket takes at once: the rest goes through uv_write and
 * everything arrives, in order, and is uncharged. */
static void partial_writes(void **state) {
  fixture_t *f = *state;
  size_t n = 200000;
  char *p = malloc(n);
  for (size_t i = 0; i < n; i++)
    p[i] = (char)('a' + i % 26);
  fo_buf_t *b = fo_frame_new(FO_WS_OP_BINARY, p, n);
  assert_int_equal(fo__conn_send(f->conn, b), 0);
  assert_int_equal(fo__conn_send(f->conn, b), 0);
  uint8_t *out = malloc(2 * b->len + 16);
  size_t got = drain_peer(f, out, 2 * b->len + 16);
  assert_int_equal(got, 2 * (size_t)b->len);
  assert_memory_equal(out, b->data, b->len);
  assert_memory_equal(out + b->len, b->data, b->len);
  assert_int_equal(fo_flow_queued_bytes(f->srv.flow), 0);
  fo_buf_unref(b);
  free(out);
  free(p);
}

/* The slow-client close drops the queue (what is wrong with it) and sends 1013. */
static void slow_client_queue_dropped(void **state) {
  fixture_t *f = *state;
  size_t n = 300000;
  char *p = calloc(1, n);
  fo_buf_t *b = fo_frame_new(FO_WS_OP_BINARY, p, n);
  int rc = 0, sent = 0;
  while (rc == 0 && sent < 100) {
    rc = fo__conn_send(f->conn, b);
    sent++;
  }
  assert_int_equal(rc, -ENOBUFS);
  assert_int_equal(f->conn->state, FO_CONN_CLOSING);
  assert_int_equal(fo__conn_send(f->conn, b), -EPIPE);
  fo_buf_unref(b);
  free(p);
}

/* The deadline lists (heartbeat.c): an open connection waits on PING; one
 * whose token ends within the ping cycle on EXPIRING (walked by every sweep);
 * a closing one on CLOSING; each list in deadline order; a walk over all of
 * them meets every connection once. */
static bool on_list(fo_server_t *srv, int kind, const fo_conn_t *conn) {
  for (fo_conn_t *c = srv->clist[kind].next; c != &srv->clist[kind]; c = c->next)
    if (c == conn)
      return true;
  return false;
}

static void deadline_lists(void **state) {
  fixture_t *f = *state;
  fo_server_t *srv = &f->srv;
  assert_true(on_list(srv, FO_CL_PING, f->conn));
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
  fo_conn_t *b;
  assert_int_equal(fo__conn_adopt(srv, sv[0], false, &b), 0);
  assert_true(on_list(srv, FO_CL_HANDSHAKE, b));
  b->exp_s = 5; /* token ends 5 s after the server's start: within a 30 s ping cycle */
  fo__conn_opened(b, NULL, 0);
  assert_true(on_list(srv, FO_CL_EXPIRING, b));
  assert_true(b->expiring);
  /* pong, next ping: still looked at every sweep */
  fo__conn_queue(b, FO_CL_PONG);
  assert_true(on_list(srv, FO_CL_EXPIRING, b));
  /* sorted: a later deadline goes after an earlier one */
  uv_update_time(&f->loop);
  fo__conn_queue(f->conn, FO_CL_PING);
  assert_true(srv->clist[FO_CL_PING].prev == f->conn);
  int n = 0;
  for (fo_conn_t *c = fo__conn_any(srv); c != NULL; c = fo__conn_after(srv, c))
    n++;
  assert_int_equal(n, 2);
  fo__conn_close_ws(b, 1000, NULL);
  assert_true(on_list(srv, FO_CL_CLOSING, b));
  assert_false(b->expiring);
  assert_false(on_list(srv, FO_CL_EXPIRING, b));
  fo__conn_destroy(b);
  assert_false(on_list(srv, FO_CL_CLOSING, b));
  close(sv[1]);
}

/* Rate tokens come back per whole second since the last refill, capped at
 * the burst, without any walk over connections. */
static void rate_tokens_refill(void **state) {
  fixture_t *f = *state;
  fo_conn_t *c = f->conn;
  uint16_t now_s = (uint16_t)(uv_now(&f->loop) / 1000);
  c->tokens = 0;
  c->refill_s = now_s;
  fo__conn_refill(c);
  assert_int_equal(c->tokens, 0); /* no time has passed */
  c->refill_s = (uint16_t)(now_s - 2);
  fo__conn_refill(c);
  assert_int_equal(c->tokens, 2 * f->cfg.client_msg_rate); /* 40 of a burst of 100 */
  assert_int_equal(c->refill_s, now_s);
  c->refill_s = (uint16_t)(now_s - 60);
  fo__conn_refill(c);
  assert_int_equal(c->tokens, f->cfg.client_msg_burst);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(real_cost_charged, setup, teardown),
      cmocka_unit_test_setup_teardown(pongs_collapse, setup, teardown),
      cmocka_unit_test_setup_teardown(pong_before_close, setup, teardown),
      cmocka_unit_test_setup_teardown(reply_before_protocol_close, setup, teardown),
      cmocka_unit_test_setup_teardown(partial_writes, setup, teardown),
      cmocka_unit_test_setup_teardown(slow_client_queue_dropped, setup, teardown),
      cmocka_unit_test_setup_teardown(deadline_lists, setup, teardown),
      cmocka_unit_test_setup_teardown(rate_tokens_refill, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

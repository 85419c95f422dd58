/* fanout-bench-wsclient: many WebSocket clients in one process (libuv), for
 * the delivery benchmarks. Opens --conns connections to --addr, each with
 * its own user's HS256 token, optionally joins --room, answers pings, and
 * counts message frames. Client frames are masked by wslay's frame encoder.
 * Prints machine-readable lines on stdout:
 *   connected=N ms=T      all upgrades done (N counts only the upgraded ones)
 *   joined=N ms=T         all joins acknowledged
 *   got=K first_ns=A last_ns=B   every open connection has K messages (CLOCK_REALTIME)
 *   lat=K n=N q=T0,T1,...,T100   percentiles 0..100 of those K-th arrival times
 *   stats open=O closed=C failed=F pings=P pongs=Q levels=L1,..  every --stats-ms (0: never)
 *                        (Lk: connections that have k messages)
 *   total=M conns_short=S   on SIGUSR1: messages counted over all connections,
 *                           connections with fewer than --expect (what is lost)
 * and exits after --expect messages per connection (or when killed). A
 * connection the server closes, or one that fails to connect, is counted
 * (closed=, failed=) and the rest carry on. --user-offset numbers the users
 * (bench-user-<offset+i>) so that several client processes use distinct ones. */
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <signal.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>
#include <wslay/wslay.h>

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int idx;
  int state;    /* 0 connecting, 1 handshake, 2 open, 3 joined, 4 gone */
  int welcomed; /* the server's first frame (welcome) came */
  uint32_t msgs;
  uint8_t hdr[14]; /* partial frame header */
  uint8_t hlen;
  uint8_t op;
  uint64_t left;    /* payload bytes still to skip of the current frame */
  uint8_t ctl[125]; /* control frame payload being read */
  uint8_t ctl_len;
  char hs[256]; /* partial handshake response */
  uint16_t hs_len;
} lc_conn_t;

static uv_loop_t *loop;
static lc_conn_t *conns;
static int nconns, nconnected, njoined, inflight_connects, next_connect;
static int nclosed, nfailed, user_offset;
static uint64_t npings, npongs;
static uint64_t **level_times; /* [k][i]: arrival time of the k-th message, i-th to get it */
static const char *room;
static const char *secret;
static const char *host;
static int port;
static uint32_t expect;
static uint32_t *level_count; /* connections that reached k messages */
static uint64_t *level_first, *level_last;
static uint64_t t0;
static char rbuf[1 << 16];
static wslay_frame_context_ptr enc;
static uint8_t encbuf[512];
static size_t enclen;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void b64url(const void *in, size_t n, char *out) {
  char tmp[1024];
  int len = EVP_EncodeBlock((unsigned char *)tmp, in, (int)n);
  int o = 0;
  for (int i = 0; i < len && tmp[i] != '='; i++)
    out[o++] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
  out[o] = '\0';
}

static void make_token(int i, char *out, size_t outlen) {
  char claims[256], h[128], c[512], sig[64], signing[800];
  b64url("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", 27, h);
  int n =
      snprintf(claims, sizeof(claims), "{\"sub\":\"bench-user-%d\",\"exp\":%ld,\"rooms\":[\"*\"]}",
               user_offset + i, (long)time(NULL) + 86400);
  b64url(claims, (size_t)n, c);
  snprintf(signing, sizeof(signing), "%s.%s", h, c);
  unsigned char md[32];
  unsigned mdlen = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)signing, strlen(signing), md,
       &mdlen);
  b64url(md, mdlen, sig);
  snprintf(out, outlen, "%s.%s", signing, sig);
}

/* ---- masked client frames through wslay ---- */

static ssize_t enc_send(const uint8_t *data, size_t len, int flags, void *ud) {
  (void)flags, (void)ud;
  if (enclen + len > sizeof(encbuf))
    return WSLAY_ERR_WOULDBLOCK;
  memcpy(encbuf + enclen, data, len);
  enclen += len;
  return (ssize_t)len;
}
static ssize_t enc_recv(uint8_t *b, size_t l, int f, void *u) {
  (void)b, (void)l, (void)f, (void)u;
  return WSLAY_ERR_WOULDBLOCK;
}
static int enc_mask(uint8_t *buf, size_t len, void *ud) {
  (void)ud;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)rand();
  return 0;
}

/* SIGUSR1: a bench that stopped waiting asks how much arrived. */
static void on_usr1(uv_signal_t *h, int sig) {
  (void)h, (void)sig;
  uint64_t total = 0;
  int short_conns = 0;
  for (int i = 0; i < nconns; i++) {
    total += conns[i].msgs;
    short_conns += conns[i].msgs < expect;
  }
  printf("total=%llu conns_short=%d\n", (unsigned long long)total, short_conns);
  fflush(stdout);
}

static void on_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void on_pong_written(uv_write_t *req, int status) {
  if (status == 0)
    npongs++;
  free(req);
}

static void send_frame(lc_conn_t *c, int op, const void *p, size_t n) {
  struct wslay_frame_iocb iocb = {1, 0, (uint8_t)op, n, 1, p, n};
  enclen = 0;
  if (wslay_frame_send(enc, &iocb) != (ssize_t)n)
    return;
  uv_write_t *req = malloc(sizeof(*req) + enclen);
  memcpy(req + 1, encbuf, enclen);
  uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)enclen);
  uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, op == 0xA ? on_pong_written : on_written);
}

/* ---- progress ---- */

static void maybe_done(void) {
  if (expect > 0 && level_count[expect] >= (uint32_t)(nconns - nclosed - nfailed)) {
    fflush(stdout);
    exit(0);
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Every open connection has k messages (or the rest were closed): print
 * level k once. */
static void level_check(uint32_t k) {
  static uint32_t printed; /* levels 1..printed are out */
  if (k != printed + 1 || level_count[k] == 0 ||
      level_count[k] < (uint32_t)(nconns - nclosed - nfailed))
    return;
  printed = k;
  printf("got=%u first_ns=%llu last_ns=%llu\n", k, (unsigned long long)level_first[k],
         (unsigned long long)level_last[k]);
  uint32_t n = level_count[k];
  qsort(level_times[k], n, sizeof(uint64_t), cmp_u64);
  printf("lat=%u n=%u q=", k, n);
  for (int q = 0; q <= 100; q++)
    printf("%s%llu", q ? "," : "", (unsigned long long)level_times[k][(uint64_t)(n - 1) * q / 100]);
  printf("\n");
  fflush(stdout);
  maybe_done();
  if (k < expect)
    level_check(k + 1);
}

/* A connection is gone: levels may now be complete without it. */
static void conn_lost(void) {
  for (uint32_t k = 1; k <= expect; k++)
    level_check(k);
  maybe_done();
}

static void on_message(lc_conn_t *c) {
  if (!c->welcomed) { /* the welcome: every connection's first frame */
    c->welcomed = 1;
    return;
  }
  if (c->state == 2) { /* the join reply */
    c->state = 3;
    if (++njoined == nconns - nfailed) {
      printf("joined=%d ms=%.1f\n", njoined, (double)(now_ns() - t0) / 1e6);
      fflush(stdout);
    }
    return;
  }
  uint32_t k = ++c->msgs;
  if (k > expect)
    return;
  uint64_t t = now_ns();
  if (level_count[k] == 0)
    level_first[k] = t;
  level_last[k] = t;
  level_times[k][level_count[k]++] = t;
  level_check(k);
}

/* Minimal frame reader: counts data frames, answers pings. */
static void consume(lc_conn_t *c, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (c->left > 0) {
      size_t k = c->left < n ? (size_t)c->left : n;
      if (c->op >= 8 && c->ctl_len + k <= sizeof(c->ctl)) {
        memcpy(c->ctl + c->ctl_len, p, k);
        c->ctl_len += (uint8_t)k;
      }
      c->left -= k;
      p += k;
      n -= k;
      if (c->left == 0) {
        if (c->op == 0x9) {
          npings++;
          send_frame(c, 0xA, c->ctl, c->ctl_len);
        } else if (c->op == 0x1)
          on_message(c);
        c->hlen = 0;
      }
      continue;
    }
    c->hdr[c->hlen++] = *p++;
    n--;
    if (c->hlen < 2)
      continue;
    uint8_t l7 = c->hdr[1] & 0x7f;
    size_t need = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
    if (c->hlen < need)
      continue;
    uint64_t len = l7;
    if (l7 == 126)
      len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
    else if (l7 == 127) {
      len = 0;
      for (int i = 2; i < 10; i++)
        len = (len << 8) | c->hdr[i];
    }
    c->op = c->hdr[0] & 0x0f;
    c->ctl_len = 0;
    c->left = len;
    if (len == 0) {
      if (c->op == 0x9) {
        npings++;
        send_frame(c, 0xA, "", 0);
      } else if (c->op == 0x1)
        on_message(c);
      c->hlen = 0;
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)h, (void)s;
  *b = uv_buf_init(rbuf, sizeof(rbuf));
}

static void start_more(void);

static void print_connected(void) {
  if (nconnected + nfailed == nconns) {
    printf("connected=%d ms=%.1f\n", nconnected, (double)(now_ns() - t0) / 1e6);
    fflush(stdout);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  lc_conn_t *c = s->data;
  if (nread < 0) {
    if (nclosed + nfailed < 20)
      fprintf(stderr, "conn %d closed: %s (state %d, msgs %u)\n", c->idx, uv_strerror((int)nread),
              c->state, c->msgs);
    uv_read_stop(s);
    uv_close((uv_handle_t *)s, NULL);
    if (c->state == 1) { /* no 101 yet: a failed connect */
      nfailed++;
      inflight_connects--;
      print_connected();
      start_more();
    } else {
      nclosed++;
    }
    c->state = 4;
    conn_lost();
    return;
  }
  const uint8_t *p = (const uint8_t *)b->base;
  size_t n = (size_t)nread;
  if (c->state == 1) {
    size_t k = n < sizeof(c->hs) - 1 - c->hs_len ? n : sizeof(c->hs) - 1 - c->hs_len;
    memcpy(c->hs + c->hs_len, p, k);
    c->hs_len += (uint16_t)k;
    c->hs[c->hs_len] = '\0';
    char *end = strstr(c->hs, "\r\n\r\n");
    if (end == NULL)
      return;
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
      fprintf(stderr, "conn %d: %.60s\n", c->idx, c->hs);
      exit(1);
    }
    size_t used = (size_t)(end + 4 - c->hs) - (c->hs_len - k);
    p += used;
    n -= used;
    c->state = 2;
    inflight_connects--;
    nconnected++;
    print_connected();
    if (room != NULL) {
      char j[300];
      int jl = snprintf(j, sizeof(j), "{\"type\":\"join\",\"room\":\"%s\"}", room);
      send_frame(c, 0x1, j, (size_t)jl);
    } else {
      c->state = 3;
    }
    start_more();
  }
  consume(c, p, n);
}

static void on_connect(uv_connect_t *req, int status) {
  lc_conn_t *c = req->data;
  if (status < 0) {
    if (nfailed < 20)
      fprintf(stderr, "connect %d: %s\n", c->idx, uv_strerror(status));
    uv_close((uv_handle_t *)&c->tcp, NULL);
    c->state = 4;
    nfailed++;
    inflight_connects--;
    print_connected();
    conn_lost();
    start_more();
    return;
  }
  char tok[1000], reqbuf[1400];
  make_token(c->idx, tok, sizeof(tok));
  int n = snprintf(reqbuf, sizeof(reqbuf),
                   "GET /ws?token=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n",
                   tok, host, port);
  uv_write_t *w = malloc(sizeof(*w) + (size_t)n);
  memcpy(w + 1, reqbuf, (size_t)n);
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
  c->state = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
}

/* To a loopback server every connection shares one (dst addr, dst port):
 * with thousands open, connect()'s ephemeral port search in the kernel
 * (__inet_hash_connect / __inet_check_established) turns linear and took 75%
 * of this client's CPU at 15,000 connections. Spreading the sources over
 * 127.0.0.2..127.0.0.65 (port picked at connect: IP_BIND_ADDRESS_NO_PORT)
 * keeps each source's port space nearly empty. */
static void bind_source(lc_conn_t *c) {
  if (strncmp(host, "127.", 4) != 0)
    return;
  uv_os_fd_t fd;
  int one = 1;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 ||
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0)
    return;
  struct sockaddr_in src;
  char ip[32];
  snprintf(ip, sizeof(ip), "127.0.0.%d", 2 + c->idx % 64);
  uv_ip4_addr(ip, 0, &src);
  uv_tcp_bind(&c->tcp, (struct sockaddr *)&src, 0);
}

static void start_more(void) {
  struct sockaddr_in sa;
  uv_ip4_addr(host, port, &sa);
  while (next_connect < nconns && inflight_connects < 256) {
    lc_conn_t *c = &conns[next_connect];
    c->idx = next_connect++;
    uv_tcp_init_ex(loop, &c->tcp, AF_INET);
    bind_source(c);
    c->tcp.data = c;
    c->creq.data = c;
    inflight_connects++;
    uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa, on_connect);
  }
}

static void on_stats(uv_timer_t *t) {
  (void)t;
  printf("stats open=%d closed=%d failed=%d pings=%llu pongs=%llu levels=", nconnected - nclosed,
         nclosed, nfailed, (unsigned long long)npings, (unsigned long long)npongs);
  for (uint32_t k = 1; k <= expect; k++)
    printf("%s%u", k > 1 ? "," : "", level_count[k]);
  printf("\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *addr = NULL;
  int stats_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--addr") == 0)
      addr = argv[i + 1];
    else if (strcmp(argv[i], "--conns") == 0)
      nconns = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--room") == 0)
      room = argv[i + 1];
    else if (strcmp(argv[i], "--secret") == 0)
      secret = argv[i + 1];
    else if (strcmp(argv[i], "--expect") == 0)
      expect = (uint32_t)atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--user-offset") == 0)
      user_offset = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--stats-ms") == 0)
      stats_ms = atoi(argv[i + 1]);
  }
  if (addr == NULL || nconns <= 0 || secret == NULL) {
    fprintf(stderr,
            "usage: %s --addr HOST:PORT --conns N --secret S [--room R] [--expect K]\n"
            "       [--user-offset U] [--stats-ms MS]\n",
            argv[0]);
    return 2;
  }
  static char hostbuf[64];
  const char *colon = strrchr(addr, ':');
  snprintf(hostbuf, sizeof(hostbuf), "%.*s", (int)(colon - addr), addr);
  host = hostbuf;
  port = atoi(colon + 1);
  static const struct wslay_frame_callbacks cbs = {enc_send, enc_recv, enc_mask};
  wslay_frame_context_init(&enc, &cbs, NULL);
  conns = calloc((size_t)nconns, sizeof(*conns));
  level_count = calloc(expect + 2, sizeof(*level_count));
  level_first = calloc(expect + 2, sizeof(*level_first));
  level_last = calloc(expect + 2, sizeof(*level_last));
  level_times = calloc(expect + 2, sizeof(*level_times));
  for (uint32_t k = 1; k <= expect; k++)
    level_times[k] = calloc((size_t)nconns, sizeof(uint64_t));
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  uv_timer_t stats;
  if (stats_ms > 0) {
    uv_timer_init(loop, &stats);
    uv_timer_start(&stats, on_stats, (uint64_t)stats_ms, (uint64_t)stats_ms);
  }
  static uv_signal_t usr1;
  uv_signal_init(loop, &usr1);
  uv_signal_start(&usr1, on_usr1, SIGUSR1);
  uv_unref((uv_handle_t *)&usr1);
  t0 = now_ns();
  start_more();
  return uv_run(loop, UV_RUN_DEFAULT);
}

/* fanout-bench-floor: the kernel's floor for paced fan-out (bench_floor.py).
 *
 * The receivers: with --serve, fanout-bench-wsclient (the same receiver as in
 * the server run): this program listens, prints "listening=HOST:PORT", and
 * answers each client's upgrade and join as the server would. Without it, a
 * forked sink (accepts --conns loopback connections, reads and discards with
 * epoll) to which this program connects. Then --rate times a second for --seconds writes the same --frame-bytes bytes (a
 * server-to-client WebSocket text frame) to every socket with a bare loop of
 * write(), or, with --uring, with io_uring sends submitted in batches. Prints
 *   floor mode=M conns=N frames=F cpu_s=C us_per_frame=U short=S
 * where C is this process's utime+stime (getrusage) over the paced period. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef FO_HAVE_URING
#include <liburing.h>
#endif

static long nivcsw; /* involuntary context switches so far (preempted) */

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  nivcsw = ru.ru_nivcsw;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The sink: accept everything, read and discard; exits when the parent's
 * sockets are all closed (or on SIGTERM). */
static void sink(int lfd, int n) {
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  static char buf[1 << 16];
  struct epoll_event evs[256];
  int open = 0, accepted = 0;
  for (;;) {
    int k = epoll_wait(ep, evs, 256, -1);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      _exit(1);
    for (int i = 0; i < k; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        int c;
        while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
          open++, accepted++;
        }
        continue;
      }
      ssize_t r;
      while ((r = read(fd, buf, sizeof(buf))) > 0) {
      }
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        close(fd);
        if (--open == 0 && accepted >= n)
          _exit(0);
      }
    }
  }
}

/* --serve: accept n connections of fanout-bench-wsclient (the receiver of the
 * server run) on lfd and play the server's part of its protocol: a 101 and a
 * welcome frame for the upgrade, one reply frame for the join. Returns the
 * accepted sockets once every client has been answered. */
static int *serve(int lfd, int n) {
  int *fds = calloc((size_t)n, sizeof(int));
  uint8_t *step = calloc((size_t)n, 1); /* 0 upgrade not seen, 1 welcomed, 2 joined */
  int ep = epoll_create1(0), accepted = 0, joined = 0;
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  static const char hello[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\n\r\n\x81\x02{}";
  static const uint8_t reply[] = {0x81, 0x02, '{', '}'};
  static char buf[1 << 16];
  struct epoll_event evs[256];
  while (joined < n) {
    int k = epoll_wait(ep, evs, 256, 30000);
    if (k <= 0 && errno != EINTR) {
      fprintf(stderr, "serve: %d accepted, %d joined; timed out\n", accepted, joined);
      exit(1);
    }
    for (int i = 0; i < k; i++) {
      uint32_t idx = evs[i].data.u32;
      if (idx == UINT32_MAX) {
        int c;
        while (accepted < n && (c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* as the server's */
          struct epoll_event ce = {.events = EPOLLIN, .data.u32 = (uint32_t)accepted};
          fds[accepted++] = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      /* The upgrade request and the join each arrive in one read here. */
      ssize_t r = read(fds[idx], buf, sizeof(buf));
      if (r <= 0)
        continue;
      if (step[idx] == 0) {
        step[idx] = 1;
        if (write(fds[idx], hello, sizeof(hello) - 1) != (ssize_t)sizeof(hello) - 1)
          exit(1);
      } else if (step[idx] == 1) {
        step[idx] = 2;
        joined++;
        epoll_ctl(ep, EPOLL_CTL_DEL, fds[idx], NULL);
        if (write(fds[idx], reply, sizeof(reply)) != (ssize_t)sizeof(reply))
          exit(1);
      }
    }
  }
  close(ep);
  free(step);
  return fds;
}

/* utime+stime as /proc reports them (what bench_floor.py reads for the server). */
static double proc_cpu_s(void) {
  char b[1024];
  FILE *f = fopen("/proc/self/stat", "r");
  size_t n = f != NULL ? fread(b, 1, sizeof(b) - 1, f) : 0;
  if (f != NULL)
    fclose(f);
  b[n] = '\0';
  char *p = strrchr(b, ')');
  unsigned long ut = 0, st = 0;
  if (p == NULL ||
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
  struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

int main(int argc, char **argv) {
  int n = 10000, rate = 10, frame_bytes = 66, uring = 0, serving = 0;
  double seconds = 10;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--uring") == 0)
      uring = 1;
    else if (strcmp(argv[i], "--serve") == 0)
      serving = 1;
    else if (i + 1 < argc && strcmp(argv[i], "--conns") == 0)
      n = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--rate") == 0)
      rate = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--seconds") == 0)
      seconds = atof(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--frame-bytes") == 0)
      frame_bytes = atoi(argv[++i]);
    else {
      fprintf(
          stderr,
          "usage: %s [--conns N] [--rate R] [--seconds S] [--frame-bytes B] [--uring] [--serve]\n",
          argv[0]);
      return 2;
    }
  }
  if (n <= 0 || rate <= 0 || seconds <= 0 || frame_bytes < 2 || frame_bytes > 4096) {
    fprintf(stderr, "bad arguments (frame-bytes 2..4096)\n");
    return 2;
  }
#ifndef FO_HAVE_URING
  if (uring) {
    fprintf(stderr, "built without liburing\n");
    return 2;
  }
#endif
  /* The frame: FIN+text, unmasked, 7- or 16-bit length, payload of 'x'. */
  static uint8_t frame[4096];
  size_t hl = frame_bytes - 2 <= 125 ? 2 : 4;
  size_t pl = (size_t)frame_bytes - hl;
  frame[0] = 0x81;
  frame[1] = hl == 2 ? (uint8_t)pl : 126;
  if (hl == 4)
    frame[2] = (uint8_t)(pl >> 8), frame[3] = (uint8_t)pl;
  memset(frame + hl, 'x', pl);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
  socklen_t sl = sizeof(sa);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4096) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
    perror("listen");
    return 1;
  }
  pid_t child = -1;
  int *fds;
  if (serving) {
    printf("listening=127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    fds = serve(lfd, n);
  } else {
    child = fork();
    if (child == 0)
      sink(lfd, n);
    fds = calloc((size_t)n, sizeof(int));
  }
  close(lfd);
  for (int i = 0; i < n && !serving; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    /* Sources spread over 127.0.0.2..65 as in loadclient.c (connect's port search). */
    struct sockaddr_in src = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % 64))};
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* as the server's sockets */
    if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
      fprintf(stderr, "connect %d: %s\n", i, strerror(errno));
      if (child > 0)
        kill(child, SIGTERM);
      return 1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    fds[i] = fd;
  }
#ifdef FO_HAVE_URING
  struct io_uring ring;
  unsigned depth = 4096;
  if (uring && io_uring_queue_init(depth, &ring, 0) != 0) {
    perror("io_uring_queue_init");
    if (child > 0)
      kill(child, SIGTERM);
    return 1;
  }
#endif
  usleep(500 * 1000); /* the sink has accepted everything, the clients are idle */

  long ticks = (long)(seconds * rate), frames = 0, shorts = 0;
  uint64_t period = 1000000000ull / (uint64_t)rate, t = now_ns();
  double c0 = cpu_s(), p0 = proc_cpu_s();
  long iv0 = nivcsw;
  for (long k = 0; k < ticks; k++) {
    t += period;
    sleep_until(t);
    if (!uring) {
      for (int i = 0; i < n; i++) {
        ssize_t w = write(fds[i], frame, (size_t)frame_bytes);
        if (w == frame_bytes)
          frames++;
        else
          shorts++;
      }
      continue;
    }
#ifdef FO_HAVE_URING
    /* One submission (one syscall) per `depth` sends instead of one each. */
    for (int i = 0; i < n;) {
      unsigned queued = 0;
      for (; i < n && queued < depth; i++, queued++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_send(sqe, fds[i], frame, (size_t)frame_bytes, MSG_DONTWAIT);
      }
      io_uring_submit_and_wait(&ring, queued);
      struct io_uring_cqe *cqe;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        if (cqe->res == frame_bytes)
          frames++;
        else
          shorts++;
        seen++;
      }
      io_uring_cq_advance(&ring, seen);
    }
#endif
  }
  double c1 = cpu_s(), p1 = proc_cpu_s();
  printf("floor mode=%s conns=%d frames=%ld cpu_s=%.3f us_per_frame=%.3f short=%ld proc_cpu_s=%.3f "
         "preempted=%ld\n",
         uring ? "io_uring" : "write", n, frames, c1 - c0,
         frames > 0 ? (c1 - c0) * 1e6 / (double)frames : 0.0, shorts, p1 - p0, nivcsw - iv0);
  fflush(stdout);
#ifdef FO_HAVE_URING
  if (uring)
    io_uring_queue_exit(&ring);
#endif
  for (int i = 0; i < n; i++)
    close(fds[i]);
  free(fds);
  int st;
  if (child > 0)
    waitpid(child, &st, 0);
  return 0;
}

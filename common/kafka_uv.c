#define _GNU_SOURCE /* pipe2 */
#include "kafka_uv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

struct fo_kafka_uv {
  uv_poll_t poll;       /* poll.data == this; watches fds[0] */
  uv_idle_t idle;       /* runs while a batch limit left events in the queue */
  uv_timer_t keepalive; /* keepalive.data == this; see fo_kafka_uv_keepalive */
  int fds[2];           /* pipe: librdkafka writes fds[1] when q becomes non-empty */
  rd_kafka_queue_t *q;  /* borrowed */
  int batch;
  fo_kafka_uv_event_cb cb;
  void *ud;
  int open_handles;
  bool closing;
};

static void on_close_free(uv_handle_t *h) {
  fo_kafka_uv_t *kuv = h->data;
  if (--kuv->open_handles == 0) {
    close(kuv->fds[0]);
    close(kuv->fds[1]);
    free(kuv);
  }
}

static void on_idle(uv_idle_t *idle);

static void serve(fo_kafka_uv_t *kuv) {
  for (int i = 0; i < kuv->batch && !kuv->closing; i++) {
    rd_kafka_event_t *ev = rd_kafka_queue_poll(kuv->q, 0);
    if (ev == NULL) {
      uv_idle_stop(&kuv->idle);
      return;
    }
    kuv->cb(ev, kuv->ud);
    rd_kafka_event_destroy(ev);
  }
  /* More may be waiting, and the pipe is written only on empty -> non-empty:
   * come back on the next loop iteration after sockets had their turn. */
  if (!kuv->closing)
    uv_idle_start(&kuv->idle, on_idle);
}

static void on_idle(uv_idle_t *idle) {
  serve(idle->data);
}

static void drain_pipe(int fd) {
  char junk[256];
  while (read(fd, junk, sizeof(junk)) > 0) {
  }
}

static void on_poll(uv_poll_t *poll, int status, int events) {
  fo_kafka_uv_t *kuv = poll->data;
  (void)events;
  if (status < 0) {
    FO_LOG_ERROR("kafka", "queue poll failed", "err=%s", fo_strerror(status));
    return;
  }
  drain_pipe(kuv->fds[0]); /* before serving, so no wake-up is lost */
  serve(kuv);
}

int fo_kafka_uv_start(uv_loop_t *loop, rd_kafka_queue_t *q, int batch, fo_kafka_uv_event_cb cb,
                      void *ud, fo_kafka_uv_t **out) {
  fo_kafka_uv_t *kuv = calloc(1, sizeof(*kuv));
  int rc;
  if (kuv == NULL)
    return -ENOMEM;
  if (pipe2(kuv->fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    rc = -errno;
    goto fail_free;
  }
  kuv->q = q;
  kuv->batch = batch > 0 ? batch : 1000;
  kuv->cb = cb;
  kuv->ud = ud;
  rc = uv_poll_init(loop, &kuv->poll, kuv->fds[0]);
  if (rc != 0)
    goto fail_pipe;
  kuv->poll.data = kuv;
  kuv->open_handles++;
  uv_idle_init(loop, &kuv->idle); /* cannot fail on Linux */
  kuv->idle.data = kuv;
  kuv->open_handles++;
  uv_timer_init(loop, &kuv->keepalive); /* cannot fail */
  kuv->keepalive.data = kuv;
  kuv->open_handles++;
  rc = uv_poll_start(&kuv->poll, UV_READABLE, on_poll);
  if (rc != 0) {
    kuv->closing = true;
    uv_close((uv_handle_t *)&kuv->poll, on_close_free);
    uv_close((uv_handle_t *)&kuv->idle, on_close_free);
    uv_close((uv_handle_t *)&kuv->keepalive, on_close_free);
    return rc;
  }
  rd_kafka_queue_io_event_enable(q, kuv->fds[1], "1", 1);
  *out = kuv;
  /* Events queued before the IO event was enabled wrote nothing: look now. */
  uv_idle_start(&kuv->idle, on_idle);
  return 0;
fail_pipe:
  close(kuv->fds[0]);
  close(kuv->fds[1]);
fail_free:
  free(kuv);
  return rc;
}

void fo_kafka_uv_kick(fo_kafka_uv_t *kuv) {
  if (!kuv->closing)
    uv_idle_start(&kuv->idle, on_idle);
}

static void on_keepalive(uv_timer_t *t) {
  serve(t->data); /* polls the queue at least once, empty or not */
}

void fo_kafka_uv_keepalive(fo_kafka_uv_t *kuv, uint64_t period_ms) {
  if (kuv->closing)
    return;
  if (period_ms == 0)
    uv_timer_stop(&kuv->keepalive);
  else
    uv_timer_start(&kuv->keepalive, on_keepalive, period_ms, period_ms);
}

void fo_kafka_uv_close(fo_kafka_uv_t *kuv) {
  if (kuv == NULL || kuv->closing)
    return;
  kuv->closing = true;
  rd_kafka_queue_io_event_enable(kuv->q, -1, NULL, 0);
  uv_close((uv_handle_t *)&kuv->poll, on_close_free);
  uv_close((uv_handle_t *)&kuv->idle, on_close_free);
  uv_close((uv_handle_t *)&kuv->keepalive, on_close_free);
}

/* librdkafka's log lines, from its own threads: stderr writes are atomic per
 * line, which is all our logger needs. */
static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  fo_log_level_t lvl = level <= 3   ? FO_LOG_LVL_ERROR
                       : level <= 5 ? FO_LOG_LVL_WARN
                       : level == 6 ? FO_LOG_LVL_INFO
                                    : FO_LOG_LVL_DEBUG;
  FO_LOG_(lvl, "kafka", "librdkafka", "fac=%s detail=\"%s\"", fac, buf);
}

/* Settings whose value may be a credential: their values never reach an
 * error message. */
static bool secret_setting(const char *k) {
  static const char *const prefixes[] = {"sasl.", "ssl.key.", "ssl.keystore.", "ssl_key"};
  static const char *const parts[] = {"password", "secret", "token", "credential", "private"};
  for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
    if (strncasecmp(k, prefixes[i], strlen(prefixes[i])) == 0)
      return true;
  }
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    if (strcasestr(k, parts[i]) != NULL)
      return true;
  }
  size_t len = strlen(k);
  return len >= 4 && strcasecmp(k + len - 4, ".pem") == 0;
}

/* `redact`: the value comes from the operator and may be a secret under a
 * misspelled name (e.g. sasl.pasword=...): print it only when the key is
 * known and not secret-looking. librdkafka's reason may quote the value, so
 * it is dropped too when it does. */
static int set(rd_kafka_conf_t *conf, const char *k, const char *v, bool redact, char *err,
               size_t errlen) {
  char why[256];
  rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, k, v, why, sizeof(why));
  if (res == RD_KAFKA_CONF_OK)
    return 0;
  if (redact && (res == RD_KAFKA_CONF_UNKNOWN || secret_setting(k))) {
    if (v[0] != '\0' && strstr(why, v) != NULL)
      snprintf(why, sizeof(why), "invalid value");
    snprintf(err, errlen, "kafka setting %s=<hidden>: %s", k, why);
  } else {
    snprintf(err, errlen, "kafka setting %s=%s: %s", k, v, why);
  }
  return -EINVAL;
}

rd_kafka_conf_t *fo_kafka_conf_new(fo_kafka_role_t role, const char *bootstrap,
                                   const char *client_id, char *const *overrides, char *err,
                                   size_t errlen) {
  static const char *const producer[][2] = {
      {"linger.ms", "1"},
      {"acks", "all"},
      {"enable.idempotence", "true"},
      {"message.timeout.ms", "30000"},
  };
  static const char *const consumer[][2] = {
      {"enable.auto.offset.store", "false"}, {"enable.auto.commit", "true"},
      {"auto.commit.interval.ms", "500"},    {"partition.assignment.strategy", "range"},
      {"session.timeout.ms", "6000"},        {"heartbeat.interval.ms", "1000"},
      {"auto.offset.reset", "latest"},
  };
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (conf == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  rd_kafka_conf_set_log_cb(conf, on_kafka_log);
  if (set(conf, "bootstrap.servers", bootstrap, false, err, errlen) != 0 ||
      set(conf, "client.id", client_id, false, err, errlen) != 0 ||
      set(conf, "socket.keepalive.enable", "true", false, err, errlen) != 0 ||
      set(conf, "reconnect.backoff.max.ms", "2000", false, err, errlen) != 0)
    goto fail;
  if (role == FO_KAFKA_PRODUCER) {
    for (size_t i = 0; i < sizeof(producer) / sizeof(producer[0]); i++) {
      if (set(conf, producer[i][0], producer[i][1], false, err, errlen) != 0)
        goto fail;
    }
  } else {
    for (size_t i = 0; i < sizeof(consumer) / sizeof(consumer[0]); i++) {
      if (set(conf, consumer[i][0], consumer[i][1], false, err, errlen) != 0)
        goto fail;
    }
  }
  int pos = 0;
  for (char *const *o = overrides; o != NULL && *o != NULL; o++) {
    const char *eq = strchr(*o, '=');
    pos++;
    /* Never the item itself: it may be the tail of a password cut at a comma. */
    if (eq == NULL || eq == *o) {
      snprintf(err, errlen, "kafka setting #%d: expected key=value", pos);
      goto fail;
    }
    char key[128];
    if ((size_t)(eq - *o) >= sizeof(key)) {
      snprintf(err, errlen, "kafka setting #%d: key too long", pos);
      goto fail;
    }
    snprintf(key, sizeof(key), "%.*s", (int)(eq - *o), *o);
    if (set(conf, key, eq + 1, true, err, errlen) != 0)
      goto fail;
  }
  return conf;
fail:
  rd_kafka_conf_destroy(conf);
  return NULL;
}

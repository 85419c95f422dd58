/* Routes -> handlers for the ingest HTTP API (schemas/http-api.md):
 *   POST /v1/send, /v1/broadcast, /v1/batch   -> Kafka, answered from the
 *                                               delivery report (202) or
 *                                               with an error by the deadline
 *   GET  /v1/presence/{user}                   -> presence.c (Redis)
 *   GET  /healthz, /readyz, /metrics
 * A "job" is one HTTP request waiting for the delivery reports of its
 * records; jobs sit in a FIFO (they all have the same deadline length) that
 * one timer sweeps, so nothing waits past --produce-timeout-ms. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "envelope.h"
#include "ingest_int.h"
#include "json_out.h"
#include "list.h"
#include "log.h"
#include "message.h"
#include "partition.h"

#define MAX_IDEM_KEY 255

typedef struct job job_t;

typedef struct {
  fo_prod_req_t preq; /* first: the opaque handed to librdkafka */
  job_t *job;
  int index;
} item_t;

typedef struct {
  int status;        /* 0 while waiting for Kafka */
  const char *error; /* static text, or NULL */
  uint8_t id[FO_ID_LEN];
} result_t;

struct job {
  fo_api_t *api;
  TAILQ_ENTRY(job) fifo; /* deadline FIFO, while listed */
  fo_reply_t *reply;     /* NULL once answered */
  fo_idem_entry_t *idem;
  uint64_t deadline_ms;
  bool batch;
  bool listed;
  int n;             /* items */
  int outstanding;   /* delivery reports still to come */
  int unknown;       /* items without a result yet */
  result_t *results; /* [n], in the same allocation */
  item_t *items;     /* [n], in the same allocation */
};

struct fo_api {
  fo_ingest_t *ing;
  uv_timer_t timer;       /* timer.data == this */
  TAILQ_HEAD(, job) jobs; /* unanswered, by deadline */
  size_t pending;         /* jobs not yet freed */
  uint64_t period;        /* of the deadline sweep, ms */
  uint64_t *c_route[8];
  uint64_t *c_timeouts;
  int64_t *g_jobs;
  int64_t *g_idem_keys, *g_idem_bytes;
  char retry_after[48];
};

enum { R_SEND, R_BROADCAST, R_BATCH, R_PRESENCE, R_HEALTHZ, R_READYZ, R_METRICS, R_OTHER };
static const char *const route_names[] = {"send",    "broadcast", "batch",   "presence",
                                          "healthz", "readyz",    "metrics", "other"};

/* ---- metrics ------------------------------------------------------------------ */

size_t fo__api_pending(const fo_api_t *api) {
  return api->pending;
}

static void on_collect(void *ud) {
  fo_api_t *api = ud;
  *api->g_jobs = (int64_t)api->pending;
  fo_idem_t *idem = api->ing->idem;
  *api->g_idem_keys = idem != NULL ? (int64_t)fo__idem_size(idem) : 0;
  *api->g_idem_bytes = idem != NULL ? (int64_t)fo__idem_bytes(idem) : 0;
}

/* ---- jobs ---------------------------------------------------------------------- */

static const char *status_extra(const fo_api_t *api, int status) {
  return status == 429 || status == 503 ? api->retry_after : NULL;
}

static void job_unlist(job_t *job) {
  fo_api_t *api = job->api;
  if (!job->listed)
    return;
  TAILQ_REMOVE(&api->jobs, job, fifo);
  job->listed = false;
}

static void job_maybe_free(job_t *job) {
  if (job->reply != NULL || job->outstanding > 0)
    return;
  job->api->pending--;
  free(job);
}

/* Sends the job's response (timed-out items become 503) and caches it for
 * the Idempotency-Key, if any. */
static void job_answer(job_t *job) {
  fo_api_t *api = job->api;
  fo_ingest_t *ing = api->ing;
  job_unlist(job);
  fo_sb_t body;
  fo_sb_init(&body);
  int status;
  int accepted = 0; /* items Kafka has */
  const char *extra = NULL;
  char idtxt[FO_ID_STR_LEN + 1];
  for (int i = 0; i < job->n; i++) {
    if (job->results[i].status == 0) {
      job->results[i].status = 503;
      job->results[i].error = "kafka did not acknowledge in time";
      (*api->c_timeouts)++;
    }
  }
  if (!job->batch) {
    result_t *r = &job->results[0];
    status = r->status;
    if (status == 202) {
      accepted++;
      fo_id_format(r->id, idtxt);
      fo_sb_printf(&body, "{\"id\":\"%s\"}", idtxt);
    } else {
      fo_sb_puts(&body, "{\"error\":");
      fo_json_put_str(&body, r->error, strlen(r->error));
      fo_sb_puts(&body, "}");
      extra = status_extra(api, status);
    }
  } else {
    status = 202;
    fo_sb_puts(&body, "{\"results\":[");
    for (int i = 0; i < job->n; i++) {
      result_t *r = &job->results[i];
      if (i > 0)
        fo_sb_putc(&body, ',');
      if (r->status == 202) {
        accepted++;
        fo_id_format(r->id, idtxt);
        fo_sb_printf(&body, "{\"id\":\"%s\",\"status\":202}", idtxt);
      } else {
        status = 207;
        fo_sb_printf(&body, "{\"status\":%d,\"error\":", r->status);
        fo_json_put_str(&body, r->error, strlen(r->error));
        fo_sb_putc(&body, '}');
        if (status_extra(api, r->status) != NULL)
          extra = status_extra(api, r->status);
      }
    }
    fo_sb_puts(&body, "]}");
  }
  if (body.oom) {
    status = 503;
    fo_sb_reset(&body);
    fo_sb_puts(&body, "{\"error\":\"out of memory\"}");
  }
  if (job->idem != NULL) {
    /* Cache only a reply that produced something (202, or a 207 with at
     * least one item in Kafka), since its retry must not produce it twice.
     * A reply that produced nothing is cheap to recompute, and caching it
     * would let tiny requests pin large bodies (M3). */
    bool cache = accepted > 0 && (status == 202 || status == 207);
    fo__idem_finish(ing->idem, job->idem, fo_now_ms(), status, extra, body.data, body.len, cache);
    job->idem = NULL;
  }
  fo__reply_send(job->reply, status, "application/json", extra, body.data, body.len);
  job->reply = NULL;
  fo_sb_free(&body);
}

static void on_item_done(fo_prod_req_t *preq, rd_kafka_resp_err_t err, int32_t partition,
                         int64_t offset) {
  (void)partition;
  (void)offset;
  item_t *item = (item_t *)preq;
  job_t *job = item->job;
  job->outstanding--;
  result_t *r = &job->results[item->index];
  if (job->reply != NULL && r->status == 0) {
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      r->status = 202;
    } else if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
      r->status = 413;
      r->error = "message too large for Kafka";
    } else {
      r->status = 503;
      r->error = err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT ? "kafka did not acknowledge in time"
                                                         : "kafka unavailable";
    }
    if (--job->unknown == 0)
      job_answer(job);
  }
  job_maybe_free(job);
}

static void on_deadline(uv_timer_t *t) {
  fo_api_t *api = t->data;
  uint64_t now = uv_now(api->ing->loop);
  job_t *job;
  while ((job = TAILQ_FIRST(&api->jobs)) != NULL && job->deadline_ms <= now) {
    job_answer(job); /* unlists it */
    job_maybe_free(job);
  }
}

static job_t *job_new(fo_api_t *api, fo_reply_t *reply, int n, bool batch) {
  size_t size = sizeof(job_t) + (size_t)n * (sizeof(result_t) + sizeof(item_t));
  job_t *job = calloc(1, size);
  if (job == NULL)
    return NULL;
  job->api = api;
  job->reply = reply;
  job->n = n;
  job->batch = batch;
  job->items = (item_t *)(job + 1);
  job->results = (result_t *)(job->items + n);
  for (int i = 0; i < n; i++) {
    job->items[i].preq.done = on_item_done;
    job->items[i].job = job;
    job->items[i].index = i;
  }
  job->unknown = n;
  api->pending++;
  return job;
}

/* ---- building and producing one message -------------------------------------------- */

/* Produces one valid message as item i of job. On a local error the item's
 * result is set; the job then does not wait for it. */
static void produce_item(fo_ingest_t *ing, job_t *job, int i, const fo_msg_t *msg) {
  result_t *r = &job->results[i];
  fo_sb_t env;
  fo_sb_init(&env);
  int rc = fo__msg_envelope(&ing->idgen, msg, &env, r->id);
  if (rc != 0) {
    fo_sb_free(&env);
    r->status = rc == -ENOMEM ? 503 : 400;
    r->error = rc == -ENOMEM ? "out of memory" : "cannot encode message";
    return;
  }
  rd_kafka_resp_err_t err = fo__producer_send(
      ing->producer, msg->kind == FO_ENV_BROADCAST ? FO_TOPIC_ROOMS : FO_TOPIC_USERS, msg->target,
      msg->target_len, env.data, env.len, NULL, &job->items[i].preq);
  fo_sb_free(&env);
  switch (err) {
  case RD_KAFKA_RESP_ERR_NO_ERROR:
    job->outstanding++;
    return;
  case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    r->status = 429;
    r->error = "producer queue full";
    return;
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    r->status = 413;
    r->error = "message too large for Kafka";
    return;
  default:
    r->status = 503;
    r->error = "kafka unavailable";
    return;
  }
}

/* ---- handlers ------------------------------------------------------------------------ */

static bool json_content_type(const char *ct) {
  if (ct == NULL)
    return true; /* absent: take the body as JSON */
  while (*ct == ' ' || *ct == '\t')
    ct++;
  size_t len = strcspn(ct, "; \t");
  if (len == 16 && strncasecmp(ct, "application/json", 16) == 0)
    return true;
  /* curl -d sends this when no type is given: the body is still read as JSON
   * (and refused with 400 if it is not). */
  if (len == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0)
    return true;
  /* application/<something>+json */
  return len > 17 && strncasecmp(ct, "application/", 12) == 0 &&
         strncasecmp(ct + len - 5, "+json", 5) == 0;
}

/* Parses the body of a POST /v1 request; on failure answers and returns NULL. */
static json_t *parse_body(fo_reply_t *reply, fo_http_request_t *req) {
  if (!json_content_type(fo_http_header(req, "content-type"))) {
    fo__reply_error(reply, 415, "content type must be application/json", NULL);
    return NULL;
  }
  if (req->body.len == 0) {
    fo__reply_error(reply, 400, "empty body", NULL);
    return NULL;
  }
  json_error_t jerr;
  json_t *root =
      json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (root == NULL) {
    char msg[256];
    snprintf(msg, sizeof(msg), "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
             jerr.column);
    fo__reply_error(reply, 400, msg, NULL);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    fo__reply_error(reply, 400, "body must be a JSON object", NULL);
    return NULL;
  }
  return root;
}

static void handle_produce(fo_ingest_t *ing, fo_reply_t *reply, fo_http_request_t *req, int route,
                           int key_index) {
  fo_api_t *api = ing->api;
  const fo_ingest_cfg_t *cfg = ing->cfg;
  if (ing->stopping) {
    fo__reply_error(reply, 503, "shutting down", api->retry_after);
    return;
  }
  json_t *root = parse_body(reply, req);
  if (root == NULL)
    return;
  json_t *messages = NULL;
  fo_msg_t single;
  int n = 1;
  if (route == R_BATCH) {
    messages = json_object_get(root, "messages");
    if (messages == NULL || !json_is_array(messages)) {
      json_decref(root);
      fo__reply_error(reply, 400,
                      messages == NULL ? "missing messages" : "messages must be an array", NULL);
      return;
    }
    n = (int)json_array_size(messages);
    if (n == 0 || n > cfg->batch_max_items) {
      json_decref(root);
      fo__reply_error(reply, 400,
                      n == 0 ? "messages must not be empty" : "too many messages in the batch",
                      NULL);
      return;
    }
  } else {
    /* Fail fast on a malformed single message, before any idempotency state. */
    const char *err =
        fo__msg_check(root, route == R_BROADCAST ? FO_ENV_BROADCAST : FO_ENV_SEND, &single);
    if (err != NULL) {
      json_decref(root);
      fo__reply_error(reply, 400, err, NULL);
      return;
    }
  }

  fo_idem_entry_t *idem = NULL;
  const char *ikey = fo_http_header(req, "idempotency-key");
  if (ikey != NULL && ing->idem != NULL) {
    size_t iklen = strlen(ikey);
    if (iklen == 0 || iklen > MAX_IDEM_KEY) {
      json_decref(root);
      fo__reply_error(reply, 400, "Idempotency-Key must be 1..255 characters", NULL);
      return;
    }
    char scoped[MAX_IDEM_KEY + 64];
    int sl = snprintf(scoped, sizeof(scoped), "%d|%s|%s", key_index, route_names[route], ikey);
    uint32_t fp = fo_hash32(req->body.data, req->body.len);
    switch (fo__idem_begin(ing->idem, fo_now_ms(), scoped, (size_t)sl, fp, reply, &idem)) {
    case FO_IDEM_DONE:
    case FO_IDEM_WAIT:
      json_decref(root);
      return;
    case FO_IDEM_MISMATCH:
      json_decref(root);
      fo__reply_error(reply, 422, "Idempotency-Key reused with a different request", NULL);
      return;
    case FO_IDEM_FULL:
      idem = NULL;
      break;
    case FO_IDEM_NEW:
      break;
    }
  }

  job_t *job = job_new(api, reply, n, route == R_BATCH);
  if (job == NULL) {
    json_decref(root);
    if (idem != NULL)
      fo__idem_finish(ing->idem, idem, fo_now_ms(), 503, NULL, NULL, 0, false);
    fo__reply_error(reply, 503, "out of memory", api->retry_after);
    return;
  }
  job->idem = idem;
  if (route == R_BATCH) {
    for (int i = 0; i < n; i++) {
      fo_msg_t msg;
      const char *err = fo__msg_check(json_array_get(messages, (size_t)i), 0, &msg);
      if (err != NULL) {
        job->results[i].status = 400;
        job->results[i].error = err;
      } else {
        produce_item(ing, job, i, &msg);
      }
    }
  } else {
    produce_item(ing, job, 0, &single);
  }
  json_decref(root);
  job->unknown = job->outstanding;
  if (job->outstanding == 0) {
    job_answer(job);
    job_maybe_free(job);
    return;
  }
  /* The sweep runs every `period` ms: aim that much early so that the answer
   * is out by the configured deadline. */
  job->deadline_ms = uv_now(ing->loop) + (uint64_t)cfg->produce_timeout_ms - api->period;
  job->listed = true;
  TAILQ_INSERT_TAIL(&api->jobs, job, fifo);
}

static void handle_metrics(fo_ingest_t *ing, fo_reply_t *reply) {
  fo_sb_t out;
  fo_sb_init(&out);
  if (fo_metrics_render(ing->metrics, &out) != 0) {
    fo_sb_free(&out);
    fo__reply_error(reply, 503, "out of memory", NULL);
    return;
  }
  fo__reply_send(reply, 200, "text/plain; version=0.0.4", NULL, out.data, out.len);
  fo_sb_free(&out);
}

static void handle_readyz(fo_ingest_t *ing, fo_reply_t *reply) {
  bool kafka = fo__producer_ready(ing->producer);
  bool redis = ing->presence != NULL && fo__presence_connected(ing->presence);
  int status = kafka && !ing->stopping ? 200 : 503;
  /* redis: every node up; redis_down names those that are not. */
  fo_sb_t body;
  fo_sb_init(&body);
  fo_sb_printf(&body, "{%s,\"kafka\":%s,\"redis\":%s,\"redis_down\":[",
               status == 200   ? "\"status\":\"ready\""
               : ing->stopping ? "\"error\":\"shutting down\""
                               : "\"error\":\"kafka unavailable\"",
               kafka ? "true" : "false", redis ? "true" : "false");
  if (ing->presence != NULL)
    fo__presence_down_nodes(ing->presence, &body);
  fo_sb_puts(&body, "]}");
  if (body.oom)
    fo__reply_error(reply, 503, "out of memory", NULL);
  else
    fo__reply_send(reply, status, "application/json", status == 503 ? ing->api->retry_after : NULL,
                   body.data, body.len);
  fo_sb_free(&body);
}

static void handle_presence(fo_ingest_t *ing, fo_reply_t *reply, const char *raw) {
  char user[FO_ENV_MAX_TARGET + 1];
  /* A path segment: strict, and '+' is a plus sign (a valid name char). */
  ssize_t len = fo_http_pct_decode(raw, strlen(raw), FO_PCT_PATH, user, FO_ENV_MAX_TARGET);
  if (len < 0 || fo__msg_target_invalid(user, (size_t)len) != NULL) {
    fo__reply_error(reply, 400, "invalid user", NULL);
    return;
  }
  if (ing->presence == NULL) {
    fo__reply_error(reply, 503, "presence is not configured (no --redis)", NULL);
    return;
  }
  fo__presence_get(ing->presence, user, (size_t)len, reply);
}

static int route_of(const char *path) {
  if (strcmp(path, "/v1/send") == 0)
    return R_SEND;
  if (strcmp(path, "/v1/broadcast") == 0)
    return R_BROADCAST;
  if (strcmp(path, "/v1/batch") == 0)
    return R_BATCH;
  if (strncmp(path, "/v1/presence/", 13) == 0 && path[13] != '\0' && strchr(path + 13, '/') == NULL)
    return R_PRESENCE;
  if (strcmp(path, "/healthz") == 0)
    return R_HEALTHZ;
  if (strcmp(path, "/readyz") == 0)
    return R_READYZ;
  if (strcmp(path, "/metrics") == 0)
    return R_METRICS;
  return R_OTHER;
}

/* The Allow header when the method does not fit the route, else NULL. */
static const char *disallowed(int route, const char *method) {
  bool post = route == R_SEND || route == R_BROADCAST || route == R_BATCH;
  if (post && strcmp(method, "POST") != 0)
    return "Allow: POST\r\n";
  if (!post && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
    return "Allow: GET, HEAD\r\n";
  return NULL;
}

/* The API key of a /v1 request: its index, or -1 with *why set (401).
 * `slot` is the connection's, for auth.c's memo of its last key. */
static int authenticate(fo_ingest_t *ing, void **slot, const fo_http_request_t *req,
                        const char **why) {
  const char *token = fo_http_bearer(req);
  if (token == NULL) {
    *why = "missing API key (Authorization: Bearer <key>)";
    return -1;
  }
  size_t token_len = strlen(token);
  int key_index = fo__auth_check_memo(ing->auth, slot, token, token_len);
  if (key_index < 0)
    *why = "invalid API key";
  return key_index;
}

/* A /v1 request with a body and no valid API key is answered 401 at once,
 * so that unauthenticated clients cannot make us buffer bodies. */
static bool api_refuse_body(void *ud, void **slot, const fo_http_request_t *req,
                            fo_server_refusal_t *refusal) {
  fo_ingest_t *ing = ud;
  fo_api_t *api = ing->api;
  int route = route_of(req->path);
  if (!req->body_follows || route == R_OTHER || strncmp(req->path, "/v1/", 4) != 0 ||
      disallowed(route, req->method) != NULL)
    return false; /* answered as usual once the request is complete */
  const char *why = NULL;
  if (authenticate(ing, slot, req, &why) >= 0)
    return false;
  if (api->c_route[route] != NULL)
    (*api->c_route[route])++;
  refusal->status = 401;
  refusal->msg = why;
  refusal->extra_headers = "WWW-Authenticate: Bearer\r\n";
  return true;
}

static void api_handle(void *ud, fo_reply_t *reply, fo_http_request_t *req) {
  fo_ingest_t *ing = ud;
  fo_api_t *api = ing->api;
  const char *path = req->path;
  int route = route_of(path);
  if (api->c_route[route] != NULL)
    (*api->c_route[route])++;
  if (route == R_OTHER) {
    fo__reply_error(reply, 404, "not found", NULL);
    return;
  }
  const char *allow = disallowed(route, req->method);
  if (allow != NULL) {
    fo__reply_error(reply, 405, "method not allowed", allow);
    return;
  }
  int key_index = -1;
  if (strncmp(path, "/v1/", 4) == 0) {
    const char *why = NULL;
    key_index = authenticate(ing, fo__reply_slot(reply), req, &why);
    if (key_index < 0) {
      fo__reply_error(reply, 401, why, "WWW-Authenticate: Bearer\r\n");
      return;
    }
  }
  switch (route) {
  case R_SEND:
  case R_BROADCAST:
  case R_BATCH:
    handle_produce(ing, reply, req, route, key_index);
    return;
  case R_PRESENCE:
    handle_presence(ing, reply, path + 13);
    return;
  case R_HEALTHZ:
    if (fo__producer_fatal(ing->producer))
      fo__reply_error(reply, 503, "kafka producer failed fatally: restart the process", NULL);
    else
      fo__reply_send(reply, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
    return;
  case R_READYZ:
    handle_readyz(ing, reply);
    return;
  case R_METRICS:
    handle_metrics(ing, reply);
    return;
  default:
    fo__reply_error(reply, 404, "not found", NULL);
    return;
  }
}

const fo_server_handler_t fo__api_handler = {
    .refuse_body = api_refuse_body,
    .handle = api_handle,
    .slot_free = fo__auth_memo_free,
};

/* ---- lifetime --------------------------------------------------------------------------- */

int fo__api_new(fo_ingest_t *ing, fo_api_t **out) {
  fo_api_t *api = calloc(1, sizeof(*api));
  if (api == NULL)
    return -ENOMEM;
  api->ing = ing;
  TAILQ_INIT(&api->jobs);
  snprintf(api->retry_after, sizeof(api->retry_after), "Retry-After: %" PRId64 "\r\n",
           ing->cfg->retry_after_s);
  for (int r = 0; r <= R_OTHER; r++) {
    char name[96];
    snprintf(name, sizeof(name), "fanout_ingest_http_requests_total{route=\"%s\"}", route_names[r]);
    api->c_route[r] = fo_metrics_counter(ing->metrics, name, "HTTP requests by route");
  }
  api->c_timeouts = fo_metrics_counter(ing->metrics, "fanout_ingest_produce_timeouts_total",
                                       "Messages answered 503 at the produce deadline");
  api->g_jobs = fo_metrics_gauge(ing->metrics, "fanout_ingest_requests_waiting",
                                 "HTTP requests waiting for Kafka acknowledgements");
  api->g_idem_keys = fo_metrics_gauge(ing->metrics, "fanout_ingest_idempotency_keys",
                                      "Idempotency-Keys remembered");
  api->g_idem_bytes = fo_metrics_gauge(ing->metrics, "fanout_ingest_idempotency_bytes",
                                       "Bytes held by the Idempotency-Key cache");
  if (api->c_timeouts == NULL || api->g_jobs == NULL || api->g_idem_keys == NULL ||
      api->g_idem_bytes == NULL || fo_metrics_on_collect(ing->metrics, on_collect, api) != 0) {
    free(api);
    return -ENOMEM;
  }
  uv_timer_init(ing->loop, &api->timer);
  api->timer.data = api;
  uint64_t period = (uint64_t)ing->cfg->produce_timeout_ms / 20;
  period = period < 10 ? 10 : period > 100 ? 100 : period;
  api->period = period;
  uv_timer_start(&api->timer, on_deadline, period, period);
  uv_unref((uv_handle_t *)&api->timer);
  *out = api;
  return 0;
}

static void on_timer_closed(uv_handle_t *h) {
  (void)h;
}

void fo__api_close(fo_api_t *api) {
  if (api == NULL || uv_is_closing((uv_handle_t *)&api->timer))
    return;
  uv_close((uv_handle_t *)&api->timer, on_timer_closed);
}

void fo__api_free(fo_api_t *api) {
  if (api == NULL)
    return;
  /* Jobs still listed are answered (their connections are gone by now). */
  job_t *job;
  while ((job = TAILQ_FIRST(&api->jobs)) != NULL) {
    job_answer(job);
    job_maybe_free(job);
  }
  free(api);
}

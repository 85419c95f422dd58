#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

static void *field_ptr(void *cfg, const fo_cfg_field_t *f) {
  return (char *)cfg + f->offset;
}

/* "jwt-secret" -> "FANOUT_JWT_SECRET" */
static void env_name(const char *name, char *out, size_t outlen) {
  size_t o = (size_t)snprintf(out, outlen, "FANOUT_");
  for (const char *p = name; *p != '\0' && o + 1 < outlen; p++)
    out[o++] = *p == '-' || *p == '.' ? '_' : (char)toupper((unsigned char)*p);
  out[o] = '\0';
}

int fo_addr_parse(const char *s, fo_addr_t *out, char *err, size_t errlen) {
  const char *colon;
  const char *host = s;
  size_t hostlen;
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (end == NULL || end[1] != ':') {
      snprintf(err, errlen, "expected [IPV6]:PORT");
      return -EINVAL;
    }
    host = s + 1;
    hostlen = (size_t)(end - host);
    colon = end + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL) {
      snprintf(err, errlen, "expected a single HOST:PORT");
      return -EINVAL;
    }
    hostlen = (size_t)(colon - s);
  }
  if (hostlen == 0) {
    snprintf(err, errlen, "empty host");
    return -EINVAL;
  }
  for (size_t i = 0; i < hostlen; i++) {
    unsigned char c = (unsigned char)host[i];
    bool ok =
        isalnum(c) || c == '-' || c == '.' || c == '_' || c == ':' || (s[0] == '[' && c == '%');
    if (!ok) {
      snprintf(err, errlen, "expected a single HOST:PORT%s",
               c == ',' ? " (a list is not allowed here)" : "");
      return -EINVAL;
    }
  }
  char *endp;
  errno = 0;
  long port = strtol(colon + 1, &endp, 10);
  if (errno != 0 || endp == colon + 1 || *endp != '\0' || port < 0 || port > 65535) {
    snprintf(err, errlen, "bad port");
    return -EINVAL;
  }
  char *h = strndup(host, hostlen);
  if (h == NULL)
    return -ENOMEM;
  out->host = h;
  out->port = (int)port;
  return 0;
}

static int parse_bool(const char *v, bool *out) {
  static const char *const yes[] = {"1", "true", "yes", "on"};
  static const char *const no[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return -EINVAL;
}

/* Applies one textual value to a field; on error fills err with the reason. */
static int set_value(void *cfg, const fo_cfg_field_t *f, const char *v, char *err, size_t errlen) {
  void *dst = field_ptr(cfg, f);
  switch (f->type) {
  case FO_CFG_INT: {
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0') {
      snprintf(err, errlen, "not an integer");
      return -EINVAL;
    }
    if (n < f->min || n > f->max) {
      snprintf(err, errlen, "must be in %" PRId64 "..%" PRId64, f->min, f->max);
      return -EINVAL;
    }
    *(int64_t *)dst = n;
    return 0;
  }
  case FO_CFG_BOOL:
    if (parse_bool(v, dst) != 0) {
      snprintf(err, errlen, "must be true or false");
      return -EINVAL;
    }
    return 0;
  case FO_CFG_STR: {
    size_t len = strlen(v);
    if ((int64_t)len < f->min || (f->max > 0 && (int64_t)len > f->max)) {
      snprintf(err, errlen, "length must be in %" PRId64 "..%" PRId64, f->min, f->max);
      return -EINVAL;
    }
    char *copy = strdup(v);
    if (copy == NULL)
      return -ENOMEM;
    free(*(char **)dst);
    *(char **)dst = copy;
    return 0;
  }
  case FO_CFG_ADDR: {
    fo_addr_t a = {NULL, 0};
    int rc = fo_addr_parse(v, &a, err, errlen);
    if (rc != 0)
      return rc;
    if (a.port < f->min || a.port > f->max) {
      snprintf(err, errlen, "port must be in %" PRId64 "..%" PRId64, f->min, f->max);
      free(a.host);
      return -EINVAL;
    }
    fo_addr_t *d = dst;
    free(d->host);
    *d = a;
    return 0;
  }
  case FO_CFG_ADDRS: {
    fo_addrs_t a = {NULL, 0};
    int rc = fo_addrs_parse(v, (int)f->min, (int)f->max, &a, err, errlen);
    if (rc != 0)
      return rc;
    fo_addrs_free(dst);
    *(fo_addrs_t *)dst = a;
    return 0;
  }
  case FO_CFG_ALIAS: /* resolved to its field before values are applied */
    break;
  }
  return -EINVAL;
}

void fo_addrs_free(fo_addrs_t *a) {
  for (int i = 0; i < a->n; i++)
    free(a->v[i].host);
  free(a->v);
  a->v = NULL;
  a->n = 0;
}

int fo_addrs_parse(const char *s, int port_min, int port_max, fo_addrs_t *out, char *err,
                   size_t errlen) {
  char **items = NULL;
  int n = fo_cfg_list_split(s, &items);
  if (n < 0)
    return -ENOMEM;
  if (n == 0 || n > FO_CFG_ADDRS_MAX) {
    snprintf(err, errlen, "expected 1 to %d HOST:PORT separated by commas", FO_CFG_ADDRS_MAX);
    fo_cfg_list_free(items);
    return -EINVAL;
  }
  fo_addrs_t a = {calloc((size_t)n, sizeof(fo_addr_t)), 0};
  int rc = a.v == NULL ? -ENOMEM : 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    char one[128];
    rc = fo_addr_parse(items[i], &a.v[i], one, sizeof(one));
    if (rc != 0) {
      snprintf(err, errlen, "item %d (%s): %s", i + 1, items[i], one);
      break;
    }
    a.n++;
    if (a.v[i].port < port_min || a.v[i].port > port_max) {
      snprintf(err, errlen, "item %d (%s): port must be in %d..%d", i + 1, items[i], port_min,
               port_max);
      rc = -EINVAL;
    }
    /* The same node twice would count as two shards and split its keys'
     * owners between processes configured with different spellings. */
    for (int j = 0; rc == 0 && j < i; j++)
      if (a.v[j].port == a.v[i].port && strcmp(a.v[j].host, a.v[i].host) == 0) {
        snprintf(err, errlen, "item %d (%s) repeats item %d", i + 1, items[i], j + 1);
        rc = -EINVAL;
      }
  }
  fo_cfg_list_free(items);
  if (rc != 0) {
    fo_addrs_free(&a);
    return rc;
  }
  *out = a;
  return 0;
}

static const fo_cfg_field_t *find_field(const fo_cfg_field_t *fields, size_t n, const char *name,
                                        size_t len) {
  for (size_t i = 0; i < n; i++) {
    if (strlen(fields[i].name) == len && strncmp(fields[i].name, name, len) == 0)
      return &fields[i];
  }
  return NULL;
}

/* The field an alias stands for (NULL when the table is wrong). */
static const fo_cfg_field_t *alias_target(const fo_cfg_field_t *fields, size_t n,
                                          const fo_cfg_field_t *alias) {
  const fo_cfg_field_t *f = find_field(fields, n, alias->def, strlen(alias->def));
  return f != NULL && f->type != FO_CFG_ALIAS ? f : NULL;
}

static void warn_alias(const char *used, const char *instead) {
  FO_LOG_WARN("config", "deprecated option name: use the new one", "used=%s instead=%s", used,
              instead);
}

/* Fields whose values are not echoed in errors: credentials, and the Kafka
 * option lists (they may carry SASL/SSL passwords). */
static bool secret_field(const char *name) {
  static const char *const parts[] = {"secret", "key", "password", "token", "kafka-opt"};
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    if (strstr(name, parts[i]) != NULL)
      return true;
  }
  return false;
}

static int apply(void *cfg, const fo_cfg_field_t *f, const char *v, const char *source, char *err,
                 size_t errlen) {
  char why[160];
  why[0] = '\0';
  int rc = set_value(cfg, f, v, why, sizeof(why));
  if (rc != 0) {
    bool secret = secret_field(f->name);
    snprintf(err, errlen, "%s=%s (%s): %s", f->name, secret ? "<hidden>" : v, source, why);
  }
  return rc;
}

int fo_cfg_load(const fo_cfg_field_t *fields, size_t nfields, void *cfg, int argc, char **argv,
                char *err, size_t errlen) {
  int result = FO_CFG_OK;
  for (size_t i = 0; i < nfields; i++) {
    if (fields[i].type != FO_CFG_ALIAS && fields[i].def != NULL) {
      int rc = apply(cfg, &fields[i], fields[i].def, "default", err, errlen);
      if (rc != 0)
        return rc;
    }
  }
  /* Old names first, so that the current name wins when both are set. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < nfields; i++) {
      const fo_cfg_field_t *f = &fields[i];
      if ((f->type == FO_CFG_ALIAS) != (pass == 0))
        continue;
      char ename[96];
      env_name(f->name, ename, sizeof(ename));
      const char *v = getenv(ename);
      if (v == NULL)
        continue;
      if (f->type == FO_CFG_ALIAS) {
        f = alias_target(fields, nfields, f);
        if (f == NULL)
          continue;
        char tname[96];
        env_name(f->name, tname, sizeof(tname));
        warn_alias(ename, tname);
      }
      char source[128];
      snprintf(source, sizeof(source), "env %s", ename);
      int rc = apply(cfg, f, v, source, err, errlen);
      if (rc != 0)
        return rc;
    }
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
      return FO_CFG_HELP;
    if (strcmp(a, "--check-config") == 0) {
      result = FO_CFG_CHECK_ONLY;
      continue;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errlen, "unexpected argument '%s'", a);
      return -EINVAL;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
    const fo_cfg_field_t *f = find_field(fields, nfields, name, nlen);
    const char *used = f != NULL ? f->name : NULL; /* the spelling given */
    if (f != NULL && f->type == FO_CFG_ALIAS)
      f = alias_target(fields, nfields, f);
    if (f == NULL) {
      snprintf(err, errlen, "unknown option '--%.*s'", (int)nlen, name);
      return -EINVAL;
    }
    if (used != f->name) {
      char u[128], t[128];
      snprintf(u, sizeof(u), "--%s", used);
      snprintf(t, sizeof(t), "--%s", f->name);
      warn_alias(u, t);
    }
    const char *v;
    if (eq != NULL) {
      v = eq + 1;
    } else if (f->type == FO_CFG_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
      v = "true"; /* a bare boolean flag switches it on */
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      snprintf(err, errlen, "option '--%s' needs a value", used);
      return -EINVAL;
    }
    char source[96];
    snprintf(source, sizeof(source), "flag --%s", used);
    int rc = apply(cfg, f, v, source, err, errlen);
    if (rc != 0)
      return rc;
  }
  return result;
}

void fo_cfg_usage(const char *prog, const char *about, const fo_cfg_field_t *fields, size_t nfields,
                  void *fp) {
  FILE *f = fp;
  fprintf(f, "usage: %s [--option value | --option=value]...\n", prog);
  if (about != NULL)
    fprintf(f, "%s\n", about);
  fprintf(f,
          "\nEach option can also be set by the environment variable shown (the flag wins).\n\n");
  for (size_t i = 0; i < nfields; i++) {
    const fo_cfg_field_t *fd = &fields[i];
    char ename[96];
    env_name(fd->name, ename, sizeof(ename));
    if (fd->type == FO_CFG_ALIAS) {
      fprintf(f, "  --%s\n      deprecated name of --%s (env %s still works too)\n", fd->name,
              fd->def, ename);
      continue;
    }
    const char *kind = fd->type == FO_CFG_INT     ? "N"
                       : fd->type == FO_CFG_BOOL  ? "BOOL"
                       : fd->type == FO_CFG_ADDR  ? "HOST:PORT"
                       : fd->type == FO_CFG_ADDRS ? "HOST:PORT[,HOST:PORT...]"
                                                  : "TEXT";
    fprintf(f, "  --%s %s\n      %s\n      env %s, default: %s", fd->name, kind,
            fd->help != NULL ? fd->help : "", ename,
            fd->def == NULL      ? "(none)"
            : fd->def[0] == '\0' ? "\"\""
                                 : fd->def);
    if (fd->type == FO_CFG_INT)
      fprintf(f, ", range %" PRId64 "..%" PRId64, fd->min, fd->max);
    fprintf(f, "\n");
  }
  fprintf(f, "  --check-config\n      validate the configuration and exit\n");
  fprintf(f, "  --help\n      show this help and exit\n");
}

void fo_cfg_free(const fo_cfg_field_t *fields, size_t nfields, void *cfg) {
  for (size_t i = 0; i < nfields; i++) {
    void *dst = field_ptr(cfg, &fields[i]);
    if (fields[i].type == FO_CFG_STR) {
      free(*(char **)dst);
      *(char **)dst = NULL;
    } else if (fields[i].type == FO_CFG_ADDR) {
      free(((fo_addr_t *)dst)->host);
      ((fo_addr_t *)dst)->host = NULL;
    } else if (fields[i].type == FO_CFG_ADDRS) {
      fo_addrs_free(dst);
    }
  }
}

int fo_cfg_main(const char *prog, const char *about, const fo_cfg_field_t *fields, size_t nfields,
                void *cfg, int argc, char **argv,
                int (*finalize)(void *cfg, char *err, size_t errlen)) {
  char err[512];
  err[0] = '\0';
  int rc = fo_cfg_load(fields, nfields, cfg, argc, argv, err, sizeof(err));
  if (rc == FO_CFG_HELP) {
    fo_cfg_usage(prog, about, fields, nfields, stdout);
    fo_cfg_free(fields, nfields, cfg);
    exit(0);
  }
  if (rc < 0 || (finalize != NULL && finalize(cfg, err, sizeof(err)) != 0)) {
    fprintf(stderr, "%s: config: %s\n", prog, err[0] ? err : "invalid configuration");
    fo_cfg_free(fields, nfields, cfg);
    exit(2);
  }
  if (rc == FO_CFG_CHECK_ONLY)
    fprintf(stdout, "%s: configuration ok\n", prog);
  return rc;
}

int fo_cfg_list_split(const char *s, char ***out) {
  size_t cap = 1;
  for (const char *p = s; *p != '\0'; p++)
    cap += *p == ',';
  char **list = calloc(cap + 1, sizeof(char *));
  if (list == NULL)
    return -ENOMEM;
  int n = 0;
  const char *p = s;
  for (;;) {
    while (*p != '\0' && *p != ',' && isspace((unsigned char)*p))
      p++;
    /* The item ends at the first comma not preceded by a backslash. */
    const char *end = p;
    while (*end != '\0' && *end != ',')
      end += end[0] == '\\' && end[1] == ',' ? 2 : 1;
    size_t len = (size_t)(end - p);
    while (len > 0 && isspace((unsigned char)p[len - 1]))
      len--;
    if (len > 0) {
      char *item = malloc(len + 1);
      if (item == NULL) {
        fo_cfg_list_free(list);
        return -ENOMEM;
      }
      size_t o = 0;
      for (size_t i = 0; i < len; i++) {
        if (p[i] == '\\' && i + 1 < len && p[i + 1] == ',')
          i++;
        item[o++] = p[i];
      }
      item[o] = '\0';
      list[n++] = item;
    }
    if (*end == '\0')
      break;
    p = end + 1;
  }
  *out = list;
  return n;
}

void fo_cfg_list_free(char **list) {
  if (list == NULL)
    return;
  for (char **p = list; *p != NULL; p++)
    free(*p);
  free(list);
}

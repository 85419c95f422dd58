/* Table-driven configuration: defaults, then FANOUT_<NAME> environment
 * variables, then --flags (flag wins). Each program declares one struct and
 * one table of fo_cfg_field_t describing it; everything is validated before
 * the loop starts, and the struct is read-only afterwards. */
#ifndef FO_CONFIG_H
#define FO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  FO_CFG_INT,   /* int64_t, bounded by [min, max] */
  FO_CFG_BOOL,  /* bool: true/false/1/0/yes/no/on/off */
  FO_CFG_STR,   /* char * (owned by the struct, freed by fo_cfg_free) */
  FO_CFG_ADDR,  /* fo_addr_t: a single "HOST:PORT", port in [min, max] */
  FO_CFG_ADDRS, /* fo_addrs_t: "HOST:PORT[,HOST:PORT...]", at most FO_CFG_ADDRS_MAX, no
                    address twice, every port in [min, max] */
  FO_CFG_ALIAS, /* an old name kept working: `def` names the field it sets; using
                    it (flag or env) logs a deprecation warning. No offset. */
} fo_cfg_type_t;

typedef struct {
  char *host; /* owned */
  int port;
} fo_addr_t;

#define FO_CFG_ADDRS_MAX 64

/* A list of addresses in the order given (the order is meaningful: Redis
 * shards are chosen by index, schemas/redis-shards.md). */
typedef struct {
  fo_addr_t *v; /* owned, n of them */
  int n;
} fo_addrs_t;

typedef struct {
  const char *name; /* flag name without "--", e.g. "listen"; env is FANOUT_LISTEN */
  fo_cfg_type_t type;
  size_t offset;    /* offsetof(struct, field) */
  int64_t min, max; /* INT: value bounds; ADDR: port bounds; STR: length bounds */
  const char *def;  /* default as text, parsed like any other source; NULL = unset */
  const char *help;
} fo_cfg_field_t;

typedef enum { FO_CFG_OK = 0, FO_CFG_HELP = 1, FO_CFG_CHECK_ONLY = 2 } fo_cfg_result_t;

/* Fills cfg from defaults, environment and argv. Returns FO_CFG_OK,
 * FO_CFG_HELP (--help seen), FO_CFG_CHECK_ONLY (--check-config seen) or
 * -EINVAL with one line in err naming key, value and source. */
int fo_cfg_load(const fo_cfg_field_t *fields, size_t nfields, void *cfg, int argc, char **argv,
                char *err, size_t errlen);
/* Prints usage, every option with its env name and default, to f (a FILE *). */
void fo_cfg_usage(const char *prog, const char *about, const fo_cfg_field_t *fields, size_t nfields,
                  void *f);
/* Frees the STR/ADDR/ADDRS members of cfg. */
void fo_cfg_free(const fo_cfg_field_t *fields, size_t nfields, void *cfg);

/* The usual main() prologue: loads, prints usage and exits 0 on --help,
 * prints "prog: <err>" and exits 2 on a bad option. `finalize` (may be NULL)
 * checks cross-field rules and fills err; non-zero from it exits 2 too.
 * Returns FO_CFG_OK or FO_CFG_CHECK_ONLY. */
int fo_cfg_main(const char *prog, const char *about, const fo_cfg_field_t *fields, size_t nfields,
                void *cfg, int argc, char **argv,
                int (*finalize)(void *cfg, char *err, size_t errlen));

/* Parses one "HOST:PORT" (IPv6 as "[::1]:80"); the host is a name or a
 * numeric address (letters, digits, '-', '.', '_'; inside brackets hex
 * digits, ':', '.', and a "%zone"). Returns 0 or -EINVAL (a list such as
 * "a:1,b:2" is refused too). */
int fo_addr_parse(const char *s, fo_addr_t *out, char *err, size_t errlen);
/* Splits a comma-separated list in place-independent copies: returns the
 * number of items (empty items skipped, spaces around items trimmed) and a
 * NULL-terminated array the caller frees with fo_cfg_list_free, or -ENOMEM.
 * "\," stands for a comma inside an item (e.g. in a SASL password); any
 * other backslash is kept as is. */
int fo_cfg_list_split(const char *s, char ***out);
void fo_cfg_list_free(char **list);
/* Parses "HOST:PORT[,HOST:PORT...]" into out (replacing nothing: out is
 * written only on success). Returns 0 or -EINVAL/-ENOMEM with err set. */
int fo_addrs_parse(const char *s, int port_min, int port_max, fo_addrs_t *out, char *err,
                   size_t errlen);
void fo_addrs_free(fo_addrs_t *a);

#endif

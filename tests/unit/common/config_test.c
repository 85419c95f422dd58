#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

typedef struct {
  fo_addr_t listen;
  int64_t ping_ms;
  bool origin_check;
  char *secret;
  char *redis_password;
  char *kafka_opts;
} cfg_t;

static const fo_cfg_field_t fields[] = {
    {"listen", FO_CFG_ADDR, offsetof(cfg_t, listen), 0, 65535, "127.0.0.1:8080", "listen"},
    {"ping-interval-ms", FO_CFG_INT, offsetof(cfg_t, ping_ms), 100, 600000, "30000", "ping"},
    {"origin-check", FO_CFG_BOOL, offsetof(cfg_t, origin_check), 0, 0, "false", "origin"},
    {"jwt-secret", FO_CFG_STR, offsetof(cfg_t, secret), 1, 4096, NULL, "secret"},
    {"redis-password", FO_CFG_STR, offsetof(cfg_t, redis_password), 0, 8, "", "password"},
    {"kafka-opts", FO_CFG_STR, offsetof(cfg_t, kafka_opts), 0, 24, "", "librdkafka k=v"},
    {"kafka-options", FO_CFG_ALIAS, 0, 0, 0, "kafka-opts", NULL},
    {"ping-ms", FO_CFG_ALIAS, 0, 0, 0, "ping-interval-ms", NULL},
};
#define NF (sizeof(fields) / sizeof(fields[0]))

static int load(cfg_t *cfg, int argc, char **argv, char *err) {
  memset(cfg, 0, sizeof(*cfg));
  return fo_cfg_load(fields, NF, cfg, argc, argv, err, 256);
}

static int teardown_env(void **state) {
  (void)state;
  unsetenv("FANOUT_PING_INTERVAL_MS");
  unsetenv("FANOUT_LISTEN");
  unsetenv("FANOUT_PING_MS");
  unsetenv("FANOUT_KAFKA_OPTIONS");
  return 0;
}

static void config_defaults_apply(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  char *argv[] = {"prog"};
  assert_int_equal(load(&cfg, 1, argv, err), FO_CFG_OK);
  assert_string_equal(cfg.listen.host, "127.0.0.1");
  assert_int_equal(cfg.listen.port, 8080);
  assert_int_equal(cfg.ping_ms, 30000);
  assert_false(cfg.origin_check);
  assert_null(cfg.secret);
  fo_cfg_free(fields, NF, &cfg);
}

static void config_env_then_flag_wins(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  setenv("FANOUT_PING_INTERVAL_MS", "500", 1);
  setenv("FANOUT_LISTEN", "0.0.0.0:9000", 1);
  char *argv[] = {"prog", "--listen", "127.0.0.1:0", "--jwt-secret=s3cret", "--origin-check"};
  assert_int_equal(load(&cfg, 5, argv, err), FO_CFG_OK);
  assert_int_equal(cfg.ping_ms, 500);
  assert_int_equal(cfg.listen.port, 0);
  assert_string_equal(cfg.secret, "s3cret");
  assert_true(cfg.origin_check);
  fo_cfg_free(fields, NF, &cfg);
}

static void config_errors_name_key_value_and_source(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  char *a1[] = {"prog", "--ping-interval-ms", "12"};
  assert_int_equal(load(&cfg, 3, a1, err), -EINVAL);
  assert_non_null(strstr(err, "ping-interval-ms=12"));
  assert_non_null(strstr(err, "flag --ping-interval-ms"));
  assert_non_null(strstr(err, "100..600000"));
  fo_cfg_free(fields, NF, &cfg);

  setenv("FANOUT_PING_INTERVAL_MS", "abc", 1);
  char *a2[] = {"prog"};
  assert_int_equal(load(&cfg, 1, a2, err), -EINVAL);
  assert_non_null(strstr(err, "env FANOUT_PING_INTERVAL_MS"));
  assert_non_null(strstr(err, "not an integer"));
  fo_cfg_free(fields, NF, &cfg);
  unsetenv("FANOUT_PING_INTERVAL_MS");

  char *a3[] = {"prog", "--nope", "1"};
  assert_int_equal(load(&cfg, 3, a3, err), -EINVAL);
  assert_non_null(strstr(err, "unknown option '--nope'"));
  fo_cfg_free(fields, NF, &cfg);

  char *a4[] = {"prog", "--listen", "localhost"};
  assert_int_equal(load(&cfg, 3, a4, err), -EINVAL);
  assert_non_null(strstr(err, "HOST:PORT"));
  fo_cfg_free(fields, NF, &cfg);

  char *a5[] = {"prog", "--listen", "h:70000"};
  assert_int_equal(load(&cfg, 3, a5, err), -EINVAL);
  fo_cfg_free(fields, NF, &cfg);

  char *a6[] = {"prog", "--jwt-secret"};
  assert_int_equal(load(&cfg, 2, a6, err), -EINVAL);
  assert_non_null(strstr(err, "needs a value"));
  fo_cfg_free(fields, NF, &cfg);

  char *a7[] = {"prog", "--jwt-secret", ""};
  assert_int_equal(load(&cfg, 3, a7, err), -EINVAL);
  assert_null(strstr(err, "=\"\"")); /* secrets are not echoed */
  assert_non_null(strstr(err, "<hidden>"));
  fo_cfg_free(fields, NF, &cfg);

  char *a8[] = {"prog", "--origin-check=maybe"};
  assert_int_equal(load(&cfg, 2, a8, err), -EINVAL);
  fo_cfg_free(fields, NF, &cfg);
}

/* Passwords and Kafka option lists (which may carry SASL passwords) are not
 * echoed when they are refused. */
static void config_errors_hide_passwords_and_kafka_options(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  char *a1[] = {"prog", "--redis-password=hunter2hunter2"};
  assert_int_equal(load(&cfg, 2, a1, err), -EINVAL);
  assert_non_null(strstr(err, "redis-password=<hidden>"));
  assert_null(strstr(err, "hunter2"));
  fo_cfg_free(fields, NF, &cfg);
  char *a2[] = {"prog", "--kafka-opts", "sasl.password=hunter2,acks=all"};
  assert_int_equal(load(&cfg, 3, a2, err), -EINVAL);
  assert_non_null(strstr(err, "kafka-opts=<hidden>"));
  assert_null(strstr(err, "hunter2"));
  fo_cfg_free(fields, NF, &cfg);
}

static void config_help_and_check(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  char *a1[] = {"prog", "--help"};
  assert_int_equal(load(&cfg, 2, a1, err), FO_CFG_HELP);
  fo_cfg_free(fields, NF, &cfg);
  char *a2[] = {"prog", "--check-config"};
  assert_int_equal(load(&cfg, 2, a2, err), FO_CFG_CHECK_ONLY);
  fo_cfg_free(fields, NF, &cfg);
  FILE *f = tmpfile();
  fo_cfg_usage("prog", "about", fields, NF, f);
  char buf[4096];
  rewind(f);
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  buf[n] = '\0';
  fclose(f);
  assert_non_null(strstr(buf, "--ping-interval-ms"));
  assert_non_null(strstr(buf, "FANOUT_PING_INTERVAL_MS"));
  assert_non_null(strstr(buf, "default: 30000"));
}

static void config_addr_ipv6_and_lists(void **state) {
  (void)state;
  fo_addr_t a;
  char err[64];
  assert_int_equal(fo_addr_parse("[::1]:6379", &a, err, sizeof(err)), 0);
  assert_string_equal(a.host, "::1");
  assert_int_equal(a.port, 6379);
  free(a.host);
  assert_int_equal(fo_addr_parse(":80", &a, err, sizeof(err)), -EINVAL);
  char **list;
  assert_int_equal(fo_cfg_list_split(" k1, ,k2,k3 ", &list), 3);
  assert_string_equal(list[0], "k1");
  assert_string_equal(list[2], "k3");
  assert_null(list[3]);
  fo_cfg_list_free(list);
  assert_int_equal(fo_cfg_list_split("", &list), 0);
  fo_cfg_list_free(list);
  /* "\\," keeps a comma inside an item (a SASL password with a comma) */
  assert_int_equal(fo_cfg_list_split("sasl.password=a\\,b\\,, acks=all ,x=c:\\d", &list), 3);
  assert_string_equal(list[0], "sasl.password=a,b,");
  assert_string_equal(list[1], "acks=all");
  assert_string_equal(list[2], "x=c:\\d");
  fo_cfg_list_free(list);
}

/* An old name (flag or env) still sets the field; the current name wins
 * over the old one in the environment; errors name the spelling used and
 * still hide secrets; --help lists the old name as deprecated. */
static void config_aliases(void **state) {
  (void)state;
  cfg_t cfg;
  char err[256];
  char *a1[] = {"prog", "--kafka-options", "acks=all", "--ping-ms=700"};
  assert_int_equal(load(&cfg, 4, a1, err), FO_CFG_OK);
  assert_string_equal(cfg.kafka_opts, "acks=all");
  assert_int_equal(cfg.ping_ms, 700);
  fo_cfg_free(fields, NF, &cfg);
  setenv("FANOUT_PING_MS", "800", 1);
  char *a2[] = {"prog"};
  assert_int_equal(load(&cfg, 1, a2, err), FO_CFG_OK);
  assert_int_equal(cfg.ping_ms, 800);
  fo_cfg_free(fields, NF, &cfg);
  setenv("FANOUT_PING_INTERVAL_MS", "900", 1);
  assert_int_equal(load(&cfg, 1, a2, err), FO_CFG_OK);
  assert_int_equal(cfg.ping_ms, 900); /* the current name wins */
  fo_cfg_free(fields, NF, &cfg);
  char *a3[] = {"prog", "--ping-ms", "5"};
  assert_int_equal(load(&cfg, 3, a3, err), -EINVAL);
  assert_non_null(strstr(err, "flag --ping-ms"));
  fo_cfg_free(fields, NF, &cfg);
  char *a4[] = {"prog", "--kafka-options=sasl.password=hunter2,acks=all"};
  assert_int_equal(load(&cfg, 2, a4, err), -EINVAL);
  assert_non_null(strstr(err, "<hidden>"));
  assert_null(strstr(err, "hunter2"));
  fo_cfg_free(fields, NF, &cfg);
  char *a5[] = {"prog", "--ping-ms"};
  assert_int_equal(load(&cfg, 2, a5, err), -EINVAL);
  assert_non_null(strstr(err, "--ping-ms"));
  fo_cfg_free(fields, NF, &cfg);
  FILE *f = tmpfile();
  fo_cfg_usage("prog", "about", fields, NF, f);
  char buf[4096];
  rewind(f);
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  buf[n] = '\0';
  fclose(f);
  assert_non_null(strstr(buf, "--kafka-options\n      deprecated name of --kafka-opts"));
}

/* One HOST:PORT: a list, a missing port or junk is refused with a reason
 * that says so (delivery and ingest exit 2 with it). */
static void config_addr_is_one_host_port(void **state) {
  (void)state;
  fo_addr_t a = {NULL, 0};
  char err[128];
  assert_int_equal(fo_addr_parse("a,b:6379", &a, err, sizeof(err)), -EINVAL);
  assert_non_null(strstr(err, "single HOST:PORT"));
  assert_non_null(strstr(err, "list"));
  assert_int_equal(fo_addr_parse("a:1,b:2", &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addr_parse("redis", &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addr_parse("redis:", &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addr_parse("re dis:1", &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addr_parse("re/dis:1", &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addr_parse("[::1%lo]:1", &a, err, sizeof(err)), 0);
  free(a.host);
  assert_int_equal(fo_addr_parse("redis-1.svc_x.local:6379", &a, err, sizeof(err)), 0);
  assert_string_equal(a.host, "redis-1.svc_x.local");
  free(a.host);
  cfg_t cfg;
  char *argv[] = {"prog", "--listen", "a,b:6379"};
  assert_int_equal(load(&cfg, 3, argv, err), -EINVAL);
  assert_non_null(strstr(err, "listen=a,b:6379 (flag --listen)"));
  assert_null(strchr(err, '\n'));
  fo_cfg_free(fields, NF, &cfg);
}

/* A list of nodes (--redis): order kept, duplicates and bad items refused
 * with the item named. */
static void config_addrs_list(void **state) {
  (void)state;
  fo_addrs_t a = {NULL, 0};
  char err[256];
  assert_int_equal(fo_addrs_parse("r1:6379, r2:6380,[::1]:7000", 1, 65535, &a, err, sizeof(err)),
                   0);
  assert_int_equal(a.n, 3);
  assert_string_equal(a.v[0].host, "r1");
  assert_int_equal(a.v[1].port, 6380);
  assert_string_equal(a.v[2].host, "::1");
  fo_addrs_free(&a);
  assert_int_equal(fo_addrs_parse("r1:6379,r1:6379", 1, 65535, &a, err, sizeof(err)), -EINVAL);
  assert_non_null(strstr(err, "item 2 (r1:6379) repeats item 1"));
  assert_int_equal(fo_addrs_parse("r1:6379,r2", 1, 65535, &a, err, sizeof(err)), -EINVAL);
  assert_non_null(strstr(err, "item 2 (r2)"));
  assert_int_equal(fo_addrs_parse("r1:0", 1, 65535, &a, err, sizeof(err)), -EINVAL);
  assert_int_equal(fo_addrs_parse(",", 1, 65535, &a, err, sizeof(err)), -EINVAL);
  assert_null(a.v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(config_defaults_apply, teardown_env),
      cmocka_unit_test_teardown(config_env_then_flag_wins, teardown_env),
      cmocka_unit_test_teardown(config_errors_name_key_value_and_source, teardown_env),
      cmocka_unit_test(config_errors_hide_passwords_and_kafka_options),
      cmocka_unit_test(config_help_and_check),
      cmocka_unit_test(config_addr_ipv6_and_lists),
      cmocka_unit_test_teardown(config_aliases, teardown_env),
      cmocka_unit_test(config_addr_is_one_host_port),
      cmocka_unit_test(config_addrs_list),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

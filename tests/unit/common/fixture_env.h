/* Reads an address published by a ctest fixture (tests/lib/fixture.py):
 * $FANOUT_STATE_DIR/<name>.env holds KEY=VALUE lines. */
#ifndef FO_TEST_FIXTURE_ENV_H
#define FO_TEST_FIXTURE_ENV_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int fixture_get(const char *name, const char *key, char *out, size_t cap) {
  const char *dir = getenv("FANOUT_STATE_DIR");
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s.env", dir ? dir : "test-state", name);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  char line[512];
  int rc = -1;
  size_t klen = strlen(key);
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
      line[strcspn(line, "\r\n")] = '\0';
      size_t n = strlen(line + klen + 1);
      if (n >= cap)
        break;
      memcpy(out, line + klen + 1, n + 1);
      rc = 0;
      break;
    }
  }
  fclose(f);
  return rc;
}

#endif

/* API keys for /v1: "Authorization: Bearer <key>". The presented token and
 * every configured key are compared as SHA-256 digests with CRYPTO_memcmp,
 * looking at every key, so the time taken says nothing about the keys
 * (not even their lengths). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "ingest_int.h"

struct fo_auth {
  size_t n;
  unsigned char (*digests)[SHA256_DIGEST_LENGTH];
};

int fo__auth_new(const char *keys_csv, fo_auth_t **out) {
  fo_auth_t *auth = calloc(1, sizeof(*auth));
  if (auth == NULL)
    return -ENOMEM;
  char **keys = NULL;
  int n = 0;
  if (keys_csv != NULL && keys_csv[0] != '\0') {
    n = fo_cfg_list_split(keys_csv, &keys);
    if (n < 0) {
      free(auth);
      return -ENOMEM;
    }
  }
  if (n > 0) {
    auth->digests = calloc((size_t)n, sizeof(*auth->digests));
    if (auth->digests == NULL) {
      fo_cfg_list_free(keys);
      free(auth);
      return -ENOMEM;
    }
  }
  for (int i = 0; i < n; i++)
    SHA256((const unsigned char *)keys[i], strlen(keys[i]), auth->digests[i]);
  auth->n = (size_t)n;
  fo_cfg_list_free(keys);
  *out = auth;
  return 0;
}

void fo__auth_free(fo_auth_t *auth) {
  if (auth == NULL)
    return;
  if (auth->digests != NULL)
    OPENSSL_cleanse(auth->digests, auth->n * sizeof(*auth->digests));
  free(auth->digests);
  free(auth);
}

size_t fo__auth_count(const fo_auth_t *auth) {
  return auth->n;
}

int fo__auth_check(const fo_auth_t *auth, const char *token, size_t len) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)token, len, d);
  int found = -1;
  for (size_t i = 0; i < auth->n; i++) {
    int diff = CRYPTO_memcmp(d, auth->digests[i], sizeof(d));
    /* Branch-free select, so that a match costs what a miss costs. */
    int match = (diff == 0) & (found < 0);
    found = match ? (int)i : found;
  }
  return found;
}

/* The memo: the last token accepted on one connection and its key index. */
typedef struct {
  size_t len;
  int index;
  char token[];
} memo_t;

int fo__auth_check_memo(const fo_auth_t *auth, void **slot, const char *token, size_t len) {
  const memo_t *memo = slot != NULL ? *slot : NULL;
  if (memo != NULL && memo->len == len && CRYPTO_memcmp(memo->token, token, len) == 0)
    return memo->index;
  int index = fo__auth_check(auth, token, len);
  if (index < 0 || slot == NULL)
    return index;
  memo_t *copy = malloc(sizeof(*copy) + len);
  if (copy == NULL)
    return index; /* no memo: the next request hashes again */
  copy->len = len;
  copy->index = index;
  memcpy(copy->token, token, len);
  fo__auth_memo_free(*slot);
  *slot = copy;
  return index;
}

void fo__auth_memo_free(void *memo) {
  if (memo == NULL)
    return;
  memo_t *m = memo;
  OPENSSL_cleanse(m->token, m->len);
  free(m);
}

/* Local registry: user -> connections (interned user names; a connection
 * holds a pointer, not a copy). Connection -> rooms lives in rooms.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_int.h"

fo_user_t *fo__registry_user(fo_server_t *srv, const char *user, size_t len) {
  return (fo_user_t *)fo_map_get(&srv->users, user, len, fo_map_hash(user, len));
}

fo_conn_t *fo__user_conns(fo_user_t *user) {
  return user ? user->conns : NULL;
}

const char *fo__user_name(const fo_user_t *user, size_t *len) {
  *len = user->ent.len;
  return user->name;
}

int fo__registry_add(fo_conn_t *conn, const char *name, size_t len) {
  fo_server_t *srv = conn->srv;
  uint32_t h = fo_map_hash(name, len);
  fo_user_t *user = (fo_user_t *)fo_map_get(&srv->users, name, len, h);
  if (user == NULL) {
    user = malloc(sizeof(*user) + len + 1);
    if (user == NULL)
      return -ENOMEM;
    memcpy(user->name, name, len);
    user->name[len] = '\0';
    user->ent.hash = h;
    user->ent.len = (uint32_t)len;
    user->ent.key = user->name;
    user->conns = NULL;
    user->nconns = 0;
    user->pend = 0;
    if (fo_map_put(&srv->users, &user->ent) != 0) {
      free(user);
      return -ENOMEM;
    }
    (*srv->m.users)++;
  }
  conn->user = user;
  conn->user_next = user->conns;
  user->conns = conn;
  user->nconns++;
  return 0;
}

void fo__registry_remove(fo_conn_t *conn) {
  fo_user_t *user = conn->user;
  if (user == NULL)
    return;
  for (fo_conn_t **pp = &user->conns; *pp != NULL; pp = &(*pp)->user_next) {
    if (*pp == conn) {
      *pp = conn->user_next;
      break;
    }
  }
  conn->user_next = NULL;
  conn->user = NULL;
  if (--user->nconns == 0) {
    if (user->pend != 0)
      fo__rreg_user_gone(conn->srv, user);
    fo_map_del(&conn->srv->users, &user->ent);
    (*conn->srv->m.users)--;
    free(user);
  }
}

uint32_t fo__registry_each_user(fo_server_t *srv, uint32_t cursor, uint32_t max,
                                void (*cb)(fo_user_t *user, void *ud), void *ud) {
  uint32_t n = 0;
  fo_mapent_t *e;
  while (n < max && (e = fo_map_next(&srv->users, &cursor)) != NULL) {
    cb((fo_user_t *)e, ud);
    n++;
  }
  return cursor >= srv->users.cap ? 0 : cursor;
}

void fo__registry_free(fo_server_t *srv) {
  uint32_t cur = 0;
  fo_mapent_t *e;
  while ((e = fo_map_next(&srv->users, &cur)) != NULL)
    free(e);
  fo_map_free(&srv->users);
}

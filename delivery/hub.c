/* The local hub: who is connected here and to what.
 *  - users: user name -> its connections (interned names; a connection
 *    holds a pointer, not a copy);
 *  - rooms: room -> local members (an array, so a broadcast walks
 *    contiguous pointers), connection -> rooms (a small array allocated on
 *    the first join);
 *  - perms: the interned permission sets from the JWT `rooms` claim.
 * Events go up through srv->hub_ev (wired by server.c): the last connection
 * of a user gone, the first/last local member of a room (the Redis registry
 * subscribes and unsubscribes the room's channel). The hub calls no module
 * above it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "delivery_int.h"
#include "hub.h"

/* ---- users ---- */

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
    if (conn->srv->hub_ev.user_gone != NULL)
      conn->srv->hub_ev.user_gone(conn->srv, user);
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

/* ---- rooms ---- */

struct fo_room {
  fo_mapent_t ent;
  fo_conn_t **members; /* owned array; the connections are the server's */
  uint32_t n, cap;
  /* The highest stream offset a `once` broadcast gave the members (-1:
   * none yet): room mode redis drops the copies a partition's new owner
   * publishes after a rebalance. */
  int64_t last;
  char name[];
};

struct fo_conn_rooms {
  uint32_t n, cap;
  struct {
    fo_room_t *room;
    uint32_t idx; /* position of the conn in room->members */
  } e[];
};

typedef struct {
  uint32_t off, len;
  bool prefix; /* entry ended in '*': matches any room starting with it */
} fo_perm_item_t;

struct fo_perm {
  fo_mapent_t ent; /* key = entries joined with '\0' */
  uint32_t refs;
  uint32_t n;
  fo_perm_item_t items[];
};

/* ---- permissions ---- */

int fo__perm_set(fo_conn_t *conn, const void *rooms_json) {
  const json_t *rooms = rooms_json;
  fo_server_t *srv = conn->srv;
  fo_sb_t key;
  size_t i, n = 0;
  json_t *r;
  fo__perm_release(conn);
  if (rooms == NULL || json_array_size(rooms) == 0)
    return 0;
  fo_sb_init(&key);
  json_array_foreach(rooms, i, r) {
    fo_sb_append(&key, json_string_value(r), json_string_length(r));
    fo_sb_putc(&key, '\0');
    n++;
  }
  if (key.oom) {
    fo_sb_free(&key);
    return -ENOMEM;
  }
  uint32_t h = fo_map_hash(key.data, key.len);
  fo_perm_t *perm = (fo_perm_t *)fo_map_get(&srv->perms, key.data, key.len, h);
  if (perm == NULL) {
    perm = malloc(sizeof(*perm) + n * sizeof(fo_perm_item_t) + key.len);
    if (perm == NULL) {
      fo_sb_free(&key);
      return -ENOMEM;
    }
    char *data = (char *)&perm->items[n];
    memcpy(data, key.data, key.len);
    perm->ent.hash = h;
    perm->ent.len = (uint32_t)key.len;
    perm->ent.key = data;
    perm->refs = 0;
    perm->n = (uint32_t)n;
    uint32_t off = 0;
    for (uint32_t k = 0; k < n; k++) {
      uint32_t len = (uint32_t)strlen(data + off);
      perm->items[k].off = off;
      perm->items[k].prefix = len > 0 && data[off + len - 1] == '*';
      perm->items[k].len = perm->items[k].prefix ? len - 1 : len;
      off += len + 1;
    }
    if (fo_map_put(&srv->perms, &perm->ent) != 0) {
      free(perm);
      fo_sb_free(&key);
      return -ENOMEM;
    }
  }
  fo_sb_free(&key);
  perm->refs++;
  conn->perm = perm;
  return 0;
}

void fo__perm_release(fo_conn_t *conn) {
  fo_perm_t *perm = conn->perm;
  if (perm == NULL)
    return;
  conn->perm = NULL;
  if (--perm->refs == 0) {
    fo_map_del(&conn->srv->perms, &perm->ent);
    free(perm);
  }
}

bool fo__perm_allows(const fo_perm_t *perm, const char *room, size_t len) {
  if (perm == NULL)
    return false;
  for (uint32_t k = 0; k < perm->n; k++) {
    const fo_perm_item_t *it = &perm->items[k];
    const char *s = perm->ent.key + it->off;
    if (it->prefix) {
      if (len >= it->len && memcmp(room, s, it->len) == 0)
        return true;
    } else if (len == it->len && memcmp(room, s, len) == 0) {
      return true;
    }
  }
  return false;
}

/* ---- membership ---- */

static int conn_room_index(const fo_conn_t *conn, const fo_room_t *room) {
  struct fo_conn_rooms *cr = conn->rooms;
  if (cr == NULL)
    return -1;
  for (uint32_t i = 0; i < cr->n; i++)
    if (cr->e[i].room == room)
      return (int)i;
  return -1;
}

/* A join that failed after the first allocation of conn's room list must
 * not leave an empty list behind (security review L5). */
static int join_failed(fo_conn_t *conn, int rc) {
  if (conn->rooms != NULL && conn->rooms->n == 0) {
    free(conn->rooms);
    conn->rooms = NULL;
  }
  return rc;
}

int fo__room_join(fo_conn_t *conn, const char *name, size_t len) {
  fo_server_t *srv = conn->srv;
  if (!fo__perm_allows(conn->perm, name, len))
    return -EPERM;
  uint32_t h = fo_map_hash(name, len);
  fo_room_t *room = (fo_room_t *)fo_map_get(&srv->rooms, name, len, h);
  if (room != NULL && conn_room_index(conn, room) >= 0)
    return 0; /* already a member */
  struct fo_conn_rooms *cr = conn->rooms;
  if (cr != NULL && cr->n >= (uint32_t)srv->cfg->max_rooms_per_conn)
    return -E2BIG;
  if (cr == NULL || cr->n == cr->cap) {
    /* Room for one at first: most connections join one room, and 8 + 16
     * bytes is a 32-byte malloc chunk where room for two took 48. */
    uint32_t ncap = cr ? cr->cap * 2 : 1;
    struct fo_conn_rooms *ncr = realloc(cr, sizeof(*cr) + ncap * sizeof(cr->e[0]));
    if (ncr == NULL)
      return -ENOMEM;
    if (cr == NULL)
      ncr->n = 0;
    ncr->cap = ncap;
    conn->rooms = cr = ncr;
  }
  bool created = false;
  if (room == NULL) {
    room = calloc(1, sizeof(*room) + len + 1);
    if (room == NULL)
      return join_failed(conn, -ENOMEM);
    memcpy(room->name, name, len);
    room->last = -1;
    room->ent.hash = h;
    room->ent.len = (uint32_t)len;
    room->ent.key = room->name;
    if (fo_map_put(&srv->rooms, &room->ent) != 0) {
      free(room);
      return join_failed(conn, -ENOMEM);
    }
    created = true;
    (*srv->m.rooms)++;
  }
  if (room->n == room->cap) {
    /* Grows by half: a big room's array is per-connection memory (8 bytes
     * a member), and doubling left it up to half empty (realloc of an
     * mmapped array is an mremap, not a copy). */
    uint64_t grown = room->cap ? (uint64_t)room->cap + room->cap / 2 : 4;
    uint32_t ncap = grown > UINT32_MAX ? UINT32_MAX : (uint32_t)grown;
    if (ncap == room->cap)
      return join_failed(conn, -ENOMEM);
    fo_conn_t **nm = realloc(room->members, ncap * sizeof(*nm));
    if (nm == NULL) {
      if (created) {
        fo_map_del(&srv->rooms, &room->ent);
        (*srv->m.rooms)--;
        free(room);
      }
      return join_failed(conn, -ENOMEM);
    }
    room->members = nm;
    room->cap = ncap;
  }
  room->members[room->n] = conn;
  cr->e[cr->n].room = room;
  cr->e[cr->n].idx = room->n;
  cr->n++;
  room->n++;
  if (created && srv->hub_ev.room_sub != NULL)
    srv->hub_ev.room_sub(srv, room->name, len, true);
  return 0;
}

/* Removes entry i of conn's room list. */
static void leave_at(fo_conn_t *conn, uint32_t i) {
  fo_server_t *srv = conn->srv;
  struct fo_conn_rooms *cr = conn->rooms;
  fo_room_t *room = cr->e[i].room;
  uint32_t idx = cr->e[i].idx;
  /* swap-remove from the room's member array, fixing the moved member's index */
  uint32_t last = room->n - 1;
  if (idx != last) {
    fo_conn_t *moved = room->members[last];
    room->members[idx] = moved;
    int k = conn_room_index(moved, room);
    if (k >= 0)
      moved->rooms->e[k].idx = idx;
  }
  room->n--;
  cr->e[i] = cr->e[cr->n - 1];
  cr->n--;
  if (cr->n == 0) {
    free(cr);
    conn->rooms = NULL;
  }
  if (room->n == 0) {
    if (srv->hub_ev.room_sub != NULL)
      srv->hub_ev.room_sub(srv, room->name, room->ent.len, false);
    fo_map_del(&srv->rooms, &room->ent);
    (*srv->m.rooms)--;
    free(room->members);
    free(room);
  }
}

int fo__room_leave(fo_conn_t *conn, const char *name, size_t len) {
  fo_room_t *room = (fo_room_t *)fo_map_get(&conn->srv->rooms, name, len, fo_map_hash(name, len));
  if (room == NULL)
    return 0;
  int i = conn_room_index(conn, room);
  if (i >= 0)
    leave_at(conn, (uint32_t)i);
  return 0;
}

void fo__rooms_leave_all(fo_conn_t *conn) {
  while (conn->rooms != NULL && conn->rooms->n > 0)
    leave_at(conn, conn->rooms->n - 1);
  free(conn->rooms); /* an empty list (never kept, but cheap to be sure) */
  conn->rooms = NULL;
}

size_t fo__room_broadcast(fo_server_t *srv, const char *name, size_t len, int64_t offset,
                          fo_buf_t *buf, bool once) {
  fo_room_t *room = (fo_room_t *)fo_map_get(&srv->rooms, name, len, fo_map_hash(name, len));
  size_t sent = 0;
  if (room == NULL)
    return 0;
  if (once && offset >= 0) {
    /* One room is one partition, which its owners publish in offset order:
     * an offset at or before one the members were given is a copy. */
    if (offset <= room->last) {
      (*srv->m.room_copies)++;
      return 0;
    }
    room->last = offset;
  }
  /* Backwards: a member closed by its queue limit is swap-removed, and the
   * member moved into its slot was already served. The room itself may go
   * away with its last member, so test the count before touching it. */
  for (uint32_t i = room->n; i > 0; i--) {
    bool last = room->n == 1;
    fo_conn_t *c = room->members[i - 1];
    /* A member whose position in this room is being worked out (a resume,
     * a fence) gets it through the streams layer. */
    int rc = c->cs != NULL && srv->hub_ev.member_frame != NULL
                 ? srv->hub_ev.member_frame(c, name, len, offset, buf)
                 : fo__conn_send(c, buf);
    if (rc == 0)
      sent++;
    if (last)
      break;
  }
  return sent;
}

void fo__rooms_forget_offsets(fo_server_t *srv) {
  uint32_t cur = 0;
  fo_mapent_t *e;
  while ((e = fo_map_next(&srv->rooms, &cur)) != NULL)
    ((fo_room_t *)e)->last = -1;
}

void fo__rooms_free(fo_server_t *srv) {
  uint32_t cur = 0;
  fo_mapent_t *e;
  while ((e = fo_map_next(&srv->rooms, &cur)) != NULL) {
    free(((fo_room_t *)e)->members);
    free(e);
  }
  fo_map_free(&srv->rooms);
  cur = 0;
  while ((e = fo_map_next(&srv->perms, &cur)) != NULL)
    free(e);
  fo_map_free(&srv->perms);
}

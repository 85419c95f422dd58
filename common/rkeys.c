#include "rkeys.h"

#include <string.h>

int fo_rkey_connections(fo_sb_t *sb, const char *prefix, const char *user, size_t user_len) {
  fo_sb_puts(sb, prefix);
  fo_sb_puts(sb, "ws:connections:");
  return fo_sb_append(sb, user, user_len);
}

int fo_rkey_server_channel(fo_sb_t *sb, const char *prefix, const char *server_id) {
  fo_sb_puts(sb, prefix);
  fo_sb_puts(sb, "ws:server:");
  return fo_sb_puts(sb, server_id);
}

int fo_rkey_alive(fo_sb_t *sb, const char *prefix, const char *server_id) {
  fo_sb_puts(sb, prefix);
  fo_sb_puts(sb, "ws:alive:");
  return fo_sb_puts(sb, server_id);
}

int fo_rkey_room_channel(fo_sb_t *sb, const char *prefix, const char *room, size_t room_len) {
  fo_sb_puts(sb, prefix);
  fo_sb_puts(sb, "ws:room:");
  return fo_sb_append(sb, room, room_len);
}

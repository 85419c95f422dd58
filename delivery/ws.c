/* RFC 6455 frame parsing for client->server traffic. */
#include "ws.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "json_out.h"

/* Incremental UTF-8 check: what the next bytes must be to finish the code
 * point begun so far. need == 0 between code points. Carried across
 * fragments and across reads, so a text message fails at the first byte
 * that no continuation could make valid (RFC 6455 8.1: fail fast). */
typedef struct {
  uint8_t need;   /* continuation bytes still expected (0..3) */
  uint8_t lo, hi; /* range of the next one (excludes overlongs, surrogates, > U+10FFFF) */
} utf8_state_t;

struct fo_ws_rx {
  uint8_t *pend; /* an incomplete frame: header raw, then payload */
  size_t pend_len, pend_cap;
  size_t pend_done; /* payload bytes of pend already unmasked (and UTF-8 checked) */
  uint8_t *msg;     /* payload of a fragmented message being reassembled */
  size_t msg_len, msg_cap;
  int msg_op;      /* FO_WS_OP_TEXT/BINARY while reassembling, else 0 */
  utf8_state_t u8; /* of the text message in progress (fragments or a partial frame) */
};

static int reserve(uint8_t **p, size_t *cap, size_t need) {
  if (need <= *cap)
    return 0;
  size_t ncap = *cap ? *cap : 256;
  while (ncap < need)
    ncap *= 2;
  uint8_t *np = realloc(*p, ncap);
  if (np == NULL)
    return -ENOMEM;
  *p = np;
  *cap = ncap;
  return 0;
}

static fo_ws_rx_t *rx_get(fo_ws_rx_t **rx) {
  if (*rx == NULL)
    *rx = calloc(1, sizeof(**rx));
  return *rx;
}

void fo_ws_rx_free(fo_ws_rx_t **rx) {
  if (*rx == NULL)
    return;
  free((*rx)->pend);
  free((*rx)->msg);
  free(*rx);
  *rx = NULL;
}

size_t fo_ws_rx_bytes(const fo_ws_rx_t *rx) {
  return rx ? sizeof(*rx) + rx->pend_cap + rx->msg_cap : 0;
}

bool fo_ws_close_code_valid(unsigned code) {
  if (code >= 3000 && code <= 4999)
    return true;
  switch (code) {
  case 1000:
  case 1001:
  case 1002:
  case 1003:
  case 1007:
  case 1008:
  case 1009:
  case 1010:
  case 1011:
  case 1012:
  case 1013:
  case 1014:
    return true;
  default:
    return false;
  }
}

typedef struct {
  bool fin;
  int opcode;
  uint64_t len;
  uint8_t mask[4];
  size_t hlen;
} hdr_t;

/* Returns header length, 0 if incomplete, or a close code (> 999) as negative. */
static int parse_header(const uint8_t *p, size_t n, hdr_t *h) {
  if (n < 2)
    return 0;
  h->fin = (p[0] & 0x80) != 0;
  if (p[0] & 0x70)
    return -FO_WS_CLOSE_PROTOCOL; /* no extension negotiated */
  h->opcode = p[0] & 0x0f;
  if (!(p[1] & 0x80))
    return -FO_WS_CLOSE_PROTOCOL; /* clients must mask */
  uint64_t len = p[1] & 0x7f;
  size_t hl = 2;
  if (len == 126) {
    if (n < 4)
      return 0;
    len = ((uint64_t)p[2] << 8) | p[3];
    if (len < 126)
      return -FO_WS_CLOSE_PROTOCOL; /* minimal encoding required */
    hl = 4;
  } else if (len == 127) {
    if (n < 10)
      return 0;
    if (p[2] & 0x80)
      return -FO_WS_CLOSE_PROTOCOL; /* most significant bit must be 0 */
    len = 0;
    for (int i = 2; i < 10; i++)
      len = (len << 8) | p[i];
    if (len <= 0xffff)
      return -FO_WS_CLOSE_PROTOCOL;
    hl = 10;
  }
  if (n < hl + 4)
    return 0;
  memcpy(h->mask, p + hl, 4);
  h->hlen = hl + 4;
  h->len = len;
  return (int)h->hlen;
}

/* Unmasks n payload bytes that start at payload offset `at`. */
static void unmask(uint8_t *p, size_t n, const uint8_t mask[4], size_t at) {
  uint8_t m[4];
  for (int k = 0; k < 4; k++)
    m[k] = mask[(at + (size_t)k) & 3];
  size_t i = 0;
  uint32_t m32;
  memcpy(&m32, m, 4);
  for (; i + 4 <= n; i += 4) {
    uint32_t v;
    memcpy(&v, p + i, 4);
    v ^= m32;
    memcpy(p + i, &v, 4);
  }
  for (; i < n; i++)
    p[i] ^= m[i & 3];
}

/* Checks p[0..n) as the next bytes of a text message; false at the first
 * byte that cannot be part of valid UTF-8 whatever follows. */
static bool utf8_step(utf8_state_t *st, const uint8_t *p, size_t n) {
  size_t i = 0;
  unsigned need = st->need;
  uint8_t lo = st->lo, hi = st->hi;
  for (;;) {
    /* Continuation bytes of the code point begun: those that are here. */
    for (; need > 0 && i < n; need--, i++) {
      if (p[i] < lo || p[i] > hi)
        return false;
      lo = 0x80;
      hi = 0xbf;
    }
    if (i >= n)
      break;
    uint8_t c = p[i++];
    if (c < 0x80) {
      /* ASCII: byte by byte for a short run, 8 bytes at a time for a long one. */
      size_t end = n - i > 7 ? i + 7 : n;
      while (i < end && p[i] < 0x80)
        i++;
      if (i == end) {
        uint64_t w;
        while (i + 8 <= n) {
          memcpy(&w, p + i, 8);
          if (w & 0x8080808080808080ull)
            break;
          i += 8;
        }
      }
      continue;
    }
    lo = 0x80;
    hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c == 0xe0)
        lo = 0xa0; /* overlong */
      else if (c == 0xed)
        hi = 0x9f; /* UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c == 0xf0)
        lo = 0x90; /* overlong */
      else if (c == 0xf4)
        hi = 0x8f; /* past U+10FFFF */
    } else {
      return false; /* 0x80..0xc1, 0xf5..0xff */
    }
    if (i + need <= n) { /* all here: the common case */
      if (p[i] < lo || p[i] > hi)
        return false;
      for (unsigned k = 1; k < need; k++)
        if ((p[i + k] & 0xc0) != 0x80)
          return false;
      i += need;
      need = 0;
    }
  }
  st->need = (uint8_t)need;
  st->lo = lo;
  st->hi = hi;
  return true;
}

static bool is_text(const fo_ws_rx_t *rx, const hdr_t *h) {
  return h->opcode == FO_WS_OP_TEXT ||
         (h->opcode == FO_WS_OP_CONT && rx != NULL && rx->msg_op == FO_WS_OP_TEXT);
}

/* Checks opcode/size rules before the payload is read, so an oversized
 * frame is refused from its header alone. */
static int check_header(const fo_ws_rx_t *rx, const hdr_t *h, const fo_ws_limits_t *lim) {
  switch (h->opcode) {
  case FO_WS_OP_CLOSE:
  case FO_WS_OP_PING:
  case FO_WS_OP_PONG:
    if (!h->fin || h->len > 125)
      return FO_WS_CLOSE_PROTOCOL;
    return 0;
  case FO_WS_OP_TEXT:
  case FO_WS_OP_BINARY:
    if (rx != NULL && rx->msg_op != 0)
      return FO_WS_CLOSE_PROTOCOL; /* new message inside a fragmented one */
    break;
  case FO_WS_OP_CONT:
    if (rx == NULL || rx->msg_op == 0)
      return FO_WS_CLOSE_PROTOCOL;
    break;
  default:
    return FO_WS_CLOSE_PROTOCOL; /* reserved opcode */
  }
  if (h->len > lim->max_frame || h->len > lim->max_message)
    return FO_WS_CLOSE_TOO_BIG;
  if (h->opcode == FO_WS_OP_CONT && rx->msg_len + h->len > lim->max_message)
    return FO_WS_CLOSE_TOO_BIG;
  return 0;
}

static int check_close_payload(const uint8_t *p, size_t n) {
  if (n == 0)
    return 0;
  if (n == 1)
    return FO_WS_CLOSE_PROTOCOL;
  unsigned code = ((unsigned)p[0] << 8) | p[1];
  if (!fo_ws_close_code_valid(code))
    return FO_WS_CLOSE_PROTOCOL;
  if (!fo_utf8_valid(p + 2, n - 2))
    return FO_WS_CLOSE_BAD_DATA;
  return 0;
}

/* Handles one complete frame (text payload already UTF-8 checked). Returns
 * 0, 1 (callback stopped), or a close code / -ENOMEM. */
static int on_frame(fo_ws_rx_t **rxp, const hdr_t *h, uint8_t *pl, const fo_ws_limits_t *lim,
                    fo_ws_msg_cb cb, void *ud) {
  (void)lim;
  size_t n = (size_t)h->len;
  int rc;
  if (h->opcode >= 0x8) {
    if (h->opcode == FO_WS_OP_CLOSE) {
      rc = check_close_payload(pl, n);
      if (rc != 0)
        return rc;
    }
    return cb(ud, h->opcode, pl, n) ? 1 : 0;
  }
  if (h->opcode != FO_WS_OP_CONT && h->fin)
    return cb(ud, h->opcode, pl, n) ? 1 : 0; /* text: checked as it arrived */
  fo_ws_rx_t *rx = rx_get(rxp);
  if (rx == NULL)
    return -ENOMEM;
  if (h->opcode != FO_WS_OP_CONT) {
    rx->msg_op = h->opcode;
    rx->msg_len = 0;
  }
  if (reserve(&rx->msg, &rx->msg_cap, rx->msg_len + n + 1) != 0)
    return -ENOMEM;
  memcpy(rx->msg + rx->msg_len, pl, n);
  rx->msg_len += n;
  if (!h->fin)
    return 0;
  int op = rx->msg_op;
  size_t len = rx->msg_len;
  rx->msg_op = 0;
  rx->msg_len = 0;
  return cb(ud, op, rx->msg, len) ? 1 : 0;
}

int fo_ws_rx_feed(fo_ws_rx_t **rxp, uint8_t *p, size_t n, const fo_ws_limits_t *lim,
                  fo_ws_msg_cb cb, void *ud) {
  uint8_t *data = p;
  size_t len = n;
  bool from_pend = false;
  size_t done = 0;       /* payload bytes of the frame at data[off] already unmasked */
  utf8_state_t u8 = {0}; /* here while feeding, in *rxp between feeds */
  int rc = 0;

  if (*rxp != NULL) {
    fo_ws_rx_t *rx = *rxp;
    u8 = rx->u8;
    if (rx->pend_len > 0) {
      if (reserve(&rx->pend, &rx->pend_cap, rx->pend_len + n) != 0)
        return -ENOMEM;
      memcpy(rx->pend + rx->pend_len, p, n);
      rx->pend_len += n;
      data = rx->pend;
      len = rx->pend_len;
      done = rx->pend_done;
      from_pend = true;
    }
  }

  size_t off = 0;
  while (off < len) {
    hdr_t h;
    int hl = parse_header(data + off, len - off, &h);
    if (hl < 0) {
      rc = -hl;
      goto out;
    }
    if (hl == 0)
      break;
    rc = check_header(*rxp, &h, lim);
    if (rc != 0)
      goto out;
    uint8_t *pl = data + off + h.hlen;
    size_t have = len - off - h.hlen;
    if (have > h.len)
      have = (size_t)h.len;
    bool text = is_text(*rxp, &h);
    if (text && h.opcode == FO_WS_OP_TEXT && done == 0)
      u8 = (utf8_state_t){0}; /* a new text message */
    /* Unmask and check what arrived, even of an incomplete frame: a text
     * message fails at its first bad byte, not once it is all here. */
    if (have > done) {
      unmask(pl + done, have - done, h.mask, done);
      if (text && !utf8_step(&u8, pl + done, have - done)) {
        rc = FO_WS_CLOSE_BAD_DATA;
        goto out;
      }
      done = have;
    }
    if (have < h.len)
      break;
    if (text && h.fin && u8.need != 0) {
      rc = FO_WS_CLOSE_BAD_DATA; /* ends inside a code point */
      goto out;
    }
    off += h.hlen + (size_t)h.len;
    done = 0;
    rc = on_frame(rxp, &h, pl, lim, cb, ud);
    if (rc != 0)
      goto out;
  }

out:
  if (rc != 0 && rc != 1)
    return rc; /* the connection is going away: state is moot */
  {
    size_t left = len - off;
    if (from_pend) {
      fo_ws_rx_t *rx = *rxp;
      if (left > 0 && off > 0)
        memmove(rx->pend, rx->pend + off, left);
      rx->pend_len = left;
      rx->pend_done = done;
    } else if (left > 0) {
      fo_ws_rx_t *rx = rx_get(rxp);
      if (rx == NULL || reserve(&rx->pend, &rx->pend_cap, left) != 0)
        return -ENOMEM;
      memcpy(rx->pend, data + off, left);
      rx->pend_len = left;
      rx->pend_done = done;
    }
    fo_ws_rx_t *rx = *rxp;
    if (rx != NULL) {
      rx->u8 = u8;
      if (rx->pend_len == 0 && rx->msg_op == 0)
        fo_ws_rx_free(rxp); /* idle again: give the memory back */
    }
  }
  return rc;
}

void fo_ws_accept_key(const char *key, size_t len, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  out[0] = '\0';
  if (ctx == NULL)
    return;
  if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(ctx, key, len) == 1 &&
      EVP_DigestUpdate(ctx, guid, sizeof(guid) - 1) == 1 &&
      EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20)
    EVP_EncodeBlock((unsigned char *)out, md, 20);
  EVP_MD_CTX_free(ctx);
}

size_t fo_ws_header(uint8_t out[10], int opcode, bool fin, uint64_t len) {
  out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
  if (len < 126) {
    out[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    out[1] = 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; i++)
    out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

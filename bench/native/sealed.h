/* Secure mode for the bench's C helpers: udprepeater's sealed frame, written
 * and read here byte for byte as docs/PROTOCOL.md ("Sealed frames") and
 * proto/udprepeater.proto (Envelope) define it, with libsodium.
 *
 *   offset size
 *   0      2    magic "ur" (0x75 0x72)
 *   2      1    version 2
 *   3      1    reserved 0
 *   4      4    key id, u32 LE: first 4 bytes of SHA-256("udprepeater key id\0" || key)
 *   8      24   nonce: 16 random bytes drawn once per process || u64 LE counter
 *   32     n+16 crypto_secretbox_easy (XSalsa20-Poly1305) of the n-byte Envelope
 *
 * The Envelope is protobuf, encoded by hand (proto3, fields in number order,
 * as protobufjs writes them):
 *   1 kind        varint   (tag 0x08)  CACHE_DATAGRAM = 1
 *   2 channel_key string   (tag 0x12)
 *   3 origin      fixed64  (tag 0x19)  random per process
 *   4 sequence    varint   (tag 0x20)  1, 2, 3, ... per origin
 *   5 sent_at_ms  varint   (tag 0x28)  CLOCK_REALTIME, unix ms
 *   8 role        varint   (tag 0x40)  AGENT = 1: the generator seals as an agent
 *   6 datagram    bytes    (tag 0x32)
 * (role comes before the datagram so the datagram can be appended after the
 * head; protobuf allows any order.) The reader skips unknown fields (role,
 * trace) and accepts any order, as protobuf requires.
 *
 * Compiled with -DBENCH_SODIUM -lsodium when libsodium is installed; without
 * it the helpers still run in plain mode and refuse --key-file. */
#ifndef BENCH_SEALED_H
#define BENCH_SEALED_H

#include "common.h"

#include <ctype.h>
#include <sys/stat.h>

#define FRAME_VERSION 2
#define ROLE_AGENT 1
#define FRAME_HEADER 8
#define NONCE_BYTES 24
#define MAC_BYTES 16
#define FRAME_OVERHEAD (FRAME_HEADER + NONCE_BYTES + MAC_BYTES)
/* Most bytes an Envelope puts around a datagram: 2 (kind) + 2 + 255 (channel
 * key) + 9 (origin) + 11 (sequence) + 11 (sent_at_ms) + 2 (role) + 1 + 3
 * (datagram tag, length). */
#define ENVELOPE_MAX_HEAD 300
#define MAX_UDP_PAYLOAD 65507
#define MAX_CHANNEL 255
#define KIND_CACHE_DATAGRAM 1

#ifdef BENCH_SODIUM
#include <sodium.h>

struct sealer {
  uint8_t key[crypto_secretbox_KEYBYTES];
  uint32_t key_id;
  uint8_t prefix[16];
  uint64_t counter; /* last nonce counter used */
  uint64_t origin;
  uint64_t sequence; /* last Envelope sequence sealed */
  char channel[MAX_CHANNEL + 1];
  size_t channel_len;
};

__attribute__((unused)) static void sodium_up(void) {
  if (sodium_init() < 0) die("libsodium failed to initialise");
}

/* Reads a key file as the repeater does (src/crypto/keyring.ts): 32 raw
 * bytes, or the key as base64 or hex text. */
__attribute__((unused)) static void load_key(const char *path, uint8_t key[32]) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) die("key file %s: %s", path, strerror(errno));
  uint8_t buf[256];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  if (n == 32) {
    memcpy(key, buf, 32);
    sodium_memzero(buf, sizeof buf);
    return;
  }
  while (n > 0 && isspace(buf[n - 1])) n--;
  size_t start = 0;
  while (start < n && isspace(buf[start])) start++;
  char text[256];
  memcpy(text, buf + start, n - start);
  text[n - start] = 0;
  size_t len = 0;
  int ok = 0;
  if (n - start == 44) ok = sodium_base642bin(key, 32, text, 44, NULL, &len, NULL, sodium_base64_VARIANT_ORIGINAL) == 0 && len == 32;
  else if (n - start == 64) ok = sodium_hex2bin(key, 32, text, 64, NULL, &len, NULL) == 0 && len == 32;
  sodium_memzero(buf, sizeof buf);
  sodium_memzero(text, sizeof text);
  if (!ok) die("key file %s: not a 32-byte key (want 32 raw bytes, or base64 or hex text)", path);
}

__attribute__((unused)) static uint32_t key_id_of(const uint8_t key[32]) {
  static const char label[] = "udprepeater key id"; /* and its terminating NUL */
  crypto_hash_sha256_state st;
  uint8_t h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_init(&st);
  crypto_hash_sha256_update(&st, (const uint8_t *)label, sizeof label); /* includes the \0 */
  crypto_hash_sha256_update(&st, key, 32);
  crypto_hash_sha256_final(&st, h);
  return get_u32(h);
}

__attribute__((unused)) static void sealer_init(struct sealer *s, const char *key_file, const char *channel) {
  memset(s, 0, sizeof *s);
  load_key(key_file, s->key);
  s->key_id = key_id_of(s->key);
  randombytes_buf(s->prefix, sizeof s->prefix);
  do randombytes_buf(&s->origin, sizeof s->origin);
  while (s->origin == 0);
  s->channel_len = strlen(channel);
  if (s->channel_len > MAX_CHANNEL) die("channel key longer than %d bytes", MAX_CHANNEL);
  memcpy(s->channel, channel, s->channel_len);
}

static inline size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static inline uint64_t realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

/* Writes the Envelope of a CACHE_DATAGRAM up to (and including) the
 * datagram field's tag and length; the caller appends the `dlen` bytes of
 * the datagram. Takes the next sequence number. Returns the bytes written
 * (at most ENVELOPE_MAX_HEAD). */
static inline size_t envelope_head(struct sealer *s, uint8_t *p, uint64_t sent_ms, size_t dlen) {
  size_t n = 0;
  p[n++] = 0x08;
  p[n++] = KIND_CACHE_DATAGRAM;
  if (s->channel_len > 0) {
    p[n++] = 0x12;
    n += put_varint(p + n, s->channel_len);
    memcpy(p + n, s->channel, s->channel_len);
    n += s->channel_len;
  }
  p[n++] = 0x19;
  put_u64(p + n, s->origin);
  n += 8;
  p[n++] = 0x20;
  n += put_varint(p + n, ++s->sequence);
  p[n++] = 0x28;
  n += put_varint(p + n, sent_ms);
  p[n++] = 0x40;
  p[n++] = ROLE_AGENT;
  p[n++] = 0x32;
  n += put_varint(p + n, dlen);
  return n;
}

/* Seals `plen` bytes of Envelope into `out` (plen + FRAME_OVERHEAD bytes). */
static inline size_t seal_frame(struct sealer *s, uint8_t *out, const uint8_t *plain, size_t plen) {
  out[0] = 0x75;
  out[1] = 0x72;
  out[2] = FRAME_VERSION;
  out[3] = 0;
  put_u32(out + 4, s->key_id);
  memcpy(out + FRAME_HEADER, s->prefix, 16);
  put_u64(out + FRAME_HEADER + 16, ++s->counter);
  crypto_secretbox_easy(out + FRAME_HEADER + NONCE_BYTES, plain, plen, out + FRAME_HEADER, s->key);
  return plen + FRAME_OVERHEAD;
}

/* Why a datagram did not open. */
enum open_result { OPENED = 0, NOT_A_FRAME, BAD_HEADER, UNKNOWN_KEY, AUTH_FAILED, BAD_ENVELOPE };

struct envelope {
  uint64_t kind, origin, sequence, sent_ms;
  const uint8_t *channel;
  size_t channel_len;
  const uint8_t *datagram;
  size_t dlen;
  int parsed; /* the protobuf read to its end, whatever its kind */
};

static inline int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 1;
    }
  }
  return 0;
}

/* Parses an Envelope; 1 when it is a well-formed CACHE_DATAGRAM with a
 * non-empty datagram and a sequence >= 1 (what the repeater accepts). */
__attribute__((unused)) static int parse_envelope(const uint8_t *p, size_t len, struct envelope *e) {
  /* Wire type of each known field (0 = varint, 1 = fixed64, 2 = length-delimited). */
  static const int8_t wire[8] = {-1, 0, 2, 1, 0, 0, 2, 2};
  const uint8_t *end = p + len;
  memset(e, 0, sizeof *e);
  while (p < end) {
    uint64_t tag, v = 0;
    if (!get_varint(&p, end, &tag)) return 0;
    uint64_t field = tag >> 3;
    unsigned wt = (unsigned)(tag & 7);
    if (field == 0 || (field < 8 && wire[field] != (int)wt)) return 0;
    const uint8_t *at = p;
    switch (wt) {
    case 0:
      if (!get_varint(&p, end, &v)) return 0;
      break;
    case 1:
      if (end - p < 8) return 0;
      v = get_u64(p);
      p += 8;
      break;
    case 2:
      if (!get_varint(&p, end, &v) || v > (uint64_t)(end - p)) return 0;
      at = p;
      p += v;
      break;
    case 5:
      if (end - p < 4) return 0;
      p += 4;
      break;
    default:
      return 0;
    }
    switch (field) {
    case 1: e->kind = v; break;
    case 2: e->channel = at; e->channel_len = (size_t)v; break;
    case 3: e->origin = v; break;
    case 4: e->sequence = v; break;
    case 5: e->sent_ms = v; break;
    case 6: e->datagram = at; e->dlen = (size_t)v; break;
    default: break; /* unknown (or the subscription): skipped */
    }
  }
  e->parsed = 1;
  return e->kind == KIND_CACHE_DATAGRAM && e->sequence >= 1 && e->datagram != NULL && e->dlen > 0;
}

/* Opens a frame into `plain` (len - FRAME_OVERHEAD bytes) and parses its Envelope. */
__attribute__((unused)) static int open_frame(const uint8_t *key, uint32_t key_id, const uint8_t *f, size_t len, uint8_t *plain, struct envelope *e) {
  if (len < 2 || f[0] != 0x75 || f[1] != 0x72) return NOT_A_FRAME;
  if (len < FRAME_OVERHEAD || f[2] != FRAME_VERSION || f[3] != 0) return BAD_HEADER;
  if (get_u32(f + 4) != key_id) return UNKNOWN_KEY;
  if (crypto_secretbox_open_easy(plain, f + FRAME_HEADER + NONCE_BYTES, len - FRAME_HEADER - NONCE_BYTES, f + FRAME_HEADER, key) != 0)
    return AUTH_FAILED;
  return parse_envelope(plain, len - FRAME_OVERHEAD, e) ? OPENED : BAD_ENVELOPE;
}

/* Identity mode: a link frame (docs/PROTOCOL.md, "Link and group frames"),
 * sealed under one link's key in one direction:
 *
 *   offset size
 *   0      4    "ur", version 3, type 3 (link frame)
 *   4      4    the receiver's link id, u32 LE
 *   8      8    counter, u64 LE, never repeated under the key
 *   16     n+16 crypto_secretbox_easy of the Envelope; nonce: these 16 bytes || 8 zero bytes
 *
 * The generator seals as the writer's agent does (k_ir, the repeater's link
 * id); each receiver opens under its own link's k_ri (its own link id). The
 * keys come from the bench's Node harness, which made the handshakes with
 * the project's own code (bench/lib/identity-mode.ts). */
#define LINK_VERSION 3
#define LINK_TYPE_DATA 3
#define LINK_HEADER 16
#define LINK_OVERHEAD (LINK_HEADER + MAC_BYTES)

/* Turns a sealer into a link sealer: key (32 raw bytes from `key_file`), the
 * repeater's link id, and the counter to start above. */
__attribute__((unused)) static void sealer_link(struct sealer *s, const char *key_file, uint32_t link_id, uint64_t counter) {
  FILE *f = fopen(key_file, "rb");
  if (f == NULL) die("link key %s: %s", key_file, strerror(errno));
  size_t n = fread(s->key, 1, sizeof s->key, f);
  fclose(f);
  if (n != sizeof s->key) die("link key %s: want 32 raw bytes", key_file);
  if (link_id == 0) die("a link id is never 0");
  s->key_id = link_id;
  s->counter = counter;
}

static inline void link_nonce(const uint8_t *header, uint8_t nonce[NONCE_BYTES]) {
  memcpy(nonce, header, LINK_HEADER);
  memset(nonce + LINK_HEADER, 0, NONCE_BYTES - LINK_HEADER);
}

/* Seals `plen` bytes of Envelope into `out` (plen + LINK_OVERHEAD bytes) as a link frame. */
static inline size_t seal_link_frame(struct sealer *s, uint8_t *out, const uint8_t *plain, size_t plen) {
  uint8_t nonce[NONCE_BYTES];
  out[0] = 0x75;
  out[1] = 0x72;
  out[2] = LINK_VERSION;
  out[3] = LINK_TYPE_DATA;
  put_u32(out + 4, s->key_id);
  put_u64(out + 8, ++s->counter);
  link_nonce(out, nonce);
  crypto_secretbox_easy(out + LINK_HEADER, plain, plen, nonce, s->key);
  return plen + LINK_OVERHEAD;
}

/* Opens a link frame under the key of link `id` into `plain` (len -
 * LINK_OVERHEAD bytes). Returns OPENED with the Envelope parsed into `e`
 * when it holds a valid CACHE_DATAGRAM; NOT_DATA when it opened to anything
 * else (a MEMBERSHIP, say: not loss, not corruption); else why not. */
#define NOT_DATA 100
__attribute__((unused)) static int open_link_frame(const uint8_t *key, uint32_t id, const uint8_t *f, size_t len, uint8_t *plain, struct envelope *e) {
  uint8_t nonce[NONCE_BYTES];
  if (len < 2 || f[0] != 0x75 || f[1] != 0x72) return NOT_A_FRAME;
  if (len < LINK_OVERHEAD || f[2] != LINK_VERSION || f[3] != LINK_TYPE_DATA || get_u64(f + 8) == 0) return BAD_HEADER;
  if (get_u32(f + 4) != id) return UNKNOWN_KEY;
  link_nonce(f, nonce);
  if (crypto_secretbox_open_easy(plain, f + LINK_HEADER, len - LINK_HEADER, nonce, key) != 0) return AUTH_FAILED;
  if (parse_envelope(plain, len - LINK_OVERHEAD, e)) return OPENED;
  return e->parsed && e->kind != KIND_CACHE_DATAGRAM ? NOT_DATA : BAD_ENVELOPE;
}

/* Identity mode: a group frame (docs/PROTOCOL.md, "Group keys and
 * revocation"), the repeater's one seal of a live datagram for every member
 * that acknowledged the channel's group key:
 *
 *   offset size
 *   0      4    "ur", version 3, type 4 (group frame)
 *   4      4    the group key's id, u32 LE (random, not 0)
 *   8      8    counter, u64 LE, never repeated under the key
 *   16     n+16 crypto_secretbox_easy of the Envelope; nonce: these 16 bytes || 8 zero bytes
 *
 * The receivers get the key from the bench's harness, which took it from a
 * GROUP_KEY under the member's link and acknowledged it as an agent does. */
#define GROUP_TYPE_DATA 4

/* Opens a group frame under key `key_id` into `plain` (len - LINK_OVERHEAD
 * bytes); the caller picked the key by the id in the header (no trial
 * decryption). Returns as open_link_frame. */
__attribute__((unused)) static int open_group_frame(const uint8_t *key, uint32_t key_id, const uint8_t *f, size_t len, uint8_t *plain, struct envelope *e) {
  uint8_t nonce[NONCE_BYTES];
  if (len < 2 || f[0] != 0x75 || f[1] != 0x72) return NOT_A_FRAME;
  if (len < LINK_OVERHEAD || f[2] != LINK_VERSION || f[3] != GROUP_TYPE_DATA || get_u64(f + 8) == 0) return BAD_HEADER;
  if (get_u32(f + 4) != key_id) return UNKNOWN_KEY;
  link_nonce(f, nonce);
  if (crypto_secretbox_open_easy(plain, f + LINK_HEADER, len - LINK_HEADER, nonce, key) != 0) return AUTH_FAILED;
  if (parse_envelope(plain, len - LINK_OVERHEAD, e)) return OPENED;
  return e->parsed && e->kind != KIND_CACHE_DATAGRAM ? NOT_DATA : BAD_ENVELOPE;
}

#else /* no libsodium */

__attribute__((unused)) static void sodium_up(void) {
  die("this helper was built without libsodium, so it cannot seal or open frames (--key-file): "
      "install it (Debian/Ubuntu: apt-get install -y libsodium-dev) and run the bench again");
}

#endif
#endif

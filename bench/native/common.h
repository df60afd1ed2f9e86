/* Shared by the bench's C helpers (gen, recv, floor, launch).
 *
 * The stamp: 24 bytes the generator writes into each datagram it sends and
 * the receivers read back. All fields little-endian:
 *   u32 magic "UDPB" | u32 run id | u64 sequence | u64 send time (CLOCK_MONOTONIC ns)
 * A set carries it at the start of its value, a delete at the start of its
 * key (a delete has no value); see stamp_offset().
 *
 * Safety: every helper refuses any address but 127.0.0.1. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STAMP_MAGIC 0x42504455u /* "UDPB" read as u32 LE */
#define STAMP_LEN 24
#define UWSGI_CACHE 111
#define UWSGI_SET 10
#define UWSGI_DELETE 11

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void put_u64(uint8_t *p, uint64_t v) {
  put_u32(p, (uint32_t)v);
  put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_u64(const uint8_t *p) {
  return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}
static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static inline void write_stamp(uint8_t *p, uint32_t run, uint64_t seq, uint64_t ts) {
  put_u32(p, STAMP_MAGIC);
  put_u32(p + 4, run);
  put_u64(p + 8, seq);
  put_u64(p + 16, ts);
}

/* Where a uWSGI cache datagram carries its stamp, or -1. */
static inline long stamp_offset(const uint8_t *p, size_t len) {
  if (len < 6 || p[0] != UWSGI_CACHE) return -1;
  size_t klen = get_u16(p + 4);
  if (p[3] == UWSGI_DELETE) return (klen >= STAMP_LEN && 6 + klen <= len) ? 6 : -1;
  if (p[3] != UWSGI_SET || 8 + klen > len) return -1;
  size_t vlen = get_u16(p + 6 + klen);
  return (vlen >= STAMP_LEN && 8 + klen + STAMP_LEN <= len) ? (long)(8 + klen) : -1;
}

/* A set's expiry field (decimal unix seconds, as uWSGI writes it): its offset, or -1; *elen gets its length. */
static inline long expiry_offset(const uint8_t *p, size_t len, size_t *elen) {
  if (len < 8 || p[0] != UWSGI_CACHE || p[3] != UWSGI_SET) return -1;
  size_t klen = get_u16(p + 4);
  if (8 + klen > len) return -1;
  size_t vlen = get_u16(p + 6 + klen);
  size_t at = 8 + klen + vlen;
  if (at + 2 > len) return -1;
  *elen = get_u16(p + at);
  return at + 2 + *elen <= len ? (long)(at + 2) : -1;
}

/* Writes `v` as exactly `n` decimal digits at p when it has that many; returns 1 if written. */
static inline int put_decimal(uint8_t *p, size_t n, uint64_t v) {
  char tmp[24];
  int w = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  if (w <= 0 || (size_t)w != n) return 0;
  memcpy(p, tmp, n);
  return 1;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* Parses "127.0.0.1:PORT"; anything else is refused (the bench sends only to loopback). */
static void parse_loopback(const char *s, struct sockaddr_in *out, int allow_port0) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || (size_t)(colon - s) != 9 || strncmp(s, "127.0.0.1", 9) != 0)
    die("address \"%s\" refused: the bench only uses 127.0.0.1:PORT", s);
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != 0 || port < (allow_port0 ? 0 : 1) || port > 65535) die("bad port in \"%s\"", s);
  memset(out, 0, sizeof *out);
  out->sin_family = AF_INET;
  out->sin_port = htons((uint16_t)port);
  out->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void set_buf(int fd, int opt, int bytes) {
  if (bytes <= 0) return;
  if (setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes) != 0) die("setsockopt: %s", strerror(errno));
}

#endif

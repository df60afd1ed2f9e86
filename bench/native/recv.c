/* recv: the bench's subscribers.
 *
 * Binds --count UDP sockets on 127.0.0.1 (ephemeral ports, written one per
 * line to --ports-out) and serves them all from one epoll loop with
 * recvmmsg. For every datagram carrying the current run's stamp (common.h)
 * it counts the arrival per socket, deduplicates by sequence number (bitmap
 * sized by RUN), notes reordering, and records latency = receive time
 * (CLOCK_MONOTONIC after recvmmsg returns) - send stamp in a log-linear
 * histogram (32 sub-buckets per power of two: about 3% resolution).
 * SO_RXQ_OVFL reports datagrams the kernel dropped at each socket, so loss
 * caused by the receivers themselves is visible.
 *
 * Secure mode (--key-file K): every datagram must be a udprepeater frame
 * (sealed.h); it is opened and the stamp is looked for in the datagram its
 * Envelope carries. Counted apart, per socket: frames that do not open
 * (unknown key id, bad header, failed MAC: "unopened"), frames that open but
 * hold no valid CACHE_DATAGRAM Envelope ("badenv"), and datagrams that are
 * not frames at all ("unsealed"). A fan-out sends one frame to all its
 * subscribers, so the receivers remember the last 1024 frames that opened
 * (the whole frame, compared byte for byte): a later byte-identical copy is
 * as authentic as the first and is not opened again (the receivers would
 * otherwise need a core of their own at 480k frames/s). --open-every
 * turns that off.
 *
 * Identity mode (--links): every datagram must be a link frame (type 3),
 * opened under the key of the socket's link its header names (LINK command
 * below: the bench's harness made the handshake and hands the keys over), or
 * a group frame (type 4), opened under the group key its header names (GROUP
 * command: the harness took the key under the socket's link and acknowledged
 * it). Frames of no link or group key the socket holds count as "unopened";
 * frames that open to something other than a cache datagram (a MEMBERSHIP, a
 * GROUP_KEY) as "control", which is neither loss nor corruption. Data frames
 * that opened are counted by type ("link_data", "group_data"). A link frame
 * is sealed for one subscriber, so nothing to cache; a group frame goes to
 * every member alike and uses the cache above (unless --open-every), once
 * the socket is known to hold its key.
 *
 * Control, one line each on stdin (answers on stdout):
 *   RUN <id> <maxseq>   reset counters, accept only stamps of run <id>  -> "OK RUN <id>"
 *   DUMP                one JSON line of figures (per socket and total)
 *   TOTAL               the same without the per-socket list
 *   PART <spec>         count, uniq and latency over some sockets only: spec is a
 *                       comma-separated list of PORT (every datagram of that socket)
 *                       or PORT:P (only sequence numbers of parity P, 0 or 1: with a
 *                       generator alternating between two inputs, what came in
 *                       through one of them)  -> one JSON line
 *   LINK <port> <id> <hex key>  identity mode: socket <port> opens link frames naming
 *                       link <id> under <key> (up to 4 links a socket: one per repeater)
 *                       -> "OK LINK <port> <id>"
 *   GROUP <port> <id> <hex key>  identity mode: socket <port> opens group frames of key
 *                       <id> under <key> (up to 4 a socket: a new one replaces the oldest)
 *                       -> "OK GROUP <port> <id>"
 *   QUIT / EOF          exit */
#include "common.h"
#include "sealed.h"

#include <sys/epoll.h>

#define SUB_BITS 5
#define SUB (1u << SUB_BITS)
#define MAX_EXP 36 /* ~68 s; larger latencies land in the last bucket */
#define NBUCKETS (SUB + (MAX_EXP - SUB_BITS + 1) * SUB)
#define BATCH 64
#define BUFSZ 65536

struct sock {
  int fd, port;
  uint64_t count, uniq, dup, ooo, foreign, bytes, beyond, unopened, badenv, unsealed, control, link_data, group_data;
  uint64_t last_seq, max_lat, first_ns, last_ns;
  uint32_t ovfl_base, ovfl_last;
  int ovfl_seen;
  uint32_t *hist; /* two histograms: even sequence numbers, then odd ones (PART) */
  uint64_t pcount[2], puniq[2], pmax[2];
  uint8_t *seen;
  /* Identity mode: the links this socket is a subscriber of (one per repeater). */
  int nlinks;
  uint32_t link_id[4];
  uint8_t link_key[4][32];
  /* Identity mode: the group keys this socket's member holds (current, replaced ones). */
  int ngroups, group_next;
  uint32_t group_id[4];
  uint8_t group_key[4][32];
};

static struct sock *socks;
static int nsocks;
static uint32_t cur_run;
static uint64_t maxseq;
static int secure, open_every, links;
static uint64_t opens, cache_hits;
/* Origins of the Envelopes that opened since RUN: the first and the last one
 * seen, and whether there were others (a fan-out seals with its own origin). */
static uint64_t origin_first, origin_last, origins_changed;

static inline unsigned bucket(uint64_t v) {
  if (v < SUB) return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  if (e > MAX_EXP) return NBUCKETS - 1;
  unsigned mant = (unsigned)(v >> (e - SUB_BITS)) & (SUB - 1);
  return SUB + (e - SUB_BITS) * SUB + mant;
}
/* Middle of bucket b, in ns. */
static inline double bucket_mid(unsigned b) {
  if (b < SUB) return b;
  unsigned e = (b - SUB) / SUB + SUB_BITS, mant = (b - SUB) % SUB;
  double lo = (double)((uint64_t)(SUB + mant) << (e - SUB_BITS)), width = (double)(1ull << (e - SUB_BITS));
  return lo + width / 2;
}
static double percentile(const uint64_t *h, uint64_t total, double q, uint64_t max) {
  if (total == 0) return 0;
  uint64_t want = (uint64_t)(q * (double)total), acc = 0;
  if (want >= total) want = total - 1;
  for (unsigned b = 0; b < NBUCKETS; b++) {
    acc += h[b];
    if (acc > want) {
      double m = bucket_mid(b);
      return m > (double)max ? (double)max : m;
    }
  }
  return (double)max;
}

static void reset(uint32_t run, uint64_t mseq) {
  cur_run = run;
  maxseq = mseq;
  origin_first = origin_last = origins_changed = 0;
  opens = cache_hits = 0;
  for (int i = 0; i < nsocks; i++) {
    struct sock *s = &socks[i];
    s->count = s->uniq = s->dup = s->ooo = s->foreign = s->bytes = s->beyond = s->unopened = s->badenv = s->unsealed = s->control = s->link_data = s->group_data = 0;
    s->last_seq = s->max_lat = s->first_ns = s->last_ns = 0;
    s->pcount[0] = s->pcount[1] = s->puniq[0] = s->puniq[1] = s->pmax[0] = s->pmax[1] = 0;
    s->ovfl_base = s->ovfl_last;
    memset(s->hist, 0, 2 * NBUCKETS * sizeof *s->hist);
    free(s->seen);
    s->seen = calloc(maxseq / 8 + 1, 1);
    if (s->seen == NULL) die("out of memory for %llu-entry sequence bitmaps", (unsigned long long)maxseq);
  }
}

static void dump(int full) {
  static uint64_t tot_hist[NBUCKETS];
  uint64_t h64[NBUCKETS];
  memset(tot_hist, 0, sizeof tot_hist);
  uint64_t c = 0, u = 0, d = 0, o = 0, f = 0, by = 0, bey = 0, mx = 0, first = 0, last = 0, drops = 0, uo = 0, be = 0, us = 0, ctl = 0, ld = 0, gd = 0;
  printf("{\"run\":%u", cur_run);
  if (full) printf(",\"sockets\":[");
  for (int i = 0; i < nsocks; i++) {
    struct sock *s = &socks[i];
    for (unsigned b = 0; b < NBUCKETS; b++) {
      h64[b] = (uint64_t)s->hist[b] + s->hist[NBUCKETS + b];
      tot_hist[b] += h64[b];
    }
    uint32_t dr = s->ovfl_last - s->ovfl_base;
    if (full)
      printf("%s{\"port\":%d,\"count\":%llu,\"uniq\":%llu,\"dup\":%llu,\"ooo\":%llu,\"foreign\":%llu,\"drops\":%u,"
           "\"unopened\":%llu,\"badenv\":%llu,\"unsealed\":%llu,\"p50\":%.0f,\"p99\":%.0f,\"max\":%llu,\"first\":%llu,\"last\":%llu}",
           i ? "," : "", s->port, (unsigned long long)s->count, (unsigned long long)s->uniq, (unsigned long long)s->dup,
           (unsigned long long)s->ooo, (unsigned long long)s->foreign, dr, (unsigned long long)s->unopened,
           (unsigned long long)s->badenv, (unsigned long long)s->unsealed, percentile(h64, s->count, 0.5, s->max_lat),
           percentile(h64, s->count, 0.99, s->max_lat), (unsigned long long)s->max_lat, (unsigned long long)s->first_ns,
           (unsigned long long)s->last_ns);
    c += s->count; u += s->uniq; d += s->dup; o += s->ooo; f += s->foreign; by += s->bytes; bey += s->beyond; drops += dr;
    uo += s->unopened; be += s->badenv; us += s->unsealed; ctl += s->control; ld += s->link_data; gd += s->group_data;
    if (s->max_lat > mx) mx = s->max_lat;
    if (s->first_ns && (!first || s->first_ns < first)) first = s->first_ns;
    if (s->last_ns > last) last = s->last_ns;
  }
  printf("%s\"total\":{\"count\":%llu,\"uniq\":%llu,\"dup\":%llu,\"ooo\":%llu,\"foreign\":%llu,\"bytes\":%llu,\"beyond\":%llu,"
         "\"drops\":%llu,\"unopened\":%llu,\"badenv\":%llu,\"unsealed\":%llu,\"control\":%llu,\"link_data\":%llu,\"group_data\":%llu,\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"p999\":%.0f,"
         "\"max\":%llu,\"first\":%llu,\"last\":%llu},\"secure\":%d,\"opens\":%llu,\"cache_hits\":%llu,"
         "\"origin_first\":\"%016llx\",\"origin_last\":\"%016llx\",\"origin_changes\":%llu,\"cpu_s\":%.3f}\n",
         full ? "]," : ",", (unsigned long long)c, (unsigned long long)u, (unsigned long long)d, (unsigned long long)o, (unsigned long long)f,
         (unsigned long long)by, (unsigned long long)bey, (unsigned long long)drops, (unsigned long long)uo, (unsigned long long)be,
         (unsigned long long)us, (unsigned long long)ctl, (unsigned long long)ld, (unsigned long long)gd, percentile(tot_hist, c, 0.5, mx),
         percentile(tot_hist, c, 0.9, mx), percentile(tot_hist, c, 0.99, mx), percentile(tot_hist, c, 0.999, mx),
         (unsigned long long)mx, (unsigned long long)first, (unsigned long long)last, secure, (unsigned long long)opens,
         (unsigned long long)cache_hits, (unsigned long long)origin_first, (unsigned long long)origin_last,
         (unsigned long long)origins_changed, cpu_seconds());
  fflush(stdout);
}

/* PART: the figures of some sockets (PORT) or of one parity of their sequence numbers (PORT:P). */
static void part(const char *spec) {
  static uint64_t h[NBUCKETS];
  memset(h, 0, sizeof h);
  uint64_t c = 0, u = 0, mx = 0, matched = 0;
  const char *p = spec;
  while (*p) {
    char *end;
    long port = strtol(p, &end, 10);
    int par = -1;
    if (*end == ':') {
      par = (int)strtol(end + 1, &end, 10) & 1;
    }
    for (int i = 0; i < nsocks; i++) {
      struct sock *s = &socks[i];
      if (s->port != port) continue;
      matched++;
      for (int q = 0; q < 2; q++) {
        if (par >= 0 && q != par) continue;
        for (unsigned b = 0; b < NBUCKETS; b++) h[b] += s->hist[q * NBUCKETS + b];
        c += s->pcount[q];
        u += s->puniq[q];
        if (s->pmax[q] > mx) mx = s->pmax[q];
      }
    }
    if (end == p) break;
    p = *end == ',' ? end + 1 : end;
  }
  printf("{\"part\":%llu,\"count\":%llu,\"uniq\":%llu,\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"p999\":%.0f,\"max\":%llu}\n",
         (unsigned long long)matched, (unsigned long long)c, (unsigned long long)u, percentile(h, c, 0.5, mx), percentile(h, c, 0.9, mx),
         percentile(h, c, 0.99, mx), percentile(h, c, 0.999, mx), (unsigned long long)mx);
  fflush(stdout);
}

/* LINK <port> <id> <hex key>: socket <port> opens link frames of link <id> under <key>. */
static void link_command(const char *args) {
  int port = 0;
  unsigned long id = 0;
  char hex[65] = "";
  struct sock *s = NULL;
  if (sscanf(args, "%d %lu %64s", &port, &id, hex) == 3 && id != 0 && id <= 0xffffffffUL && strlen(hex) == 64)
    for (int i = 0; i < nsocks; i++)
      if (socks[i].port == port) s = &socks[i];
  if (s == NULL) {
    fprintf(stderr, "recv: bad LINK \"%s\"\n", args);
    return;
  }
  int at = 0;
  while (at < s->nlinks && s->link_id[at] != (uint32_t)id) at++;
  if (at == 4) {
    fprintf(stderr, "recv: socket %d holds 4 links already\n", port);
    return;
  }
  for (int k = 0; k < 32; k++) {
    unsigned v;
    sscanf(hex + 2 * k, "%2x", &v);
    s->link_key[at][k] = (uint8_t)v;
  }
  s->link_id[at] = (uint32_t)id;
  if (at == s->nlinks) s->nlinks++;
  printf("OK LINK %d %lu\n", port, id);
  fflush(stdout);
}

/* GROUP <port> <id> <hex key>: socket <port> opens group frames of key <id> under <key>. */
static void group_command(const char *args) {
  int port = 0;
  unsigned long id = 0;
  char hex[65] = "";
  struct sock *s = NULL;
  if (sscanf(args, "%d %lu %64s", &port, &id, hex) == 3 && id != 0 && id <= 0xffffffffUL && strlen(hex) == 64)
    for (int i = 0; i < nsocks; i++)
      if (socks[i].port == port) s = &socks[i];
  if (s == NULL) {
    fprintf(stderr, "recv: bad GROUP \"%s\"\n", args);
    return;
  }
  int at = 0;
  while (at < s->ngroups && s->group_id[at] != (uint32_t)id) at++;
  if (at == s->ngroups) {
    if (s->ngroups < 4) s->ngroups++;
    else at = s->group_next, s->group_next = (s->group_next + 1) % 4;
  }
  for (int k = 0; k < 32; k++) {
    unsigned v;
    sscanf(hex + 2 * k, "%2x", &v);
    s->group_key[at][k] = (uint8_t)v;
  }
  s->group_id[at] = (uint32_t)id;
  printf("OK GROUP %d %lu\n", port, id);
  fflush(stdout);
}

/* Handles complete lines in the stdin buffer; returns 0 to quit. */
static int commands(char *buf, size_t *len) {
  char *nl;
  while ((nl = memchr(buf, '\n', *len)) != NULL) {
    *nl = 0;
    unsigned run;
    unsigned long long ms;
    if (sscanf(buf, "RUN %u %llu", &run, &ms) == 2) {
      reset(run, ms);
      printf("OK RUN %u\n", run);
      fflush(stdout);
    } else if (strcmp(buf, "DUMP") == 0) {
      dump(1);
    } else if (strcmp(buf, "TOTAL") == 0) {
      dump(0);
    } else if (strncmp(buf, "PART ", 5) == 0) {
      part(buf + 5);
    } else if (strncmp(buf, "LINK ", 5) == 0) {
      link_command(buf + 5);
    } else if (strncmp(buf, "GROUP ", 6) == 0) {
      group_command(buf + 6);
    } else if (strcmp(buf, "QUIT") == 0) {
      return 0;
    } else if (buf[0] != 0) {
      fprintf(stderr, "recv: unknown command \"%s\"\n", buf);
    }
    size_t used = (size_t)(nl - buf) + 1;
    memmove(buf, nl + 1, *len - used);
    *len -= used;
  }
  return 1;
}

static inline void on_datagram(struct sock *s, const uint8_t *p, size_t len, uint64_t now) {
  long off = stamp_offset(p, len);
  if (off < 0 || get_u32(p + off) != STAMP_MAGIC || get_u32(p + off + 4) != cur_run) {
    s->foreign++;
    return;
  }
  uint64_t seq = get_u64(p + off + 8), ts = get_u64(p + off + 16);
  uint64_t lat = now > ts ? now - ts : 0;
  unsigned q = (unsigned)(seq & 1);
  s->count++;
  s->pcount[q]++;
  s->bytes += len;
  if (seq < maxseq) {
    uint8_t bit = (uint8_t)(1u << (seq & 7));
    if (s->seen[seq >> 3] & bit) s->dup++;
    else {
      s->seen[seq >> 3] |= bit;
      s->uniq++;
      s->puniq[q]++;
    }
  } else {
    s->beyond++;
    s->uniq++;
    s->puniq[q]++;
  }
  if (s->count > 1 && seq < s->last_seq) s->ooo++;
  s->last_seq = seq;
  s->hist[q * NBUCKETS + bucket(lat)]++;
  if (lat > s->max_lat) s->max_lat = lat;
  if (lat > s->pmax[q]) s->pmax[q] = lat;
  if (!s->first_ns) s->first_ns = now;
  s->last_ns = now;
}

#ifdef BENCH_SODIUM
static uint8_t key[32];
static uint32_t key_id;

/* Frames that opened, by a hash of their nonce: the whole frame, and where
 * its datagram lies in the plaintext kept beside it. */
#define CACHE_SLOTS 1024
struct cached {
  uint8_t *frame, *plain;
  size_t len, cap;
  size_t doff, dlen; /* the datagram, within plain */
  uint64_t origin;
};
static struct cached cache[CACHE_SLOTS];

static inline unsigned slot_of(uint64_t a, uint64_t b) {
  uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
  return (unsigned)(h >> 54) & (CACHE_SLOTS - 1);
}

static inline unsigned nonce_slot(const uint8_t *f) { return slot_of(get_u64(f + FRAME_HEADER + 16), get_u64(f + FRAME_HEADER)); }

static inline void saw_origin(uint64_t o) {
  if (origin_first == 0) origin_first = o;
  else if (o != origin_last) origins_changed++;
  origin_last = o;
}

/* Keeps an opened frame and where its datagram lies in `plain`, for byte-identical copies. */
static void remember(struct cached *c, const uint8_t *f, size_t len, const uint8_t *plain, size_t plen, const struct envelope *e) {
  if (c->cap < len) {
    free(c->frame);
    free(c->plain);
    c->cap = len;
    c->frame = malloc(len);
    c->plain = malloc(len);
  }
  memcpy(c->frame, f, len);
  memcpy(c->plain, plain, plen);
  c->len = len;
  c->doff = (size_t)(e->datagram - plain);
  c->dlen = e->dlen;
  c->origin = e->origin;
}

static void on_frame(struct sock *s, const uint8_t *f, size_t len, uint64_t now) {
  static uint8_t plain[BUFSZ];
  if (len < 2 || f[0] != 0x75 || f[1] != 0x72) {
    s->unsealed++;
    return;
  }
  struct cached *c = NULL;
  if (!open_every && len >= FRAME_OVERHEAD) {
    c = &cache[nonce_slot(f)];
    if (c->len == len && memcmp(c->frame, f, len) == 0) {
      cache_hits++;
      saw_origin(c->origin);
      on_datagram(s, c->plain + c->doff, c->dlen, now);
      return;
    }
  }
  struct envelope e;
  opens++;
  int r = open_frame(key, key_id, f, len, plain, &e);
  if (r == BAD_ENVELOPE) {
    s->badenv++;
    return;
  }
  if (r != OPENED) {
    s->unopened++;
    return;
  }
  saw_origin(e.origin);
  on_datagram(s, e.datagram, e.dlen, now);
  if (c != NULL) remember(c, f, len, plain, len - FRAME_OVERHEAD, &e);
}

/* Identity mode: a group frame, opened under the group key it names if this
 * socket holds it (a byte-identical copy another socket opened is taken from
 * the cache: as authentic as the first, and under a key this socket holds). */
static void on_group_frame(struct sock *s, const uint8_t *f, size_t len, uint64_t now) {
  static uint8_t plain[BUFSZ];
  uint32_t id = get_u32(f + 4);
  int at = 0;
  while (at < s->ngroups && s->group_id[at] != id) at++;
  if (at == s->ngroups) {
    s->unopened++;
    return;
  }
  struct cached *c = NULL;
  if (!open_every) {
    c = &cache[slot_of(get_u64(f + 8), id)];
    if (c->len == len && memcmp(c->frame, f, len) == 0) {
      cache_hits++;
      s->group_data++;
      saw_origin(c->origin);
      on_datagram(s, c->plain + c->doff, c->dlen, now);
      return;
    }
  }
  struct envelope e;
  opens++;
  int r = open_group_frame(s->group_key[at], id, f, len, plain, &e);
  if (r == NOT_DATA) s->control++;
  else if (r == BAD_ENVELOPE) s->badenv++;
  else if (r != OPENED) s->unopened++;
  else {
    s->group_data++;
    saw_origin(e.origin);
    on_datagram(s, e.datagram, e.dlen, now);
    if (c != NULL) remember(c, f, len, plain, len - LINK_OVERHEAD, &e);
  }
}

/* Identity mode: a link frame for this socket, opened under the key of the link it names; or a group frame. */
static void on_link_frame(struct sock *s, const uint8_t *f, size_t len, uint64_t now) {
  static uint8_t plain[BUFSZ];
  if (len < 2 || f[0] != 0x75 || f[1] != 0x72) {
    s->unsealed++;
    return;
  }
  if (len >= LINK_OVERHEAD && f[2] == LINK_VERSION && f[3] == GROUP_TYPE_DATA) {
    on_group_frame(s, f, len, now);
    return;
  }
  uint32_t id = len >= LINK_HEADER ? get_u32(f + 4) : 0;
  int at = 0;
  while (at < s->nlinks && s->link_id[at] != id) at++;
  if (at == s->nlinks) {
    s->unopened++;
    return;
  }
  struct envelope e;
  opens++;
  int r = open_link_frame(s->link_key[at], id, f, len, plain, &e);
  if (r == NOT_DATA) s->control++;
  else if (r == BAD_ENVELOPE) s->badenv++;
  else if (r != OPENED) s->unopened++;
  else {
    s->link_data++;
    saw_origin(e.origin);
    on_datagram(s, e.datagram, e.dlen, now);
  }
}
#endif

static inline void on_input(struct sock *s, const uint8_t *p, size_t len, uint64_t now) {
#ifdef BENCH_SODIUM
  if (links) {
    on_link_frame(s, p, len, now);
    return;
  }
  if (secure) {
    on_frame(s, p, len, now);
    return;
  }
#endif
  on_datagram(s, p, len, now);
}

#define USAGE "usage: recv --count N --ports-out FILE [--rcvbuf BYTES] [--key-file K [--open-every] | --links]"

int main(int argc, char **argv) {
  int count = 1, rcvbuf = 4 << 20;
  const char *ports_out = NULL, *key_file = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--open-every") == 0) {
      open_every = 1;
      continue;
    }
    if (strcmp(argv[i], "--links") == 0) {
      sodium_up();
      links = secure = 1;
      continue;
    }
    if (i + 1 >= argc) die(USAGE);
    if (strcmp(argv[i], "--count") == 0) count = atoi(argv[++i]);
    else if (strcmp(argv[i], "--rcvbuf") == 0) rcvbuf = atoi(argv[++i]);
    else if (strcmp(argv[i], "--ports-out") == 0) ports_out = argv[++i];
    else if (strcmp(argv[i], "--key-file") == 0) key_file = argv[++i];
    else die("unknown option %s", argv[i]);
  }
  if (count < 1 || ports_out == NULL) die(USAGE);
  if (key_file != NULL) {
    sodium_up();
#ifdef BENCH_SODIUM
    load_key(key_file, key);
    key_id = key_id_of(key);
    secure = 1;
#endif
  }
  nsocks = count;
  socks = calloc((size_t)count, sizeof *socks);
  int ep = epoll_create1(0);
  FILE *pf = fopen(ports_out, "w");
  if (pf == NULL) die("cannot write %s: %s", ports_out, strerror(errno));
  for (int i = 0; i < count; i++) {
    struct sock *s = &socks[i];
    s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket %d: %s (raise ulimit -n?)", i, strerror(errno));
    set_buf(s->fd, SO_RCVBUF, rcvbuf);
    int one = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    struct sockaddr_in a;
    parse_loopback("127.0.0.1:0", &a, 1);
    if (bind(s->fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind: %s", strerror(errno));
    socklen_t al = sizeof a;
    getsockname(s->fd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    s->hist = calloc(2 * NBUCKETS, sizeof *s->hist);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    fprintf(pf, "%d\n", s->port);
  }
  fclose(pf);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
  reset(0, 1);
  printf("READY %d\n", count);
  fflush(stdout);

  static uint8_t bufs[BATCH][BUFSZ];
  static char ctrl[BATCH][CMSG_SPACE(sizeof(uint32_t))];
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  char cmd[4096];
  size_t cmdlen = 0;
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, 500);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int e = 0; e < n; e++) {
      uint32_t idx = evs[e].data.u32;
      if (idx == UINT32_MAX) {
        ssize_t r = read(0, cmd + cmdlen, sizeof cmd - 1 - cmdlen);
        if (r == 0) return 0; /* the driver is gone */
        if (r > 0) {
          cmdlen += (size_t)r;
          if (!commands(cmd, &cmdlen)) return 0;
          if (cmdlen == sizeof cmd - 1) cmdlen = 0;
        }
        continue;
      }
      struct sock *s = &socks[idx];
      for (int round = 0; round < 4; round++) {
        for (int j = 0; j < BATCH; j++) {
          iov[j].iov_base = bufs[j];
          iov[j].iov_len = BUFSZ;
          memset(&msgs[j].msg_hdr, 0, sizeof msgs[j].msg_hdr);
          msgs[j].msg_hdr.msg_iov = &iov[j];
          msgs[j].msg_hdr.msg_iovlen = 1;
          msgs[j].msg_hdr.msg_control = ctrl[j];
          msgs[j].msg_hdr.msg_controllen = sizeof ctrl[j];
        }
        int r = recvmmsg(s->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) break;
        uint64_t now = mono_ns();
        for (int j = 0; j < r; j++) {
          on_input(s, bufs[j], msgs[j].msg_len, now);
          struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[j].msg_hdr);
          if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
            uint32_t v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            s->ovfl_last = v;
          }
        }
        if (r < BATCH) break;
      }
    }
  }
}

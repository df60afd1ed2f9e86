/* gen: the bench's load generator.
 *
 * Sends the datagrams of a pool file (written by bench/lib/pool.ts: synthetic
 * uWSGI cache updates or a capture's payloads) to one or more 127.0.0.1
 * targets, with sendmmsg, stamping each copy with the run id, a sequence
 * number and its CLOCK_MONOTONIC send time (see common.h).
 *
 * Pacing: --rate R sends R datagrams/s cycling through the pool;
 * --timeline follows the pool's own timestamps divided by --speed (0 = as
 * fast as possible), looping with --loop. Between bursts it sleeps
 * (clock_nanosleep) at least --tick-us, so it never spins a core.
 * With several --to targets each datagram goes to every target with the same
 * sequence number (direct mode: measures the receivers without a fan-out);
 * with --spread each goes to one of them instead, in turn: datagram (sequence
 * number) i to target i mod N (cluster mode: input split over repeaters).
 *
 * --no-stamp sends the pool byte for byte (replaying a capture into real nodes).
 *
 * --unique-keys writes the run id and the sequence number into the first 12
 * bytes of every set's key (keys of at least 12 bytes), so that every set is
 * of a key never seen before: a repeater's live state then grows until it is
 * full and evicts its oldest entry on every set from then on.
 * --expires-in S rewrites every set's expiry (decimal unix seconds) to the
 * send time + S when the new value has as many digits as the field: a pool
 * built minutes before a measurement would otherwise carry sets that have
 * expired (which a repeater counts and does not keep). The sealed path does
 * the same to the datagram before sealing it.
 *
 * Secure mode (--key-file K [--channel-key ssl]): every datagram, once
 * stamped, is wrapped in an Envelope (its own sequence number, send time)
 * and sealed into a udprepeater frame (sealed.h) with a fresh nonce; the
 * same frame goes to every target. A pool of pre-sealed frames could not
 * be cycled: the repeater's replay window would drop the second lap.
 *
 * Identity mode (--link-key FILE --link-id ID --link-counter N): the same,
 * sealed as a link frame (sealed.h) under the writer's link key k_ir (32 raw
 * bytes in FILE, from the bench's handshake), carrying the repeater's link
 * id, counters from N + 1 (above anything sealed on that link before).
 * Prints one JSON object on stdout when done (duration, --count, end of
 * pool, or SIGTERM/SIGINT). */
#include "common.h"
#include "sealed.h"

#include <signal.h>
#include <sys/prctl.h>

#define POOL_MAGIC "UDPBPOOL"

struct rec {
  uint64_t t;
  uint32_t len;
  int32_t stamp;
  uint8_t *data;
};

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) { (void)sig; stop_flag = 1; }

static struct rec *recs;
static uint64_t nrecs, span_ns;
static int timeline, loop_pool, no_stamp, spread, unique_keys;
static double expires_in = -1;
static double rate, speed, period_ns;

static void load_pool(const char *path, uint32_t *maxlen) {
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open pool %s: %s", path, strerror(errno));
  uint8_t hdr[24];
  if (fread(hdr, 1, 24, f) != 24 || memcmp(hdr, POOL_MAGIC, 8) != 0) die("%s is not a pool file", path);
  if (get_u32(hdr + 8) != 1) die("%s: unsupported pool version", path);
  nrecs = get_u32(hdr + 12);
  span_ns = get_u64(hdr + 16);
  if (nrecs == 0) die("%s: empty pool", path);
  recs = calloc(nrecs, sizeof *recs);
  *maxlen = 0;
  for (uint64_t i = 0; i < nrecs; i++) {
    uint8_t rh[16];
    if (fread(rh, 1, 16, f) != 16) die("%s: truncated", path);
    recs[i].t = get_u64(rh);
    recs[i].len = get_u32(rh + 8);
    recs[i].stamp = (int32_t)get_u32(rh + 12);
    if (recs[i].len > 65507) die("%s: record %llu too large", path, (unsigned long long)i);
    if (recs[i].stamp >= 0 && (uint64_t)recs[i].stamp + STAMP_LEN > recs[i].len) die("%s: bad stamp offset", path);
    recs[i].data = malloc(recs[i].len ? recs[i].len : 1);
    if (fread(recs[i].data, 1, recs[i].len, f) != recs[i].len) die("%s: truncated", path);
    if (recs[i].len > *maxlen) *maxlen = recs[i].len;
  }
  fclose(f);
}

/* --unique-keys and --expires-in, on the copy about to be sent (d, len). */
static inline void freshen(uint8_t *d, size_t len, uint32_t run, uint64_t seq, uint64_t now_s) {
  if (unique_keys && len >= 8 && d[0] == UWSGI_CACHE && d[3] == UWSGI_SET) {
    size_t klen = get_u16(d + 4);
    if (klen >= 12 && 6 + klen <= len) {
      put_u32(d + 6, run);
      put_u64(d + 10, seq);
    }
  }
  if (expires_in >= 0) {
    size_t elen = 0;
    long at = expiry_offset(d, len, &elen);
    if (at >= 0 && elen > 1) put_decimal(d + at, elen, now_s + (uint64_t)expires_in);
  }
}

/* When (ns after start) datagram i is due. */
static inline uint64_t due(uint64_t i) {
  double d = 0;
  if (timeline) {
    uint64_t lap = i / nrecs;
    if (speed > 0) d = ((double)lap * (double)span_ns + (double)recs[i % nrecs].t) / speed;
  }
  if (rate > 0) {
    double r = (double)i * period_ns;
    if (r > d) d = r;
  }
  return (uint64_t)d;
}

static void usage(void) {
  fprintf(stderr,
          "usage: gen --pool FILE --to 127.0.0.1:PORT [--to ...] (--rate N | --timeline [--speed X] [--loop])\n"
          "           [--duration S] [--count N] [--run ID] [--batch N] [--tick-us N] [--sndbuf BYTES] [--spread]\n"
          "           [--unique-keys] [--expires-in S]\n"
          "           [--key-file K [--channel-key KEY]]   (secure mode: send sealed frames)\n"
          "           [--link-key FILE --link-id ID --link-counter N [--channel-key KEY]]   (identity mode: send link frames)\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *pool = NULL;
  struct sockaddr_in *to = calloc((size_t)argc, sizeof *to);
  size_t nto = 0;
  double duration = 5;
  uint64_t count = 0;
  uint32_t run = 1;
  unsigned batch = 64, tick_us = 50;
  int sndbuf = 4 << 20;
  const char *key_file = NULL, *channel_key = "ssl", *link_key = NULL;
  uint32_t link_id = 0;
  uint64_t link_counter = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && (v != NULL || (usage(), 0)) && ++i)
    if (ARG("--pool")) pool = v;
    else if (ARG("--to")) parse_loopback(v, &to[nto++], 0);
    else if (ARG("--rate")) rate = atof(v);
    else if (strcmp(a, "--timeline") == 0) timeline = 1;
    else if (ARG("--speed")) speed = atof(v);
    else if (strcmp(a, "--loop") == 0) loop_pool = 1;
    else if (strcmp(a, "--no-stamp") == 0) no_stamp = 1;
    else if (strcmp(a, "--spread") == 0) spread = 1;
    else if (strcmp(a, "--unique-keys") == 0) unique_keys = 1;
    else if (ARG("--expires-in")) expires_in = atof(v);
    else if (ARG("--duration")) duration = atof(v);
    else if (ARG("--count")) count = strtoull(v, NULL, 10);
    else if (ARG("--run")) run = (uint32_t)strtoul(v, NULL, 10);
    else if (ARG("--batch")) batch = (unsigned)atoi(v);
    else if (ARG("--tick-us")) tick_us = (unsigned)atoi(v);
    else if (ARG("--sndbuf")) sndbuf = atoi(v);
    else if (ARG("--key-file")) key_file = v;
    else if (ARG("--channel-key")) channel_key = v;
    else if (ARG("--link-key")) link_key = v;
    else if (ARG("--link-id")) link_id = (uint32_t)strtoul(v, NULL, 10);
    else if (ARG("--link-counter")) link_counter = strtoull(v, NULL, 10);
    else usage();
#undef ARG
  }
  if (pool == NULL || nto == 0 || duration <= 0 || batch == 0 || rate < 0 || speed < 0) usage();
  if (!timeline && rate <= 0) die("give --rate N (datagrams/s) or --timeline");
  period_ns = rate > 0 ? 1e9 / rate : 0;
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);

  uint32_t maxlen;
  load_pool(pool, &maxlen);
  if (nto < 2) spread = 0;
  /* Copies per datagram: every target, or (--spread) one. */
  const size_t per = spread ? 1 : nto;
  if (batch * nto > 65536) batch = (unsigned)(65536 / nto) ? (unsigned)(65536 / nto) : 1;

  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  set_buf(fd, SO_SNDBUF, sndbuf);
  int connected = nto == 1;
  if (connected && connect(fd, (struct sockaddr *)&to[0], sizeof to[0]) != 0) die("connect: %s", strerror(errno));

  /* Secure mode: the stamped datagram goes into an Envelope in `plain`, sealed into `slots`. */
  if (key_file != NULL && link_key != NULL) die("--key-file or --link-key, not both");
  int secure = key_file != NULL || link_key != NULL;
  const int link = link_key != NULL;
  (void)link;
#ifdef BENCH_SODIUM
  static struct sealer sealer;
#endif
  uint8_t *plain = NULL;
  size_t slot_len = maxlen;
  if (secure) {
    sodium_up();
#ifdef BENCH_SODIUM
    if (link) {
      /* A link sealer: its own origin and channel as sealer_init draws them, the link's key, id and counter. */
      memset(&sealer, 0, sizeof sealer);
      randombytes_buf(&sealer.origin, sizeof sealer.origin);
      if (sealer.origin == 0) sealer.origin = 1;
      sealer.channel_len = strlen(channel_key);
      if (sealer.channel_len > MAX_CHANNEL) die("channel key longer than %d bytes", MAX_CHANNEL);
      memcpy(sealer.channel, channel_key, sealer.channel_len);
      sealer_link(&sealer, link_key, link_id, link_counter);
    } else sealer_init(&sealer, key_file, channel_key);
    if ((size_t)maxlen + ENVELOPE_MAX_HEAD + FRAME_OVERHEAD > MAX_UDP_PAYLOAD)
      die("a pool datagram of %u bytes would not fit a sealed frame (at most %d)", maxlen, MAX_UDP_PAYLOAD - ENVELOPE_MAX_HEAD - FRAME_OVERHEAD);
    plain = malloc((size_t)maxlen + ENVELOPE_MAX_HEAD);
    slot_len = (size_t)maxlen + ENVELOPE_MAX_HEAD + FRAME_OVERHEAD;
#endif
  }
  (void)plain;
  (void)channel_key;
  (void)link_id;
  (void)link_counter;
  uint8_t *slots = malloc((size_t)batch * slot_len + 1);
  struct iovec *iov = calloc(batch, sizeof *iov);
  struct mmsghdr *msgs = calloc((size_t)batch * nto, sizeof *msgs);

  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  const uint64_t dur_ns = (uint64_t)(duration * 1e9), tick_ns = (uint64_t)tick_us * 1000;
  uint64_t sent = 0, stamped = 0, copies = 0, errors = 0, bursts = 0, max_lag = 0;
  int last_errno = 0;
  const uint64_t t0 = mono_ns();
  uint64_t t_last = t0;
  while (!stop_flag) {
    uint64_t now = mono_ns(), el = now - t0;
    if (el >= dur_ns) break;
    if (count && sent >= count) break;
    if (timeline && !loop_pool && sent >= nrecs) break;
    unsigned k = 0;
    while (k < batch && (!count || sent + k < count) && (!timeline || loop_pool || sent + k < nrecs) && due(sent + k) <= el) k++;
    if (k == 0) {
      uint64_t d = due(sent), wake = d > el + tick_ns ? d : el + tick_ns;
      if (wake > dur_ns) wake = dur_ns;
      uint64_t abs_ns = t0 + wake;
      struct timespec ts = {(time_t)(abs_ns / 1000000000ull), (long)(abs_ns % 1000000000ull)};
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
      continue;
    }
    uint64_t lag = el - due(sent);
    if (lag > max_lag) max_lag = lag;
    uint64_t ts = mono_ns();
    const uint64_t now_s = (uint64_t)time(NULL);
#ifdef BENCH_SODIUM
    uint64_t now_ms = secure ? realtime_ms() : 0;
#endif
    for (unsigned j = 0; j < k; j++) {
      const struct rec *r = &recs[(sent + j) % nrecs];
      uint8_t *slot = slots + (size_t)j * slot_len;
      size_t len = r->len;
      if (!secure) {
        memcpy(slot, r->data, r->len);
        freshen(slot, r->len, run, sent + j, now_s);
        if (r->stamp >= 0 && !no_stamp) {
          write_stamp(slot + r->stamp, run, sent + j, ts);
          stamped++;
        }
      } else {
#ifdef BENCH_SODIUM
        size_t head = envelope_head(&sealer, plain, now_ms, r->len);
        memcpy(plain + head, r->data, r->len);
        freshen(plain + head, r->len, run, sent + j, now_s);
        if (r->stamp >= 0 && !no_stamp) {
          write_stamp(plain + head + r->stamp, run, sent + j, ts);
          stamped++;
        }
        len = link ? seal_link_frame(&sealer, slot, plain, head + r->len) : seal_frame(&sealer, slot, plain, head + r->len);
#endif
      }
      iov[j].iov_base = slot;
      iov[j].iov_len = len;
      for (size_t c = 0; c < per; c++) {
        size_t t = spread ? (size_t)((sent + j) % nto) : c;
        struct msghdr *h = &msgs[(size_t)j * per + c].msg_hdr;
        memset(h, 0, sizeof *h);
        h->msg_iov = &iov[j];
        h->msg_iovlen = 1;
        if (!connected) {
          h->msg_name = &to[t];
          h->msg_namelen = sizeof to[t];
        }
      }
    }
    size_t total = (size_t)k * per, off = 0;
    while (off < total) {
      size_t n = total - off > 1024 ? 1024 : total - off;
      int r = sendmmsg(fd, msgs + off, (unsigned)n, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        last_errno = errno;
        errors++;
        off++; /* this copy is lost; go on with the next */
        continue;
      }
      off += (size_t)r;
      copies += (size_t)r;
    }
    sent += k;
    bursts++;
    t_last = mono_ns();
  }
  double elapsed = (double)(t_last - t0) / 1e9;
  char sealed_info[160] = "";
#ifdef BENCH_SODIUM
  if (secure)
    snprintf(sealed_info, sizeof sealed_info, "\"key_id\":\"%08x\",\"origin\":\"%016llx\",\"sealed\":%llu,\"counter\":%llu,", sealer.key_id,
             (unsigned long long)sealer.origin, (unsigned long long)sealer.sequence, (unsigned long long)sealer.counter);
#endif
  printf("{%s\"sent\":%llu,\"stamped\":%llu,\"copies\":%llu,\"errors\":%llu,\"last_error\":\"%s\",\"targets\":%zu,\"spread\":%d,"
         "\"bursts\":%llu,\"t0_ns\":%llu,\"t_end_ns\":%llu,\"elapsed_s\":%.6f,\"rate\":%.1f,\"max_lag_ms\":%.3f,\"cpu_s\":%.3f}\n",
         sealed_info, (unsigned long long)sent, (unsigned long long)stamped, (unsigned long long)copies, (unsigned long long)errors,
         last_errno ? strerror(last_errno) : "", nto, spread, (unsigned long long)bursts, (unsigned long long)t0,
         (unsigned long long)t_last, elapsed, elapsed > 0 ? (double)sent / elapsed : 0.0, (double)max_lag / 1e6, cpu_seconds());
  return 0;
}

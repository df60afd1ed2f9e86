/* floor: the smallest useful UDP fan-out, the bench's reference.
 *
 * recvmmsg a batch from one listening socket, then sendmmsg the whole batch
 * on each output's connected socket. No parsing, no queueing, no policy:
 * what the kernel charges for moving the datagrams, plus as little as C
 * can add. udprepeater's figures are reported as ratios to this.
 *
 * Secure mode (--key-file K [--channel-key ssl]): the same work DESIGN.md
 * asks of udprepeater, and no more. Each input frame is opened once (a frame
 * that does not open is counted and dropped), its datagram put in a new
 * Envelope (the floor's own origin, sequence, send time) and sealed once
 * (sealed.h); that one frame goes to every output.
 *
 * Prints "READY <port>" once listening. stdin: "DUMP" prints a JSON line of
 * counters; EOF exits. */
#include "common.h"
#include "sealed.h"

#include <poll.h>

#define BATCH 64
#define BUFSZ 65536

static uint64_t received, sent, errors, ovfl, unopened, badenv;

static void dump(void) {
  printf("{\"received\":%llu,\"sent\":%llu,\"errors\":%llu,\"rxq_drops\":%llu,\"unopened\":%llu,\"badenv\":%llu,\"cpu_s\":%.3f}\n",
         (unsigned long long)received, (unsigned long long)sent, (unsigned long long)errors, (unsigned long long)ovfl,
         (unsigned long long)unopened, (unsigned long long)badenv, cpu_seconds());
  fflush(stdout);
}

/* Reads stdin if it has something; returns 0 on EOF. */
static int control(char *cmd, size_t *len) {
  ssize_t r = read(0, cmd + *len, 4095 - *len);
  if (r == 0) return 0;
  if (r < 0) return errno == EAGAIN || errno == EINTR;
  *len += (size_t)r;
  char *nl;
  while ((nl = memchr(cmd, '\n', *len)) != NULL) {
    *nl = 0;
    if (strcmp(cmd, "DUMP") == 0) dump();
    else if (strcmp(cmd, "QUIT") == 0) return 0;
    size_t used = (size_t)(nl - cmd) + 1;
    memmove(cmd, nl + 1, *len - used);
    *len -= used;
  }
  if (*len >= 4095) *len = 0;
  return 1;
}

int main(int argc, char **argv) {
  const char *listen_at = "127.0.0.1:0", *to_file = NULL;
  const char *key_file = NULL, *channel_key = "ssl";
  int rcvbuf = 4 << 20, sndbuf = 0;
  struct sockaddr_in *outs = calloc((size_t)argc, sizeof *outs);
  size_t nout = 0, cap = (size_t)argc;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc)
      die("usage: floor [--listen 127.0.0.1:PORT] (--to 127.0.0.1:PORT ... | --to-file FILE) [--rcvbuf B] [--sndbuf B] "
          "[--key-file K [--channel-key KEY]]");
    const char *a = argv[i], *v = argv[++i];
    if (strcmp(a, "--listen") == 0) listen_at = v;
    else if (strcmp(a, "--to") == 0) parse_loopback(v, &outs[nout++], 0);
    else if (strcmp(a, "--to-file") == 0) to_file = v;
    else if (strcmp(a, "--rcvbuf") == 0) rcvbuf = atoi(v);
    else if (strcmp(a, "--sndbuf") == 0) sndbuf = atoi(v);
    else if (strcmp(a, "--key-file") == 0) key_file = v;
    else if (strcmp(a, "--channel-key") == 0) channel_key = v;
    else die("unknown option %s", a);
  }
  if (to_file != NULL) {
    FILE *f = fopen(to_file, "r");
    if (f == NULL) die("cannot read %s: %s", to_file, strerror(errno));
    char line[128];
    while (fgets(line, sizeof line, f)) {
      line[strcspn(line, "\r\n")] = 0;
      if (line[0] == 0) continue;
      if (nout == cap) outs = realloc(outs, (cap *= 2) * sizeof *outs);
      char addr[160];
      snprintf(addr, sizeof addr, strchr(line, ':') ? "%s" : "127.0.0.1:%s", line);
      parse_loopback(addr, &outs[nout++], 0);
    }
    fclose(f);
  }
  if (nout == 0) die("no outputs: give --to or --to-file");
  int secure = key_file != NULL;
#ifdef BENCH_SODIUM
  static struct sealer sealer;
  static uint8_t plain[BUFSZ], frames[BATCH][BUFSZ];
  if (secure) {
    sodium_up();
    sealer_init(&sealer, key_file, channel_key);
  }
#else
  if (secure) sodium_up();
  (void)channel_key;
#endif

  struct sockaddr_in la;
  parse_loopback(listen_at, &la, 1);
  int in = socket(AF_INET, SOCK_DGRAM, 0);
  set_buf(in, SO_RCVBUF, rcvbuf);
  int one = 1;
  setsockopt(in, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
  if (bind(in, (struct sockaddr *)&la, sizeof la) != 0) die("bind %s: %s", listen_at, strerror(errno));
  socklen_t al = sizeof la;
  getsockname(in, (struct sockaddr *)&la, &al);

  int *fds = malloc(nout * sizeof *fds);
  for (size_t i = 0; i < nout; i++) {
    fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
    if (fds[i] < 0) die("socket %zu: %s (raise ulimit -n?)", i, strerror(errno));
    set_buf(fds[i], SO_SNDBUF, sndbuf);
    if (connect(fds[i], (struct sockaddr *)&outs[i], sizeof outs[i]) != 0) die("connect: %s", strerror(errno));
  }
  printf("READY %d\n", ntohs(la.sin_port));
  fflush(stdout);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

  static uint8_t bufs[BATCH][BUFSZ];
  static char ctrl[BATCH][CMSG_SPACE(sizeof(uint32_t))];
  struct iovec riov[BATCH], siov[BATCH];
  struct mmsghdr rmsgs[BATCH], smsgs[BATCH];
  for (int j = 0; j < BATCH; j++) {
    riov[j].iov_base = siov[j].iov_base = bufs[j];
    riov[j].iov_len = BUFSZ;
    memset(&smsgs[j], 0, sizeof smsgs[j]);
    smsgs[j].msg_hdr.msg_iov = &siov[j];
    smsgs[j].msg_hdr.msg_iovlen = 1;
  }
  char cmd[4096];
  size_t cmdlen = 0;
  unsigned long iter = 0;
  for (;;) {
    for (int j = 0; j < BATCH; j++) {
      memset(&rmsgs[j].msg_hdr, 0, sizeof rmsgs[j].msg_hdr);
      rmsgs[j].msg_hdr.msg_iov = &riov[j];
      rmsgs[j].msg_hdr.msg_iovlen = 1;
      rmsgs[j].msg_hdr.msg_control = ctrl[j];
      rmsgs[j].msg_hdr.msg_controllen = sizeof ctrl[j];
    }
    int n = recvmmsg(in, rmsgs, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) die("recvmmsg: %s", strerror(errno));
      struct pollfd p[2] = {{.fd = in, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
      poll(p, 2, -1);
      if (p[1].revents && !control(cmd, &cmdlen)) return 0;
      continue;
    }
    received += (uint64_t)n;
    for (int j = 0; j < n; j++) {
      siov[j].iov_len = rmsgs[j].msg_len;
      struct cmsghdr *c = CMSG_FIRSTHDR(&rmsgs[j].msg_hdr);
      if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
        uint32_t v;
        memcpy(&v, CMSG_DATA(c), sizeof v);
        ovfl = v;
      }
    }
    int nsend = n;
#ifdef BENCH_SODIUM
    if (secure) {
      /* Open each frame once, seal its datagram once; keep the frames that opened, in order. */
      uint64_t now_ms = realtime_ms();
      nsend = 0;
      for (int j = 0; j < n; j++) {
        struct envelope e;
        int r = open_frame(sealer.key, sealer.key_id, bufs[j], rmsgs[j].msg_len, plain, &e);
        if (r != OPENED) {
          if (r == BAD_ENVELOPE) badenv++;
          else unopened++;
          continue;
        }
        if (e.dlen + ENVELOPE_MAX_HEAD + FRAME_OVERHEAD > MAX_UDP_PAYLOAD) {
          unopened++;
          continue;
        }
        /* The datagram lies inside `plain`: build the new Envelope in front of a copy. */
        static uint8_t env[BUFSZ];
        size_t head = envelope_head(&sealer, env, now_ms, e.dlen);
        memcpy(env + head, e.datagram, e.dlen);
        siov[nsend].iov_base = frames[nsend];
        siov[nsend].iov_len = seal_frame(&sealer, frames[nsend], env, head + e.dlen);
        nsend++;
      }
    }
#endif
    for (size_t o = 0; o < nout; o++) {
      int off = 0;
      while (off < nsend) {
        int r = sendmmsg(fds[o], smsgs + off, (unsigned)(nsend - off), 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          errors++;
          off++;
          continue;
        }
        off += r;
        sent += (uint64_t)r;
      }
    }
    /* Under sustained load the poll above never runs: look at stdin now and then. */
    if ((++iter & 255) == 0) {
      struct pollfd p = {.fd = 0, .events = POLLIN};
      if (poll(&p, 1, 0) > 0 && !control(cmd, &cmdlen)) return 0;
    }
  }
}

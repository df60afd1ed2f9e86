// udpfast: the optional native datagram path of udprepeater.
//
// Two things Node's dgram cannot do cheaply:
//  - receive in batches: recvmmsg() fills up to SLOTS datagrams into one
//    ArrayBuffer and JS is entered once per batch, not once per datagram;
//  - send one datagram to many destinations: sendmmsg() on a shared,
//    unconnected sender socket, one message per destination, up to
//    SEND_CHUNK messages per system call; and a whole receive batch's
//    outputs at once (sendMany: many datagrams, many destinations, one
//    sendmmsg per sender socket).
// Everything else (parsing, policy, registry, crypto) stays in TypeScript.
// The pure TypeScript path (node:dgram) is used when this addon is missing.
//
// Invariants:
//  - every socket made here is non-blocking and close-on-exec; IPv6 sockets
//    are IPV6_V6ONLY;
//  - nothing here blocks, and nothing throws past JS except on bad arguments
//    (TypeError, RangeError) or a failed socket/setsockopt/bind/getsockopt
//    (an Error with code, errno and syscall);
//  - a datagram in a listener's arena, and its meta record, is valid only
//    during the onBatch call that reports it: the next batch overwrites it;
//  - a listener's C struct is freed only when BOTH its JS external has been
//    finalized AND its uv_close callback has run (refs counts the two). Until
//    the close completes it holds strong references to its callbacks, arena,
//    meta and result object, so the external cannot be finalized earlier;
//  - a listener's fd is closed only in the uv_close callback, once libuv has
//    forgotten it, and only if the number still refers to the listener's
//    socket (same inode): a number closed and reused behind our back is left
//    alone;
//  - after unlisten() returns, no JS callback runs for that listener except
//    the onClosed callbacks, once the close has completed;
//  - libuv aborts the process if it is asked to watch an fd that is not open
//    (epoll_ctl ADD fails), so a poll is (re)started only on an fd checked to
//    be the listener's socket. Never give a listener's fd to closeFd().

#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <limits.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOTS 32
#define SLOT_SIZE 65536
/* Per-slot metadata, as int32: length (-1 = truncated), family (4 or 6),
 * port, 4 words of address bytes (network order), 1 word reserved (0). */
#define META_WORDS 8
#define ARENA_BYTES ((size_t)SLOTS * SLOT_SIZE)
#define META_BYTES ((size_t)SLOTS * META_WORDS * sizeof(int32_t))
/* recvmmsg rounds per readable event before yielding to the event loop. */
#define MAX_ROUNDS 16

/* sendBatch: bytes per destination record and messages per sendmmsg. */
#define DEST_BYTES 20
#define SEND_CHUNK 1024
/* sendBatch remembers this many full sender fds per call. */
#define FULL_MEMO 16

/* drainSender: int32 words per error record; datagrams discarded per call. */
#define ERR_WORDS 7
#define DISCARD_BATCH 64
#define DISCARD_MAX 4096

static const napi_type_tag LISTENER_TAG = {0x7564706661737421ULL, 0x6c697374656e6572ULL};

/* ---- errors and arguments ---------------------------------------------- */

#define ERRNO_NAME(e) {e, #e}
static const struct {
  int n;
  const char *name;
} ERRNO_NAMES[] = {
    ERRNO_NAME(EPERM),        ERRNO_NAME(ENOENT),          ERRNO_NAME(EINTR),
    ERRNO_NAME(EBADF),        ERRNO_NAME(EAGAIN),          ERRNO_NAME(ENOMEM),
    ERRNO_NAME(EACCES),       ERRNO_NAME(EFAULT),          ERRNO_NAME(EEXIST),
    ERRNO_NAME(ENODEV),       ERRNO_NAME(EINVAL),          ERRNO_NAME(ENFILE),
    ERRNO_NAME(EMFILE),       ERRNO_NAME(EPIPE),           ERRNO_NAME(ENOTSOCK),
    ERRNO_NAME(EDESTADDRREQ), ERRNO_NAME(EMSGSIZE),        ERRNO_NAME(EPROTOTYPE),
    ERRNO_NAME(ENOPROTOOPT),  ERRNO_NAME(EPROTONOSUPPORT), ERRNO_NAME(EOPNOTSUPP),
    ERRNO_NAME(EAFNOSUPPORT), ERRNO_NAME(EADDRINUSE),      ERRNO_NAME(EADDRNOTAVAIL),
    ERRNO_NAME(ENETDOWN),     ERRNO_NAME(ENETUNREACH),     ERRNO_NAME(ECONNRESET),
    ERRNO_NAME(ENOBUFS),      ERRNO_NAME(ETIMEDOUT),       ERRNO_NAME(ECONNREFUSED),
    ERRNO_NAME(EHOSTDOWN),    ERRNO_NAME(EHOSTUNREACH),    ERRNO_NAME(EPROTO),
};

static void errno_code(int err, char *buf, size_t size) {
  for (size_t i = 0; i < sizeof ERRNO_NAMES / sizeof ERRNO_NAMES[0]; i++) {
    if (ERRNO_NAMES[i].n == err) {
      snprintf(buf, size, "%s", ERRNO_NAMES[i].name);
      return;
    }
  }
  snprintf(buf, size, "E%d", err);
}

/* Throws Error("<syscall> <CODE>: <strerror>") with code, errno (positive)
 * and syscall properties. */
static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char code[32], msg[256];
  napi_value code_v, msg_v, error, v;
  errno_code(err, code, sizeof code);
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, code, strerror(err));
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &error) != napi_ok) {
    napi_throw_error(env, code, msg);
    return NULL;
  }
  if (napi_create_int32(env, err, &v) == napi_ok) napi_set_named_property(env, error, "errno", v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, error, "syscall", v);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *fn, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "udpfast.%s: %s", fn, what);
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static napi_value throw_range(napi_env env, const char *fn, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "udpfast.%s: %s", fn, what);
  napi_throw_range_error(env, NULL, msg);
  return NULL;
}

/* Keeps an exception an N-API call left pending, or throws a generic one. */
static napi_value throw_pending_or(napi_env env, const char *fn) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending)
    throw_type(env, fn, "N-API call failed");
  return NULL;
}

/* An integer argument in [lo, hi]. A non-number is a TypeError; a number
 * outside the range or not an integer is a RangeError, or a TypeError when
 * type_error is set (families, ports). Returns 0, or -1 having thrown. */
static int arg_int(napi_env env, napi_value v, const char *fn, const char *name, double lo, double hi,
                   int type_error, int64_t *out) {
  napi_valuetype t;
  double d = 0;
  char msg[160];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a number", name);
    throw_type(env, fn, msg);
    return -1;
  }
  if (!(d >= lo && d <= hi) || d != (double)(int64_t)d) {
    snprintf(msg, sizeof msg, "%s must be an integer from %.0f to %.0f", name, lo, hi);
    if (type_error)
      throw_type(env, fn, msg);
    else
      throw_range(env, fn, msg);
    return -1;
  }
  *out = (int64_t)d;
  return 0;
}

static int arg_family(napi_env env, napi_value v, const char *fn, int *out) {
  int64_t f;
  if (arg_int(env, v, fn, "family", 4, 6, 1, &f) != 0) return -1;
  if (f == 5) {
    throw_type(env, fn, "family must be 4 or 6");
    return -1;
  }
  *out = (int)f;
  return 0;
}

static int arg_function(napi_env env, napi_value v, const char *fn, const char *name) {
  napi_valuetype t;
  char msg[120];
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_function) return 0;
  snprintf(msg, sizeof msg, "%s must be a function", name);
  throw_type(env, fn, msg);
  return -1;
}

/* A typed array argument of the given type: its data and element count. */
static int arg_typed(napi_env env, napi_value v, napi_typedarray_type want, const char *fn, const char *name,
                     void **data, size_t *count) {
  bool is = false;
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  char msg[120];
  if (napi_is_typedarray(env, v, &is) == napi_ok && is &&
      napi_get_typedarray_info(env, v, &t, count, data, &ab, &off) == napi_ok && t == want) {
    if (*count == 0) *data = NULL;
    return 0;
  }
  snprintf(msg, sizeof msg, "%s must be a%s", name,
           want == napi_int32_array ? "n Int32Array" : " Uint8Array");
  throw_type(env, fn, msg);
  return -1;
}

static int arg_fd(napi_env env, napi_value v, const char *fn, int *out) {
  int64_t fd;
  if (arg_int(env, v, fn, "fd", 0, INT_MAX, 1, &fd) != 0) return -1;
  *out = (int)fd;
  return 0;
}

/* ---- sockets ----------------------------------------------------------- */

typedef union {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} inet_addr_t;

static void close_keep_errno(int fd) {
  int e = errno;
  close(fd);
  errno = e;
}

static int set_int_opt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

/* Fills a socket address from (family, 4 or 16 address bytes, port). */
static socklen_t make_addr(int family, const unsigned char *ip, int port, inet_addr_t *a) {
  memset(a, 0, sizeof *a);
  if (family == 4) {
    a->v4.sin_family = AF_INET;
    a->v4.sin_port = htons((uint16_t)port);
    memcpy(&a->v4.sin_addr, ip, 4);
    return sizeof a->v4;
  }
  a->v6.sin6_family = AF_INET6;
  a->v6.sin6_port = htons((uint16_t)port);
  memcpy(&a->v6.sin6_addr, ip, 16);
  return sizeof a->v6;
}

/* Writes [family 4|6 (0 if neither), port, 4 words of address bytes]. */
static void put_addr(int32_t *m, const struct sockaddr_storage *ss, socklen_t len) {
  memset(m, 0, 6 * sizeof *m);
  if (ss->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    m[0] = 4;
    m[1] = ntohs(a->sin_port);
    memcpy(&m[2], &a->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    m[0] = 6;
    m[1] = ntohs(a->sin6_port);
    memcpy(&m[2], &a->sin6_addr, 16);
  }
}

/* A new UDP socket: non-blocking, close-on-exec, IPv6-only for family 6.
 * Returns the fd, or -1 with errno set and *what naming the failed call. */
static int udp_socket(int family, const char **what) {
  int fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *what = "socket";
    return -1;
  }
  if (family == 6 && set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) != 0) {
    *what = "setsockopt IPV6_V6ONLY";
    close_keep_errno(fd);
    return -1;
  }
  return fd;
}

/* The identity of the socket behind fd; -1 if fd is not an open socket. */
static int socket_identity(int fd, dev_t *dev, ino_t *ino) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return -1;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return 0;
}

/* ---- listeners --------------------------------------------------------- */

enum { L_OPEN, L_CLOSING, L_CLOSED };

typedef struct {
  uv_poll_t poll; /* poll.data == this */
  napi_env env;
  int fd;
  int state;    /* L_OPEN; L_CLOSING once uv_close is called; L_CLOSED after */
  int polling;  /* the poll is started */
  int env_gone; /* the env is being torn down: no more calls into JS */
  int refs;     /* owners: the JS external, the uv handle (until on_close) */
  dev_t dev;    /* identity of the listener's socket */
  ino_t ino;
  napi_ref on_batch, on_error, resource, arena_ref, meta_ref, closers;
  napi_async_context actx;
  napi_async_cleanup_hook_handle teardown; /* removed in on_close */
  unsigned char *arena;
  int32_t *meta;
  double recv_errors, truncated, poll_errors;
  int last_errno;
  struct mmsghdr hdrs[SLOTS];
  struct iovec iov[SLOTS];
  struct sockaddr_storage addrs[SLOTS];
} listener_t;

static void listener_unref(listener_t *l) {
  if (--l->refs <= 0) free(l);
}

static int still_ours(const listener_t *l) {
  dev_t dev;
  ino_t ino;
  return socket_identity(l->fd, &dev, &ino) == 0 && dev == l->dev && ino == l->ino;
}

static void drop_ref(napi_env env, napi_ref *r) {
  if (*r != NULL) napi_delete_reference(env, *r);
  *r = NULL;
}

/* Releases what the listener holds in JS. */
static void listener_drop_js(listener_t *l) {
  napi_env env = l->env;
  drop_ref(env, &l->on_batch);
  drop_ref(env, &l->on_error);
  drop_ref(env, &l->arena_ref);
  drop_ref(env, &l->meta_ref);
  drop_ref(env, &l->closers);
  drop_ref(env, &l->resource);
  if (l->actx != NULL) napi_async_destroy(env, l->actx);
  l->actx = NULL;
}

static void on_external_finalize(napi_env env, void *data, void *hint) {
  listener_unref((listener_t *)data);
}

/* Calls fn as a top-level callback (microtasks run after it). An exception
 * it throws becomes an uncaught exception, as for any event callback.
 * Needs an open handle scope. Returns 0 if fn returned normally. */
static int call_js(listener_t *l, napi_value fn, size_t argc, const napi_value *argv) {
  napi_env env = l->env;
  napi_value recv, result, exc;
  napi_valuetype t;
  if (napi_get_reference_value(env, l->resource, &recv) != napi_ok) return -1;
  napi_status st = napi_make_callback(env, l->actx, recv, fn, argc, argv, &result);
  if (st == napi_ok) return 0;
  if (napi_get_and_clear_last_exception(env, &exc) == napi_ok && napi_typeof(env, exc, &t) == napi_ok &&
      t != napi_undefined)
    napi_fatal_exception(env, exc);
  return -1;
}

/* Calls every onClosed callback given to unlisten(). */
static void run_closers(listener_t *l) {
  napi_env env = l->env;
  napi_value list, fn;
  uint32_t n = 0;
  if (napi_get_reference_value(env, l->closers, &list) != napi_ok || napi_get_array_length(env, list, &n) != napi_ok)
    return;
  for (uint32_t i = 0; i < n; i++) {
    if (napi_get_element(env, list, i, &fn) == napi_ok) call_js(l, fn, 0, NULL);
  }
}

/* uv_close callback: libuv has forgotten the fd, so it can be closed; the
 * port is then free and the onClosed callbacks run. Removing the teardown
 * hook last lets a worker's env (and this addon's code) go away. */
static void on_close(uv_handle_t *handle) {
  listener_t *l = (listener_t *)handle->data;
  napi_env env = l->env;
  napi_handle_scope scope;
  if (still_ours(l)) close(l->fd);
  l->fd = -1;
  l->state = L_CLOSED;
  l->polling = 0;
  if (!l->env_gone && napi_open_handle_scope(env, &scope) == napi_ok) {
    run_closers(l);
    napi_close_handle_scope(env, scope);
  }
  listener_drop_js(l);
  if (l->teardown != NULL) napi_remove_async_cleanup_hook(l->teardown);
  l->teardown = NULL;
  listener_unref(l);
}

static void listener_close(listener_t *l) {
  l->state = L_CLOSING;
  l->polling = 0;
  uv_close((uv_handle_t *)&l->poll, on_close); /* stops the poll too */
}

/* The env is going away (a worker exits) with the listener open. The hook
 * is asynchronous: Node keeps the env, and this addon loaded, until on_close
 * removes it. A synchronous hook is not enough: Node would unload the addon
 * before libuv runs on_close. Nothing calls into JS from here on. */
static void on_env_teardown(napi_async_cleanup_hook_handle hook, void *arg) {
  listener_t *l = (listener_t *)arg;
  l->env_gone = 1;
  if (l->state == L_OPEN) listener_close(l);
}

/* Re-reads where the arena and meta live. JS could have detached them
 * (transferred to a worker); then the listener must not write there. */
static int listener_buffers(listener_t *l) {
  napi_env env = l->env;
  napi_value v;
  void *arena = NULL, *meta = NULL;
  size_t alen = 0, mlen = 0;
  if (napi_get_reference_value(env, l->arena_ref, &v) != napi_ok ||
      napi_get_arraybuffer_info(env, v, &arena, &alen) != napi_ok ||
      napi_get_reference_value(env, l->meta_ref, &v) != napi_ok ||
      napi_get_arraybuffer_info(env, v, &meta, &mlen) != napi_ok || arena == NULL || meta == NULL ||
      alen != ARENA_BYTES || mlen != META_BYTES)
    return -1;
  if (arena != l->arena) {
    l->arena = arena;
    for (int i = 0; i < SLOTS; i++) l->iov[i].iov_base = l->arena + (size_t)i * SLOT_SIZE;
  }
  l->meta = meta;
  return 0;
}

/* Stops the poll and reports err to onError; resume() may restart it. */
static void listener_fail(listener_t *l, int err) {
  napi_value fn, arg;
  uv_poll_stop(&l->poll); /* libuv stops it on POLLERR; this also drops it from epoll */
  l->polling = 0;
  l->poll_errors++;
  l->last_errno = err;
  if (napi_get_reference_value(l->env, l->on_error, &fn) == napi_ok && napi_create_int32(l->env, err, &arg) == napi_ok)
    call_js(l, fn, 1, &arg);
}

/* The poll reported an error (libuv says UV_EBADF for any POLLERR). Report
 * the socket's pending error if there is one (reading it clears it, so a
 * resume can work), EBADF if the fd is no longer the listener's socket. */
static void listener_poll_error(listener_t *l, int err) {
  int pending = 0;
  socklen_t len = sizeof pending;
  if (!still_ours(l))
    err = EBADF;
  else if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &pending, &len) == 0 && pending > 0)
    err = pending;
  listener_fail(l, err);
}

/* One recvmmsg into the arena. Returns the number of datagrams; 0 when
 * there is nothing more to read now; -1 after an error worth retrying (a
 * queued error such as ECONNREFUSED is consumed by the read that reports it). */
static int receive_batch(listener_t *l) {
  for (int i = 0; i < SLOTS; i++) {
    l->hdrs[i].msg_hdr.msg_namelen = sizeof l->addrs[i];
    l->hdrs[i].msg_hdr.msg_flags = 0;
    l->hdrs[i].msg_len = 0;
  }
  int n = recvmmsg(l->fd, l->hdrs, SLOTS, MSG_DONTWAIT, NULL);
  if (n < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) return 0;
    if (e == EINTR) return -1;
    l->recv_errors++;
    l->last_errno = e;
    return (e == EBADF || e == ENOTSOCK || e == EFAULT || e == EINVAL || e == ENOMEM) ? 0 : -1;
  }
  for (int i = 0; i < n; i++) {
    int32_t *m = l->meta + (size_t)i * META_WORDS;
    if (l->hdrs[i].msg_hdr.msg_flags & MSG_TRUNC) {
      m[0] = -1;
      l->truncated++;
    } else {
      m[0] = (int32_t)l->hdrs[i].msg_len;
    }
    put_addr(m + 1, &l->addrs[i], l->hdrs[i].msg_hdr.msg_namelen);
    m[7] = 0;
  }
  return n;
}

/* Reads up to MAX_ROUNDS batches, entering JS once per batch. */
static void listener_receive(listener_t *l) {
  napi_env env = l->env;
  napi_value fn, arg;
  if (napi_get_reference_value(env, l->on_batch, &fn) != napi_ok) return;
  for (int round = 0; round < MAX_ROUNDS; round++) {
    /* onBatch may have called unlisten(). */
    if (l->state != L_OPEN || !l->polling) break;
    if (listener_buffers(l) != 0) {
      listener_fail(l, EFAULT);
      break;
    }
    int n = receive_batch(l);
    if (n == 0) break;
    if (n < 0) continue;
    if (napi_create_int32(env, n, &arg) != napi_ok || call_js(l, fn, 1, &arg) != 0) break;
    if (n < SLOTS) break;
  }
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  listener_t *l = (listener_t *)handle->data;
  napi_handle_scope scope;
  if (l->state != L_OPEN || l->env_gone) return;
  if (napi_open_handle_scope(l->env, &scope) != napi_ok) return;
  if (status < 0)
    listener_poll_error(l, -status);
  else
    listener_receive(l);
  napi_close_handle_scope(l->env, scope);
}

/* Makes the bound listener socket. Returns the fd, or -1 with errno set and
 * *what naming the failed call. */
static int listener_socket(int family, const inet_addr_t *addr, socklen_t addrlen, int rcvbuf, int *port,
                           int *eff_rcvbuf, const char **what) {
  struct sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  int32_t m[6];
  int v = 0;
  socklen_t vlen = sizeof v;
  int fd = udp_socket(family, what);
  if (fd < 0) return -1;
  if (rcvbuf > 0 && set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, rcvbuf) != 0) {
    *what = "setsockopt SO_RCVBUF";
  } else if (bind(fd, &addr->sa, addrlen) != 0) {
    *what = "bind";
  } else if (getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) {
    *what = "getsockname";
  } else if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &vlen) != 0) {
    *what = "getsockopt SO_RCVBUF";
  } else {
    put_addr(m, &bound, blen);
    *port = m[1];
    *eff_rcvbuf = v;
    return fd;
  }
  close_keep_errno(fd);
  return -1;
}

static napi_value int_value(napi_env env, int32_t n) {
  napi_value v = NULL;
  napi_create_int32(env, n, &v);
  return v;
}

/* Creates the JS side of a listener: arena, meta, the result object and
 * the references and async context the listener keeps. Returns the result
 * object, or NULL (the listener holds whatever was created). */
static napi_value listener_js(napi_env env, listener_t *l, napi_value on_batch, napi_value on_error) {
  napi_value arena, meta, result, closers, name;
  void *arena_data, *meta_data;
  if (napi_create_arraybuffer(env, ARENA_BYTES, &arena_data, &arena) != napi_ok ||
      napi_create_arraybuffer(env, META_BYTES, &meta_data, &meta) != napi_ok ||
      napi_create_object(env, &result) != napi_ok || napi_create_array(env, &closers) != napi_ok ||
      napi_create_reference(env, on_batch, 1, &l->on_batch) != napi_ok ||
      napi_create_reference(env, on_error, 1, &l->on_error) != napi_ok ||
      napi_create_reference(env, arena, 1, &l->arena_ref) != napi_ok ||
      napi_create_reference(env, meta, 1, &l->meta_ref) != napi_ok ||
      napi_create_reference(env, closers, 1, &l->closers) != napi_ok ||
      napi_create_reference(env, result, 1, &l->resource) != napi_ok ||
      napi_create_string_utf8(env, "udprepeater:listener", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, result, name, &l->actx) != napi_ok)
    return NULL;
  l->arena = arena_data;
  l->meta = meta_data;
  for (int i = 0; i < SLOTS; i++) {
    l->iov[i].iov_base = l->arena + (size_t)i * SLOT_SIZE;
    l->iov[i].iov_len = SLOT_SIZE;
    l->hdrs[i].msg_hdr.msg_iov = &l->iov[i];
    l->hdrs[i].msg_hdr.msg_iovlen = 1;
    l->hdrs[i].msg_hdr.msg_name = &l->addrs[i];
  }
  return result;
}

/* listen(family, ip, port, rcvbuf, onBatch(n), onError(errno)) ->
 *   { handle, arena, meta, port, fd, slots, slotSize, metaWords, rcvbuf } */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  static const char *fn = "listen";
  size_t argc = 6;
  napi_value argv[6], result, handle;
  int family, fd, port = 0, eff_rcvbuf = 0, err = 0;
  int64_t want_port, rcvbuf;
  void *ip;
  size_t iplen;
  inet_addr_t addr;
  socklen_t addrlen;
  uv_loop_t *loop;
  const char *what = "socket";
  listener_t *l;

  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 6) return throw_type(env, fn, "listen(family, ip, port, rcvbuf, onBatch, onError)");
  if (arg_family(env, argv[0], fn, &family) != 0) return NULL;
  bool is_buffer = false;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &ip, &iplen) != napi_ok)
    return throw_type(env, fn, "ip must be a Buffer");
  if (iplen != (family == 4 ? 4u : 16u)) return throw_type(env, fn, "ip must be 4 bytes for family 4, 16 for 6");
  if (arg_int(env, argv[2], fn, "port", 0, 65535, 1, &want_port) != 0 ||
      arg_int(env, argv[3], fn, "rcvbuf", 0, INT_MAX, 0, &rcvbuf) != 0 ||
      arg_function(env, argv[4], fn, "onBatch") != 0 || arg_function(env, argv[5], fn, "onError") != 0)
    return NULL;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_pending_or(env, fn);
  addrlen = make_addr(family, ip, (int)want_port, &addr);

  fd = listener_socket(family, &addr, addrlen, (int)rcvbuf, &port, &eff_rcvbuf, &what);
  if (fd < 0) return throw_errno(env, what, errno);
  l = calloc(1, sizeof *l);
  if (l == NULL) {
    close(fd);
    return throw_errno(env, "calloc", ENOMEM);
  }
  l->fd = fd;
  l->env = env;
  l->state = L_OPEN;
  socket_identity(fd, &l->dev, &l->ino);

  /* Every N-API object first: nothing below the poll start can fail. */
  result = listener_js(env, l, argv[4], argv[5]);
  if (result == NULL) goto fail;
  if (napi_create_external(env, l, on_external_finalize, NULL, &handle) != napi_ok) goto fail;
  l->refs = 1; /* the external's; from here its finalizer frees l */
  {
    napi_value arena, meta;
    if (napi_type_tag_object(env, handle, &LISTENER_TAG) != napi_ok ||
        napi_get_reference_value(env, l->arena_ref, &arena) != napi_ok ||
        napi_get_reference_value(env, l->meta_ref, &meta) != napi_ok)
      goto fail;
    napi_property_descriptor props[] = {
        {"handle", NULL, NULL, NULL, NULL, handle, napi_enumerable, NULL},
        {"arena", NULL, NULL, NULL, NULL, arena, napi_enumerable, NULL},
        {"meta", NULL, NULL, NULL, NULL, meta, napi_enumerable, NULL},
        {"port", NULL, NULL, NULL, NULL, int_value(env, port), napi_enumerable, NULL},
        {"fd", NULL, NULL, NULL, NULL, int_value(env, fd), napi_enumerable, NULL},
        {"slots", NULL, NULL, NULL, NULL, int_value(env, SLOTS), napi_enumerable, NULL},
        {"slotSize", NULL, NULL, NULL, NULL, int_value(env, SLOT_SIZE), napi_enumerable, NULL},
        {"metaWords", NULL, NULL, NULL, NULL, int_value(env, META_WORDS), napi_enumerable, NULL},
        {"rcvbuf", NULL, NULL, NULL, NULL, int_value(env, eff_rcvbuf), napi_enumerable, NULL},
    };
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
      if (props[i].value == NULL) goto fail;
    if (napi_define_properties(env, result, sizeof props / sizeof props[0], props) != napi_ok) goto fail;
  }
  if (napi_add_async_cleanup_hook(env, on_env_teardown, l, &l->teardown) != napi_ok) goto fail;

  err = uv_poll_init(loop, &l->poll, fd);
  if (err != 0) {
    napi_remove_async_cleanup_hook(l->teardown);
    l->teardown = NULL;
    goto fail;
  }
  l->poll.data = l;
  l->refs++; /* the uv handle's, given back in on_close */
  err = uv_poll_start(&l->poll, UV_READABLE, on_readable);
  if (err != 0) {
    listener_close(l); /* on_close closes the fd and releases the rest */
    return throw_errno(env, "uv_poll_start", -err);
  }
  l->polling = 1;
  return result;

fail:
  listener_drop_js(l);
  close(fd);
  l->fd = -1;
  l->state = L_CLOSED;
  if (l->refs == 0) free(l); /* else the unreachable external's finalizer will */
  if (err != 0) return throw_errno(env, "uv_poll_init", -err);
  return throw_pending_or(env, fn);
}

/* The listener behind a handle argument; NULL having thrown a TypeError. */
static listener_t *listener_arg(napi_env env, napi_value v, const char *fn) {
  napi_valuetype t;
  bool tagged = false;
  void *p = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, &LISTENER_TAG, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    throw_type(env, fn, "handle must be a listener handle from listen()");
    return NULL;
  }
  return (listener_t *)p;
}

/* resume(handle) -> whether the listener polls again: false once it is
 * closing or closed, or if its fd no longer is its socket or its arena was
 * detached. True at once if it was polling. */
static napi_value js_resume(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  listener_t *l;
  bool ok = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, "resume");
  if (argc < 1) return throw_type(env, "resume", "resume(handle)");
  if ((l = listener_arg(env, argv[0], "resume")) == NULL) return NULL;
  if (l->state == L_OPEN && !l->polling && still_ours(l) && listener_buffers(l) == 0 &&
      uv_poll_start(&l->poll, UV_READABLE, on_readable) == 0)
    l->polling = 1;
  ok = l->state == L_OPEN && l->polling;
  napi_get_boolean(env, ok, &out);
  return out;
}

/* unlisten(handle, onClosed): stops the poll and closes the handle; the fd
 * is closed in the uv_close callback and then onClosed() runs. A call while
 * the close is under way queues its onClosed for the same moment; a call
 * after the close completed calls onClosed before returning. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  static const char *fn = "unlisten";
  size_t argc = 2;
  napi_value argv[2], list, undefined, ignored;
  uint32_t n;
  listener_t *l;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 2) return throw_type(env, fn, "unlisten(handle, onClosed)");
  if ((l = listener_arg(env, argv[0], fn)) == NULL || arg_function(env, argv[1], fn, "onClosed") != 0) return NULL;
  if (l->state == L_CLOSED) {
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, argv[1], 0, NULL, &ignored);
    return NULL;
  }
  int queued = napi_get_reference_value(env, l->closers, &list) == napi_ok &&
               napi_get_array_length(env, list, &n) == napi_ok && napi_set_element(env, list, n, argv[1]) == napi_ok;
  if (l->state == L_OPEN) listener_close(l);
  return queued ? NULL : throw_pending_or(env, fn);
}

/* listenerStats(handle) -> [receive errors, last errno, truncated, poll errors] */
static napi_value js_listener_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  listener_t *l;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, "listenerStats");
  if (argc < 1) return throw_type(env, "listenerStats", "listenerStats(handle)");
  if ((l = listener_arg(env, argv[0], "listenerStats")) == NULL) return NULL;
  double values[4] = {l->recv_errors, l->last_errno, l->truncated, l->poll_errors};
  if (napi_create_array_with_length(env, 4, &out) != napi_ok) return throw_pending_or(env, "listenerStats");
  for (uint32_t i = 0; i < 4; i++) {
    if (napi_create_double(env, values[i], &v) != napi_ok || napi_set_element(env, out, i, v) != napi_ok)
      return throw_pending_or(env, "listenerStats");
  }
  return out;
}

/* ---- senders ----------------------------------------------------------- */

/* Scratch space for sendBatch and sendMany, one per env (workers have their own). */
typedef struct {
  struct mmsghdr hdrs[SEND_CHUNK];
  inet_addr_t names[SEND_CHUNK];
  struct iovec iovs[SEND_CHUNK];
  size_t idx[SEND_CHUNK];
} send_scratch_t;

static void free_scratch(napi_env env, void *data, void *hint) {
  free(data);
}

/* openSender(family, sndbuf, rcvbuf) -> fd */
static napi_value js_open_sender(napi_env env, napi_callback_info info) {
  static const char *fn = "openSender";
  size_t argc = 3;
  napi_value argv[3], out;
  int family, fd;
  int64_t sndbuf, rcvbuf;
  const char *what = "socket";
  static const unsigned char any[16] = {0};
  inet_addr_t addr;
  socklen_t addrlen;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 3) return throw_type(env, fn, "openSender(family, sndbuf, rcvbuf)");
  if (arg_family(env, argv[0], fn, &family) != 0 || arg_int(env, argv[1], fn, "sndbuf", 0, INT_MAX, 0, &sndbuf) != 0 ||
      arg_int(env, argv[2], fn, "rcvbuf", 0, INT_MAX, 0, &rcvbuf) != 0)
    return NULL;
  fd = udp_socket(family, &what);
  if (fd < 0) return throw_errno(env, what, errno);
  addrlen = make_addr(family, any, 0, &addr);
  if (family == 6 ? set_int_opt(fd, IPPROTO_IPV6, IPV6_RECVERR, 1) != 0
                  : set_int_opt(fd, IPPROTO_IP, IP_RECVERR, 1) != 0)
    what = family == 6 ? "setsockopt IPV6_RECVERR" : "setsockopt IP_RECVERR";
  else if (sndbuf > 0 && set_int_opt(fd, SOL_SOCKET, SO_SNDBUF, (int)sndbuf) != 0)
    what = "setsockopt SO_SNDBUF";
  else if (rcvbuf > 0 && set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, (int)rcvbuf) != 0)
    what = "setsockopt SO_RCVBUF";
  else if (bind(fd, &addr.sa, addrlen) != 0)
    what = "bind";
  else if (napi_create_int32(env, fd, &out) != napi_ok) {
    close(fd);
    return throw_pending_or(env, fn);
  } else
    return out;
  close_keep_errno(fd);
  return throw_errno(env, what, errno);
}

/* The sender socket's buffer is full: this copy and the rest on it fail. */
static int is_full(int e) {
  return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS;
}

/* Errors an earlier ICMP answer leaves pending on an unconnected IP_RECVERR
 * socket: the send that reports one consumed it without sending its copy. */
static int is_pending_icmp(int e) {
  return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN;
}

static socklen_t dest_addr(const uint8_t *d, inet_addr_t *a) {
  return make_addr(d[0], d + 4, d[2] | (d[3] << 8), a);
}

static size_t send_prepared(send_scratch_t *s, int fd, size_t cnt, int32_t *errs, int *full_err, int32_t *hints,
                            int32_t *calls);

/* Sends data to destinations [from, to), all on fd, in chunks of SEND_CHUNK
 * (send_prepared retries what the kernel did not take). Returns the failures;
 * *full_err is set when the socket's buffer was found full (every copy left
 * then fails with it, without another system call). */
static size_t send_run(send_scratch_t *s, int fd, const uint8_t *dests, size_t from, size_t to, struct iovec *iov,
                       int32_t *errs, int *full_err, int32_t *hints) {
  size_t failures = 0;
  int32_t calls = 0;
  for (size_t base = from; base < to; base += SEND_CHUNK) {
    size_t cnt = to - base < SEND_CHUNK ? to - base : SEND_CHUNK;
    for (size_t j = 0; j < cnt; j++) {
      struct msghdr *m = &s->hdrs[j].msg_hdr;
      memset(m, 0, sizeof *m);
      m->msg_name = &s->names[j];
      m->msg_namelen = dest_addr(dests + (base + j) * DEST_BYTES, &s->names[j]);
      m->msg_iov = iov;
      m->msg_iovlen = 1;
      s->idx[j] = base + j;
    }
    failures += send_prepared(s, fd, cnt, errs, full_err, hints, &calls);
    if (*full_err != 0) {
      for (size_t j = base + cnt; j < to; j++) errs[j] = *full_err;
      return failures + (to - base - cnt);
    }
  }
  return failures;
}

static int overlaps(const void *a, size_t alen, const void *b, size_t blen) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return alen > 0 && blen > 0 && x < y + blen && y < x + alen;
}

/* sendBatch(fds: Int32Array, dests: Uint8Array, n, data: Uint8Array,
 *           errs: Int32Array) -> failures
 * errs[i] = 0 or the errno of copy i; if errs has n + 1 entries, errs[n] =
 * the number of ICMP answers found pending on the way (a cue to drain). */
static napi_value js_send_batch(napi_env env, napi_callback_info info) {
  static const char *fn = "sendBatch";
  size_t argc = 5, nfds, ndests, len, nerrs;
  napi_value argv[5], out;
  void *fds_p, *dests_p, *data_p, *errs_p, *scratch = NULL;
  int64_t n64;
  char msg[120];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 5) return throw_type(env, fn, "sendBatch(fds, dests, n, data, errs)");
  if (arg_typed(env, argv[0], napi_int32_array, fn, "fds", &fds_p, &nfds) != 0 ||
      arg_typed(env, argv[1], napi_uint8_array, fn, "dests", &dests_p, &ndests) != 0 ||
      arg_int(env, argv[2], fn, "n", 0, INT_MAX, 0, &n64) != 0 ||
      arg_typed(env, argv[3], napi_uint8_array, fn, "data", &data_p, &len) != 0 ||
      arg_typed(env, argv[4], napi_int32_array, fn, "errs", &errs_p, &nerrs) != 0)
    return NULL;
  size_t n = (size_t)n64;
  if (n > nfds) return throw_range(env, fn, "n exceeds fds.length");
  if (n > ndests / DEST_BYTES) return throw_range(env, fn, "n exceeds dests.length / 20");
  if (n > nerrs) return throw_range(env, fn, "n exceeds errs.length");
  if (overlaps(errs_p, n * 4, fds_p, n * 4) || overlaps(errs_p, n * 4, dests_p, n * DEST_BYTES) ||
      overlaps(errs_p, n * 4, data_p, len))
    return throw_range(env, fn, "errs must not share memory with fds, dests or data");
  const int32_t *fds = fds_p;
  const uint8_t *dests = dests_p;
  int32_t *errs = errs_p;
  /* Every destination is checked before anything is sent. */
  for (size_t i = 0; i < n; i++) {
    const uint8_t *d = dests + i * DEST_BYTES;
    int port = d[2] | (d[3] << 8);
    if ((d[0] != 4 && d[0] != 6) || d[1] != 0 || port == 0) {
      snprintf(msg, sizeof msg, "destination %zu: family must be 4 or 6, byte 1 zero, port 1-65535", i);
      return throw_type(env, fn, msg);
    }
  }
  if (napi_get_instance_data(env, &scratch) != napi_ok || scratch == NULL)
    return throw_errno(env, "sendBatch scratch", ENOMEM);

  struct iovec iov = {data_p, len};
  int full_fd[FULL_MEMO], full_err[FULL_MEMO];
  size_t nfull = 0, failures = 0;
  int32_t hints = 0;
  for (size_t i = 0, end; i < n; i = end) {
    int fd = fds[i], e = 0;
    for (end = i + 1; end < n && fds[end] == fd;) end++;
    for (size_t k = 0; k < nfull && e == 0; k++)
      if (full_fd[k] == fd) e = full_err[k];
    if (e != 0) { /* found full earlier in this call: no more system calls */
      for (size_t j = i; j < end; j++) errs[j] = e;
      failures += end - i;
      continue;
    }
    failures += send_run(scratch, fd, dests, i, end, &iov, errs, &e, &hints);
    if (e != 0 && nfull < FULL_MEMO) {
      full_fd[nfull] = fd;
      full_err[nfull++] = e;
    }
  }
  /* errs[n], when there is room for it: how often an ICMP answer was found
   * pending (the caller's cue to drain the error queues now). */
  if (nerrs > n) errs[n] = hints;
  napi_create_int32(env, (int32_t)failures, &out);
  return out;
}

/* Sends the cnt messages prepared in s->hdrs (s->idx[j]: the caller's index
 * of message j) on fd, retrying what the kernel did not take. Returns the
 * failures; errs[idx] is set for every message; *full_err is set when the
 * socket's buffer was found full (the messages left then fail with it). */
static size_t send_prepared(send_scratch_t *s, int fd, size_t cnt, int32_t *errs, int *full_err, int32_t *hints,
                            int32_t *calls) {
  size_t off = 0, retried = SIZE_MAX, failures = 0;
  while (off < cnt) {
    int r = sendmmsg(fd, s->hdrs + off, (unsigned int)(cnt - off), MSG_DONTWAIT | MSG_NOSIGNAL);
    (*calls)++;
    if (r > 0) {
      for (size_t j = off; j < off + (size_t)r; j++) errs[s->idx[j]] = 0;
      if ((size_t)r < cnt - off) (*hints)++;
      off += (size_t)r;
      continue;
    }
    int e = r == 0 ? EAGAIN : errno;
    if (e == EINTR) continue;
    if (is_pending_icmp(e) && retried != off) {
      retried = off;
      (*hints)++;
      continue;
    }
    if (is_full(e)) {
      for (size_t j = off; j < cnt; j++) errs[s->idx[j]] = e;
      *full_err = e;
      return failures + (cnt - off);
    }
    errs[s->idx[off]] = e;
    failures++;
    off++;
  }
  return failures;
}

/* sendMany(fds: Int32Array, dests: Uint8Array, offs: Int32Array,
 *          lens: Int32Array, n, data: Uint8Array, errs: Int32Array) -> failures
 * Message i is data[offs[i], offs[i] + lens[i]) to dests[i] on fds[i]. The
 * messages of one fd go out in their order, with one sendmmsg per
 * SEND_CHUNK of them: a receive batch's outputs cost one system call per
 * sender socket, not one per datagram. errs as for sendBatch; if errs has
 * n + 2 entries, errs[n + 1] = the sendmmsg calls made. */
static napi_value js_send_many(napi_env env, napi_callback_info info) {
  static const char *fn = "sendMany";
  size_t argc = 7, nfds, ndests, noffs, nlens, len, nerrs;
  napi_value argv[7], out;
  void *fds_p, *dests_p, *offs_p, *lens_p, *data_p, *errs_p, *scratch = NULL;
  int64_t n64;
  char msg[120];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 7) return throw_type(env, fn, "sendMany(fds, dests, offs, lens, n, data, errs)");
  if (arg_typed(env, argv[0], napi_int32_array, fn, "fds", &fds_p, &nfds) != 0 ||
      arg_typed(env, argv[1], napi_uint8_array, fn, "dests", &dests_p, &ndests) != 0 ||
      arg_typed(env, argv[2], napi_int32_array, fn, "offs", &offs_p, &noffs) != 0 ||
      arg_typed(env, argv[3], napi_int32_array, fn, "lens", &lens_p, &nlens) != 0 ||
      arg_int(env, argv[4], fn, "n", 0, INT_MAX, 0, &n64) != 0 ||
      arg_typed(env, argv[5], napi_uint8_array, fn, "data", &data_p, &len) != 0 ||
      arg_typed(env, argv[6], napi_int32_array, fn, "errs", &errs_p, &nerrs) != 0)
    return NULL;
  size_t n = (size_t)n64;
  if (n > nfds || n > noffs || n > nlens) return throw_range(env, fn, "n exceeds fds, offs or lens");
  if (n > ndests / DEST_BYTES) return throw_range(env, fn, "n exceeds dests.length / 20");
  if (n > nerrs) return throw_range(env, fn, "n exceeds errs.length");
  if (overlaps(errs_p, nerrs * 4, fds_p, n * 4) || overlaps(errs_p, nerrs * 4, dests_p, n * DEST_BYTES) ||
      overlaps(errs_p, nerrs * 4, offs_p, n * 4) || overlaps(errs_p, nerrs * 4, lens_p, n * 4) ||
      overlaps(errs_p, nerrs * 4, data_p, len))
    return throw_range(env, fn, "errs must not share memory with fds, dests, offs, lens or data");
  const int32_t *fds = fds_p, *offs = offs_p, *lens = lens_p;
  const uint8_t *dests = dests_p;
  int32_t *errs = errs_p;
  /* Every message is checked before anything is sent. */
  for (size_t i = 0; i < n; i++) {
    const uint8_t *d = dests + i * DEST_BYTES;
    int port = d[2] | (d[3] << 8);
    if ((d[0] != 4 && d[0] != 6) || d[1] != 0 || port == 0) {
      snprintf(msg, sizeof msg, "destination %zu: family must be 4 or 6, byte 1 zero, port 1-65535", i);
      return throw_type(env, fn, msg);
    }
    if (offs[i] < 0 || lens[i] < 0 || (size_t)offs[i] + (size_t)lens[i] > len) {
      snprintf(msg, sizeof msg, "message %zu: offs and lens must lie within data", i);
      return throw_range(env, fn, msg);
    }
    errs[i] = -1; /* not sent yet */
  }
  if (napi_get_instance_data(env, &scratch) != napi_ok || scratch == NULL)
    return throw_errno(env, "sendMany scratch", ENOMEM);
  send_scratch_t *s = scratch;
  uint8_t *data = data_p;
  size_t failures = 0;
  int32_t hints = 0, calls = 0;
  /* One fd at a time, in the order fds first appear; each fd's messages in their order. */
  for (size_t first = 0; first < n; first++) {
    if (errs[first] != -1) continue;
    int fd = fds[first], full = 0;
    size_t cnt = 0;
    for (size_t i = first; i < n; i++) {
      if (fds[i] != fd || errs[i] != -1) continue;
      if (full != 0) { /* found full earlier in this call: no more system calls on it */
        errs[i] = full;
        failures++;
        continue;
      }
      s->iovs[cnt].iov_base = data + offs[i];
      s->iovs[cnt].iov_len = (size_t)lens[i];
      struct msghdr *m = &s->hdrs[cnt].msg_hdr;
      memset(m, 0, sizeof *m);
      m->msg_name = &s->names[cnt];
      m->msg_namelen = dest_addr(dests + i * DEST_BYTES, &s->names[cnt]);
      m->msg_iov = &s->iovs[cnt];
      m->msg_iovlen = 1;
      s->idx[cnt++] = i;
      if (cnt == SEND_CHUNK) {
        failures += send_prepared(s, fd, cnt, errs, &full, &hints, &calls);
        cnt = 0;
      }
    }
    if (cnt > 0) failures += send_prepared(s, fd, cnt, errs, &full, &hints, &calls);
  }
  if (nerrs > n) errs[n] = hints;
  if (nerrs > n + 1) errs[n + 1] = calls;
  napi_create_int32(env, (int32_t)failures, &out);
  return out;
}

/* The sock_extended_err of an error-queue message, if it carries one. */
static const struct sock_extended_err *extended_err(struct msghdr *m) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
    if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
        (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR))
      return (const struct sock_extended_err *)CMSG_DATA(c);
  }
  return NULL;
}

/* Reads up to cap error-queue records into out. Returns the count, or -1
 * with errno set if fd is not a usable socket. */
static int read_errqueue(int fd, int32_t *out, size_t cap) {
  size_t records = 0;
  while (records < cap) {
    struct sockaddr_storage name;
    union {
      char buf[512];
      struct cmsghdr align;
    } ctrl;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = &name;
    m.msg_namelen = sizeof name;
    m.msg_control = ctrl.buf;
    m.msg_controllen = sizeof ctrl.buf;
    if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
      if (errno == EINTR) continue;
      if (errno == EBADF || errno == ENOTSOCK) return -1;
      break; /* EAGAIN: the queue is empty */
    }
    const struct sock_extended_err *ee = extended_err(&m);
    if (ee == NULL) continue;
    int32_t *r = out + records * ERR_WORDS;
    r[0] = (int32_t)ee->ee_errno;
    put_addr(r + 1, &name, m.msg_namelen);
    records++;
  }
  return (int)records;
}

/* Reads and drops datagrams sent to the sender's port; returns the count. */
static int discard_datagrams(int fd) {
  struct mmsghdr hdrs[DISCARD_BATCH];
  int total = 0;
  for (int attempts = 0; total < DISCARD_MAX && attempts < 2 * DISCARD_MAX / DISCARD_BATCH; attempts++) {
    memset(hdrs, 0, sizeof hdrs); /* no buffers: each datagram is truncated to nothing */
    int r = recvmmsg(fd, hdrs, DISCARD_BATCH, MSG_DONTWAIT, NULL);
    if (r > 0) {
      total += r;
      if (r < DISCARD_BATCH) break;
    } else if (r == 0 || !(errno == EINTR || is_pending_icmp(errno))) {
      break; /* EAGAIN: nothing left */
    }
  }
  return total;
}

/* drainSender(fd, out: Int32Array) -> [error records written, datagrams discarded] */
static napi_value js_drain_sender(napi_env env, napi_callback_info info) {
  static const char *fn = "drainSender";
  size_t argc = 2, count;
  napi_value argv[2], out;
  void *data;
  int fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 2) return throw_type(env, fn, "drainSender(fd, out)");
  if (arg_fd(env, argv[0], fn, &fd) != 0 || arg_typed(env, argv[1], napi_int32_array, fn, "out", &data, &count) != 0)
    return NULL;
  int records = read_errqueue(fd, data, count / ERR_WORDS);
  if (records < 0) return throw_errno(env, "recvmsg MSG_ERRQUEUE", errno);
  int discarded = discard_datagrams(fd);
  if (napi_create_array_with_length(env, 2, &out) != napi_ok ||
      napi_set_element(env, out, 0, int_value(env, records)) != napi_ok ||
      napi_set_element(env, out, 1, int_value(env, discarded)) != napi_ok)
    return throw_pending_or(env, fn);
  return out;
}

/* socketBuffers(fd) -> [SO_RCVBUF, SO_SNDBUF] */
static napi_value js_socket_buffers(napi_env env, napi_callback_info info) {
  static const char *fn = "socketBuffers";
  size_t argc = 1;
  napi_value argv[1], out;
  int fd, rcv = 0, snd = 0;
  socklen_t len = sizeof rcv;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, fn);
  if (argc < 1) return throw_type(env, fn, "socketBuffers(fd)");
  if (arg_fd(env, argv[0], fn, &fd) != 0) return NULL;
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, &len) != 0) return throw_errno(env, "getsockopt SO_RCVBUF", errno);
  len = sizeof snd;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, &len) != 0) return throw_errno(env, "getsockopt SO_SNDBUF", errno);
  if (napi_create_array_with_length(env, 2, &out) != napi_ok ||
      napi_set_element(env, out, 0, int_value(env, rcv)) != napi_ok ||
      napi_set_element(env, out, 1, int_value(env, snd)) != napi_ok)
    return throw_pending_or(env, fn);
  return out;
}

/* closeFd(fd); -1 does nothing. */
static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return throw_pending_or(env, "closeFd");
  if (argc < 1) return throw_type(env, "closeFd", "closeFd(fd)");
  if (arg_int(env, argv[0], "closeFd", "fd", -1, INT_MAX, 1, &fd) != 0) return NULL;
  if (fd >= 0) close((int)fd); /* Linux: never retried, even on EINTR */
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
      {"resume", NULL, js_resume, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"listenerStats", NULL, js_listener_stats, NULL, NULL, NULL, napi_default, NULL},
      {"openSender", NULL, js_open_sender, NULL, NULL, NULL, napi_default, NULL},
      {"sendBatch", NULL, js_send_batch, NULL, NULL, NULL, napi_default, NULL},
      {"sendMany", NULL, js_send_many, NULL, NULL, NULL, napi_default, NULL},
      {"drainSender", NULL, js_drain_sender, NULL, NULL, NULL, napi_default, NULL},
      {"socketBuffers", NULL, js_socket_buffers, NULL, NULL, NULL, napi_default, NULL},
      {"closeFd", NULL, js_close_fd, NULL, NULL, NULL, napi_default, NULL},
  };
  send_scratch_t *scratch = calloc(1, sizeof *scratch);
  if (scratch != NULL && napi_set_instance_data(env, scratch, free_scratch, NULL) != napi_ok) {
    free(scratch);
  }
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

// udpfast: the optional native datagram path of udprepeater.
//
// Two things Node's dgram cannot do cheaply:
//  - receive in batches: recvmmsg() fills up to SLOTS datagrams into one
//    ArrayBuffer and JS is entered once per batch, not once per datagram;
//  - send one datagram to many connected sockets in one call into C.
// Everything else (parsing, policy, registry, crypto) stays in TypeScript.
// The pure TypeScript path (node:dgram) is used when this addon is missing.
//
// Invariants: all sockets are non-blocking and close-on-exec; a datagram in
// the receive arena is valid only during the JS callback for its batch; no
// function here blocks or throws past the JS boundary except on bad
// arguments.

#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOTS 32
#define SLOT_SIZE 65536
/* Per-slot metadata, as int32: length, family (4 or 6), port, then 4 words of address. */
#define META_WORDS 8
/* Batches handled per readable event before yielding to the event loop. */
#define MAX_ROUNDS 16

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, NULL, "udpfast: N-API call failed: " #call);   \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

typedef struct {
  int fd;
  int closing;
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_ref arena_ref;
  napi_ref meta_ref;
  napi_ref resource;
  napi_async_context actx;
  unsigned char *arena;
  int32_t *meta;
  struct mmsghdr hdrs[SLOTS];
  struct iovec iov[SLOTS];
  struct sockaddr_storage addrs[SLOTS];
  double errors;
  int last_errno;
} listener_t;

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, message, error;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  char codebuf[32];
  snprintf(codebuf, sizeof codebuf, "E%d", err);
  napi_create_string_utf8(env, codebuf, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, message, &error);
  napi_value errno_value;
  napi_create_int32(env, err, &errno_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_throw(env, error);
  return NULL;
}

/* Fills a sockaddr from (family, 4- or 16-byte address, port). */
static int make_addr(int family, const unsigned char *ip, size_t iplen, int port, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  if (family == 4 && iplen == 4) {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    memcpy(&a->sin_addr, ip, 4);
    *len = sizeof *a;
    return 0;
  }
  if (family == 6 && iplen == 16) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    memcpy(&a->sin6_addr, ip, 16);
    *len = sizeof *a;
    return 0;
  }
  return -1;
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  (void)events;
  listener_t *l = (listener_t *)handle->data;
  if (l->closing) return;
  napi_env env = l->env;
  if (status < 0) {
    l->errors++;
    l->last_errno = -status;
    return;
  }
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv;
  napi_get_reference_value(env, l->callback, &cb);
  napi_get_reference_value(env, l->resource, &recv);
  for (int round = 0; round < MAX_ROUNDS && !l->closing; round++) {
    for (int i = 0; i < SLOTS; i++) {
      l->hdrs[i].msg_hdr.msg_namelen = sizeof l->addrs[i];
      l->hdrs[i].msg_hdr.msg_flags = 0;
      l->hdrs[i].msg_len = 0;
    }
    int n = recvmmsg(l->fd, l->hdrs, SLOTS, MSG_DONTWAIT, NULL);
    if (n <= 0) {
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        /* e.g. ECONNREFUSED queued by ICMP: counted, the socket stays usable. */
        l->errors++;
        l->last_errno = errno;
        continue;
      }
      break;
    }
    for (int i = 0; i < n; i++) {
      int32_t *m = l->meta + i * META_WORDS;
      m[0] = (l->hdrs[i].msg_hdr.msg_flags & MSG_TRUNC) ? -1 : (int32_t)l->hdrs[i].msg_len;
      const struct sockaddr_storage *ss = &l->addrs[i];
      if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        m[1] = 4;
        m[2] = ntohs(a->sin_port);
        memset(&m[3], 0, 16);
        memcpy(&m[3], &a->sin_addr, 4);
      } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        m[1] = 6;
        m[2] = ntohs(a->sin6_port);
        memcpy(&m[3], &a->sin6_addr, 16);
      }
    }
    napi_value argv[1];
    napi_create_int32(env, n, &argv[0]);
    napi_value result;
    napi_status st = napi_make_callback(env, l->actx, recv, cb, 1, argv, &result);
    if (st == napi_pending_exception) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
      break;
    }
    if (n < SLOTS) break;
  }
  napi_close_handle_scope(env, scope);
}

static void on_close(uv_handle_t *handle) {
  listener_t *l = (listener_t *)handle->data;
  napi_env env = l->env;
  napi_delete_reference(env, l->callback);
  napi_delete_reference(env, l->arena_ref);
  napi_delete_reference(env, l->meta_ref);
  napi_delete_reference(env, l->resource);
  napi_async_destroy(env, l->actx);
  free(l);
}

/* listen(family, ipBuffer, port, rcvbuf, callback(n)) ->
 *   { handle, arena: ArrayBuffer, meta: ArrayBuffer, port, slots, slotSize } */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, NULL, "listen(family, ip, port, rcvbuf, callback)");
    return NULL;
  }
  int32_t family, port, rcvbuf;
  CHECK(napi_get_value_int32(env, argv[0], &family));
  void *ip;
  size_t iplen;
  CHECK(napi_get_buffer_info(env, argv[1], &ip, &iplen));
  CHECK(napi_get_value_int32(env, argv[2], &port));
  CHECK(napi_get_value_int32(env, argv[3], &rcvbuf));

  struct sockaddr_storage ss;
  socklen_t sslen;
  if (make_addr(family, ip, iplen, port, &ss, &sslen) != 0) {
    napi_throw_type_error(env, NULL, "udpfast: bad address");
    return NULL;
  }
  int fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (family == 6) {
    int one = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (bind(fd, (struct sockaddr *)&ss, sslen) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "bind", e);
  }
  struct sockaddr_storage bound;
  socklen_t boundlen = sizeof bound;
  getsockname(fd, (struct sockaddr *)&bound, &boundlen);
  int bound_port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port) : ntohs(((struct sockaddr_in *)&bound)->sin_port);

  listener_t *l = calloc(1, sizeof *l);
  if (l == NULL) {
    close(fd);
    napi_throw_error(env, NULL, "udpfast: out of memory");
    return NULL;
  }
  l->fd = fd;
  l->env = env;

  napi_value arena, meta;
  void *arena_data, *meta_data;
  if (napi_create_arraybuffer(env, (size_t)SLOTS * SLOT_SIZE, &arena_data, &arena) != napi_ok ||
      napi_create_arraybuffer(env, (size_t)SLOTS * META_WORDS * sizeof(int32_t), &meta_data, &meta) != napi_ok) {
    close(fd);
    free(l);
    napi_throw_error(env, NULL, "udpfast: cannot allocate the receive arena");
    return NULL;
  }
  l->arena = arena_data;
  l->meta = meta_data;
  for (int i = 0; i < SLOTS; i++) {
    l->iov[i].iov_base = l->arena + (size_t)i * SLOT_SIZE;
    l->iov[i].iov_len = SLOT_SIZE;
    l->hdrs[i].msg_hdr.msg_iov = &l->iov[i];
    l->hdrs[i].msg_hdr.msg_iovlen = 1;
    l->hdrs[i].msg_hdr.msg_name = &l->addrs[i];
  }
  napi_value result, handle, name, num;
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_reference(env, argv[4], 1, &l->callback));
  CHECK(napi_create_reference(env, arena, 1, &l->arena_ref));
  CHECK(napi_create_reference(env, meta, 1, &l->meta_ref));
  CHECK(napi_create_reference(env, result, 1, &l->resource));
  CHECK(napi_create_string_utf8(env, "udprepeater:listener", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, result, name, &l->actx));

  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  uv_poll_init(loop, &l->poll, fd);
  l->poll.data = l;
  uv_poll_start(&l->poll, UV_READABLE, on_readable);

  CHECK(napi_create_external(env, l, NULL, NULL, &handle));
  CHECK(napi_set_named_property(env, result, "handle", handle));
  CHECK(napi_set_named_property(env, result, "arena", arena));
  CHECK(napi_set_named_property(env, result, "meta", meta));
  CHECK(napi_create_int32(env, bound_port, &num));
  CHECK(napi_set_named_property(env, result, "port", num));
  CHECK(napi_create_int32(env, fd, &num));
  CHECK(napi_set_named_property(env, result, "fd", num));
  CHECK(napi_create_int32(env, SLOTS, &num));
  CHECK(napi_set_named_property(env, result, "slots", num));
  CHECK(napi_create_int32(env, SLOT_SIZE, &num));
  CHECK(napi_set_named_property(env, result, "slotSize", num));
  CHECK(napi_create_int32(env, META_WORDS, &num));
  CHECK(napi_set_named_property(env, result, "metaWords", num));
  return result;
}

static listener_t *listener_of(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return (listener_t *)p;
}

/* unlisten(handle): stops reading and closes the socket (once). */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  listener_t *l = argc == 1 ? listener_of(env, argv[0]) : NULL;
  if (l == NULL || l->closing) return NULL;
  l->closing = 1;
  uv_poll_stop(&l->poll);
  /* Closed now, not in on_close: a restart may rebind the port at once. */
  close(l->fd);
  l->fd = -1;
  uv_close((uv_handle_t *)&l->poll, on_close);
  return NULL;
}

/* errors(handle) -> [count, lastErrno] of receive errors. */
static napi_value js_listener_errors(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  listener_t *l = argc == 1 ? listener_of(env, argv[0]) : NULL;
  CHECK(napi_create_array_with_length(env, 2, &out));
  CHECK(napi_create_double(env, l ? l->errors : 0, &v));
  CHECK(napi_set_element(env, out, 0, v));
  CHECK(napi_create_int32(env, l ? l->last_errno : 0, &v));
  CHECK(napi_set_element(env, out, 1, v));
  return out;
}

/* connect(family, ipBuffer, port, sndbuf) -> fd of a connected, non-blocking UDP socket. */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "connect(family, ip, port, sndbuf)");
    return NULL;
  }
  int32_t family, port, sndbuf;
  void *ip;
  size_t iplen;
  CHECK(napi_get_value_int32(env, argv[0], &family));
  CHECK(napi_get_buffer_info(env, argv[1], &ip, &iplen));
  CHECK(napi_get_value_int32(env, argv[2], &port));
  CHECK(napi_get_value_int32(env, argv[3], &sndbuf));
  struct sockaddr_storage ss;
  socklen_t sslen;
  if (make_addr(family, ip, iplen, port, &ss, &sslen) != 0) {
    napi_throw_type_error(env, NULL, "udpfast: bad address");
    return NULL;
  }
  int fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  /* We never read from outputs: keep whatever a peer sends back small. */
  int tiny = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &tiny, sizeof tiny);
  if (connect(fd, (struct sockaddr *)&ss, sslen) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "connect", e);
  }
  napi_value out;
  CHECK(napi_create_int32(env, fd, &out));
  return out;
}

/* closeFd(fd) */
static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  if (fd >= 0) close(fd);
  return NULL;
}

/* sendEach(fds: Int32Array, n, data: Uint8Array, errs: Int32Array) -> failures.
 * Sends `data` once on each of the first n fds; errs[i] = 0 or the errno. */
static napi_value js_send_each(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type t;
  size_t nfds, len, nerrs, off;
  void *fds_p, *data_p, *errs_p;
  napi_value ab;
  int32_t n;
  CHECK(napi_get_typedarray_info(env, argv[0], &t, &nfds, &fds_p, &ab, &off));
  if (t != napi_int32_array) {
    napi_throw_type_error(env, NULL, "sendEach: fds must be an Int32Array");
    return NULL;
  }
  CHECK(napi_get_value_int32(env, argv[1], &n));
  CHECK(napi_get_typedarray_info(env, argv[2], &t, &len, &data_p, &ab, &off));
  if (t != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "sendEach: data must be a Uint8Array");
    return NULL;
  }
  CHECK(napi_get_typedarray_info(env, argv[3], &t, &nerrs, &errs_p, &ab, &off));
  if (t != napi_int32_array || n < 0 || (size_t)n > nfds || (size_t)n > nerrs) {
    napi_throw_range_error(env, NULL, "sendEach: n exceeds fds or errs");
    return NULL;
  }
  const int32_t *fds = fds_p;
  int32_t *errs = errs_p;
  int32_t failures = 0;
  for (int32_t i = 0; i < n; i++) {
    ssize_t r;
    do {
      r = send(fds[i], data_p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      errs[i] = errno;
      failures++;
    } else {
      errs[i] = 0;
    }
  }
  napi_value out;
  CHECK(napi_create_int32(env, failures, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"listenerErrors", NULL, js_listener_errors, NULL, NULL, NULL, napi_default, NULL},
      {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
      {"closeFd", NULL, js_close_fd, NULL, NULL, NULL, napi_default, NULL},
      {"sendEach", NULL, js_send_each, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

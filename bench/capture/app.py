# A stand-in for TLS terminators sharing a session cache through uWSGI's
# cache sync: each request does what a TLS handshake does to the cache.
#   /new?size=N&life=S     full handshake: store a new session (32-byte id, N random bytes)
#   /renew?id=HEX&size=N&life=S  session re-established: replace its value (cache_update)
#   /get?id=HEX            resumption attempt on this node: "hit" or "miss" (no cache traffic)
#   /del?id=HEX            session invalidated (e.g. alert, logout): cache_del
# Values are random bytes, so the capture holds no secrets.

import os

import uwsgi

CACHE = os.environ.get("BENCH_CACHE", "ssl")


def application(env, start_response):
    path = env.get("PATH_INFO", "/")
    args = dict(p.split("=", 1) for p in env.get("QUERY_STRING", "").split("&") if "=" in p)
    size = int(args.get("size", "300"))
    life = int(args.get("life", "300"))
    body = b"ok"
    if path == "/new":
        sid = os.urandom(32)
        uwsgi.cache_set(sid, os.urandom(size), life, CACHE)
        body = sid.hex().encode()
    elif path == "/renew":
        uwsgi.cache_update(bytes.fromhex(args["id"]), os.urandom(size), life, CACHE)
    elif path == "/get":
        body = b"hit" if uwsgi.cache_exists(bytes.fromhex(args["id"]), CACHE) else b"miss"
    elif path == "/del":
        uwsgi.cache_del(bytes.fromhex(args["id"]), CACHE)
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"unknown path\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

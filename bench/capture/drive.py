#!/usr/bin/env python3
"""Drives the uWSGI nodes of record.sh with a TLS-session-like workload.

usage: drive.py SECONDS RATE PORT [PORT...]   (the nodes' HTTP ports on 127.0.0.1)

Mix per request: 40% new sessions, 30% resumptions on another node (no cache
traffic; counts hits to show the sync works), 20% renewals (cache_update),
10% invalidations (cache_del). Session sizes: 70% 200-400 B, 20% 1-2 KiB,
10% 3-4 KiB. Lifetimes: mostly 300 s (the usual TLS session timeout), some
600 s and 3600 s.
"""

import random
import sys
import time
import urllib.request


def size():
    u = random.random()
    if u < 0.7:
        return random.randint(200, 400)
    if u < 0.9:
        return random.randint(1024, 2048)
    return random.randint(3072, 4000)


def life():
    return random.choices([300, 600, 3600], weights=[80, 15, 5])[0]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def main():
    seconds, rate, ports = float(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    random.seed(7)
    sessions = []  # (id, node index that created it)
    counts = {"new": 0, "get": 0, "hit": 0, "renew": 0, "del": 0}
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        n += 1
        u = random.random()
        if u < 0.4 or not sessions:
            node = random.randrange(len(ports))
            sid = get(ports[node], f"/new?size={size()}&life={life()}")
            sessions.append((sid, node))
            counts["new"] += 1
        elif u < 0.7:
            sid, origin = random.choice(sessions[-200:])
            others = [i for i in range(len(ports)) if i != origin] or [origin]
            counts["get"] += 1
            if get(ports[random.choice(others)], f"/get?id={sid}") == "hit":
                counts["hit"] += 1
        elif u < 0.9:
            sid, _ = random.choice(sessions[-200:])
            get(ports[random.randrange(len(ports))], f"/renew?id={sid}&size={size()}&life={life()}")
            counts["renew"] += 1
        else:
            i = random.randrange(max(0, len(sessions) - 200), len(sessions))
            sid, _ = sessions.pop(i)
            get(ports[random.randrange(len(ports))], f"/del?id={sid}")
            counts["del"] += 1
    hits = f"{counts['hit']}/{counts['get']}" if counts["get"] else "0/0"
    print(f"drive: {n} requests in {time.monotonic() - start:.1f} s: {counts['new']} new, {counts['renew']} renewals, "
          f"{counts['del']} deletes, resumptions on another node {hits} hits")


if __name__ == "__main__":
    main()

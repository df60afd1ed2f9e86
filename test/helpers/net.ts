// Real loopback sockets for tests. Every wait is bounded so a lost datagram
// fails the test quickly instead of hanging the run.

import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { contentOf, inspectCacheUpdate, newShape } from '../../src/wire/cache.js';
import { readTrace, type TraceFields } from '../../src/wire/trace.js';

/**
 * A forwarded cache update as the node sent it: without the loop trace a
 * forwarder appends (which uWSGI ignores, test/wire.cache.test.ts). Anything
 * else is returned as it is.
 */
export function untraced(buf: Buffer): Buffer {
  const s = newShape();
  if (inspectCacheUpdate(buf, s) !== undefined || s.traceAt < 0) return buf;
  return contentOf(buf, s);
}

/** The trace a forwarded cache update carries, or null. */
export function traceOf(buf: Buffer): TraceFields | null {
  const s = newShape();
  if (inspectCacheUpdate(buf, s) !== undefined || s.traceAt < 0) return null;
  return readTrace(buf, s.traceAt);
}

/** How long a test waits for an event before it fails: generous, since the machine may be shared with a bench (a wait that succeeds returns at once). */
export const WAIT_MS = 15_000;

/**
 * A UDP socket that queues what it receives and hands it out on demand.
 * Cache updates are handed out as the node sent them (untraced); `raw` keeps
 * the bytes as they arrived and `traced` counts those that carried a trace.
 */
export class Receiver {
  readonly received: Buffer[] = [];
  readonly raw: Buffer[] = [];
  traced = 0;
  /** How many datagrams next()/waitFor() have handed out. */
  private cursor = 0;
  private waiters: Array<() => void> = [];
  private constructor(readonly socket: Socket) {
    socket.on('message', (m) => {
      this.raw.push(m);
      const u = untraced(m);
      if (u !== m) this.traced++;
      this.received.push(u);
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  static open(host = '127.0.0.1', port = 0): Promise<Receiver> {
    return new Promise((resolve, reject) => {
      const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      s.once('error', reject);
      s.bind(port, host, () => {
        s.off('error', reject);
        resolve(new Receiver(s));
      });
    });
  }

  get port(): number {
    return this.socket.address().port;
  }

  get address(): string {
    const a = this.socket.address();
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  /**
   * Resolves with the first `n` datagrams once they have arrived (and counts
   * them as handed out for next()); rejects after `ms`.
   */
  async waitFor(n: number, ms = WAIT_MS): Promise<Buffer[]> {
    const deadline = Date.now() + ms;
    while (this.received.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.address}: got ${this.received.length} datagrams, wanted ${n} within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.cursor = Math.max(this.cursor, n);
    return this.received.slice(0, n);
  }

  /** The next datagram not yet handed out, waiting for it if needed. */
  async next(ms = WAIT_MS): Promise<Buffer> {
    const all = await this.waitFor(this.cursor + 1, ms);
    return all[all.length - 1]!;
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

/** Sends datagrams from one unbound socket, like uWSGI does. */
export class Sender {
  private constructor(private readonly socket: Socket) {}

  static open(family: 4 | 6 = 4): Sender {
    return new Sender(createSocket(family === 6 ? 'udp6' : 'udp4'));
  }

  /** A sender bound to a given local address (e.g. 127.0.0.2), to test source checks. */
  static bound(host: string): Promise<Sender> {
    return new Promise((resolve, reject) => {
      const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      s.once('error', reject);
      s.bind(0, host, () => resolve(new Sender(s)));
    });
  }

  send(buf: Buffer, port: number, host = '127.0.0.1'): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(buf, port, host, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.socket.close();
  }
}

/**
 * Ports handed out by freePort in this process, most recent last: two calls
 * in a row must not name the same one (a test asking for two listeners would
 * get "given twice").
 */
const given = new Set<number>();
const GIVEN_MAX = 4096;

/**
 * Where freePort draws from: below the kernel's ephemeral range, so that no
 * socket bound to port 0 (a bench beside the tests opens thousands) can take
 * a port between the moment it is handed out and the moment a daemon binds
 * it. Null when the range starts too low to leave room (then port 0 is used).
 */
const BELOW_EPHEMERAL: readonly [number, number] | null = (() => {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 12_000 ? [10_000, low - 1] : null;
  } catch {
    return null;
  }
})();

/** Resolves whether `port` (0: any) can be bound for TCP and UDP on `host` right now, with the port bound. */
function tryPort(host: string, port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(null));
    srv.listen(port, host, () => {
      const got = (srv.address() as { port: number }).port;
      srv.close(() => {
        const u = createSocket(host.includes(':') ? 'udp6' : 'udp4');
        u.once('error', () => {
          u.close();
          resolve(null);
        });
        u.bind(got, host, () => u.close(() => resolve(got)));
      });
    });
  });
}

/** A port nobody listens on right now (UDP and TCP), for configs that need a fixed one. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const range = attempt < 100 ? BELOW_EPHEMERAL : null;
    const want = range === null ? 0 : range[0] + Math.floor(Math.random() * (range[1] - range[0] + 1));
    if (want !== 0 && given.has(want)) continue;
    const port = await tryPort(host, want);
    if (port === null || given.has(port)) continue;
    given.add(port);
    if (given.size > GIVEN_MAX) given.delete(given.values().next().value as number);
    return port;
  }
  throw new Error(`no free port on ${host} after 200 attempts`);
}

/** Polls `check` until it returns a value other than undefined, or fails after `ms`. */
export async function eventually<T>(what: string, check: () => T | undefined | Promise<T | undefined>, ms = WAIT_MS): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

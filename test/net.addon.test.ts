// The udpfast addon (src/native/udpfast.c), loaded directly and driven over
// real loopback sockets: listeners (batches, lifetime, failures, poll
// errors), senders (sendmmsg fan-out, ICMP attribution, full buffers) and
// argument checks. Cases that a regression could turn into a crash or an
// abort (fd tricks under libuv, GC, worker teardown) run in a child node,
// whose exit status is the verdict. Every wait is bounded.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { nativeStatus } from '../src/net/native.js';
import { requirement } from './helpers/requirement.js';

interface ListenerHandle {
  readonly handle: unknown;
  readonly arena: ArrayBuffer;
  readonly meta: ArrayBuffer;
  readonly port: number;
  readonly fd: number;
  readonly slots: number;
  readonly slotSize: number;
  readonly metaWords: number;
  readonly rcvbuf: number;
}

interface UdpFast {
  listen(family: 4 | 6, ip: Buffer, port: number, rcvbuf: number, onBatch: (n: number) => void, onError: (errno: number) => void): ListenerHandle;
  resume(handle: unknown): boolean;
  unlisten(handle: unknown, onClosed: () => void): void;
  listenerStats(handle: unknown): [number, number, number, number];
  openSender(family: 4 | 6, sndbuf: number, rcvbuf: number): number;
  sendBatch(fds: Int32Array, dests: Uint8Array, n: number, data: Uint8Array, errs: Int32Array): number;
  drainSender(fd: number, out: Int32Array): [number, number];
  socketBuffers(fd: number): [number, number];
  closeFd(fd: number): void;
}

const repoRoot = join(__dirname, '..', '..');
const ADDON = join(repoRoot, 'src/native/build/Release/udpfast.node');
const built = requirement(
  'udpfast',
  'the udpfast addon tests',
  'The native datagram path goes untested.',
  existsSync(ADDON) ? { ok: true } : { ok: false, reason: `${ADDON} is not built` },
  'run npm run build:native',
);
const skip = built.skip;
// An addon older than src/native/udpfast.c (or none) leaves every suite running on node:dgram without a word:
// under CI that is a failure, here a loud skip.
const current = requirement(
  'udpfast current',
  'the datagram path on the native backend',
  'Every suite runs on node:dgram: the native path goes untested.',
  nativeStatus === 'loaded' ? { ok: true } : { ok: false, reason: `the addon does not load: ${nativeStatus}` },
  'run npm run build:native',
);

test('the addon the daemon loads is built from this source', { skip: current.skip }, () => {
  current.require();
  assert.equal(nativeStatus, 'loaded');
});
const api = (skip ? null : require(ADDON)) as UdpFast;

const E = constants.errno;
const WAIT_MS = 5000;
const LO4 = Buffer.from([127, 0, 0, 1]);
const LO6 = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const DEST_BYTES = 20;
const ERR_WORDS = 7;

const fdCount = (): number => readdirSync('/proc/self/fd').length;
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls cond (for states no event announces) until it holds; throws after ms. */
async function poll(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** Resolves when something is announced with poke() and cond holds; throws after ms. */
class Signal {
  private waiters: Array<() => void> = [];
  poke(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  async until(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

interface Got {
  len: number;
  family: number;
  port: number;
  addr: Buffer;
  data: Buffer;
}

/** A native listener that copies out what each batch reports. */
class Listener {
  readonly got: Got[] = [];
  readonly batches: number[] = [];
  readonly errors: number[] = [];
  readonly signal = new Signal();
  readonly h: ListenerHandle;
  /** Called after each batch was copied out. */
  afterBatch: ((n: number) => void) | null = null;

  constructor(family: 4 | 6, ip: Buffer = family === 4 ? LO4 : LO6, port = 0, rcvbuf = 0) {
    this.h = api.listen(
      family,
      ip,
      port,
      rcvbuf,
      (n) => this.onBatch(n),
      (errno) => {
        this.errors.push(errno);
        this.signal.poke();
      },
    );
  }

  private onBatch(n: number): void {
    const meta = new Int32Array(this.h.meta);
    const bytes = new Uint8Array(this.h.meta);
    for (let i = 0; i < n; i++) {
      const m = i * this.h.metaWords;
      const len = meta[m]!;
      const family = meta[m + 1]!;
      const start = i * this.h.slotSize;
      this.got.push({
        len,
        family,
        port: meta[m + 2]!,
        addr: Buffer.from(bytes.subarray((m + 3) * 4, (m + 3) * 4 + (family === 4 ? 4 : 16))),
        data: Buffer.from(new Uint8Array(this.h.arena, start, Math.max(len, 0))),
      });
    }
    this.batches.push(n);
    this.afterBatch?.(n);
    this.signal.poke();
  }

  waitFor(n: number, ms = WAIT_MS): Promise<void> {
    return this.signal.until(() => this.got.length >= n, `${n} datagrams (have ${this.got.length})`, ms);
  }

  close(): Promise<void> {
    return closeListener(this.h);
  }
}

function closeListener(h: ListenerHandle, ms = WAIT_MS): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`onClosed not called within ${ms} ms`)), ms);
    api.unlisten(h.handle, () => {
      clearTimeout(t);
      resolve();
    });
  });
}

interface Received {
  data: Buffer;
  port: number;
  address: string;
}

/** A node:dgram socket that records what it receives. */
class Receiver {
  readonly got: Received[] = [];
  private readonly signal = new Signal();
  private constructor(readonly socket: Socket) {
    socket.on('message', (data, rinfo) => {
      this.got.push({ data, port: rinfo.port, address: rinfo.address });
      this.signal.poke();
    });
  }

  static open(host = '127.0.0.1', recvBufferSize?: number): Promise<Receiver> {
    return new Promise((resolve, reject) => {
      const type = host.includes(':') ? 'udp6' : 'udp4';
      const s = createSocket(recvBufferSize === undefined ? { type } : { type, recvBufferSize });
      s.once('error', reject);
      s.bind(0, host, () => {
        s.off('error', reject);
        resolve(new Receiver(s));
      });
    });
  }

  get port(): number {
    return this.socket.address().port;
  }

  waitFor(n: number, ms = WAIT_MS): Promise<void> {
    return this.signal.until(() => this.got.length >= n, `${n} datagrams on port ${this.port} (have ${this.got.length})`, ms);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** A port nobody listens on: bound, read, closed. */
async function deadPort(host: string): Promise<number> {
  const r = await Receiver.open(host);
  const port = r.port;
  await r.close();
  return port;
}

/** Sends each payload from a fresh node:dgram socket; resolves with its port once all were handed to the kernel. */
async function sendFrom(host: string, port: number, payloads: Buffer[]): Promise<number> {
  const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  await new Promise<void>((resolve) => s.bind(0, host, () => resolve()));
  const from = s.address().port;
  await Promise.all(payloads.map((p) => new Promise<void>((resolve, reject) => s.send(p, port, host, (err) => (err ? reject(err) : resolve())))));
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return from;
}

type Dest = readonly [4 | 6, Buffer, number];

function encodeDests(list: readonly Dest[]): Uint8Array {
  const out = new Uint8Array(list.length * DEST_BYTES);
  list.forEach(([family, ip, port], i) => {
    const o = i * DEST_BYTES;
    out[o] = family;
    out[o + 1] = 0;
    out[o + 2] = port & 0xff;
    out[o + 3] = port >> 8;
    out.set(ip, o + 4);
  });
  return out;
}

/** sendBatch over parallel lists of fds and destinations; returns [failures, errs]. */
function sendBatch(fds: number[], dests: readonly Dest[], data: Uint8Array): [number, Int32Array] {
  const errs = new Int32Array(dests.length).fill(-1);
  const failures = api.sendBatch(Int32Array.from(fds), encodeDests(dests), dests.length, data, errs);
  return [failures, errs];
}

/** Error records from drainSender as objects. */
function errorRecords(out: Int32Array, count: number): Array<{ errno: number; family: number; port: number; addr: Buffer }> {
  const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  return Array.from({ length: count }, (_, i) => {
    const o = i * ERR_WORDS;
    const family = out[o + 1]!;
    return {
      errno: out[o]!,
      family,
      port: out[o + 2]!,
      addr: Buffer.from(bytes.subarray((o + 3) * 4, (o + 3) * 4 + (family === 4 ? 4 : 16))),
    };
  });
}

/** A counter from /proc/net/snmp ("Icmp", "InDestUnreachs") or /proc/net/snmp6 ("Udp6SndbufErrors"). */
function snmp(group: string, name?: string): number {
  if (name === undefined) {
    const line = readFileSync('/proc/net/snmp6', 'utf8').split('\n').find((l) => l.split(/\s+/)[0] === group);
    if (line === undefined) throw new Error(`no ${group} in /proc/net/snmp6`);
    return Number(line.split(/\s+/)[1]);
  }
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith(`${group}:`));
  const keys = lines[0]!.split(/\s+/);
  const values = lines[1]!.split(/\s+/);
  return Number(values[keys.indexOf(name)]);
}

/** The local port of a socket fd, from /proc/net/udp{,6} by inode. */
function localPort(fd: number, family: 4 | 6): number {
  const inode = /socket:\[(\d+)\]/.exec(readlinkSync(`/proc/self/fd/${fd}`))![1];
  for (const line of readFileSync(family === 4 ? '/proc/net/udp' : '/proc/net/udp6', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols[9] === inode) return parseInt(cols[1]!.split(':')[1]!, 16);
  }
  throw new Error(`fd ${fd} (inode ${inode}) not in /proc/net/udp`);
}

const CHILD_PRELUDE = `
const u = require(process.env.UDPFAST_ADDON);
const assert = require('node:assert/strict');
const dgram = require('node:dgram');
const { readdirSync } = require('node:fs');
const fdCount = () => readdirSync('/proc/self/fd').length;
const turn = () => new Promise((r) => setImmediate(r));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const LO4 = Buffer.from([127, 0, 0, 1]);
const closed = (h) => new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error('onClosed not called')), 5000);
  u.unlisten(h.handle, () => { clearTimeout(t); resolve(); });
});
async function until(cond, what) {
  const deadline = Date.now() + 5000;
  while (!cond()) { if (Date.now() > deadline) throw new Error('timed out waiting for ' + what); await sleep(2); }
}
async function deadPort() {
  const s = dgram.createSocket('udp4');
  await new Promise((r) => s.bind(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}
`;

/** Runs body (async JS) in a child node with --expose-gc; asserts it exits 0. */
function child(body: string, what: string, env: Record<string, string> = {}): string {
  const script = `${CHILD_PRELUDE}\n(async () => {\n${body}\n})().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, UDPFAST_ADDON: ADDON, ...env },
  });
  assert.equal(
    r.status,
    0,
    `${what}: child exited with status ${r.status} signal ${r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
  );
  return r.stdout;
}

describe('udpfast listeners', { skip }, () => {
  for (const [family, host, ip] of [
    [4, '127.0.0.1', LO4],
    [6, '::1', LO6],
  ] as const) {
    test(`listen on ${host}: onBatch reports each datagram's length, family, port and address`, async () => {
      const l = new Listener(family);
      try {
        assert.ok(l.h.port > 0);
        assert.equal(l.h.slots, 32);
        assert.equal(l.h.slotSize, 65536);
        assert.equal(l.h.arena.byteLength, l.h.slots * l.h.slotSize);
        assert.equal(l.h.meta.byteLength, l.h.slots * l.h.metaWords * 4);
        const payloads = [Buffer.alloc(0), Buffer.from('hello'), Buffer.alloc(1200, 7), Buffer.alloc(60_000, 9)];
        const from = await sendFrom(host, l.h.port, payloads);
        await l.waitFor(payloads.length);
        assert.equal(l.got.length, payloads.length);
        l.got.forEach((g, i) => {
          assert.equal(g.len, payloads[i]!.length, `length of datagram ${i}`);
          assert.ok(g.data.equals(payloads[i]!), `bytes of datagram ${i}`);
          assert.equal(g.family, family);
          assert.equal(g.port, from);
          assert.ok(g.addr.equals(ip), `address ${g.addr.toString('hex')}`);
        });
        assert.deepEqual(api.listenerStats(l.h.handle), [0, 0, 0, 0]);
      } finally {
        await l.close();
      }
    });
  }

  test('more than 32 queued datagrams arrive in several batches of at most 32, in order, in one readable event', async () => {
    const l = new Listener(4);
    try {
      // An immediate scheduled by the first batch runs only once the event
      // loop gets control back from the readable event.
      const events: string[] = [];
      l.afterBatch = (n) => {
        if (events.length === 0) setImmediate(() => events.push('immediate'));
        events.push(`batch ${n}`);
      };
      const payloads = Array.from({ length: 100 }, (_, i) => Buffer.from(`datagram ${i}`));
      await sendFrom('127.0.0.1', l.h.port, payloads);
      await l.waitFor(100);
      await turn();
      assert.deepEqual(events, ['batch 32', 'batch 32', 'batch 32', 'batch 4', 'immediate']);
      assert.deepEqual(
        l.got.map((g) => g.data.toString()),
        payloads.map((p) => p.toString()),
      );
      assert.ok(l.batches.length >= 4, `batches ${l.batches}`);
      assert.ok(
        l.batches.every((n) => n >= 1 && n <= 32),
        `batch sizes ${l.batches}`,
      );
    } finally {
      await l.close();
    }
  });

  test('rcvbuf: the effective SO_RCVBUF is reported; above INT_MAX is a RangeError, not wrapped', async () => {
    const before = fdCount();
    const asked = 1 << 18;
    const l = new Listener(4, LO4, 0, asked);
    const d = new Listener(4);
    try {
      assert.equal(l.h.rcvbuf, api.socketBuffers(l.h.fd)[0]);
      assert.ok(l.h.rcvbuf >= asked, `rcvbuf ${l.h.rcvbuf}`);
      assert.equal(d.h.rcvbuf, api.socketBuffers(d.h.fd)[0]);
      assert.notEqual(l.h.rcvbuf, d.h.rcvbuf);
    } finally {
      await l.close();
      await d.close();
    }
    // 2**32 + 4096 is 4096 as an int32.
    for (const bad of [2 ** 31, 2 ** 32 + 4096, -1, 1.5, Number.NaN]) {
      assert.throws(() => api.listen(4, LO4, 0, bad, () => {}, () => {}), RangeError, `rcvbuf ${bad}`);
    }
    assert.equal(fdCount(), before);
  });

  test('unlisten: onClosed comes once the fd is closed, the port binds again, the closed handle still answers', async () => {
    const before = fdCount();
    const l = new Listener(4);
    const port = l.h.port;
    const fdsAtClose: number[] = [];
    const order: string[] = [];
    const done = new Signal();
    api.unlisten(l.h.handle, () => {
      fdsAtClose.push(fdCount());
      order.push('first');
      done.poke();
    });
    // A second call while the close is under way: called at the same moment.
    api.unlisten(l.h.handle, () => {
      order.push('second');
      done.poke();
    });
    assert.equal(order.length, 0, 'onClosed is never called from inside unlisten() while closing');
    await done.until(() => order.length === 2, 'both onClosed');
    assert.deepEqual(order, ['first', 'second']);
    assert.deepEqual(fdsAtClose, [before], 'the fd was closed before onClosed ran');
    // After the close completed: called before unlisten() returns.
    api.unlisten(l.h.handle, () => order.push('third'));
    assert.deepEqual(order, ['first', 'second', 'third']);
    assert.deepEqual(api.listenerStats(l.h.handle), [0, 0, 0, 0]);
    assert.equal(api.resume(l.h.handle), false);

    const s = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, '127.0.0.1', () => resolve());
    });
    await new Promise<void>((resolve) => s.close(() => resolve()));
    assert.equal(fdCount(), before);
  });

  test('no JS callback after unlisten, even when called from inside onBatch with datagrams still queued', async () => {
    const l = new Listener(4);
    let closedAt = -1;
    const closedSignal = new Signal();
    l.afterBatch = () => {
      if (closedAt >= 0) return;
      closedAt = l.batches.length;
      api.unlisten(l.h.handle, () => {
        closedSignal.poke();
      });
    };
    await sendFrom(
      '127.0.0.1',
      l.h.port,
      Array.from({ length: 100 }, (_, i) => Buffer.from(`x${i}`)),
    );
    await l.waitFor(1);
    await closedSignal.until(() => true, 'onClosed');
    for (let i = 0; i < 5; i++) await turn();
    assert.equal(closedAt, 1);
    assert.equal(l.batches.length, 1, `batches after unlisten: ${l.batches}`);
    assert.ok(l.got.length < 100, 'some datagrams were still queued');
    assert.deepEqual(l.errors, []);
  });

  test('resume on a polling listener is a no-op that returns true', async () => {
    const l = new Listener(4);
    try {
      assert.equal(api.resume(l.h.handle), true);
      assert.equal(api.resume(l.h.handle), true);
      await sendFrom('127.0.0.1', l.h.port, [Buffer.from('a'), Buffer.from('b')]);
      await l.waitFor(2);
      assert.deepEqual(
        l.got.map((g) => g.data.toString()),
        ['a', 'b'],
      );
    } finally {
      await l.close();
    }
  });

  test('a detached arena stops the listener with onError(EFAULT) instead of receiving into it', async () => {
    const l = new Listener(4);
    const moved = structuredClone(l.h.arena, { transfer: [l.h.arena] });
    try {
      assert.equal(l.h.arena.byteLength, 0);
      await sendFrom('127.0.0.1', l.h.port, [Buffer.from('into the void')]);
      await l.signal.until(() => l.errors.length > 0, 'onError');
      assert.deepEqual(l.errors, [E.EFAULT]);
      assert.deepEqual(new Uint8Array(moved, 0, 4), new Uint8Array(4), 'nothing was written to the moved memory');
      assert.equal(api.resume(l.h.handle), false);
      assert.deepEqual(l.got, []);
      const [, last, , pollErrors] = api.listenerStats(l.h.handle);
      assert.equal(last, E.EFAULT);
      assert.equal(pollErrors, 1);
    } finally {
      await l.close();
    }
  });

  for (const [family, host, ip] of [
    [4, '127.0.0.1', LO4],
    [6, '::1', LO6],
  ] as const) {
    test(`listen on a port in use on ${host} throws EADDRINUSE and leaves no fd open`, async () => {
      const r = await Receiver.open(host);
      try {
        const before = fdCount();
        assert.throws(
          () => api.listen(family, ip, r.port, 0, () => {}, () => {}),
          (err: NodeJS.ErrnoException) => {
            assert.ok(err instanceof Error);
            assert.equal(err.code, 'EADDRINUSE');
            assert.equal(err.errno, E.EADDRINUSE);
            assert.equal(err.syscall, 'bind');
            return true;
          },
        );
        assert.equal(fdCount(), before);
      } finally {
        await r.close();
      }
    });
  }

  test('a listen that fails after its N-API objects were made (uv_poll_init EEXIST) undoes everything', () => {
    child(
      `
      const a = u.listen(4, LO4, 0, 0, () => {}, () => {});
      await turn(); // libuv has registered a.fd with epoll
      const fds = fdCount();
      u.closeFd(a.fd); // libuv still watches this number; the next socket gets it
      let err;
      try { u.listen(4, LO4, 0, 0, () => {}, () => {}); } catch (e) { err = e; }
      assert.ok(err instanceof Error, 'listen threw');
      assert.equal(err.code, 'EEXIST');
      assert.equal(err.errno, 17);
      assert.equal(fdCount(), fds - 1, 'the failed listener closed its fd');
      for (let i = 0; i < 5; i++) await turn(); // a poll left on a closed fd would abort here
      await closed(a);
      assert.equal(fdCount(), fds - 1);
      global.gc(); await turn(); global.gc();
      `,
      'half-way listen failure',
      { MALLOC_PERTURB_: '165' },
    );
  });

  test('a poll error stops the poll, calls onError once, does not spin; resume refuses a foreign fd; no crash', () => {
    child(
      `
      const dead = await deadPort();
      const errors = [];
      let batches = 0;
      const h = u.listen(4, LO4, 0, 0, () => batches++, (e) => errors.push(e));
      // Before libuv registers h.fd with epoll, put a sender socket on that
      // number; an ICMP error on it then makes the poll report POLLERR.
      u.closeFd(h.fd);
      const s = u.openSender(4, 0, 0);
      if (s !== h.fd) { console.error('fd number not reused', s, h.fd); process.exit(3); }
      const dest = Buffer.alloc(20);
      dest[0] = 4; dest.writeUInt16LE(dead, 2); LO4.copy(dest, 4);
      u.sendBatch(Int32Array.of(s), dest, 1, Buffer.from('x'), new Int32Array(1));
      await until(() => errors.length > 0, 'onError');
      const cpu0 = process.cpuUsage();
      await sleep(300);
      const cpu = process.cpuUsage(cpu0);
      assert.deepEqual(errors, [9], 'onError(EBADF) once: the fd is not the listener socket any more');
      assert.ok(cpu.user + cpu.system < 150000, 'cpu ' + JSON.stringify(cpu));
      assert.deepEqual(u.listenerStats(h.handle), [0, 9, 0, 1]);
      assert.equal(u.resume(h.handle), false, 'resume must not poll a socket that is not the listener');
      await sleep(50);
      assert.equal(errors.length, 1);
      assert.equal(batches, 0);
      await closed(h);
      assert.deepEqual(u.socketBuffers(s).length, 2, 'on_close left the foreign fd open');
      u.closeFd(s);
      global.gc(); await turn(); global.gc();
      `,
      'poll error',
    );
  });

  test('handles survive GC and unlisten in any order; freed memory is never read (child, MALLOC_PERTURB_)', () => {
    child(
      `
      const EFAULT = 14;
      const kept = [];
      const sender = dgram.createSocket('udp4');
      for (let round = 0; round < 20; round++) {
        const hs = [];
        for (let i = 0; i < 10; i++) hs.push(u.listen(4, LO4, 0, 0, () => {}, () => {}));
        // The kept handle gets final stats no fresh listener has: a freed
        // struct, reused or perturbed, would not report them.
        let failed = false;
        const k = u.listen(4, LO4, 0, 0, () => {}, () => { failed = true; });
        structuredClone(k.arena, { transfer: [k.arena] });
        sender.send('x', k.port, '127.0.0.1');
        await until(() => failed, 'onError(EFAULT)');
        hs.push(k);
        await Promise.all(hs.map(closed));
        kept.push(k.handle);
        hs.length = 0;
        global.gc();
        await turn();
        global.gc();
        for (const k of kept) {
          assert.deepEqual(u.listenerStats(k), [0, EFAULT, 0, 1]);
          assert.equal(u.resume(k), false);
          let again = 0;
          u.unlisten(k, () => again++);
          assert.equal(again, 1);
        }
      }
      // Dropped while the close is under way.
      for (let i = 0; i < 50; i++) {
        const h = u.listen(4, LO4, 0, 0, () => {}, () => {});
        u.unlisten(h.handle, () => {});
      }
      global.gc();
      for (let i = 0; i < 5; i++) { await turn(); global.gc(); }
      kept.length = 0;
      global.gc();
      await turn();
      sender.close();
      // And one left open when the process exits.
      u.listen(4, LO4, 0, 0, () => {}, () => {});
      `,
      'GC and lifetime',
      { MALLOC_PERTURB_: '165' },
    );
  });

  test('a worker terminated with a listener open frees its port and does not crash the process', () => {
    const out = child(
      `
      const { Worker } = require('node:worker_threads');
      // Only the worker loads the addon, so its teardown unloads it.
      const w = new Worker(\`
        const u = require(process.env.UDPFAST_ADDON);
        const h = u.listen(4, Buffer.from([127, 0, 0, 1]), 0, 0, () => {}, () => {});
        require('node:worker_threads').parentPort.postMessage(h.port);
      \`, { eval: true });
      const port = await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
      await w.terminate();
      const s = dgram.createSocket('udp4');
      await new Promise((resolve, reject) => { s.once('error', reject); s.bind(port, '127.0.0.1', resolve); });
      s.close();
      console.log('rebound', port);
      `,
      'worker teardown',
    );
    assert.match(out, /rebound \d+/);
  });
});

describe('udpfast senders', { skip }, () => {
  test('openSender(4) + sendBatch: each of 3 receivers gets the datagram exactly once; errs all 0', async () => {
    const rs = await Promise.all([Receiver.open(), Receiver.open(), Receiver.open()]);
    const fd = api.openSender(4, 0, 0);
    try {
      const dests = rs.map((r) => [4, LO4, r.port] as const);
      const [failures, errs] = sendBatch([fd, fd, fd], dests, Buffer.from('payload'));
      assert.equal(failures, 0);
      assert.deepEqual([...errs], [0, 0, 0]);
      // A second batch marks the end: anything duplicated would come before it.
      assert.equal(sendBatch([fd, fd, fd], dests, Buffer.from('end'))[0], 0);
      await Promise.all(rs.map((r) => r.waitFor(2)));
      const port = localPort(fd, 4);
      for (const r of rs) {
        assert.deepEqual(
          r.got.map((g) => g.data.toString()),
          ['payload', 'end'],
        );
        assert.ok(r.got.every((g) => g.port === port && g.address === '127.0.0.1'));
      }
    } finally {
      api.closeFd(fd);
      await Promise.all(rs.map((r) => r.close()));
    }
  });

  test('2500 destinations (repeating 5 receivers) in one call go out in sendmmsg chunks, each exactly once', async () => {
    const rs = await Promise.all(Array.from({ length: 5 }, () => Receiver.open('127.0.0.1', 1 << 22)));
    const fd = api.openSender(4, 0, 0);
    try {
      const n = 2500;
      const dests = Array.from({ length: n }, (_, i) => [4, LO4, rs[i % 5]!.port] as const);
      const [failures, errs] = sendBatch(Array(n).fill(fd), dests, Buffer.from('many'));
      assert.equal(failures, 0);
      assert.ok(errs.every((e) => e === 0));
      assert.equal(sendBatch([fd, fd, fd, fd, fd], dests.slice(0, 5), Buffer.from('end'))[0], 0);
      await Promise.all(rs.map((r) => r.waitFor(n / 5 + 1, 30_000)));
      for (const r of rs) {
        assert.equal(r.got.length, n / 5 + 1);
        assert.equal(r.got.filter((g) => g.data.toString() === 'many').length, n / 5);
        assert.equal(r.got[r.got.length - 1]!.data.toString(), 'end');
      }
    } finally {
      api.closeFd(fd);
      await Promise.all(rs.map((r) => r.close()));
    }
  });

  test('destinations on two sender fds, interleaved, each leave from their own socket', async () => {
    const rs = await Promise.all(Array.from({ length: 6 }, () => Receiver.open()));
    const a = api.openSender(4, 0, 0);
    const b = api.openSender(4, 0, 0);
    try {
      const fds = [a, a, b, a, b, b];
      const [failures, errs] = sendBatch(
        fds,
        rs.map((r) => [4, LO4, r.port] as const),
        Buffer.from('mixed'),
      );
      assert.equal(failures, 0);
      assert.deepEqual([...errs], [0, 0, 0, 0, 0, 0]);
      await Promise.all(rs.map((r) => r.waitFor(1)));
      const ports = new Map([
        [a, localPort(a, 4)],
        [b, localPort(b, 4)],
      ]);
      assert.notEqual(ports.get(a), ports.get(b));
      rs.forEach((r, i) => {
        assert.equal(r.got.length, 1);
        assert.equal(r.got[0]!.port, ports.get(fds[i]!), `receiver ${i} (fd ${fds[i]})`);
      });
    } finally {
      api.closeFd(a);
      api.closeFd(b);
      await Promise.all(rs.map((r) => r.close()));
    }
  });

  test('ICMP: drainSender attributes ECONNREFUSED to the closed destination; the pending error costs no later copy', async () => {
    const dead = await deadPort('127.0.0.1');
    const live = await Receiver.open();
    const live2 = await Receiver.open();
    const fd = api.openSender(4, 0, 0);
    try {
      const unreach = snmp('Icmp', 'InDestUnreachs');
      assert.deepEqual([...sendBatch([fd], [[4, LO4, dead]], Buffer.from('to nobody'))[1]], [0]);
      // The port-unreachable answer is now pending on the socket.
      await poll(() => snmp('Icmp', 'InDestUnreachs') > unreach, 'the ICMP port unreachable');
      const [failures, errs] = sendBatch([fd], [[4, LO4, live.port]], Buffer.from('first'));
      assert.equal(failures, 0);
      assert.deepEqual([...errs], [0], 'the send that consumed the pending error was retried');
      // Within one call: the ICMP for message 0 fails message 1 inside sendmmsg.
      const [f2, errs2] = sendBatch(
        [fd, fd, fd],
        [
          [4, LO4, dead],
          [4, LO4, live.port],
          [4, LO4, live2.port],
        ],
        Buffer.from('second'),
      );
      assert.equal(f2, 0);
      assert.deepEqual([...errs2], [0, 0, 0]);
      assert.equal(sendBatch([fd, fd], [[4, LO4, live.port], [4, LO4, live2.port]], Buffer.from('end'))[0], 0);
      await live.waitFor(3);
      await live2.waitFor(2);
      assert.deepEqual(
        live.got.map((g) => g.data.toString()),
        ['first', 'second', 'end'],
      );
      assert.deepEqual(
        live2.got.map((g) => g.data.toString()),
        ['second', 'end'],
      );

      const out = new Int32Array(ERR_WORDS * 8);
      const records: ReturnType<typeof errorRecords> = [];
      await poll(() => {
        const [count] = api.drainSender(fd, out);
        records.push(...errorRecords(out, count));
        return records.length >= 2;
      }, 'two error records');
      for (const r of records) {
        assert.equal(r.errno, E.ECONNREFUSED);
        assert.equal(r.family, 4);
        assert.equal(r.port, dead);
        assert.ok(r.addr.equals(LO4));
      }
      assert.deepEqual(api.drainSender(fd, out), [0, 0]);
    } finally {
      api.closeFd(fd);
      await live.close();
      await live2.close();
    }
  });

  test('drainSender discards datagrams sent to the sender port and keeps at most out.length / 7 records', async () => {
    const fd = api.openSender(4, 0, 0);
    try {
      const port = localPort(fd, 4);
      await sendFrom('127.0.0.1', port, [Buffer.from('a'), Buffer.from('b'), Buffer.from('c')]);
      const dead = await deadPort('127.0.0.1');
      const unreach = snmp('Icmp', 'InDestUnreachs');
      sendBatch([fd, fd, fd], [[4, LO4, dead], [4, LO4, dead], [4, LO4, dead]], Buffer.from('x'));
      await poll(() => snmp('Icmp', 'InDestUnreachs') >= unreach + 2, 'ICMP answers');
      const small = new Int32Array(ERR_WORDS + 3); // room for one record
      const [records, discarded] = api.drainSender(fd, small);
      assert.equal(records, 1);
      assert.equal(discarded, 3);
      assert.deepEqual([...small.subarray(ERR_WORDS)], [0, 0, 0], 'nothing written past the last whole record');
      let more = 0;
      await poll(() => {
        more += api.drainSender(fd, new Int32Array(ERR_WORDS * 4))[0];
        return more >= 1;
      }, 'the remaining records');
      assert.deepEqual(api.drainSender(fd, new Int32Array(0)), [0, 0]);
    } finally {
      api.closeFd(fd);
    }
  });

  test('a full sender buffer fails that copy and every later one on the same fd, with one system call', async () => {
    // On loopback a v4 sender never fills (lo orphans each skb at once). An
    // IPv6 datagram too big for lo's MTU is fragmented, and with a tiny
    // SO_SNDBUF the kernel refuses the second fragment with ENOBUFS, every
    // time: a full buffer on demand. Udp6SndbufErrors counts the attempts.
    const slow = await Receiver.open('::1');
    const other = await Receiver.open('::1', 1 << 22);
    const tiny = api.openSender(6, 1, 0);
    const normal = api.openSender(6, 0, 0);
    try {
      const data = Buffer.alloc(65_500, 1);
      const fds = [...Array(100).fill(tiny), normal, normal, ...Array(100).fill(tiny)];
      const dests = fds.map((fd) => [6, LO6, fd === tiny ? slow.port : other.port] as const);
      const attempts = snmp('Udp6SndbufErrors');
      const t0 = Date.now();
      const [failures, errs] = sendBatch(fds, dests, data);
      const ms = Date.now() - t0;
      assert.equal(failures, 200);
      const full = new Set([E.EAGAIN, E.EWOULDBLOCK, E.ENOBUFS]);
      fds.forEach((fd, i) => {
        if (fd === tiny) assert.ok(full.has(errs[i]!), `errs[${i}] = ${errs[i]}`);
        else assert.equal(errs[i], 0, `errs[${i}]`);
      });
      assert.equal(snmp('Udp6SndbufErrors') - attempts, 1, 'one failed attempt, then no more system calls on that fd');
      assert.ok(ms < 1000, `took ${ms} ms`);
      await other.waitFor(2);
      assert.ok(other.got.every((g) => g.data.length === data.length));
    } finally {
      api.closeFd(tiny);
      api.closeFd(normal);
      await slow.close();
      await other.close();
    }
  });

  test('IPv6: openSender(6) delivers to [::1] receivers once each, and attributes ICMPv6 errors', async () => {
    const rs = await Promise.all([Receiver.open('::1'), Receiver.open('::1'), Receiver.open('::1')]);
    const dead = await deadPort('::1');
    const fd = api.openSender(6, 0, 0);
    try {
      const dests = rs.map((r) => [6, LO6, r.port] as const);
      const [failures, errs] = sendBatch([fd, fd, fd], dests, Buffer.from('six'));
      assert.equal(failures, 0);
      assert.deepEqual([...errs], [0, 0, 0]);
      assert.equal(sendBatch([fd, fd, fd], dests, Buffer.from('end'))[0], 0);
      await Promise.all(rs.map((r) => r.waitFor(2)));
      const port = localPort(fd, 6);
      for (const r of rs) {
        assert.deepEqual(
          r.got.map((g) => g.data.toString()),
          ['six', 'end'],
        );
        assert.ok(r.got.every((g) => g.port === port && g.address === '::1'));
      }

      const unreach = snmp('Icmp6InDestUnreachs');
      sendBatch([fd], [[6, LO6, dead]], Buffer.from('to nobody'));
      await poll(() => snmp('Icmp6InDestUnreachs') > unreach, 'the ICMPv6 port unreachable');
      assert.deepEqual([...sendBatch([fd], [dests[0]!], Buffer.from('after'))[1]], [0]);
      await rs[0]!.waitFor(3);
      assert.equal(rs[0]!.got[2]!.data.toString(), 'after');
      const out = new Int32Array(ERR_WORDS * 4);
      const records: ReturnType<typeof errorRecords> = [];
      await poll(() => {
        const [count] = api.drainSender(fd, out);
        records.push(...errorRecords(out, count));
        return records.length >= 1;
      }, 'an error record');
      assert.equal(records.length, 1);
      assert.equal(records[0]!.errno, E.ECONNREFUSED);
      assert.equal(records[0]!.family, 6);
      assert.equal(records[0]!.port, dead);
      assert.ok(records[0]!.addr.equals(LO6));
    } finally {
      api.closeFd(fd);
      await Promise.all(rs.map((r) => r.close()));
    }
  });

  test('openSender: IP_RECVERR socket with the asked buffers; above INT_MAX is a RangeError', () => {
    const before = fdCount();
    // Small sizes, well below the defaults (Linux doubles what is asked).
    const fd = api.openSender(4, 1 << 12, 1 << 13);
    try {
      const [rcv, snd] = api.socketBuffers(fd);
      assert.ok(snd >= 1 << 12 && snd <= 1 << 14, `sndbuf ${snd}`);
      assert.ok(rcv >= 1 << 13 && rcv <= 1 << 15, `rcvbuf ${rcv}`);
    } finally {
      api.closeFd(fd);
    }
    assert.throws(() => api.openSender(4, 2 ** 31, 0), RangeError);
    assert.throws(() => api.openSender(4, 0, 2 ** 32 + 1), RangeError);
    assert.throws(() => api.openSender(6, -1, 0), RangeError);
    assert.equal(fdCount(), before);
  });
});

describe('udpfast arguments', { skip }, () => {
  test('bad arguments throw TypeError or RangeError and never send', async () => {
    const r = await Receiver.open();
    const fd = api.openSender(4, 0, 0);
    const l = new Listener(4);
    const before = fdCount();
    try {
      const good = encodeDests([
        [4, LO4, r.port],
        [4, LO4, r.port],
      ]);
      const data = Buffer.from('bad');
      const fds = Int32Array.of(fd, fd);
      const errs = new Int32Array(2);
      const withThird = (patch: (d: Uint8Array) => void): Uint8Array => {
        const d = encodeDests([
          [4, LO4, r.port],
          [4, LO4, r.port],
          [4, LO4, r.port],
        ]);
        patch(d.subarray(40));
        return d;
      };
      const fds3 = Int32Array.of(fd, fd, fd);
      const errs3 = new Int32Array(3);
      const cases: Array<[string, () => unknown, typeof TypeError | typeof RangeError]> = [
        ['fds not an Int32Array', () => api.sendBatch(Uint32Array.of(fd, fd) as never, good, 2, data, errs), TypeError],
        ['dests not a Uint8Array', () => api.sendBatch(fds, new Uint16Array(20) as never, 2, data, errs), TypeError],
        ['data a string', () => api.sendBatch(fds, good, 2, 'bad' as never, errs), TypeError],
        ['errs a plain array', () => api.sendBatch(fds, good, 2, data, [0, 0] as never), TypeError],
        ['n not a number', () => api.sendBatch(fds, good, '2' as never, data, errs), TypeError],
        ['n negative', () => api.sendBatch(fds, good, -1, data, errs), RangeError],
        ['n fractional', () => api.sendBatch(fds, good, 1.5, data, errs), RangeError],
        ['n > fds.length', () => api.sendBatch(Int32Array.of(fd), good, 2, data, errs), RangeError],
        ['n * 20 > dests.length', () => api.sendBatch(fds, good.subarray(0, 39), 2, data, errs), RangeError],
        ['n > errs.length', () => api.sendBatch(fds, good, 2, data, new Int32Array(1)), RangeError],
        ['errs sharing memory with fds', () => api.sendBatch(fds, good, 2, data, fds), RangeError],
        ['third destination family 5', () => api.sendBatch(fds3, withThird((d) => (d[0] = 5)), 3, data, errs3), TypeError],
        ['third destination family 0', () => api.sendBatch(fds3, withThird((d) => (d[0] = 0)), 3, data, errs3), TypeError],
        ['third destination port 0', () => api.sendBatch(fds3, withThird((d) => (d[2] = d[3] = 0)), 3, data, errs3), TypeError],
        ['third destination reserved byte set', () => api.sendBatch(fds3, withThird((d) => (d[1] = 1)), 3, data, errs3), TypeError],
        ['listen family 5', () => api.listen(5 as never, LO4, 0, 0, () => {}, () => {}), TypeError],
        ['listen ip of 16 bytes for family 4', () => api.listen(4, LO6, 0, 0, () => {}, () => {}), TypeError],
        ['listen ip a string', () => api.listen(4, '127.0.0.1' as never, 0, 0, () => {}, () => {}), TypeError],
        ['listen port 65536', () => api.listen(4, LO4, 65536, 0, () => {}, () => {}), TypeError],
        ['listen onBatch missing', () => api.listen(4, LO4, 0, 0, undefined as never, () => {}), TypeError],
        ['listen onError not a function', () => api.listen(4, LO4, 0, 0, () => {}, 1 as never), TypeError],
        ['openSender family 0', () => api.openSender(0 as never, 0, 0), TypeError],
        ['unlisten a plain object', () => api.unlisten({}, () => {}), TypeError],
        ['unlisten without onClosed', () => api.unlisten(l.h.handle, undefined as never), TypeError],
        ['resume a number', () => api.resume(3), TypeError],
        ['listenerStats a string', () => api.listenerStats('handle'), TypeError],
        ['drainSender into a Uint8Array', () => api.drainSender(fd, new Uint8Array(28) as never), TypeError],
        ['drainSender fd -1', () => api.drainSender(-1, new Int32Array(7)), TypeError],
        ['socketBuffers fd 1.5', () => api.socketBuffers(1.5), TypeError],
        ['closeFd a string', () => api.closeFd('3' as never), TypeError],
      ];
      for (const [what, call, kind] of cases) assert.throws(call, kind, what);
      assert.equal(fdCount(), before, 'no fd left behind');

      // Nothing went out: the first datagram each side receives is the marker.
      assert.equal(api.sendBatch(Int32Array.of(fd), good, 1, Buffer.from('marker'), new Int32Array(1)), 0);
      await r.waitFor(1);
      await sendFrom('127.0.0.1', l.h.port, [Buffer.from('still listening')]);
      await l.waitFor(1);
      for (let i = 0; i < 3; i++) await turn();
      assert.deepEqual(
        r.got.map((g) => g.data.toString()),
        ['marker'],
      );
      assert.deepEqual(
        l.got.map((g) => g.data.toString()),
        ['still listening'],
      );
    } finally {
      api.closeFd(fd);
      await l.close();
      await r.close();
    }
  });
});

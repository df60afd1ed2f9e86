// Shared tools of the adversarial suite: a guard against escaped exceptions,
// counter ledgers, kernel-side drop counters from /proc, process RSS, a
// Prometheus text parser, a seeded datagram mutator driven by fast-check,
// an independent oracle for what the plain path must forward, and a sealer
// that boxes arbitrary plaintext with a real key (authentic garbage).

import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import type { KeyRing } from '../../src/crypto/keyring.js';
import { Secretbox } from '../../src/crypto/secretbox.js';
import { DROP_REASONS, EVENTS, KINDS, type ChannelStats } from '../../src/base/stats.js';
import { FRAME_HEADER, NONCE_BYTES, writeFrameHeader, MAC_BYTES } from '../../src/wire/frame.js';

// ---------------------------------------------------------------- seed

/** The suite's seed: ADVERSARIAL_SEED=<n> reproduces (or varies) a run. */
export const SEED = (() => {
  const env = process.env['ADVERSARIAL_SEED'];
  if (env === undefined || env === '') return 0x5eed_2026;
  const n = Number(env);
  if (!Number.isSafeInteger(n)) throw new Error(`ADVERSARIAL_SEED=${env} is not an integer`);
  return n;
})();

// ---------------------------------------------------------------- escaped errors

/**
 * Records every uncaught exception and unhandled rejection in this process
 * (the in-process repeater runs here, so one of its bugs lands here).
 */
export class EscapeTrap {
  readonly errors: string[] = [];
  private readonly onError = (err: unknown) => this.errors.push(`uncaughtException: ${describe(err)}`);
  private readonly onRejection = (err: unknown) => this.errors.push(`unhandledRejection: ${describe(err)}`);

  constructor() {
    process.on('uncaughtException', this.onError);
    process.on('unhandledRejection', this.onRejection);
  }

  /** Throws when anything escaped since the trap was set. */
  check(what = 'the run'): void {
    if (this.errors.length > 0) throw new Error(`${this.errors.length} error(s) escaped during ${what}:\n${this.errors.slice(0, 5).join('\n')}`);
  }

  dispose(): void {
    process.off('uncaughtException', this.onError);
    process.off('unhandledRejection', this.onRejection);
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err);
}

// ---------------------------------------------------------------- counters

/** Drop reasons that count output copies, not input datagrams. */
export const COPY_REASONS = new Set(['queue_full', 'send_error', 'sealed_too_large']);

export interface Ledger {
  /** Sum of received{kind} over every kind. */
  received: number;
  receivedByKind: Record<string, number>;
  /** Output copies handed to the kernel. */
  forwardedCopies: number;
  dropped: Record<string, number>;
  /** Sum of drops counted per input datagram (everything but queue_full/send_error). */
  inputDrops: number;
  events: Record<string, number>;
  /** Subscription datagrams that changed the registry: subscribe + refresh + unsubscribe. */
  control: number;
  bytesForwarded: number;
}

export function ledgerOf(st: ChannelStats): Ledger {
  const receivedByKind: Record<string, number> = {};
  KINDS.forEach((k, i) => (receivedByKind[k] = st.received[i]!));
  const dropped: Record<string, number> = {};
  DROP_REASONS.forEach((r, i) => (dropped[r] = st.dropped[i]!));
  const events: Record<string, number> = {};
  EVENTS.forEach((e, i) => (events[e] = st.events[i]!));
  return fromParts(receivedByKind, dropped, events, st.forwarded, st.bytesForwarded);
}

function fromParts(receivedByKind: Record<string, number>, dropped: Record<string, number>, events: Record<string, number>, forwarded: number, bytes: number): Ledger {
  let received = 0;
  for (const v of Object.values(receivedByKind)) received += v;
  let inputDrops = 0;
  for (const [r, v] of Object.entries(dropped)) if (!COPY_REASONS.has(r)) inputDrops += v;
  const control = (events['subscribe'] ?? 0) + (events['refresh'] ?? 0) + (events['unsubscribe'] ?? 0);
  return { received, receivedByKind, forwardedCopies: forwarded, dropped, inputDrops, events, control, bytesForwarded: bytes };
}

/** The ledger of one channel read from a /metrics scrape. */
export function ledgerFromMetrics(samples: readonly Sample[], channel: string, prefix = 'udprepeater'): Ledger {
  const pick = (name: string, label: string) => {
    const out: Record<string, number> = {};
    for (const s of samples) if (s.name === name && s.labels['channel'] === channel) out[s.labels[label]!] = s.value;
    return out;
  };
  const one = (name: string) => samples.find((s) => s.name === name && s.labels['channel'] === channel)?.value ?? 0;
  return fromParts(
    pick(`${prefix}_datagrams_received_total`, 'kind'),
    pick(`${prefix}_datagrams_dropped_total`, 'reason'),
    pick('udprepeater_subscription_events_total', 'event'),
    one(`${prefix}_datagrams_forwarded_total`),
    one(`${prefix}_bytes_forwarded_total`),
  );
}

/** Non-zero entries only, for printing. */
export function nonZero(r: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).filter(([, v]) => v !== 0));
}

/**
 * The accounting identity every channel must satisfy, given the number of
 * datagrams that arrived and how many of them were forwarded (measured
 * independently, at a reference subscriber). Returns the problems found.
 */
export function accountingProblems(name: string, arrived: number, forwardedInputs: number, l: Ledger): string[] {
  const problems: string[] = [];
  if (l.received !== arrived) {
    problems.push(`${name}: received counters sum to ${l.received} but ${arrived} datagrams arrived (${JSON.stringify(nonZero(l.receivedByKind))})`);
  }
  const accounted = forwardedInputs + l.inputDrops + l.control;
  if (accounted !== arrived) {
    problems.push(
      `${name}: ${arrived} datagrams arrived but forwarded (${forwardedInputs}) + input drops (${l.inputDrops}) + accepted subscriptions (${l.control}) = ${accounted}` +
        ` (${arrived - accounted > 0 ? `${arrived - accounted} unaccounted` : `${accounted - arrived} counted twice`}); drops ${JSON.stringify(nonZero(l.dropped))} events ${JSON.stringify(nonZero(l.events))}`,
    );
  }
  return problems;
}

// ---------------------------------------------------------------- /proc

export interface UdpSocketInfo {
  /** Sockets found bound to the port. */
  sockets: number;
  /** Datagrams the kernel dropped at these sockets (receive buffer full). */
  drops: number;
  /** Bytes waiting in their receive queues. */
  rxQueue: number;
}

/** Kernel view of the UDP sockets bound to `port` (any address), from /proc/net/udp{,6}. */
export function udpSocket(port: number): UdpSocketInfo {
  const out = { sockets: 0, drops: 0, rxQueue: 0 };
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 13) continue;
      const local = f[1]!;
      if (parseInt(local.slice(local.lastIndexOf(':') + 1), 16) !== port) continue;
      out.sockets++;
      out.rxQueue += parseInt(f[4]!.split(':')[1]!, 16);
      out.drops += Number(f[12]);
    }
  }
  return out;
}

/** Sum of the kernel drop counters of several ports. */
export function udpDrops(ports: readonly number[]): number {
  return ports.reduce((n, p) => n + udpSocket(p).drops, 0);
}

/** The host-wide UDP counters of /proc/net/snmp (RcvbufErrors, InErrors, ...). */
export function snmpUdp(): Record<string, number> {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const names = lines[0]!.split(/\s+/).slice(1);
  const values = lines[1]!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i]!]));
}

/** Resident set size of a process in bytes (VmRSS), or null once it is gone. */
export function vmRss(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? null : Number(m[1]) * 1024;
  } catch {
    return null;
  }
}

export const MB = 1024 * 1024;
export const mb = (bytes: number) => `${(bytes / MB).toFixed(1)} MB`;

// ---------------------------------------------------------------- metrics text

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (enough of it for our own /metrics). */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    if (m[3] !== undefined) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return out;
}

export async function scrape(port: number): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return parseMetrics(await res.text());
}

// ---------------------------------------------------------------- the plain oracle

/**
 * What the plain path must send to a plain subscriber for `msg`, without
 * the loop trace (test/helpers/net.ts untraced), written from
 * docs/PROTOCOL.md independently of src/wire: the datagram itself, its
 * padded form for an unpadded delete, a set without expires with "0", or
 * null when it must be dropped. (A set's optional expires block is ASCII
 * decimal, at most 20 digits, or empty; a delete may carry exactly one
 * trailing 00 00.)
 */
export function plainOutput(msg: Buffer, maxDatagram: number, repairDeletes = true): Buffer | null {
  const len = msg.length;
  if (len > maxDatagram || len < 4) return null;
  if (msg[0] !== 111) return null;
  if ((msg[1]! | (msg[2]! << 8)) !== len - 4) return null;
  const m2 = msg[3];
  if (m2 !== 10 && m2 !== 11) return null;
  if (len < 6) return null;
  const klen = msg[4]! | (msg[5]! << 8);
  if (klen === 0) return null;
  let at = 6 + klen;
  if (at > len) return null;
  if (m2 === 11) {
    if (at === len) {
      if (!repairDeletes) return msg;
      const out = Buffer.alloc(len + 2);
      msg.copy(out);
      out.writeUInt16LE(len + 2 - 4, 1);
      return out;
    }
    return at + 2 === len && msg[at] === 0 && msg[at + 1] === 0 ? msg : null;
  }
  if (at + 2 > len) return null;
  const vlen = msg[at]! | (msg[at + 1]! << 8);
  at += 2 + vlen;
  if (at > len) return null;
  if (at === len) {
    // Forwarders trace every set that has room for a trace (26 bytes); one
    // without expires first gets "0" (never), as uWSGI reads it.
    if (len + 3 + 26 > Math.min(maxDatagram, 65507)) return msg;
    const out = Buffer.concat([msg, Buffer.from([1, 0, 0x30])]);
    out.writeUInt16LE(out.length - 4, 1);
    return out;
  }
  if (at + 2 > len) return null;
  const elen = msg[at]! | (msg[at + 1]! << 8);
  at += 2;
  if (at + elen !== len || elen > 20) return null;
  for (let i = at; i < len; i++) if (msg[i]! < 0x30 || msg[i]! > 0x39) return null;
  return msg;
}

// ---------------------------------------------------------------- authentic garbage

/**
 * Seals arbitrary plaintext under a ring's sealing key with fresh nonces:
 * frames that pass the MAC and test everything behind it.
 */
export class RawSealer {
  private readonly box = new Secretbox();
  private counter = 0;
  private readonly prefix: Buffer;

  constructor(private readonly ring: KeyRing, seed: number) {
    this.prefix = Buffer.alloc(16);
    this.prefix.writeUInt32LE(seed >>> 0, 0);
    this.prefix.write('rawsealer', 4, 'latin1');
  }

  seal(plain: Uint8Array): Buffer {
    const key = this.ring.sealing;
    const out = Buffer.alloc(FRAME_HEADER + NONCE_BYTES + MAC_BYTES + plain.length);
    writeFrameHeader(out, key.id);
    this.prefix.copy(out, FRAME_HEADER);
    out.writeUInt32LE(++this.counter, FRAME_HEADER + 16);
    this.box.seal(key.box, out.subarray(FRAME_HEADER, FRAME_HEADER + NONCE_BYTES), plain, out, FRAME_HEADER + NONCE_BYTES);
    return out;
  }
}

// ---------------------------------------------------------------- mutations

export type Mutation =
  | { t: 'flip'; bits: number[] }
  | { t: 'truncate'; at: number }
  | { t: 'extend'; bytes: Uint8Array }
  | { t: 'grow'; n: number; fill: number }
  | { t: 'u16'; at: number; v: number; lenRel: number | null }
  | { t: 'header'; m1: number; m2: number }
  | { t: 'splice'; other: number; a: number; b: number }
  | { t: 'fill'; at: number; n: number; v: number }
  | { t: 'dup'; at: number; n: number };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('flip' as const), bits: fc.array(fc.nat(), { minLength: 1, maxLength: 8 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('extend' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('grow' as const), n: fc.integer({ min: 100, max: 5000 }), fill: fc.nat(255) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant('u16' as const),
      at: fc.nat(),
      v: fc.oneof(fc.constantFrom(0, 1, 2, 3, 0x7fff, 0x8000, 0xfffe, 0xffff), fc.nat(0xffff)),
      // Length fields set relative to the datagram length hit the parser's edges.
      lenRel: fc.option(fc.integer({ min: -8, max: 4 }), { nil: null }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('header' as const),
      m1: fc.oneof(fc.constantFrom(111, 224, 0x75, 0), fc.nat(255)),
      m2: fc.oneof(fc.constantFrom(0, 1, 10, 11, 2, 12), fc.nat(255)),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('splice' as const), other: fc.nat(), a: fc.nat(), b: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('fill' as const), at: fc.nat(), n: fc.nat(64), v: fc.constantFrom(0, 0xff, 0x30, 0x3a) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('dup' as const), at: fc.nat(), n: fc.nat(64) }) },
);

/** A plan for one datagram: a template, 0-4 mutations, and whether to re-fix the uwsgi datasize after. */
export interface Plan {
  pick: number;
  ops: Mutation[];
  fixSize: boolean;
  /** Free entropy for the caller (lane choice, random lengths). */
  r: number;
}

export const planArb: fc.Arbitrary<Plan> = fc.record({
  pick: fc.nat(),
  ops: fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
  fixSize: fc.boolean(),
  r: fc.nat(),
});

/** `count` plans from `seed` (fast-check's generator, so a seed reproduces the stream exactly). */
export function plans(seed: number, count: number): Plan[] {
  return fc.sample(planArb, { seed, numRuns: count });
}

/** Applies mutations to a copy of `base`; `pool` feeds splices. */
export function mutate(base: Buffer, ops: readonly Mutation[], pool: readonly Buffer[], fixSize: boolean): Buffer {
  let b = Buffer.from(base);
  for (const op of ops) {
    switch (op.t) {
      case 'flip':
        if (b.length === 0) break;
        for (const bit of op.bits) {
          const i = bit % (b.length * 8);
          b[i >> 3] = b[i >> 3]! ^ (1 << (i & 7));
        }
        break;
      case 'truncate':
        b = b.subarray(0, b.length === 0 ? 0 : op.at % b.length);
        break;
      case 'extend':
        b = Buffer.concat([b, op.bytes]);
        break;
      case 'grow':
        b = Buffer.concat([b, Buffer.alloc(op.n, op.fill)]);
        break;
      case 'u16': {
        if (b.length < 2) break;
        const at = op.at % (b.length - 1);
        const v = op.lenRel === null ? op.v : Math.max(0, Math.min(0xffff, b.length - at - 2 + op.lenRel));
        b.writeUInt16LE(v, at);
        break;
      }
      case 'header':
        if (b.length < 4) break;
        b[0] = op.m1;
        b[3] = op.m2;
        break;
      case 'splice': {
        const other = pool[op.other % pool.length]!;
        b = Buffer.concat([b.subarray(0, op.a % (b.length + 1)), other.subarray(op.b % (other.length + 1))]);
        break;
      }
      case 'fill':
        if (b.length === 0) break;
        b.fill(op.v, op.at % b.length, Math.min(b.length, (op.at % b.length) + op.n));
        break;
      case 'dup': {
        if (b.length === 0) break;
        const at = op.at % b.length;
        b = Buffer.concat([b.subarray(0, at + op.n), b.subarray(at)]);
        break;
      }
    }
  }
  if (b.length > 65507) b = b.subarray(0, 65507);
  if (fixSize && b.length >= 4 && b.length - 4 <= 0xffff) {
    b = Buffer.from(b);
    b.writeUInt16LE(b.length - 4, 1);
  }
  return Buffer.from(b);
}

/** A small deterministic PRNG (mulberry32) for picks that need no shrinking. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Waits for `cond` on a sampling loop (for counters that have no event), bounded. */
export async function until(what: string, cond: () => boolean, ms = 5000, every = 10): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

// ---------------------------------------------------------------- a counting subscriber

/**
 * A subscriber socket for floods: counts every datagram but keeps only the
 * keys of cache updates whose key starts with `prefix` (in arrival order),
 * so millions of flood datagrams cost no memory.
 */
export class Tally {
  count = 0;
  readonly keys: string[] = [];
  private readonly seen = new Set<string>();
  private waiters: Array<() => void> = [];

  private constructor(
    readonly socket: Socket,
    private readonly prefix: string,
  ) {
    socket.on('message', (m: Buffer) => {
      this.count++;
      if (m.length < 6 || m[0] !== 111) return;
      const key = m.toString('latin1', 6, Math.min(m.length, 6 + m.readUInt16LE(4)));
      if (!key.startsWith(this.prefix)) return;
      this.keys.push(key);
      this.seen.add(key);
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  static open(prefix: string, recvBuffer = 0): Promise<Tally> {
    return new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => {
        s.off('error', reject);
        if (recvBuffer > 0) s.setRecvBufferSize(recvBuffer);
        resolve(new Tally(s, prefix));
      });
    });
  }

  get port(): number {
    return this.socket.address().port;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  has(key: string): boolean {
    return this.seen.has(key);
  }

  /** Resolves true once `key` arrived, false after `ms`. */
  async waitForKey(key: string, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.seen.has(key)) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

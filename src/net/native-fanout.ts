// The native fan-out: outlets share a small pool of unconnected sending
// sockets (one per 256 outlets and address family), and one datagram goes to
// a whole group with one call into C, which uses one sendmmsg per socket.
//
// Invariants:
// - An outlet is a destination record, not a socket: subscribers cost no file
//   descriptor, so a flood of subscriptions cannot exhaust them.
// - ICMP answers (port unreachable...) are read from each socket's error queue
//   (IP_RECVERR) and charged to the outlets with that destination. The next
//   send on that socket finds the answer pending (the kernel fails it once);
//   C retries that copy, so it costs nothing, and reports it: the queues are
//   then read on the next turn of the event loop. A timer reads them every
//   DRAIN_MS too. A dead subscriber is thus found within a receive batch (up
//   to 32 datagrams), not one datagram as on the dgram backend, and sends
//   that meet no error cost no extra system call.
// - Pool sockets live until the fan-out closes: a group built before an
//   outlet closed may still name its socket.
// - Within a batch (begin/flush) group sends are queued (native-batch.ts)
//   and a receive batch's outputs go out with one sendmmsg per pool socket;
//   outside one, each group send is one call into C, as before.

import { formatEndpoint, formatIp, ipBytes, type Endpoint } from '../wire/address.js';
import { checkBufferSize } from './dgram-listener.js';
import { DgramFanout, UNREACHABLE_CODES } from './dgram-outlet.js';
import type { Fanout, FanoutOptions, Outlet, OutletErrorHandler, OutletGroup, OutletOptions, SendSink, SendTally } from './socket-api.js';
import { DEST_BYTES, ERR_WORDS, errnoName, FULL, type UdpFast } from './native.js';
import { MAX_COPIES, NativeBatch } from './native-batch.js';

const PER_SOCKET = 256;
const DRAIN_MS = 100;
/** Error-queue room per pool socket: the queue is charged to SO_RCVBUF. */
const POOL_RCVBUF = 256 * 1024;

interface PoolSocket {
  readonly fd: number;
  members: number;
}

export class NativeOutlet implements Outlet {
  sent = 0;
  bytes = 0;
  dropped = 0;
  errors = 0;
  lastError: string | null = null;
  lastErrorAt = 0;
  closed = false;

  constructor(
    readonly endpoint: Endpoint,
    readonly fd: number,
    readonly dest: Uint8Array,
    readonly onError: OutletErrorHandler,
    private readonly owner: NativeFanout,
  ) {}

  /** Records a failed copy (errno from sendBatch); returns whether it was a full buffer. */
  settleFailure(errno: number): boolean {
    if (FULL.has(errno)) {
      this.dropped++;
      return true;
    }
    this.fault(errnoName(errno), false);
    this.dropped++;
    return false;
  }

  fault(code: string, icmp: boolean): void {
    this.errors++;
    this.lastError = code;
    this.lastErrorAt = Date.now();
    this.onError(this, code, icmp || UNREACHABLE_CODES.has(code) ? 'unreachable' : 'send', false);
  }

  private alone: NativeGroup | null = null;

  send(buf: Buffer): boolean {
    if (this.closed) {
      this.dropped++;
      return false;
    }
    const tally = { sent: 0, full: 0, failed: 0 };
    this.alone ??= this.owner.group([this]) as NativeGroup;
    this.alone.send(buf, true, tally);
    return tally.sent === 1;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.release(this);
  }
}

class NativeGroup implements OutletGroup {
  private readonly fds: Int32Array;
  private readonly dests: Uint8Array;
  private readonly errs: Int32Array;
  /** The pool sockets this group sends on. */
  private readonly used: number[];

  constructor(
    private readonly api: UdpFast,
    private readonly outs: readonly NativeOutlet[],
    private readonly owner: NativeFanout,
  ) {
    this.used = [...new Set(outs.map((o) => o.fd))];
    const n = outs.length;
    this.fds = new Int32Array(Math.max(1, n));
    this.dests = new Uint8Array(Math.max(1, n) * DEST_BYTES);
    // One more than the copies: errs[n] receives the pending-ICMP count.
    this.errs = new Int32Array(n + 1);
    outs.forEach((o, i) => {
      this.fds[i] = o.fd;
      this.dests.set(o.dest, i * DEST_BYTES);
    });
  }

  get size(): number {
    return this.outs.length;
  }

  send(buf: Buffer, _stable: boolean, tally: SendTally, sink: SendSink | null = null): void {
    const outs = this.outs;
    const n = outs.length;
    if (n === 0) return;
    const batch = this.owner.batch;
    if (batch !== null && n <= MAX_COPIES) {
      if (!batch.fits(n, buf.length)) batch.flush();
      batch.add(buf, outs, this.fds, this.dests, tally, sink);
      return;
    }
    // Not in a batch (or a group larger than one): at once, queued copies first so the order holds.
    batch?.flush();
    this.owner.immediateCalls += this.used.length;
    const failures = this.api.sendBatch(this.fds, this.dests, n, buf, this.errs);
    if (this.errs[n] !== 0) this.owner.icmpPending(this.used);
    if (failures === 0) {
      for (let i = 0; i < n; i++) {
        const o = outs[i]!;
        o.sent++;
        o.bytes += buf.length;
      }
      tally.sent += n;
      return;
    }
    for (let i = 0; i < n; i++) {
      const o = outs[i]!;
      const e = this.errs[i]!;
      if (e === 0) {
        o.sent++;
        o.bytes += buf.length;
        tally.sent++;
      } else if (o.settleFailure(e)) tally.full++;
      else tally.failed++;
    }
  }
}

class MixedGroup implements OutletGroup {
  constructor(private readonly parts: readonly OutletGroup[]) {}

  get size(): number {
    return this.parts.reduce((n, p) => n + p.size, 0);
  }

  send(buf: Buffer, stable: boolean, tally: SendTally, sink: SendSink | null = null): void {
    for (const p of this.parts) p.send(buf, stable, tally, sink);
  }
}

export class NativeFanout implements Fanout {
  readonly backend = 'native' as const;
  /** Datagrams that arrived on pool sockets (nobody should send to them); discarded. */
  strays = 0;
  private readonly pools = new Map<4 | 6, PoolSocket[]>();
  private readonly byAddress = new Map<string, Set<NativeOutlet>>();
  /** Multicast outputs need a TTL and interface per socket. */
  private readonly multicast: DgramFanout;
  private readonly errBuf = new Int32Array(64 * ERR_WORDS);
  private readonly drainer: NodeJS.Timeout;
  /** Pool sockets that met an ICMP answer; drained on the next turn of the event loop. */
  private readonly dirty = new Set<number>();
  private drainScheduled = false;
  /** The batch in progress (begin/flush); null outside one. */
  batch: NativeBatch | null = null;
  private readonly batcher: NativeBatch;
  /** Calls into the kernel's send path made outside batches (one per sending socket per group send). */
  immediateCalls = 0;
  private readonly drainDirty = (): void => {
    this.drainScheduled = false;
    for (const fd of this.dirty) this.drainOne(fd);
    this.dirty.clear();
  };

  constructor(
    private readonly api: UdpFast,
    private readonly opts: FanoutOptions,
  ) {
    checkBufferSize('send-buffer', opts.sendBuffer);
    this.multicast = new DgramFanout(opts);
    this.batcher = new NativeBatch(api, (fds) => this.icmpPending(fds));
    this.drainer = setInterval(() => this.drain(), DRAIN_MS);
    this.drainer.unref();
  }

  private socketFor(family: 4 | 6): PoolSocket {
    let pool = this.pools.get(family);
    if (pool === undefined) this.pools.set(family, (pool = []));
    let best: PoolSocket | undefined;
    for (const s of pool) if (s.members < PER_SOCKET && (best === undefined || s.members < best.members)) best = s;
    if (best !== undefined) return best;
    // Throws (EMFILE...) when no socket can be had: the caller refuses the outlet.
    const s = { fd: this.api.openSender(family, this.opts.sendBuffer, POOL_RCVBUF), members: 0 };
    pool.push(s);
    return s;
  }

  open(ep: Endpoint, onError: OutletErrorHandler, opts?: OutletOptions): Outlet {
    if (opts?.ttl !== undefined) return this.multicast.open(ep, onError, opts);
    const sock = this.socketFor(ep.family);
    const dest = new Uint8Array(DEST_BYTES);
    dest[0] = ep.family;
    dest[2] = ep.port & 0xff;
    dest[3] = ep.port >> 8;
    dest.set(ipBytes(ep.host)!, 4);
    const o = new NativeOutlet(ep, sock.fd, dest, onError, this);
    sock.members++;
    let set = this.byAddress.get(ep.text);
    if (set === undefined) this.byAddress.set(ep.text, (set = new Set()));
    set.add(o);
    return o;
  }

  release(o: NativeOutlet): void {
    for (const pool of this.pools.values()) for (const s of pool) if (s.fd === o.fd) s.members--;
    const set = this.byAddress.get(o.endpoint.text);
    set?.delete(o);
    if (set?.size === 0) this.byAddress.delete(o.endpoint.text);
  }

  group(outlets: readonly Outlet[]): OutletGroup {
    const natives = outlets.filter((o): o is NativeOutlet => o instanceof NativeOutlet).sort((a, b) => a.fd - b.fd);
    const others = outlets.filter((o) => !(o instanceof NativeOutlet));
    const g = new NativeGroup(this.api, natives, this);
    return others.length === 0 ? g : new MixedGroup([g, this.multicast.group(others)]);
  }

  begin(): void {
    this.batch = this.batcher;
    this.multicast.begin();
  }

  flush(): void {
    this.batch = null;
    this.batcher.flush();
    this.multicast.flush();
  }

  get sendCalls(): number {
    return this.batcher.calls + this.immediateCalls + this.multicast.sendCalls;
  }

  /** Called by groups that met a pending ICMP answer: their sockets are drained on the next turn. */
  icmpPending(fds: readonly number[]): void {
    for (let i = 0; i < fds.length; i++) this.dirty.add(fds[i]!);
    if (!this.drainScheduled) {
      this.drainScheduled = true;
      setImmediate(this.drainDirty);
    }
  }

  /** Reads every pool socket's ICMP errors (the periodic backstop). */
  drain(): void {
    for (const pool of this.pools.values()) for (const s of pool) this.drainOne(s.fd);
  }

  /** Reads one pool socket's ICMP errors and charges them to the outlets of that destination. */
  private drainOne(fd: number): void {
    if (this.closed) return;
    for (;;) {
      const [n, discarded] = this.api.drainSender(fd, this.errBuf);
      this.strays += discarded;
      for (let i = 0; i < n; i++) {
        const w = i * ERR_WORDS;
        const bytes = new Uint8Array(this.errBuf.buffer, (w + 3) * 4, this.errBuf[w + 1] === 6 ? 16 : 4);
        const ip = formatIp(bytes);
        const code = errnoName(this.errBuf[w]!);
        for (const o of this.byAddress.get(formatEndpoint(ip.host, this.errBuf[w + 2]!)) ?? []) o.fault(code, true);
      }
      if (n * ERR_WORDS < this.errBuf.length) return;
    }
  }

  private closed = false;

  async close(): Promise<void> {
    this.flush();
    this.closed = true;
    clearInterval(this.drainer);
    for (const pool of this.pools.values()) for (const s of pool) this.api.closeFd(s.fd);
    this.pools.clear();
    this.byAddress.clear();
  }
}


// The native fan-out's batch (socket-api.ts Fanout.begin/flush): the copies
// a receive batch produces, queued, then handed to the addon in one call
// (sendMany), which sends them with one sendmmsg per sending socket.
//
// Invariants:
// - A queued datagram's bytes are copied into the batch's arena once, however
//   many outlets it goes to: the caller's buffer (a view into the receive
//   arena, a scratch buffer) may change as soon as the send returns.
// - Copies are counted as sent when queued (outlet and caller's tally); a
//   copy lost at the flush is taken back from its outlet, charged to it as a
//   failure (native-fanout.ts NativeOutlet.settleFailure) and told to the
//   sink it was queued with. Every copy queued goes out at the next flush,
//   or earlier when the batch is full (MAX_COPIES, ARENA_BYTES): the order
//   per destination is the order queued.

import type { SendSink, SendTally } from './socket-api.js';
import { DEST_BYTES, type UdpFast } from './native.js';

/** Copies per batch at most; a fuller batch goes out first. */
export const MAX_COPIES = 4096;
/** Bytes of distinct datagrams per batch at most. */
const ARENA_BYTES = 1 << 20;

/** What the batch needs of an outlet. */
export interface BatchOutlet {
  readonly fd: number;
  sent: number;
  bytes: number;
  /** Records a failed copy (errno); returns whether it was a full buffer. */
  settleFailure(errno: number): boolean;
}

export class NativeBatch {
  private readonly fds = new Int32Array(MAX_COPIES);
  private readonly dests = new Uint8Array(MAX_COPIES * DEST_BYTES);
  private readonly offs = new Int32Array(MAX_COPIES);
  private readonly lens = new Int32Array(MAX_COPIES);
  /** errs[n]: ICMP answers found pending; errs[n + 1]: sendmmsg calls. */
  private readonly errs = new Int32Array(MAX_COPIES + 2);
  private readonly arena = Buffer.allocUnsafe(ARENA_BYTES);
  private readonly outlets: Array<BatchOutlet | null> = new Array<BatchOutlet | null>(MAX_COPIES).fill(null);
  private readonly sinks: Array<SendSink | null> = new Array<SendSink | null>(MAX_COPIES).fill(null);
  private n = 0;
  private used = 0;
  /** The last buffer queued and where its bytes are: a frame sent to several groups is copied once. */
  private lastBuf: Buffer | null = null;
  private lastAt = 0;
  /** sendmmsg calls made by flushes. */
  calls = 0;

  constructor(
    private readonly api: UdpFast,
    /** Told of the sockets whose error queues hold ICMP answers. */
    private readonly icmpPending: (fds: readonly number[]) => void,
  ) {}

  get queued(): number {
    return this.n;
  }

  /** True when `copies` more copies of `bytes` bytes fit without a flush. */
  fits(copies: number, bytes: number): boolean {
    return this.n + copies <= MAX_COPIES && this.used + bytes <= ARENA_BYTES;
  }

  /**
   * Queues `buf` to outlets `outs` (their fds and packed destinations in
   * `fds` and `dests`, as the group keeps them). The caller checked `fits`.
   */
  add(buf: Buffer, outs: readonly BatchOutlet[], fds: Int32Array, dests: Uint8Array, tally: SendTally, sink: SendSink | null): void {
    const k = outs.length;
    const len = buf.length;
    let at: number;
    if (buf === this.lastBuf) at = this.lastAt;
    else {
      at = this.used;
      buf.copy(this.arena, at);
      this.used += len;
      this.lastBuf = buf;
      this.lastAt = at;
    }
    const n = this.n;
    this.fds.set(k === fds.length ? fds : fds.subarray(0, k), n);
    this.dests.set(k * DEST_BYTES === dests.length ? dests : dests.subarray(0, k * DEST_BYTES), n * DEST_BYTES);
    this.offs.fill(at, n, n + k);
    this.lens.fill(len, n, n + k);
    for (let i = 0; i < k; i++) {
      const o = outs[i]!;
      o.sent++;
      o.bytes += len;
      this.outlets[n + i] = o;
      this.sinks[n + i] = sink;
    }
    this.n = n + k;
    tally.sent += k;
  }

  /** Sends everything queued. */
  flush(): void {
    const n = this.n;
    if (n === 0) return;
    this.n = 0;
    this.used = 0;
    this.lastBuf = null;
    const errs = this.errs;
    const failures = this.api.sendMany(this.fds, this.dests, this.offs, this.lens, n, this.arena, errs);
    this.calls += errs[n + 1]!;
    if (errs[n] !== 0) this.icmpPending([...new Set(this.fds.subarray(0, n))]);
    if (failures > 0) {
      for (let i = 0; i < n; i++) {
        const e = errs[i]!;
        if (e === 0) continue;
        const o = this.outlets[i]!;
        const len = this.lens[i]!;
        o.sent--;
        o.bytes -= len;
        const full = o.settleFailure(e);
        this.sinks[i]?.lateLoss(full, len);
      }
    }
    // Nothing kept alive past the flush.
    this.outlets.fill(null, 0, n);
    this.sinks.fill(null, 0, n);
  }
}

// The datagram path: an object of its own, with two narrow doors. In: a
// listener's receive batch (listenerDoor) or a batch off the cluster bus
// (inBatch + fromBus). Out: the out door (out-door.ts), where every output is
// built, sealed and sent. Between them the path judges (in-door.ts,
// cache-judge.ts) and keeps the live state (live-states.ts). It reads one
// frozen configuration (path-config.ts), handed over whole by the repeater
// at each apply, and asks the rooms above through the ports of ports.ts.
//
// Invariants:
// - A receive batch is the unit of work: its outputs are queued and sent at
//   its end with one sendmmsg per sending socket, after the live state has
//   learnt what it accepted (once per batch; a subscription settles it
//   first). A batch ends when its listener says so (native: after each
//   recvmmsg; node:dgram: after each datagram); work that comes
//   from elsewhere (the bus, a held replay) runs in a batch of its own.
// - A datagram that makes the code throw (a bug) is dropped, counted and
//   logged with its stack: it must not take the process, and every other
//   node's sync, down with it.
// - Until the repeater hands over a config naming a listener, that
//   listener's datagrams are not the path's to judge (ignored).

import type { Logger } from '../base/log.js';
import { DropSlot, FANOUT_BUCKETS, FastHistogram } from '../base/stats.js';
import { CopyMemory } from '../judge/copies.js';
import { ContentWindow } from '../judge/dedup.js';
import { LoopGuard } from '../judge/loop-guard.js';
import type { BatchEndHandler, DatagramHandler, Fanout, Source } from '../net/io.js';
import type { TraceFields } from '../wire/trace.js';
import { CacheJudge, type JudgeHost } from './cache-judge.js';
import type { Channel, MembershipTeller } from './channel.js';
import { DropHints } from './drop-hints.js';
import { InDoor, type InHost } from './in-door.js';
import type { Reply } from './link-door.js';
import type { LiveChange } from './live-state.js';
import { LiveStates } from './live-states.js';
import { OutDoor } from './out-door.js';
import type { PathConfig } from './path-config.js';
import type { Arrival, BusDoor, ControlDoor } from './ports.js';
import type { WireError } from '../wire/uwsgi.js';

export class DatagramPath implements JudgeHost, InHost {
  readonly loops = new LoopGuard();
  readonly out: OutDoor;
  readonly live = new LiveStates();
  readonly judge: CacheJudge;
  /** Likely misconfigurations seen in dropped datagrams (drop-hints.ts). */
  readonly hints: DropHints;
  /** Receive to the end of the batch's send, per datagram forwarded. */
  readonly fanoutTime = new FastHistogram(FANOUT_BUCKETS);
  dedup = new ContentWindow(1);
  private readonly inDoor: InDoor;
  private cfg: PathConfig | null = null;
  private batchOpen = false;
  private batchStart = 0;
  private forwardedInBatch = 0;
  private closed = false;
  private readonly teller: MembershipTeller;
  /** Handshake answers and link control frames go out through the out door. */
  readonly reply: Reply = (frame, to) => this.out.reply(frame, to);

  constructor(
    fanout: Fanout,
    private readonly log: Logger,
    readonly control: ControlDoor,
  ) {
    this.out = new OutDoor(fanout, this.loops, () => this.config);
    this.judge = new CacheJudge(this);
    this.inDoor = new InDoor(this);
    this.teller = (ch, e, from) => this.out.membership(ch, e, from);
    this.hints = new DropHints(log, () => this.cfg?.acl.cidrs ?? null, (l) => this.cfg?.routes.get(l)?.channel.name ?? null);
  }

  /** The running configuration (configure must have been called). */
  get config(): PathConfig {
    return this.cfg!;
  }

  /** Takes a new configuration whole: from the next datagram on, it is the one judged by. */
  configure(next: PathConfig): void {
    this.dedup = new ContentWindow(next.dedupWindowMs);
    for (const ch of next.channels.values()) {
      ch.sealer = next.seal;
      ch.teller = this.teller;
      const links = next.links;
      ch.relink(links === null ? null : (e) => links.owns(e.origin));
    }
    this.live.configure(next);
    this.cfg = next;
  }

  /** Cluster mode: accepted datagrams are offered to `door`, and copies of one update per ingress are paired within `memoryMs` (judge/copies.ts). */
  attachBus(door: BusDoor, memoryMs: number): void {
    this.judge.bus = door;
    this.judge.copies = new CopyMemory(memoryMs);
  }

  /** Cluster mode: updates delivered once though they came in through two repeaters. */
  get clusterDuplicates(): number {
    return this.judge.clusterDuplicates;
  }

  /** What a listener opened for the configured address `key` hands its datagrams and batch ends to. */
  listenerDoor(key: string): { datagram: DatagramHandler; batchEnd: BatchEndHandler } {
    return { datagram: (msg, from) => this.fromListener(key, msg, from), batchEnd: () => this.endBatch() };
  }

  /** The listener for `key` could not read a datagram whole. */
  truncated(key: string): void {
    const route = this.cfg?.routes.get(key);
    if (route !== undefined) route.channel.stats.dropped[DropSlot.too_large]++;
  }

  private fromListener(key: string, msg: Buffer, from: Source): void {
    const route = this.cfg?.routes.get(key);
    if (route === undefined || this.closed) return;
    if (!this.batchOpen) this.beginBatch();
    try {
      this.inDoor.take(route, msg, from);
    } catch (err) {
      route.channel.stats.dropped[DropSlot.internal_error]++;
      this.log.throttle('error', 'internal-error', 'internal error handling a datagram; dropped', { error: (err as Error).message, stack: (err as Error).stack, listener: key });
    }
  }

  private beginBatch(): void {
    this.batchOpen = true;
    this.batchStart = performance.now();
    this.forwardedInBatch = 0;
    this.out.begin();
  }

  /** The batch's end: the live state learns what it accepted, then its outputs go out. */
  private endBatch(): void {
    if (!this.batchOpen) return;
    this.batchOpen = false;
    try {
      this.live.learn(Date.now());
    } catch (err) {
      this.log.throttle('error', 'internal-error-learn', 'internal error learning the live state; the batch is still sent', { error: (err as Error).message, stack: (err as Error).stack });
    }
    this.out.flush();
    if (this.forwardedInBatch > 0) this.fanoutTime.observe((performance.now() - this.batchStart) / 1000, this.forwardedInBatch);
  }

  /** Runs `fn` in a batch: the one open, or one of its own. */
  inBatch(fn: () => void): void {
    if (this.batchOpen) {
      fn();
      return;
    }
    this.beginBatch();
    try {
      fn();
    } finally {
      this.endBatch();
    }
  }

  forwarded(): void {
    this.forwardedInBatch++;
  }

  settle(): void {
    this.live.learn(Date.now());
  }

  /**
   * Cluster mode: a datagram the repeater `sender` accepted, for the
   * subscribers this one serves; call it within inBatch (one bus message is
   * one batch). Returns why it was dropped, or null.
   */
  fromBus(channel: string, datagram: Buffer, trace: TraceFields | null, origin: bigint | null, opaque: boolean, sender: bigint): string | null {
    const ch = this.cfg?.channels.get(channel);
    if (ch === undefined || this.closed) return 'no such channel';
    const arrival: Arrival = { trace, origin, fromBus: true, ingress: sender };
    if (opaque) {
      if (!this.config.forwardUnknown) return 'opaque datagrams are not forwarded here';
      this.judge.opaque(ch, datagram, true, arrival);
    } else this.judge.cache(ch, datagram, true, arrival);
    return null;
  }

  /**
   * An update that reaches the live state another way than through the
   * live path (cluster mode: a bus datagram too old to deliver, or read
   * after a takeover): validated as from the network, learnt, not sent.
   */
  learnOnly(channel: string, datagram: Buffer, delivered: boolean): LiveChange | WireError | 'no_state' {
    const state = this.live.get(channel);
    if (state === undefined) return 'no_state';
    return state.apply(datagram, Math.floor(Date.now() / 1000), delivered);
  }

  /** The channels of the running config. */
  get channels(): ReadonlyMap<string, Channel> {
    return this.cfg?.channels ?? new Map();
  }

  /** Stops judging; wipes the live states. */
  close(): void {
    this.closed = true;
    this.endBatch();
    this.live.clear();
  }
}

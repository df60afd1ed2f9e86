// Coming back from a long stall (stall.ts): we were stopped long enough that
// our peers may have taken us for dead and served our subscribers, each
// from the moment it decided so. What queued meanwhile (the peers' bus
// messages, our nodes' datagrams) must then not be delivered: the
// subscribers they took over got it from them in real time, and newer
// values after it. If nobody took over, the same backlog must be delivered,
// in order: nobody else did.
//
// Which of the two happened is in the backlog itself: a peer that takes a
// repeater for dead says so in a heartbeat (its live_peers) before it
// serves anything in its place (cluster.ts: deaths are announced first), and
// a peer's messages keep their order. So the backlog is held, not acted on,
// until every peer that was live before the stall has been heard from after
// it (we ask them at once: our heartbeat says `resumed`), or a third of the
// peer timeout and 500 ms passed (then a peer that counted us live and said
// nothing since is taken to have taken over); then it is replayed in arrival
// order:
// - bus messages sent before we resumed ("queued"), when a peer took over:
//   datagrams only update the live state (never delivered; learnt as
//   delivered, so no warm join in progress sends them late), everything
//   else is applied as usual;
// - our own listeners' datagrams read in the burst right after the stall,
//   when a peer took over: dropped (`stalled`), as if we had died; nodes
//   listing two repeaters lose nothing;
// - everything else: handled as if it had just arrived.
// Bounded: at most MAX_HELD_BYTES are held; past it the hold ends at once,
// taking what it has not seen for a takeover (the safe side: no delivery of
// anything queued).

import type { Logger } from '../base/log.js';
import { DropSlot } from '../base/stats.js';
import type { Channel } from '../path/channel.js';
import type { BusDatagram, BusMessage } from '../wire/bus.js';
import type { PeerTable } from './peers.js';
import { type Stall, StallWatch } from './stall.js';

/** Bytes of held messages and datagrams at most. */
export const MAX_HELD_BYTES = 16 << 20;
/** A peer's message sent this long after we resumed (on our clock, by its offset) shows we have its backlog. */
const CAUGHT_UP_MARGIN_MS = 5;

type Held =
  | { readonly kind: 'bus'; readonly m: BusMessage; readonly at: number; readonly queued: boolean }
  | { readonly kind: 'own'; readonly replay: () => void; readonly drop: () => void; readonly queued: boolean };

/** What the cluster does with what was held, and what it tells us. */
export interface ResumeHost {
  readonly log: Logger;
  readonly peers: PeerTable;
  /** Handles a bus message as if it had arrived at `at`; `learnOnly`: its datagrams update the live state only. */
  replayBus(m: BusMessage, at: number, queued: boolean, learnOnly: boolean): void;
  /** How long ago our last heartbeat went out: our silence, as our peers measure it. */
  silenceMs(): number;
  /** We were stopped long enough for a takeover (a gap in our time on the bus): say `resumed` on the bus now. */
  resumedAt(atMs: number): void;
}

export class Resume {
  private items: Held[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Wall ms when we resumed; a message sent before it queued while we were stopped. */
  private resumedAt = 0;
  /** Peers that counted us live before the stall: one of them saying otherwise took over. */
  private countedUs = new Set<bigint>();
  /** Peers live before the stall that we have not yet heard from since. */
  private waiting = new Set<bigint>();
  private took = false;
  holding = false;
  /** Long stalls resumed from, and how many of them found a peer had taken over. */
  resumed = 0;
  takeovers = 0;

  /** Our stalls: detected by the watch, handled by `stalled`. */
  readonly watch = new StallWatch((s) => this.stalled(s));
  private readonly holdMs: number;

  constructor(
    private readonly self: bigint,
    private readonly host: ResumeHost,
    private readonly timeoutMs: number,
  ) {
    // Every peer answers a `resumed` heartbeat at once; one that has not within a heartbeat interval and a bit is silent.
    this.holdMs = Math.round(timeoutMs / 3 + 500);
  }

  /**
   * We were stopped. No peer is taken for dead for the silence we measured
   * across it. If it lasted long enough for our peers to take us for dead
   * (our silence on the bus near the peer timeout), hold what queued until
   * they said whether they did, and ask them at once.
   */
  private stalled(s: Stall): void {
    const peers = this.host.peers;
    peers.relearn(s.fromMs, s.atMs);
    const silence = this.host.silenceMs();
    const long = silence >= this.timeoutMs - Math.min(250, this.timeoutMs / 10);
    this.host.log[long ? 'warn' : 'info']('cluster: this process was stopped', { ms: s.ms, silentOnBusMs: Math.round(silence), peersMayHaveTakenOver: long });
    if (!long) return;
    const live = [...peers.live()].filter((p) => p !== this.self);
    this.begin(s.atMs, live, live.filter((p) => peers.get(p)!.countsUs));
    this.host.resumedAt(s.atMs);
  }

  /** For what we read: true while it is part of the burst after a stall of ours (it queued while we were stopped). */
  check(): boolean {
    return this.watch.check();
  }

  /** A datagram from our own listeners (ClusterPort.ownArrival): false when held. */
  ownArrival(ch: Channel, datagram: Buffer, again: (copy: Buffer) => void): boolean {
    const burst = this.watch.check();
    if (!this.holding) return true;
    const copy = Buffer.from(datagram);
    this.holdOwn(() => again(copy), () => ch.stats.dropped[DropSlot.stalled]++, burst, copy.length);
    return false;
  }

  /** We resumed at `atMs` from a stall long enough for a takeover: hold from now. */
  private begin(atMs: number, live: Iterable<bigint>, countedUs: Iterable<bigint>): void {
    if (this.holding) return;
    this.holding = true;
    this.resumed++;
    this.resumedAt = atMs;
    this.took = false;
    this.waiting = new Set(live);
    this.countedUs = new Set(countedUs);
    if (this.waiting.size === 0) {
      this.end('no peer was live');
      return;
    }
    this.timer = setTimeout(() => this.end('hold bound'), this.holdMs);
    this.timer.unref();
  }

  /** A bus message while holding: kept, and read for what it says of a takeover. */
  holdBus(m: BusMessage, at: number, bytes: number): void {
    m = copyOf(m);
    const sent = m.sentAtMs + this.host.peers.offset(m.sender);
    const queued = sent < this.resumedAt;
    const b = m.body;
    // Before or after we resumed: either way it served our subscribers in real time, ahead of our replay.
    if (b.type === 'heartbeat' && this.countedUs.has(m.sender) && b.livePeers !== undefined && !b.livePeers.includes(this.self)) this.took = true;
    this.items.push({ kind: 'bus', m, at, queued });
    this.add(bytes);
    if (sent >= this.resumedAt + CAUGHT_UP_MARGIN_MS && this.waiting.delete(m.sender) && this.waiting.size === 0) this.end('every peer heard');
  }

  /** One of our own listeners' datagrams while holding; `queued`: read in the burst right after the stall. */
  private holdOwn(replay: () => void, drop: () => void, queued: boolean, bytes: number): void {
    this.items.push({ kind: 'own', replay, drop, queued });
    this.add(bytes);
  }

  private add(bytes: number): void {
    this.bytes += bytes;
    if (this.bytes > MAX_HELD_BYTES && this.holding) {
      // Out of room: whoever we have not heard from may have taken over.
      if (this.waiting.size > 0) this.took = true;
      this.end('hold full');
    }
  }

  /** Replays what was held; nothing is held from now on. */
  private end(why: string): void {
    if (!this.holding) return;
    this.holding = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // A peer that counted us live and has said nothing since we resumed may have taken over: the safe side.
    if (why === 'hold bound' && [...this.waiting].some((p) => this.countedUs.has(p))) this.took = true;
    const took = this.took;
    if (took) this.takeovers++;
    const items = this.items;
    this.items = [];
    this.bytes = 0;
    this.host.log[took ? 'warn' : 'info'](`cluster: back from a stall; what queued meanwhile is ${took ? 'not delivered: a peer took our subscribers over' : 'delivered: no peer took over'}`, { held: items.length, why });
    for (const h of items) {
      if (h.kind === 'bus') this.host.replayBus(h.m, h.at, h.queued, took && h.queued);
      else if (took && h.queued) h.drop();
      else h.replay();
    }
  }

  close(): void {
    this.watch.close();
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.items = [];
    this.holding = false;
  }
}

/** A message kept past the call that delivered it: its datagrams' bytes copied (they may be views into the client's buffer). */
function copyOf(m: BusMessage): BusMessage {
  const b = m.body;
  const own = (d: BusDatagram): BusDatagram => ({ ...d, datagram: Buffer.from(d.datagram) });
  if (b.type === 'datagram') return { ...m, body: own(b) };
  if (b.type === 'batch') return { ...m, body: { ...b, datagrams: b.datagrams.map(own) } };
  if (b.type === 'state_chunk') return { ...m, body: { ...b, entries: b.entries.map(own) } };
  return m;
}

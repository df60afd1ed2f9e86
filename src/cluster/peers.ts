// The other repeaters of the cluster as this one knows them, from their
// heartbeats: who is alive, how their clock relates to ours, whether they
// count us alive, and how steadily they have been on the bus.
//
// Invariants:
// - A peer is live from its heartbeat until the tick that finds it silent
//   for the peer timeout declares it dead (expire): the view changes only
//   there and on a heartbeat, where the cluster publishes it before acting
//   on it. After a stall of our own (stall.ts) every peer that was live
//   before it is given a full timeout from the stall's end to show up again:
//   the silence we measured across it was ours.
// - The offset of a peer's clock (our clock minus its clock, bus latency
//   included) is the least of its last OFFSET_SAMPLES heartbeats' (now -
//   sent_at_ms): waiting in a queue only ever adds, so a heartbeat delayed
//   by a stall (ours or the bus's) cannot make old datagrams look young.
//   Samples taken while we recover from a stall are not kept. A step of its
//   clock backwards is learnt from three heartbeats that all agree on a
//   larger offset.
// - Bounded: at most MAX_PEERS peers (a silent one past the timeout makes
//   room for a newcomer), forgotten 10 timeouts after they fell silent.

import type { ClusterConfig } from '../config/cluster-config.js';
import type { BusHeartbeat } from '../wire/bus.js';

/** More repeaters than this in one cluster are refused: the peer table is bounded. */
export const MAX_PEERS = 64;
/** Heartbeats whose delay makes a peer's clock offset (the least of them). */
const OFFSET_SAMPLES = 8;
/** Three heartbeats in a row this much later than the offset says: its clock stepped back. */
const STEP_MS = 1_000;

/**
 * How old a bus datagram may be when delivered (by the sender's clock
 * offset): what one peer timeout and one heartbeat interval of queueing
 * allow, and a second more (5 s with the defaults).
 */
export function maxAgeMs(cfg: Pick<ClusterConfig, 'peerTimeoutMs'>): number {
  return Math.round(cfg.peerTimeoutMs + cfg.peerTimeoutMs / 3 + 1_000);
}

/** How long the exactly-once memory (judge/copies.ts) remembers a copy: past the oldest datagram delivered, by the dedup window. */
export function copyMemoryMs(cfg: Pick<ClusterConfig, 'peerTimeoutMs' | 'dedupWindowMs'>): number {
  return maxAgeMs(cfg) + cfg.dedupWindowMs;
}

export interface Peer {
  name: string;
  startedAtMs: number;
  lastHeard: number;
  subscribers: number;
  /** Our clock minus its clock plus the bus latency, per recent heartbeat (oldest first). */
  readonly offsets: number[];
  /** Its last heartbeat said it holds the cluster's live state. */
  stateReady: boolean;
  /** Its last heartbeat counts us live (a repeater that does not list its peers: true). */
  countsUs: boolean;
  /** Since when (our clock) it has not counted us live, 0 while it does. */
  deafSince: number;
  /** Since when (our clock) it has been on the bus without a gap, as its heartbeat says; Infinity: it does not say. */
  steadySince: number;
  /** Taken for dead (and logged so) since it fell silent. */
  gone: boolean;
  /** When (our clock) we last answered its `resumed` heartbeat: once per heartbeat interval at most. */
  answeredResumedAt: number;
}

/** What one heartbeat changed. */
export interface Heard {
  /** A peer new to us, restarted, or back from the dead. */
  readonly fresh: boolean;
  /** Whether it counts us live changed. */
  readonly viewChanged: boolean;
}

export class PeerTable {
  readonly peers = new Map<bigint, Peer>();

  constructor(
    private readonly self: bigint,
    private readonly timeoutMs: number,
  ) {}

  [Symbol.iterator](): IterableIterator<[bigint, Peer]> {
    return this.peers[Symbol.iterator]();
  }

  get size(): number {
    return this.peers.size;
  }

  get(id: bigint): Peer | undefined {
    return this.peers.get(id);
  }

  has(id: bigint): boolean {
    return this.peers.has(id);
  }

  /** Our clock minus the sender's, as far as we know it (0 for a sender without a heartbeat yet). */
  offset(id: bigint): number {
    const o = this.peers.get(id)?.offsets;
    return o === undefined || o.length === 0 ? 0 : Math.min(...o);
  }

  /** How long ago, on our clock, a message the sender stamped `sentAtMs` was sent (0 at best: the bus latency is in the offset). */
  age(id: bigint, sentAtMs: number, now: number): number {
    return now - sentAtMs - this.offset(id);
  }

  /** Whether the table has room for a heartbeat from `id` (may forget a dead peer). */
  admits(id: bigint, now: number): boolean {
    return this.peers.has(id) || this.peers.size < MAX_PEERS || this.evictDead(now);
  }

  /** A heartbeat: `sample` false while its delay says nothing about the clocks (we are recovering from a stall). */
  heard(id: bigint, b: BusHeartbeat, sentAtMs: number, now: number, sample: boolean): Heard {
    const p = this.peers.get(id);
    const fresh = p === undefined || p.startedAtMs !== b.startedAtMs || now - p.lastHeard > this.timeoutMs;
    const countsUs = b.livePeers === undefined || b.livePeers.includes(this.self);
    const offsets = p === undefined || p.startedAtMs !== b.startedAtMs ? [] : p.offsets;
    if (sample) addSample(offsets, now - sentAtMs);
    const was = p?.countsUs;
    const steadySince = b.steadyMs === undefined ? Infinity : now - b.steadyMs;
    const next: Peer = {
      name: b.name,
      startedAtMs: b.startedAtMs,
      lastHeard: now,
      subscribers: b.subscribers,
      offsets,
      stateReady: b.stateReady === true,
      countsUs,
      deafSince: countsUs ? 0 : p !== undefined && !p.countsUs && p.deafSince > 0 ? p.deafSince : now,
      steadySince,
      gone: false,
      answeredResumedAt: p?.answeredResumedAt ?? 0,
    };
    this.peers.set(id, next);
    return { fresh, viewChanged: was !== undefined && was !== countsUs };
  }

  /** Whether to answer a `resumed` heartbeat from `id` now (and remember that we did): at most once per heartbeat interval. */
  answerResumed(id: bigint, now: number): boolean {
    const p = this.peers.get(id);
    if (p === undefined || now - p.answeredResumedAt < this.timeoutMs / 3) return false;
    p.answeredResumedAt = now;
    return true;
  }

  /** Heard, and not declared dead since. */
  isLive(p: Peer): boolean {
    return !p.gone;
  }

  /** The live repeaters: ourselves and the peers not declared dead. */
  live(): Set<bigint> {
    const out = new Set<bigint>([this.self]);
    for (const [id, p] of this.peers) if (!p.gone) out.add(id);
    return out;
  }

  /**
   * After a stall of ours: every peer that was live when it began gets a
   * full timeout from now to be heard again, before it is taken for dead.
   */
  relearn(stallFromMs: number, now: number): void {
    for (const p of this.peers.values()) if (!p.gone && stallFromMs - p.lastHeard <= this.timeoutMs) p.lastHeard = Math.max(p.lastHeard, now);
  }

  /** Peers silent past the timeout, newly taken for dead (marked gone); forgets those silent for 10 timeouts. */
  expire(now: number): Array<{ id: bigint; peer: Peer; silentMs: number }> {
    const died: Array<{ id: bigint; peer: Peer; silentMs: number }> = [];
    for (const [id, p] of this.peers) {
      const silent = now - p.lastHeard;
      if (silent <= this.timeoutMs) continue;
      if (!p.gone) {
        p.gone = true;
        died.push({ id, peer: p, silentMs: silent });
      }
      if (silent > 10 * this.timeoutMs) this.peers.delete(id);
    }
    return died;
  }

  /**
   * Live peers holding the state, steadiest first: the one on the bus
   * without a gap for longest (it missed nothing since), then the longest
   * running.
   */
  readyPeers(): bigint[] {
    return [...this.peers]
      .filter(([, p]) => p.stateReady && !p.gone)
      .sort(([, a], [, b]) => a.steadySince - b.steadySince || a.startedAtMs - b.startedAtMs)
      .map(([id]) => id);
  }

  /** Makes room in a full table: forgets the peer silent longest, if it is past the timeout. */
  private evictDead(now: number): boolean {
    let oldest: bigint | null = null;
    let oldestHeard = Infinity;
    for (const [id, p] of this.peers) if (p.lastHeard < oldestHeard) [oldest, oldestHeard] = [id, p.lastHeard];
    if (oldest === null || now - oldestHeard <= this.timeoutMs) return false;
    this.peers.delete(oldest);
    this.onForget?.(oldest);
    return true;
  }

  /** Forgets a peer at once (a revoked repeater), with what it announced. */
  forget(id: bigint): void {
    if (this.peers.delete(id)) this.onForget?.(id);
  }

  /** Told of every peer forgotten (to make room, or revoked): the cluster forgets what it announced. */
  onForget: ((id: bigint) => void) | null = null;
}

function addSample(offsets: number[], sample: number): void {
  offsets.push(sample);
  if (offsets.length > OFFSET_SAMPLES) offsets.shift();
  // Its clock stepped back (or the path got slower for good): the last three agree on more.
  const n = offsets.length;
  if (n >= 4) {
    const recent = offsets.slice(-3);
    const floor = Math.min(...offsets.slice(0, -3));
    if (recent.every((x) => x - floor > STEP_MS) && Math.max(...recent) - Math.min(...recent) < STEP_MS / 4) offsets.splice(0, n - 3);
  }
}

// The judgement of one cache update (or, with --forward-unknown, of any
// datagram) that came in through the path's door, from a listener or off the
// bus, before its copies leave through the out door.
//
// Invariants (docs/ARCHITECTURE.md, "The path of one datagram"):
// - A plain update carries its trace in its bytes; one opened from a frame
//   or taken off the bus comes with its trace beside it (`given`) and must
//   carry none in its bytes.
// - Loop freedom: a traced update passes the loop guard (judge/loop-guard.ts)
//   or is dropped; one that cannot carry a trace (an unpadded delete
//   forwarded unrepaired, a datagram with no room to grow, an opaque one)
//   passes the content window (judge/dedup.ts) instead.
// - Cluster mode: copies of one update that came in through two ingresses
//   are delivered once (judge/copies.ts); what came off the bus is never
//   published again, and what a stalled process read is first offered to
//   the cluster (BusDoor.ownArrival).
// - What is accepted is queued for the live state (live-states.ts), fanned
//   out (out-door.ts), then published (cluster mode), in that order.

import { DropSlot } from '../base/stats.js';
import type { CopyMemory } from '../judge/copies.js';
import type { ContentWindow } from '../judge/dedup.js';
import type { LoopGuard } from '../judge/loop-guard.js';
import { canCarryTrace, contentOf, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { readTrace, type TraceFields } from '../wire/trace.js';
import type { Channel } from './channel.js';
import type { LiveStates } from './live-states.js';
import type { OutDoor } from './out-door.js';
import type { PathConfig } from './path-config.js';
import { type Arrival, type BusDoor, OWN_INGRESS } from './ports.js';

/** What the judge needs of the path around it. */
export interface JudgeHost {
  readonly config: PathConfig;
  readonly loops: LoopGuard;
  readonly out: OutDoor;
  readonly live: LiveStates;
  readonly dedup: ContentWindow;
  /** Runs `fn` within a receive batch (one is opened and closed around it when none is). */
  inBatch(fn: () => void): void;
  /** A datagram whose copies went out in this batch (for the receive-to-send histogram). */
  forwarded(): void;
}

export class CacheJudge {
  /** Cluster mode: updates delivered once though they came in through two repeaters. */
  clusterDuplicates = 0;
  /** Cluster mode only: null standalone, so the path pays one null check per datagram. */
  bus: BusDoor | null = null;
  /** Cluster mode: the copies of an update per ingress. */
  copies: CopyMemory | null = null;
  private readonly shape = newShape();

  constructor(private readonly host: JudgeHost) {}

  /**
   * A cache update: plain (its trace, if any, in its bytes), or opened from a
   * frame or taken off the bus (`given`). `stable`: `buf` may be kept after
   * the call. `held`: a replay of one the cluster held (never held twice).
   */
  cache(ch: Channel, buf: Buffer, stable: boolean, given: Arrival | null, held = false): void {
    const bus = this.bus;
    if (bus !== null && given?.fromBus !== true && !held && !bus.ownArrival(ch, buf, (copy) => this.host.inBatch(() => this.cache(ch, copy, true, given, true)))) return;
    const { config: cfg, out } = this.host;
    const st = ch.stats;
    const s = this.shape;
    const bad = inspectCacheUpdate(buf, s);
    if (bad !== undefined || (given !== null && s.traceAt >= 0)) {
      if (cfg.forwardUnknown) this.opaque(ch, buf, stable, given, held);
      else st.dropped[DropSlot[bad ?? 'malformed']]++;
      return;
    }
    let arrived: TraceFields | null = given?.trace ?? null;
    if (s.traceAt >= 0) {
      arrived = readTrace(buf, s.traceAt);
      if (arrived === null) {
        st.dropped[DropSlot.malformed]++;
        return;
      }
    }
    const copies = this.copies;
    if (copies !== null && !copies.admit(copies.hasher.hash(buf, 6, 6 + buf.readUInt16LE(4)), copies.hasher.hash(buf, 3, s.contentEnd), given?.ingress ?? OWN_INGRESS, Date.now())) {
      st.dropped[DropSlot.duplicate]++;
      this.clusterDuplicates++;
      return;
    }
    let next: TraceFields;
    if (arrived !== null) {
      const v = this.host.loops.pass(arrived);
      if (typeof v === 'string') {
        st.dropped[DropSlot[v]]++;
        return;
      }
      next = v;
    } else next = this.host.loops.stamp();
    // An unpadded delete forwarded unrepaired cannot carry a trace (uWSGI would
    // apply it), nor can a datagram with no room left to grow: their plain
    // copies go as they came, and the content window stops them coming round.
    let traced = canCarryTrace(s, cfg.repairDeletes);
    let plainOut = out.plainForm(buf, s, traced ? next : null);
    if (plainOut === 'too_large' && traced && arrived === null) {
      traced = false;
      plainOut = out.plainForm(buf, s, null);
    }
    if (plainOut === 'too_large') {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    if (!traced && !this.host.dedup.admit(buf.subarray(0, s.contentEnd), Date.now())) {
      st.dropped[DropSlot.duplicate]++;
      return;
    }
    this.host.live.queue(ch, buf);
    const sealed = cfg.seal !== null || cfg.links !== null;
    const content = !sealed && bus === null ? null : contentOf(buf, s);
    const sealing = !sealed ? null : { content: content!, trace: next };
    // The forward form is the datagram itself (kept as it is) or a view of the out door's scratch (never kept).
    if (out.live(ch, plainOut, plainOut === buf && stable, sealing, given?.origin ?? null) > 0) this.host.forwarded();
    if (bus !== null && given?.fromBus !== true) bus.publish(ch, content!, stable || content !== buf, next, given?.origin ?? null, false);
  }

  /** --forward-unknown: any datagram, byte for byte; loops stopped by the content window. */
  opaque(ch: Channel, buf: Buffer, stable: boolean, given: Arrival | null, held = false): void {
    const bus = this.bus;
    if (bus !== null && given?.fromBus !== true && !held && !bus.ownArrival(ch, buf, (copy) => this.host.inBatch(() => this.opaque(ch, copy, true, given, true)))) return;
    const now = Date.now();
    if (!this.host.dedup.admit(buf, now)) {
      ch.stats.dropped[DropSlot.duplicate]++;
      return;
    }
    const copies = this.copies;
    if (copies !== null && !copies.admit(copies.hasher.hash(buf), 0, given?.ingress ?? OWN_INGRESS, now)) {
      ch.stats.dropped[DropSlot.duplicate]++;
      this.clusterDuplicates++;
      return;
    }
    const sealing = this.host.config.seal === null && this.host.config.links === null ? null : { content: buf, trace: null };
    if (this.host.out.live(ch, buf, stable, sealing, given?.origin ?? null) > 0) this.host.forwarded();
    if (bus !== null && given?.fromBus !== true) bus.publish(ch, buf, stable, null, given?.origin ?? null, true);
  }
}

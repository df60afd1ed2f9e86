// The datagram path's one door out: every output is built, sealed and sent
// here, whoever asks for it (the live fan-out of an accepted datagram, a
// warm join or a takeover repair walking the live state, the ticket keys,
// a membership frame), through the socket layer's batch.
//
// Invariants:
// - One place seals for sealed subscribers: a live datagram once per channel
//   key (a group frame, receiver ''), a warm datagram, a membership frame
//   and a ticket-key frame for the one subscriber they are for (its address
//   as receiver), all under the running config's data seal.
// - Between begin() and flush() (one receive batch, or one slice of the warm
//   pacer) sends are queued in the fan-out (net/socket-api.ts, the batch
//   flag) and go out together: one sendmmsg per sending socket per batch.
//   A copy is counted as sent when queued; one lost at the flush is taken
//   back through its SendSink (the channel for live copies, the join for
//   warm ones).
// - A plain forward form is built in a scratch buffer (no allocation per
//   datagram); the fan-out copies it before the scratch is used again.
// - A frame never goes back to the agent it came from (`origin`), and
//   suspended or unowned subscribers are in no group (channel.ts).

import { DropSlot } from '../base/stats.js';
import type { LoopGuard } from '../judge/loop-guard.js';
import { type Fanout, newTally, type Outlet, type OutletGroup, type SendSink, type Source } from '../net/io.js';
import { endpointOf } from '../wire/address.js';
import { type CacheShape, forwardForm, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { TraceFields } from '../wire/trace.js';
import type { Channel, KeyGroup, SealingInput, Subscriber } from './channel.js';
import type { DataSeal } from './data-seal.js';
import { GroupSplits } from './group-split.js';
import type { LinkDoor } from './link-door.js';
import { linkedTickets } from './link-tickets.js';

/** What the out door reads of the running configuration (path-config.ts). */
export interface OutSettings {
  readonly seal: DataSeal | null;
  /** Identity mode: sealed subscribers get copies under their own link (link-door.ts); null in shared-key mode. */
  readonly links: LinkDoor | null;
  readonly repairDeletes: boolean;
  /** No output may be larger than this. */
  readonly outLimit: number;
}

/** What one warm datagram cost: the bytes charged to the pacers (0: nothing was built), and whether a copy was queued. */
export interface WarmSent {
  bytes: number;
  sent: boolean;
}

/** Handshake answers go to at most this many addresses at once (each holds an outlet). */
const MAX_REPLY_OUTLETS = 1024;

export class OutDoor {
  private readonly tally = newTally();
  /** Forward forms are built here (a trace or a repaired delete makes a datagram grow, never past 64 KiB). */
  private readonly scratch = Buffer.allocUnsafe(MAX_UDP_PAYLOAD + 64);
  private readonly shape: CacheShape = newShape();
  private readonly warmResult: WarmSent = { bytes: 0, sent: false };
  /** One-outlet groups of linked subscribers (each copy is sealed for one link). */
  private readonly single = new WeakMap<Outlet, OutletGroup>();
  /** Identity mode: the group-key holders and the others, per key group (made on first use). */
  private splits: GroupSplits | null = null;
  /** Outlets for handshake answers, by address; bounded (the oldest closed first). */
  private readonly replies = new Map<string, Outlet>();

  constructor(
    private readonly fanout: Fanout,
    private readonly loops: LoopGuard,
    private readonly settings: () => OutSettings,
  ) {}

  /** A batch begins: sends are queued until flush(). */
  begin(): void {
    this.fanout.begin();
  }

  /** Sends what the batch queued. */
  flush(): void {
    this.fanout.flush();
  }

  /** Calls into the kernel's send path so far (net/socket-api.ts Fanout.sendCalls). */
  get sendCalls(): number {
    return this.fanout.sendCalls;
  }

  /**
   * The plain copy of an inspected cache update (wire/cache.ts forwardForm),
   * built in the scratch buffer: valid until the next output is built.
   */
  plainForm(buf: Buffer, s: CacheShape, trace: TraceFields | null): Buffer | 'too_large' {
    const cfg = this.settings();
    return forwardForm(buf, s, cfg.repairDeletes, trace, cfg.outLimit, this.scratch);
  }

  /**
   * One accepted datagram to every subscriber of `ch` this repeater serves:
   * `plainOut` to the plain ones; to the sealed ones, `sealing` sealed once
   * per channel key, skipping the subscriber whose origin is `origin`.
   * `stable`: `plainOut` may be kept after this call. Returns the copies
   * queued (or sent).
   */
  live(ch: Channel, plainOut: Buffer, stable: boolean, sealing: SealingInput | null, origin: bigint | null): number {
    const { seal, links } = this.settings();
    const plain = ch.plainGroup();
    const keys = (seal !== null || links !== null) && sealing !== null ? ch.keyGroups() : null;
    const st = ch.stats;
    st.accepted++;
    const t = this.tally;
    t.sent = 0;
    t.full = 0;
    t.failed = 0;
    plain.send(plainOut, stable, t, ch);
    st.bytesForwarded += t.sent * plainOut.length;
    let any = plain.size > 0;
    if (keys !== null) {
      for (const g of keys) {
        any = true;
        if (links !== null && g.linked.length > 0) this.perLink(ch, g, sealing!, origin, links);
        if (seal === null || g.members.length === 0) continue;
        const group = ch.groupFor(g, origin);
        if (group.size === 0) continue;
        const frame = seal!.sealDatagram(g.key, sealing!);
        if (frame === null) {
          st.dropped[DropSlot.sealed_too_large]++;
          continue;
        }
        const before = t.sent;
        group.send(frame, true, t, ch);
        st.bytesForwarded += (t.sent - before) * frame.length;
      }
    }
    st.dropped[DropSlot.queue_full] += t.full;
    st.dropped[DropSlot.send_error] += t.failed;
    st.forwarded += t.sent;
    if (!any) st.dropped[DropSlot.no_subscribers]++;
    return t.sent;
  }

  /**
   * One warm datagram (warm joins, takeover repairs): the current set
   * `content` of a live key, with a fresh trace, in the forward form (plain)
   * or sealed for `e` alone (sealed), through `group` (its outlet). Returns
   * the bytes charged to the pacers (whether the kernel takes it or not) and
   * whether a copy was queued; a copy lost at the flush is told to `sink`.
   * The returned object is reused by the next call.
   */
  warm(ch: Channel, e: Subscriber, group: OutletGroup, content: Buffer, sink: SendSink): WarmSent {
    const r = this.warmResult;
    r.bytes = 0;
    r.sent = false;
    const st = ch.stats;
    const s = this.shape;
    // Validated when it was learnt; inspected again because a shape must describe this very buffer.
    if (inspectCacheUpdate(content, s) !== undefined) return r;
    const trace = this.loops.stamp();
    let out: Buffer;
    if (e.form === 'plain') {
      const f = this.plainForm(content, s, trace);
      if (f === 'too_large') {
        st.dropped[DropSlot.too_large]++;
        return r;
      }
      out = f;
    } else {
      const links = this.settings().links;
      const linked = links !== null && links.owns(e.origin);
      const plain = linked ? links.datagram(e.key, { content, trace }) : null;
      const frame = linked ? (plain === null ? null : links.sealFor(e, plain)) : (this.settings().seal?.sealDatagram(e.key, { content, trace }, e.endpoint.text) ?? null);
      if (frame === null) {
        st.dropped[DropSlot.sealed_too_large]++;
        return r;
      }
      out = frame;
    }
    const t = this.tally;
    t.sent = 0;
    t.full = 0;
    t.failed = 0;
    // A sealed frame is ours to keep; a plain form is a view of the scratch buffer.
    group.send(out, e.form === 'sealed', t, sink);
    st.dropped[DropSlot.queue_full] += t.full;
    st.dropped[DropSlot.send_error] += t.failed;
    r.bytes = out.length;
    r.sent = t.sent > 0;
    return r;
  }

  /** Tells `e` from which of our group frames of its key it is a member (channel.ts MembershipTeller). */
  membership(_ch: Channel, e: Subscriber, memberFrom: number): boolean {
    if (this.settings().links?.owns(e.origin) === true) return false;
    const frame = this.settings().seal?.sealMembership(e.key, memberFrom, e.endpoint.text) ?? null;
    if (frame === null) return false;
    return this.one(e, frame);
  }

  /**
   * The fleet's ticket keys to the sealed subscribers of `ch` this repeater
   * serves, sealed once per channel key; to `e` alone when given, sealed for
   * it; in identity mode each copy under its member's link. Suspended
   * subscribers are skipped. Returns the copies sent.
   */
  tickets(ch: Channel, keys: readonly TicketKey[], e: Subscriber | null = null): number {
    const { seal, links } = this.settings();
    // Identity mode: under each linked member's link key alone (link-tickets.ts); the shared key's members (a migration) as before.
    const linkedOne = e !== null && links !== null && ch.linkedBy?.(e) === true;
    let sent = links !== null && (e === null || linkedOne) ? linkedTickets(ch, keys, e, links, (m, frame) => this.one(m, frame)) : 0;
    if (seal === null || linkedOne) return sent;
    if (e !== null) {
      if (e.form !== 'sealed' || !e.owned || e.suspendedUntil !== 0) return sent;
      const frame = seal.sealTickets(e.key, keys, e.endpoint.text);
      return frame !== null && this.one(e, frame) ? sent + 1 : sent;
    }
    const t = newTally();
    for (const g of ch.keyGroups()) {
      if (g.members.length === 0) continue;
      const frame = seal.sealTickets(g.key, keys, '');
      if (frame !== null) g.all.send(frame, true, t, null);
    }
    sent += t.sent;
    return sent;
  }

  /**
   * Identity mode: one datagram to the linked members of one key (the
   * envelope encoded once and staged once): one group frame to those holding
   * the channel key's group key, and a copy under its own link to each other
   * linked member (group-split.ts); a member with no link now gets nothing.
   */
  private perLink(ch: Channel, g: KeyGroup, sealing: SealingInput, origin: bigint | null, links: LinkDoor): void {
    const st = ch.stats;
    const t = this.tally;
    const plain = links.datagram(g.key, sealing);
    if (plain === null) {
      st.dropped[DropSlot.sealed_too_large]++;
      return;
    }
    const split = (this.splits ??= new GroupSplits(this.fanout)).of(ch.name, g, origin, links);
    const staged = links.stagePlain(plain);
    if (split.holders !== null) {
      const frame = split.cipher!.sealStaged(staged);
      links.groupFramesSealed++;
      const before = t.sent;
      split.holders.send(frame, true, t, ch);
      st.bytesForwarded += (t.sent - before) * frame.length;
    }
    for (const m of split.rest) {
      const frame = links.sealStagedFor(m, staged);
      if (frame === null) continue;
      const before = t.sent;
      this.singleOf(m).send(frame, true, t, ch);
      st.bytesForwarded += (t.sent - before) * frame.length;
    }
  }

  /**
   * Identity mode, after a revocation replaced the group keys: each linked
   * member of `channels` is sent the new key of its channel key under its
   * own link at once (not at its next SUBSCRIBE), so it stops accepting
   * frames under the old key, which the revoked node holds, as soon as it
   * can. Returns the frames sent.
   */
  groupKeys(channels: Iterable<Channel>): number {
    const links = this.settings().links;
    if (links === null) return 0;
    let sent = 0;
    for (const ch of channels) {
      for (const g of ch.keyGroups()) {
        for (const m of g.linked) {
          const link = links.linkOf(m);
          const frame = link === null ? null : links.groupKeyFor(link, ch.name, g.key);
          if (frame !== null && this.one(m, frame)) sent++;
        }
      }
    }
    return sent;
  }

  private singleOf(m: Subscriber): OutletGroup {
    let group = this.single.get(m.outlet);
    if (group === undefined) this.single.set(m.outlet, (group = this.fanout.group([m.outlet])));
    return group;
  }

  /** A handshake answer or a link control frame to the source it answers (link-door.ts Reply). */
  reply(frame: Buffer, to: Source): void {
    const key = `${to.address}|${to.port}`;
    let o = this.replies.get(key);
    if (o === undefined) {
      if (this.replies.size >= MAX_REPLY_OUTLETS) {
        const [oldest, outlet] = this.replies.entries().next().value!;
        outlet.close();
        this.replies.delete(oldest);
      }
      o = this.fanout.open(endpointOf(to.address, to.port, to.family), () => undefined);
      this.replies.set(key, o);
    }
    const t = newTally();
    let group = this.single.get(o);
    if (group === undefined) this.single.set(o, (group = this.fanout.group([o])));
    group.send(frame, true, t, null);
  }

  /** One control frame to one subscriber, in order with the batch when one is open. */
  private one(e: Subscriber, frame: Buffer): boolean {
    const t = newTally();
    this.fanout.group([e.outlet]).send(frame, true, t, null);
    return t.sent > 0;
  }
}

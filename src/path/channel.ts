// A channel: the subscribers that receive everything its listeners accept, in
// two registries, plain and sealed, and the outlet groups the out door
// (out-door.ts) sends through: prepared by the socket layer, rebuilt only
// when membership changes, so subscription traffic never slows forwarding
// and fan-out never asks which socket backend it has. A channel sends
// nothing itself.

import { ChannelStats, DropSlot, EventSlot } from '../base/stats.js';
import type { Fanout, Outlet, OutletFault, OutletGroup, SendSink } from '../net/io.js';
import { type Endpoint, isMulticast } from '../wire/address.js';
import type { LiveState } from './live-state.js';
import type { TraceFields } from '../wire/trace.js';
import { type Entry, type Form, Registry } from './registry.js';

export type Subscriber = Entry<Outlet>;

/** What a channel reports upward (for logs and the repeater's own counters). */
export interface ChannelEvents {
  /** A subscriber was taken out of service: suspended (unreachable) or evicted (no socket). */
  outOfService(ch: Channel, e: Subscriber, event: 'suspend' | 'evict', why: string): void;
  /** Any outlet error, for the socket error counter and a throttled log line. */
  outletError(ch: Channel, o: Outlet, code: string): void;
}

export interface ChannelOptions {
  /** Dynamic subscribers per form. */
  readonly maxSubscribers: number;
  readonly toleranceMs: number;
  /** Unreachable errors after which a subscriber is suspended (0: never). */
  readonly deadAfter: number;
  /** How long a suspension lasts when no announce ends it first. */
  readonly deadRetryMs: number;
  readonly multicastTtl: number;
  readonly multicastInterface: string | null;
}

/** Seals frames for the sealed subscribers of one channel key (`receiver` ''), or for the one subscriber `receiver` names. */
export interface FrameSealer {
  sealDatagram(channelKey: string, sealing: SealingInput, receiver?: string): Buffer | null;
  /** Tells one subscriber the first sequence of our group frames it is a member for. */
  sealMembership(channelKey: string, memberFrom: number, receiver: string): Buffer | null;
  /** The sequence the next frame sealed will carry. */
  readonly nextSequence: number;
}

/** What a sealed copy carries: the node's datagram and its trace. */
export interface SealingInput {
  readonly content: Buffer;
  readonly trace: TraceFields | null;
}

/** Tells one subscriber from which sequence of our group frames it is a member (the out door seals and sends it); false when not sent. */
export type MembershipTeller = (ch: Channel, e: Subscriber, memberFrom: number) => boolean;

/** Sealed subscribers sharing one channel key: one frame per datagram for all of them. */
export interface KeyGroup {
  readonly key: string;
  /** Under the shared key: one frame for all of them (`all`). */
  readonly members: readonly Subscriber[];
  /** Identity mode: the subscribers an identity owns, each sealed for under its own link (path/link-door.ts). */
  readonly linked: readonly Subscriber[];
  readonly all: OutletGroup;
  /** The group without the member of a given origin (never send a frame back to its agent); small cache. */
  readonly without: Map<bigint, OutletGroup>;
}

const WITHOUT_CACHE = 256;

export class Channel implements SendSink {
  readonly stats = new ChannelStats();
  readonly plain: Registry<Outlet>;
  readonly sealed: Registry<Outlet>;
  /** Subscriptions for another key are refused; null accepts any key. */
  key: string | null;
  /** Its sealed subscribers get the fleet's ticket keys (a sealed listener said `tickets`). */
  tickets = false;
  /** TTLs of static multicast outputs, by endpoint text. */
  readonly staticTtl = new Map<string, number>();

  /** Dates memberships (the path sets it with the data seal of the running config); null without keys. */
  sealer: FrameSealer | null = null;
  /** Sends membership frames (the path's out door). */
  teller: MembershipTeller | null = null;
  /**
   * Identity mode: whether a sealed subscriber is an identity's (the path
   * sets it with the link door of the running config); such a subscriber is
   * in no shared-key group. Null without identities.
   */
  linkedBy: ((e: Subscriber) => boolean) | null = null;
  /** The channel's live state (the path keeps it: configure); null while warm joins are off. */
  live: LiveState | null = null;

  private plainMembers: OutletGroup;
  private keyMembers: KeyGroup[] = [];
  /**
   * Each sealed subscriber in a key group, the group's key, and the sequence
   * from which it has been in it without a break (frames of ours below it
   * were sealed for groups it was not in). Rebuilt with the groups; bounded
   * by the registry.
   */
  private since = new Map<Subscriber, { key: string; from: number }>();
  /** Subscribers whose subscription named its receiver: they know MEMBERSHIP frames. */
  private readonly fenced = new WeakSet<Subscriber>();
  private dirty = true;

  constructor(
    readonly name: string,
    key: string | null,
    private opts: ChannelOptions,
    private readonly fanout: Fanout,
    private readonly events: ChannelEvents,
  ) {
    this.key = key;
    const mark = () => (this.dirty = true);
    const open = (ep: Endpoint, isStatic: boolean) => this.openOutlet(ep, isStatic);
    this.plain = new Registry<Outlet>('plain', open, mark, opts.maxSubscribers, opts.toleranceMs);
    this.sealed = new Registry<Outlet>('sealed', open, mark, opts.maxSubscribers, opts.toleranceMs);
    this.plainMembers = fanout.group([]);
  }

  registry(form: Form): Registry<Outlet> {
    return form === 'plain' ? this.plain : this.sealed;
  }

  *subscribers(): IterableIterator<Subscriber> {
    yield* this.plain.values();
    yield* this.sealed.values();
  }

  get size(): number {
    return this.plain.size + this.sealed.size;
  }

  /** Subscribers suspended now (a scrape-time count). */
  get suspended(): number {
    let n = 0;
    for (const e of this.subscribers()) if (e.suspendedUntil !== 0) n++;
    return n;
  }

  configure(key: string | null, opts: ChannelOptions): void {
    this.key = key;
    this.opts = opts;
    for (const r of [this.plain, this.sealed]) {
      r.maxDynamic = opts.maxSubscribers;
      r.toleranceMs = opts.toleranceMs;
    }
  }

  private openOutlet(ep: Endpoint, isStatic: boolean): Outlet {
    const onError = (o: Outlet, code: string, fault: OutletFault, lostLater: boolean) => this.onOutletError(o, code, fault, lostLater);
    if (isStatic && isMulticast(ep.host)) {
      const ttl = this.staticTtl.get(ep.text) ?? this.opts.multicastTtl;
      return this.fanout.open(ep, onError, { ttl, multicastInterface: this.opts.multicastInterface });
    }
    // Throws when no socket can be had: the caller refuses the subscription
    // rather than keep one that cannot send.
    return this.fanout.open(ep, onError);
  }

  /** The subscriber at an address, in either form (an address has at most one). */
  find(text: string): Subscriber | undefined {
    return this.sealed.get(text) ?? this.plain.get(text);
  }

  private entryOf(o: Outlet): Subscriber | undefined {
    for (const r of [this.plain, this.sealed]) {
      const e = r.get(o.endpoint.text);
      if (e !== undefined && e.outlet === o) return e;
    }
    return undefined;
  }

  private onOutletError(o: Outlet, code: string, fault: OutletFault, lostLater: boolean): void {
    if (lostLater) this.stats.dropped[DropSlot.send_error]++;
    const e = this.entryOf(o);
    if (e !== undefined) {
      if (fault === 'broken') {
        // An outlet that can never send: out (a dynamic subscriber comes back
        // with its next announce, a static one when the repeater retries it).
        this.registry(e.form).remove(e.endpoint.text);
        this.stats.events[EventSlot.evict]++;
        this.events.outOfService(this, e, 'evict', code);
        return;
      }
      if (fault === 'unreachable') this.strike(e, code);
    }
    this.events.outletError(this, o, code);
  }

  /**
   * Counts an unreachable error against the subscriber; past the threshold
   * it is suspended instead of costing a send per datagram until it expires.
   */
  private strike(e: Subscriber, code: string): void {
    e.strikes++;
    if (this.opts.deadAfter > 0 && e.suspendedUntil === 0 && e.strikes >= this.opts.deadAfter) {
      this.registry(e.form).suspend(e, Date.now() + this.opts.deadRetryMs);
      this.stats.events[EventSlot.suspend]++;
      this.events.outOfService(this, e, 'suspend', code);
    }
  }

  /** Rebuilds the outlet groups; tells every new member that knows MEMBERSHIP frames when it joined, and returns those told. */
  private rebuild(): Set<Subscriber> {
    const plain: Outlet[] = [];
    for (const e of this.plain.values()) if (e.suspendedUntil === 0 && e.owned) plain.push(e.outlet);
    const byKey = new Map<string, Subscriber[]>();
    const linked = new Map<string, Subscriber[]>();
    const since = new Map<Subscriber, { key: string; from: number }>();
    const joined: Subscriber[] = [];
    const next = this.sealer?.nextSequence ?? 0;
    for (const e of this.sealed.values()) {
      if (e.suspendedUntil !== 0 || !e.owned) continue;
      if (this.linkedBy?.(e) === true) {
        const l = linked.get(e.key);
        if (l === undefined) linked.set(e.key, [e]);
        else l.push(e);
        continue;
      }
      const list = byKey.get(e.key);
      if (list === undefined) byKey.set(e.key, [e]);
      else list.push(e);
      // A member of another key's group before (a refresh may change the key) joins this one now.
      const was = this.since.get(e);
      const stays = was !== undefined && was.key === e.key;
      since.set(e, stays ? was : { key: e.key, from: next });
      if (!stays && this.fenced.has(e)) joined.push(e);
    }
    this.since = since;
    this.plainMembers = this.fanout.group(plain);
    for (const key of linked.keys()) if (!byKey.has(key)) byKey.set(key, []);
    this.keyMembers = [...byKey].map(([key, members]) => ({ key, members, linked: linked.get(key) ?? [], all: this.fanout.group(members.map((m) => m.outlet)), without: new Map() }));
    this.dirty = false;
    const told = new Set<Subscriber>();
    for (const e of joined) if (this.tellMembership(e)) told.add(e);
    return told;
  }

  /** Sends `e` the sequence from which it has been a member; false when it is none now (or the send failed). */
  private tellMembership(e: Subscriber): boolean {
    const from = this.since.get(e)?.from;
    if (from === undefined || from < 1 || this.teller === null) return false;
    return this.teller(this, e, from);
  }

  /**
   * A sealed subscriber announced itself with a frame naming its receiver:
   * it knows MEMBERSHIP frames. It is told (again at every announce: UDP may
   * have lost the last one) from which sequence it is a member, and told
   * again whenever it becomes one anew (a takeover, the end of a suspension).
   */
  confirmMember(e: Subscriber): void {
    if (e.form !== 'sealed') return;
    this.fenced.add(e);
    const told = this.dirty ? this.rebuild() : null;
    if (told?.has(e) !== true) this.tellMembership(e);
  }

  subscribersOf(form: Form): number {
    if (this.dirty) this.rebuild();
    return form === 'plain' ? this.plainMembers.size : this.keyMembers.reduce((n, g) => n + g.members.length + g.linked.length, 0);
  }

  /** `g` without the member of `origin` (a frame never goes back to the agent it came from). */
  groupFor(g: KeyGroup, origin: bigint | null): OutletGroup {
    if (origin === null || !g.members.some((m) => m.origin === origin)) return g.all;
    let out = g.without.get(origin);
    if (out === undefined) {
      if (g.without.size >= WITHOUT_CACHE) g.without.clear();
      out = this.fanout.group(g.members.filter((m) => m.origin !== origin).map((m) => m.outlet));
      g.without.set(origin, out);
    }
    return out;
  }

  /** The plain subscribers' group (rebuilt first when membership changed). */
  plainGroup(): OutletGroup {
    if (this.dirty) this.rebuild();
    return this.plainMembers;
  }

  /** The link door changed (a reload): who is an identity's is judged again at the next send. */
  relink(by: ((e: Subscriber) => boolean) | null): void {
    this.linkedBy = by;
    this.dirty = true;
  }

  /** The sealed subscribers' groups, one per channel key (rebuilt first when membership changed). */
  keyGroups(): readonly KeyGroup[] {
    if (this.dirty) this.rebuild();
    return this.keyMembers;
  }

  /**
   * A queued live copy was lost when its batch went out (net/socket-api.ts
   * SendSink): it was counted as forwarded when queued.
   */
  lateLoss(full: boolean, bytes: number): void {
    const st = this.stats;
    st.forwarded--;
    st.bytesForwarded -= bytes;
    st.dropped[full ? DropSlot.queue_full : DropSlot.send_error]++;
  }

  close(): void {
    this.plain.clear();
    this.sealed.clear();
  }
}

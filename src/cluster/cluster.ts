// Cluster mode: several repeaters act as one over a NATS bus
// (docs/PROTOCOL.md, "The cluster bus"; README, "Cluster mode").
//
// Invariants:
// - One fan-out: every datagram a repeater accepts from its own listeners is
//   forwarded to the subscribers it serves and published once on the bus;
//   every other repeater forwards it to the subscribers it serves. What comes
//   off the bus is never published again, so no topology can loop it.
// - Exactly one server per subscriber: each repeater tells the others which
//   subscribers it heard (and until when); the server of a subscriber is the
//   rendezvous-hash winner among the live repeaters that heard it. Every
//   repeater computes the same winner from the same facts, without a vote.
// - Liveness: a heartbeat every peerTimeout/3; a repeater not heard from for
//   peerTimeout is dead and the subscribers it served move to another that
//   heard them. With the bus down, every peer is soon dead, so each repeater
//   serves all the subscribers it heard (degraded: duplicates, never loss).
// - An update that came in through two repeaters (a node listing both) is
//   delivered once: gate/recent.ts, in the repeater.
// - The bus is untrusted: with keys, every message is a sealed frame (its own
//   origin, replay window, start fence) under the bus's own key ring
//   (bus-seal.ts: never a data key, which agents hold), and datagrams older
//   than MAX_DATAGRAM_AGE_MS are not delivered (a reconnect may flush old ones).
// - No downgrade across the cluster: an address any repeater serves sealed is
//   refused to plain subscriptions on every repeater, and a peer's sealed
//   announcement removes our plain entries for its address (heard.ts is the
//   fact, the subscription desk consults it).
// - Warm join: every repeater's live state learns what comes off the bus, so
//   each holds the whole cluster's; a repeater that starts fetches it from a
//   peer before it warms anyone (state-fetch.ts).
// - Takeover: a repeater that starts serving subscribers another served
//   sends them what that one may not have delivered (takeover.ts).

import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import type { ClusterConfig } from '../config/cluster-config.js';
import { owner } from '../gate/rendezvous.js';
import type { Channel, Subscriber } from '../repeater/channel.js';
import type { ClusterPort } from '../repeater/cluster-port.js';
import type { EntryChange } from '../repeater/registry.js';
import type { TicketService } from '../repeater/tickets.js';
import type { Repeater } from '../repeater/repeater.js';
import { type BusBody, type BusDatagram, type BusMessage, decodeBus, encodeBus, MAX_BATCH } from '../wire/bus.js';
import { parseEndpoint } from '../wire/address.js';
import type { TraceFields } from '../wire/trace.js';
import { Bus } from './bus.js';
import { ClusterCounters } from './counters.js';
import type { BusSeal } from './bus-seal.js';
import { HeardTable, idOf } from './heard.js';
import { StateAnswers, StateFetch, type StateHost } from './state-fetch.js';
import { Takeovers } from './takeover.js';

/** Datagrams older than this (by the sender's clock) are not delivered: stale after a reconnect. */
export const MAX_DATAGRAM_AGE_MS = 5_000;
/** A batch holds at most this many bytes of datagrams (one datagram alone may hold more): its sealed frame stays under 64 KiB. */
const BATCH_BYTES = 32 * 1024;
/** What an item adds to a batch beyond its datagram: channel, trace, origin, framing. */
const BATCH_ITEM_OVERHEAD = 48;
/** More repeaters than this in one cluster are refused: the peer table is bounded. */
export const MAX_PEERS = 64;
const STATIC_DEADLINE = Number.MAX_SAFE_INTEGER;

interface Peer {
  name: string;
  startedAtMs: number;
  lastHeard: number;
  subscribers: number;
  /** Our clock minus its clock (plus the bus latency), from its last heartbeat. */
  clockOffsetMs: number;
  /** Its last heartbeat said it holds the cluster's live state. */
  stateReady: boolean;
}

export class Cluster implements ClusterPort {
  readonly id: bigint;
  /** This process on the bus: host/pid. */
  readonly name: string;
  readonly counters = new ClusterCounters();
  readonly bus: Bus;
  private readonly startedAtMs = Date.now();
  private readonly peers = new Map<bigint, Peer>();
  /** Who heard which subscriber, bounded by the registries' own limits. */
  private readonly heard = new HeardTable(() => this.heardCap());
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Datagrams accepted this turn of the event loop, per channel, to be published together. */
  private readonly outbox = new Map<string, { items: BusDatagram[]; bytes: number }>();
  private flushPending: NodeJS.Immediate | null = null;
  private tickets: TicketService | null = null;
  /** This repeater's fetch of the live state at start, and its answers to others'. */
  readonly stateFetch: StateFetch;
  readonly stateAnswers: StateAnswers;
  /** What a repeater that takes over subscribers sends them. */
  private readonly takeovers: Takeovers;

  /** @param seal the bus's sealing (null only with --cluster-insecure). */
  constructor(
    private readonly cfg: ClusterConfig,
    private readonly repeater: Repeater,
    private readonly log: Logger,
    private readonly seal: BusSeal | null,
  ) {
    // Sealed, our id is the origin of our frames: a message cannot claim another sender.
    this.id = seal?.origin ?? (randomBytes(8).readBigUInt64LE(0) || 1n);
    this.name = `${hostname()}/${process.pid}`;
    this.bus = new Bus(cfg, log);
    const host: StateHost = {
      id: this.id,
      log,
      warm: repeater.warm,
      channels: repeater.channels,
      send: (body, subject) => this.send(body, subject),
      controlSubject: this.subject.control,
      stateSubject: (requester) => this.subject.state(requester),
      readyPeers: () => this.readyPeers(),
    };
    // Each step of the fetch is bounded by the peer timeout: a live peer heartbeats three times within it.
    this.stateFetch = new StateFetch(host, cfg.peerTimeoutMs);
    this.stateAnswers = new StateAnswers(host);
    this.takeovers = new Takeovers(repeater.warm, (peer) => this.peers.get(peer)?.lastHeard, cfg.peerTimeoutMs, log, (ch, e) => this.announce(ch, e, false));
  }

  /** The cluster this repeater belongs to (--cluster-name). */
  get clusterName(): string {
    return this.cfg.name;
  }

  private get subject(): { data: (channel: string) => string; allData: string; control: string; state: (requester: bigint) => string } {
    const n = this.cfg.name;
    // A state answer goes to its requester's subject only: the others never receive (nor open) it.
    return { data: (c) => `${n}.dg.${c}`, allData: `${n}.dg.>`, control: `${n}.ctl`, state: (r) => `${n}.st.${r.toString(16)}` };
  }

  start(): void {
    this.repeater.attachCluster(this, this.cfg.dedupWindowMs);
    this.repeater.subscriptions.attachCluster({ sealedElsewhere: (address) => this.heard.sealedAnywhere(address, Date.now()) });
    for (const subject of [this.subject.allData, this.subject.control, this.subject.state(this.id)]) this.bus.subscribe(subject, (_subject, data) => this.onMessage(data));
    this.stateFetch.start();
    this.bus.start((connected) => {
      if (connected) {
        this.stateFetch.connected();
        // Tell the others we are here, and everything we heard.
        this.heartbeat();
        this.dumpHeard();
        this.sendTickets();
      }
    });
    this.timer = setInterval(() => this.tick(), this.cfg.peerTimeoutMs / 3);
    this.timer.unref();
    this.reassign('start');
  }

  // ---- what we send ----

  private send(body: BusBody, subject: string): boolean {
    const message = encodeBus({ sender: this.id, sentAtMs: Date.now(), body });
    const payload = this.seal === null ? message : this.seal.seal(message);
    if (payload === null) {
      this.counters.bump(this.counters.dropped, 'seal_failed');
      return false;
    }
    if (!this.bus.publish(subject, payload)) return false;
    this.counters.bump(this.counters.published, body.type);
    return true;
  }

  publish(ch: Channel, datagram: Buffer, stable: boolean, trace: TraceFields | null, origin: bigint | null, opaque: boolean): void {
    // Not sealed for nothing while the bus is down: counted, and served from here to the subscribers we heard.
    if (!this.bus.connected) {
      this.counters.publishSkipped++;
      return;
    }
    let q = this.outbox.get(ch.name);
    // A batch must fit one sealed frame: what is queued goes first when this one would pass BATCH_BYTES
    // (a large datagram after small ones would otherwise make the batch unsealable, and lose them all).
    if (q !== undefined && q.items.length > 0 && q.bytes + datagram.length + BATCH_ITEM_OVERHEAD > BATCH_BYTES) {
      this.flushChannel(ch.name);
      q = undefined;
    }
    if (q === undefined) this.outbox.set(ch.name, (q = { items: [], bytes: 0 }));
    // Queued past this turn of the event loop: a view into a reused receive buffer must be copied.
    q.items.push({ type: 'datagram', channel: ch.name, datagram: stable ? datagram : Buffer.from(datagram), trace, origin: origin ?? 0n, opaque });
    q.bytes += datagram.length + BATCH_ITEM_OVERHEAD;
    if (q.items.length >= MAX_BATCH || q.bytes >= BATCH_BYTES) this.flushChannel(ch.name);
    else if (this.flushPending === null) this.flushPending = setImmediate(() => this.flush());
  }

  /** Publishes what this turn of the event loop accepted: one message (and one seal) per channel. */
  private flush(): void {
    this.flushPending = null;
    for (const name of this.outbox.keys()) this.flushChannel(name);
  }

  private flushChannel(name: string): void {
    const q = this.outbox.get(name);
    if (q === undefined || q.items.length === 0) return;
    this.outbox.delete(name);
    const body: BusBody = q.items.length === 1 ? q.items[0]! : { type: 'batch', datagrams: q.items };
    if (this.send(body, this.subject.data(name))) this.counters.datagramsPublished += q.items.length;
    else this.counters.publishSkipped += q.items.length;
  }

  private heartbeat(): void {
    let subscribers = 0;
    for (const ch of this.repeater.channels.values()) subscribers += ch.size;
    this.send({ type: 'heartbeat', name: this.name, startedAtMs: this.startedAtMs, intervalMs: Math.round(this.cfg.peerTimeoutMs / 3), subscribers, stateReady: this.stateReady }, this.subject.control);
  }

  /** We hold the cluster's live state: warm joins on, and our own fetch over. */
  private get stateReady(): boolean {
    return this.repeater.warm.enabled && !this.repeater.warm.holding;
  }

  /** Live peers holding the state, longest running first (most likely to hold it all). */
  private readyPeers(): bigint[] {
    const now = Date.now();
    return [...this.peers]
      .filter(([, p]) => p.stateReady && now - p.lastHeard <= this.cfg.peerTimeoutMs)
      .sort(([, a], [, b]) => a.startedAtMs - b.startedAtMs)
      .map(([id]) => id);
  }

  private announce(ch: Channel, e: Subscriber, gone: boolean): void {
    const deadlineMs = gone ? 0 : e.isStatic ? STATIC_DEADLINE : e.deadline;
    this.send(
      { type: 'subscriber', channel: ch.name, sealed: e.form === 'sealed', address: e.endpoint.text, key: e.key, origin: e.origin ?? 0n, deadlineMs, isStatic: e.isStatic, warmed: !gone && this.repeater.warm.completed(e) },
      this.subject.control,
    );
  }

  /**
   * One ticket-key schedule per cluster: every repeater merges every schedule
   * it hears by one deterministic rule (crypto/tickets.ts), and only the
   * rendezvous owner of a period among the live repeaters generates its key
   * (anyone, once it is due within half a period: the owner's message may
   * have been lost). Schedules travel with every heartbeat, so a lost one or
   * a newcomer is caught up within a second.
   */
  attachTickets(service: TicketService): void {
    this.tickets = service;
    service.peers = {
      mayGenerate: (nb, now) => owner(this.live(now), `tickets|${nb}`) === this.id,
      changed: (keys) => this.send({ type: 'tickets', keys }, this.subject.control),
    };
  }

  private sendTickets(): void {
    const t = this.tickets;
    if (t !== null && t.keys.size > 0) this.send({ type: 'tickets', keys: t.keys.keys }, this.subject.control);
  }

  /** Everything we heard, so a peer that just came (or came back) knows it at once. */
  private dumpHeard(): void {
    for (const ch of this.repeater.channels.values()) for (const e of ch.subscribers()) this.announce(ch, e, false);
  }

  entryChanged(ch: Channel, e: Subscriber, change: EntryChange): void {
    if (this.closed) return;
    this.announce(ch, e, change === 'remove');
    if (change === 'add') e.owned = this.owns(ch, e, Date.now());
  }

  // ---- what we receive ----

  private onMessage(data: Uint8Array): void {
    if (this.closed) return;
    let m: BusMessage | 'bad_payload';
    if (this.seal === null) m = decodeBus(data);
    else {
      const env = this.seal.open(Buffer.from(data.buffer, data.byteOffset, data.length));
      if (typeof env === 'string') {
        this.counters.bump(this.counters.dropped, env);
        return;
      }
      m = decodeBus(env.bus!);
      // The sealed origin is who sent it; a message may not claim another sender.
      if (typeof m !== 'string' && m.sender !== env.origin) m = 'bad_payload';
    }
    if (typeof m === 'string') {
      this.counters.bump(this.counters.dropped, m);
      return;
    }
    if (m.sender === this.id) return;
    this.counters.bump(this.counters.received, m.body.type);
    try {
      this.handle(m);
    } catch (err) {
      this.counters.bump(this.counters.dropped, 'internal_error');
      this.log.throttle('error', 'bus-internal', 'internal error handling a bus message; dropped', { error: describe(err) });
    }
  }

  private handle(m: BusMessage): void {
    const now = Date.now();
    const b = m.body;
    if (b.type === 'heartbeat') {
      const p = this.peers.get(m.sender);
      if (p === undefined && this.peers.size >= MAX_PEERS && !this.evictDeadPeer(now)) {
        this.counters.bump(this.counters.dropped, 'too_many_peers');
        return;
      }
      const fresh = p === undefined || p.startedAtMs !== b.startedAtMs || now - p.lastHeard > this.cfg.peerTimeoutMs;
      this.peers.set(m.sender, { name: b.name, startedAtMs: b.startedAtMs, lastHeard: now, subscribers: b.subscribers, clockOffsetMs: now - m.sentAtMs, stateReady: b.stateReady === true });
      if (fresh) {
        this.log.info('cluster peer joined', { peer: b.name, id: m.sender.toString(16) });
        // Our heartbeat first: the newcomer takes announcements only from peers it knows.
        this.heartbeat();
        this.dumpHeard();
        this.sendTickets();
        this.reassign('join');
      }
      if (b.stateReady === true) this.stateFetch.peerReady(m.sender);
      return;
    }
    if (b.type === 'state_request' || b.type === 'state_chunk') {
      // From peers we track only: a requester heartbeats before it asks, and we asked only a peer we heard.
      if (!this.peers.has(m.sender)) this.counters.bump(this.counters.dropped, 'unknown_peer');
      else if (b.type === 'state_request') this.stateAnswers.request(m.sender, b, this.stateReady);
      else if (!this.stateFetch.chunk(m.sender, b)) this.counters.bump(this.counters.dropped, 'unexpected_state');
      return;
    }
    if (b.type === 'subscriber') {
      // Only from peers we track (a repeater's heartbeat precedes its announcements:
      // one publisher's order is kept), so what `heard` holds is bounded by the peer table.
      if (!this.peers.has(m.sender)) {
        this.counters.bump(this.counters.dropped, 'unknown_peer');
        return;
      }
      // Compared with our registries in canonical form, like any address from the network.
      const ep = parseEndpoint(b.address);
      if (typeof ep === 'string') {
        this.counters.bump(this.counters.dropped, 'bad_payload');
        return;
      }
      const address = ep.text;
      if (b.deadlineMs === 0) this.heard.gone(b.channel, b.sealed, address, m.sender);
      else {
        // Deadlines on the sender's clock become ours: what it has left, from now.
        const deadline = b.isStatic ? Infinity : now + Math.max(0, b.deadlineMs - m.sentAtMs);
        // Bounded: a peer reports at most what its own registries hold.
        if (!this.heard.heard(b.channel, b.sealed, address, m.sender, deadline)) {
          this.counters.bump(this.counters.dropped, 'heard_full');
          return;
        }
        // Served sealed over there: our plain copies to it would carry the values in clear.
        if (b.sealed) this.repeater.subscriptions.dropPlainFor(address, `sealed at ${this.peers.get(m.sender)?.name ?? m.sender.toString(16)}`);
      }
      this.reassignOne(b.channel, b.sealed, address, now, b.warmed === true);
      return;
    }
    if (b.type === 'tickets') {
      // From peers we track only, like announcements; a repeater without `tickets` ignores them.
      if (!this.peers.has(m.sender)) this.counters.bump(this.counters.dropped, 'unknown_peer');
      else if (this.tickets === null) this.counters.bump(this.counters.dropped, 'not_deliverable');
      else this.tickets.merge(b.keys);
      return;
    }
    // Age on the sender's clock as we know it, so skewed clocks do not make everything stale.
    if (now - m.sentAtMs - (this.peers.get(m.sender)?.clockOffsetMs ?? 0) > MAX_DATAGRAM_AGE_MS) {
      this.counters.bump(this.counters.dropped, 'stale');
      return;
    }
    const datagrams = b.type === 'batch' ? b.datagrams : [b];
    this.counters.datagramsReceived += datagrams.length;
    for (const d of datagrams) {
      const why = this.repeater.acceptFromBus(d.channel, d.datagram, d.trace, d.origin === 0n ? null : d.origin, d.opaque);
      if (why !== null) this.counters.bump(this.counters.dropped, 'not_deliverable');
    }
  }

  /** Makes room in a full peer table: forgets the peer silent longest, if it is past the timeout. */
  private evictDeadPeer(now: number): boolean {
    let oldest: bigint | null = null;
    let oldestHeard = Infinity;
    for (const [id, p] of this.peers) {
      if (p.lastHeard < oldestHeard) [oldest, oldestHeard] = [id, p.lastHeard];
    }
    if (oldest === null || now - oldestHeard <= this.cfg.peerTimeoutMs) return false;
    this.peers.delete(oldest);
    this.heard.forgetPeer(oldest);
    return true;
  }

  /** Room for every subscriber the channels could hold, four times over (peers may be configured larger). */
  private heardCap(): number {
    return 4 * 2 * Math.max(1, this.repeater.channels.size) * this.repeater.limits.maxSubscribers;
  }

  // ---- ownership ----

  /** The live repeaters: ourselves and the peers heard within the timeout. */
  private live(now: number): Set<bigint> {
    const out = new Set<bigint>([this.id]);
    for (const [id, p] of this.peers) if (now - p.lastHeard <= this.cfg.peerTimeoutMs) out.add(id);
    return out;
  }

  /** Whether we serve `e`: the rendezvous winner among the live repeaters that heard it. */
  owns(ch: Channel, e: Subscriber, now: number, live = this.live(now)): boolean {
    return this.ownerOf(idOf(ch.name, e.form === 'sealed', e.endpoint.text), now, live) === this.id;
  }

  private ownerOf(id: string, now: number, live: Set<bigint>): bigint | null {
    const candidates = [this.id];
    for (const [peer, deadline] of this.heard.peersOf(id)) if (deadline > now && live.has(peer)) candidates.push(peer);
    return owner(candidates, id);
  }

  /** After a peer's announcement of a subscriber (`warmed`: the peer completed its warm join). */
  private reassignOne(channel: string, sealed: boolean, address: string, now: number, warmed: boolean): void {
    const ch = this.repeater.channels.get(channel);
    const e = ch?.registry(sealed ? 'sealed' : 'plain').get(address);
    if (ch === undefined || e === undefined) return;
    if (warmed) this.repeater.warm.peerCompleted(e);
    const live = this.live(now);
    const mine = this.owns(ch, e, now, live);
    if (mine !== e.owned) {
      e.owned = mine;
      ch.registry(e.form).touch();
      if (mine) this.takeovers.one(ch, e, live, now);
    }
  }

  private reassign(why: string): void {
    const now = Date.now();
    const live = this.live(now);
    const gainedIn = new Map<Subscriber, Channel>();
    const { gained, lost } = this.repeater.reassign((ch, e) => {
      const mine = this.owns(ch, e, now, live);
      if (mine && !e.owned) gainedIn.set(e, ch);
      return mine;
    });
    this.takeovers.moved(gainedIn, live, now);
    if (why === 'peer died') this.counters.failovers += gained.length;
    if (gained.length + lost.length > 0) this.log.info('cluster: subscribers moved', { why, gained: gained.length, lost: lost.length });
  }

  private tick(): void {
    const now = Date.now();
    if (this.bus.connected) {
      this.heartbeat();
      this.sendTickets();
    }
    let died = false;
    for (const [id, p] of this.peers) {
      if (now - p.lastHeard > this.cfg.peerTimeoutMs) {
        if (!p.name.startsWith('(gone) ')) {
          this.log.warn('cluster peer lost: serving the subscribers it served that we heard', { peer: p.name, id: id.toString(16), silentMs: now - p.lastHeard });
          p.name = `(gone) ${p.name}`;
          died = true;
        }
        // Forgotten after a while, with everything it said it heard.
        if (now - p.lastHeard > 10 * this.cfg.peerTimeoutMs) this.peers.delete(id);
      }
    }
    this.heard.expire(now, (peer) => this.peers.has(peer));
    this.reassign(died ? 'peer died' : 'tick');
  }

  // ---- views ----

  /** Live peers, for metrics and /healthz. */
  livePeers(): Array<{ id: string; name: string; lastHeardMs: number; subscribers: number }> {
    const now = Date.now();
    return [...this.peers]
      .filter(([, p]) => now - p.lastHeard <= this.cfg.peerTimeoutMs)
      .map(([id, p]) => ({ id: id.toString(16), name: p.name, lastHeardMs: now - p.lastHeard, subscribers: p.subscribers }));
  }

  /** Who serves a subscriber and who heard it (for /subscribers). */
  describeEntry(ch: Channel, e: Subscriber): { servedBy: string | null; heardBy: string[] } {
    const now = Date.now();
    const id = idOf(ch.name, e.form === 'sealed', e.endpoint.text);
    const name = (peer: bigint) => (peer === this.id ? `${this.name} (this repeater)` : (this.peers.get(peer)?.name ?? peer.toString(16)));
    const live = this.live(now);
    const served = this.ownerOf(id, now, live);
    const heardBy = [this.id, ...[...this.heard.peersOf(id)].filter(([p, d]) => d > now && live.has(p)).map(([p]) => p)];
    return { servedBy: served === null ? null : name(served), heardBy: heardBy.map(name) };
  }

  ownedSubscribers(): number {
    let n = 0;
    for (const ch of this.repeater.channels.values()) for (const e of ch.subscribers()) if (e.owned) n++;
    return n;
  }

  /** Degraded: the bus is down, or no peer is heard (each repeater then serves all it heard). */
  health(): Record<string, unknown> {
    return {
      name: this.cfg.name,
      id: this.id.toString(16),
      node: this.name,
      sealed: this.seal !== null,
      keys: this.seal?.keyIds() ?? [],
      connected: this.bus.connected,
      server: this.bus.server,
      degraded: !this.bus.connected,
      peers: this.livePeers(),
      ownedSubscribers: this.ownedSubscribers(),
      stateFetch: this.stateFetch.describe(),
      stateAnswersInProgress: this.stateAnswers.inProgress,
    };
  }

  async close(): Promise<void> {
    this.flush();
    if (this.flushPending !== null) clearImmediate(this.flushPending);
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.stateFetch.close();
    this.stateAnswers.close();
    // A clean goodbye: the others stop counting on us at once.
    for (const ch of this.repeater.channels.values()) for (const e of ch.subscribers()) this.announce(ch, e, true);
    await this.bus.close();
  }
}

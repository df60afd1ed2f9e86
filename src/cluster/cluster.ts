// Cluster mode: several repeaters act as one over a NATS bus
// (docs/PROTOCOL.md, "The cluster bus"; README, "Cluster mode").
//
// The cluster plugs into the datagram path's doors (path/ports.ts): the
// path publishes through it what its in door accepted from listeners
// (BusDoor), and what comes off the bus enters the path's in door, one bus
// message one batch (receive.ts).
//
// Invariants:
// - One fan-out: every datagram a repeater accepts from its own listeners is
//   forwarded to the subscribers it serves and published once on the bus;
//   every other repeater forwards it to the subscribers it serves. What comes
//   off the bus is never published again, so no topology can loop it.
// - Exactly one server per subscriber (ownership.ts): the rendezvous-hash
//   winner among the live repeaters that heard it.
// - Liveness: a heartbeat every peerTimeout/3; a repeater not heard from for
//   peerTimeout is dead and the subscribers it served move to another that
//   heard them. With the bus down, every peer is soon dead, so each repeater
//   serves all the subscribers it heard (degraded: duplicates, never loss).
//   Every heartbeat lists the peers its sender counts live, and a change of
//   that view is published (outbox flushed first) before the sender acts on
//   it: a repeater never serves a subscriber that a live peer which heard it
//   may serve because it does not count that repeater live (peers.ts).
// - Our own stalls (stall.ts) are not our peers' silence: no peer is taken
//   for dead across one, clock offsets come from the least delayed
//   heartbeats, and after a stall long enough for a takeover what queued
//   meanwhile is held until the peers said whether they took over
//   (resume.ts).
// - An update that came in through two repeaters (a node listing both) is
//   delivered once: judge/copies.ts, in the repeater, pairs copies per
//   ingress for the memory (maxAgeMs + --cluster-dedup-window), which
//   outlasts the oldest bus datagram still delivered.
// - The bus is untrusted: every message is sealed (origin, replay, start fence) under the bus's own ring (bus-seal.ts, no data
//   key) or a key a listed role=repeater identity handed out (bus-identity.ts); older than maxAgeMs: not delivered.
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
import { owner } from '../judge/rendezvous.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { ClusterPort } from '../repeater/cluster-port.js';
import type { EntryChange } from '../path/registry.js';
import type { TicketService } from '../repeater/ticket-service.js';
import type { Repeater } from '../repeater/repeater.js';
import { type BusBody, type BusMessage, decodeBus, encodeBus } from '../wire/bus.js';
import type { TraceFields } from '../wire/trace.js';
import { Bus } from './bus.js';
import { Outbox } from './outbox.js';
import { ClusterCounters } from './counters.js';
import type { BusSealer } from './bus-seal.js';
import { degradedBecause, livePeerViews, type PeerView } from './health.js';
import { HeardTable } from './heard.js';
import { Ownership } from './ownership.js';
import { copyMemoryMs, maxAgeMs, PeerTable } from './peers.js';
import { type Receiving, takeAnnouncement, takeDatagrams } from './receive.js';
import { Resume, type ResumeHost } from './resume.js';
import { StateAnswers, StateFetch, type StateHost } from './state-fetch.js';
import { Takeovers } from './takeover.js';

export { copyMemoryMs, MAX_PEERS, maxAgeMs } from './peers.js';

const STATIC_DEADLINE = Number.MAX_SAFE_INTEGER;

export class Cluster implements ClusterPort {
  readonly id: bigint;
  /** This process on the bus: host/pid. */
  readonly name: string;
  readonly counters = new ClusterCounters();
  readonly bus: Bus;
  private readonly startedAtMs = Date.now();
  private readonly peers: PeerTable;
  /** Our own stalls, and what we do after a long one. */
  readonly resume: Resume;
  private readonly receiving: Receiving;
  /** When our last heartbeat went out (monotonic clock): our silence, as our peers measure it. */
  private lastHeartbeat = performance.now();
  /** Since when we have been on the bus without a gap (our clock). */
  private steadySince = Infinity;
  private hadPeers = false;
  /** Who heard which subscriber, bounded by the registries' own limits. */
  private readonly heard = new HeardTable(() => this.heardCap());
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Datagrams accepted this turn of the event loop, per channel, to be published together. */
  private readonly outbox: Outbox;
  private tickets: TicketService | null = null;
  /** This repeater's fetch of the live state at start, and its answers to others'. */
  readonly stateFetch: StateFetch;
  readonly stateAnswers: StateAnswers;
  /** What a repeater that takes over subscribers sends them. */
  private readonly takeovers: Takeovers;
  /** Who serves which subscriber. */
  private readonly ownership: Ownership;

  /** @param seal the bus's sealing (null only with --cluster-insecure). */
  constructor(
    private readonly cfg: ClusterConfig,
    private readonly repeater: Repeater,
    private readonly log: Logger,
    private readonly seal: BusSealer | null,
  ) {
    // Sealed, our id is the origin of our frames: a message cannot claim another sender.
    this.id = seal?.origin ?? (randomBytes(8).readBigUInt64LE(0) || 1n);
    this.name = `${hostname()}/${process.pid}`;
    this.bus = new Bus(cfg, log);
    seal?.attach?.({ publish: (p) => this.bus.publish(this.subject.control, p), whenConnected: (fn) => this.bus.whenConnected(fn), count: (w, r) => this.counters.bump(this.counters[w], r), forget: (o) => this.peers.forget(o) });
    this.outbox = new Outbox((body, channel) => this.send(body, this.subject.data(channel)), this.counters);
    this.peers = new PeerTable(this.id, cfg.peerTimeoutMs);
    this.peers.onForget = (peer) => this.heard.forgetPeer(peer);
    this.ownership = new Ownership(this.id, this.peers, this.heard, repeater, () => this.takeovers, this.counters, log);
    const resumeHost: ResumeHost = {
      log,
      peers: this.peers,
      replayBus: (m, at, queued, learnOnly) => this.handleSafely(m, at, queued, learnOnly),
      silenceMs: () => performance.now() - this.lastHeartbeat,
      resumedAt: (atMs) => {
        this.steadySince = atMs;
        if (this.bus.connected) this.heartbeat(true);
      },
    };
    this.resume = new Resume(this.id, resumeHost, cfg.peerTimeoutMs);
    this.receiving = { peers: this.peers, heard: this.heard, repeater, counters: this.counters, maxAgeMs: maxAgeMs(cfg), reassignOne: (c, sealed, a, now, warmed) => this.ownership.reassignOne(c, sealed, a, now, warmed) };
    const host: StateHost = {
      id: this.id,
      log,
      warm: repeater.warm,
      channels: repeater.channels,
      send: (body, subject) => this.send(body, subject),
      controlSubject: this.subject.control,
      stateSubject: (requester) => this.subject.state(requester),
      // Live peers holding the state, steadiest first (on the bus without a gap for longest: it missed nothing since).
      readyPeers: () => this.peers.readyPeers(),
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
    this.repeater.attachCluster(this, copyMemoryMs(this.cfg));
    this.repeater.subscriptions.attachCluster({ sealedElsewhere: (address) => this.heard.sealedAnywhere(address, Date.now()) });
    for (const subject of [this.subject.allData, this.subject.control, this.subject.state(this.id)]) this.bus.subscribe(subject, (_subject, data) => this.onMessage(data));
    this.stateFetch.start();
    this.bus.start((connected) => {
      if (connected) {
        // A (re)connection is a gap: what was published meanwhile never reached us.
        this.steadySince = Date.now();
        this.stateFetch.connected();
        // Tell the others we are here, and everything we heard.
        this.heartbeat();
        this.dumpHeard();
        this.sendTickets();
      }
    });
    this.timer = setInterval(() => this.tick(), this.cfg.peerTimeoutMs / 3);
    this.timer.unref();
    this.resume.watch.start();
    this.ownership.reassign('start');
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
    this.outbox.add(ch, datagram, stable, trace, origin, opaque);
  }

  /**
   * Says who we count live. What this turn accepted goes out first: the
   * datagrams we served under the previous view precede it on the bus.
   */
  private heartbeat(resumed = false): void {
    this.outbox.flush();
    let subscribers = 0;
    for (const ch of this.repeater.channels.values()) subscribers += ch.size;
    const now = Date.now();
    const livePeers = [...this.peers.live()].filter((p) => p !== this.id);
    const steadyMs = Number.isFinite(this.steadySince) ? Math.max(0, now - this.steadySince) : 0;
    const body: BusBody = { type: 'heartbeat', name: this.name, startedAtMs: this.startedAtMs, intervalMs: Math.round(this.cfg.peerTimeoutMs / 3), subscribers, stateReady: this.stateReady, livePeers, resumed, steadyMs };
    if (this.send(body, this.subject.control)) this.lastHeartbeat = performance.now();
  }

  /** We hold the cluster's live state: warm joins on, and our own fetch over. */
  private get stateReady(): boolean {
    return this.repeater.warm.enabled && !this.repeater.warm.holding;
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
   * it hears by one deterministic rule (crypto/ticket-schedule.ts), and only the
   * rendezvous owner of a period among the live repeaters generates its key
   * (anyone, once it is due within half a period: the owner's message may
   * have been lost). Schedules travel with every heartbeat, so a lost one or
   * a newcomer is caught up within a second.
   */
  attachTickets(service: TicketService): void {
    this.tickets = service;
    service.peers = {
      mayGenerate: (nb) => owner(this.ownership.live(), `tickets|${nb}`) === this.id,
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
    if (change === 'add') e.owned = this.ownership.owns(ch, e, Date.now());
  }

  // ---- what we receive ----

  private onMessage(data: Uint8Array): void {
    if (this.closed) return;
    let m: BusMessage | 'bad_payload';
    if (this.seal === null) m = decodeBus(data);
    else {
      const env = this.seal.open(Buffer.from(data.buffer, data.byteOffset, data.length));
      if (env === null) return;
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
    // Read right after a stall of ours, it says nothing of the clocks; after a long one it waits (resume.ts).
    const burst = this.resume.check();
    if (this.resume.holding) {
      this.resume.holdBus(m, Date.now(), data.length);
      return;
    }
    this.handleSafely(m, Date.now(), burst, false);
  }

  /** `queued`: it waited while we were stopped; `learnOnly`: and a peer took over, so its datagrams are not delivered. */
  private handleSafely(m: BusMessage, now: number, queued: boolean, learnOnly: boolean): void {
    if (this.closed) return;
    try {
      this.handle(m, now, queued, learnOnly);
    } catch (err) {
      this.counters.bump(this.counters.dropped, 'internal_error');
      this.log.throttle('error', 'bus-internal', 'internal error handling a bus message; dropped', { error: describe(err) });
    }
  }

  private handle(m: BusMessage, now: number, queued: boolean, learnOnly: boolean): void {
    const b = m.body;
    if (b.type === 'heartbeat') {
      if (!this.peers.admits(m.sender, now)) {
        this.counters.bump(this.counters.dropped, 'too_many_peers');
        return;
      }
      const { fresh, viewChanged } = this.peers.heard(m.sender, b, m.sentAtMs, now, !queued);
      this.hadPeers = true;
      if (fresh) {
        this.log.info('cluster peer joined', { peer: b.name, id: m.sender.toString(16) });
        // Our heartbeat first: the newcomer takes announcements only from peers it knows.
        this.heartbeat();
        this.dumpHeard();
        this.sendTickets();
        this.ownership.reassign('join');
      } else {
        // Back from a stall, it asks who counts it live: tell it at once (its hold ends when everyone did).
        if (b.resumed === true && this.peers.answerResumed(m.sender, now)) this.heartbeat();
        if (viewChanged) this.ownership.reassign(this.peers.get(m.sender)!.countsUs ? 'a peer hears us' : 'a peer stopped hearing us');
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
      takeAnnouncement(this.receiving, m, b, now);
      return;
    }
    if (b.type === 'tickets') {
      // From peers we track only, like announcements; a repeater without `tickets` ignores them.
      if (!this.peers.has(m.sender)) this.counters.bump(this.counters.dropped, 'unknown_peer');
      else if (this.tickets === null) this.counters.bump(this.counters.dropped, 'not_deliverable');
      else this.tickets.merge(b.keys);
      return;
    }
    takeDatagrams(this.receiving, m, b, now, learnOnly);
  }

  /** Room for every subscriber the channels could hold, four times over (peers may be configured larger). */
  private heardCap(): number {
    return 4 * 2 * Math.max(1, this.repeater.channels.size) * this.repeater.limits.maxSubscribers;
  }

  /** A datagram from our own listeners (ClusterPort): held while we are back from a long stall (resume.ts). */
  ownArrival(ch: Channel, datagram: Buffer, again: (copy: Buffer) => void): boolean {
    return this.resume.ownArrival(ch, datagram, again);
  }

  /**
   * Deaths first, then our heartbeat (which no longer lists them), then the
   * move: a peer reading our messages in order learns that we took its
   * subscribers over before the first datagram we serve them.
   */
  private tick(): void {
    // A tick that runs late is a stall of ours: the peers get their time back before anyone is declared dead.
    this.resume.check();
    const now = Date.now();
    const died = this.peers.expire(now);
    for (const { id, peer, silentMs } of died) this.log.warn('cluster peer lost: serving the subscribers it served that we heard', { peer: peer.name, id: id.toString(16), silentMs });
    // Hearing none of the peers we heard is a gap too: we may be the side of a partition that missed updates.
    if (died.length > 0 && this.hadPeers && this.peers.live().size === 1) {
      this.steadySince = now;
      this.hadPeers = false;
    }
    if (this.bus.connected) {
      this.heartbeat();
      this.sendTickets();
    }
    // Forgotten (10 timeouts after falling silent) with everything it said it heard.
    this.heard.expire(now, (peer) => this.peers.has(peer));
    this.ownership.reassign(died.length > 0 ? 'peer died' : 'tick');
  }

  // ---- views ----

  /** Live peers, for metrics and /healthz. */
  livePeers(): PeerView[] {
    return livePeerViews(this.peers, Date.now());
  }

  /** Who serves a subscriber and who heard it (for /subscribers). */
  describeEntry(ch: Channel, e: Subscriber): { servedBy: string | null; heardBy: string[] } {
    return this.ownership.describe(ch, e, (peer) => (peer === this.id ? `${this.name} (this repeater)` : (this.peers.get(peer)?.name ?? peer.toString(16))));
  }

  ownedSubscribers(): number {
    return this.ownership.served();
  }

  /** Why this repeater is not a full member of the cluster now (health.ts); empty: it is. */
  degradedBecause(): string[] {
    return degradedBecause(this.bus, this.peers, this.cfg.peerTimeoutMs, Date.now());
  }

  get degraded(): boolean {
    return this.degradedBecause().length > 0;
  }

  /** What /healthz says of the cluster. */
  health(): Record<string, unknown> {
    const reasons = this.degradedBecause();
    return {
      name: this.cfg.name,
      id: this.id.toString(16),
      node: this.name,
      sealed: this.seal !== null,
      keys: this.seal?.keyIds() ?? [],
      connected: this.bus.connected,
      subscribed: this.bus.subscribed,
      server: this.bus.server,
      degraded: reasons.length > 0,
      degradedBecause: reasons,
      steadyMs: Number.isFinite(this.steadySince) ? Date.now() - this.steadySince : null,
      stalls: { count: this.resume.watch.stalls, longestMs: this.resume.watch.longestMs, long: this.resume.resumed, takenOver: this.resume.takeovers, holding: this.resume.holding },
      peers: this.livePeers(),
      ownedSubscribers: this.ownedSubscribers(),
      stateFetch: this.stateFetch.describe(),
      stateAnswersInProgress: this.stateAnswers.inProgress,
    };
  }

  async close(): Promise<void> {
    this.outbox.flush();
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.resume.close();
    this.stateFetch.close();
    this.stateAnswers.close();
    // A clean goodbye: the others stop counting on us at once.
    for (const ch of this.repeater.channels.values()) for (const e of ch.subscribers()) this.announce(ch, e, true);
    await this.bus.close();
  }
}


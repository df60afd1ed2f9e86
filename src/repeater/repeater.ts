// The repeater: listeners feed channels, channels fan out to subscribers.
// Owns the datagram path and applies configs (first start and reloads)
// atomically: a config that cannot be applied leaves the running one intact.
//
// The path of one datagram (docs/ARCHITECTURE.md):
//   listener -> size, allow-list -> [sealed: open the frame]
//   -> cache update: inspect, loop guard (trace or content window), forward form
//   -> channel fan-out (plain copies, sealed frames)
//   subscriptions -> the desk -> the registries; nothing is ever answered.

import { ConfigError, describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { DropSlot, type DropReason, EventSlot, FANOUT_BUCKETS, FastHistogram, KindSlot } from '../base/stats.js';
import type { ListenerConfig, ServeConfig } from '../config/serve-config.js';
import { ContentWindow } from '../judge/dedup.js';
import { CopyMemory } from '../judge/copies.js';
import { LoopGuard } from '../judge/loop-guard.js';
import { createFanout, DEFAULT_BACKEND, openListener } from '../net/io.js';
import type { Backend, DatagramListener, Fanout, Source } from '../net/io.js';
import { OwnAddresses } from '../net/local.js';
import type { Endpoint } from '../wire/address.js';
import { canCarryTrace, contentOf, forwardForm, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import type { SavedSubscriber } from '../wire/registry-file.js';
import { decodeSubscription, type Subscription } from '../wire/subscription.js';
import { readTrace, type TraceFields } from '../wire/trace.js';
import { checkHeader, peekKind } from '../wire/uwsgi.js';
import { AccessList } from './acl.js';
import { RepeaterHints } from './hints.js';
import { Channel, type ChannelEvents, type ChannelOptions, type Subscriber } from './channel.js';
import { ListenerName } from './listener-name.js';
import { type Arrival, type ClusterPort, OWN_INGRESS } from './cluster-port.js';
import { RateLimiter } from './ratelimit.js';
import type { DataSeal } from './data-seal.js';
import { type SignatureCheck, SubscriptionDesk } from './subscriptions.js';
import { type TicketPersistence, TicketService } from './ticket-service.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import { WarmJoins } from './warm-join.js';

/** A listener's current place in the config; mutated in place on reload. */
interface Route {
  config: ListenerConfig;
  channel: Channel;
  listener: DatagramListener;
}

export interface RepeaterHooks {
  /** Builds the data seal for a config (loads keys); throws to refuse the config. */
  sealed?: (config: ServeConfig) => DataSeal | null;
  /** Builds the uWSGI signature checker for a config; throws to refuse it. */
  signatures?: (config: ServeConfig) => SignatureCheck | null;
  /** Socket backend (default: native when the addon is built). */
  backend?: Backend;
  /** Where the ticket keys are kept (--state-dir): read once, when tickets are first configured; throws to refuse. */
  ticketStore?: TicketPersistence & { load(): TicketKey[] };
}

/** Largest age of a restored subscriber's timestamps beyond now (clock steps). */
const FUTURE_SLACK_MS = 60_000;

export class Repeater {
  readonly fanoutTime = new FastHistogram(FANOUT_BUCKETS);
  readonly channels = new Map<string, Channel>();
  /** Listener socket errors and outlet errors, all channels. */
  socketErrors = 0;
  readonly backend: Backend;
  readonly loops = new LoopGuard();
  /** Live state per channel and warm joins of new subscribers (warm-join.ts). */
  readonly warm: WarmJoins;
  /** Likely misconfigurations seen in dropped datagrams (hints.ts). */
  readonly hints: RepeaterHints;

  private config!: ServeConfig;

  /** The running limits (they change on reload). */
  get limits(): ServeConfig['limits'] {
    return this.config.limits;
  }
  private acl!: AccessList;
  private readonly limiter = new RateLimiter(1, 1);
  private desk!: SubscriptionDesk;
  private seal: DataSeal | null = null;
  private dedup!: ContentWindow;
  private fanout: Fanout | null = null;
  private readonly routes = new Map<string, Route>();
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly shape = newShape();
  private readonly events: ChannelEvents;
  /** Cluster mode: updates delivered once though they came in through two repeaters. */
  clusterDuplicates = 0;
  /** Cluster mode only: null standalone, so the datagram path pays one null check. */
  private cluster: ClusterPort | null = null;
  private recent: CopyMemory | null = null;
  private ticketService: TicketService | null = null;

  constructor(
    readonly log: Logger,
    private readonly hooks: RepeaterHooks = {},
  ) {
    this.backend = hooks.backend ?? DEFAULT_BACKEND;
    this.warm = new WarmJoins(this);
    this.hints = new RepeaterHints(log, () => this.acl?.cidrs ?? null, (l) => this.routes.get(l)?.channel.name ?? null);
    this.events = {
      outOfService: (c, e, event, why) => {
        if (event === 'suspend') {
          this.log.warn('subscriber suspended: unreachable', { channel: c.name, address: e.endpoint.text, form: e.form, strikes: e.strikes, error: why, until: new Date(e.suspendedUntil).toISOString() });
        } else {
          this.log.throttle('error', `evict:${e.endpoint.text}`, 'subscriber removed: its outlet cannot send', { channel: c.name, address: e.endpoint.text, error: why, static: e.isStatic });
        }
      },
      outletError: (_c, o, code) => {
        this.socketErrors++;
        this.log.throttle('warn', `outlet:${o.endpoint.text}`, 'subscriber unreachable', { address: o.endpoint.text, error: code });
      },
    };
  }

  get current(): ServeConfig {
    return this.config;
  }

  /** No output may be larger than this (a trace or a repaired delete makes it grow). */
  get outLimit(): number {
    return Math.min(this.config.limits.maxDatagram, MAX_UDP_PAYLOAD);
  }

  get dataSeal(): DataSeal | null {
    return this.seal;
  }

  /** The fleet's ticket-key schedule; null when no listener has `tickets`. */
  get tickets(): TicketService | null {
    return this.ticketService;
  }

  get subscriptions(): SubscriptionDesk {
    return this.desk;
  }

  get rateLimiter(): RateLimiter {
    return this.limiter;
  }

  get access(): AccessList {
    return this.acl;
  }

  /** Each listener: configured and bound address, channel, form, receive buffer. */
  listeners(): Array<{ address: string; bound: string; channel: string; sealed: boolean; recvBuffer: number }> {
    return [...this.routes.values()].map((r) => ({
      address: r.config.endpoint.text,
      bound: r.listener.bound,
      channel: r.channel.name,
      sealed: r.config.sealed,
      recvBuffer: r.listener.recvBuffer,
    }));
  }

  /** Each listener's address and socket, for kernel statistics. */
  listenerSockets(): Array<{ address: string; fd: number | null }> {
    return [...this.routes.values()].map((r) => ({ address: r.config.endpoint.text, fd: r.listener.fd }));
  }

  /** Port actually bound for a configured listener address. */
  portOf(address: string): number {
    const r = this.routes.get(address);
    if (r === undefined) throw new Error(`no listener ${address}`);
    return r.listener.port;
  }

  static async start(config: ServeConfig, log: Logger, hooks: RepeaterHooks = {}): Promise<Repeater> {
    const r = new Repeater(log, hooks);
    // Cluster mode: no warm join before the cluster's live state was fetched
    // from a peer (the cluster releases them); held before any listener opens.
    if (config.cluster !== null && config.warm.enabled) r.warm.hold();
    try {
      await r.apply(config);
    } catch (err) {
      await r.close();
      throw err;
    }
    return r;
  }

  /** Static outputs must never be our own listeners (that would loop). */
  private static checkStatics(next: ServeConfig, own: OwnAddresses): void {
    for (const s of next.statics) {
      const problem = own.problem(s.endpoint);
      if (problem === 'own_listener') throw new ConfigError(`--to ${s.endpoint.text} reaches one of our own listeners: that would loop`);
      if (problem === 'not_unicast' && !s.multicast) throw new ConfigError(`--to ${s.endpoint.text} is a broadcast or unspecified address`);
    }
  }

  /**
   * Applies a config. Everything that can fail (keys, signature dir, static
   * outputs, new sockets) is checked first; only then is the running state
   * swapped, so a failure leaves the previous config running untouched.
   */
  async apply(next: ServeConfig): Promise<void> {
    if (this.closed) throw new Error('repeater is closed');
    const own = new OwnAddresses(next.listeners.map((l) => l.endpoint));
    Repeater.checkStatics(next, own);
    const signatures = this.hooks.signatures?.(next) ?? null;
    const sealed = this.hooks.sealed?.(next) ?? null;
    if (sealed === null && (next.listeners.some((l) => l.sealed) || next.statics.some((s) => s.sealed))) {
      throw new ConfigError('sealed listeners and outputs need --key-file');
    }
    // Read before anything is swapped: a schedule file we cannot trust refuses the config.
    const savedTickets = next.tickets !== null && this.ticketService === null ? (this.hooks.ticketStore?.load() ?? []) : [];
    const first = this.config === undefined;
    if (first) this.fanout = createFanout(this.backend, { sendBuffer: next.sendBuffer, sendQueue: next.limits.sendQueue });
    else if (next.sendBuffer !== this.config.sendBuffer || next.limits.sendQueue !== this.config.limits.sendQueue) {
      this.log.warn('--send-buffer and --send-queue changes take effect at the next restart');
    }

    const opened: Route[] = [];
    const kept = new Set<string>();
    try {
      for (const lc of next.listeners) {
        if (this.routes.has(lc.endpoint.text)) {
          kept.add(lc.endpoint.text);
          continue;
        }
        // The channel is set when the config is swapped in; until then its datagrams are ignored.
        const route = { config: lc } as Route;
        route.listener = await openListener(
          this.backend,
          lc.endpoint,
          {
            recvBuffer: next.recvBuffer,
            multicastInterface: next.multicastInterface,
            onTruncated: () => {
              if (route.channel !== undefined) route.channel.stats.dropped[DropSlot.too_large]++;
            },
          },
          (msg, from) => this.onDatagram(route, msg, from),
        );
        route.listener.onError((err) => {
          this.socketErrors++;
          this.log.throttle('warn', `listener:${lc.endpoint.text}`, 'listener socket error', { address: lc.endpoint.text, error: err.message });
        });
        opened.push(route);
      }
    } catch (err) {
      for (const r of opened) await r.listener.close();
      sealed?.dispose();
      throw err;
    }

    // Nothing below can fail: swap in the new state.
    this.config = next;
    this.acl = new AccessList(next.allow);
    this.dedup = new ContentWindow(next.dedupWindowMs);
    this.limiter.configure(next.limits.subscribeRate, next.limits.subscribeBurst);
    if (this.seal !== sealed) this.seal?.dispose();
    this.seal = sealed;
    const deskDeps = {
      acl: this.acl,
      limiter: this.limiter,
      log: this.log,
      own,
      signatures,
      channels: () => this.channels.values(),
      warm: this.warm,
    };
    if (this.desk === undefined) this.desk = new SubscriptionDesk(deskDeps);
    else this.desk.configure(deskDeps);

    const chOpts: ChannelOptions = {
      maxSubscribers: next.limits.maxSubscribers,
      toleranceMs: next.toleranceMs,
      deadAfter: next.limits.deadAfter,
      deadRetryMs: next.limits.deadRetryMs,
      multicastTtl: next.multicastTtl,
      multicastInterface: next.multicastInterface,
    };
    const wanted = new Map<string, string | null>();
    for (const l of next.listeners) wanted.set(l.channel, l.key);
    for (const [name, key] of wanted) {
      const ch = this.channels.get(name);
      if (ch !== undefined) ch.configure(key, chOpts);
      else {
        const created = new Channel(name, key, chOpts, this.fanout!, this.events);
        this.channels.set(name, created);
        this.observe(created);
      }
    }
    for (const [name, ch] of this.channels) {
      if (wanted.has(name)) continue;
      this.log.info('channel removed', { channel: name, subscribers: ch.size });
      ch.close();
      this.channels.delete(name);
    }

    for (const [address, route] of this.routes) {
      if (kept.has(address)) continue;
      void route.listener.close();
      this.routes.delete(address);
      this.log.info('listener closed', { address });
    }
    for (const lc of next.listeners) {
      const existing = this.routes.get(lc.endpoint.text);
      const route = existing ?? opened.find((r) => r.config === lc)!;
      route.config = lc;
      route.channel = this.channels.get(lc.channel)!;
      if (existing === undefined) {
        this.routes.set(lc.endpoint.text, route);
        const recvBuffer = route.listener.recvBuffer;
        this.log.info('listening', { address: lc.endpoint.text, bound: route.listener.bound, channel: lc.channel, sealed: lc.sealed, backend: this.backend, recvBuffer });
        // Linux reports twice the size it was asked for; less than that means rmem_max capped it.
        if (next.recvBuffer > 0 && recvBuffer < next.recvBuffer) {
          this.log.warn('receive buffer smaller than asked: raise net.core.rmem_max', { address: lc.endpoint.text, asked: next.recvBuffer, got: recvBuffer });
        }
      }
    }

    for (const ch of this.channels.values()) {
      ch.tickets = next.tickets !== null && next.listeners.some((l) => l.tickets && l.channel === ch.name);
      ch.sealer = sealed;
    }
    this.applyTickets(next, savedTickets);
    this.applyStatics(next);
    this.evictInvalid();
    this.warm.configure(next.warm, this.fanout!);
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(Date.now()), Math.min(1000, Math.max(50, next.toleranceMs / 4)));
    }
    if (!first) this.log.info('config applied', { listeners: next.listeners.length, channels: this.channels.size });
  }

  private applyTickets(next: ServeConfig, saved: readonly TicketKey[]): void {
    if (next.tickets === null) {
      if (this.ticketService !== null) this.log.info('ticket keys no longer distributed (no listener has tickets); the saved schedule is kept on disk');
      this.ticketService?.close();
      this.ticketService = null;
      return;
    }
    if (this.ticketService !== null) {
      this.ticketService.configure(next.tickets);
      return;
    }
    this.ticketService = new TicketService(next.tickets, { channels: () => this.channels.values(), seal: () => this.seal, store: this.hooks.ticketStore ?? null, log: this.log });
    if (this.cluster !== null) this.cluster.attachTickets(this.ticketService);
    this.ticketService.start(saved);
  }

  private applyStatics(next: ServeConfig): void {
    for (const ch of this.channels.values()) {
      const want = next.statics.filter((s) => s.channel === null || s.channel === ch.name);
      const wantKey = new Set(want.map((s) => `${s.endpoint.text}/${s.sealed ? 'sealed' : 'plain'}/${s.ttl}`));
      for (const r of [ch.plain, ch.sealed]) {
        r.removeWhere((e) => e.isStatic && !wantKey.has(`${e.endpoint.text}/${e.form}/${ch.staticTtl.get(e.endpoint.text) ?? next.multicastTtl}`));
      }
      ch.staticTtl.clear();
      for (const s of want) ch.staticTtl.set(s.endpoint.text, s.ttl);
    }
    this.ensureStatics();
  }

  /**
   * Adds every configured static output that is missing: at apply time, and
   * again on each sweep for those whose outlet could not be opened or was
   * evicted (no free port, too many open files).
   */
  private ensureStatics(): void {
    const now = Date.now();
    for (const ch of this.channels.values()) {
      for (const s of this.config.statics) {
        if (s.channel !== null && s.channel !== ch.name) continue;
        const registry = ch.registry(s.sealed ? 'sealed' : 'plain');
        const e = registry.get(s.endpoint.text);
        if (e !== undefined && e.isStatic) continue;
        try {
          registry.addStatic(s.endpoint, now, s.sealed ? (s.key ?? ch.key ?? ch.name) : '');
        } catch (err) {
          this.log.throttle('error', `static:${s.endpoint.text}`, 'cannot open a socket for a static output; retrying', { channel: ch.name, address: s.endpoint.text, error: describe(err) }, 60_000);
        }
      }
    }
  }

  /** After a reload, dynamic subscribers the new config would refuse go (allow-list, own listeners). */
  private evictInvalid(): void {
    for (const ch of this.channels.values()) {
      for (const r of [ch.plain, ch.sealed]) {
        const gone = r.removeWhere((e) => !e.isStatic && typeof this.desk.vetAddress(e.endpoint.text) === 'string');
        for (const e of gone) {
          ch.stats.events[EventSlot.evict]++;
          this.log.info('subscriber evicted: the new config refuses its address', { channel: ch.name, address: e.endpoint.text, reason: this.desk.vetAddress(e.endpoint.text) });
        }
      }
    }
  }

  sweep(now: number): void {
    this.ensureStatics();
    for (const ch of this.channels.values()) {
      for (const r of [ch.plain, ch.sealed]) {
        for (const e of r.resumeDue(now)) {
          ch.stats.events[EventSlot.resume]++;
          this.log.info('subscriber resumed', { channel: ch.name, address: e.endpoint.text, form: e.form });
        }
        for (const e of r.sweep(now)) {
          ch.stats.events[EventSlot.expire]++;
          this.log.info('subscriber expired', { channel: ch.name, address: e.endpoint.text, key: e.key, form: e.form, lastSeen: new Date(e.lastSeen).toISOString() });
        }
      }
    }
    this.limiter.sweep(now);
  }

  /**
   * Last line of defence: a datagram that makes the code throw (a bug) is
   * dropped, counted and logged with its stack; it must not take the
   * process, and every other node's sync, down with it.
   */
  private onDatagram(route: Route, msg: Buffer, from: Source): void {
    // A listener opened by an apply still in progress has no channel yet:
    // until the new config is swapped in, its datagrams are not ours to judge.
    if (route.channel === undefined || this.closed) return;
    try {
      this.handle(route, msg, from);
    } catch (err) {
      route.channel.stats.dropped[DropSlot.internal_error]++;
      this.log.throttle('error', 'internal-error', 'internal error handling a datagram; dropped', {
        error: (err as Error).message,
        stack: (err as Error).stack,
        listener: route.config.endpoint.text,
      });
    }
  }

  private handle(route: Route, msg: Buffer, from: Source): void {
    const t0 = performance.now();
    const ch = route.channel;
    const st = ch.stats;
    st.bytesReceived += msg.length;
    const sealed = route.config.sealed;
    const kind = sealed ? KindSlot.sealed : peekKind(msg);
    st.received[kind]++;
    if (msg.length > this.config.limits.maxDatagram) {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    if (!this.acl.allows(from.address)) {
      st.dropped[DropSlot.not_allowed]++;
      this.hints.notAllowed.note(from.address, route.config.endpoint.text);
      return;
    }
    if (sealed) {
      const env = this.seal!.open(ch, msg, ListenerName.of(route.config, route.listener));
      if (typeof env !== 'string') this.onEnvelope(ch, env, from, t0);
      else this.hints.unopened(msg, env, from.address, route.config.endpoint.text);
      return;
    }
    if (kind === KindSlot.set || kind === KindSlot.delete) {
      this.acceptCache(ch, msg, route.listener.stable, null, t0);
      return;
    }
    if (kind === KindSlot.subscribe || kind === KindSlot.unsubscribe) {
      const now = Date.now();
      const known = this.desk.knownSource(from.address);
      if (!known && !this.desk.admitStranger(ch, from.address, now)) return;
      const sub = decodeSubscription(msg);
      if (typeof sub !== 'string') {
        this.desk.applyPlain(ch, sub, from.address, now, known, route.config.warmAnySource);
        return;
      }
      if (!this.config.forwardUnknown) {
        st.dropped[DropSlot[sub]]++;
        return;
      }
    }
    if (this.config.forwardUnknown) {
      this.forwardOpaque(ch, msg, route.listener.stable, null, t0);
      return;
    }
    const bad = checkHeader(msg);
    st.dropped[bad === undefined ? DropSlot.unknown_type : DropSlot[bad]]++;
    this.hints.unknownOnPlain(msg, from.address, route.config.endpoint.text);
  }

  private onEnvelope(ch: Channel, env: Envelope, from: Source, t0: number): void {
    if (ch.key !== null && env.channelKey !== ch.key) {
      if (env.kind === EnvelopeKind.CacheDatagram) ch.stats.dropped[DropSlot.key_mismatch]++;
      else this.desk.refuse(ch, 'key_mismatch', from.address);
      return;
    }
    if (env.kind === EnvelopeKind.CacheDatagram) {
      this.acceptCache(ch, env.datagram!, true, { trace: env.trace, origin: env.origin, fromBus: false, ingress: OWN_INGRESS }, t0);
      return;
    }
    if (env.kind !== EnvelopeKind.Subscribe && env.kind !== EnvelopeKind.Unsubscribe) {
      ch.stats.dropped[DropSlot.bad_payload]++;
      return;
    }
    const sub: Subscription = {
      unsubscribe: env.kind === EnvelopeKind.Unsubscribe,
      key: env.channelKey,
      address: env.address!,
      modifier1: 0,
      modifier2: 0,
      cores: 0,
      load: 0,
      weight: 0,
      unix: null,
      sign: null,
      signed: null,
    };
    const refused = this.desk.apply(ch, sub, 'sealed', from.address, Date.now(), env.origin);
    if (refused !== null || sub.unsubscribe) return;
    const ep = this.desk.vetAddress(sub.address);
    const e = typeof ep === 'string' ? undefined : ch.sealed.get(ep.text);
    // An agent that names its frame's receiver knows MEMBERSHIP frames: it learns from which of our sequences it is a member.
    if (e !== undefined && env.receiver.length > 0) ch.confirmMember(e);
    // Every subscribe and refresh of a ticket channel gets the schedule: UDP may have lost the last one.
    if (e !== undefined && ch.tickets && this.ticketService !== null) this.ticketService.send(ch, e);
  }

  /**
   * A cache update: plain (its trace, if any, in its bytes), or opened from a
   * frame or taken off the bus (`given`: its trace and origin; the bytes must
   * carry no trace). What came off the bus is never published again.
   * `held`: a replay of one the cluster held (never held twice).
   */
  private acceptCache(ch: Channel, buf: Buffer, stable: boolean, given: Arrival | null, t0: number, held = false): void {
    if (this.cluster !== null && given?.fromBus !== true && !held && !this.cluster.ownArrival(ch, buf, (copy) => this.acceptCache(ch, copy, true, given, performance.now(), true))) return;
    const st = ch.stats;
    const s = this.shape;
    const bad = inspectCacheUpdate(buf, s);
    if (bad !== undefined || (given !== null && s.traceAt >= 0)) {
      if (this.config.forwardUnknown) this.forwardOpaque(ch, buf, stable, given, t0);
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
    // Cluster mode: the same update may come in through another repeater too (node=R1;R2): copies are paired per ingress.
    if (this.recent !== null && !this.recent.admit(this.recent.hasher.hash(buf, 6, 6 + buf.readUInt16LE(4)), this.recent.hasher.hash(buf, 3, s.contentEnd), given?.ingress ?? OWN_INGRESS, Date.now())) {
      st.dropped[DropSlot.duplicate]++;
      this.clusterDuplicates++;
      return;
    }
    let next: TraceFields;
    if (arrived !== null) {
      const v = this.loops.pass(arrived);
      if (typeof v === 'string') {
        st.dropped[DropSlot[v]]++;
        return;
      }
      next = v;
    } else next = this.loops.stamp();
    // An unpadded delete forwarded unrepaired cannot carry a trace (uWSGI would
    // apply it), nor can a datagram with no room left to grow: their plain
    // copies go as they came, and the content window stops them coming round.
    const repair = this.config.repairDeletes;
    let traced = canCarryTrace(s, repair);
    let plainOut = forwardForm(buf, s, repair, traced ? next : null, this.outLimit);
    if (plainOut === 'too_large' && traced && arrived === null) {
      traced = false;
      plainOut = forwardForm(buf, s, repair, null, this.outLimit);
    }
    if (plainOut === 'too_large') {
      st.dropped[DropSlot.too_large]++;
      return;
    }
    if (!traced && !this.dedup.admit(buf.subarray(0, s.contentEnd), Date.now())) {
      st.dropped[DropSlot.duplicate]++;
      return;
    }
    this.warm.learn(ch, buf, s);
    const content = this.seal === null && this.cluster === null ? null : contentOf(buf, s);
    const sealing = this.seal === null ? null : { content: content!, trace: next };
    const sent = ch.forward(plainOut, stable || plainOut !== buf, this.seal, sealing, given?.origin ?? null);
    if (sent > 0) this.fanoutTime.observe((performance.now() - t0) / 1000);
    if (this.cluster !== null && given?.fromBus !== true) this.cluster.publish(ch, content!, stable || content !== buf, next, given?.origin ?? null, false);
  }

  /** --forward-unknown: any datagram, byte for byte; loops stopped by the content window. */
  private forwardOpaque(ch: Channel, buf: Buffer, stable: boolean, given: Arrival | null, t0: number, held = false): void {
    if (this.cluster !== null && given?.fromBus !== true && !held && !this.cluster.ownArrival(ch, buf, (copy) => this.forwardOpaque(ch, copy, true, given, performance.now(), true))) return;
    const now = Date.now();
    if (!this.dedup.admit(buf, now)) {
      ch.stats.dropped[DropSlot.duplicate]++;
      return;
    }
    if (this.recent !== null && !this.recent.admit(this.recent.hasher.hash(buf), 0, given?.ingress ?? OWN_INGRESS, now)) {
      ch.stats.dropped[DropSlot.duplicate]++;
      this.clusterDuplicates++;
      return;
    }
    const sealing = this.seal === null ? null : { content: buf, trace: null };
    const sent = ch.forward(buf, stable, this.seal, sealing, given?.origin ?? null);
    if (sent > 0) this.fanoutTime.observe((performance.now() - t0) / 1000);
    if (this.cluster !== null && given?.fromBus !== true) this.cluster.publish(ch, buf, stable, null, given?.origin ?? null, true);
  }

  /**
   * Cluster mode: a datagram the repeater `sender` accepted, for the
   * subscribers this one serves. Returns why it was dropped, or null.
   */
  acceptFromBus(channel: string, datagram: Buffer, trace: TraceFields | null, origin: bigint | null, opaque: boolean, sender: bigint): string | null {
    const ch = this.channels.get(channel);
    if (ch === undefined || this.closed) return 'no such channel';
    const t0 = performance.now();
    const arrival: Arrival = { trace, origin, fromBus: true, ingress: sender };
    if (opaque) {
      if (!this.config.forwardUnknown) return 'opaque datagrams are not forwarded here';
      this.forwardOpaque(ch, datagram, true, arrival, t0);
    } else this.acceptCache(ch, datagram, true, arrival, t0);
    return null;
  }

  /**
   * Cluster mode: from now on every accepted datagram is offered to `port`
   * (to be published), every registry change is reported to it, and the
   * copies of an update that came in through two ingresses within
   * `memoryMs` are delivered once (judge/copies.ts).
   */
  attachCluster(port: ClusterPort, memoryMs: number): void {
    this.cluster = port;
    this.recent = new CopyMemory(memoryMs);
    if (this.ticketService !== null) port.attachTickets(this.ticketService);
    for (const ch of this.channels.values()) this.observe(ch);
  }

  private observe(ch: Channel): void {
    const port = this.cluster;
    if (port === null) return;
    for (const r of [ch.plain, ch.sealed]) r.observer = (e, change) => port.entryChanged(ch, e, change);
  }

  /** Cluster mode: recomputes which subscribers this repeater serves; returns those that moved. */
  reassign(owns: (ch: Channel, e: Subscriber) => boolean): { gained: Subscriber[]; lost: Subscriber[] } {
    const gained: Subscriber[] = [];
    const lost: Subscriber[] = [];
    for (const ch of this.channels.values()) {
      for (const r of [ch.plain, ch.sealed]) {
        let moved = false;
        for (const e of r.values()) {
          const mine = owns(ch, e);
          if (mine === e.owned) continue;
          e.owned = mine;
          (mine ? gained : lost).push(e);
          moved = true;
        }
        if (moved) r.touch();
      }
    }
    return { gained, lost };
  }

  /**
   * Puts one saved subscriber back, after the same checks a live
   * subscription passes, plus range checks on every field (the file may be
   * old, foreign or crafted). Returns null when restored, else why not.
   */
  restore(s: SavedSubscriber, now: number): string | null {
    const ch = this.channels.get(s.channel);
    if (ch === undefined) return 'no such channel';
    const form = s.sealed ? 'sealed' : 'plain';
    if (form === 'sealed' && (this.seal === null || s.origin === 0n)) return 'sealed without keys or origin';
    if (s.key.length === 0 || s.key.length > 255 || (ch.key !== null && s.key !== ch.key)) return 'key_mismatch';
    const ep: Endpoint | DropReason = this.desk.vetAddress(s.address);
    if (typeof ep === 'string') return ep;
    if (form === 'plain' && [...this.channels.values()].some((c) => c.sealed.get(ep.text) !== undefined)) return 'form_conflict';
    const ok = (t: number) => Number.isSafeInteger(t) && t > 0 && t <= now + FUTURE_SLACK_MS;
    if (!ok(s.firstSeenMs) || !ok(s.lastSeenMs) || s.firstSeenMs > s.lastSeenMs) return 'bad timestamps';
    if (!Number.isSafeInteger(s.deadlineMs) || s.deadlineMs <= now) return 'expired';
    // No subscriber outlives one tolerance without announcing, whatever the file says.
    const deadline = Math.min(s.deadlineMs, now + this.config.toleranceMs);
    try {
      const e = ch.registry(form).restore({ endpoint: ep, key: s.key, source: s.source, origin: form === 'sealed' ? s.origin : null }, s.firstSeenMs, s.lastSeenMs, deadline);
      return e === null ? 'taken or full' : null;
    } catch (err) {
      return `no socket (${describe(err)})`;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.warm.close();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.ticketService?.close();
    this.ticketService = null;
    const closing = [...this.routes.values()].map((r) => r.listener.close());
    this.routes.clear();
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
    this.seal?.dispose();
    this.seal = null;
    await Promise.all(closing);
    await this.fanout?.close();
  }
}

// The repeater: the config applier around the datagram path (path/). It
// opens and closes the listeners, keeps the channels and their registries,
// the subscription desk, the warm-join scheduler and the ticket keys, and at
// every apply hands the path one frozen configuration (path/path-config.ts).
// A config that cannot be applied leaves the running one intact: everything
// that can fail (keys, signature dir, static outputs, new sockets) is
// checked first; only then is anything swapped.
//
// What a datagram goes through is the path's business (docs/ARCHITECTURE.md,
// "The path of one datagram"); subscriptions come back up through the
// control door (control.ts) to the desk; nothing is ever answered.

import { describe, ConfigError } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { type DropReason, EventSlot, type FastHistogram } from '../base/stats.js';
import type { ServeConfig } from '../config/serve-config.js';
import { AccessList } from '../judge/access-list.js';
import type { LoopGuard } from '../judge/loop-guard.js';
import { type Backend, createFanout, DEFAULT_BACKEND, type Fanout } from '../net/io.js';
import { OwnAddresses } from '../net/local.js';
import { Channel, type ChannelEvents, type ChannelOptions, type Subscriber } from '../path/channel.js';
import type { DataSeal } from '../path/data-seal.js';
import type { LinkDoor } from '../path/link-door.js';
import { DatagramPath } from '../path/datagram-path.js';
import type { DropHints } from '../path/drop-hints.js';
import { freezePathConfig } from '../path/path-config.js';
import type { Endpoint } from '../wire/address.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import type { SavedSubscriber } from '../wire/registry-file.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { ClusterPort } from './cluster-port.js';
import { SubscriptionControl } from './control.js';
import { type Listening, Listeners } from './listeners.js';
import { RateLimiter } from './ratelimit.js';
import { applyStatics, checkStatics, ensureStatics } from './statics.js';
import { type SignatureCheck, SubscriptionDesk } from './subscriptions.js';
import { type TicketPersistence, TicketService } from './ticket-service.js';
import { WarmJoins } from './warm-join.js';

export interface RepeaterHooks {
  /** Builds the data seal for a config (loads keys); throws to refuse the config. */
  sealed?: (config: ServeConfig) => DataSeal | null;
  /** Identity mode: the process's one link door with the config's peers staged (loads them); throws to refuse the config. */
  links?: (config: ServeConfig) => LinkDoor | null;
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
  readonly backend: Backend;
  /** The datagram path: judges, keeps the live state, builds, seals and sends every output. */
  readonly path: DatagramPath;
  /** Warm joins of new subscribers (warm-join.ts): a scheduler that asks the path to deliver. */
  readonly warm: WarmJoins;
  /** Listener socket errors and outlet errors, all channels. */
  socketErrors = 0;

  private config!: ServeConfig;
  private readonly fanout: Fanout;
  private readonly channelMap = new Map<string, Channel>();
  private acl!: AccessList;
  private readonly limiter = new RateLimiter(1, 1);
  private desk!: SubscriptionDesk;
  private seal: DataSeal | null = null;
  private readonly listening: Listeners;
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly events: ChannelEvents;
  /** Cluster mode only. */
  private cluster: ClusterPort | null = null;
  private ticketService: TicketService | null = null;

  private constructor(
    readonly log: Logger,
    private readonly hooks: RepeaterHooks,
    first: ServeConfig,
  ) {
    this.backend = hooks.backend ?? DEFAULT_BACKEND;
    this.fanout = createFanout(this.backend, { sendBuffer: first.sendBuffer, sendQueue: first.limits.sendQueue });
    this.path = new DatagramPath(
      this.fanout,
      log,
      new SubscriptionControl(
        () => this.desk,
        () => this.ticketService,
      ),
    );
    const path = this.path;
    this.listening = new Listeners(this.backend, path, log, () => this.socketErrors++);
    this.warm = new WarmJoins({ channels: this.channelMap, log, out: path.out, live: path.live });
    path.live.watch = this.warm;
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

  static async start(config: ServeConfig, log: Logger, hooks: RepeaterHooks = {}): Promise<Repeater> {
    const r = new Repeater(log, hooks, config);
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

  get current(): ServeConfig {
    return this.config;
  }

  /** The running limits (they change on reload). */
  get limits(): ServeConfig['limits'] {
    return this.config.limits;
  }

  /** The channels, by name. */
  get channels(): ReadonlyMap<string, Channel> {
    return this.channelMap;
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

  /** The path's loop guard (its traces). */
  get loops(): LoopGuard {
    return this.path.loops;
  }

  /** Likely misconfigurations seen in dropped datagrams. */
  get hints(): DropHints {
    return this.path.hints;
  }

  /** Receive to send, per datagram forwarded. */
  get fanoutTime(): FastHistogram {
    return this.path.fanoutTime;
  }

  /** Cluster mode: updates delivered once though they came in through two repeaters. */
  get clusterDuplicates(): number {
    return this.path.clusterDuplicates;
  }

  /** Each listener: configured and bound address, channel, form, receive buffer. */
  listeners(): Array<{ address: string; bound: string; channel: string; sealed: boolean; recvBuffer: number }> {
    return this.listening.describe();
  }

  /** Each listener's address and socket, for kernel statistics. */
  listenerSockets(): Array<{ address: string; fd: number | null }> {
    return this.listening.sockets();
  }

  /** Port actually bound for a configured listener address. */
  portOf(address: string): number {
    return this.listening.portOf(address);
  }

  /**
   * Applies a config. Everything that can fail is checked first; only then
   * is the running state swapped, so a failure leaves the previous config
   * running untouched.
   */
  async apply(next: ServeConfig): Promise<void> {
    if (this.closed) throw new Error('repeater is closed');
    const own = new OwnAddresses(next.listeners.map((l) => l.endpoint));
    checkStatics(next, own);
    const signatures = this.hooks.signatures?.(next) ?? null;
    const sealed = this.hooks.sealed?.(next) ?? null;
    const links = this.hooks.links?.(next) ?? null;
    if (sealed === null && links === null && (next.listeners.some((l) => l.sealed) || next.statics.some((s) => s.sealed))) {
      throw new ConfigError('sealed listeners and outputs need --key-file');
    }
    // Read before anything is swapped: a schedule file we cannot trust refuses the config.
    const savedTickets = next.tickets !== null && this.ticketService === null ? (this.hooks.ticketStore?.load() ?? []) : [];
    const first = this.config === undefined;
    if (!first && (next.sendBuffer !== this.config.sendBuffer || next.limits.sendQueue !== this.config.limits.sendQueue)) {
      this.log.warn('--send-buffer and --send-queue changes take effect at the next restart');
    }
    let opened: Listening[];
    try {
      opened = await this.listening.openNew(next);
    } catch (err) {
      sealed?.dispose();
      throw err;
    }

    // Nothing below can fail: swap in the new state.
    this.config = next;
    this.acl = new AccessList(next.allow);
    this.limiter.configure(next.limits.subscribeRate, next.limits.subscribeBurst);
    if (this.seal !== sealed) this.seal?.dispose();
    this.seal = sealed;
    const deskDeps = { acl: this.acl, limiter: this.limiter, log: this.log, own, signatures, channels: () => this.channelMap.values(), warm: this.warm, identities: links };
    if (this.desk === undefined) this.desk = new SubscriptionDesk(deskDeps);
    else this.desk.configure(deskDeps);
    this.applyChannels(next);
    this.listening.swap(next, opened);
    for (const ch of this.channelMap.values()) ch.tickets = next.tickets !== null && next.listeners.some((l) => l.tickets && l.channel === ch.name);
    this.path.configure(
      freezePathConfig({
        maxDatagram: next.limits.maxDatagram,
        outLimit: this.outLimit,
        forwardUnknown: next.forwardUnknown,
        repairDeletes: next.repairDeletes,
        acl: this.acl,
        seal: sealed,
        links,
        dedupWindowMs: next.dedupWindowMs,
        routes: this.listening.routes(this.channelMap),
        channels: this.channelMap.values(),
        live: { enabled: next.warm.enabled, maxBytes: next.warm.maxBytes },
      }),
    );
    // A revocation replaced the group keys: every remaining member gets its new one now.
    if ((links?.commit(this.channelMap.values()).length ?? 0) > 0) this.path.inBatch(() => this.path.out.groupKeys(this.channelMap.values()));
    this.applyTickets(next, savedTickets);
    applyStatics(next, this.channelMap.values(), this.log);
    this.evictInvalid();
    this.warm.configure(next.warm, this.fanout);
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(Date.now()), Math.min(1000, Math.max(50, next.toleranceMs / 4)));
    }
    if (!first) this.log.info('config applied', { listeners: next.listeners.length, channels: this.channelMap.size });
  }

  /** Creates the channels `next` names, configures the kept ones, closes the others. */
  private applyChannels(next: ServeConfig): void {
    const opts: ChannelOptions = {
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
      const ch = this.channelMap.get(name);
      if (ch !== undefined) ch.configure(key, opts);
      else {
        const created = new Channel(name, key, opts, this.fanout, this.events);
        this.channelMap.set(name, created);
        this.observe(created);
      }
    }
    for (const [name, ch] of this.channelMap) {
      if (wanted.has(name)) continue;
      this.log.info('channel removed', { channel: name, subscribers: ch.size });
      ch.close();
      this.channelMap.delete(name);
    }
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
    const out = this.path.out;
    this.ticketService = new TicketService(next.tickets, { channels: () => this.channelMap.values(), send: (ch, keys, e) => out.tickets(ch, keys, e), store: this.hooks.ticketStore ?? null, log: this.log });
    if (this.cluster !== null) this.cluster.attachTickets(this.ticketService);
    this.ticketService.start(saved);
  }

  /** After a reload, dynamic subscribers the new config would refuse go (allow-list, own listeners). */
  private evictInvalid(): void {
    for (const ch of this.channelMap.values()) {
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
    ensureStatics(this.config, this.channelMap.values(), this.log);
    this.path.config.links?.expire(now);
    for (const ch of this.channelMap.values()) {
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
   * Cluster mode: from now on the path offers every accepted datagram to
   * `port` (to be published), every registry change is reported to it, and
   * the copies of an update that came in through two ingresses within
   * `memoryMs` are delivered once (judge/copies.ts).
   */
  attachCluster(port: ClusterPort, memoryMs: number): void {
    this.cluster = port;
    this.path.attachBus(port, memoryMs);
    if (this.ticketService !== null) port.attachTickets(this.ticketService);
    for (const ch of this.channelMap.values()) this.observe(ch);
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
    for (const ch of this.channelMap.values()) {
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
    const ch = this.channelMap.get(s.channel);
    if (ch === undefined) return 'no such channel';
    const form = s.sealed ? 'sealed' : 'plain';
    if (form === 'sealed' && (this.seal === null || s.origin === 0n)) return 'sealed without keys or origin';
    if (s.key.length === 0 || s.key.length > 255 || (ch.key !== null && s.key !== ch.key)) return 'key_mismatch';
    const ep: Endpoint | DropReason = this.desk.vetAddress(s.address);
    if (typeof ep === 'string') return ep;
    if (form === 'plain' && [...this.channelMap.values()].some((c) => c.sealed.get(ep.text) !== undefined)) return 'form_conflict';
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
    const closing = this.listening.close();
    this.path.close();
    for (const ch of this.channelMap.values()) ch.close();
    this.channelMap.clear();
    this.seal?.dispose();
    this.seal = null;
    await closing;
    await this.fanout.close();
  }
}

// The repeater: listeners feed channels, channels fan out to subscribers.
// Owns the datagram path and applies configs (first start and reloads)
// atomically: a config that cannot be applied leaves the running one intact.

import type { RemoteInfo } from 'node:dgram';
import type { Logger } from '../base/log.js';
import type { ListenerConfig, ServeConfig } from '../config/serve-config.js';
import { prepareCacheUpdate } from '../wire/cache.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { decodeSubscription } from '../wire/subscription.js';
import { checkHeader, MODIFIER1_CACHE, MODIFIER1_SUBSCRIPTION } from '../wire/uwsgi.js';
import { AccessList } from './acl.js';
import { Channel, type ChannelOptions, type FrameSealer } from './channel.js';
import { type DatagramListener, openListener } from '../net/dgram-listener.js';
import type { OutputSocket } from '../net/dgram-outlet.js';
import { RateLimiter } from './ratelimit.js';
import { D, E, FANOUT_BUCKETS, FastHistogram, K } from '../base/stats.js';
import { OwnAddresses, type SignatureCheck, SubscriptionDesk } from './subscriptions.js';

/** A listener's current place in the config; mutated in place on reload. */
interface Route {
  config: ListenerConfig;
  channel: Channel;
  readonly listener: DatagramListener;
  /** False when datagrams are views into a native receive arena. */
  readonly stable: boolean;
}

/** Secure mode as the repeater sees it: built per config by a hook. */
export interface SealedPath extends FrameSealer {
  /** Handles one datagram that arrived on a sealed listener. */
  onDatagram(ch: Channel, msg: Buffer, rinfo: RemoteInfo, t0: number): void;
  /** Releases the key ring once this path is no longer used. */
  dispose(): void;
  /** Ids of the keys in the ring, sealing key first. */
  keyIds(): string[];
}

export interface RepeaterHooks {
  /** Builds the sealed path for a config (loads keys); throws to refuse the config. */
  sealed?: (config: ServeConfig, repeater: Repeater) => SealedPath | null;
  /** Builds the uWSGI signature checker for a config; throws to refuse it. */
  signatures?: (config: ServeConfig) => SignatureCheck | null;
}

/** Peeks at the header only: what arrived, for the received{kind} counters. */
export function peekKind(msg: Buffer): number {
  if (msg.length >= 4) {
    const m1 = msg[0];
    const m2 = msg[3];
    if (m1 === MODIFIER1_CACHE) {
      if (m2 === 10) return K.set;
      if (m2 === 11) return K.delete;
    } else if (m1 === MODIFIER1_SUBSCRIPTION) {
      if (m2 === 0) return K.subscribe;
      if (m2 === 1) return K.unsubscribe;
    }
  }
  return K.other;
}

export class Repeater {
  readonly fanout = new FastHistogram(FANOUT_BUCKETS);
  readonly channels = new Map<string, Channel>();
  /** Listener socket errors and outlet ICMP errors, all channels. */
  socketErrors = 0;

  private config!: ServeConfig;
  private acl!: AccessList;
  private readonly limiter = new RateLimiter(1, 1);
  private desk!: SubscriptionDesk;
  private sealed: SealedPath | null = null;
  private readonly routes = new Map<string, Route>();
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    readonly log: Logger,
    private readonly hooks: RepeaterHooks = {},
  ) {}

  get current(): ServeConfig {
    return this.config;
  }

  /** No output may be larger than this (a repaired delete grows by 2 bytes). */
  get outLimit(): number {
    return Math.min(this.config.limits.maxDatagram, MAX_UDP_PAYLOAD);
  }

  get sealedPath(): SealedPath | null {
    return this.sealed;
  }

  /** Bound address of each listener, by configured address. */
  listeners(): Array<{ address: string; bound: string; channel: string; sealed: boolean }> {
    return [...this.routes.values()].map((r) => ({
      address: r.config.endpoint.text,
      bound: r.listener.bound,
      channel: r.channel.name,
      sealed: r.config.sealed,
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
    await r.apply(config);
    return r;
  }

  /**
   * Applies a config. Everything that can fail (keys, signature dir, new
   * sockets) is prepared first; only then is the running state swapped, so a
   * failure leaves the previous config running untouched.
   */
  async apply(next: ServeConfig): Promise<void> {
    if (this.closed) throw new Error('repeater is closed');
    const signatures = this.hooks.signatures?.(next) ?? null;
    const sealed = this.hooks.sealed?.(next, this) ?? null;
    if (sealed === null && (next.listeners.some((l) => l.sealed) || next.statics.some((s) => s.sealed))) {
      throw new Error('sealed listeners and outputs need --key-file');
    }

    const opened: Route[] = [];
    const keptAddresses = new Set<string>();
    try {
      for (const lc of next.listeners) {
        if (this.routes.has(lc.endpoint.text)) {
          keptAddresses.add(lc.endpoint.text);
          continue;
        }
        const route = { config: lc } as Route;
        const { listener, stable } = await openListener(
          lc,
          { recvBuffer: next.recvBuffer, multicastInterface: next.multicastInterface },
          (msg, rinfo) => this.onDatagram(route, msg, rinfo),
        );
        Object.assign(route, { listener, stable });
        listener.onError((err) => {
          this.socketErrors++;
          this.log.throttle('warn', `listener:${lc.endpoint.text}`, 'listener socket error', { address: lc.endpoint.text, error: err.message });
        });
        opened.push(route);
      }
    } catch (err) {
      for (const r of opened) r.listener.close();
      sealed?.dispose();
      throw err;
    }

    // Nothing below can fail: swap in the new state.
    const first = this.config === undefined;
    this.config = next;
    this.acl = new AccessList(next.allow);
    this.limiter.configure(next.limits.subscribeRate, next.limits.subscribeBurst);
    if (this.sealed !== sealed) this.sealed?.dispose();
    this.sealed = sealed;
    const deskDeps = {
      acl: this.acl,
      limiter: this.limiter,
      log: this.log,
      own: new OwnAddresses(next.listeners.map((l) => l.endpoint)),
      signatures,
    };
    if (this.desk === undefined) this.desk = new SubscriptionDesk(deskDeps);
    else this.desk.configure(deskDeps);

    const chOpts: ChannelOptions = {
      maxSubscribers: next.limits.maxSubscribers,
      toleranceMs: next.toleranceMs,
      deadAfter: next.limits.deadAfter,
      deadRetryMs: next.limits.deadRetryMs,
      outlet: { sendQueue: next.limits.sendQueue, sendBuffer: next.sendBuffer },
      multicastTtl: next.multicastTtl,
      multicastInterface: next.multicastInterface,
    };
    const wanted = new Map<string, string | null>();
    for (const l of next.listeners) wanted.set(l.channel, l.key);
    for (const [name, key] of wanted) {
      const ch = this.channels.get(name);
      if (ch !== undefined) ch.configure(key, chOpts);
      else {
        this.channels.set(
          name,
          new Channel(
            name,
            key,
            chOpts,
            (o, err) => this.onOutletError(o, err),
            (c, e, event, why) => {
              if (event === 'suspend') {
                this.log.warn('subscriber suspended: unreachable', { channel: c.name, address: e.endpoint.text, strikes: e.strikes, error: why, until: new Date(e.suspendedUntil).toISOString() });
              } else {
                this.log.throttle('error', `evict:${e.endpoint.text}`, 'subscriber removed: its socket cannot connect', { channel: c.name, address: e.endpoint.text, error: why, static: e.isStatic });
              }
            },
          ),
        );
      }
    }
    for (const [name, ch] of this.channels) {
      if (wanted.has(name)) continue;
      this.log.info('channel removed', { channel: name, subscribers: ch.registry.size });
      ch.close();
      this.channels.delete(name);
    }

    for (const [address, route] of this.routes) {
      if (keptAddresses.has(address)) continue;
      route.listener.close();
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
        this.log.info('listening', { address: lc.endpoint.text, bound: route.listener.bound, channel: lc.channel, sealed: lc.sealed });
      }
    }

    this.applyStatics(next);
    this.evictDisallowed();
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(Date.now()), Math.min(1000, Math.max(50, next.toleranceMs / 4)));
    }
    if (!first) this.log.info('config applied', { listeners: next.listeners.length, channels: this.channels.size });
  }

  private applyStatics(next: ServeConfig): void {
    for (const ch of this.channels.values()) {
      const want = next.statics.filter((s) => s.channel === null || s.channel === ch.name);
      const wantKey = new Set(want.map((s) => `${s.endpoint.text}/${s.sealed ? 'sealed' : 'plain'}/${s.ttl}`));
      ch.registry.removeWhere((e) => e.isStatic && !wantKey.has(`${e.endpoint.text}/${e.form}/${ch.staticTtl.get(e.endpoint.text) ?? next.multicastTtl}`));
      ch.staticTtl.clear();
      for (const s of want) ch.staticTtl.set(s.endpoint.text, s.ttl);
    }
    this.ensureStatics();
  }

  /**
   * Adds every configured static output that is missing: at apply time, and
   * again on each sweep for those whose socket could not be opened or was
   * evicted (no free port, too many open files).
   */
  private ensureStatics(): void {
    const now = Date.now();
    for (const ch of this.channels.values()) {
      for (const s of this.config.statics) {
        if (s.channel !== null && s.channel !== ch.name) continue;
        const e = ch.registry.get(s.endpoint.text);
        if (e !== undefined && e.isStatic) continue;
        try {
          ch.registry.addStatic(s.endpoint, s.sealed ? 'sealed' : 'plain', now, s.sealed ? (s.key ?? ch.key ?? ch.name) : '');
        } catch (err) {
          this.log.throttle('error', `static:${s.endpoint.text}`, 'cannot open a socket for a static output; retrying', { channel: ch.name, address: s.endpoint.text, error: (err as Error).message }, 60_000);
        }
      }
    }
  }

  /** After a reload narrows the allow-list, subscribers outside it go. */
  private evictDisallowed(): void {
    for (const ch of this.channels.values()) {
      const gone = ch.registry.removeWhere((e) => !e.isStatic && !this.acl.allows(e.endpoint.host));
      for (const e of gone) {
        ch.stats.events[E.evict]++;
        this.log.info('subscriber evicted: address no longer allowed', { channel: ch.name, address: e.endpoint.text });
      }
    }
  }

  sweep(now: number): void {
    this.ensureStatics();
    for (const ch of this.channels.values()) {
      for (const e of ch.registry.resumeDue(now)) {
        ch.stats.events[E.resume]++;
        this.log.info('subscriber resumed', { channel: ch.name, address: e.endpoint.text });
      }
      for (const e of ch.registry.sweep(now)) {
        ch.stats.events[E.expire]++;
        this.log.info('subscriber expired', { channel: ch.name, address: e.endpoint.text, key: e.key, lastSeen: new Date(e.lastSeen).toISOString() });
      }
    }
    this.limiter.sweep(now);
  }

  private onOutletError(o: OutputSocket, err: NodeJS.ErrnoException): void {
    this.socketErrors++;
    this.log.throttle('warn', `outlet:${o.endpoint.text}`, 'subscriber unreachable', { address: o.endpoint.text, error: err.code ?? err.message });
  }

  /**
   * Last line of defence: a datagram that makes the code throw (a bug) is
   * dropped, counted and logged with its stack; it must not take the
   * process, and every other node's sync, down with it.
   */
  private onDatagram(route: Route, msg: Buffer, rinfo: RemoteInfo): void {
    // A listener opened by an apply still in progress has no channel yet:
    // until the new config is swapped in, its datagrams are not ours to judge.
    if (route.channel === undefined) return;
    try {
      this.handle(route, msg, rinfo);
    } catch (err) {
      route.channel.stats.dropped[D.internal_error]++;
      this.log.throttle('error', 'internal-error', 'internal error handling a datagram; dropped', {
        error: (err as Error).message,
        stack: (err as Error).stack,
        listener: route.config.endpoint.text,
      });
    }
  }

  private handle(route: Route, msg: Buffer, rinfo: RemoteInfo): void {
    const t0 = performance.now();
    const ch = route.channel;
    const st = ch.stats;
    st.bytesReceived += msg.length;
    if (route.config.sealed) {
      st.received[K.sealed]++;
      if (msg.length > this.config.limits.maxDatagram) st.dropped[D.too_large]++;
      else if (!this.acl.allows(rinfo.address)) st.dropped[D.not_allowed]++;
      else this.sealed!.onDatagram(ch, msg, rinfo, t0);
      return;
    }
    const kind = peekKind(msg);
    st.received[kind]++;
    if (msg.length > this.config.limits.maxDatagram) {
      st.dropped[D.too_large]++;
      return;
    }
    if (!this.acl.allows(rinfo.address)) {
      st.dropped[D.not_allowed]++;
      return;
    }
    if (kind === K.set || kind === K.delete) {
      const out = prepareCacheUpdate(msg, this.config.repairDeletes, this.outLimit);
      if (typeof out !== 'string') {
        this.forward(ch, msg, out, t0, null, route.stable || out !== msg);
        return;
      }
      if (!this.config.forwardUnknown || out === 'too_large') {
        st.dropped[D[out]]++;
        return;
      }
    } else if (kind === K.subscribe || kind === K.unsubscribe) {
      if (this.onSubscription(ch, msg, rinfo.address) || !this.config.forwardUnknown) return;
    }
    if (this.config.forwardUnknown) {
      this.forward(ch, msg, msg, t0, null, route.stable);
      return;
    }
    const bad = checkHeader(msg);
    st.dropped[bad === undefined ? D.unknown_type : D[bad]]++;
  }

  /**
   * Forwards an accepted datagram to every subscriber of `ch`: plain ones get
   * `plainOut` (repaired), sealed ones a frame of `original`.
   */
  forward(ch: Channel, original: Buffer, plainOut: Buffer, t0: number, origin: bigint | null = null, stable = true): void {
    if (ch.forward(plainOut, original, this.sealed, origin, stable) > 0) this.fanout.observe((performance.now() - t0) / 1000);
  }

  /**
   * Handles a plain subscription datagram. Returns false when it did not
   * decode (so --forward-unknown may pass it on as opaque data).
   */
  private onSubscription(ch: Channel, msg: Buffer, source: string): boolean {
    const now = Date.now();
    if (!this.limiter.allow(source, now)) {
      this.desk.refuse(ch, 'rate_limited', source);
      return true;
    }
    const sub = decodeSubscription(msg);
    if (typeof sub === 'string') {
      if (!this.config.forwardUnknown) ch.stats.dropped[D[sub]]++;
      return false;
    }
    this.desk.apply(ch, sub, 'plain', source, now);
    return true;
  }

  /** Entry point for the sealed path: a subscription opened from a valid frame. */
  get subscriptions(): SubscriptionDesk {
    return this.desk;
  }

  get rateLimiter(): RateLimiter {
    return this.limiter;
  }

  get access(): AccessList {
    return this.acl;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.sweeper !== null) clearInterval(this.sweeper);
    for (const r of this.routes.values()) r.listener.close();
    this.routes.clear();
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
    this.sealed?.dispose();
    this.sealed = null;
  }
}

// A channel: the subscribers that receive everything its listeners accept.
// The hot path iterates a flat array snapshot of outlets, rebuilt only when
// the registry changes, so subscription traffic never slows forwarding.

import { isMulticast, type Endpoint } from '../wire/address.js';
import { Outlet, type OutletErrorHandler, type OutletOptions } from './outlet.js';
import { type Entry, type Form, Registry } from './registry.js';
import { ChannelStats, D, E } from './stats.js';

/** Errors that say the subscriber's address does not take datagrams. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export type SuspendHandler = (ch: Channel, e: Entry<Outlet>) => void;

export interface ChannelOptions {
  readonly maxSubscribers: number;
  readonly toleranceMs: number;
  /** Unreachable errors after which a subscriber is suspended (0: never). */
  readonly deadAfter: number;
  /** How long a suspension lasts when no announce ends it first. */
  readonly deadRetryMs: number;
  readonly outlet: OutletOptions;
  readonly multicastTtl: number;
  readonly multicastInterface: string | null;
}

export type Subscriber = Entry<Outlet>;

/** Seals a datagram for the sealed subscribers of one channel key. */
export interface FrameSealer {
  sealDatagram(channelKey: string, datagram: Buffer): Buffer | null;
}

export class Channel {
  readonly stats = new ChannelStats();
  readonly registry: Registry<Outlet>;
  /** Subscriptions for another key are refused; null accepts any key. */
  key: string | null;
  /** TTLs of static multicast outputs, by endpoint text. */
  readonly staticTtl = new Map<string, number>();

  private plain: Outlet[] = [];
  private sealed: Subscriber[] = [];
  private dirty = false;

  constructor(
    readonly name: string,
    key: string | null,
    private opts: ChannelOptions,
    onOutletError?: OutletErrorHandler,
    private readonly onSuspend?: SuspendHandler,
  ) {
    this.key = key;
    const onError: OutletErrorHandler = (o, err) => {
      this.strike(o, err);
      onOutletError?.(o, err);
    };
    this.registry = new Registry<Outlet>(
      (ep, _form, isStatic) => this.openOutlet(ep, isStatic, onError),
      () => (this.dirty = true),
      opts.maxSubscribers,
      opts.toleranceMs,
    );
  }

  configure(key: string | null, opts: ChannelOptions): void {
    this.key = key;
    this.opts = opts;
    this.registry.maxDynamic = opts.maxSubscribers;
    this.registry.toleranceMs = opts.toleranceMs;
  }

  private openOutlet(ep: Endpoint, isStatic: boolean, onError?: OutletErrorHandler): Outlet {
    const o = this.opts;
    const multicast = isStatic && isMulticast(ep.host);
    const ttl = this.staticTtl.get(ep.text) ?? o.multicastTtl;
    return new Outlet(ep, multicast ? { ...o.outlet, ttl, multicastInterface: o.multicastInterface } : o.outlet, onError);
  }

  /**
   * Counts an unreachable error against the subscriber; past the threshold
   * it is suspended instead of costing a send per datagram until it expires.
   */
  private strike(o: Outlet, err: NodeJS.ErrnoException): void {
    const e = this.registry.get(o.endpoint.text);
    if (e === undefined || e.outlet !== o || !UNREACHABLE.has(err.code ?? '')) return;
    e.strikes++;
    if (this.opts.deadAfter > 0 && e.suspendedUntil === 0 && e.strikes >= this.opts.deadAfter) {
      this.registry.suspend(e, Date.now() + this.opts.deadRetryMs);
      this.stats.events[E.suspend]++;
      this.onSuspend?.(this, e);
    }
  }

  private rebuild(): void {
    const plain: Outlet[] = [];
    const sealed: Subscriber[] = [];
    for (const e of this.registry.values()) {
      if (e.suspendedUntil !== 0) continue;
      if (e.form === 'plain') plain.push(e.outlet);
      else sealed.push(e);
    }
    // Grouped by key so each distinct key is sealed once per datagram.
    sealed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    this.plain = plain;
    this.sealed = sealed;
    this.dirty = false;
  }

  subscribersOf(form: Form): number {
    if (this.dirty) this.rebuild();
    return form === 'plain' ? this.plain.length : this.sealed.length;
  }

  /**
   * Sends one accepted datagram to every subscriber: `plainOut` (the
   * original, delete-repaired) to plain subscribers; to sealed ones, a frame
   * of `original` sealed once per subscriber key, skipping the subscriber
   * whose origin is `origin` (a frame never goes back where it came from).
   * Returns the number of copies handed to the kernel.
   */
  forward(plainOut: Buffer, original: Buffer, sealer: FrameSealer | null, origin: bigint | null): number {
    if (this.dirty) this.rebuild();
    const st = this.stats;
    const outs = this.plain;
    let sent = 0;
    for (let i = 0; i < outs.length; i++) {
      if (outs[i]!.send(plainOut)) sent++;
      else st.dropped[D.queue_full]++;
    }
    st.bytesForwarded += sent * plainOut.length;
    const sealed = this.sealed;
    if (sealed.length > 0 && sealer !== null) {
      let key: string | null = null;
      let frame: Buffer | null = null;
      for (let i = 0; i < sealed.length; i++) {
        const s = sealed[i]!;
        if (origin !== null && s.origin === origin) continue;
        if (s.key !== key) {
          key = s.key;
          frame = sealer.sealDatagram(key, original);
        }
        if (frame === null) {
          st.dropped[D.too_large]++;
        } else if (s.outlet.send(frame)) {
          sent++;
          st.bytesForwarded += frame.length;
        } else st.dropped[D.queue_full]++;
      }
    }
    st.forwarded += sent;
    if (outs.length === 0 && sealed.length === 0) st.dropped[D.no_subscribers]++;
    return sent;
  }

  close(): void {
    this.registry.clear();
  }
}

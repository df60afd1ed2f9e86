// A channel: the subscribers that receive everything its listeners accept.
// The hot path iterates flat snapshots of the outputs, rebuilt only when the
// registry changes, so subscription traffic never slows forwarding. With the
// native path, one call into C sends a datagram to every plain subscriber.

import { isMulticast, type Endpoint } from '../wire/address.js';
import { native } from '../net/native.js';
import { FULL_BUFFER, NativeOutlet, SENT } from '../net/native-outlet.js';
import { Outlet, type OutletErrorHandler, type OutletOptions, type OutputSocket } from '../net/dgram-outlet.js';
import { type Entry, type Form, Registry } from './registry.js';
import { ChannelStats, D, E } from '../base/stats.js';

/** Errors that say the subscriber's address does not take datagrams. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export type Subscriber = Entry<OutputSocket>;
/** A subscriber taken out of service: suspended (unreachable) or evicted (no socket). */
export type OutletEventHandler = (ch: Channel, e: Subscriber, event: 'suspend' | 'evict', why: string) => void;

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

/** Seals a datagram for the sealed subscribers of one channel key. */
export interface FrameSealer {
  sealDatagram(channelKey: string, datagram: Buffer): Buffer | null;
}

/** Grows an Int32Array scratch buffer to at least n entries. */
function atLeast(a: Int32Array<ArrayBuffer>, n: number): Int32Array<ArrayBuffer> {
  return a.length >= n ? a : new Int32Array(Math.max(n, a.length * 2));
}

export class Channel {
  readonly stats = new ChannelStats();
  readonly registry: Registry<OutputSocket>;
  /** Subscriptions for another key are refused; null accepts any key. */
  key: string | null;
  /** TTLs of static multicast outputs, by endpoint text. */
  readonly staticTtl = new Map<string, number>();

  /** Plain subscribers on native sockets, and their fds in the same order. */
  private plainNative: NativeOutlet[] = [];
  private plainFds = new Int32Array(8);
  /** Plain subscribers on node:dgram sockets (no native path, or multicast). */
  private plainJs: OutputSocket[] = [];
  /** Sealed subscribers, grouped by key. */
  private sealed: Subscriber[] = [];
  private scratchFds = new Int32Array(8);
  private scratchOuts: NativeOutlet[] = [];
  private errs = new Int32Array(8);
  private dirty = false;

  constructor(
    readonly name: string,
    key: string | null,
    private opts: ChannelOptions,
    onOutletError?: OutletErrorHandler,
    private readonly onOutletEvent?: OutletEventHandler,
  ) {
    this.key = key;
    const onError: OutletErrorHandler = (o, err) => {
      // A socket that could not connect never will: take the subscriber out
      // (a dynamic one comes back with its next announce, a static one when
      // the repeater retries it).
      if (err.syscall === 'connect') {
        this.evict(o, err);
        return;
      }
      // A failed send lost that copy; an error read on receive (recvmsg)
      // reports an ICMP answer to an earlier copy that the kernel did send.
      if (err.syscall === 'send' && !(o instanceof NativeOutlet)) this.stats.dropped[D.send_error]++;
      this.strike(o, err);
      onOutletError?.(o, err);
    };
    this.registry = new Registry<OutputSocket>(
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

  private openOutlet(ep: Endpoint, isStatic: boolean, onError: OutletErrorHandler): OutputSocket {
    const o = this.opts;
    if (isStatic && isMulticast(ep.host)) {
      const ttl = this.staticTtl.get(ep.text) ?? o.multicastTtl;
      return new Outlet(ep, { ...o.outlet, ttl, multicastInterface: o.multicastInterface }, onError);
    }
    // Throws when no socket can be had (EMFILE, no free port): the caller
    // refuses the subscription rather than keep one that cannot send.
    if (native !== null) return new NativeOutlet(ep, native, o.outlet.sendBuffer, onError);
    return new Outlet(ep, o.outlet, onError);
  }

  private evict(o: OutputSocket, err: NodeJS.ErrnoException): void {
    const e = this.registry.get(o.endpoint.text);
    if (e === undefined || e.outlet !== o) return;
    this.registry.remove(o.endpoint.text);
    this.stats.events[E.evict]++;
    this.onOutletEvent?.(this, e, 'evict', err.code ?? err.message);
  }

  /**
   * Counts an unreachable error against the subscriber; past the threshold
   * it is suspended instead of costing a send per datagram until it expires.
   */
  private strike(o: OutputSocket, err: NodeJS.ErrnoException): void {
    const e = this.registry.get(o.endpoint.text);
    if (e === undefined || e.outlet !== o || !UNREACHABLE.has(err.code ?? '')) return;
    e.strikes++;
    if (this.opts.deadAfter > 0 && e.suspendedUntil === 0 && e.strikes >= this.opts.deadAfter) {
      this.registry.suspend(e, Date.now() + this.opts.deadRetryMs);
      this.stats.events[E.suspend]++;
      this.onOutletEvent?.(this, e, 'suspend', err.code ?? err.message);
    }
  }

  private rebuild(): void {
    const plainNative: NativeOutlet[] = [];
    const plainJs: OutputSocket[] = [];
    const sealed: Subscriber[] = [];
    for (const e of this.registry.values()) {
      if (e.suspendedUntil !== 0) continue;
      if (e.form === 'sealed') sealed.push(e);
      else if (e.outlet instanceof NativeOutlet) plainNative.push(e.outlet);
      else plainJs.push(e.outlet);
    }
    // Grouped by key so each distinct key is sealed once per datagram.
    sealed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    this.plainNative = plainNative;
    this.plainFds = atLeast(this.plainFds, plainNative.length);
    plainNative.forEach((o, i) => (this.plainFds[i] = o.fd));
    this.plainJs = plainJs;
    this.sealed = sealed;
    this.errs = atLeast(this.errs, Math.max(plainNative.length, sealed.length));
    this.scratchFds = atLeast(this.scratchFds, sealed.length);
    this.dirty = false;
  }

  subscribersOf(form: Form): number {
    if (this.dirty) this.rebuild();
    return form === 'plain' ? this.plainNative.length + this.plainJs.length : this.sealed.length;
  }

  /** One native call for `n` outlets whose fds are in `fds`; settles each. */
  private sendNative(outs: readonly NativeOutlet[], fds: Int32Array, n: number, buf: Buffer): number {
    const failures = native!.sendEach(fds, n, buf, this.errs);
    if (failures === 0) {
      for (let i = 0; i < n; i++) {
        const o = outs[i]!;
        o.sent++;
        o.bytes += buf.length;
      }
      return n;
    }
    let sent = 0;
    for (let i = 0; i < n; i++) {
      const r = outs[i]!.settle(this.errs[i]!, buf.length);
      if (r === SENT) sent++;
      else this.stats.dropped[r === FULL_BUFFER ? D.queue_full : D.send_error]++;
    }
    return sent;
  }

  /**
   * Sends one accepted datagram to every subscriber: `plainOut` (the
   * original, delete-repaired) to plain subscribers; to sealed ones, a frame
   * of `original` sealed once per subscriber key, skipping the subscriber
   * whose origin is `origin` (a frame never goes back where it came from).
   * `stable` says `plainOut` may be kept after this call returns; node:dgram
   * outlets may queue it, so they get a copy of a volatile one.
   * Returns the number of copies handed to the kernel.
   */
  forward(plainOut: Buffer, original: Buffer, sealer: FrameSealer | null, origin: bigint | null, stable = true): number {
    if (this.dirty) this.rebuild();
    const st = this.stats;
    let sent = 0;
    const nn = this.plainNative.length;
    if (nn > 0) sent += this.sendNative(this.plainNative, this.plainFds, nn, plainOut);
    const js = this.plainJs;
    if (js.length > 0) {
      const buf = stable ? plainOut : Buffer.from(plainOut);
      for (let i = 0; i < js.length; i++) {
        if (js[i]!.send(buf)) sent++;
        else st.dropped[D.queue_full]++;
      }
    }
    st.bytesForwarded += sent * plainOut.length;
    const sealed = this.sealed;
    if (sealed.length > 0 && sealer !== null) sent += this.forwardSealed(sealed, original, sealer, origin);
    st.forwarded += sent;
    if (nn === 0 && js.length === 0 && sealed.length === 0) st.dropped[D.no_subscribers]++;
    return sent;
  }

  /** Sealed subscribers: one frame per key group, batched into one native call per group. */
  private forwardSealed(sealed: readonly Subscriber[], original: Buffer, sealer: FrameSealer, origin: bigint | null): number {
    const st = this.stats;
    let sent = 0;
    let i = 0;
    while (i < sealed.length) {
      const key = sealed[i]!.key;
      let frame: Buffer | null | undefined;
      let n = 0;
      const outs = this.scratchOuts;
      outs.length = 0;
      for (; i < sealed.length && sealed[i]!.key === key; i++) {
        const s = sealed[i]!;
        if (origin !== null && s.origin === origin) continue;
        if (frame === undefined) frame = sealer.sealDatagram(key, original);
        if (frame === null) {
          st.dropped[D.sealed_too_large]++;
          continue;
        }
        if (s.outlet instanceof NativeOutlet) {
          this.scratchFds[n++] = s.outlet.fd;
          outs.push(s.outlet);
        } else if (s.outlet.send(frame)) {
          sent++;
          st.bytesForwarded += frame.length;
        } else st.dropped[D.queue_full]++;
      }
      if (n > 0 && frame) {
        const ok = this.sendNative(outs, this.scratchFds, n, frame);
        sent += ok;
        st.bytesForwarded += ok * frame.length;
      }
    }
    return sent;
  }

  close(): void {
    this.registry.clear();
  }
}

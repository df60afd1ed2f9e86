// Joining a repeater's channel as a member: what the node-side agent
// (agent/agent.ts) and the TLS session cache (tls/session-cache.ts) both do,
// once. A member binds one port, announces itself to every repeater it is
// given (a sealed subscription naming that repeater as its receiver, or a
// plain uWSGI subscription), announces again every interval, publishes what
// its owner hands it to every repeater, and takes in what the repeaters send.
//
// Invariants:
// - One port talks to every repeater: the announces name the address the
//   repeater should send to (`advertise`: configured, or this host's address
//   on the route to that repeater with the port's port), and what is
//   published leaves from the same port, so the frames come back to it.
// - Nothing is believed before it came from a repeater's IP (a repeater sends
//   from sockets of its own, so any port of it; with several repeaters on one
//   host, the one with that port if any, else in identity mode the one whose
//   link the frame names): anything else is dropped before any crypto
//   (not_allowed). Sealed, a frame is then opened by the session's gate
//   with this repeater's membership fence (judge/membership.ts): a frame
//   sealed for another receiver, a group frame sealed before we were a
//   member, a replay, a frame of another channel key: all refused, counted.
// - A member never throws out of a handler: a bug costs one datagram,
//   counted (internal_error) and logged.

import { describe } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import type { DropReason } from '../base/stats.js';
import type { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import { Membership } from '../judge/membership.js';
import { advertiseAddress } from '../net/local.js';
import { type DatagramPort, openPort, type PortOptions, type Source } from '../net/io.js';
import { canonicalIp, type Endpoint } from '../wire/address.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import { LinkType, linkTypeOf, receiverLinkOf } from '../wire/handshake.js';
import { encodeSubscription } from '../wire/subscription.js';
import type { MemberLinks } from './member-links.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { TraceFields } from '../wire/trace.js';

export interface MemberConfig {
  readonly repeaters: readonly Endpoint[];
  /** The port's local address. */
  readonly bind: Endpoint;
  /** Where the repeaters should send (null: found per repeater). */
  readonly advertise: string | null;
  readonly channelKey: string;
  /** Sealed frames further than this from our clock are refused. */
  readonly maxSkewMs: number;
  /** Larger datagrams from a repeater are dropped unread (too_large). */
  readonly maxDatagram: number;
  readonly subscribeIntervalMs: number;
  readonly port: PortOptions;
}

/** Sealed membership: the session (our origin, replay windows) and the key ring (replaced on reload). */
export interface MemberSeal {
  readonly session: SecureSession;
  ring: KeyRing;
}

/** What a member tells its owner. */
export interface MemberEvents {
  /** A cache datagram from a repeater: opened from a frame (`trace` from its envelope), or plain as it came (`trace` null). */
  datagram(datagram: Buffer, trace: TraceFields | null, sealed: boolean): void;
  /** The fleet's ticket keys; false when this member does not take them (counted as unknown_command). */
  tickets(keys: readonly TicketKey[]): boolean;
  /** A datagram from the repeaters' side refused, and why. */
  drop(reason: DropReason): void;
  /** Any datagram that arrives on the port, before it is judged. */
  arrived?(bytes: number): void;
  /** From an address that is none of the repeaters (a hint). */
  stranger?(msg: Buffer, source: string): void;
  /** Before each round of announces. */
  announcing?(): void;
  /** One announce was sent to `repeater`. */
  announced?(repeater: Endpoint): void;
}

/** One repeater, as the member knows it. */
export interface MemberLink {
  readonly repeater: Endpoint;
  /** Where this repeater should send to reach us (named in every announce); null until a route is found. */
  advertise: string | null;
  /** The name its frames for us carry (our advertise), and from which of its sequences we are a member. */
  readonly me: Membership;
  sent: number;
  received: number;
  /** When its last authentic frame came (ms; 0: never). */
  lastFrameAt: number;
  /** Identity mode: the name of the repeater identity the link is with (null: none yet). */
  identity: string | null;
}

function newLink(repeater: Endpoint): MemberLink {
  const link: MemberLink = { repeater, advertise: null, me: new Membership(() => link.advertise), sent: 0, received: 0, lastFrameAt: 0, identity: null };
  return link;
}

export class ChannelMember {
  /** Announces sent. */
  announces = 0;
  private links = new Map<string, MemberLink>();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    private cfg: MemberConfig,
    private port: DatagramPort,
    private readonly seal: MemberSeal | null,
    private readonly events: MemberEvents,
    private readonly log: Logger,
    /** Identity mode (member-links.ts): every frame goes under a link; `seal` is then null. */
    private readonly linkKeys: MemberLinks | null,
  ) {}

  /** Binds the port and finds where each repeater should send; announces nothing yet (start). */
  static async open(cfg: MemberConfig, seal: MemberSeal | null, events: MemberEvents, log: Logger, links: MemberLinks | null = null): Promise<ChannelMember> {
    let member: ChannelMember | null = null;
    const port = await openPort(cfg.bind, cfg.port, (msg, from) => member?.intake(msg, from));
    member = new ChannelMember(cfg, port, seal, events, log, links);
    port.onError((err) => log.throttle('warn', 'member-port', 'socket error (repeater side)', { error: err.message }));
    await member.setRepeaters(cfg.repeaters);
    return member;
  }

  /** Where the repeaters send to us: the port's bound address. */
  get bound(): string {
    return this.port.bound;
  }

  /** The repeaters, in the order configured. */
  linkList(): readonly MemberLink[] {
    return [...this.links.values()];
  }

  /** Announces now and every interval from now on. */
  start(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.announceAll(EnvelopeKind.Subscribe);
    this.timer = setInterval(() => this.announceAll(EnvelopeKind.Subscribe), this.cfg.subscribeIntervalMs);
    this.timer.unref();
  }

  /**
   * Takes a new config: a new bind address opens a new port first (a failure
   * leaves the running one), then the repeaters are set and announced.
   */
  async reconfigure(cfg: MemberConfig): Promise<void> {
    const old = this.cfg;
    if (cfg.bind.text !== old.bind.text) {
      const port = await openPort(cfg.bind, cfg.port, (msg, from) => this.intake(msg, from));
      port.onError((err) => this.log.throttle('warn', 'member-port', 'socket error (repeater side)', { error: err.message }));
      void this.port.close();
      this.port = port;
    }
    this.cfg = cfg;
    await this.setRepeaters(cfg.repeaters);
    this.start();
  }

  private async setRepeaters(repeaters: readonly Endpoint[]): Promise<void> {
    const next = new Map<string, MemberLink>();
    for (const r of repeaters) {
      const link = this.links.get(r.text) ?? newLink(r);
      try {
        link.advertise = await advertiseAddress(this.port, r, this.cfg.advertise);
      } catch (err) {
        // No route now: looked for again at every announce.
        this.log.warn('no route to a repeater; will retry', { repeater: r.text, error: describe(err) });
        link.advertise = null;
      }
      next.set(r.text, link);
    }
    this.links = next;
  }

  /** A subscription for one repeater alone: sealed, it names that repeater as configured. */
  private announceFor(kind: EnvelopeKind, link: MemberLink): Buffer | null {
    const address = link.advertise;
    if (address === null) return null;
    if (this.linkKeys !== null) return this.linkKeys.seal(link.repeater, { kind, channelKey: this.cfg.channelKey, address });
    if (this.seal === null) return encodeSubscription({ key: this.cfg.channelKey, address, unsubscribe: kind === EnvelopeKind.Unsubscribe });
    return this.seal.session.seal(this.seal.ring, { kind, channelKey: this.cfg.channelKey, datagram: null, address, receiver: link.repeater.text });
  }

  /** One announce to every repeater with a route (the others are looked for again). */
  announceAll(kind: EnvelopeKind): void {
    if (this.closed) return;
    this.events.announcing?.();
    for (const l of this.links.values()) {
      if (l.advertise === null) {
        void advertiseAddress(this.port, l.repeater, this.cfg.advertise).then(
          (a) => (l.advertise = a),
          () => undefined,
        );
        continue;
      }
      if (this.linkKeys !== null) for (const h of this.linkKeys.hellos(l.repeater, this.cfg.channelKey, l.advertise, this.cfg.subscribeIntervalMs)) this.port.send(Buffer.from(h), l.repeater);
      const frame = this.announceFor(kind, l);
      if (frame === null || !this.port.send(frame, l.repeater)) continue;
      l.sent++;
      this.announces++;
      this.events.announced?.(l.repeater);
    }
  }

  /**
   * One announce to every repeater, each confirmed by the kernel: resolves
   * once all went, rejects with the first failure (no route, a send error, a
   * timeout).
   */
  async announceAndWait(kind: EnvelopeKind): Promise<void> {
    const sends = [...this.links.values()].map(async (l) => {
      l.advertise ??= await advertiseAddress(this.port, l.repeater, this.cfg.advertise);
      const frame = this.announceFor(kind, l);
      // Identity mode: a repeater with no link has nothing of ours to forget.
      if (frame === null && this.linkKeys !== null) return;
      if (frame === null) throw new Error(`the announce to ${l.repeater.text} cannot be sealed`);
      await this.port.sendAndWait(frame, l.repeater);
      l.sent++;
      this.announces++;
      this.events.announced?.(l.repeater);
    });
    const failed = (await Promise.allSettled(sends)).find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  /**
   * Sends a cache datagram to every repeater: sealed once for all of them
   * (with `trace`), or plain as it is. Returns how many repeaters it went to
   * (0: the port's queue is full), its size, and how many repeaters got
   * nothing for want of a link (identity mode: the owner counts them no_link
   * on its way out), or null when the frame would be too large.
   */
  publish(datagram: Buffer, trace: TraceFields | null): { sent: number; bytes: number; unlinked: number } | null {
    if (this.linkKeys !== null) return this.publishLinked(datagram, trace);
    const out = this.seal === null ? datagram : this.seal.session.seal(this.seal.ring, { kind: EnvelopeKind.CacheDatagram, channelKey: this.cfg.channelKey, datagram, trace, address: null });
    if (out === null) return null;
    let sent = 0;
    for (const l of this.links.values()) {
      if (!this.port.send(out, l.repeater)) break;
      l.sent++;
      sent++;
    }
    return { sent, bytes: out.length, unlinked: 0 };
  }

  /** Identity mode: one frame per repeater, each under its own link; a repeater with no link yet gets nothing (no_link). */
  private publishLinked(datagram: Buffer, trace: TraceFields | null): { sent: number; bytes: number; unlinked: number } | null {
    let sent = 0;
    let bytes = 0;
    let unlinked = 0;
    for (const l of this.links.values()) {
      const out = this.linkKeys!.seal(l.repeater, { kind: EnvelopeKind.CacheDatagram, channelKey: this.cfg.channelKey, datagram, trace });
      if (out === null) {
        unlinked++;
        continue;
      }
      bytes = out.length;
      if (!this.port.send(out, l.repeater)) break;
      l.sent++;
      sent++;
    }
    return { sent, bytes, unlinked };
  }

  /** A link frame or WELCOME from `link`'s repeater: the envelope it holds, or null (taken or counted). */
  private openLinked(link: MemberLink, msg: Buffer): Envelope | null {
    const links = this.linkKeys!;
    const type = linkTypeOf(msg);
    if (type === LinkType.GroupData) {
      const env = links.openGroup(link.repeater, msg, this.cfg.maxSkewMs);
      if (typeof env === 'string') {
        this.events.drop(env);
        return null;
      }
      return env;
    }
    if (type === LinkType.Welcome) {
      const made = links.welcome(link.repeater, msg);
      if (made !== true) {
        this.events.drop(made);
        return null;
      }
      link.identity = links.linkedTo(link.repeater);
      this.log.info('link confirmed', { repeater: link.repeater.text, peer: link.identity });
      // The first frame under the new link confirms it at the repeater: the subscription.
      const frame = this.announceFor(EnvelopeKind.Subscribe, link);
      if (frame !== null && this.port.send(frame, link.repeater)) link.sent++;
      return null;
    }
    const env = links.open(link.repeater, msg, this.cfg.maxSkewMs);
    if (typeof env === 'string') {
      this.events.drop(env);
      return null;
    }
    return env;
  }

  /**
   * The repeater a datagram came from. A repeater sends from sockets of its
   * own, not its listener, so it is matched by IP (canonical): the one with
   * that port if any; else, several on one host in identity mode, the one
   * whose link (or pending handshake) the frame's receiver link id names,
   * or for a group frame the one that handed over the key it names;
   * else the first on that host.
   */
  private linkFrom(from: Source, msg: Buffer): MemberLink | undefined {
    const found = this.onHost(from.address, from.port, msg);
    if (found !== undefined) return found;
    const c = canonicalIp(from.address)?.host;
    return c === undefined || c === from.address ? undefined : this.onHost(c, from.port, msg);
  }

  private onHost(host: string, port: number, msg: Buffer): MemberLink | undefined {
    let first: MemberLink | undefined;
    let several = false;
    for (const l of this.links.values()) {
      if (l.repeater.host !== host) continue;
      if (l.repeater.port === port) return l;
      if (first === undefined) first = l;
      else several = true;
    }
    if (!several || this.linkKeys === null) return first;
    // A group frame names its key id where a link frame names the receiver's link id.
    const group = linkTypeOf(msg) === LinkType.GroupData && msg.length >= 8;
    const id = group ? msg.readUInt32LE(4) : receiverLinkOf(msg);
    if (id === null) return first;
    for (const l of this.links.values()) if (l.repeater.host === host && this.linkKeys.names(l.repeater, id, group)) return l;
    return first;
  }

  private intake(msg: Buffer, from: Source): void {
    if (this.closed) return;
    try {
      this.take(msg, from);
    } catch (err) {
      this.events.drop('internal_error');
      this.log.throttle('error', 'member-internal', 'internal error handling a datagram from a repeater; dropped', { error: describe(err), stack: (err as Error).stack });
    }
  }

  private take(msg: Buffer, from: Source): void {
    const ev = this.events;
    ev.arrived?.(msg.length);
    const link = this.linkFrom(from, msg);
    if (link === undefined) {
      ev.drop('not_allowed');
      ev.stranger?.(msg, from.address);
      return;
    }
    if (msg.length > this.cfg.maxDatagram) {
      ev.drop('too_large');
      return;
    }
    let env: Envelope;
    if (this.linkKeys !== null) {
      const opened = this.openLinked(link, msg);
      if (opened === null) return;
      env = opened;
    } else {
      if (this.seal === null) {
        ev.datagram(msg, null, false);
        return;
      }
      const opened = this.seal.session.open(this.seal.ring, msg, this.cfg.maxSkewMs, Date.now(), link.me);
      if (typeof opened === 'string') {
        ev.drop(opened);
        return;
      }
      env = opened;
    }
    if (env.channelKey !== this.cfg.channelKey) {
      ev.drop('key_mismatch');
      return;
    }
    if (env.kind === EnvelopeKind.Membership) {
      if (this.linkKeys === null) link.me.raise(env.origin, env.memberFrom!);
    } else if (env.kind === EnvelopeKind.GroupKey && this.linkKeys !== null) {
      // Only under this repeater's link (a group frame carries cache datagrams only): acknowledged under the link.
      const ack = this.linkKeys.takeGroupKey(link.repeater, env);
      if (ack !== null && this.port.send(ack, link.repeater)) link.sent++;
    } else if (env.kind === EnvelopeKind.TicketKeys && ev.tickets(env.tickets!)) {
      // taken
    } else if (env.kind !== EnvelopeKind.CacheDatagram) {
      ev.drop('unknown_command');
      return;
    }
    link.received++;
    link.lastFrameAt = Date.now();
    if (env.kind === EnvelopeKind.CacheDatagram) ev.datagram(env.datagram!, env.trace, true);
  }

  /** Stops announcing and closes the port (no goodbye: see leave). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.port.close();
    this.linkKeys?.destroy();
  }

  /** Says goodbye to every repeater (an unsubscribe each, confirmed or logged), then closes. */
  async leave(): Promise<void> {
    if (this.closed) return;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    try {
      await this.announceAndWait(EnvelopeKind.Unsubscribe);
    } catch (err) {
      this.log.warn('unsubscribe not sent', { error: describe(err) });
    }
    await this.close();
  }
}

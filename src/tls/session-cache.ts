// A TLS session cache for Node.js servers (`tls.Server`, `https.Server`) that
// joins a udprepeater channel as a node does, so Node servers and uWSGI nodes
// share one cache and one set of ticket keys. README, "TLS session resumption".
//
//   newSession    -> local store, and one cache set to the repeater
//   resumeSession <- local store only: never a network round trip
//   repeater      -> cache sets and deletes into the local store;
//                    (sealed only) the fleet's ticket keys -> setTicketKeys
//
// Three ways in, like a node: plain (uWSGI cache datagrams to the repeater's
// plain listener and a subscribe2 announce naming our socket), sealed
// (frames to a sealed listener under the shared key, exactly like an agent)
// or by identity (a link to a repeater identity of the peers file, like
// `agent --identity --peers`: identity-links.ts). Joining the channel (the
// socket, the announces, the sealed intake with its receiver and
// membership checks, the links) is the agent's own code:
// member/channel-member.ts. Ticket keys only ever arrive sealed; by
// identity, only under a link with a role=repeater identity.
//
// Invariants:
// - Nothing from the network is believed before it authenticated (sealed:
//   the session's gate) or, plain, before it came from the repeater's IP; then
//   it is parsed by the pure codecs, bounded (key, value, store) and can
//   never throw out of a handler: a bug is counted and logged.
// - Session data is secret: it is never logged, and zeroed when dropped.
// - The store answers nothing past an entry's deadline: the earlier of the
//   expiry the datagram carries and now + sessionTimeout.

import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Server as TlsServer } from 'node:tls';
import { ConfigError, describe } from '../base/errors.js';
import { Logger } from '../base/log.js';
import { KeyRing } from '../crypto/keyring.js';
import { sodiumReady } from '../crypto/secretbox.js';
import { SecureSession } from '../crypto/session.js';
import { nodeTicketKey, ticketKeyId, TicketKeys } from '../crypto/ticket-schedule.js';
import { ChannelMember, type MemberEvents, type MemberSeal } from '../member/channel-member.js';
import { checkBufferSize } from '../net/io.js';
import { type Endpoint, parseEndpoint } from '../wire/address.js';
import { decodeCacheUpdate, encodeCacheSet } from '../wire/cache.js';
import { EnvelopeKind, Role } from '../wire/envelope.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import { sessionProtocol, TLS1_3 } from '../wire/tls-session.js';
import { type CacheLinks, identityLinks } from './identity-links.js';
import { SessionStore } from './store.js';

/** uWSGI's largest cache key (its `keysize` default); TLS session ids are at most 32 bytes. */
export const MAX_KEY_BYTES = 2048;

export interface SessionCacheOptions {
  /** The repeater's listener, `HOST:PORT`: plain, or sealed when keyFiles are given. */
  readonly repeater: string;
  /** The channel's subscription key (the uWSGI cache name). Default `ssl`. */
  readonly channelKey?: string;
  /** Sealed mode: secretbox key files, as for `udprepeater agent --key-file` (first seals, all open). */
  readonly keyFiles?: readonly string[];
  /** Identity mode (with `peers`, without `keyFiles`): this cache's identity file, as for `udprepeater agent --identity`. */
  readonly identity?: string;
  /** Identity mode: the peers file; only its role=repeater lines are linked to and believed. */
  readonly peers?: string;
  /** Local address of the socket that talks to the repeater. Default: any address, any port. */
  readonly bind?: string;
  /** Where the repeater should send. Default: this host's address on the route to it, and the port of bind. */
  readonly advertise?: string;
  /** Entries held at most (oldest used evicted first). Default 20000. */
  readonly maxEntries?: number;
  /** Bytes of keys and values held at most. Default 32 MiB. */
  readonly maxBytes?: number;
  /** Seconds a session may be resumed (match the servers' `sessionTimeout`). Default 300, Node's. */
  readonly sessionTimeout?: number;
  /** Seconds between announces (well under the repeater's --tolerance). Default 10. */
  readonly subscribeInterval?: number;
  /** Sealed mode: frames further than this from our clock are refused (seconds). Default 30. */
  readonly maxSkew?: number;
  /** SO_RCVBUF: a warm join sends the whole channel at once. Default 4 MiB. */
  readonly recvBuffer?: number;
  /** Logs (never session data). Default: warnings and errors as JSON lines on stderr. */
  readonly logger?: Logger;
}

/** What the cache has done: plain numbers, also published by `registerMetrics`. */
export interface SessionCacheStats {
  /** resumeSession answered from the store. */
  hits: number;
  /** resumeSession found nothing (or only an expired entry). */
  misses: number;
  /** Sessions our servers created, stored and published. */
  stored: number;
  /** TLS 1.3 sessions not stored: they resume with tickets, never by id. */
  skippedTls13: number;
  /** Cache sets and deletes from the repeater applied to the store. */
  applied: number;
  /** Datagrams from the repeater refused, by reason. */
  dropped: Record<string, number>;
  /** Publications that could not be sent (socket queue full, frame too large). */
  publishFailed: number;
  /** Ticket-key changes applied to the servers. */
  ticketKeyChanges: number;
  announces: number;
}

export interface AttachOptions {
  /** Share TLS 1.2 session ids (newSession/resumeSession). Default true. */
  readonly sessions?: boolean;
  /** Load the fleet's ticket keys (sealed mode). Default true. */
  readonly tickets?: boolean;
  /**
   * Share session ids over a plain channel although the server asks for
   * client certificates. A resumed session carries the client's identity, and
   * a plain channel lets whoever can spoof an allowed source plant sessions:
   * refused unless set. SECURITY.md, "Ticket keys (TLS session resumption)".
   */
  readonly plainWithClientCertificates?: boolean;
}

/**
 * The `sessionIdContext` every server sharing a channel must use: OpenSSL
 * refuses to resume a session (by id or ticket) made under another context,
 * and Node's default context is derived from the command line, which
 * differs between servers.
 */
export function sessionIdContext(channelKey = 'ssl'): string {
  return createHash('sha256').update(`udprepeater session id context\0${channelKey}`).digest('hex').slice(0, 32);
}

/** Publications that may wait in the socket's queue. */
const SEND_QUEUE = 256;
/** Nothing a repeater sends is refused for its size here: the store bounds what is kept. */
const ANY_SIZE = 65_535;

export class SessionCache extends EventEmitter {
  readonly stats: SessionCacheStats = { hits: 0, misses: 0, stored: 0, skippedTls13: 0, applied: 0, dropped: {}, publishFailed: 0, ticketKeyChanges: 0, announces: 0 };
  readonly channelKey: string;
  private readonly store: SessionStore;
  private readonly tickets = new TicketKeys();
  private readonly servers = new Map<TlsServer, { sessions: boolean; tickets: boolean; detach: () => void }>();
  private appliedTicketKey: bigint | null = null;
  private ticketTimer: NodeJS.Timeout | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** The channel membership: the socket, the announces, the sealed intake (member/channel-member.ts). */
  private member!: ChannelMember;

  private constructor(
    private readonly opts: Required<Pick<SessionCacheOptions, 'sessionTimeout' | 'subscribeInterval' | 'maxSkew'>>,
    private readonly sealed: MemberSeal | null,
    private readonly linked: CacheLinks | null,
    private readonly log: Logger,
    channelKey: string,
    limits: { maxEntries: number; maxBytes: number },
  ) {
    super();
    this.channelKey = channelKey;
    this.store = new SessionStore(limits);
  }

  /**
   * Binds the socket, announces itself to the repeater, and resolves once the
   * first announce is sent. Bad options (a key file anyone else can read, an
   * address that is no address) are refused with a ConfigError naming them.
   */
  static async start(options: SessionCacheOptions): Promise<SessionCache> {
    const repeater = endpoint('repeater', options.repeater);
    const channelKey = options.channelKey ?? 'ssl';
    if (channelKey.length === 0 || channelKey.length > 255) throw new ConfigError('channelKey must be 1-255 characters');
    const positive = (name: string, v: number | undefined, dflt: number, max: number) => {
      const n = v ?? dflt;
      if (!(typeof n === 'number' && n > 0 && n <= max)) throw new ConfigError(`${name} must be above 0 and at most ${max}, got ${String(v)}`);
      return n;
    };
    const sessionTimeout = positive('sessionTimeout', options.sessionTimeout, 300, 86_400 * 7);
    const subscribeInterval = positive('subscribeInterval', options.subscribeInterval, 10, 3600);
    const maxSkew = positive('maxSkew', options.maxSkew, 30, 3600);
    const maxEntries = Math.floor(positive('maxEntries', options.maxEntries, 20_000, 10_000_000));
    const maxBytes = Math.floor(positive('maxBytes', options.maxBytes, 32 << 20, 2 ** 40));
    const recvBuffer = options.recvBuffer ?? 4 << 20;
    checkBufferSize('recvBuffer', recvBuffer);
    const bind = endpoint('bind', options.bind ?? (repeater.family === 6 ? '[::]:0' : '0.0.0.0:0'), true);
    if (bind.family !== repeater.family) throw new ConfigError(`bind ${bind.text} is not of the repeater's address family`);
    const advertise = options.advertise === undefined ? null : endpoint('advertise', options.advertise).text;
    const log = options.logger ?? new Logger('warn', 'json');
    let sealed: MemberSeal | null = null;
    const linked = await identityLinks(options, log);
    if (linked === null && options.keyFiles !== undefined && options.keyFiles.length > 0) {
      await sodiumReady();
      sealed = { session: new SecureSession(Role.Agent), ring: KeyRing.load(options.keyFiles) };
    }
    const c = new SessionCache({ sessionTimeout, subscribeInterval, maxSkew }, sealed, linked, log, channelKey, { maxEntries, maxBytes });
    const member = { repeaters: [repeater], bind, advertise, channelKey, maxSkewMs: maxSkew * 1000, maxDatagram: ANY_SIZE, subscribeIntervalMs: subscribeInterval * 1000, port: { recvBuffer, sendBuffer: 0, sendQueue: SEND_QUEUE } };
    try {
      const events: MemberEvents = {
        // Plain, the repeater's loop trace may come with it; opened from a frame, it may not.
        datagram: (d, _trace, fromFrame) => c.applyUpdate(d, !fromFrame),
        tickets: (keys) => {
          c.onTicketKeys(keys);
          return true;
        },
        drop: (reason) => c.drop(reason),
        announced: () => c.stats.announces++,
      };
      c.member = await ChannelMember.open(member, sealed, events, log, linked?.links ?? null);
      try {
        await c.member.announceAndWait(EnvelopeKind.Subscribe);
      } catch (err) {
        await c.member.close();
        throw err;
      }
    } catch (err) {
      sealed?.ring.destroy();
      linked?.links.destroy();
      throw err instanceof ConfigError ? err : new ConfigError(`session cache: cannot join ${repeater.text}: ${describe(err)}`);
    }
    c.member.start();
    c.sweepTimer = setInterval(() => c.store.sweep(Date.now()), 30_000);
    c.sweepTimer.unref();
    log.info('session cache joined the repeater', { repeater: repeater.text, advertise: c.address, channelKey, sealed: sealed !== null || linked !== null, identity: linked !== null });
    return c;
  }

  /** Where the repeater sends to us (named in every announce). */
  get address(): string | null {
    return this.member.linkList()[0]?.advertise ?? null;
  }

  /** Entries held now. */
  get size(): number {
    return this.store.size;
  }

  get evictions(): number {
    return this.store.evictions;
  }

  /** Ids of the fleet's ticket keys held, with their times (never the secrets). */
  ticketKeys(): Array<{ id: string; notBefore: string; notAfter: string; encrypting: boolean }> {
    return this.tickets.describe(Date.now());
  }

  /** A copy of the value stored under `key`, or undefined. */
  get(key: Uint8Array): Buffer | undefined {
    const v = this.store.get(key, Date.now());
    return v === undefined ? undefined : Buffer.from(v);
  }

  /**
   * Serves `server`'s session ids from the cache and publishes its new
   * sessions (TLS 1.2); loads the fleet's ticket keys into it (sealed mode).
   * Create the server with `sessionIdContext: sessionIdContext(channelKey)`.
   * Returns a function that detaches it.
   */
  attach(server: TlsServer, options: AttachOptions = {}): () => void {
    if (this.servers.has(server)) throw new Error('this server is already attached');
    const sessions = options.sessions !== false;
    const tickets = options.tickets !== false;
    // tls.Server keeps its requestCert option as a property (Node's _tls_wrap.js).
    if (sessions && this.sealed === null && this.linked === null && (server as { requestCert?: boolean }).requestCert === true && options.plainWithClientCertificates !== true) {
      throw new Error(
        'this server asks for client certificates, and this cache is on a plain channel: anyone who can send as the repeater could plant a session carrying any client identity. ' +
          'Join a sealed listener (keyFiles, or identity and peers), or attach with { sessions: false } or { plainWithClientCertificates: true }',
      );
    }
    const onNew = (id: Buffer, data: Buffer, done: () => void) => {
      this.guarded(() => this.onNewSession(id, data));
      done();
    };
    const onResume = (id: Buffer, done: (err: Error | null, data: Buffer | null) => void) => {
      let data: Buffer | null = null;
      this.guarded(() => {
        const v = this.store.get(id, Date.now());
        if (v === undefined) this.stats.misses++;
        else this.stats.hits++;
        data = v ?? null;
      });
      done(null, data);
    };
    if (sessions) {
      server.on('newSession', onNew);
      server.on('resumeSession', onResume);
    }
    const detach = () => {
      server.off('newSession', onNew);
      server.off('resumeSession', onResume);
      this.servers.delete(server);
    };
    this.servers.set(server, { sessions, tickets, detach });
    if (tickets && this.appliedTicketKey !== null) this.loadTicketKey(server);
    return detach;
  }

  /** A session one of our servers made: stored here, and published (TLS 1.2 and below). */
  private onNewSession(id: Buffer, data: Buffer): void {
    if (this.closed || id.length === 0 || id.length > MAX_KEY_BYTES) return;
    if (sessionProtocol(data) === TLS1_3) {
      this.stats.skippedTls13++;
      return;
    }
    const now = Date.now();
    const expiresAt = now + this.opts.sessionTimeout * 1000;
    this.store.set(id, data, expiresAt, now);
    this.stats.stored++;
    this.publish(encodeCacheSet(id, data, Math.ceil(expiresAt / 1000)));
  }

  private publish(datagram: Buffer): void {
    const out = this.member.publish(datagram, null);
    if (out === null || out.sent === 0) this.stats.publishFailed++;
  }

  private drop(reason: string): void {
    this.stats.dropped[reason] = (this.stats.dropped[reason] ?? 0) + 1;
  }

  /** A handler that throws (a bug) costs one datagram, counted and logged, never the process. */
  private guarded(f: () => void): void {
    try {
      f();
    } catch (err) {
      this.drop('internal_error');
      this.log.throttle('error', 'tls-cache-internal', 'session cache: internal error; dropped', { error: describe(err) });
    }
  }

  /** A cache set or delete (plain: it may carry the repeater's loop trace; sealed: it may not). */
  private applyUpdate(buf: Buffer, traceAllowed: boolean): void {
    const u = decodeCacheUpdate(buf);
    if (typeof u === 'string') {
      this.drop(u);
      return;
    }
    if (u.trace !== null && !traceAllowed) {
      this.drop('malformed');
      return;
    }
    if (u.key.length > MAX_KEY_BYTES) {
      this.drop('too_large');
      return;
    }
    const now = Date.now();
    if (u.op === 'delete') {
      this.store.delete(u.key);
    } else {
      // The earlier of what the datagram says (0: never) and our own timeout.
      let expiresAt = now + this.opts.sessionTimeout * 1000;
      if (u.expires !== null && u.expires > 0n) expiresAt = Math.min(expiresAt, Number(u.expires) * 1000);
      if (!this.store.set(u.key, u.value, expiresAt, now)) {
        this.drop(expiresAt <= now ? 'expired' : 'too_large');
        return;
      }
    }
    this.stats.applied++;
    if (this.listenerCount('update') > 0) this.emit('update', u.op === 'delete' ? 'delete' : 'set', Buffer.from(u.key));
  }

  private onTicketKeys(keys: readonly TicketKey[]): void {
    const now = Date.now();
    if (this.tickets.merge(keys, now)) this.applyTickets(now);
  }

  /** Loads the key that encrypts now into every attached server, and wakes up when that changes. */
  private applyTickets(now: number): void {
    this.tickets.prune(now);
    const enc = this.tickets.view(now).encrypting;
    if (enc !== null && enc.id !== this.appliedTicketKey) {
      this.appliedTicketKey = enc.id;
      for (const [server, s] of this.servers) if (s.tickets) this.loadTicketKey(server);
      this.stats.ticketKeyChanges++;
      this.log.info('ticket key loaded', { id: ticketKeyId(enc), notBefore: new Date(enc.notBeforeMs).toISOString() });
      this.emit('ticketKeys', ticketKeyId(enc));
    }
    if (this.ticketTimer !== null) clearTimeout(this.ticketTimer);
    const next = this.tickets.nextChange(now);
    if (next !== null && !this.closed) {
      this.ticketTimer = setTimeout(() => this.guarded(() => this.applyTickets(Date.now())), Math.min(Math.max(next - now, 1), 2 ** 31 - 1));
      this.ticketTimer.unref();
    }
  }

  /**
   * Node holds one ticket key (setTicketKeys takes 48 bytes): the one that
   * encrypts now. Tickets made under the previous key stop resuming on Node
   * servers at the switch (nginx keeps every listed key); see README.
   */
  private loadTicketKey(server: TlsServer): void {
    const enc = this.tickets.view(Date.now()).encrypting;
    if (enc === null) return;
    const k = nodeTicketKey(enc);
    server.setTicketKeys(k);
    k.fill(0);
  }

  /** Identity mode: reads the peers file again (a repeater no longer listed as one loses its link); throws a ConfigError to refuse it. */
  reloadPeers(): void {
    if (this.linked === null) throw new ConfigError('this session cache has no identity: reloadPeers needs the identity and peers options');
    this.linked.reload();
  }

  /** Says goodbye to the repeater (unsubscribe), detaches every server and forgets everything. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    if (this.ticketTimer !== null) clearTimeout(this.ticketTimer);
    try {
      await this.member.announceAndWait(EnvelopeKind.Unsubscribe);
    } catch (err) {
      this.log.warn('session cache: unsubscribe not sent', { error: describe(err) });
    }
    this.closed = true;
    for (const s of [...this.servers.values()]) s.detach();
    await this.member.close();
    this.store.clear();
    this.tickets.clear();
    this.sealed?.ring.destroy();
  }
}

function endpoint(name: string, text: string, bindable = false): Endpoint {
  const ep = parseEndpoint(text, bindable);
  if (typeof ep === 'string') throw new ConfigError(`${name} ${ep}`);
  return ep;
}

// The cluster bus by identity (serve --identity --peers --cluster): no shared
// bus key. Each repeater draws a bus sending key per start, hands it to each
// role=repeater identity of its peers file in a signed key announcement
// (wire/bus-key.ts, crypto/bus-key-seal.ts) and seals its bus frames with
// it through a SecureSession (origin, sequence, replay windows, start fence:
// crypto/session.ts). docs/PROTOCOL.md, "The cluster bus with identities".
//
// Invariants:
// - A frame opens only under a sending key that a listed role=repeater
//   identity handed us, and its origin is believed only if it is the origin
//   that identity announced with that key. So only a repeater's key speaks
//   on the bus (heartbeats, subscriber announcements, state answers, ticket
//   keys): a node identity's announcement is refused (`not_repeater`) and
//   its frames are under a key nobody installed (`unknown_key`).
// - The table of sending keys is keyed by listed repeater identity only
//   (an unlisted or node identity never gets an entry): bounded by the
//   peers file; each entry keeps at most its previous key, for 2 s.
// - A reload that removes a repeater (or makes it a node) drops its key at
//   once (its frames and announcements: `revoked`, for 10 minutes), forgets
//   it as a peer, and draws a new sending key, announced to the remaining
//   repeaters only: the revoked one cannot open what follows.
// - An announcement that brings a key we did not hold is answered with ours
//   (a token bucket: 4, then 1 a second; one pending answer at most), so a
//   repeater that starts later learns every key at once; every announcement
//   is also repeated every 10 s (core NATS may lose one).

import { randomBytes } from 'node:crypto';
import type { Logger } from '../base/log.js';
import type { PeerTable } from '../config/peers-file.js';
import { busKeySigned, openBusKey, writeBusKey } from '../crypto/bus-key-seal.js';
import type { Identity } from '../crypto/identity.js';
import { formatKeyId, keyIdOf, type KeyLookup, type RingKey } from '../crypto/keyring.js';
import { BoxKey } from '../crypto/secretbox.js';
import { SecureSession } from '../crypto/session.js';
import { decodeBusKey, isBusKey, MAX_RECIPIENTS } from '../wire/bus-key.js';
import { type Envelope, EnvelopeKind, Role } from '../wire/envelope.js';
import { frameKeyId } from '../wire/frame.js';
import type { BusSealer, SealHost } from './bus-seal.js';

/** How long a revoked repeater's key and id are refused as `revoked` (then unknown). */
const REVOKED_MS = 10 * 60_000;
/** At most this many revoked keys and ids remembered (the oldest go first). */
const REVOKED_MAX = 4096;
/** How long a repeater's previous key still opens after it announced a new one (frames in flight). */
const PREVIOUS_KEY_MS = 2_000;
const REANNOUNCE_MS = 10_000;
const ANSWER_BURST = 4;
const ANSWER_EVERY_MS = 1_000;

interface HeldKey {
  readonly ring: RingKey;
  readonly owner: Entry;
  /** Opens until then (a replaced key); Infinity: the owner's current key. */
  until: number;
}

interface Entry {
  readonly idHex: string;
  name: string;
  /** The listed public key (hex) it was learnt under: a key replaced in the peers file is a revocation. */
  readonly keyHex: string;
  origin: bigint;
  current: HeldKey;
  previous: HeldKey | null;
  /** The newest announcement taken (its sender's clock): older ones are replays. */
  lastSentAtMs: number;
}

export class IdentityBusSeal implements BusSealer {
  private readonly session = new SecureSession(Role.Repeater, { peer: Role.Repeater });
  private sending: RingKey;
  private sendingKey: Uint8Array;
  private readonly entries = new Map<string, Entry>();
  private readonly byKeyId = new Map<number, HeldKey>();
  private readonly revokedKeys = new Map<number, number>();
  private readonly revokedIds = new Map<string, number>();
  private host: SealHost | null = null;
  private tokens = ANSWER_BURST;
  private tokensAt = Date.now();
  private pending: NodeJS.Timeout | null = null;
  private periodic: NodeJS.Timeout | null = null;
  private readonly lookup: KeyLookup;
  private lastSentAtMs = 0;

  constructor(
    private readonly identity: Identity,
    private peers: PeerTable,
    private maxSkewMs: number,
    private readonly log: Logger,
  ) {
    this.sendingKey = new Uint8Array(randomBytes(32));
    this.sending = IdentityBusSeal.ringKey(this.sendingKey, 'our bus sending key');
    const self = this;
    this.lookup = {
      get sealing(): RingKey {
        return self.sending;
      },
      get: (id) => {
        const held = this.byKeyId.get(id);
        return held !== undefined && held.until > Date.now() ? held.ring : undefined;
      },
    };
  }

  private static ringKey(key: Uint8Array, file: string): RingKey {
    return { id: keyIdOf(key), file, box: new BoxKey(key) };
  }

  get origin(): bigint {
    return this.session.origin;
  }

  attach(host: SealHost): void {
    this.host = host;
    host.whenConnected(() => this.announce());
    this.periodic = setInterval(() => this.announce(), REANNOUNCE_MS);
    this.periodic.unref();
  }

  /** The repeaters our key goes to: every listed role=repeater identity but us. */
  private recipients() {
    // At most MAX_RECIPIENTS, the first in file order (a cluster tracks 64 peers: cluster/peers.ts).
    return this.peers.withRole('repeater').filter((p) => p.key.idHex !== this.identity.peer.idHex).slice(0, MAX_RECIPIENTS).map((p) => p.key);
  }

  /** Publishes our sending key for every listed repeater. */
  announce(): void {
    if (this.host === null) return;
    // Strictly increasing: a receiver takes only a newer announcement than the last (a new key within the same ms included).
    this.lastSentAtMs = Math.max(Date.now(), this.lastSentAtMs + 1);
    const payload = writeBusKey(this.identity, this.recipients(), this.sendingKey, this.session.origin, this.lastSentAtMs);
    if (this.host.publish(payload)) this.host.count('published', 'bus_key');
  }

  /** An answer to a newcomer, within the token bucket; otherwise one answer when a token is back. */
  private answer(): void {
    const now = Date.now();
    this.tokens = Math.min(ANSWER_BURST, this.tokens + (now - this.tokensAt) / ANSWER_EVERY_MS);
    this.tokensAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      this.announce();
      return;
    }
    if (this.pending !== null) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.answer();
    }, Math.ceil((1 - this.tokens) * ANSWER_EVERY_MS));
    this.pending.unref();
  }

  seal(message: Uint8Array): Buffer | null {
    return this.session.seal(this.lookup, { kind: EnvelopeKind.Bus, channelKey: '', datagram: null, address: null, bus: message });
  }

  /** A sealed bus frame (the Envelope, or why not), or a key announcement (null once taken, or why not). */
  open(frame: Buffer): Envelope | string | null {
    if (isBusKey(frame)) return this.takeAnnouncement(frame);
    const id = frameKeyId(frame);
    if (typeof id === 'number' && this.lookup.get(id) === undefined) return this.isRevoked(this.revokedKeys, id) ? 'revoked' : 'unknown_key';
    const env = this.session.open(this.lookup, frame, this.maxSkewMs);
    if (typeof env === 'string') return env;
    // The origin its owner announced with this key: no repeater speaks for another.
    if (env.origin !== this.byKeyId.get(id as number)?.owner.origin) return 'wrong_origin';
    return env.kind === EnvelopeKind.Bus ? env : 'bad_payload';
  }

  private isRevoked<K>(m: Map<K, number>, k: K): boolean {
    const until = m.get(k);
    return until !== undefined && until > Date.now();
  }

  /** The checks of docs/PROTOCOL.md, in order, cheapest first; null when the key was taken. */
  private takeAnnouncement(frame: Buffer): string | null {
    const a = decodeBusKey(frame);
    if (typeof a === 'string') return a;
    if (a.senderIdHex === this.identity.peer.idHex) return null;
    const peer = this.peers.byId(a.senderIdHex);
    if (peer === undefined) return this.isRevoked(this.revokedIds, a.senderIdHex) ? 'revoked' : 'unknown_peer';
    // The role is the key's, from our own peers file: a node's key never speaks on the bus.
    if (peer.role !== 'repeater') {
      this.log.throttle('warn', `bus-not-repeater:${peer.name}`, 'cluster bus: a key announcement from an identity not listed role=repeater; refused', { peer: peer.name }, 30_000);
      return 'not_repeater';
    }
    const now = Date.now();
    if (Math.abs(now - a.sentAtMs) > this.maxSkewMs) return 'stale';
    const known = this.entries.get(a.senderIdHex);
    if (known !== undefined && a.sentAtMs <= known.lastSentAtMs) return 'replay';
    if (!busKeySigned(a, peer.key)) return 'auth_failed';
    const key = openBusKey(this.identity, peer.key, a);
    if (typeof key === 'string') return key;
    if (a.origin === this.session.origin || [...this.entries.values()].some((e) => e !== known && e.origin === a.origin)) {
      key.fill(0);
      return 'bad_payload';
    }
    this.host?.count('received', 'bus_key');
    const fresh = this.install(peer.name, peer.key.hex, a.senderIdHex, a.origin, a.sentAtMs, key);
    key.fill(0);
    // A key we did not hold: its sender may not hold ours either (it started, or rekeyed).
    if (fresh) this.answer();
    return null;
  }

  /** True when `key` is new for that identity. */
  private install(name: string, keyHex: string, idHex: string, origin: bigint, sentAtMs: number, key: Uint8Array): boolean {
    const keyId = keyIdOf(key);
    const e = this.entries.get(idHex);
    if (e !== undefined && e.current.ring.id === keyId) {
      e.lastSentAtMs = sentAtMs;
      e.origin = origin;
      return false;
    }
    const ring = IdentityBusSeal.ringKey(key, `bus key of ${name}`);
    if (e === undefined) {
      const entry: Entry = { idHex, name, keyHex, origin, current: null as unknown as HeldKey, previous: null, lastSentAtMs: sentAtMs };
      entry.current = { ring, owner: entry, until: Infinity };
      this.entries.set(idHex, entry);
      this.byKeyId.set(keyId, entry.current);
      this.log.info('cluster bus: a repeater\'s key learnt', { peer: name, key: formatKeyId(keyId) });
      return true;
    }
    this.drop(e.previous);
    e.previous = e.current;
    e.previous.until = Date.now() + PREVIOUS_KEY_MS;
    e.current = { ring, owner: e, until: Infinity };
    e.origin = origin;
    e.lastSentAtMs = sentAtMs;
    this.byKeyId.set(keyId, e.current);
    this.log.info('cluster bus: a repeater\'s new key learnt', { peer: name, key: formatKeyId(keyId) });
    return true;
  }

  private drop(held: HeldKey | null): void {
    if (held === null) return;
    if (this.byKeyId.get(held.ring.id) === held) this.byKeyId.delete(held.ring.id);
    held.ring.box.destroy();
  }

  private remember<K>(m: Map<K, number>, k: K, now: number): void {
    m.delete(k);
    m.set(k, now + REVOKED_MS);
    for (const [old, until] of m) if (m.size > REVOKED_MAX || until <= now) m.delete(old);
  }

  /**
   * A reload's peers table (after the rest of the config applied). Repeaters
   * no longer listed as such are revoked: keys dropped, forgotten as peers,
   * and our own sending key replaced so they cannot open what follows.
   */
  usePeers(next: PeerTable, maxSkewMs: number): void {
    this.maxSkewMs = maxSkewMs;
    const prev = this.peers;
    this.peers = next;
    if (next === prev) return;
    const now = Date.now();
    const stillRepeater = (hex: string) => next.get(hex)?.role === 'repeater';
    for (const e of [...this.entries.values()]) {
      const listed = next.get(e.keyHex);
      if (listed !== undefined && listed.role === 'repeater') {
        e.name = listed.name;
        continue;
      }
      this.entries.delete(e.idHex);
      for (const held of [e.current, e.previous]) {
        if (held === null) continue;
        this.remember(this.revokedKeys, held.ring.id, now);
        this.drop(held);
      }
      if (listed === undefined) this.remember(this.revokedIds, e.idHex, now);
      this.host?.forget(e.origin);
      this.log.info('cluster bus: a repeater revoked; its key dropped', { peer: e.name });
    }
    const revoked = prev.withRole('repeater').some((p) => !stillRepeater(p.key.hex));
    const added = next.withRole('repeater').some((p) => prev.get(p.key.hex)?.role !== 'repeater');
    if (revoked) {
      // What we seal from now on is for the repeaters still listed only.
      this.sendingKey.fill(0);
      this.sending.box.destroy();
      this.sendingKey = new Uint8Array(randomBytes(32));
      this.sending = IdentityBusSeal.ringKey(this.sendingKey, 'our bus sending key');
      this.log.info('cluster bus: a new sending key, for the repeaters still listed', { key: formatKeyId(this.sending.id) });
    }
    if (revoked || added) this.announce();
  }

  /** Our sending key's id first, then each repeater's (never the keys). */
  keyIds(): string[] {
    return [formatKeyId(this.sending.id), ...[...this.entries.values()].map((e) => `${e.name}:${formatKeyId(e.current.ring.id)}`)];
  }

  dispose(): void {
    if (this.pending !== null) clearTimeout(this.pending);
    if (this.periodic !== null) clearInterval(this.periodic);
    for (const e of this.entries.values()) {
      this.drop(e.current);
      this.drop(e.previous);
    }
    this.entries.clear();
    this.sendingKey.fill(0);
    this.sending.box.destroy();
  }
}

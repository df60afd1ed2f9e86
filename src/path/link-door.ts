// Identity mode on the repeater's sealed listeners (docs/PROTOCOL.md,
// "Identities and links"): the responder's side of the link handshake over
// the real listener, the frames agents send under their link keys, and the
// seal of everything sent to a linked subscriber under that subscriber's link.
//
// Invariants:
// - Only identities the peers file lists with role=node can link (a
//   role=repeater key is not an agent); a HELLO from outside a peer's allow=
//   is refused before any crypto (not_allowed).
// - Every handshake table is keyed by listed identities (crypto/link-responder.ts):
//   bounded by the peers file, whatever spoofed HELLOs arrive; an unlisted
//   identity costs a map lookup and is counted (unknown_peer).
// - A frame is believed once it opened under a link's receive key and passed
//   that link's counter window: a frame of another link, of a link from
//   before either side restarted, or replayed from any source is refused.
// - A linked subscriber is the identity's: its entry carries the identity's
//   origin (originOf), so every copy for it is sealed under that identity's
//   current link, and none once the identity is revoked (commit).
// - Live datagrams are sealed once per channel key under its group key for
//   the members that acknowledged it, and under the member's own link key
//   for the others (group-keys.ts, out-door.ts). Everything else for one
//   member (MEMBERSHIP, GROUP_KEY, ticket keys: link-tickets.ts) only ever
//   under that member's link key, never anything a node could seal.

import { type PeerRow, PeerStats } from '../base/peer-stats.js';
import { DropSlot, type DropReason } from '../base/stats.js';
import type { PeerTable } from '../config/peers-file.js';
import type { Identity, PeerKey } from '../crypto/identity.js';
import { stageForLinks } from '../crypto/link-keys.js';
import type { Staged } from '../crypto/secretbox.js';
import { type Link, LinkResponder, REVOKED_MEMORY_MS } from '../crypto/link-responder.js';
import { AccessList } from '../judge/access-list.js';
import type { Source } from '../net/io.js';
import { bigintToLong, decodeEnvelope, encodeEnvelope, type Envelope, EnvelopeKind, type GroupKeyFields, Role } from '../wire/envelope.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { DATA_OVERHEAD, decodeDataHeader, decodeHello, linkTypeOf, LinkType } from '../wire/handshake.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { Channel, SealingInput, Subscriber } from './channel.js';
import { GroupKeys, groupScope } from './group-keys.js';

/** Where a handshake answer or a control frame goes: the source the agent sent from (its one port). */
export type Reply = (frame: Buffer, to: Source) => void;

/** What the door tells the daemon (logs). */
export interface LinkEvents {
  linked(peer: string, address: string): void;
  revoked(peers: readonly string[], subscribers: number): void;
}

interface Listed {
  readonly name: string;
  readonly key: PeerKey;
  readonly allow: AccessList | null;
}

/** The origin a linked identity's frames and subscriber entries carry: its identity id, never 0. */
export function originOf(peer: PeerKey): bigint {
  const o = Buffer.from(peer.id).readBigUInt64LE(0);
  return o === 0n ? 1n : o;
}

const HANDSHAKE_DROPS: Readonly<Record<string, DropReason>> = { not_link: 'unsealed', bad_type: 'unknown_type', bad_key: 'auth_failed' };

export class LinkDoor {
  private readonly responder: LinkResponder;
  private byId = new Map<string, Listed>();
  private byOrigin = new Map<bigint, Listed>();
  /** Links seen confirmed (logged once each). */
  private readonly announced = new WeakSet<Link>();
  /** The channels' group keys and which links hold them (group-keys.ts). */
  readonly groups = new GroupKeys();
  private sequence = 0;
  private readonly originLong: ReturnType<typeof bigintToLong>;
  /** Peers the next commit installs (staged by the reload before anything is swapped). */
  private staged: PeerTable | null = null;
  /** Frames sealed under links (one per copy for a linked subscriber not holding the group key, each MEMBERSHIP and GROUP_KEY). */
  framesSealed = 0;
  /** Group frames sealed (one per live datagram per channel key whose group key someone holds). */
  groupFramesSealed = 0;
  /** The running peers file's fingerprint. */
  fingerprint = '';
  /** Per listed identity: last seen, refusals pinned on it (base/peer-stats.ts); bounded by the peers file. */
  readonly peers = new PeerStats(REVOKED_MEMORY_MS);
  /** Identity ids (hex) and link ids of identities removed lately -> their name and until when; bounded by the removed peers. */
  private readonly revokedNames = new Map<string | number, { name: string; untilMs: number }>();

  constructor(
    identity: Identity,
    private readonly events: LinkEvents,
    private readonly maxSkewMs: () => number,
  ) {
    this.responder = new LinkResponder(identity, []);
    this.originLong = bigintToLong(originOf(identity.peer));
    this.publicKey = identity.publicText;
  }

  /** This repeater's own public key (`urid1...`). */
  readonly publicKey: string;

  /** The table the next commit installs: checked already (a bad file never reaches here). */
  stage(table: PeerTable): void {
    this.staged = table;
  }

  /**
   * Installs the staged peers. A node key no longer listed is revoked: its
   * links dropped and their keys zeroed (crypto/link-responder.ts), its
   * subscriptions removed from every channel. Nothing is sealed for it
   * after this returns. Returns the names revoked.
   */
  commit(channels: Iterable<Channel>, nowMs = Date.now()): string[] {
    const table = this.staged;
    if (table === null) return [];
    this.staged = null;
    this.fingerprint = table.fingerprint;
    this.peers.list(
      table.list().map((p) => ({ name: p.name, role: p.role, key: p.key.text, allow: p.allow })),
      nowMs,
    );
    const nodes = table.withRole('node');
    const before = this.byId;
    const dropped = this.responder.setPeers(
      nodes.map((p) => p.key),
      nowMs,
    );
    const untilMs = nowMs + REVOKED_MEMORY_MS;
    for (const l of dropped) {
      const name = before.get(l.peer.idHex)?.name;
      if (name !== undefined) this.revokedNames.set(l.cipher.secrets.localLink, { name, untilMs });
    }
    const next = new Map<string, Listed>();
    for (const p of nodes) next.set(p.key.idHex, { name: p.name, key: p.key, allow: p.allow.length === 0 ? null : new AccessList(p.allow) });
    const gone: Listed[] = [];
    for (const [id, l] of this.byId) if (next.get(id)?.key.hex !== l.key.hex) gone.push(l);
    for (const l of gone) this.revokedNames.set(l.key.idHex, { name: l.name, untilMs });
    for (const id of next.keys()) this.revokedNames.delete(id);
    this.byId = next;
    this.byOrigin = new Map([...next.values()].map((l) => [originOf(l.key), l] as const));
    const origins = new Set(gone.map((l) => originOf(l.key)));
    let removed = 0;
    if (origins.size > 0) {
      for (const ch of channels) {
        for (const e of [...ch.sealed.values()]) {
          if (e.origin !== null && origins.has(e.origin) && !this.byOrigin.has(e.origin)) {
            ch.sealed.remove(e.endpoint.text);
            removed++;
          }
        }
      }
    }
    const names = gone.map((l) => l.name);
    // A revocation replaces every group key before the reload returns (group-keys.ts).
    if (names.length > 0) this.groups.rotate();
    else this.groups.linksChanged();
    if (names.length > 0) this.events.revoked(names, removed);
    return names;
  }

  /** The peers-file name of the identity a linked subscriber belongs to (null: none listed). */
  nameOf(origin: bigint | null): string | null {
    return origin === null ? null : (this.byOrigin.get(origin)?.name ?? null);
  }

  /** True when `origin` is a listed identity's: its subscribers are sealed for under its link, never under the shared key. */
  owns(origin: bigint | null): boolean {
    return origin !== null && this.byOrigin.has(origin);
  }

  /** Identities with a confirmed link now. */
  get links(): number {
    let n = 0;
    for (const l of this.byId.values()) if (this.responder.linkOf(l.key) !== null) n++;
    return n;
  }

  /** Forgets unconfirmed links past their time, and removed identities past their revoked window (the sweep). */
  expire(nowMs: number): void {
    this.responder.expire(nowMs);
    for (const [id, r] of this.revokedNames) if (r.untilMs <= nowMs) this.revokedNames.delete(id);
  }

  /** A refusal of what `origin`'s identity sent, decided above the path (the desk's owner_conflict). */
  refusedFor(origin: bigint | null, reason: DropReason): void {
    const l = origin === null ? undefined : this.byOrigin.get(origin);
    if (l !== undefined) this.peers.refused(l.name, reason);
  }

  /** Every listed identity (and those removed within their revoked window), and whether it has a link now. */
  peerView(nowMs = Date.now()): Array<{ row: PeerRow; linked: boolean }> {
    const byName = new Map([...this.byId.values()].map((l) => [l.name, l] as const));
    return this.peers.view(nowMs).map((row) => {
      const l = byName.get(row.name);
      return { row, linked: row.revokedUntilMs === 0 && l !== undefined && l.key.text === row.key && this.responder.linkOf(l.key) !== null };
    });
  }

  /** The name a refused frame can be pinned on: a listed identity (or one removed lately) it names or whose link it came under. */
  private whose(msg: Buffer, t: number): string | null {
    if (t === LinkType.Hello) {
      const h = decodeHello(msg);
      if (typeof h === 'string') return null;
      const idHex = Buffer.from(h.identityId).toString('hex');
      return this.byId.get(idHex)?.name ?? this.revokedNames.get(idHex)?.name ?? null;
    }
    if (t !== LinkType.LinkData) return null;
    const d = decodeDataHeader(msg);
    if (typeof d === 'string') return null;
    const peer = this.responder.peerOfLink(d.id);
    return peer !== null ? (this.byId.get(peer.idHex)?.name ?? null) : (this.revokedNames.get(d.id)?.name ?? null);
  }

  /**
   * A datagram on a sealed listener: a HELLO is answered (a WELCOME to its
   * source) and null returned; a link frame that opens is returned as the
   * envelope it holds, its origin the identity's. Every refusal is counted.
   */
  open(ch: Channel, msg: Buffer, from: Source, reply: Reply, nowMs = Date.now()): Envelope | null {
    const t = linkTypeOf(msg);
    if (t === LinkType.Hello) {
      this.hello(ch, msg, from, reply, nowMs);
      return null;
    }
    if (typeof t === 'string' || t !== LinkType.LinkData) return this.drop(ch, typeof t === 'string' ? t : 'bad_type');
    const r = this.responder.open(msg, nowMs);
    if (typeof r === 'string') return this.drop(ch, r, this.whose(msg, t));
    const listed = this.byId.get(r.link.peer.idHex);
    if (listed === undefined) return this.drop(ch, 'revoked', this.whose(msg, t));
    if (listed.allow !== null && !listed.allow.allows(from.address)) return this.drop(ch, 'not_allowed', listed.name);
    const env = decodeEnvelope(r.plain);
    if (typeof env === 'string') return this.drop(ch, env, listed.name);
    if (env.role !== Role.Agent) return this.drop(ch, 'wrong_role', listed.name);
    if (Math.abs(nowMs - env.sentAtMs) > this.maxSkewMs()) return this.drop(ch, 'stale', listed.name);
    this.peers.seen(listed.name, nowMs);
    if (!this.announced.has(r.link)) {
      this.announced.add(r.link);
      this.groups.linksChanged();
      this.events.linked(listed.name, `${from.address}:${from.port}`);
    }
    // The member holds the group key it names: from now on it gets group frames.
    if (env.kind === EnvelopeKind.GroupKeyAck) {
      this.groups.ack(r.link, groupScope(ch.name, env.channelKey), env.groupKeyAck!);
      return null;
    }
    // Every SUBSCRIBE is answered under the link: the agent's sign that its link is alive;
    // with the channel's group key until the member acknowledged it.
    if (env.kind === EnvelopeKind.Subscribe) {
      const m = this.encode({ kind: EnvelopeKind.Membership, channelKey: env.channelKey, memberFrom: 1, receiver: env.address! }, nowMs);
      reply(r.link.cipher.seal(m), from);
      this.framesSealed++;
      const g = ch.key === null || ch.key === env.channelKey ? this.groupKeyFor(r.link, ch.name, env.channelKey, nowMs) : null;
      if (g !== null) reply(g, from);
    }
    return { ...env, origin: originOf(r.link.peer), receiver: '' };
  }

  private hello(ch: Channel, msg: Buffer, from: Source, reply: Reply, nowMs: number): void {
    const h = decodeHello(msg);
    if (typeof h !== 'string') {
      const listed = this.byId.get(Buffer.from(h.identityId).toString('hex'));
      if (listed?.allow != null && !listed.allow.allows(from.address)) {
        this.drop(ch, 'not_allowed', listed.name);
        return;
      }
    }
    const r = this.responder.hello(msg, nowMs);
    if (typeof r === 'string') {
      this.drop(ch, r, r === 'unknown_peer' ? null : this.whose(msg, LinkType.Hello));
      return;
    }
    reply(Buffer.from(r.welcome), from);
  }

  /** Counts a refusal on the channel, and on the identity it can be pinned on (`peer`), if any. */
  private drop(ch: Channel, reason: string, peer: string | null = null): null {
    const r = (HANDSHAKE_DROPS[reason] ?? reason) as DropReason;
    const slot = DropSlot[r] ?? DropSlot.bad_payload;
    ch.stats.dropped[slot]++;
    if (peer !== null) this.peers.refused(peer, DropSlot[r] === undefined ? 'bad_payload' : r);
    return null;
  }

  private encode(f: { kind: EnvelopeKind; channelKey: string; datagram?: Buffer | null; trace?: SealingInput['trace']; memberFrom?: number; receiver?: string; tickets?: readonly TicketKey[]; groupKey?: GroupKeyFields }, nowMs: number): Uint8Array {
    return encodeEnvelope(
      {
        kind: f.kind,
        channelKey: f.channelKey,
        sequence: ++this.sequence,
        sentAtMs: nowMs,
        role: Role.Repeater,
        datagram: f.datagram ?? null,
        trace: f.trace ?? null,
        address: null,
        receiver: f.receiver ?? '',
        ...(f.memberFrom === undefined ? {} : { memberFrom: f.memberFrom }),
        ...(f.tickets === undefined ? {} : { tickets: f.tickets }),
        ...(f.groupKey === undefined ? {} : { groupKey: f.groupKey }),
      },
      this.originLong,
    );
  }

  /**
   * The fleet's ticket keys for the linked members of one key: encoded once,
   * sealed per link (sealFor), that is under each member's k_ri alone, a key
   * no node holds but the member itself. Null when too large.
   */
  tickets(channelKey: string, keys: readonly TicketKey[], nowMs = Date.now()): Uint8Array | null {
    const plain = this.encode({ kind: EnvelopeKind.TicketKeys, channelKey, tickets: keys }, nowMs);
    return plain.length + DATA_OVERHEAD > MAX_UDP_PAYLOAD ? null : plain;
  }

  /** A cache datagram's envelope for the linked subscribers of one key: encoded once, sealed per link (sealFor); null when too large. */
  datagram(channelKey: string, input: SealingInput, nowMs = Date.now()): Uint8Array | null {
    const plain = this.encode({ kind: EnvelopeKind.CacheDatagram, channelKey, datagram: input.content, trace: input.trace }, nowMs);
    return plain.length + DATA_OVERHEAD > MAX_UDP_PAYLOAD ? null : plain;
  }

  /** `plain` sealed under the link of the identity `e` belongs to; null when it has none (not linked, or revoked). */
  sealFor(e: Subscriber, plain: Uint8Array): Buffer | null {
    return this.sealStagedFor(e, stageForLinks(plain));
  }

  /**
   * One plaintext for several links (OutDoor.live): copied into the sealing
   * scratch once by stagePlain(), then sealed per member by sealStagedFor()
   * in the same synchronous run (any other seal or open in between discards it).
   */
  stagePlain(plain: Uint8Array): Staged {
    return stageForLinks(plain);
  }

  /** The staged plaintext sealed under `e`'s link; null when it has none. */
  sealStagedFor(e: Subscriber, staged: Staged): Buffer | null {
    const link = this.linkOf(e);
    if (link === null) return null;
    this.framesSealed++;
    return link.cipher.sealStaged(staged);
  }

  /** The confirmed link of the identity `e` belongs to; null when none (not linked, or revoked). */
  linkOf(e: Subscriber): Link | null {
    const listed = e.origin === null ? undefined : this.byOrigin.get(e.origin);
    return listed === undefined ? null : this.responder.linkOf(listed.key);
  }

  /** A GROUP_KEY for `link` (channel key `channelKey` of `channel`), sealed under the link; null when it holds the current key already. */
  groupKeyFor(link: Link, channel: string, channelKey: string, nowMs = Date.now()): Buffer | null {
    const groupKey = this.groups.offer(link, groupScope(channel, channelKey));
    if (groupKey === null) return null;
    this.framesSealed++;
    return link.cipher.seal(this.encode({ kind: EnvelopeKind.GroupKey, channelKey, groupKey }, nowMs));
  }
}

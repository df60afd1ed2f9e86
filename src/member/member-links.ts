// Identity mode for a channel member (docs/PROTOCOL.md, "Identities and
// links"): the initiator's side of the link handshake with each repeater,
// and every frame to and from it under that link's keys.
//
// Invariants:
// - A repeater is trusted only by a key the peers file lists with
//   role=repeater (narrowed by its allow= to the repeater's address when
//   given): a WELCOME that opens under none of them makes no link. A
//   role=node line is never a candidate (trustedRepeaters): no HELLO is
//   made for it, so a node key can never become a link, nor speak as a
//   repeater over one (membership, ticket keys).
// - Nothing from a repeater is believed before it opened under the current
//   link's receive key and passed its counter window; a frame of another
//   link (another agent's, or from before a restart of either side) does not
//   open (unknown_link / auth_failed).
// - A new handshake starts when the link is missing or unanswered for two
//   announce intervals (the repeater answers every SUBSCRIBE under the link);
//   until the new link is up the old one keeps being used.
// - State is one entry per configured repeater: nothing here grows with
//   what arrives.

import { randomBytes } from 'node:crypto';
import { type PeerRow, PeerStats } from '../base/peer-stats.js';
import type { DropReason } from '../base/stats.js';
import type { Identity, PeerKey } from '../crypto/identity.js';
import { LinkInitiator } from '../crypto/link-initiator.js';
import { REVOKED_MEMORY_MS } from '../crypto/link-responder.js';
import type { LinkCipher } from '../crypto/link-keys.js';
import { AccessList } from '../judge/access-list.js';
import { MemberGroups } from './member-groups.js';
import type { Endpoint } from '../wire/address.js';
import { bigintToLong, decodeEnvelope, encodeEnvelope, type Envelope, EnvelopeKind, type GroupKeyAckFields, Role } from '../wire/envelope.js';
import { MAX_UDP_PAYLOAD } from '../wire/frame.js';
import { DATA_OVERHEAD } from '../wire/handshake.js';
import type { TraceFields } from '../wire/trace.js';

/** A repeater the agent trusts: a role=repeater line of its peers file. */
export interface RepeaterPeer {
  readonly name: string;
  readonly key: PeerKey;
  /** Canonical CIDRs; empty: any address. */
  readonly allow: readonly string[];
}

/** A line of the member's peers file (config/peers-file.ts Peer), as far as the member reads it. */
export interface ListedPeer extends RepeaterPeer {
  readonly role: 'node' | 'repeater';
}

/** The repeaters a member may link to: the role=repeater lines, and only those. */
export function trustedRepeaters(listed: readonly ListedPeer[]): RepeaterPeer[] {
  return listed.filter((p) => p.role === 'repeater').map((p) => ({ name: p.name, key: p.key, allow: p.allow }));
}

interface RepeaterState {
  /** One handshake per candidate key (the keys whose allow= admits this repeater's address). */
  initiators: Array<{ peer: RepeaterPeer; init: LinkInitiator }>;
  cipher: LinkCipher | null;
  /** The name of the identity the link is with. */
  peer: string | null;
  helloAt: number;
  /** When the link was made, and when an authentic frame last came under it. */
  linkedAt: number;
  answeredAt: number;
}

const HANDSHAKE_DROPS: Readonly<Record<string, DropReason>> = { not_link: 'unsealed', bad_type: 'unknown_type', bad_key: 'auth_failed' };

/** A refusal as the member counts it. */
export function linkDrop(reason: string): DropReason {
  return (HANDSHAKE_DROPS[reason] ?? reason) as DropReason;
}

const statsRow = (p: RepeaterPeer) => ({ name: p.name, role: 'repeater', key: p.key.text, allow: p.allow });

export class MemberLinks {
  private readonly originLong: ReturnType<typeof bigintToLong>;
  private sequence = 0;
  private readonly states = new Map<string, RepeaterState>();
  /** The group keys each linked repeater handed over (member-groups.ts). */
  private readonly groups = new MemberGroups();
  private peers: readonly RepeaterPeer[];
  /** Per trusted repeater identity: last seen, refusals pinned on it (base/peer-stats.ts); bounded by the peers file. */
  readonly stats = new PeerStats(REVOKED_MEMORY_MS);

  constructor(
    private readonly identity: Identity,
    listed: readonly ListedPeer[],
  ) {
    this.peers = trustedRepeaters(listed);
    this.stats.list(this.peers.map(statsRow));
    let o = randomBytes(8).readBigUInt64LE(0);
    if (o === 0n) o = 1n;
    this.originLong = bigintToLong(o);
  }

  /** A reload: repeaters whose key is no longer listed as a repeater lose their link and handshakes at once. */
  setPeers(listed: readonly ListedPeer[]): void {
    const peers = trustedRepeaters(listed);
    this.peers = peers;
    this.stats.list(peers.map(statsRow));
    const keys = new Set(peers.map((p) => p.key.hex));
    for (const st of this.states.values()) {
      st.initiators = st.initiators.filter((i) => {
        if (keys.has(i.peer.key.hex)) return true;
        i.init.destroy();
        return false;
      });
      const linkedTo = st.cipher?.secrets.peer.hex;
      if (linkedTo !== undefined && !keys.has(linkedTo)) {
        st.cipher!.destroy();
        st.cipher = null;
        st.peer = null;
      }
    }
    for (const [text, st] of this.states) if (st.cipher === null) this.groups.forget(text);
    // Candidates are chosen again at the next handshake.
    for (const [text, st] of this.states) {
      if (st.cipher !== null) continue;
      for (const i of st.initiators) i.init.destroy();
      this.states.delete(text);
    }
  }

  private state(r: Endpoint): RepeaterState {
    let st = this.states.get(r.text);
    if (st === undefined) {
      const initiators = this.peers
        .filter((p) => p.allow.length === 0 || new AccessList(p.allow).allows(r.host))
        .map((peer) => ({ peer, init: new LinkInitiator(this.identity, peer.key) }));
      st = { initiators, cipher: null, peer: null, helloAt: 0, linkedAt: 0, answeredAt: 0 };
      this.states.set(r.text, st);
    }
    return st;
  }

  /**
   * True when `linkId` (a frame's receiver link id, wire/handshake.ts
   * receiverLinkOf) is ours with `r`: its current link's, or the one its
   * pending handshake's WELCOME echoes. Picks the repeater among several on
   * one host (they send from sockets of their own); the frame is still
   * opened under that link before anything is believed.
   */
  names(r: Endpoint, linkId: number, group = false): boolean {
    if (group) return this.groups.holds(r.text, linkId);
    const st = this.states.get(r.text);
    if (st === undefined || linkId === 0) return false;
    if (st.cipher?.secrets.localLink === linkId) return true;
    return st.initiators.some((i) => i.init.pendingLink === linkId);
  }

  /** The identity name of the repeater's current link, if any. */
  linkedTo(r: Endpoint): string | null {
    return this.states.get(r.text)?.peer ?? null;
  }

  /**
   * HELLOs to send to `r` now: when it has no link, or its link went
   * unanswered for two intervals (at most one round per `intervalMs`).
   */
  hellos(r: Endpoint, channelKey: string, address: string, intervalMs: number, nowMs = Date.now()): Uint8Array[] {
    const st = this.state(r);
    const quiet = st.cipher === null || nowMs - Math.max(st.answeredAt, st.linkedAt) > 2 * intervalMs;
    if (!quiet || nowMs - st.helloAt < Math.min(intervalMs, 1000)) return [];
    st.helloAt = nowMs;
    return st.initiators.map((i) => i.init.hello(nowMs, { channelKey, address }));
  }

  /** A WELCOME from `r`: true when it made the link, else why not. */
  welcome(r: Endpoint, msg: Uint8Array, nowMs = Date.now()): true | DropReason {
    const st = this.states.get(r.text);
    if (st === undefined) return 'unknown_link';
    let why: string = 'unknown_link';
    for (const i of st.initiators) {
      const done = i.init.welcome(msg, nowMs);
      if (typeof done === 'string') {
        if (done !== 'unknown_link') why = done;
        continue;
      }
      st.cipher?.destroy();
      st.cipher = done.cipher;
      st.peer = i.peer.name;
      st.linkedAt = nowMs;
      this.groups.relinked(r.text);
      for (const other of st.initiators) if (other !== i) other.init.abandon();
      return true;
    }
    // Pinned on the repeater identity only when it is the one this address may be.
    if (why !== 'unknown_link' && st.initiators.length === 1) this.stats.refused(st.initiators[0]!.peer.name, linkDrop(why));
    return linkDrop(why);
  }

  /** Every trusted repeater identity (and those removed within their revoked window), and whether a link with it is up now. */
  peerView(nowMs = Date.now()): Array<{ row: PeerRow; linked: boolean }> {
    const up = new Set<string>();
    for (const st of this.states.values()) if (st.cipher !== null && st.peer !== null) up.add(st.cipher.secrets.peer.text);
    return this.stats.view(nowMs).map((row) => ({ row, linked: row.revokedUntilMs === 0 && up.has(row.key) }));
  }

  /** An envelope sealed under `r`'s link; null without a link (or too large). */
  seal(r: Endpoint, f: { kind: EnvelopeKind; channelKey: string; datagram?: Buffer | null; trace?: TraceFields | null; address?: string | null; groupKeyAck?: GroupKeyAckFields }, nowMs = Date.now()): Buffer | null {
    const cipher = this.states.get(r.text)?.cipher ?? null;
    if (cipher === null) return null;
    const plain = encodeEnvelope(
      {
        kind: f.kind,
        channelKey: f.channelKey,
        sequence: ++this.sequence,
        sentAtMs: nowMs,
        role: Role.Agent,
        datagram: f.datagram ?? null,
        trace: f.trace ?? null,
        address: f.address ?? null,
        receiver: r.text,
        ...(f.groupKeyAck === undefined ? {} : { groupKeyAck: f.groupKeyAck }),
      },
      this.originLong,
    );
    if (plain.length + DATA_OVERHEAD > MAX_UDP_PAYLOAD) return null;
    return cipher.seal(plain);
  }

  /** A link frame from `r`: its envelope once it opened under the link and passed the checks, else why not. */
  open(r: Endpoint, msg: Uint8Array, maxSkewMs: number, nowMs = Date.now()): Envelope | DropReason {
    const st = this.states.get(r.text);
    if (st === undefined || st.cipher === null) return 'unknown_link';
    const peer = st.peer ?? '';
    const opened = st.cipher.open(msg);
    if (typeof opened === 'string') return this.refuse(peer, linkDrop(opened));
    const env = decodeEnvelope(opened.plain);
    if (typeof env === 'string') return this.refuse(peer, env);
    if (env.role !== Role.Repeater) return this.refuse(peer, 'wrong_role');
    if (Math.abs(nowMs - env.sentAtMs) > maxSkewMs) return this.refuse(peer, 'stale');
    st.answeredAt = nowMs;
    this.stats.seen(peer, nowMs);
    return env;
  }

  /**
   * A GROUP_KEY that opened under `r`'s link: the acknowledgement to send
   * back under the link, or null (an older key than the one held).
   */
  takeGroupKey(r: Endpoint, env: Envelope, nowMs = Date.now()): Buffer | null {
    const g = env.groupKey!;
    if (this.states.get(r.text)?.cipher == null) return null;
    if (this.groups.take(r.text, g, nowMs) === 'stale') return null;
    return this.seal(r, { kind: EnvelopeKind.GroupKeyAck, channelKey: env.channelKey, groupKeyAck: { keyId: g.keyId, epoch: g.epoch } }, nowMs);
  }

  /** A group frame from `r`: its envelope once it opened under a key `r` handed over and passed the checks (a cache datagram only), else why not. */
  openGroup(r: Endpoint, msg: Uint8Array, maxSkewMs: number, nowMs = Date.now()): Envelope | DropReason {
    const st = this.states.get(r.text);
    if (st === undefined || st.cipher === null) return 'unknown_key';
    const peer = st.peer ?? '';
    const plain = this.groups.open(r.text, msg, nowMs);
    // A key id nobody handed over names no identity: not pinned on the repeater.
    if (plain === 'unknown_key') return plain;
    if (typeof plain === 'string') return this.refuse(peer, linkDrop(plain));
    const env = decodeEnvelope(plain);
    if (typeof env === 'string') return this.refuse(peer, env);
    if (env.role !== Role.Repeater) return this.refuse(peer, 'wrong_role');
    // Under a group key only live datagrams: everything else for a member comes under its own link.
    if (env.kind !== EnvelopeKind.CacheDatagram) return this.refuse(peer, 'unknown_command');
    if (Math.abs(nowMs - env.sentAtMs) > maxSkewMs) return this.refuse(peer, 'stale');
    st.answeredAt = nowMs;
    this.stats.seen(peer, nowMs);
    return env;
  }

  private refuse(peer: string, reason: DropReason): DropReason {
    this.stats.refused(peer, reason);
    return reason;
  }

  destroy(): void {
    this.groups.destroy();
    for (const st of this.states.values()) {
      st.cipher?.destroy();
      for (const i of st.initiators) i.init.destroy();
    }
    this.states.clear();
  }
}

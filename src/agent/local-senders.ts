// Which datagrams on --local come from the node. Loopback is not a trust
// boundary: every local user can send to the agent's --local port, and what
// the agent takes from there it seals and the whole fleet believes. uWSGI
// sends its cache updates from one unbound UDP socket per cache (an
// ephemeral port, fixed for the life of the process), created by the master
// after it dropped privileges, as is the cache-udp-server the agent delivers
// to (SECURITY.md, "Local users on a node host"). So a datagram is the node's when every
// socket that could have sent it (bound to its source port, and to its
// source address or a wildcard) belongs to the node's user: the --node-user
// uids, or else the owner of the socket bound at --deliver.
//
// Invariants:
// - Fail closed: no socket at --deliver, owners that disagree, an owner this
//   user namespace cannot see (the overflow uid), or an unreadable table: the
//   datagram is dropped.
// - Bounded work for a local flood from many ports: verdicts are cached per
//   source port (accepted ones in a small table, refused ones in a larger one,
//   oldest evicted first), and the socket tables are read at most READ_RATE
//   times a second (burst READ_BURST); a datagram that needs a reading when
//   none is left is dropped.
// - A verdict lasts VERDICT_MS: a port the node gave up cannot stay accepted
//   for another user who binds it later. Every reading re-judges every
//   accepted port, so the node's port is never starved of readings by a
//   flood (the flood's own readings keep it fresh).

import type { Logger } from '../base/log.js';
import type { Source } from '../net/io.js';
import { inUserNamespace, OVERFLOW_UID, readUdpSockets, socketsAt, type UdpSocketTable } from '../net/udp-owners.js';
import type { Endpoint } from '../wire/address.js';

export const VERDICT_MS = 1000;
export const READ_RATE = 10;
export const READ_BURST = 10;
const MAX_ACCEPTED = 64;
const MAX_REFUSED = 1024;

interface Verdict {
  address: string;
  ok: boolean;
  at: number;
}

export interface NodePin {
  /** --node-user; null: the owner of the socket at `deliver`. */
  readonly uids: readonly number[] | null;
  /** null: no node on this host (a ticket-keys-only agent): without --node-user nothing is accepted. */
  readonly deliver: Endpoint | null;
}

export class LocalSenders {
  /** Readings of the socket tables. */
  reads = 0;
  /** Datagrams dropped because no reading was left. */
  limited = 0;
  private readonly accepted = new Map<number, Verdict>();
  private readonly refused = new Map<number, Verdict>();
  private tokens = READ_BURST;
  private refilledAt = 0;
  private pinned: readonly number[] = [];
  private pinnedText = '';

  constructor(
    private pin: NodePin,
    private readonly log: Logger,
    private readonly readTable: () => UdpSocketTable = readUdpSockets,
    private readonly userNs = inUserNamespace(),
  ) {}

  /** Verdicts held (bounded: MAX_ACCEPTED + MAX_REFUSED). */
  get cached(): number {
    return this.accepted.size + this.refused.size;
  }

  /** A new --deliver or --node-user: every verdict is judged again. */
  configure(pin: NodePin): void {
    this.pin = pin;
    this.accepted.clear();
    this.refused.clear();
  }

  /** True when `from` is a socket of the node's user; the hot path is one map lookup. */
  judge(from: Source, now = Date.now()): boolean {
    const v = this.accepted.get(from.port) ?? this.refused.get(from.port);
    if (v !== undefined && v.address === from.address && now - v.at < VERDICT_MS) return v.ok;
    if (!this.take(now)) {
      this.limited++;
      return false;
    }
    return this.read(from, now);
  }

  private take(now: number): boolean {
    this.tokens = Math.min(READ_BURST, this.tokens + ((now - this.refilledAt) * READ_RATE) / 1000);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }

  private read(from: Source, now: number): boolean {
    let table: UdpSocketTable;
    try {
      table = this.readTable();
    } catch (err) {
      this.log.throttle('error', 'local-senders-read', 'cannot read the socket tables (/proc/self/net/udp): nothing on --local is accepted', { error: (err as Error).message }, 60_000);
      return false;
    }
    this.reads++;
    this.pinned = this.pinnedUids(table);
    for (const [port, v] of this.accepted) {
      v.ok = this.owned(table, v.address, port);
      v.at = now;
      if (!v.ok) {
        this.accepted.delete(port);
        this.remember(this.refused, MAX_REFUSED, port, v);
      }
    }
    const ok = this.owned(table, from.address, from.port);
    this.accepted.delete(from.port);
    this.refused.delete(from.port);
    this.remember(ok ? this.accepted : this.refused, ok ? MAX_ACCEPTED : MAX_REFUSED, from.port, { address: from.address, ok, at: now });
    if (!ok) {
      const owners = [...new Set(socketsAt(table, from.address, from.port).map((e) => e.uid))];
      const fields = { source: `${from.address}:${from.port}`, owners, node: this.pinned, ...(owners.length === 0 ? { why: 'no such socket: closed before it could be looked up' } : {}) };
      this.log.throttle('warn', 'local-not-node', 'datagram on --local from a socket the node does not own; dropped', fields, 10_000);
    }
    return ok;
  }

  private remember(map: Map<number, Verdict>, max: number, port: number, v: Verdict): void {
    if (map.size >= max) map.delete(map.keys().next().value!);
    map.set(port, v);
  }

  private owned(table: UdpSocketTable, address: string, port: number): boolean {
    if (this.pinned.length === 0) return false;
    const senders = socketsAt(table, address, port);
    return senders.length > 0 && senders.every((e) => this.pinned.includes(e.uid));
  }

  /** The uids whose sockets may send (empty: none may), logged when they change. */
  private pinnedUids(table: UdpSocketTable): readonly number[] {
    let uids: readonly number[];
    let why: string | null = null;
    if (this.pin.uids !== null) {
      uids = this.pin.uids;
    } else {
      const d = this.pin.deliver;
      const owners = d === null ? [] : [...new Set(socketsAt(table, d.host, d.port).map((e) => e.uid))];
      uids = owners.length === 1 ? owners : [];
      if (d === null) why = 'no --deliver and no --node-user: no node on this host sends to --local';
      else if (owners.length === 0) why = 'no socket is bound at --deliver (is the node running?)';
      else if (owners.length > 1) why = `sockets of several users (${owners.join(', ')}) are bound at --deliver: set --node-user`;
    }
    if (this.userNs && uids.includes(OVERFLOW_UID)) {
      uids = uids.filter((u) => u !== OVERFLOW_UID);
      why = `uid ${OVERFLOW_UID} stands for every user this user namespace does not map (systemd PrivateUsers=yes?): run the agent outside one`;
    }
    const text = uids.join(',');
    if (why !== null) {
      this.log.throttle('error', 'local-senders-pin', 'cannot tell the node from other local users: nothing on --local is accepted', { reason: why, deliver: this.pin.deliver?.text ?? null }, 60_000);
    } else if (text !== this.pinnedText) {
      this.log.info('accepting datagrams on --local from the node user only', { uids, from: this.pin.uids === null ? '--deliver' : '--node-user' });
    }
    this.pinnedText = text;
    return uids;
  }
}

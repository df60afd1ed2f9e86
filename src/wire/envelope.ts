// The plaintext of a sealed frame: proto/udprepeater.proto's Envelope,
// encoded with protobufjs; docs/PROTOCOL.md, "Envelope". Decoding never
// throws: garbage inside a valid box is reported as 'bad_payload'.

import { bigintToLong, type LongLike, longToBigint, longToNumber } from './longs.js';
import { protoRoot } from './proto.js';
import { type TicketKey, ticketsFromProto, ticketsToProto } from './ticket-codec.js';
import type { TraceFields } from './trace.js';

export { bigintToLong, type LongLike, longToBigint, longToNumber };

export enum EnvelopeKind {
  CacheDatagram = 1,
  Subscribe = 2,
  Unsubscribe = 3,
  /** Cluster mode: a BusMessage (wire/bus.ts) between repeaters. */
  Bus = 4,
  /** The fleet's TLS ticket keys (wire/ticket-codec.ts): repeater to sealed subscribers only. */
  TicketKeys = 5,
  /** Repeater to one subscriber: the sequence from which it receives that repeater's group frames. */
  Membership = 6,
  /** Identity mode, repeater to one member under its link: the channel's group key. */
  GroupKey = 7,
  /** Identity mode, member to repeater under its link: the group key it holds. */
  GroupKeyAck = 8,
}

/** A channel's group key as a GROUP_KEY hands it over (proto GroupKey). */
export interface GroupKeyFields {
  readonly keyId: number;
  readonly key: Uint8Array;
  /** Per channel and repeater start, from 1, one more on each replacement. */
  readonly epoch: number;
  /** A replacement: the key it replaces (0: none) and that key's first counter never sealed. */
  readonly replacesKeyId: number;
  readonly replacesUntilCounter: number;
}

/** What a GROUP_KEY_ACK says the member holds. */
export interface GroupKeyAckFields {
  readonly keyId: number;
  readonly epoch: number;
}

/** Who sealed a frame (proto Role). */
export enum Role {
  Agent = 1,
  Repeater = 2,
}

export interface Envelope {
  readonly kind: EnvelopeKind;
  readonly channelKey: string;
  readonly origin: bigint;
  readonly sequence: number;
  readonly sentAtMs: number;
  readonly role: Role;
  /** CACHE_DATAGRAM: the node's datagram, without any trace. */
  readonly datagram: Buffer | null;
  /** CACHE_DATAGRAM: its loop trace, when it has one. */
  readonly trace: TraceFields | null;
  /** SUBSCRIBE/UNSUBSCRIBE: where to send (never empty). */
  readonly address: string | null;
  /** BUS: the encoded BusMessage. */
  readonly bus?: Uint8Array | null;
  /** TICKET_KEYS: the schedule, checked (wire/ticket-codec.ts). */
  readonly tickets?: readonly TicketKey[] | null;
  /** The one receiver the frame is sealed for, canonical as its sender addresses it; '' for a group frame. */
  readonly receiver: string;
  /** MEMBERSHIP: the first sequence of the origin's group frames the receiver is a member for. */
  readonly memberFrom?: number;
  /** GROUP_KEY: the key. */
  readonly groupKey?: GroupKeyFields;
  /** GROUP_KEY_ACK: the key held. */
  readonly groupKeyAck?: GroupKeyAckFields;
}

/** What encodeEnvelope takes: an Envelope without origin (given pre-converted), receiver optional. */
export type EnvelopeFields = Omit<Envelope, 'origin' | 'receiver'> & { readonly receiver?: string };

const EnvelopeType = protoRoot.lookupType('udprepeater.Envelope');

/** Encodes an Envelope; `originLong` is the origin pre-converted by bigintToLong. */
export function encodeEnvelope(e: EnvelopeFields, originLong: unknown): Uint8Array {
  const msg: Record<string, unknown> = {
    kind: e.kind,
    channelKey: e.channelKey,
    origin: originLong,
    sequence: e.sequence,
    sentAtMs: e.sentAtMs,
    role: e.role,
  };
  if (e.datagram !== null) msg['datagram'] = e.datagram;
  if (e.trace !== null) msg['trace'] = { ingress: e.trace.ingress, sequence: e.trace.sequence, hops: e.trace.hops };
  if (e.address !== null) msg['subscription'] = { address: e.address };
  if (e.bus != null) msg['bus'] = e.bus;
  if (e.tickets != null) msg['tickets'] = ticketsToProto(e.tickets);
  if (e.receiver !== undefined && e.receiver.length > 0) msg['receiver'] = e.receiver;
  if (e.memberFrom !== undefined) msg['memberFrom'] = e.memberFrom;
  if (e.groupKey !== undefined) {
    const g = e.groupKey;
    msg['groupKey'] = { channelKey: e.channelKey, keyId: g.keyId, key: g.key, epoch: g.epoch, replacesKeyId: g.replacesKeyId, replacesUntilCounter: g.replacesUntilCounter };
  }
  if (e.groupKeyAck !== undefined) msg['groupKeyAck'] = { channelKey: e.channelKey, keyId: e.groupKeyAck.keyId, epoch: e.groupKeyAck.epoch };
  return EnvelopeType.encode(msg).finish();
}

const MAX_NAME = 255;

/** Decodes and validates an Envelope; 'bad_payload' for anything malformed. */
export function decodeEnvelope(buf: Uint8Array): Envelope | 'bad_payload' {
  let m: Record<string, unknown>;
  try {
    m = EnvelopeType.decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return 'bad_payload';
  }
  const kind = m['kind'] as number;
  const role = m['role'] as number;
  const channelKey = typeof m['channelKey'] === 'string' ? m['channelKey'] : '';
  const sequence = longToNumber(m['sequence'] as LongLike);
  const sentAtMs = longToNumber(m['sentAtMs'] as LongLike);
  if (sequence < 1 || !Number.isSafeInteger(sequence) || !Number.isSafeInteger(sentAtMs) || channelKey.length > MAX_NAME) return 'bad_payload';
  if (role !== Role.Agent && role !== Role.Repeater) return 'bad_payload';
  // Absent (an older sender, or a group frame): ''. Never believed before the gate checked it names us.
  const receiver = typeof m['receiver'] === 'string' ? m['receiver'] : '';
  if (receiver.length > MAX_NAME) return 'bad_payload';
  const origin = longToBigint(m['origin'] as LongLike);
  // protobufjs leaves absent message fields as null (from the prototype),
  // absent scalars at their defaults: test with == null, never rely on undefined.
  const datagram = (m['datagram'] as Buffer | null | undefined) ?? null;
  const sub = m['subscription'] as { address?: string | null } | null | undefined;
  if (kind === EnvelopeKind.CacheDatagram) {
    if (datagram === null || datagram.length === 0) return 'bad_payload';
    const t = m['trace'] as { ingress?: LongLike; sequence?: LongLike; hops?: number } | null | undefined;
    let trace: TraceFields | null = null;
    if (t != null) {
      const ingress = longToNumber(t.ingress);
      const seq = longToNumber(t.sequence);
      const hops = t.hops ?? 0;
      if (ingress < 1 || ingress >= 2 ** 48 || seq < 1 || !Number.isSafeInteger(seq) || hops < 1 || hops > 255) return 'bad_payload';
      trace = { ingress, sequence: seq, hops };
    }
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: Buffer.from(datagram.buffer, datagram.byteOffset, datagram.length), trace, address: null, receiver };
  }
  if (kind === EnvelopeKind.Bus) {
    const bus = m['bus'] as Uint8Array | null | undefined;
    if (bus == null || bus.length === 0) return 'bad_payload';
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address: null, receiver, bus };
  }
  if (kind === EnvelopeKind.TicketKeys) {
    // Only a repeater distributes ticket keys; an agent's is refused here, before anyone believes it.
    if (role !== Role.Repeater) return 'bad_payload';
    const tickets = ticketsFromProto(m['tickets']);
    if (typeof tickets === 'string') return tickets;
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address: null, receiver, tickets };
  }
  if (kind === EnvelopeKind.Subscribe || kind === EnvelopeKind.Unsubscribe) {
    if (sub == null || channelKey.length === 0) return 'bad_payload';
    const address = sub.address ?? '';
    if (address.length === 0 || address.length > MAX_NAME) return 'bad_payload';
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address, receiver };
  }
  if (kind === EnvelopeKind.Membership) {
    // A repeater's word to one subscriber: it must name that subscriber and its channel.
    const memberFrom = longToNumber(m['memberFrom'] as LongLike);
    if (role !== Role.Repeater || receiver.length === 0 || channelKey.length === 0 || memberFrom < 1 || !Number.isSafeInteger(memberFrom)) return 'bad_payload';
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address: null, receiver, memberFrom };
  }
  if (kind === EnvelopeKind.GroupKey) {
    // Only a repeater hands out group keys, for the channel the envelope names.
    const g = m['groupKey'] as { channelKey?: string; keyId?: number; key?: Uint8Array; epoch?: LongLike; replacesKeyId?: number; replacesUntilCounter?: LongLike } | null | undefined;
    if (role !== Role.Repeater || g == null || channelKey.length === 0 || g.channelKey !== channelKey) return 'bad_payload';
    const keyId = (g.keyId ?? 0) >>> 0;
    const epoch = longToNumber(g.epoch);
    const until = longToNumber(g.replacesUntilCounter);
    if (keyId === 0 || g.key == null || g.key.length !== 32 || epoch < 1 || !Number.isSafeInteger(epoch) || !Number.isSafeInteger(until) || until < 0) return 'bad_payload';
    const groupKey = { keyId, key: Uint8Array.from(g.key), epoch, replacesKeyId: (g.replacesKeyId ?? 0) >>> 0, replacesUntilCounter: until };
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address: null, receiver, groupKey };
  }
  if (kind === EnvelopeKind.GroupKeyAck) {
    const a = m['groupKeyAck'] as { channelKey?: string; keyId?: number; epoch?: LongLike } | null | undefined;
    if (role !== Role.Agent || a == null || channelKey.length === 0 || a.channelKey !== channelKey) return 'bad_payload';
    const keyId = (a.keyId ?? 0) >>> 0;
    const epoch = longToNumber(a.epoch);
    if (keyId === 0 || epoch < 1 || !Number.isSafeInteger(epoch)) return 'bad_payload';
    return { kind, channelKey, origin, sequence, sentAtMs, role, datagram: null, trace: null, address: null, receiver, groupKeyAck: { keyId, epoch } };
  }
  return 'bad_payload';
}

// The fleet's TLS session-ticket keys on the wire (proto TicketSchedule),
// carried by an Envelope of kind TICKET_KEYS and by the cluster bus;
// docs/PROTOCOL.md, "Ticket keys". Pure codec: structure is checked here
// (count, sizes, ranges); what depends on the clock is judged by the holder
// (crypto/ticket-schedule.ts). Decoding garbage returns 'bad_payload', never throws.

import { bigintToLong, type LongLike, longToBigint, longToNumber } from './longs.js';
import { protoRoot } from './proto.js';

/** Bytes of a key's secret: nginx's 80-byte layout (name 16, HMAC 32, AES 32). */
export const TICKET_SECRET_BYTES = 80;
/** More keys than this in one schedule is refused (a schedule holds 2 + ceil(lifetime / rotation)). */
export const MAX_TICKET_KEYS = 16;
/** Longest a key may live, from not_before to not_after. */
export const MAX_TICKET_KEY_SPAN_MS = 60 * 86_400_000;

export interface TicketKey {
  /** Random, never 0. */
  readonly id: bigint;
  /** Unix ms: starts encrypting. */
  readonly notBeforeMs: number;
  /** Unix ms: no longer decrypts. */
  readonly notAfterMs: number;
  /** Unix ms when it was generated (the older of two keys for one not_before wins). */
  readonly createdMs: number;
  /** TICKET_SECRET_BYTES bytes. */
  readonly secret: Buffer;
}

/** The protobufjs object for a schedule. */
export function ticketsToProto(keys: readonly TicketKey[]): Record<string, unknown> {
  return {
    keys: keys.map((k) => ({ id: bigintToLong(k.id), notBeforeMs: k.notBeforeMs, notAfterMs: k.notAfterMs, createdMs: k.createdMs, secret: k.secret })),
  };
}

const okTime = (t: number) => Number.isSafeInteger(t) && t > 0;

/**
 * Checks a decoded TicketSchedule: 1 to MAX_TICKET_KEYS keys, each with a
 * non-zero id (no id twice), times that are positive safe integers with
 * not_before < not_after <= not_before + MAX_TICKET_KEY_SPAN_MS, and an
 * 80-byte secret. Returns copies: nothing refers to the decoded buffer.
 */
export function ticketsFromProto(m: unknown): TicketKey[] | 'bad_payload' {
  if (m == null || typeof m !== 'object') return 'bad_payload';
  const list = (m as { keys?: unknown }).keys;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_TICKET_KEYS) return 'bad_payload';
  const out: TicketKey[] = [];
  const ids = new Set<bigint>();
  for (const raw of list as Array<Record<string, unknown>>) {
    const id = longToBigint(raw['id'] as LongLike);
    const notBeforeMs = longToNumber(raw['notBeforeMs'] as LongLike);
    const notAfterMs = longToNumber(raw['notAfterMs'] as LongLike);
    const createdMs = longToNumber(raw['createdMs'] as LongLike);
    const secret = raw['secret'] as Uint8Array | null | undefined;
    if (id === 0n || ids.has(id)) return 'bad_payload';
    if (!okTime(notBeforeMs) || !okTime(notAfterMs) || !okTime(createdMs)) return 'bad_payload';
    if (notAfterMs <= notBeforeMs || notAfterMs - notBeforeMs > MAX_TICKET_KEY_SPAN_MS) return 'bad_payload';
    if (secret == null || secret.length !== TICKET_SECRET_BYTES) return 'bad_payload';
    ids.add(id);
    out.push({ id, notBeforeMs, notAfterMs, createdMs, secret: Buffer.from(secret) });
  }
  return out;
}

const ScheduleType = protoRoot.lookupType('udprepeater.TicketSchedule');

/** A schedule as its own protobuf message: the `--state-dir` file `tickets.pb`. */
export function encodeTicketSchedule(keys: readonly TicketKey[]): Uint8Array {
  return ScheduleType.encode(ticketsToProto(keys)).finish();
}

/** Decodes and checks a `tickets.pb`; 'bad_payload' for anything malformed (an empty schedule included). */
export function decodeTicketSchedule(buf: Uint8Array): TicketKey[] | 'bad_payload' {
  let m: unknown;
  try {
    m = ScheduleType.decode(buf);
  } catch {
    return 'bad_payload';
  }
  return ticketsFromProto(m);
}

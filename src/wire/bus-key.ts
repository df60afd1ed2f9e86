// The bus key announcement of the identity bus (docs/PROTOCOL.md, "The
// cluster bus with identities"): a repeater's bus sending key, sealed once
// for each repeater its peers file lists. Pure codec: no crypto, no I/O;
// the decoder returns a value or a reason.
//
//   0   4   "ur", version 3, type 5 (the link messages are types 1-4)
//   4   8   sender identity id (crypto/identity.ts identityIdOf)
//   12  8   sender's bus origin (u64 LE): the origin of its sealed bus frames
//   20  8   sent at, unix ms (u64 LE) of the sender's clock
//   28  4   key id of the sending key (crypto/keyring.ts keyIdOf)
//   32  32  ephemeral X25519 public key, fresh per announcement
//   64  2   n: recipients (u16 LE), at most MAX_RECIPIENTS
//   66  56n per recipient: its identity id (8), then the sending key sealed for it (secretbox, 32 + 16)
//   end 64  Ed25519 signature by the sender's identity over every byte before it

import { FRAME_MAGIC0, FRAME_MAGIC1, MAC_BYTES } from './frame.js';

export const BUS_KEY_VERSION = 3;
export const BUS_KEY_TYPE = 5;
export const BUS_KEY_CLEAR = 66;
export const SEALED_KEY_BYTES = 32 + MAC_BYTES;
export const RECIPIENT_BYTES = 8 + SEALED_KEY_BYTES;
export const SIGNATURE_BYTES = 64;
/** More than a cluster tracks (cluster/peers.ts MAX_PEERS is 64): room for a peers file listing spares. */
export const MAX_RECIPIENTS = 256;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export interface BusKeyRecipient {
  readonly idHex: string;
  readonly sealed: Uint8Array;
}

export interface BusKeyAnnouncement {
  readonly senderId: Uint8Array;
  readonly senderIdHex: string;
  readonly origin: bigint;
  readonly sentAtMs: number;
  readonly keyId: number;
  readonly ephemeral: Uint8Array;
  /** Bytes 0..66: what each recipient's key derivation hashes. */
  readonly clear: Uint8Array;
  readonly recipients: readonly BusKeyRecipient[];
  /** Every byte before the signature. */
  readonly signed: Uint8Array;
  readonly signature: Uint8Array;
}

/** True when `buf` starts like a bus key announcement (then it is no version-2 sealed frame). */
export function isBusKey(buf: Uint8Array): boolean {
  return buf.length >= 4 && buf[0] === FRAME_MAGIC0 && buf[1] === FRAME_MAGIC1 && buf[2] === BUS_KEY_VERSION && buf[3] === BUS_KEY_TYPE;
}

/** The clear header, to be completed by `encodeBusKey` once the recipients are sealed. */
export function busKeyHeader(f: { senderId: Uint8Array; origin: bigint; sentAtMs: number; keyId: number; ephemeral: Uint8Array; recipients: number }): Uint8Array {
  const out = Buffer.alloc(BUS_KEY_CLEAR);
  out[0] = FRAME_MAGIC0;
  out[1] = FRAME_MAGIC1;
  out[2] = BUS_KEY_VERSION;
  out[3] = BUS_KEY_TYPE;
  out.set(f.senderId, 4);
  out.writeBigUInt64LE(f.origin, 12);
  out.writeBigUInt64LE(BigInt(f.sentAtMs), 20);
  out.writeUInt32LE(f.keyId >>> 0, 28);
  out.set(f.ephemeral, 32);
  out.writeUInt16LE(f.recipients, 64);
  return new Uint8Array(out);
}

/** Header and recipients: the bytes the sender signs. */
export function busKeyBody(header: Uint8Array, recipients: ReadonlyArray<{ id: Uint8Array; sealed: Uint8Array }>): Uint8Array {
  const out = new Uint8Array(BUS_KEY_CLEAR + recipients.length * RECIPIENT_BYTES);
  out.set(header, 0);
  let at = BUS_KEY_CLEAR;
  for (const r of recipients) {
    out.set(r.id, at);
    out.set(r.sealed, at + 8);
    at += RECIPIENT_BYTES;
  }
  return out;
}

export function decodeBusKey(buf: Uint8Array): BusKeyAnnouncement | 'too_short' | 'bad_payload' {
  if (!isBusKey(buf)) return 'bad_payload';
  if (buf.length < BUS_KEY_CLEAR + SIGNATURE_BYTES) return 'too_short';
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const n = b.readUInt16LE(64);
  if (n > MAX_RECIPIENTS || buf.length !== BUS_KEY_CLEAR + n * RECIPIENT_BYTES + SIGNATURE_BYTES) return 'bad_payload';
  const origin = b.readBigUInt64LE(12);
  const sent = b.readBigUInt64LE(20);
  if (origin === 0n || sent > MAX_SAFE) return 'bad_payload';
  const recipients: BusKeyRecipient[] = [];
  for (let i = 0, at = BUS_KEY_CLEAR; i < n; i++, at += RECIPIENT_BYTES) {
    recipients.push({ idHex: b.toString('hex', at, at + 8), sealed: buf.slice(at + 8, at + RECIPIENT_BYTES) });
  }
  const end = buf.length - SIGNATURE_BYTES;
  return {
    senderId: buf.slice(4, 12),
    senderIdHex: b.toString('hex', 4, 12),
    origin,
    sentAtMs: Number(sent),
    keyId: b.readUInt32LE(28),
    ephemeral: buf.slice(32, 64),
    clear: buf.slice(0, BUS_KEY_CLEAR),
    recipients,
    signed: buf.slice(0, end),
    signature: buf.slice(end),
  };
}

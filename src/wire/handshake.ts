// The link handshake's messages and the header of frames sealed under link
// or group keys (docs/PROTOCOL.md, "Identities and links"). Pure codecs: no
// crypto, no I/O; every decoder returns a value or a reason.
//
// Every message starts like a sealed frame ("ur") with version 3, so a
// receiver that only knows version 2 counts it `bad_version` and goes on.
//
// HELLO (agent -> repeater), 128 to 1024 bytes:
//   0   2   magic "ur"          2  1  version 3       3  1  type 1
//   4   4   initiator link id (u32 LE, not 0): the id the repeater puts on frames to this agent
//   8   8   initiator identity id (crypto/identity.ts identityIdOf)
//   16  32  initiator ephemeral X25519 public key
//   48  8   timestamp, unix ms (u64 LE) of the agent's clock
//   56  n   secretbox of a LinkHello (16-byte MAC first), zero nonce, key k1
//   end 16  mac: BLAKE2b-128 keyed with the pair's mac key over every byte before it
// WELCOME (repeater -> agent), exactly 84 bytes:
//   0   4   "ur", 3, type 2
//   4   4   initiator link id (the HELLO's, echoed)
//   8   4   responder link id (u32 LE, not 0): the id the agent puts on frames to the repeater
//   12  32  responder ephemeral X25519 public key
//   44  24  secretbox of the repeater's clock (u64 LE unix ms), zero nonce, key k2
//   68  16  mac, as in HELLO
// Link and group frames:
//   0   4   "ur", 3, type 3 (link) or 4 (group)
//   4   4   link: the receiver's link id; group: the group key id
//   8   8   counter (u64 LE, from 1; per key, never repeated)
//   16  16+n secretbox of an Envelope; nonce = these 16 header bytes and 8 zero bytes
// The nonce is the header, so a header changed in flight fails the MAC.

import { FRAME_MAGIC0, FRAME_MAGIC1, MAC_BYTES, NONCE_BYTES } from './frame.js';
import { protoRoot } from './proto.js';

export const LINK_VERSION = 3;
export const LinkType = { Hello: 1, Welcome: 2, LinkData: 3, GroupData: 4 } as const;

export const DH_BYTES = 32;
export const ID_BYTES = 8;
/** The handshake mac (BLAKE2b-128). */
export const HANDSHAKE_MAC_BYTES = 16;
/** HELLO bytes before the sealed payload: header, link id, identity id, ephemeral, timestamp. */
export const HELLO_CLEAR = 56;
export const HELLO_MIN = 128;
export const HELLO_MAX = 1024;
/** WELCOME bytes before its sealed clock. */
export const WELCOME_CLEAR = 44;
export const WELCOME_BYTES = WELCOME_CLEAR + MAC_BYTES + 8 + HANDSHAKE_MAC_BYTES;
export const DATA_HEADER = 16;
export const DATA_OVERHEAD = DATA_HEADER + MAC_BYTES;
/** Largest timestamp or counter we read: beyond it a JavaScript number is not exact. */
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export type HandshakeError = 'not_link' | 'too_short' | 'too_large' | 'bad_version' | 'bad_type' | 'bad_payload';

export interface Hello {
  readonly initiatorLink: number;
  readonly identityId: Uint8Array;
  readonly ephemeral: Uint8Array;
  readonly timestampMs: number;
  /** Bytes 0..HELLO_CLEAR: what the transcript hashes before the payload. */
  readonly clear: Uint8Array;
  /** The sealed LinkHello (MAC first). */
  readonly sealed: Uint8Array;
  /** Every byte the mac covers. */
  readonly macked: Uint8Array;
  readonly mac: Uint8Array;
}

export interface Welcome {
  readonly initiatorLink: number;
  readonly responderLink: number;
  readonly ephemeral: Uint8Array;
  readonly clear: Uint8Array;
  readonly sealed: Uint8Array;
  readonly macked: Uint8Array;
  readonly mac: Uint8Array;
}

export interface DataHeader {
  readonly type: typeof LinkType.LinkData | typeof LinkType.GroupData;
  /** The receiver's link id, or the group key id. */
  readonly id: number;
  readonly counter: number;
}

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** The type of a version-3 message, or why it is none. */
export function linkTypeOf(buf: Uint8Array): number | HandshakeError {
  if (buf.length < 2 || buf[0] !== FRAME_MAGIC0 || buf[1] !== FRAME_MAGIC1) return 'not_link';
  if (buf.length < 4) return 'too_short';
  if (buf[2] !== LINK_VERSION) return 'bad_version';
  return buf[3]!;
}

/**
 * The link id a WELCOME or link frame is addressed to (bytes 4..8: the
 * initiator's link id, which is the receiver's on a link frame to an agent),
 * unauthenticated; null for any other message.
 */
export function receiverLinkOf(buf: Uint8Array): number | null {
  const t = linkTypeOf(buf);
  if ((t !== LinkType.Welcome && t !== LinkType.LinkData) || buf.length < 8) return null;
  return view(buf).getUint32(4, true);
}

function writeHead(out: Uint8Array, type: number): void {
  out[0] = FRAME_MAGIC0;
  out[1] = FRAME_MAGIC1;
  out[2] = LINK_VERSION;
  out[3] = type;
}

/** A HELLO with its mac left zero (crypto/link-keys.ts computes and writes it). */
export function encodeHello(f: { initiatorLink: number; identityId: Uint8Array; ephemeral: Uint8Array; timestampMs: number; sealed: Uint8Array }): Uint8Array {
  const total = HELLO_CLEAR + f.sealed.length + HANDSHAKE_MAC_BYTES;
  if (f.identityId.length !== ID_BYTES || f.ephemeral.length !== DH_BYTES) throw new RangeError('HELLO: an identity id is 8 bytes, an ephemeral key 32');
  if (f.initiatorLink === 0 || total < HELLO_MIN || total > HELLO_MAX) throw new RangeError(`HELLO: link id 0 or ${total} bytes`);
  const out = new Uint8Array(total);
  writeHead(out, LinkType.Hello);
  const v = view(out);
  v.setUint32(4, f.initiatorLink >>> 0, true);
  out.set(f.identityId, 8);
  out.set(f.ephemeral, 16);
  v.setBigUint64(48, BigInt(f.timestampMs), true);
  out.set(f.sealed, HELLO_CLEAR);
  return out;
}

export function decodeHello(buf: Uint8Array): Hello | HandshakeError {
  const t = linkTypeOf(buf);
  if (typeof t === 'string') return t;
  if (t !== LinkType.Hello) return 'bad_type';
  if (buf.length < HELLO_MIN) return 'too_short';
  if (buf.length > HELLO_MAX) return 'too_large';
  const v = view(buf);
  const initiatorLink = v.getUint32(4, true);
  const ts = v.getBigUint64(48, true);
  if (initiatorLink === 0 || ts > MAX_SAFE) return 'bad_payload';
  const end = buf.length - HANDSHAKE_MAC_BYTES;
  return {
    initiatorLink,
    identityId: buf.subarray(8, 16),
    ephemeral: buf.subarray(16, 48),
    timestampMs: Number(ts),
    clear: buf.subarray(0, HELLO_CLEAR),
    sealed: buf.subarray(HELLO_CLEAR, end),
    macked: buf.subarray(0, end),
    mac: buf.subarray(end),
  };
}

/** A WELCOME with its mac left zero. */
export function encodeWelcome(f: { initiatorLink: number; responderLink: number; ephemeral: Uint8Array; sealed: Uint8Array }): Uint8Array {
  if (f.initiatorLink === 0 || f.responderLink === 0 || f.ephemeral.length !== DH_BYTES || f.sealed.length !== MAC_BYTES + 8) throw new RangeError('WELCOME: bad field');
  const out = new Uint8Array(WELCOME_BYTES);
  writeHead(out, LinkType.Welcome);
  const v = view(out);
  v.setUint32(4, f.initiatorLink >>> 0, true);
  v.setUint32(8, f.responderLink >>> 0, true);
  out.set(f.ephemeral, 12);
  out.set(f.sealed, WELCOME_CLEAR);
  return out;
}

export function decodeWelcome(buf: Uint8Array): Welcome | HandshakeError {
  const t = linkTypeOf(buf);
  if (typeof t === 'string') return t;
  if (t !== LinkType.Welcome) return 'bad_type';
  if (buf.length < WELCOME_BYTES) return 'too_short';
  if (buf.length > WELCOME_BYTES) return 'too_large';
  const v = view(buf);
  const initiatorLink = v.getUint32(4, true);
  const responderLink = v.getUint32(8, true);
  if (initiatorLink === 0 || responderLink === 0) return 'bad_payload';
  const end = WELCOME_BYTES - HANDSHAKE_MAC_BYTES;
  return {
    initiatorLink,
    responderLink,
    ephemeral: buf.subarray(12, 44),
    clear: buf.subarray(0, WELCOME_CLEAR),
    sealed: buf.subarray(WELCOME_CLEAR, end),
    macked: buf.subarray(0, end),
    mac: buf.subarray(end),
  };
}

/** The 16 header bytes of a link or group frame. */
export function encodeDataHeader(h: DataHeader): Uint8Array {
  const out = new Uint8Array(DATA_HEADER);
  writeDataHeader(out, h);
  return out;
}

/** Writes the 16 header bytes of a link or group frame at the start of `out` (no allocation: the sealing loop's form). */
export function writeDataHeader(out: Uint8Array, h: DataHeader): void {
  if (h.id === 0 || h.counter < 1 || !Number.isSafeInteger(h.counter)) throw new RangeError('frame: id 0 or counter out of range');
  writeHead(out, h.type);
  out[4] = h.id & 0xff;
  out[5] = (h.id >>> 8) & 0xff;
  out[6] = (h.id >>> 16) & 0xff;
  out[7] = (h.id >>> 24) & 0xff;
  // A safe integer: the low 32 bits and the high 21, little-endian, without a BigInt per frame.
  const lo = h.counter % 0x1_0000_0000;
  const hi = (h.counter - lo) / 0x1_0000_0000;
  for (let i = 0; i < 4; i++) {
    out[8 + i] = (lo >>> (8 * i)) & 0xff;
    out[12 + i] = (hi >>> (8 * i)) & 0xff;
  }
}

export function decodeDataHeader(buf: Uint8Array): DataHeader | HandshakeError {
  const t = linkTypeOf(buf);
  if (typeof t === 'string') return t;
  if (t !== LinkType.LinkData && t !== LinkType.GroupData) return 'bad_type';
  if (buf.length < DATA_OVERHEAD) return 'too_short';
  const v = view(buf);
  const id = v.getUint32(4, true);
  const counter = v.getBigUint64(8, true);
  if (id === 0 || counter === 0n || counter > MAX_SAFE) return 'bad_payload';
  return { type: t, id, counter: Number(counter) };
}

/** The secretbox nonce of a link or group frame: its header, then zeros. */
export function dataNonce(header: Uint8Array): Uint8Array {
  const nonce = new Uint8Array(NONCE_BYTES);
  nonce.set(header.subarray(0, DATA_HEADER));
  return nonce;
}

export interface LinkHelloFields {
  readonly channelKey: string;
  readonly address: string;
}

const LinkHelloType = protoRoot.lookupType('udprepeater.LinkHello');
const MAX_NAME = 255;
/** Sealed payload bytes a HELLO needs to reach HELLO_MIN. */
const MIN_PAYLOAD = HELLO_MIN - HELLO_CLEAR - MAC_BYTES - HANDSHAKE_MAC_BYTES;

/** Encodes a LinkHello, padded so the HELLO around it is at least HELLO_MIN bytes. */
export function encodeLinkHello(f: LinkHelloFields): Uint8Array {
  const base = LinkHelloType.encode({ channelKey: f.channelKey, address: f.address }).finish();
  const need = MIN_PAYLOAD - base.length;
  if (need <= 0) return base;
  // The padding field costs a tag byte and a length byte (below 128).
  return LinkHelloType.encode({ channelKey: f.channelKey, address: f.address, padding: new Uint8Array(Math.max(0, need - 2)) }).finish();
}

export function decodeLinkHello(buf: Uint8Array): LinkHelloFields | 'bad_payload' {
  let m: Record<string, unknown>;
  try {
    m = LinkHelloType.decode(buf) as unknown as Record<string, unknown>;
  } catch {
    return 'bad_payload';
  }
  const channelKey = typeof m['channelKey'] === 'string' ? m['channelKey'] : '';
  const address = typeof m['address'] === 'string' ? m['address'] : '';
  if (channelKey.length === 0 || channelKey.length > MAX_NAME || address.length === 0 || address.length > MAX_NAME) return 'bad_payload';
  return { channelKey, address };
}

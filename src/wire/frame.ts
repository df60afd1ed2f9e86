// The sealed frame around an Envelope (proto/udprepeater.proto); docs/PROTOCOL.md, "Sealed frames":
//
//   offset size
//   0      2    magic "ur" (0x75 0x72): never a uwsgi modifier1 (111 or 224)
//   2      1    version, 2
//   3      1    reserved, 0
//   4      4    key id (u32 LE): which key of the ring sealed it
//   8      24   nonce: 16-byte random per-process prefix, u64 LE counter
//   32     n+16 secretbox (XSalsa20-Poly1305) of the n-byte Envelope
//
// The header is not encrypted but cannot be altered usefully: another key
// id selects another key and the open fails; another nonce fails the MAC.

export const FRAME_MAGIC0 = 0x75;
export const FRAME_MAGIC1 = 0x72;
/** 2: Envelopes carry role and trace and name every subscriber (1 did not: refused as bad_version). */
export const FRAME_VERSION = 2;
export const FRAME_HEADER = 8;
export const NONCE_BYTES = 24;
export const MAC_BYTES = 16;
/** Bytes a frame adds around its Envelope. */
export const FRAME_OVERHEAD = FRAME_HEADER + NONCE_BYTES + MAC_BYTES;
export const MAX_UDP_PAYLOAD = 65507;

export type FrameError = 'unsealed' | 'too_short' | 'unknown_version';

/** True when the datagram starts like a sealed frame (any version). */
export function looksSealed(buf: Uint8Array): boolean {
  return buf.length >= 2 && buf[0] === FRAME_MAGIC0 && buf[1] === FRAME_MAGIC1;
}

/** Checks the fixed header; returns the key id or why the datagram is no frame. */
export function frameKeyId(buf: Buffer): number | FrameError {
  if (!looksSealed(buf)) return 'unsealed';
  if (buf.length < FRAME_OVERHEAD) return 'too_short';
  if (buf[2] !== FRAME_VERSION || buf[3] !== 0) return 'unknown_version';
  return buf.readUInt32LE(4);
}

export function writeFrameHeader(out: Buffer, keyId: number): void {
  out[0] = FRAME_MAGIC0;
  out[1] = FRAME_MAGIC1;
  out[2] = FRAME_VERSION;
  out[3] = 0;
  out.writeUInt32LE(keyId >>> 0, 4);
}

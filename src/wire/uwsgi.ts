// The uwsgi packet: a 4-byte header (modifier1, u16 LE datasize, modifier2)
// followed by `datasize` bytes (docs/PROTOCOL.md, "The uwsgi packet"). Pure
// functions over Buffers; nothing here throws on hostile input: decoders
// return a drop reason instead.

import { KindSlot } from '../base/stats.js';

export const HEADER_SIZE = 4;
/** Largest body a u16 datasize can describe. */
export const MAX_BODY = 0xffff;

export const MODIFIER1_CACHE = 111;
export const MODIFIER1_SUBSCRIPTION = 224;

/** Reasons a decoder refuses bytes. Stable strings: they become metric labels. */
export type WireError =
  | 'too_short' // shorter than a header, or than a field it announces
  | 'size_mismatch' // header datasize differs from the datagram length - 4
  | 'malformed' // fields run past the end, trailing bytes, bad values
  | 'empty_key' // a cache update or subscription with an empty key
  | 'bad_expires' // expires is not ASCII decimal
  | 'unknown_command' // a known modifier1 with a modifier2 we do not speak
  | 'too_many_vars'; // more vars than any packet of its kind has: refused before reading on

/**
 * Checks the header and returns modifier1, or an error. A datagram is a
 * uwsgi packet only if its datasize equals its length minus the header.
 */
export function checkHeader(buf: Uint8Array): WireError | undefined {
  if (buf.length < HEADER_SIZE) return 'too_short';
  const datasize = buf[1]! | (buf[2]! << 8);
  if (datasize !== buf.length - HEADER_SIZE) return 'size_mismatch';
  return undefined;
}

export function writeHeader(out: Buffer, modifier1: number, datasize: number, modifier2: number): void {
  if (datasize > MAX_BODY) throw new RangeError(`uwsgi body of ${datasize} bytes exceeds ${MAX_BODY}`);
  out[0] = modifier1;
  out.writeUInt16LE(datasize, 1);
  out[3] = modifier2;
}

/** One `u16 keylen, key, u16 vallen, val` pair; views into the decoded buffer. */
export interface Var {
  readonly key: string;
  readonly value: Buffer;
  /** Offset of this var's first length byte in the packet. */
  readonly start: number;
}

/**
 * Decodes the vars between `from` and `to`; every byte must belong to a var.
 * Stops at `maxVars`: the cost of a hostile packet is bounded before it is
 * fully parsed.
 */
export function decodeVars(buf: Buffer, from: number, to: number, maxVars: number): Var[] | WireError {
  const vars: Var[] = [];
  let at = from;
  while (at < to) {
    if (vars.length >= maxVars) return 'too_many_vars';
    const start = at;
    if (at + 2 > to) return 'malformed';
    const klen = buf.readUInt16LE(at);
    at += 2;
    if (at + klen > to) return 'malformed';
    const key = buf.toString('latin1', at, at + klen);
    at += klen;
    if (at + 2 > to) return 'malformed';
    const vlen = buf.readUInt16LE(at);
    at += 2;
    if (at + vlen > to) return 'malformed';
    vars.push({ key, value: buf.subarray(at, at + vlen), start });
    at += vlen;
  }
  return vars;
}

/** Encodes vars in the given order; string values are latin1 (bytes as-is). */
export function encodeVars(pairs: ReadonlyArray<readonly [string, string | Uint8Array]>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of pairs) {
    const kb = Buffer.from(k, 'latin1');
    const vb = typeof v === 'string' ? Buffer.from(v, 'latin1') : Buffer.from(v);
    if (kb.length > 0xffff || vb.length > 0xffff) throw new RangeError(`var ${k} is longer than 65535 bytes`);
    const lens = Buffer.allocUnsafe(2);
    lens.writeUInt16LE(kb.length, 0);
    const vlen = Buffer.allocUnsafe(2);
    vlen.writeUInt16LE(vb.length, 0);
    parts.push(lens, kb, vlen, vb);
  }
  return Buffer.concat(parts);
}

export function encodePacket(modifier1: number, modifier2: number, body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_SIZE + body.length);
  writeHeader(out, modifier1, body.length, modifier2);
  out.set(body, HEADER_SIZE);
  return out;
}

/** Peeks at the header only: what arrived, for the received{kind} counters (base/stats.ts KINDS). */
export function peekKind(msg: Uint8Array): number {
  if (msg.length >= HEADER_SIZE) {
    const m1 = msg[0];
    const m2 = msg[3];
    if (m1 === MODIFIER1_CACHE) {
      if (m2 === 10) return KindSlot.set;
      if (m2 === 11) return KindSlot.delete;
    } else if (m1 === MODIFIER1_SUBSCRIPTION) {
      if (m2 === 0) return KindSlot.subscribe;
      if (m2 === 1) return KindSlot.unsubscribe;
    }
  }
  return KindSlot.other;
}

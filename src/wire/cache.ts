// uWSGI cache-update datagrams (modifier1 111). See PROTOCOL.md.
//   set (modifier2 10):    u16 keylen, key, u16 vallen, value[, u16 explen, expires]
//   delete (modifier2 11): u16 keylen, key[, 00 00]
// uWSGI's receiver requires 4 + keylen <= datasize before it looks at
// modifier2, so the delete it sends itself (datasize = 2 + keylen) is ignored
// everywhere; the padded form (two zero bytes appended) is applied.

import { checkHeader, HEADER_SIZE, MODIFIER1_CACHE, type WireError, writeHeader } from './uwsgi.js';

export const CACHE_SET = 10;
export const CACHE_DELETE = 11;
/** uWSGI writes expires with at most 20 digits (u64). */
const MAX_EXPIRES_DIGITS = 20;

export interface CacheSet {
  readonly op: 'set';
  readonly key: Buffer;
  readonly value: Buffer;
  /** Absolute unix seconds, 0 = never. Null when the expires block is absent. */
  readonly expires: bigint | null;
}

export interface CacheDelete {
  readonly op: 'delete';
  readonly key: Buffer;
  /** True when the datagram already carries the trailing empty length field. */
  readonly padded: boolean;
}

export type CacheUpdate = CacheSet | CacheDelete;

/**
 * Validates a cache-update datagram without copying: returns its modifier2
 * (CACHE_SET or CACHE_DELETE) or the reason it is refused. Hot-path twin of
 * decodeCacheUpdate; both accept exactly the same inputs.
 */
export function classifyCacheUpdate(buf: Buffer): number | WireError {
  const bad = checkHeader(buf);
  if (bad !== undefined) return bad;
  if (buf[0] !== MODIFIER1_CACHE) return 'unknown_command';
  const cmd = buf[3]!;
  const end = buf.length;
  if (end < HEADER_SIZE + 2) return 'too_short';
  const klen = buf.readUInt16LE(HEADER_SIZE);
  if (klen === 0) return 'empty_key';
  const keyEnd = HEADER_SIZE + 2 + klen;
  if (keyEnd > end) return 'malformed';
  if (cmd === CACHE_DELETE) {
    if (keyEnd === end) return CACHE_DELETE;
    if (keyEnd + 2 === end && buf[keyEnd] === 0 && buf[keyEnd + 1] === 0) return CACHE_DELETE;
    return 'malformed';
  }
  if (cmd !== CACHE_SET) return 'unknown_command';
  if (keyEnd + 2 > end) return 'malformed';
  const vlen = buf.readUInt16LE(keyEnd);
  const valEnd = keyEnd + 2 + vlen;
  if (valEnd > end) return 'malformed';
  if (valEnd === end) return CACHE_SET;
  if (valEnd + 2 > end) return 'malformed';
  const elen = buf.readUInt16LE(valEnd);
  if (valEnd + 2 + elen !== end) return 'malformed';
  if (elen > MAX_EXPIRES_DIGITS) return 'bad_expires';
  for (let i = valEnd + 2; i < end; i++) {
    const c = buf[i]!;
    if (c < 0x30 || c > 0x39) return 'bad_expires';
  }
  return CACHE_SET;
}

/** Decodes a cache update into views of `buf` (no copies). */
export function decodeCacheUpdate(buf: Buffer): CacheUpdate | WireError {
  const cmd = classifyCacheUpdate(buf);
  if (typeof cmd === 'string') return cmd;
  const klen = buf.readUInt16LE(HEADER_SIZE);
  const keyEnd = HEADER_SIZE + 2 + klen;
  const key = buf.subarray(HEADER_SIZE + 2, keyEnd);
  if (cmd === CACHE_DELETE) return { op: 'delete', key, padded: keyEnd !== buf.length };
  const vlen = buf.readUInt16LE(keyEnd);
  const valEnd = keyEnd + 2 + vlen;
  const value = buf.subarray(keyEnd + 2, valEnd);
  if (valEnd === buf.length) return { op: 'set', key, value, expires: null };
  const digits = buf.toString('latin1', valEnd + 2, buf.length);
  return { op: 'set', key, value, expires: digits.length === 0 ? 0n : BigInt(digits) };
}

/** A set exactly as uWSGI sends it; `expires` is absolute unix seconds (0 = never). */
export function encodeCacheSet(key: Uint8Array, value: Uint8Array, expires: bigint | number = 0): Buffer {
  const es = Buffer.from(BigInt(expires).toString(10), 'latin1');
  const size = 2 + key.length + 2 + value.length + 2 + es.length;
  const out = Buffer.allocUnsafe(HEADER_SIZE + size);
  writeHeader(out, MODIFIER1_CACHE, size, CACHE_SET);
  let at = HEADER_SIZE;
  at = out.writeUInt16LE(key.length, at);
  out.set(key, at);
  at += key.length;
  at = out.writeUInt16LE(value.length, at);
  out.set(value, at);
  at += value.length;
  at = out.writeUInt16LE(es.length, at);
  out.set(es, at);
  return out;
}

/**
 * A delete. `padded: false` is what uWSGI itself sends (and ignores on
 * receipt); `padded: true` is the form uWSGI applies.
 */
export function encodeCacheDelete(key: Uint8Array, padded: boolean): Buffer {
  const size = 2 + key.length + (padded ? 2 : 0);
  const out = Buffer.alloc(HEADER_SIZE + size);
  writeHeader(out, MODIFIER1_CACHE, size, CACHE_DELETE);
  out.writeUInt16LE(key.length, HEADER_SIZE);
  out.set(key, HEADER_SIZE + 2);
  return out;
}

/**
 * Given a valid delete datagram, returns the padded form uWSGI applies:
 * the same buffer when it is already padded, else a new one.
 */
export function repairDelete(buf: Buffer): Buffer {
  const klen = buf.readUInt16LE(HEADER_SIZE);
  if (buf.length !== HEADER_SIZE + 2 + klen) return buf;
  const out = Buffer.alloc(buf.length + 2);
  buf.copy(out, 0);
  out.writeUInt16LE(buf.length + 2 - HEADER_SIZE, 1);
  return out;
}

/**
 * Validates a cache update and returns what to send on: the datagram itself,
 * or for a delete with `repair` its padded form; 'too_large' when padding
 * would take it past `limit` bytes (a UDP datagram or the configured cap).
 */
export function prepareCacheUpdate(buf: Buffer, repair: boolean, limit: number): Buffer | WireError | 'too_large' {
  const cmd = classifyCacheUpdate(buf);
  if (typeof cmd === 'string') return cmd;
  if (cmd !== CACHE_DELETE || !repair) return buf;
  const out = repairDelete(buf);
  return out.length > limit ? 'too_large' : out;
}

// uWSGI cache-update datagrams (modifier1 111); docs/PROTOCOL.md, "Cache updates".
//   set (modifier2 10):    u16 keylen, key, u16 vallen, value[, u16 explen, expires][, trace]
//   delete (modifier2 11): u16 keylen, key[, 00 00[, trace]]
// uWSGI's receiver requires 4 + keylen <= datasize before it looks at
// modifier2, so the delete it sends itself (datasize = 2 + keylen) is ignored
// everywhere; the padded form (two zero bytes appended) is applied. A trace
// (wire/trace.ts) is what forwarders append; uWSGI ignores it.

import { isTraceAt, readTrace, TRACE_BYTES, type TraceFields, writeTrace } from './trace.js';
import { checkHeader, HEADER_SIZE, MODIFIER1_CACHE, type WireError, writeHeader } from './uwsgi.js';

export const CACHE_SET = 10;
export const CACHE_DELETE = 11;
/** uWSGI writes expires with at most 20 digits (u64). */
const MAX_EXPIRES_DIGITS = 20;
/** The expires block a forwarder inserts into a set that has none before tracing it: "0", never. */
const NEVER = [1, 0, 0x30];

/** Where the parts of a valid cache update are; filled by inspectCacheUpdate (reusable, no allocation). */
export interface CacheShape {
  cmd: number;
  /** End of what the node sent: where a trace starts, or the datagram's end. */
  contentEnd: number;
  /** A set without its expires block (hand-made; uWSGI always sends one). */
  expiresAbsent: boolean;
  /** A delete already in the padded form uWSGI applies. */
  padded: boolean;
  /** Offset of the trace, -1 without one. */
  traceAt: number;
}

export function newShape(): CacheShape {
  return { cmd: 0, contentEnd: 0, expiresAbsent: false, padded: false, traceAt: -1 };
}

/**
 * Validates a cache-update datagram without copying and fills `s`; returns
 * the reason it is refused, or undefined. Nothing but one optional trace may
 * follow the last field.
 */
export function inspectCacheUpdate(buf: Buffer, s: CacheShape): WireError | undefined {
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
  s.cmd = cmd;
  s.expiresAbsent = false;
  s.padded = false;
  s.traceAt = -1;
  if (cmd === CACHE_DELETE) {
    if (keyEnd === end) {
      s.contentEnd = end;
      return undefined;
    }
    if (keyEnd + 2 > end || buf[keyEnd] !== 0 || buf[keyEnd + 1] !== 0) return 'malformed';
    s.padded = true;
    return tail(buf, keyEnd + 2, s);
  }
  if (cmd !== CACHE_SET) return 'unknown_command';
  if (keyEnd + 2 > end) return 'malformed';
  const valEnd = keyEnd + 2 + buf.readUInt16LE(keyEnd);
  if (valEnd > end) return 'malformed';
  if (valEnd === end) {
    s.expiresAbsent = true;
    s.contentEnd = end;
    return undefined;
  }
  if (valEnd + 2 > end) return 'malformed';
  const elen = buf.readUInt16LE(valEnd);
  const expEnd = valEnd + 2 + elen;
  if (expEnd > end) return 'malformed';
  if (elen > MAX_EXPIRES_DIGITS) return 'bad_expires';
  for (let i = valEnd + 2; i < expEnd; i++) {
    const c = buf[i]!;
    if (c < 0x30 || c > 0x39) return 'bad_expires';
  }
  return tail(buf, expEnd, s);
}

/** After the last field: nothing, or exactly one trace. */
function tail(buf: Buffer, at: number, s: CacheShape): WireError | undefined {
  s.contentEnd = at;
  if (at === buf.length) return undefined;
  if (!isTraceAt(buf, at)) return 'malformed';
  s.traceAt = at;
  return undefined;
}

export interface CacheSet {
  readonly op: 'set';
  readonly key: Buffer;
  readonly value: Buffer;
  /** Absolute unix seconds, 0 = never. Null when the expires block is absent. */
  readonly expires: bigint | null;
  readonly trace: TraceFields | null;
}

export interface CacheDelete {
  readonly op: 'delete';
  readonly key: Buffer;
  /** True when the datagram already carries the trailing empty length field. */
  readonly padded: boolean;
  readonly trace: TraceFields | null;
}

export type CacheUpdate = CacheSet | CacheDelete;

/** Decodes a cache update into views of `buf` (no copies of key or value). */
export function decodeCacheUpdate(buf: Buffer): CacheUpdate | WireError {
  const s = newShape();
  const bad = inspectCacheUpdate(buf, s);
  if (bad !== undefined) return bad;
  const trace = s.traceAt < 0 ? null : readTrace(buf, s.traceAt);
  if (s.traceAt >= 0 && trace === null) return 'malformed';
  const keyEnd = HEADER_SIZE + 2 + buf.readUInt16LE(HEADER_SIZE);
  const key = buf.subarray(HEADER_SIZE + 2, keyEnd);
  if (s.cmd === CACHE_DELETE) return { op: 'delete', key, padded: s.padded, trace };
  const valEnd = keyEnd + 2 + buf.readUInt16LE(keyEnd);
  const value = buf.subarray(keyEnd + 2, valEnd);
  if (s.expiresAbsent) return { op: 'set', key, value, expires: null, trace };
  const digits = buf.toString('latin1', valEnd + 2, s.contentEnd);
  return { op: 'set', key, value, expires: digits.length === 0 ? 0n : BigInt(digits), trace };
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
 * What a forwarder sends on for an inspected cache update: the node's content
 * (without any trace it arrived with), a delete padded when `repair`, a set
 * without expires given "0" (never, as uWSGI reads an absent block), then
 * `trace`. An unpadded delete that is not repaired is sent as it came, with no
 * trace: any appended bytes would make uWSGI apply it. Returns 'too_large'
 * when the result would exceed `limit` bytes. Built in `into` when given
 * (then valid until the caller's next use of it), else in a new buffer.
 */
export function forwardForm(buf: Buffer, s: CacheShape, repair: boolean, trace: TraceFields | null, limit: number, into: Buffer | null = null): Buffer | 'too_large' {
  const unpaddedDelete = s.cmd === CACHE_DELETE && !s.padded;
  const pad = unpaddedDelete && repair ? 2 : 0;
  const traced = trace !== null && canCarryTrace(s, repair);
  const never = traced && s.cmd === CACHE_SET && s.expiresAbsent ? NEVER.length : 0;
  const length = s.contentEnd + pad + never + (traced ? TRACE_BYTES : 0);
  if (length > limit || length - HEADER_SIZE > 0xffff) return 'too_large';
  if (length === buf.length && s.traceAt < 0) return buf;
  // `into` (a caller's scratch, at least 64 KiB): no allocation per datagram; the result is a view of it.
  const out = into === null ? Buffer.allocUnsafe(length) : into.subarray(0, length);
  buf.copy(out, 0, 0, s.contentEnd);
  let at = s.contentEnd;
  if (pad > 0) {
    out[at++] = 0;
    out[at++] = 0;
  }
  if (never > 0) {
    out.set(NEVER, at);
    at += NEVER.length;
  }
  if (traced) writeTrace(out, at, trace!);
  out.writeUInt16LE(length - HEADER_SIZE, 1);
  return out;
}

/** False for an unpadded delete forwarded unrepaired: appended bytes would make uWSGI apply it. */
export function canCarryTrace(s: CacheShape, repair: boolean): boolean {
  return repair || s.cmd !== CACHE_DELETE || s.padded;
}

/** The node's own bytes of an inspected update, without any trace (the datagram itself when it has none). */
export function contentOf(buf: Buffer, s: CacheShape): Buffer {
  if (s.contentEnd === buf.length) return buf;
  const out = Buffer.from(buf.subarray(0, s.contentEnd));
  out.writeUInt16LE(s.contentEnd - HEADER_SIZE, 1);
  return out;
}

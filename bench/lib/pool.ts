// Pool files: what the C generator sends. A pool is a list of datagrams,
// each with a time offset (used when replaying a capture's timeline) and the
// offset where the generator writes its stamp, or -1 when the datagram
// cannot carry one. Layout (little-endian), read by bench/native/gen.c:
//   "UDPBPOOL" | u32 version=1 | u32 count | u64 span_ns
//   count x ( u64 t_ns | u32 len | i32 stamp_offset | len bytes )
// span_ns is the length of one lap of the timeline, for looping.

import { writeFileSync } from 'node:fs';

/** Bytes of the stamp: u32 magic, u32 run, u64 sequence, u64 send time (see native/common.h). */
export const STAMP_LEN = 24;

export interface PoolRecord {
  /** ns from the first datagram (0 for synthetic pools). */
  readonly t: number;
  readonly data: Buffer;
  /** Where the stamp goes, or -1. */
  readonly stamp: number;
}

/**
 * Where a uWSGI cache datagram can carry the stamp: the start of a set's
 * value, or the start of a delete's key (a delete has no value); -1 when
 * the field is shorter than the stamp or the datagram is something else.
 * Mirrors stamp_offset() in native/common.h.
 */
export function stampOffset(buf: Buffer): number {
  if (buf.length < 6 || buf[0] !== 111) return -1;
  const klen = buf.readUInt16LE(4);
  if (buf[3] === 11) return klen >= STAMP_LEN && 6 + klen <= buf.length ? 6 : -1;
  if (buf[3] !== 10 || 8 + klen > buf.length) return -1;
  const vlen = buf.readUInt16LE(6 + klen);
  return vlen >= STAMP_LEN && 8 + klen + STAMP_LEN <= buf.length ? 8 + klen : -1;
}

export function writePool(path: string, records: readonly PoolRecord[], spanNs: number): void {
  const size = 24 + records.reduce((n, r) => n + 16 + r.data.length, 0);
  const out = Buffer.alloc(size);
  out.write('UDPBPOOL', 0, 'latin1');
  out.writeUInt32LE(1, 8);
  out.writeUInt32LE(records.length, 12);
  out.writeBigUInt64LE(BigInt(Math.round(spanNs)), 16);
  let at = 24;
  for (const r of records) {
    out.writeBigUInt64LE(BigInt(Math.round(r.t)), at);
    out.writeUInt32LE(r.data.length, at + 8);
    out.writeInt32LE(r.stamp, at + 12);
    r.data.copy(out, at + 16);
    at += 16 + r.data.length;
  }
  writeFileSync(path, out);
}

export function poolSummary(records: readonly PoolRecord[]): { count: number; meanBytes: number; stamped: number } {
  const bytes = records.reduce((n, r) => n + r.data.length, 0);
  return { count: records.length, meanBytes: records.length ? bytes / records.length : 0, stamped: records.filter((r) => r.stamp >= 0).length };
}

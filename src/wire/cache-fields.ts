// Fields of a cache update that inspectCacheUpdate (wire/cache.ts) has already
// validated: its key and a set's absolute expiry, read without copying the
// value. Pure: the caller passes the shape inspectCacheUpdate filled for
// exactly this buffer; anything else is a bug, not hostile input.

import { type CacheShape, CACHE_SET } from './cache.js';
import { HEADER_SIZE } from './uwsgi.js';

/** The key of an inspected update as a latin1 string (one char per byte: any binary key round-trips). */
export function cacheKeyText(buf: Buffer): string {
  const klen = buf.readUInt16LE(HEADER_SIZE);
  return buf.toString('latin1', HEADER_SIZE + 2, HEADER_SIZE + 2 + klen);
}

/**
 * A set's absolute expiry in unix seconds (0 = never, which is also how
 * uWSGI reads an absent or empty expires block). The digits were checked by
 * inspectCacheUpdate; 20 of them can exceed 2^53, which only ever means "far
 * in the future", so the imprecision is harmless. Deletes have none: 0.
 */
export function cacheExpires(buf: Buffer, s: CacheShape): number {
  if (s.cmd !== CACHE_SET || s.expiresAbsent) return 0;
  const klen = buf.readUInt16LE(HEADER_SIZE);
  const valAt = HEADER_SIZE + 2 + klen;
  const digitsAt = valAt + 2 + buf.readUInt16LE(valAt) + 2;
  let v = 0;
  for (let i = digitsAt; i < s.contentEnd; i++) v = v * 10 + (buf[i]! - 0x30);
  return v;
}

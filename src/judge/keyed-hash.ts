// The one keyed hash of the datagram path: two FNV-1a lanes over the bytes,
// each seeded with 32 random bits drawn per instance, folded into a 53-bit
// number (a JS integer, so a Set or Map keyed by it costs no allocation).
// Keyed so that nobody outside the process can make two datagrams collide
// on purpose: the content window (dedup.ts) and the copies table
// (copies.ts) drop what collides. Not a MAC: collisions by chance are about
// one in 2^53 per pair.

import { randomBytes } from 'node:crypto';

export class KeyedHash {
  private readonly seed1: number;
  private readonly seed2: number;

  constructor() {
    const s = randomBytes(8);
    this.seed1 = s.readUInt32LE(0);
    this.seed2 = s.readUInt32LE(4);
  }

  /** The hash of `buf[from, to)`. */
  hash(buf: Uint8Array, from = 0, to = buf.length): number {
    let a = 0x811c9dc5 ^ this.seed1;
    let b = 0x811c9dc5 ^ this.seed2;
    for (let i = from; i < to; i++) {
      const c = buf[i]!;
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c ^ 0x5c, 0x01000193);
    }
    return (a >>> 0) * 0x200000 + (b >>> 11);
  }
}

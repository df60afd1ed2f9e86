// Cluster mode's exactly-once: a node that lists two repeaters (node=R1;R2)
// sends each update to both, and both put it on the bus; every repeater then
// sees it twice. Updates are remembered per cache key (or, for opaque
// datagrams, per content) for a short window: an update whose bytes equal one
// of the last few seen for its key within the window is a duplicate.
//
// Keyed by cache key, not by bytes alone, so a set A, then B, then A again
// for the same key is not taken for a duplicate unless A was among the last
// RECENT contents of that key within the window. Limit: identical updates of
// one key sent on purpose within the window are delivered once.
//
// Bounded: at most MAX_KEYS keys, the oldest forgotten first.

import { randomBytes } from 'node:crypto';

const RECENT = 4;
const MAX_KEYS = 1 << 17;

interface Seen {
  hashes: number[];
  times: number[];
}

/** Two seeded FNV-1a lanes folded into a 53-bit number. */
export class Hasher {
  private readonly seed1: number;
  private readonly seed2: number;

  constructor() {
    const s = randomBytes(8);
    this.seed1 = s.readUInt32LE(0);
    this.seed2 = s.readUInt32LE(4);
  }

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

export class RecentUpdates {
  private readonly seen = new Map<number, Seen>();
  readonly hasher = new Hasher();

  constructor(private readonly windowMs: number) {}

  /**
   * True the first time `content` is seen for `key` within the window (and
   * remembers it); false for a duplicate.
   */
  admit(key: number, content: number, now: number): boolean {
    let s = this.seen.get(key);
    if (s !== undefined) {
      for (let i = 0; i < s.hashes.length; i++) {
        if (s.hashes[i] === content && now - s.times[i]! < this.windowMs) return false;
      }
      // Most recent last; refresh its place in the map's order (oldest first).
      this.seen.delete(key);
    } else {
      s = { hashes: [], times: [] };
      if (this.seen.size >= MAX_KEYS) this.seen.delete(this.seen.keys().next().value as number);
    }
    s.hashes.push(content);
    s.times.push(now);
    if (s.hashes.length > RECENT) {
      s.hashes.shift();
      s.times.shift();
    }
    this.seen.set(key, s);
    return true;
  }

  get keys(): number {
    return this.seen.size;
  }
}

// Loop freedom for datagrams that cannot carry a trace: opaque ones
// (--forward-unknown) and deletes forwarded unrepaired (a trace would make
// uWSGI apply them). A datagram whose exact bytes were forwarded within the
// window is dropped as a duplicate. Limit: identical datagrams sent on purpose
// within the window are delivered once.
//
// Two generations of 53-bit content hashes (two seeded FNV-1a lanes) rotate
// every half window, so memory is bounded by 2 x MAX_ENTRIES whatever arrives.

import { randomBytes } from 'node:crypto';

const MAX_ENTRIES = 1 << 16;

export class ContentWindow {
  private current = new Set<number>();
  private previous = new Set<number>();
  private rotatedAt = 0;
  private readonly seed1: number;
  private readonly seed2: number;

  constructor(private readonly windowMs: number) {
    const s = randomBytes(8);
    this.seed1 = s.readUInt32LE(0);
    this.seed2 = s.readUInt32LE(4);
  }

  private hash(buf: Uint8Array): number {
    let a = 0x811c9dc5 ^ this.seed1;
    let b = 0x811c9dc5 ^ this.seed2;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i]!;
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c ^ 0x5c, 0x01000193);
    }
    return (a >>> 0) * 0x200000 + (b >>> 11);
  }

  /** True the first time these bytes are seen within the window; false for a repeat. */
  admit(buf: Uint8Array, now: number): boolean {
    if (now - this.rotatedAt >= this.windowMs / 2 || this.current.size >= MAX_ENTRIES) {
      this.previous = this.current;
      this.current = new Set();
      this.rotatedAt = now;
    }
    const h = this.hash(buf);
    if (this.current.has(h) || this.previous.has(h)) return false;
    this.current.add(h);
    return true;
  }
}

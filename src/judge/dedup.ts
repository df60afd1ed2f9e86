// Loop freedom for datagrams that cannot carry a trace: opaque ones
// (--forward-unknown) and deletes forwarded unrepaired (a trace would make
// uWSGI apply them). A datagram whose exact bytes were forwarded within the
// window is dropped as a duplicate. Limit: identical datagrams sent on purpose
// within the window are delivered once.
//
// Two generations of 53-bit content hashes (keyed-hash.ts) rotate every half
// window, so memory is bounded by 2 x MAX_ENTRIES whatever arrives.

import { KeyedHash } from './keyed-hash.js';

const MAX_ENTRIES = 1 << 16;

export class ContentWindow {
  private current = new Set<number>();
  private previous = new Set<number>();
  private rotatedAt = 0;
  private readonly hasher = new KeyedHash();

  constructor(private readonly windowMs: number) {}

  /** True the first time these bytes are seen within the window; false for a repeat. */
  admit(buf: Uint8Array, now: number): boolean {
    if (now - this.rotatedAt >= this.windowMs / 2 || this.current.size >= MAX_ENTRIES) {
      this.previous = this.current;
      this.current = new Set();
      this.rotatedAt = now;
    }
    const h = this.hasher.hash(buf);
    if (this.current.has(h) || this.previous.has(h)) return false;
    this.current.add(h);
    return true;
  }
}

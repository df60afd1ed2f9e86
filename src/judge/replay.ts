// Sliding-window replay filter in the style of RFC 6479 (as in
// wireguard-go's replay package): a ring of 32-bit blocks whose bits mark
// sequence numbers seen. A zero window is ready to use. Unsafe for
// concurrent use (JS is single-threaded).

const BLOCK_BITS = 32;
const RING_BLOCKS = 128; // power of two
const MASK = RING_BLOCKS - 1;
/** Sequence numbers further than this behind the newest are refused. */
export const WINDOW = (RING_BLOCKS - 1) * BLOCK_BITS;

export class ReplayWindow {
  private newest = -1;
  private readonly ring = new Uint32Array(RING_BLOCKS);

  /**
   * Accepts `seq` (an integer >= 0, < 2^53) once: true the first time,
   * false for a duplicate or anything older than the window. Only call it
   * for authenticated frames: it updates the window.
   */
  accept(seq: number): boolean {
    if (seq > this.newest) {
      const current = Math.floor(this.newest / BLOCK_BITS);
      const target = Math.floor(seq / BLOCK_BITS);
      const clear = Math.min(target - current, RING_BLOCKS);
      for (let i = 1; i <= clear; i++) this.ring[(current + i) & MASK] = 0;
      this.newest = seq;
    } else if (this.newest - seq >= WINDOW) {
      return false;
    }
    const block = Math.floor(seq / BLOCK_BITS) & MASK;
    const bit = 1 << (seq % BLOCK_BITS);
    if ((this.ring[block]! & bit) !== 0) return false;
    this.ring[block]! |= bit;
    return true;
  }
}

/**
 * One window per origin. The table is bounded; when full, the origin seen
 * longest ago is forgotten (only authenticated frames ever create entries).
 */
export class ReplayGuard {
  private readonly windows = new Map<bigint, ReplayWindow>();

  constructor(private readonly maxOrigins = 4096) {}

  accept(origin: bigint, seq: number): boolean {
    let w = this.windows.get(origin);
    if (w === undefined) {
      if (this.windows.size >= this.maxOrigins) {
        const oldest = this.windows.keys().next().value as bigint;
        this.windows.delete(oldest);
      }
      w = new ReplayWindow();
      this.windows.set(origin, w);
    }
    return w.accept(seq);
  }

  get origins(): number {
    return this.windows.size;
  }
}

// Per-source token buckets for subscription datagrams. The table is bounded:
// idle entries are swept, and when it is full new sources are refused rather
// than letting a spoofed flood grow memory.

interface Bucket {
  tokens: number;
  last: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private rate: number,
    private burst: number,
    private readonly maxEntries = 65536,
  ) {}

  configure(rate: number, burst: number): void {
    this.rate = rate;
    this.burst = burst;
  }

  /** Takes one token for `source` at time `now` (ms); false when empty. */
  allow(source: string, now: number): boolean {
    let b = this.buckets.get(source);
    if (b === undefined) {
      if (this.buckets.size >= this.maxEntries) {
        this.sweep(now);
        if (this.buckets.size >= this.maxEntries) return false;
      }
      b = { tokens: this.burst, last: now };
      this.buckets.set(source, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.last) * this.rate) / 1000);
      b.last = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Forgets sources whose bucket has refilled: they are indistinguishable from new ones. */
  sweep(now: number): void {
    const full = (this.burst * 1000) / this.rate;
    for (const [k, b] of this.buckets) if (now - b.last >= full) this.buckets.delete(k);
  }

  get size(): number {
    return this.buckets.size;
  }
}

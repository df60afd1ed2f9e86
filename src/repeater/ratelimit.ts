// Per-source token buckets for subscription datagrams, in two tiers:
// - known sources (those of live subscribers) have their own table, which a
//   flood of other sources can never fill: a known node's re-announces are
//   never starved by strangers;
// - every other source shares a bounded table: idle entries are swept, and
//   when it is full a new stranger is refused rather than letting a spoofed
//   flood grow memory.
// The buckets are judge/token-bucket.ts, like the warm joins' pacers.

import { TokenBucket } from '../judge/token-bucket.js';

export class RateLimiter {
  private readonly strangers = new Map<string, TokenBucket>();
  private readonly known = new Map<string, TokenBucket>();

  constructor(
    private rate: number,
    private burst: number,
    private readonly maxStrangers = 65536,
  ) {}

  configure(rate: number, burst: number): void {
    this.rate = rate;
    this.burst = burst;
  }

  /**
   * Takes one token for `source` at time `now` (ms); false when empty.
   * `known`: the source has a live subscription (its table is bounded by the
   * registry's capacity, not by this class).
   */
  allow(source: string, now: number, known: boolean): boolean {
    const table = known ? this.known : this.strangers;
    let b = table.get(source);
    if (b === undefined && known) {
      // A stranger that just subscribed keeps its bucket: becoming known must not refill it.
      b = this.strangers.get(source);
      if (b !== undefined) {
        this.strangers.delete(source);
        table.set(source, b);
      }
    }
    if (b === undefined) {
      // Full: refused at once. Idle entries go in the periodic sweep; sweeping
      // here would cost a pass over the table per stranger, under a flood.
      if (!known && table.size >= this.maxStrangers) return false;
      b = new TokenBucket(this.burst, now);
      table.set(source, b);
    }
    return b.tryTake(now, this.rate, this.burst);
  }

  /** Forgets sources whose bucket has refilled: they are indistinguishable from new ones. */
  sweep(now: number): void {
    const full = (this.burst * 1000) / this.rate;
    for (const table of [this.strangers, this.known]) {
      for (const [k, b] of table) if (now - b.last >= full) table.delete(k);
    }
  }

  get size(): number {
    return this.strangers.size + this.known.size;
  }
}

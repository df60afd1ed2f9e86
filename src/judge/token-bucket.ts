// The one token bucket: everything paced or rate limited uses it, the
// subscription rate limiter (repeater/ratelimit.ts, one bucket per source)
// and the warm joins' pacers (repeater/warm-budget.ts, datagrams and bytes
// per second for all joins). Pure over the clock the caller passes in (ms).
//
// Invariants: tokens grow at `rate` per second and never past `burst`; a
// clock that goes back adds nothing; `take` may leave a debt (negative
// tokens), and nothing is granted until it is repaid, so a large datagram is
// paced like many small ones.

export class TokenBucket {
  constructor(
    /** Tokens now (negative: a debt). */
    public tokens: number,
    /** When they were last counted (ms). */
    public last: number,
  ) {}

  /** Adds what `rate` per second made since the last count, up to `burst`; returns the tokens now. */
  refill(now: number, rate: number, burst: number): number {
    this.tokens = Math.min(burst, this.tokens + (Math.max(0, now - this.last) * rate) / 1000);
    this.last = now;
    return this.tokens;
  }

  /** Refills, then takes one token if a whole one is there. */
  tryTake(now: number, rate: number, burst: number): boolean {
    if (this.refill(now, rate, burst) < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Takes `n` tokens, possibly more than are left (a debt). */
  take(n: number): void {
    this.tokens -= n;
  }

  /** Milliseconds from the last count until one whole token is there at `rate`. */
  msUntilOne(rate: number): number {
    return this.tokens >= 1 ? 0 : ((1 - this.tokens) * 1000) / rate;
  }
}

// What one warm join may send again after a closed port answered (ICMP): the
// versions it sent, and those the live path delivered to its subscriber, in
// the last span or two of RUN_MS before the answer was noticed. Pure
// bookkeeping over versions and a clock the caller passes in.
//
// Invariants:
// - A loss is noticed within RUN_MS of the datagram that met the closed port
//   (the fan-out reads the error queues at least every 100 ms), so the two
//   last spans hold everything it can have cost.
// - A join sends again at most MAX_REWINDS times; what it sends again is
//   charged to its destination's REDO_BYTES (warm-budget.ts) by the caller,
//   so a port that stays closed costs a bounded number of bytes, not a join
//   per answer.

/** Longer than a loss takes to be noticed. */
export const RUN_MS = 250;
/** Losses a join sends again at most; past them it goes on (each one walks the state from its first entry). */
export const MAX_REWINDS = 3;

/** Versions sent (warm) or delivered (live) during one span. */
interface Span {
  readonly at: number;
  warmLo: number;
  warmHi: number;
  /** The state's version when the span began: the live path delivered what is above it. */
  readonly liveFrom: number;
}

/** Versions [lo, hi]; empty when hi < lo. */
export interface Range {
  lo: number;
  hi: number;
}

export const emptyRange = (): Range => ({ lo: 1, hi: 0 });
export const inRange = (r: Range, v: number): boolean => v >= r.lo && v <= r.hi;

/** Widens `r` to hold [lo, hi]; returns whether it grew. */
export function widen(r: Range, lo: number, hi: number): boolean {
  if (r.hi < r.lo) {
    r.lo = lo;
    r.hi = hi;
    return true;
  }
  const grew = lo < r.lo || hi > r.hi;
  r.lo = Math.min(r.lo, lo);
  r.hi = Math.max(r.hi, hi);
  return grew;
}

const span = (at: number, liveFrom: number): Span => ({ at, warmLo: 0, warmHi: 0, liveFrom });

export class Redo {
  private cur: Span;
  private prev: Span | null = null;
  private readonly warm = emptyRange();
  private readonly live = emptyRange();
  rewinds = 0;

  /** `liveFrom`: the live path delivers what is above this version from `now` on. */
  constructor(now: number, liveFrom: number) {
    this.cur = span(now, liveFrom);
  }

  /** Called before each send: a new span every RUN_MS. */
  tick(now: number, version: number): void {
    if (now - this.cur.at < RUN_MS) return;
    this.prev = this.cur;
    this.cur = span(now, version);
  }

  /** The join sent the entry of version `v`. */
  sent(v: number): void {
    if (this.cur.warmLo === 0 || v < this.cur.warmLo) this.cur.warmLo = v;
    this.cur.warmHi = Math.max(this.cur.warmHi, v);
  }

  /**
   * A closed port answered at `now` (the state is at `version`); sends wait
   * until `resumeAt`. Returns whether the join must walk again from its
   * first entry to send what the spans held.
   */
  lost(resumeAt: number, version: number): boolean {
    const spans = this.prev === null ? [this.cur] : [this.prev, this.cur];
    this.prev = null;
    this.cur = span(resumeAt, version);
    if (this.rewinds >= MAX_REWINDS) return false;
    let grew = false;
    for (const s of spans) {
      if (s.warmHi > 0) grew = widen(this.warm, s.warmLo, s.warmHi) || grew;
      if (version > s.liveFrom) grew = widen(this.live, s.liveFrom + 1, version) || grew;
    }
    if (grew) this.rewinds++;
    return grew;
  }

  /** Whether the entry of version `v` is one to send again. */
  again(v: number): boolean {
    return inRange(this.warm, v) || inRange(this.live, v);
  }
}

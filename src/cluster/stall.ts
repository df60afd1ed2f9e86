// This process's own stalls: SIGSTOP, a frozen VM, a swap storm, a long
// synchronous pause. While we were stopped the world went on: our peers kept
// publishing (their messages queued in our socket), our nodes kept sending
// (queued in our listeners), and our peers may have taken for dead and
// replaced us. What we read right after such a gap is old, and the silence
// of our peers we measure across it is ours, not theirs.
//
// A watchdog timer beats every BEAT_MS; a gap of more than GAP_MS between
// two beats, or a datagram or bus message handled while the last beat is
// more than GAP_MS old (the event loop runs I/O before overdue timers), is a
// stall, reported once. The "burst" that follows (what was read before the
// first beat after the stall) is what queued while we were stopped.
// Monotonic clock: a wall-clock step is not a stall.

/** A detected stall, on the wall clock (ms) and its length. */
export interface Stall {
  /** When we last ran before it (our last beat). */
  readonly fromMs: number;
  /** When we noticed we run again. */
  readonly atMs: number;
  readonly ms: number;
}

export const BEAT_MS = 100;
/** Longer than any pause a healthy process makes (GC, a busy turn), far below a peer timeout. */
export const GAP_MS = 500;

export class StallWatch {
  private last = performance.now();
  private lastWall = Date.now();
  private burst = false;
  private timer: NodeJS.Timeout | null = null;
  stalls = 0;
  longestMs = 0;
  lastStall: Stall | null = null;

  constructor(private readonly onStall: (s: Stall) => void) {}

  start(): void {
    this.timer = setInterval(() => this.beat(), BEAT_MS);
    this.timer.unref();
  }

  private beat(): void {
    const now = performance.now();
    if (now - this.last > GAP_MS && !this.burst) this.detect(now);
    else this.burst = false;
    this.last = now;
    this.lastWall = Date.now();
  }

  /** Called for what we read: true while it is part of the burst after a stall (it queued while we were stopped). */
  check(): boolean {
    if (!this.burst && performance.now() - this.last > GAP_MS) this.detect(performance.now());
    return this.burst;
  }

  private detect(now: number): void {
    this.burst = true;
    const ms = Math.round(now - this.last);
    const atMs = Date.now();
    const s: Stall = { fromMs: Math.min(this.lastWall, atMs - ms), atMs, ms };
    this.stalls++;
    this.longestMs = Math.max(this.longestMs, ms);
    this.lastStall = s;
    this.onStall(s);
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}

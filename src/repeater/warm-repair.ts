// What a repeater that starts serving a subscriber another repeater served
// owes it (cluster mode; README.md, "Cluster mode"): the bookkeeping behind
// WarmJoins.takeover. Pure: no I/O, no timers; clocks are passed in.
//
// Invariants:
// - A mark (t, v) says a live state's version was v at time t (ms), so every
//   change after t has a version above v. versionAt(T) is the version of the
//   latest mark at or before T: a floor below every change since T. With no
//   mark that old (the history is bounded, or the clock went back) it is 0:
//   everything, never too little.
// - Marks are taken on the live path after each change: the newest is
//   moved forward by every change within MARK_MS of when it was opened, so
//   it names the last change (a quiet state's floor is exact) and the others
//   are at most MARK_MS apart; at most MAX_MARKS per state (about seven
//   minutes of continuous traffic; a quiet state takes none). Every change
//   that leaves an entry goes through the live path once the repeater
//   started (a fetched state is applied while joins are held, when nothing
//   is repaired).
// - `owes(e)`: a warm join toward e started on this repeater (served here
//   or left to the repeater that serves it) and none completed since, here
//   or, as a peer said, anywhere (a peer's word may come before our own
//   join starts: it stays with the entry). `done`: its join completed here,
//   or it needed none (the state was empty). Weak sets of registry entries:
//   they go with the entries (a node that subscribes again is a new entry),
//   so they are bounded by the registries.

import type { Subscriber } from '../path/channel.js';
import type { LiveState } from '../path/live-state.js';

/** At most one mark per this long. */
export const MARK_MS = 100;
/** Marks kept per state, newest first to go. */
export const MAX_MARKS = 4096;

/** A bounded history of (time, version) of one live state. */
export class VersionMarks {
  private readonly at = new Float64Array(MAX_MARKS);
  private readonly version = new Float64Array(MAX_MARKS);
  /** Index of the next mark to write. */
  private next = 0;
  private count = 0;
  /** When the newest mark was opened, and when it was last moved. */
  private opened = -Infinity;
  private last = -Infinity;

  /** Called after a change at `nowMs` that left the state at `version`. */
  note(nowMs: number, version: number): void {
    // The clock went back: older marks would name the wrong times.
    if (nowMs < this.last) this.count = 0;
    else if (this.count > 0 && nowMs - this.opened < MARK_MS) {
      const newest = (this.next - 1 + MAX_MARKS) % MAX_MARKS;
      this.at[newest] = nowMs;
      this.version[newest] = version;
      this.last = nowMs;
      return;
    }
    this.at[this.next] = nowMs;
    this.version[this.next] = version;
    this.next = (this.next + 1) % MAX_MARKS;
    this.count = Math.min(this.count + 1, MAX_MARKS);
    this.opened = this.last = nowMs;
  }

  /** A version below every change made after `t` (ms): the latest mark at or before it, else 0. */
  versionAt(t: number): number {
    for (let i = 1; i <= this.count; i++) {
      const k = (this.next - i + MAX_MARKS) % MAX_MARKS;
      if (this.at[k]! <= t) return this.version[k]!;
    }
    return 0;
  }
}

export class WarmRepairs {
  private readonly marks = new WeakMap<LiveState, VersionMarks>();
  private readonly owedSet = new WeakSet<Subscriber>();
  private readonly paidSet = new WeakSet<Subscriber>();
  private readonly doneSet = new WeakSet<Subscriber>();

  /** Hot path: `state` changed at `nowMs`. */
  note(state: LiveState, nowMs: number): void {
    let m = this.marks.get(state);
    if (m === undefined) this.marks.set(state, (m = new VersionMarks()));
    m.note(nowMs, state.version);
  }

  /** A version of `state` below every change made after `t` (ms). */
  floor(state: LiveState, t: number): number {
    return this.marks.get(state)?.versionAt(t) ?? 0;
  }

  /** A join toward `e` starts here: it is owed one until one completes. */
  owe(e: Subscriber): void {
    this.owedSet.add(e);
    this.doneSet.delete(e);
  }

  /** A join toward `e` completed here, or it needs none. */
  completed(e: Subscriber): void {
    this.owedSet.delete(e);
    this.doneSet.add(e);
  }

  /** Another repeater said its join toward `e` completed. */
  paid(e: Subscriber): void {
    this.paidSet.add(e);
  }

  owes(e: Subscriber): boolean {
    return this.owedSet.has(e) && !this.paidSet.has(e);
  }

  done(e: Subscriber): boolean {
    return this.doneSet.has(e);
  }
}

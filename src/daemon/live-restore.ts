// Applies a saved live state (live-store.ts) to the repeater's live states in
// slices, with the listeners already open: the event loop turns between
// slices (setImmediate), so datagrams keep flowing while millions of sets are
// restored.
//
// Invariants:
// - every set is checked as if it came from the network (a valid cache
//   update, a set without trace, not expired, within --state-max-bytes),
//   oldest first, and skipped (counted by reason) otherwise;
// - what changed a key since the restore began (the live path, a peer's
//   state, a delete) is newer than the file: a set whose key holds an entry
//   or a tombstone newer than the state's version at the start is skipped
//   ('changed since the restore began');
// - restored sets are applied as not delivered: a warm join that started
//   meanwhile sends them whatever their version;
// - a channel whose live state went away or was replaced (a reload, the
//   repeater closing) gets nothing more;
// - the file's bytes (session secrets) are zeroed when the restore ends,
//   however it ends; finishNow() applies the rest at once (at stop, so
//   that a save right after it loses nothing).

import type { LiveState } from '../path/live-state.js';
import { cacheKeyText } from '../wire/cache-fields.js';
import { CACHE_SET, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { type OpenedLiveState, SetCursor } from '../wire/live-state-file.js';

/** A slice ends after this long (checked every CHECK_EVERY sets): the longest the event loop waits for the restore. */
export const SLICE_MS = 5;
const CHECK_EVERY = 64;

export const CHANGED = 'changed since the restore began';

interface Target {
  readonly state: LiveState;
  /** The state's version when the restore began. */
  readonly start: number;
}

export class LiveRestore {
  /** Sets applied. */
  restored = 0;
  slices = 0;
  readonly skipped = new Map<string, number>();
  readonly done: Promise<number>;
  private resolve: (n: number) => void = () => {};
  private readonly targets = new Map<string, Target | null>();
  private channel = 0;
  private cursor: SetCursor | null = null;
  private pending: NodeJS.Immediate | null = null;
  private finished = false;
  private readonly shape = newShape();
  private readonly began = performance.now();

  /** `stateOf`: the channel's live state now (undefined: none); `nowMs`: the wall clock. */
  constructor(
    private readonly buf: Buffer,
    private readonly opened: OpenedLiveState,
    private readonly stateOf: (channel: string) => LiveState | undefined,
    private readonly onDone: (r: LiveRestore, ms: number) => void,
    private readonly nowMs: () => number = Date.now,
  ) {
    this.done = new Promise((resolve) => (this.resolve = resolve));
    for (const c of opened.channels) {
      const state = stateOf(c.channel);
      if (!this.targets.has(c.channel)) this.targets.set(c.channel, state === undefined ? null : { state, start: state.version });
    }
  }

  /** Starts the slices (the first one after the current turn). */
  start(): void {
    this.pending = setImmediate(this.slice);
  }

  /** Applies what is left at once (at stop). */
  finishNow(): void {
    if (this.finished) return;
    if (this.pending !== null) clearImmediate(this.pending);
    this.pending = null;
    this.run(Infinity);
  }

  private readonly slice = (): void => {
    this.pending = null;
    this.run(performance.now() + SLICE_MS);
    if (!this.finished) this.pending = setImmediate(this.slice);
  };

  private skip(why: string, n = 1): void {
    this.skipped.set(why, (this.skipped.get(why) ?? 0) + n);
  }

  /** Applies sets until `deadline` (performance.now()) or the end. */
  private run(deadline: number): void {
    this.slices++;
    const channels = this.opened.channels;
    const nowSec = Math.floor(this.nowMs() / 1000);
    let n = 0;
    while (this.channel < channels.length) {
      const c = channels[this.channel]!;
      const t = this.targets.get(c.channel)!;
      if (t === null || this.stateOf(c.channel) !== t.state) {
        this.skip('no such channel', c.count - (this.cursor === null ? 0 : this.cursor.read));
        this.nextChannel();
        continue;
      }
      this.cursor ??= new SetCursor(this.buf, c);
      for (;;) {
        if (++n % CHECK_EVERY === 0 && performance.now() >= deadline) return;
        const set = this.cursor.next();
        if (set === null) break;
        this.apply(t, set, nowSec);
      }
      this.nextChannel();
    }
    this.finish();
  }

  private nextChannel(): void {
    this.channel++;
    this.cursor = null;
  }

  private apply(t: Target, set: Buffer, nowSec: number): void {
    const bad = inspectCacheUpdate(set, this.shape);
    if (bad !== undefined || this.shape.cmd !== CACHE_SET || this.shape.traceAt >= 0) {
      this.skip(bad ?? 'not a set without trace');
      return;
    }
    const key = cacheKeyText(set);
    const newer = (t.state.get(key)?.version ?? -1) > t.start || (t.state.tombstone(key)?.version ?? -1) > t.start;
    if (newer) {
      this.skip(CHANGED);
      return;
    }
    const r = t.state.learn(set, this.shape, nowSec, false);
    if (r === 'set') this.restored++;
    else this.skip(r);
  }

  private finish(): void {
    this.finished = true;
    this.buf.fill(0);
    this.onDone(this, performance.now() - this.began);
    this.resolve(this.restored);
  }
}

// The live states of the path's channels (live-state.ts), kept by the path
// while warm joins are on, and learnt once per receive batch.
//
// Invariants:
// - What the live path accepted in a batch is learnt at the batch's end, in
//   arrival order, after its copies were queued: a set sent live is stamped
//   with a version above every join started before it, so those joins skip
//   it as delivered (repeater/warm-runner.ts).
// - A subscription is a boundary: what the batch accepted before it is
//   learnt before the desk sees it (settle), so a join it starts counts those
//   updates as sent by the live path only if they were (a subscriber added
//   mid-batch got none of the copies queued before it joined).
// - The queue holds references to the batch's datagrams (views into the
//   receive arena, valid until the batch ends) and is emptied at its end.

import type { Channel } from './channel.js';
import { LiveState } from './live-state.js';
import type { PathConfig } from './path-config.js';
import type { LiveWatch } from './ports.js';
import { inspectCacheUpdate, newShape } from '../wire/cache.js';

export class LiveStates {
  /** Told of what the live path changes (warm joins); null: nobody listens. */
  watch: LiveWatch | null = null;
  private channels: ReadonlyMap<string, Channel> = new Map();
  private readonly queuedIn: Channel[] = [];
  private readonly queued: Buffer[] = [];
  private readonly changed: LiveState[] = [];
  private readonly shape = newShape();

  /** Keeps a state for every channel of `cfg` while warm joins are on; drops (wipes) the others'. */
  configure(cfg: PathConfig): void {
    for (const [name, ch] of this.channels) {
      if (cfg.channels.get(name) === ch && cfg.live.enabled) continue;
      // Turned off, or the channel is gone: nothing may keep session secrets for nobody.
      ch.live?.clear();
      ch.live = null;
    }
    this.channels = cfg.channels;
    for (const ch of cfg.channels.values()) {
      if (!cfg.live.enabled) continue;
      if (ch.live === null) ch.live = new LiveState(cfg.live.maxBytes);
      else ch.live.setMaxBytes(cfg.live.maxBytes);
    }
  }

  /** The live state of a channel, when one is kept. */
  get(channel: string): LiveState | undefined {
    return this.channels.get(channel)?.live ?? undefined;
  }

  /** Every live state kept, by channel. */
  *entries(): IterableIterator<[string, LiveState]> {
    for (const [name, ch] of this.channels) if (ch.live !== null) yield [name, ch.live];
  }

  /** An update the live path accepted into `ch` (inspected, valid): learnt at the batch's end. */
  queue(ch: Channel, buf: Buffer): void {
    if (ch.live === null) return;
    this.queuedIn.push(ch);
    this.queued.push(buf);
  }

  /** Learns what was queued, in order. */
  learn(nowMs: number): void {
    const n = this.queued.length;
    if (n === 0) return;
    const nowSec = Math.floor(nowMs / 1000);
    const s = this.shape;
    const touched = this.watch?.touched ?? null;
    for (let i = 0; i < n; i++) {
      const state = this.queuedIn[i]!.live;
      const buf = this.queued[i]!;
      // Checked when accepted; the shape is recomputed for this very buffer.
      if (state === null || inspectCacheUpdate(buf, s) !== undefined) continue;
      touched?.(this.queuedIn[i]!.name, buf);
      state.learn(buf, s, nowSec);
      if (this.changed.length === 0 || this.changed[this.changed.length - 1] !== state) {
        if (!this.changed.includes(state)) this.changed.push(state);
      }
    }
    this.queuedIn.length = 0;
    this.queued.length = 0;
    const watch = this.watch;
    if (watch !== null) for (const state of this.changed) watch.changed(state, nowMs);
    this.changed.length = 0;
  }

  /** Wipes every state (the path closes). */
  clear(): void {
    this.queuedIn.length = 0;
    this.queued.length = 0;
    for (const ch of this.channels.values()) {
      ch.live?.clear();
      ch.live = null;
    }
  }
}

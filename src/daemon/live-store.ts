// --save-live-state: the live cache state survives a planned restart of the
// repeater (docs/PROTOCOL.md, "The live state file"). The state holds TLS
// session secrets in clear, so:
// - nothing is written unless the operator asked for it, and then only at
//   stop, to DIR/live-state.pb with mode 0600, atomically (a fresh temp file
//   created exclusively, fsynced, renamed, directory fsynced);
// - at start the file is consumed: read back when it is valid, and deleted
//   whatever it held, so a crash later can never bring back a state in which
//   since-deleted sessions still live; a file found while saving is off is
//   deleted too;
// - it must be ours like every file in the state directory (base/trust.ts:
//   a symbolic link or another user's file refuses the start, and is never
//   followed); it is validated like the registry file: mode (no access for
//   group or others, else deleted unread), age (written at most MAX_AGE_MS
//   before the start, not in the future), channel names of the running
//   config, and every set checked as if it came from the network (a set
//   without trace, not expired), applied oldest first under the
//   --state-max-bytes bound.

import { closeSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import { type OpenedFile, openTrusted } from '../base/trust.js';
import type { Repeater } from '../repeater/repeater.js';
import { CACHE_SET, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { decodeLiveState, encodeLiveState, type SavedChannel } from '../wire/live-state-file.js';

export const LIVE_STATE_FILE = 'live-state.pb';
/** A saved state older than this is refused: the cluster has moved on (deletes it cannot know). */
export const MAX_AGE_MS = 5 * 60_000;
const FUTURE_SLACK_MS = 60_000;

export class LiveStore {
  readonly file: string;
  saves = 0;
  saveErrors = 0;
  private stopped = false;

  /** `dir` was checked (created, writable, ours) by the RegistryStore of the same --state-dir. */
  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {
    this.file = join(dir, LIVE_STATE_FILE);
  }

  /**
   * At start: applies the saved state to the repeater's live states (when
   * `load`), then deletes the file in every case. Returns the sets restored.
   */
  restore(repeater: Repeater, load: boolean, now = Date.now()): number {
    let buf: Buffer;
    let opened: OpenedFile | null;
    try {
      // Never follows a symbolic link, and refuses another user's file (ConfigError: the start is refused).
      opened = openTrusted(this.file, 'saved live state', { checkMode: false });
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      this.log.warn('cannot read the saved live state; starting empty', { file: this.file, error: describe(err) });
      return 0;
    }
    if (opened === null) return 0;
    try {
      if (!load) {
        this.discard('saving the live state is off');
        return 0;
      }
      if ((opened.st.mode & 0o077) !== 0) {
        this.discard(`mode ${(opened.st.mode & 0o777).toString(8)} lets group or others access it`);
        return 0;
      }
      buf = readFileSync(opened.fd);
    } catch (err) {
      this.log.warn('cannot read the saved live state; starting empty', { file: this.file, error: describe(err) });
      return 0;
    } finally {
      closeSync(opened.fd);
    }
    try {
      return this.apply(repeater, buf, now);
    } finally {
      buf.fill(0);
      this.discard(null);
    }
  }

  private apply(repeater: Repeater, buf: Buffer, now: number): number {
    const saved = decodeLiveState(buf);
    if (saved === null) {
      this.log.warn('saved live state is corrupt; starting empty', { file: this.file });
      return 0;
    }
    const t = saved.savedAtMs;
    if (!Number.isSafeInteger(t) || t <= 0 || t > now + FUTURE_SLACK_MS || now - t > MAX_AGE_MS) {
      this.log.warn('saved live state refused: written too long ago (or in the future)', { file: this.file, savedAtMs: t, maxAgeSeconds: MAX_AGE_MS / 1000 });
      return 0;
    }
    const skipped = new Map<string, number>();
    const skip = (why: string, n = 1) => skipped.set(why, (skipped.get(why) ?? 0) + n);
    const shape = newShape();
    const nowSec = Math.floor(now / 1000);
    let restored = 0;
    let total = 0;
    for (const c of saved.channels) {
      total += c.sets.length;
      const state = repeater.warm.state(c.channel);
      if (state === undefined) {
        skip('no such channel', c.sets.length);
        continue;
      }
      for (const set of c.sets) {
        const bad = inspectCacheUpdate(set, shape);
        if (bad !== undefined || shape.cmd !== CACHE_SET || shape.traceAt >= 0) {
          skip(bad ?? 'not a set without trace');
          continue;
        }
        const r = state.learn(set, shape, nowSec);
        if (r === 'set') restored++;
        else skip(r);
      }
    }
    this.log.info('restored the live state', { file: this.file, saved: total, restored, skipped: Object.fromEntries(skipped), savedAt: new Date(t).toISOString() });
    return restored;
  }

  /** Deletes the file (logging why, when `why` is given). */
  private discard(why: string | null): void {
    try {
      unlinkSync(this.file);
      if (why !== null) this.log.warn('saved live state deleted unread', { file: this.file, reason: why });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.log.error('cannot delete the saved live state (it holds session secrets): remove it by hand', { file: this.file, error: describe(err) });
    }
  }

  /** At stop (once: a second call would find the states wiped): writes every channel's live state, oldest entries first. Never throws. */
  save(repeater: Repeater, now = Date.now()): boolean {
    if (this.stopped) return false;
    this.stopped = true;
    const nowSec = Math.floor(now / 1000);
    const channels: SavedChannel[] = [];
    for (const name of repeater.channels.keys()) {
      const state = repeater.warm.state(name);
      if (state === undefined || state.size === 0) continue;
      const sets: Buffer[] = [];
      for (const [, e] of state.walk()) if (e.expires === 0 || e.expires > nowSec) sets.push(e.content);
      channels.push({ channel: name, sets });
    }
    const data = Buffer.from(encodeLiveState({ savedAtMs: now, channels }));
    try {
      writeAtomically(this.file, data);
      this.saves++;
      this.log.info('live state saved', { file: this.file, channels: channels.length, sets: channels.reduce((n, c) => n + c.sets.length, 0), bytes: data.length });
      return true;
    } catch (err) {
      this.saveErrors++;
      this.log.error('cannot save the live state', { file: this.file, error: describe(err) });
      return false;
    } finally {
      data.fill(0);
    }
  }
}

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
//   --state-max-bytes bound;
// - the listeners are open while it is read: the sets are applied in slices
//   between which the event loop turns (live-restore.ts), what the live
//   path changes meanwhile wins over the file, and warm joins wait until
//   the last slice (subscribers new meanwhile are warmed from the whole
//   state, as with a fetch from a peer in cluster mode).

import { closeSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import { type OpenedFile, openTrusted } from '../base/trust.js';
import type { Repeater } from '../repeater/repeater.js';
import { encodeLiveState, openLiveState, type SavedChannel } from '../wire/live-state-file.js';
import { LiveRestore } from './live-restore.js';

export const LIVE_STATE_FILE = 'live-state.pb';
/** A saved state older than this is refused: the cluster has moved on (deletes it cannot know). */
export const MAX_AGE_MS = 5 * 60_000;
const FUTURE_SLACK_MS = 60_000;

export class LiveStore {
  readonly file: string;
  saves = 0;
  saveErrors = 0;
  private stopped = false;
  /** A restore still in progress. */
  private restoring: LiveRestore | null = null;

  /** `dir` was checked (created, writable, ours) by the RegistryStore of the same --state-dir. */
  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {
    this.file = join(dir, LIVE_STATE_FILE);
  }

  /**
   * At start: reads the saved state and deletes the file in every case, then
   * (when `load`, and the file is valid) applies it to the repeater's live
   * states in slices. Throws (at once) what refuses the start; the promise
   * says how many sets were restored, once they all were.
   */
  restore(repeater: Repeater, load: boolean, now = Date.now()): Promise<number> {
    let buf: Buffer;
    let opened: OpenedFile | null;
    try {
      // Never follows a symbolic link, and refuses another user's file (ConfigError: the start is refused).
      opened = openTrusted(this.file, 'saved live state', { checkMode: false });
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      this.log.warn('cannot read the saved live state; starting empty', { file: this.file, error: describe(err) });
      return Promise.resolve(0);
    }
    if (opened === null) return Promise.resolve(0);
    try {
      if (!load) {
        this.discard('saving the live state is off');
        return Promise.resolve(0);
      }
      if ((opened.st.mode & 0o077) !== 0) {
        this.discard(`mode ${(opened.st.mode & 0o777).toString(8)} lets group or others access it`);
        return Promise.resolve(0);
      }
      buf = readFileSync(opened.fd);
    } catch (err) {
      this.log.warn('cannot read the saved live state; starting empty', { file: this.file, error: describe(err) });
      this.discard(null);
      return Promise.resolve(0);
    } finally {
      closeSync(opened.fd);
    }
    // Consumed: whatever happens from here on, the file is gone.
    this.discard(null);
    const job = this.begin(repeater, buf, now);
    if (job === null) {
      buf.fill(0);
      return Promise.resolve(0);
    }
    this.restoring = job;
    job.start();
    return job.done;
  }

  /** A restore of `buf`, when it is a valid file written recently enough. */
  private begin(repeater: Repeater, buf: Buffer, now: number): LiveRestore | null {
    const saved = openLiveState(buf);
    if (saved === null) {
      this.log.warn('saved live state is corrupt; starting empty', { file: this.file });
      return null;
    }
    const t = saved.savedAtMs;
    if (!Number.isSafeInteger(t) || t <= 0 || t > now + FUTURE_SLACK_MS || now - t > MAX_AGE_MS) {
      this.log.warn('saved live state refused: written too long ago (or in the future)', { file: this.file, savedAtMs: t, maxAgeSeconds: MAX_AGE_MS / 1000 });
      return null;
    }
    this.log.info('restoring the live state', { file: this.file, saved: saved.total, channels: saved.channels.length, savedAt: new Date(t).toISOString() });
    // Warm joins wait for the whole state (a join that ended before the last slice would miss the rest).
    // In cluster mode they are held already, until the fetch from a peer ends: that is the cluster's to release.
    const hold = !repeater.warm.holding;
    if (hold) repeater.warm.hold();
    const skew = now - Date.now();
    return new LiveRestore(
      buf,
      saved,
      (channel) => repeater.warm.state(channel),
      (r, ms) => {
        if (this.restoring === r) this.restoring = null;
        this.log.info('restored the live state', { file: this.file, saved: saved.total, restored: r.restored, skipped: Object.fromEntries(r.skipped), savedAt: new Date(t).toISOString(), ms: Math.round(ms), slices: r.slices });
        if (hold) repeater.warm.release();
      },
      () => Date.now() + skew,
    );
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
    // What the file held and is not applied yet would be lost: applied now.
    this.restoring?.finishNow();
    const nowSec = Math.floor(now / 1000);
    const channels: SavedChannel[] = [];
    for (const name of repeater.channels.keys()) {
      const state = repeater.warm.state(name);
      if (state === undefined || state.size === 0) continue;
      const sets: Buffer[] = [];
      for (const [, e] of state.walk()) if (e.expires === 0 || e.expires > nowSec) sets.push(e.content);
      channels.push({ channel: name, sets });
    }
    const data = encodeLiveState({ savedAtMs: now, channels });
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

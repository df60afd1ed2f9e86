// --state-dir: the subscriber registry survives restarts, so a restarted
// repeater forwards to known subscribers at once instead of waiting for
// their next announce. Restored entries keep their original deadlines.
// Writes are atomic (temp file, fsync, rename, fsync of the directory) and
// at most one per interval; a failing disk never affects forwarding.
// The directory and the files in it must be ours (base/trust.ts): a saved
// file is believed, so one another user could plant refuses the start.

import { constants, mkdirSync, accessSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { writeAtomically } from '../base/files.js';
import type { Logger } from '../base/log.js';
import { checkTrustedDir, checkTrustedFile, readTrusted } from '../base/trust.js';
import { decodeRegistry, encodeRegistry, type RegistryFile, type SavedSubscriber } from '../wire/registry-file.js';
import type { Repeater } from '../repeater/repeater.js';
import { LIVE_STATE_FILE } from './live-store.js';
import { TICKETS_FILE } from './ticket-store.js';

export const REGISTRY_FILE = 'registry.pb';

export class RegistryStore {
  readonly file: string;
  saves = 0;
  saveErrors = 0;
  private timer: NodeJS.Timeout | null = null;
  private savedMembership = -1;
  private savedRefreshes = -1;
  private lastSaveAt = 0;

  /** Checks (creating if needed) that `dir` is a writable directory of ours; refuses to start otherwise. */
  constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      accessSync(dir, constants.W_OK | constants.X_OK);
    } catch (err) {
      throw new ConfigError(`--state-dir ${dir}: not a writable directory (${describe(err)})`);
    }
    this.check();
    this.file = join(dir, REGISTRY_FILE);
  }

  /**
   * Throws a ConfigError when the directory, or a file in it that a start
   * reads, is not ours (at start, before any socket is opened, and on every
   * reload). The live state's mode is LiveStore's to judge: it deletes one
   * that group or others could read.
   */
  check(): void {
    checkTrustedDir(this.dir, '--state-dir');
    checkTrustedFile(join(this.dir, REGISTRY_FILE), 'saved state');
    checkTrustedFile(join(this.dir, TICKETS_FILE), 'saved ticket keys', { secret: true, noun: 'the ticket keys' });
    checkTrustedFile(join(this.dir, LIVE_STATE_FILE), 'saved live state', { checkMode: false });
  }

  /**
   * Reads the saved registry; null when there is none or it does not decode
   * (logged). Throws a ConfigError for a file that is not ours (a symbolic
   * link, another user's, writable by group or others).
   */
  load(): RegistryFile | null {
    let buf: Buffer | null;
    try {
      buf = readTrusted(this.file, 'saved state');
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      this.log.warn('cannot read saved state; starting empty', { file: this.file, error: describe(err) });
      return null;
    }
    if (buf === null) return null;
    const registry = decodeRegistry(buf);
    if (registry === null) this.log.warn('saved state is corrupt; starting empty', { file: this.file });
    return registry;
  }

  /**
   * Puts saved subscribers back, each after the checks a live subscription
   * passes and range checks on every field; a bad entry is skipped and logged.
   */
  restore(repeater: Repeater, registry: RegistryFile, now = Date.now()): number {
    let restored = 0;
    const skipped = new Map<string, number>();
    for (const s of registry.subscribers) {
      const why = repeater.restore(s, now);
      if (why === null) {
        restored++;
        continue;
      }
      skipped.set(why, (skipped.get(why) ?? 0) + 1);
      this.log.throttle('warn', `restore:${why}`, 'saved subscriber skipped', { file: this.file, channel: s.channel, address: s.address, reason: why });
    }
    const savedAt = Number.isSafeInteger(registry.savedAtMs) && registry.savedAtMs > 0 && registry.savedAtMs < 8.64e15 ? new Date(registry.savedAtMs).toISOString() : null;
    this.log.info('restored subscribers from saved state', { file: this.file, saved: registry.subscribers.length, restored, skipped: Object.fromEntries(skipped), savedAt });
    return restored;
  }

  snapshot(repeater: Repeater, now = Date.now()): RegistryFile {
    const subscribers: SavedSubscriber[] = [];
    for (const ch of repeater.channels.values()) {
      for (const e of ch.subscribers()) {
        if (e.isStatic) continue;
        subscribers.push({
          channel: ch.name,
          address: e.endpoint.text,
          key: e.key,
          sealed: e.form === 'sealed',
          firstSeenMs: e.firstSeen,
          lastSeenMs: e.lastSeen,
          deadlineMs: e.deadline,
          source: e.source ?? '',
          origin: e.origin ?? 0n,
        });
      }
    }
    return { savedAtMs: now, subscribers };
  }

  /**
   * Writes the registry when subscribers came or went, or (at most every
   * `refreshEveryMs`) when refreshes moved deadlines. Never throws.
   */
  save(repeater: Repeater, force = false, refreshEveryMs = 15_000): boolean {
    let membership = 0;
    let refreshes = 0;
    for (const ch of repeater.channels.values()) {
      for (const r of [ch.plain, ch.sealed]) {
        membership += r.membership;
        refreshes += r.refreshes;
      }
    }
    const now = Date.now();
    const changed = membership !== this.savedMembership;
    const refreshed = refreshes !== this.savedRefreshes && now - this.lastSaveAt >= refreshEveryMs;
    if (!force && !changed && !refreshed) return false;
    try {
      writeAtomically(this.file, Buffer.from(encodeRegistry(this.snapshot(repeater, now))));
      this.savedMembership = membership;
      this.savedRefreshes = refreshes;
      this.lastSaveAt = now;
      this.saves++;
      return true;
    } catch (err) {
      this.saveErrors++;
      this.log.throttle('error', 'state-save', 'cannot save state; forwarding continues', { file: this.file, error: describe(err) }, 60_000);
      return false;
    }
  }

  /** Saves every `intervalMs` while running. */
  start(repeater: Repeater, intervalMs = 1000): void {
    this.timer = setInterval(() => this.save(repeater), intervalMs);
    this.timer.unref();
  }

  stop(repeater: Repeater): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.save(repeater, true);
  }
}

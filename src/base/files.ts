// Files the daemons write: whole or not at all.

import { closeSync, constants, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces `file` with `data` so a crash leaves either the old or the new
 * file, whole: `file.tmp` is created with `mode` (0600: it may hold secrets),
 * written and fsynced, renamed over `file`, then the directory is fsynced.
 * The temp file is always a new one (a stale one is removed first, never
 * reused with its mode, and never followed if it is a symlink), so the file
 * gets `mode` (less the umask) whatever was left behind.
 */
export function writeAtomically(file: string, data: Uint8Array, mode = 0o600): void {
  const tmp = `${file}.tmp`;
  try {
    unlinkSync(tmp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  const dir = openSync(dirname(file), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

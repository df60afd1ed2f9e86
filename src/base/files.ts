// Files the daemons write: whole or not at all.

import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Replaces `file` with `data` so a crash leaves either the old or the new
 * file, whole: `file.tmp` is created with `mode` (0600: it may hold secrets),
 * written and fsynced, renamed over `file`, then the directory is fsynced.
 */
export function writeAtomically(file: string, data: Uint8Array, mode = 0o600): void {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', mode);
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

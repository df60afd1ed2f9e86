// Files and directories the daemons trust: the state directory and what is
// in it, key files, the agent's ticket key directory and its files. What the
// daemon reads from them it believes (a saved ticket key becomes the fleet's
// encrypting key), so they must be ours, in the sense of OpenSSH's
// StrictModes:
// - a trusted directory, and every directory above it, is owned by root or by
//   this process's effective user; none of them may be written by group or
//   others (an enclosing directory may, with the sticky bit: /tmp), so no
//   other user can plant, swap or rename anything on the way;
// - a trusted file is a regular file (never a symbolic link: opened with
//   O_NOFOLLOW, and checked on the descriptor it is read from), owned by root
//   or this user, not writable by group or others; a secret is not readable
//   by them either.
// Every refusal is a ConfigError naming the path, the problem and the command
// that fixes it.

import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, realpathSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError, describe } from './errors.js';

export interface TrustOptions {
  /** false: the mode of a file is left to the caller (the live state deletes a file with a wrong mode instead). */
  readonly checkMode?: boolean;
  /**
   * Holds secrets. A file: no access at all for group or others. A
   * directory: group and others may neither read nor write it.
   */
  readonly secret?: boolean;
  /** What the secret is, for messages ("the ticket keys"); default "it". */
  readonly noun?: string;
}

/** The effective uid whose files we trust (besides root's). */
export function trustedUid(): number {
  return process.geteuid?.() ?? 0;
}

const STICKY = 0o1000;
const SYMLINK = 'a symbolic link; refusing to follow it (put the file itself there)';

function mode(st: Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0');
}

function ownerProblem(path: string, st: Stats): string | null {
  const me = trustedUid();
  if (st.uid === me || st.uid === 0) return null;
  return `owned by uid ${st.uid}, not by this process's user (uid ${me}) or root, so that user can change it; if it is meant for this daemon: chown ${me} ${path}, else remove it`;
}

/** Every directory from / down to `dir` (exclusive), by name as given and as resolved. */
function enclosing(dir: string): string[] {
  const out = new Set<string>();
  const walk = (p: string) => {
    for (let d = dirname(p); ; d = dirname(d)) {
      out.add(d);
      if (dirname(d) === d) break;
    }
  };
  const abs = resolve(dir);
  walk(abs);
  try {
    walk(realpathSync(abs));
  } catch {
    // The caller's own check reports a path that does not resolve.
  }
  return [...out];
}

/** Refuses an enclosing directory another user could use to swap `path` (or what leads to it). */
function checkEnclosing(path: string, label: string): void {
  for (const d of enclosing(path)) {
    let st: Stats;
    try {
      st = lstatSync(d);
    } catch (err) {
      throw new ConfigError(`${label} ${path}: cannot inspect ${d} (${describe(err)})`);
    }
    // A symbolic link on the way is as safe as the directory holding it (checked too) and its target (checked by its resolved path).
    if (st.isSymbolicLink()) {
      const owner = ownerProblem(d, st);
      if (owner !== null) throw new ConfigError(`${label} ${path}: ${d} on its path is a symbolic link ${owner}`);
      continue;
    }
    const owner = ownerProblem(d, st);
    if (owner !== null) throw new ConfigError(`${label} ${path}: the enclosing directory ${d} is ${owner}`);
    if ((st.mode & 0o022) !== 0 && (st.mode & STICKY) === 0) {
      throw new ConfigError(
        `${label} ${path}: group or others can write the enclosing directory ${d} (mode ${mode(st)}), so they could swap what it holds; run chmod go-w ${d} (or use a directory under a path only root can change)`,
      );
    }
  }
}

/**
 * Refuses a directory we keep trusted files in: not a directory, owned by
 * another user, writable by group or others (or readable, with `secret`), or
 * inside a directory another user can change. Throws a ConfigError.
 */
export function checkTrustedDir(dir: string, label: string, opts: TrustOptions = {}): void {
  let st: Stats;
  try {
    st = lstatSync(dir);
    if (st.isSymbolicLink()) {
      const owner = ownerProblem(dir, st);
      if (owner !== null) throw new ConfigError(`${label} ${dir}: a symbolic link ${owner}`);
      st = lstatSync(realpathSync(dir));
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`${label} ${dir}: ${describe(err)}`);
  }
  if (!st.isDirectory()) throw new ConfigError(`${label} ${dir}: not a directory`);
  const owner = ownerProblem(dir, st);
  if (owner !== null) throw new ConfigError(`${label} ${dir}: ${owner}`);
  const bad = opts.secret === true ? 0o066 : 0o022;
  if ((st.mode & bad) !== 0) {
    const what = opts.secret === true ? `read or write ${opts.noun ?? 'it'}` : 'write it';
    throw new ConfigError(`${label} ${dir}: group or others can ${what} (mode ${mode(st)}); run chmod ${opts.secret === true ? '700' : 'go-w'} ${dir}`);
  }
  checkEnclosing(dir, label);
}

/** The problem with a file's own status (type, owner, mode), or null. */
function fileProblem(file: string, st: Stats, opts: TrustOptions): string | null {
  if (st.isSymbolicLink()) return SYMLINK;
  if (!st.isFile()) return 'not a regular file';
  const owner = ownerProblem(file, st);
  if (owner !== null) return owner;
  if (opts.checkMode === false) return null;
  if (opts.secret === true && (st.mode & 0o077) !== 0) return `group or others can access ${opts.noun ?? 'it'} (mode ${mode(st)}); run chmod 600 ${file}`;
  if ((st.mode & 0o022) !== 0) return `group or others can write it (mode ${mode(st)}); run chmod go-w ${file}`;
  return null;
}

/**
 * Checks a file that is there without reading it (lstat: a symbolic link is
 * refused, not followed). False when there is no file; throws a ConfigError
 * naming the file otherwise.
 */
export function checkTrustedFile(file: string, label: string, opts: TrustOptions = {}): boolean {
  let st: Stats;
  try {
    st = lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new ConfigError(`${label} ${file}: ${describe(err)}`);
  }
  const why = fileProblem(file, st, opts);
  if (why !== null) throw new ConfigError(`${label} ${file}: ${why}`);
  return true;
}

export interface OpenedFile {
  readonly fd: number;
  readonly st: Stats;
}

/**
 * Opens a file to read without following a symbolic link (nor blocking on a
 * FIFO), and checks the descriptor's status, not the name's, so nothing can
 * be swapped in between. Null when there is no file. A file that is not ours
 * throws a ConfigError; an I/O error is thrown as it is. The caller closes `fd`.
 */
export function openTrusted(file: string, label: string, opts: TrustOptions = {}): OpenedFile | null {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') throw new ConfigError(`${label} ${file}: ${SYMLINK}`);
    throw err;
  }
  try {
    const st = fstatSync(fd);
    const why = fileProblem(file, st, opts);
    if (why !== null) throw new ConfigError(`${label} ${file}: ${why}`);
    checkEnclosing(file, label);
    return { fd, st };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** Reads a trusted file whole (see openTrusted); null when there is none. */
export function readTrusted(file: string, label: string, opts: TrustOptions = {}): Buffer | null {
  const f = openTrusted(file, label, opts);
  if (f === null) return null;
  try {
    return readFileSync(f.fd);
  } finally {
    closeSync(f.fd);
  }
}

// A key directory (--key-dir DIR): the key ring as the files of one
// directory, listed again on every reload, so a daemon started with flags can
// rotate keys without a new command line. Every `*.key` file in DIR opens;
// the file DIR/sealing names the one that seals. Each step of a rotation is
// then one file operation: a new key file put in DIR opens (after the
// reload), writing its name into DIR/sealing makes it seal, removing the old
// key file stops it opening. Sealing by name order instead would make a new
// key seal the moment it lands in DIR, before every host holds it.
//
// What DIR holds is believed (a key in it opens frames), so DIR passes
// base/trust.ts like every trusted directory: ours, nobody else may write it
// or anything above it. Group read is allowed (root:udprepeater 0750 under
// /etc): each key file is checked on its own as a secret when the ring reads
// it (crypto/keyring.ts). DIR/sealing holds a name, not a secret: ours and
// not writable by others, like the directory.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, describe } from '../base/errors.js';
import { checkTrustedDir, readTrusted } from '../base/trust.js';

export const SEALING_FILE = 'sealing';
/** A DIR/sealing file longer than this is not a file name. */
const MAX_SEALING_BYTES = 256;

/** The names a key directory's ring is read from: `*.key`, not hidden (a dotfile is a copy in progress). */
export function isKeyFileName(name: string): boolean {
  return name.endsWith('.key') && name.length > '.key'.length && !name.startsWith('.');
}

/**
 * The key files of `dir`, the sealing one first, then the others by name:
 * the list KeyRing.load takes. Throws a ConfigError naming the directory or
 * file and the problem.
 */
export function keyDirFiles(dir: string): string[] {
  checkTrustedDir(dir, 'key directory');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new ConfigError(`key directory ${dir}: ${describe(err)}`);
  }
  const keys = names.filter(isKeyFileName).sort();
  if (keys.length === 0) throw new ConfigError(`key directory ${dir}: holds no *.key file (udprepeater keygen ${join(dir, 'NAME.key')})`);
  const sealingPath = join(dir, SEALING_FILE);
  let data: Buffer | null;
  try {
    data = readTrusted(sealingPath, 'sealing file');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`sealing file ${sealingPath}: ${describe(err)}`);
  }
  const fix = `echo ${keys.length === 1 ? keys[0] : 'NAME.key'} > ${sealingPath}`;
  if (data === null) throw new ConfigError(`key directory ${dir}: no ${sealingPath} naming the key file that seals (${keys.join(', ')}); write it: ${fix}`);
  const name = data.length > MAX_SEALING_BYTES ? null : data.toString('utf8').trim();
  if (name === null || !keys.includes(name)) {
    const shown = name === null ? `${data.length} bytes` : JSON.stringify(name);
    throw new ConfigError(`sealing file ${sealingPath}: names ${shown}, not a key file in ${dir} (it holds ${keys.join(', ')}); ${fix}`);
  }
  return [join(dir, name), ...keys.filter((k) => k !== name).map((k) => join(dir, k))];
}

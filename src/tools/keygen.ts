// `udprepeater keygen FILE`: a new key file (crypto/keyring.ts writes it:
// 32 random bytes, mode 0600, never over an existing file).
//
// A missing folder is refused, not created: who may read a key is decided by
// its folder's owner and mode, which keygen cannot know (the daemons run as
// the udprepeater user, keygen as whoever types it), and a typo in the path
// would otherwise leave a secret in a tree nobody meant to make.

import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../base/errors.js';
import { generateKeyFile } from '../crypto/keyring.js';

/** Checks that FILE's folder exists, writes the key; returns what to print. */
export function keygen(file: string): string {
  const dir = dirname(resolve(file));
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new ConfigError(`cannot write ${file}: ${(err as Error).message}`);
    throw new ConfigError(
      `cannot write ${file}: the folder ${dir} does not exist. keygen does not create folders (the folder's owner and mode decide who can read the key); ` +
        `create it first, e.g. install -d -m 0750 -g udprepeater ${dir}`,
    );
  }
  if (!isDir) throw new ConfigError(`cannot write ${file}: ${dir} is not a folder`);
  const { id } = generateKeyFile(file);
  return `wrote a new key to ${file} (key id ${id})\n`;
}

// `udprepeater keygen FILE`: a new key file (crypto/keyring.ts writes it:
// 32 random bytes, mode 0600, never over an existing file).
// `udprepeater keygen --identity FILE`: a new identity (crypto/identity.ts:
// an Ed25519 seed as text, mode 0600, never over an existing file).
//
// A missing folder is refused, not created: who may read a key is decided by
// its folder's owner and mode, which keygen cannot know (the daemons run as
// the udprepeater user, keygen as whoever types it), and a typo in the path
// would otherwise leave a secret in a tree nobody meant to make.

import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../base/errors.js';
import { generateIdentityFile } from '../crypto/identity.js';
import { generateKeyFile } from '../crypto/keyring.js';
import { sodiumReady } from '../crypto/secretbox.js';

/** Checks that FILE's folder exists, writes the key; returns what to print. */
export function keygen(file: string): string {
  checkFolder(file);
  const { id } = generateKeyFile(file);
  return `wrote a new key to ${file} (key id ${id})\n`;
}

/** Checks that FILE's folder exists, writes a new identity; returns what to print (its public key on a line of its own). */
export async function keygenIdentity(file: string): Promise<string> {
  checkFolder(file);
  await sodiumReady();
  const { publicText } = generateIdentityFile(file);
  return `wrote a new identity to ${file}; its public key, for the peers files of the hosts it talks to (udprepeater pubkey ${file} prints it again):\n${publicText}\n`;
}

function checkFolder(file: string): void {
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
}

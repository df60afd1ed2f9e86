// Key files for tests, written the way `udprepeater keygen` writes them.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyFile, KeyRing } from '../../src/crypto/keyring.js';

export const keyDir = mkdtempSync(join(tmpdir(), 'udprepeater-keys-'));
let n = 0;

/** A fresh key file; returns its path. */
export function newKeyFile(name = `k${++n}`): string {
  const file = join(keyDir, name);
  generateKeyFile(file);
  return file;
}

export function ring(...files: string[]): KeyRing {
  return KeyRing.load(files);
}

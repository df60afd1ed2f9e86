// `udprepeater pubkey FILE`: the public key of an identity file, as exactly
// one line (what a peers file lists). The file passes the same checks as a
// daemon's --identity (ours, mode 0600, no symbolic link): a key printed
// from a file someone else could write would be theirs to choose.

import { loadIdentity } from '../crypto/identity.js';
import { sodiumReady } from '../crypto/secretbox.js';

export async function pubkey(file: string): Promise<string> {
  await sodiumReady();
  const identity = loadIdentity(file, 'identity file');
  const text = identity.publicText;
  identity.destroy();
  return `${text}\n`;
}

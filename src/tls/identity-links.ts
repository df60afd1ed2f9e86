// Identity mode for the session cache (`identity` and `peers` options): the
// same files and the same links as `udprepeater agent --identity --peers`
// (member/member-links.ts), read through the same trusted-file checks.
//
// Invariants:
// - Identity mode and key files exclude each other, and each of the two
//   files needs the other: anything else is refused with a ConfigError.
// - Only the peers file's role=repeater lines are linked to
//   (member-links.ts trustedRepeaters), so sessions and ticket keys are taken
//   only from a repeater identity; a role=node line is never believed.
// - A peers file that does not load is refused whole; at a reload the
//   running peers are kept.

import { ConfigError } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { loadPeersFile } from '../config/peers-file.js';
import { loadIdentity } from '../crypto/identity.js';
import { sodiumReady } from '../crypto/secretbox.js';
import { MemberLinks } from '../member/member-links.js';

export interface IdentityOptions {
  readonly identity?: string;
  readonly peers?: string;
  readonly keyFiles?: readonly string[];
}

/** The links the options ask for (null: no identity), and how to read the peers file again. */
export interface CacheLinks {
  readonly links: MemberLinks;
  /** Reads the peers file again: a repeater no longer listed as one loses its link at once. Throws a ConfigError to refuse (the running peers stay). */
  reload(): void;
}

export async function identityLinks(o: IdentityOptions, log: Logger): Promise<CacheLinks | null> {
  if (o.identity === undefined && o.peers === undefined) return null;
  if (o.identity === undefined || o.peers === undefined) throw new ConfigError('identity and peers go together: the identity file and the peers file that lists the repeaters (role=repeater) it trusts');
  if (o.keyFiles !== undefined && o.keyFiles.length > 0) throw new ConfigError('identity and keyFiles exclude each other: a cache joins by identity or by the shared key');
  await sodiumReady();
  const identity = loadIdentity(o.identity, 'identity');
  const peersFile = o.peers;
  const table = loadPeersFile(peersFile, 'peers');
  const links = new MemberLinks(identity, table.list());
  log.info('session cache identity loaded', { publicKey: identity.publicText, peers: table.size, fingerprint: table.fingerprint });
  return {
    links,
    reload() {
      const next = loadPeersFile(peersFile, 'peers');
      links.setPeers(next.list());
      log.info('session cache peers file loaded', { peers: next.size, fingerprint: next.fingerprint });
    },
  };
}

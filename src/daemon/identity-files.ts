// Identity mode's files, as both daemons read them (config/checks.ts names
// them): the identity once per process (a new --identity takes a restart:
// every link's keys derive from it), the peers file at start and at every
// reload. Both are read after sodiumReady(), through the trusted-file checks;
// a problem is a ConfigError naming the file (and line): exit 78 at start, a
// refused reload that keeps the running peers.

import { ConfigError } from '../base/errors.js';
import type { Logger } from '../base/log.js';
import { diffPeers, loadPeersFile, type PeerTable } from '../config/peers-file.js';
import type { CommonSettings } from '../config/checks.js';
import { type Identity, loadIdentity } from '../crypto/identity.js';

export class IdentityFiles {
  identity: Identity | null = null;
  private file = '';
  private running: PeerTable | null = null;
  /** Shared-key mode at start: a reload cannot switch modes. */
  private started: 'keys' | 'identity' | null = null;

  constructor(private readonly log: Logger) {}

  /**
   * The peers table `config` names, checked (null in shared-key mode); throws
   * a ConfigError to refuse the config. `addIdentities` (the repeater): a
   * reload may add identities to a shared-key process that keeps its keys
   * (the migration's first step); never drop them.
   */
  read(config: CommonSettings, addIdentities = false): PeerTable | null {
    const files = config.identity;
    const mode = files === null ? 'keys' : 'identity';
    const adding = addIdentities && this.started === 'keys' && mode === 'identity' && config.keyFiles.length > 0;
    if (this.started !== null && this.started !== mode && !adding) {
      throw new ConfigError(`a reload cannot switch between --identity and --key-file (running: ${this.started === 'keys' ? 'the shared key' : 'identities'}); restart to change modes`, 'identity');
    }
    if (files === null) {
      this.started = 'keys';
      return null;
    }
    if (this.identity === null) {
      this.identity = loadIdentity(files.file);
      this.file = files.file;
      this.log.info('identity loaded', { file: files.file, publicKey: this.identity.publicText });
    } else if (files.file !== this.file) this.log.warn('--identity changes take effect at the next restart', { running: this.file, configured: files.file });
    const table = loadPeersFile(files.peers);
    const prev = this.running;
    if (prev === null) this.log.info('peers file loaded', { file: files.peers, peers: table.size, fingerprint: table.fingerprint });
    else {
      const d = diffPeers(prev, table);
      this.log.info('peers file loaded', {
        file: files.peers,
        peers: table.size,
        fingerprint: table.fingerprint,
        added: d.added.map((p) => p.name),
        removed: d.removed.map((p) => p.name),
        changed: d.changed.map((c) => c.after.name),
      });
    }
    this.started = 'identity';
    this.running = table;
    return table;
  }
}

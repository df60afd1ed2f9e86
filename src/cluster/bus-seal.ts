// The cluster bus's own sealing: a key ring of its own (--cluster-key-file)
// and a session of its own (origin, sequence, replay windows, start fence).
//
// Invariants:
// - The bus key is never a data key (--key-file). Every agent host holds the
//   data keys; a bus sealed with one would let any of them speak as a
//   repeater (forge peers, take subscribers over, plant ticket keys). A
//   cluster key equal to any data key is refused at start (exit 78) and on
//   reload (the running ring stays), naming both files.
// - The session lives as long as the process (its origin is the repeater's
//   id on the bus); only the ring is replaced on reload.

import { ConfigError } from '../base/errors.js';
import { KeyRing, readKeyFile } from '../crypto/keyring.js';
import { SecureSession } from '../crypto/session.js';
import { type Envelope, EnvelopeKind, Role } from '../wire/envelope.js';

/** Refuses, naming both files, a cluster key file that holds the same key as a data key file. */
function checkDistinct(clusterFiles: readonly string[], dataFiles: readonly string[]): void {
  const data = dataFiles.map((file) => ({ file, key: Buffer.from(readKeyFile(file)) }));
  try {
    for (const file of clusterFiles) {
      const key = Buffer.from(readKeyFile(file));
      const same = data.find((d) => d.key.equals(key));
      key.fill(0);
      if (same !== undefined) {
        throw new ConfigError(
          `--cluster-key-file ${file} holds the same key as --key-file ${same.file}: the bus needs a key of its own that no agent holds (udprepeater keygen FILE)`,
          'cluster-key-file',
        );
      }
    }
  } finally {
    for (const d of data) d.key.fill(0);
  }
}

/** What a sealer with keys of its own to hand out needs from the cluster (bus-identity.ts). */
export interface SealHost {
  /** Publishes on the control subject; false while the bus is down. */
  publish(payload: Uint8Array): boolean;
  /** Runs `fn` on every (re)connection, before the cluster's heartbeat goes out. */
  whenConnected(fn: () => void): void;
  /** Counts a message the sealer published or took itself, or refused (`dropped`). */
  count(what: 'published' | 'received' | 'dropped', reason: string): void;
  /** Forgets a peer by its bus origin (a revoked repeater). */
  forget(origin: bigint): void;
}

/**
 * How the cluster seals and opens the bus: the shared ring (BusSeal) or
 * identities (IdentityBusSeal). `open` returns null for what the sealer
 * took itself (a key announcement).
 */
export interface BusSealer {
  readonly origin: bigint;
  seal(message: Uint8Array): Buffer | null;
  open(frame: Buffer): Envelope | string | null;
  keyIds(): string[];
  attach?(host: SealHost): void;
}

export class BusSeal implements BusSealer {
  private constructor(
    private readonly session: SecureSession,
    private ring: KeyRing,
    private maxSkewMs: number,
  ) {}

  /** Loads the cluster ring; throws a ConfigError when a file is unusable or equals a data key. */
  static load(clusterFiles: readonly string[], dataFiles: readonly string[], maxSkewMs: number): BusSeal {
    return new BusSeal(new SecureSession(Role.Repeater, { peer: Role.Repeater }), BusSeal.ring(clusterFiles, dataFiles), maxSkewMs);
  }

  /** A checked ring for a reload: swapped in with `use` once the rest of the config applied. */
  static ring(clusterFiles: readonly string[], dataFiles: readonly string[]): KeyRing {
    checkDistinct(clusterFiles, dataFiles);
    return KeyRing.load(clusterFiles);
  }

  /** Takes `ring` (and --max-skew) in place of the running ones; the old ring is erased. */
  use(ring: KeyRing, maxSkewMs: number): void {
    this.maxSkewMs = maxSkewMs;
    if (ring === this.ring) return;
    this.ring.destroy();
    this.ring = ring;
  }

  /** This repeater's id on the bus: the origin of its frames. */
  get origin(): bigint {
    return this.session.origin;
  }

  /** Seals an encoded bus message; null when it would not fit. */
  seal(message: Uint8Array): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.Bus, channelKey: '', datagram: null, address: null, bus: message });
  }

  /** Opens a bus frame; the drop reason when it does not open. */
  open(frame: Buffer): Envelope | string {
    const env = this.session.open(this.ring, frame, this.maxSkewMs);
    if (typeof env === 'string') return env;
    return env.kind === EnvelopeKind.Bus ? env : 'bad_payload';
  }

  /** Ids of the keys in the ring, sealing key first (never the keys). */
  keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }

  dispose(): void {
    this.ring.destroy();
  }
}

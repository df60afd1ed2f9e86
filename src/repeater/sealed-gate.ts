// Secure mode in the repeater: a frame arriving on a sealed listener passes
// the session's gate (one open, role, skew, start, replay) before anything in
// it is believed. What comes out is handed back to the repeater; this file
// never forwards and never answers.

import { D } from '../base/stats.js';
import type { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import type { TicketKey } from '../wire/tickets.js';
import type { Channel, FrameSealer, SealingInput } from './channel.js';

export interface SealedOptions {
  readonly maxSkewMs: number;
}

// The cluster bus is sealed elsewhere (cluster/bus-seal.ts), with a key ring
// of its own: the data keys sealed here are held by every agent.
export class SealedGate implements FrameSealer {
  constructor(
    private readonly session: SecureSession,
    private readonly ring: KeyRing,
    private readonly opts: SealedOptions,
  ) {}

  /**
   * Opens a frame that arrived on one of `ch`'s sealed listeners. Returns
   * the envelope, or null after counting why it was dropped.
   */
  open(ch: Channel, msg: Buffer): Envelope | null {
    const env = this.session.open(this.ring, msg, this.opts.maxSkewMs);
    if (typeof env === 'string') {
      ch.stats.dropped[D[env]]++;
      return null;
    }
    return env;
  }

  sealDatagram(channelKey: string, input: SealingInput): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.CacheDatagram, channelKey, datagram: input.content, trace: input.trace, address: null });
  }

  /** The fleet's ticket keys for the sealed subscribers of one channel key; null when it would not fit. */
  sealTickets(channelKey: string, keys: readonly TicketKey[]): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.TicketKeys, channelKey, datagram: null, address: null, tickets: keys });
  }

  /** Releases the key ring once this gate is no longer used. */
  dispose(): void {
    this.ring.destroy();
  }

  /** Ids of the keys in the ring, sealing key first. */
  keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }
}

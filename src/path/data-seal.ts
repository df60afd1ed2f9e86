// The repeater's data keys and their session: opens the frames that arrive on
// sealed listeners (the session's gate: one open, role, skew, start, replay,
// before anything in it is believed) and seals what sealed subscribers get.
// It never forwards and never answers; the bus has a seal of its own
// (cluster/bus-seal.ts), under keys no agent holds.

import { DropSlot } from '../base/stats.js';
import type { KeyRing } from '../crypto/keyring.js';
import type { OpenError, Receiver, SecureSession } from '../crypto/session.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import type { TicketKey } from '../wire/ticket-codec.js';
import type { Channel, FrameSealer, SealingInput } from './channel.js';

export interface SealedOptions {
  readonly maxSkewMs: number;
}

export class DataSeal implements FrameSealer {
  constructor(
    private readonly session: SecureSession,
    private readonly ring: KeyRing,
    private readonly opts: SealedOptions,
  ) {}

  /**
   * Opens a frame that arrived on one of `ch`'s sealed listeners, named by
   * `listener` (a frame sealed for another receiver is refused). Returns
   * the envelope, or why it was dropped (counted).
   */
  open(ch: Channel, msg: Buffer, listener: Receiver): Envelope | OpenError {
    const env = this.session.open(this.ring, msg, this.opts.maxSkewMs, Date.now(), listener);
    if (typeof env === 'string') ch.stats.dropped[DropSlot[env]]++;
    return env;
  }

  /** A datagram for the sealed subscribers of one channel key (`receiver` '': all of them), or for the one `receiver` names. */
  sealDatagram(channelKey: string, input: SealingInput, receiver = ''): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.CacheDatagram, channelKey, datagram: input.content, trace: input.trace, address: null, receiver });
  }

  /** The fleet's ticket keys for the sealed subscribers of one channel key, or the one `receiver` names; null when it would not fit. */
  sealTickets(channelKey: string, keys: readonly TicketKey[], receiver = ''): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.TicketKeys, channelKey, datagram: null, address: null, tickets: keys, receiver });
  }

  /** Tells one subscriber (`receiver`) it gets our group frames of `channelKey` from sequence `memberFrom` on. */
  sealMembership(channelKey: string, memberFrom: number, receiver: string): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.Membership, channelKey, datagram: null, address: null, receiver, memberFrom });
  }

  /** The sequence our next frame to subscribers will carry. */
  get nextSequence(): number {
    return this.session.nextSequence;
  }

  /** Releases the key ring once this seal is no longer used. */
  dispose(): void {
    this.ring.destroy();
  }

  /** Ids of the keys in the ring, sealing key first. */
  keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }
}

// Secure mode in the repeater: a frame arriving on a sealed listener passes
// the session's gate (one open, role, skew, start, replay) before anything in
// it is believed. What comes out is handed back to the repeater; this file
// never forwards and never answers.

import { D } from '../base/stats.js';
import type { KeyRing } from '../crypto/keyring.js';
import type { Receiver, SecureSession } from '../crypto/session.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import type { TicketKey } from '../wire/tickets.js';
import type { Channel, FrameSealer, SealingInput } from './channel.js';

export interface SealedOptions {
  readonly maxSkewMs: number;
}

export class SealedGate implements FrameSealer {
  /**
   * @param busSession cluster mode: the session that seals and opens bus
   *   messages between repeaters (its own origin and replay windows).
   */
  constructor(
    private readonly session: SecureSession,
    private readonly ring: KeyRing,
    private readonly opts: SealedOptions,
    private readonly busSession: SecureSession | null = null,
  ) {}

  /** Cluster mode: the origin our bus frames carry (this repeater's id on the bus). */
  get busOrigin(): bigint | null {
    return this.busSession?.origin ?? null;
  }

  /** Cluster mode: seals an encoded bus message; null when it would not fit. */
  sealBus(message: Uint8Array): Buffer | null {
    if (this.busSession === null) return null;
    return this.busSession.seal(this.ring, { kind: EnvelopeKind.Bus, channelKey: '', datagram: null, address: null, bus: message });
  }

  /** Cluster mode: opens a bus frame; the drop reason as a string when it does not open. */
  openBus(frame: Buffer): Envelope | string {
    if (this.busSession === null) return 'no_bus_session';
    const env = this.busSession.open(this.ring, frame, this.opts.maxSkewMs);
    if (typeof env === 'string') return env;
    return env.kind === EnvelopeKind.Bus ? env : 'bad_payload';
  }

  /**
   * Opens a frame that arrived on one of `ch`'s sealed listeners, named by
   * `listener` (a frame sealed for another receiver is refused). Returns
   * the envelope, or null after counting why it was dropped.
   */
  open(ch: Channel, msg: Buffer, listener: Receiver): Envelope | null {
    const env = this.session.open(this.ring, msg, this.opts.maxSkewMs, Date.now(), listener);
    if (typeof env === 'string') {
      ch.stats.dropped[D[env]]++;
      return null;
    }
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

  /** Releases the key ring once this gate is no longer used. */
  dispose(): void {
    this.ring.destroy();
  }

  /** Ids of the keys in the ring, sealing key first. */
  keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }
}

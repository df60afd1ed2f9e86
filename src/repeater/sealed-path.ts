// Secure mode in the repeater: frames arriving on sealed listeners pass the
// session's gate (one open, skew, replay) before anything else happens;
// accepted datagrams join the channel's ordinary fan-out, and subscriptions
// count only inside a valid frame. Nothing is ever sent in reply.

import type { RemoteInfo } from 'node:dgram';
import type { KeyRing } from '../crypto/keyring.js';
import type { SecureSession } from '../crypto/session.js';
import { formatEndpoint } from '../wire/address.js';
import { prepareCacheUpdate } from '../wire/cache.js';
import { type Envelope, EnvelopeKind } from '../wire/envelope.js';
import type { Subscription } from '../wire/subscription.js';
import type { Channel } from './channel.js';
import type { Repeater, SealedPath } from './repeater.js';
import { D } from '../base/stats.js';

export interface SealedOptions {
  readonly maxSkewMs: number;
  readonly repairDeletes: boolean;
  readonly forwardUnknown: boolean;
}

export class SealedListenerPath implements SealedPath {
  constructor(
    private readonly session: SecureSession,
    private readonly ring: KeyRing,
    private readonly repeater: Repeater,
    private readonly opts: SealedOptions,
  ) {}

  onDatagram(ch: Channel, msg: Buffer, rinfo: RemoteInfo, t0: number): void {
    const st = ch.stats;
    const env = this.session.open(this.ring, msg, this.opts.maxSkewMs);
    if (typeof env === 'string') {
      st.dropped[D[env]]++;
      return;
    }
    if (ch.key !== null && env.channelKey !== ch.key) {
      if (env.kind === EnvelopeKind.CacheDatagram) st.dropped[D.key_mismatch]++;
      else this.repeater.subscriptions.refuse(ch, 'key_mismatch', rinfo.address);
      return;
    }
    if (env.kind === EnvelopeKind.CacheDatagram) this.onCacheDatagram(ch, env, t0);
    else this.onSubscription(ch, env, rinfo);
  }

  private onCacheDatagram(ch: Channel, env: Envelope, t0: number): void {
    const d = env.datagram!;
    let plainOut = prepareCacheUpdate(d, this.opts.repairDeletes, this.repeater.outLimit);
    if (typeof plainOut === 'string') {
      if (!this.opts.forwardUnknown || plainOut === 'too_large') {
        ch.stats.dropped[D[plainOut]]++;
        return;
      }
      plainOut = d;
    }
    this.repeater.forward(ch, d, plainOut, t0, env.origin);
  }

  private onSubscription(ch: Channel, env: Envelope, rinfo: RemoteInfo): void {
    const unsubscribe = env.kind === EnvelopeKind.Unsubscribe;
    // An empty address means "where this frame came from" (works through NAT).
    const address = env.address === '' || env.address === null ? formatEndpoint(rinfo.address, rinfo.port) : env.address;
    const sub: Subscription = {
      unsubscribe,
      key: env.channelKey,
      address,
      modifier1: 0,
      modifier2: 0,
      cores: 0,
      load: 0,
      weight: 0,
      unix: null,
      sign: null,
      signed: null,
    };
    this.repeater.subscriptions.apply(ch, sub, 'sealed', rinfo.address, Date.now(), env.origin);
  }

  sealDatagram(channelKey: string, datagram: Buffer): Buffer | null {
    return this.session.seal(this.ring, { kind: EnvelopeKind.CacheDatagram, channelKey, datagram, address: null });
  }

  dispose(): void {
    this.ring.destroy();
  }

  keyIds(): string[] {
    return this.ring.describe().map((k) => k.id);
  }
}

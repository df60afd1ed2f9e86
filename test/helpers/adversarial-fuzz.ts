// The hostile-input rig: turns a seeded stream of fast-check plans into
// datagrams for a plain and a sealed listener, sends them in paced batches
// (each batch closed by a valid marker per listener that must come out the
// other side before the next batch starts), and keeps what the reference
// subscribers must have received.
//
// Reference subscribers are static outputs (--to), one per channel: a static
// output is never unsubscribed, refused or expired, so the copies it gets
// are exactly the datagrams each channel forwarded.

import type { KeyRing } from '../../src/crypto/keyring.js';
import { SecureSession } from '../../src/crypto/session.js';
import { encodeCacheDelete, encodeCacheSet } from '../../src/wire/cache.js';
import { bigintToLong, encodeEnvelope, EnvelopeKind, Role } from '../../src/wire/envelope.js';
import { writeFrameHeader } from '../../src/wire/frame.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { encodePacket, encodeVars } from '../../src/wire/uwsgi.js';
import { mutate, type Plan, plainOutput, plans, prng, RawSealer } from './adversarial.js';
import type { Receiver, Sender } from './net.js';

export interface FuzzTarget {
  readonly plainPort: number;
  readonly sealedPort: number;
  /** The repeater's --max-datagram. */
  readonly maxDatagram: number;
  /** The repeater's key ring (we seal valid frames with it). */
  readonly ring: KeyRing;
  /** A ring the repeater does not have. */
  readonly foreign: KeyRing;
}

const rndBytes = (rnd: () => number, n: number) => {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rnd() * 256) | 0;
  return b;
};

export class FuzzRig {
  /** Seals the valid frames (and captures them for replays). */
  readonly legit = new SecureSession(Role.Agent);
  /** Opens what the repeater sends to the sealed reference. */
  private readonly opener = new SecureSession(Role.Agent);
  private readonly raw: RawSealer;
  /** Plain templates: valid sets, deletes, subscriptions. */
  readonly plain: Buffer[] = [];
  /** Valid sealed frames, used only as mutation templates. */
  readonly frames: Buffer[] = [];
  private readonly replayable: Buffer[] = [];
  private readonly rnd: () => number;

  readonly sent = { plain: 0, sealed: 0 };
  /** What was sent, by category, for the report. */
  readonly tally: Record<string, number> = {};
  /** What the plain reference must receive, in order. */
  readonly expectedPlain: Buffer[] = [];
  /** Datagrams opened from the sealed reference's frames, in order. */
  readonly sealedOut: Buffer[] = [];
  /** Frames at the sealed reference that did not open or carried no valid cache update. */
  readonly sealedBad: string[] = [];
  private sealedRead = 0;
  private markers = 0;
  /** Called to describe the repeater's state when a marker does not come out. */
  diagnose: (() => string) | null = null;

  constructor(
    private readonly t: FuzzTarget,
    private readonly refPlain: Receiver,
    private readonly refSealed: Receiver,
    private readonly sender: Sender,
    private readonly seed: number,
  ) {
    this.raw = new RawSealer(t.ring, seed);
    this.rnd = prng(seed ^ 0x9e3779b9);
    const rnd = this.rnd;
    const key = () => (rnd() < 0.5 ? Buffer.from(`sess${(rnd() * 1e6) | 0}`) : rndBytes(rnd, 1 + ((rnd() * 48) | 0)));
    for (let i = 0; i < 150; i++) {
      const value = rndBytes(rnd, (rnd() * 800) | 0);
      const form = i % 4;
      if (form === 0) this.plain.push(encodeCacheSet(key(), value, 1795213916));
      else if (form === 1) this.plain.push(encodeCacheSet(key(), value, 0));
      else {
        // Hand-made sets: no expires block, or an empty one.
        const k = key();
        const body = Buffer.concat([u16(k.length), k, u16(value.length), value, ...(form === 3 ? [u16(0)] : [])]);
        this.plain.push(encodePacket(111, 10, body));
      }
    }
    for (let i = 0; i < 60; i++) this.plain.push(encodeCacheDelete(key(), i % 2 === 0));
    for (let i = 0; i < 60; i++) {
      const address = `127.66.${(rnd() * 256) | 0}.${1 + ((rnd() * 254) | 0)}:${1024 + ((rnd() * 60000) | 0)}`;
      const k = rnd() < 0.7 ? 'ssl' : `k${i}`;
      if (i % 6 === 5) {
        // Signed-looking: unix then sign as the last var.
        const body = Buffer.concat([encodeVars([['key', k], ['address', address], ['unix', String(Math.floor(Date.now() / 1000))]]), encodeVars([['sign', rndBytes(rnd, 256)]])]);
        this.plain.push(encodePacket(224, 0, body));
      } else this.plain.push(encodeSubscription({ key: k, address, unsubscribe: i % 3 === 2 }));
    }
    for (let i = 0; i < 80; i++) {
      const sub = i % 5 === 4;
      this.frames.push(
        this.legit.seal(t.ring, {
          kind: sub ? EnvelopeKind.Subscribe : EnvelopeKind.CacheDatagram,
          channelKey: 'ssl',
          datagram: sub ? null : this.plain[i % 210]!,
          address: sub ? `127.66.9.${i}:4141` : null,
        })!,
      );
    }
  }

  private count(what: string): void {
    this.tally[what] = (this.tally[what] ?? 0) + 1;
  }

  /** Every template, for splices. */
  private get pool(): Buffer[] {
    return [...this.plain, ...this.frames];
  }

  private plainDatagram(p: Plan, pool: Buffer[]): Buffer {
    const rnd = prng(p.r);
    const c = p.r % 100;
    if (c < 10) {
      this.count('plain: valid template');
      return this.plain[p.pick % this.plain.length]!;
    }
    if (c < 15) {
      this.count('plain: random bytes');
      return rndBytes(rnd, (rnd() * 700) | 0);
    }
    if (c < 19) {
      this.count('plain: sealed frame on the plain port');
      return this.frames[p.pick % this.frames.length]!;
    }
    this.count('plain: mutated template');
    return mutate(pool[p.pick % pool.length]!, p.ops, pool, p.fixSize);
  }

  private sealedDatagram(p: Plan, pool: Buffer[]): Buffer {
    const rnd = prng(p.r);
    const c = p.r % 100;
    const ring = this.t.ring;
    const cache = () => this.plain[p.pick % 210]!;
    if (c < 8) {
      this.count('sealed: valid frame');
      const f = this.legit.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: cache(), address: null })!;
      this.replayable.push(f);
      return f;
    }
    if (c < 13 && this.replayable.length > 0) {
      this.count('sealed: replay of a captured valid frame');
      return this.replayable[p.pick % this.replayable.length]!;
    }
    if (c < 16) {
      this.count('sealed: stale or future frame');
      const skew = (rnd() < 0.5 ? -1 : 1) * (31_000 + rnd() * 3_600_000);
      return this.legit.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: cache(), address: null }, Date.now() + skew)!;
    }
    if (c < 19) {
      this.count('sealed: frame under an unknown key');
      return new SecureSession(Role.Agent).seal(this.t.foreign, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: cache(), address: null })!;
    }
    if (c < 23) {
      this.count('sealed: forged frame (known key id, random box)');
      const f = rndBytes(rnd, 48 + ((rnd() * 400) | 0));
      writeFrameHeader(f, ring.sealing.id);
      return f;
    }
    if (c < 28) {
      this.count('sealed: authentic random plaintext');
      return this.raw.seal(rndBytes(rnd, (rnd() * 300) | 0));
    }
    if (c < 38) {
      this.count('sealed: authentic mutated envelope');
      const kind = [EnvelopeKind.CacheDatagram, EnvelopeKind.Subscribe, EnvelopeKind.Unsubscribe, 0, 7][(rnd() * 5) | 0]!;
      const datagram = rnd() < 0.5 ? cache() : mutate(cache(), p.ops, pool, p.fixSize);
      const env = encodeEnvelope(
        {
          kind,
          channelKey: rnd() < 0.8 ? 'ssl' : 'x'.repeat((rnd() * 300) | 0),
          sequence: 1 + ((rnd() * 1e9) | 0),
          sentAtMs: Date.now(),
          role: rnd() < 0.8 ? Role.Agent : ((rnd() * 4) | 0),
          datagram: kind === EnvelopeKind.CacheDatagram ? datagram : null,
          trace: null,
          address: kind === EnvelopeKind.CacheDatagram ? null : `127.66.${(rnd() * 256) | 0}.7:${1 + ((rnd() * 65535) | 0)}`,
        },
        bigintToLong(BigInt(1 + ((rnd() * 2 ** 31) | 0))),
      );
      return this.raw.seal(rnd() < 0.3 ? env : mutate(Buffer.from(env), p.ops, pool, false));
    }
    if (c < 43) {
      const unsubscribe = rnd() < 0.5;
      this.count(`sealed: authentic ${unsubscribe ? 'unsubscribe' : 'subscribe'}`);
      const address = `127.66.${(rnd() * 256) | 0}.${1 + ((rnd() * 254) | 0)}:${1024 + ((rnd() * 60000) | 0)}`;
      return this.legit.seal(ring, { kind: unsubscribe ? EnvelopeKind.Unsubscribe : EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address })!;
    }
    if (c < 48) {
      this.count('sealed: plain datagram on the sealed port');
      return this.plain[p.pick % this.plain.length]!;
    }
    if (c < 53) {
      this.count('sealed: random bytes');
      const b = rndBytes(rnd, (rnd() * 500) | 0);
      if (b.length >= 2 && rnd() < 0.5) b.write('ur', 0, 'latin1');
      return b;
    }
    this.count('sealed: mutated valid frame');
    return mutate(this.frames[p.pick % this.frames.length]!, p.ops, pool, false);
  }

  /**
   * Sends `count` datagrams from the seeded stream, `batch` at a time (about
   * `sealedShare` of them to the sealed listener), each batch closed by a
   * marker per listener that must arrive before the next batch goes.
   */
  async run(count: number, batch: number, sealedShare = 0.4): Promise<void> {
    const all = plans(this.seed, count);
    const pool = this.pool;
    for (let at = 0; at < all.length; at += batch) {
      const sends: Array<Promise<void>> = [];
      for (const p of all.slice(at, at + batch)) {
        const sealed = prng(p.r ^ 0x51ed)() < sealedShare;
        if (sealed) {
          sends.push(this.sender.send(this.sealedDatagram(p, pool), this.t.sealedPort));
          this.sent.sealed++;
        } else {
          const msg = this.plainDatagram(p, pool);
          const out = plainOutput(msg, this.t.maxDatagram);
          if (out !== null) this.expectedPlain.push(out);
          sends.push(this.sender.send(msg, this.t.plainPort));
          this.sent.plain++;
        }
      }
      await Promise.all(sends);
      await this.sync();
    }
  }

  /** Sends one marker per listener and waits until both came out at the references. */
  async sync(): Promise<void> {
    const n = ++this.markers;
    const plainMarker = encodeCacheSet(Buffer.from(`marker-${n}`), Buffer.from('m'), 0);
    const sealedMarker = encodeCacheSet(Buffer.from(`smarker-${n}`), Buffer.from('m'), 0);
    this.expectedPlain.push(plainMarker);
    await this.sender.send(plainMarker, this.t.plainPort);
    this.sent.plain++;
    await this.sender.send(this.legit.seal(this.t.ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: sealedMarker, address: null })!, this.t.sealedPort);
    this.sent.sealed++;
    try {
      await this.refPlain.waitFor(this.expectedPlain.length);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${this.plainDiff()}`);
    }
    for (;;) {
      try {
        await this.refSealed.waitFor(this.sealedRead + 1);
      } catch (err) {
        throw new Error(`sealed marker ${n} never arrived: ${(err as Error).message}\n${this.diagnose?.() ?? ''}`);
      }
      const last = this.openSealed();
      if (last !== null && last.equals(sealedMarker)) return;
    }
  }

  /** Where the plain reference's datagrams first differ from the expected ones. */
  plainDiff(): string {
    const got = this.refPlain.received;
    const want = this.expectedPlain;
    for (let i = 0; i < Math.max(got.length, want.length); i++) {
      const g = got[i];
      const w = want[i];
      if (g === undefined || w === undefined || !g.equals(w)) {
        return `first difference at datagram ${i} of ${want.length} expected (${got.length} received):\n  got  ${g?.toString('hex').slice(0, 160) ?? '(nothing)'}\n  want ${w?.toString('hex').slice(0, 160) ?? '(nothing)'}`;
      }
    }
    return 'no difference';
  }

  /** Opens every new frame at the sealed reference; returns the last datagram. */
  private openSealed(): Buffer | null {
    let last: Buffer | null = null;
    while (this.sealedRead < this.refSealed.received.length) {
      const f = this.refSealed.received[this.sealedRead++]!;
      const env = this.opener.open(this.t.ring, f, 30_000);
      if (typeof env === 'string') {
        this.sealedBad.push(`frame ${this.sealedRead - 1} does not open: ${env}`);
        continue;
      }
      const d = env.datagram;
      if (env.kind !== EnvelopeKind.CacheDatagram || d === null || plainOutput(d, 65535, false) === null) {
        this.sealedBad.push(`frame ${this.sealedRead - 1} carries no valid cache update: ${d?.toString('hex').slice(0, 80)}`);
        continue;
      }
      this.sealedOut.push(d);
      last = d;
    }
    return last;
  }

  /** Markers the sealed reference got, in order. */
  sealedMarkers(): string[] {
    return this.sealedOut.map((d) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1')).filter((k) => k.startsWith('smarker-'));
  }

  get markerCount(): number {
    return this.markers;
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}


// The agent's side of the link handshake with one repeater
// (docs/PROTOCOL.md, "Identities and links"). No I/O: the caller sends the
// HELLO, retries with a new one when no WELCOME came, and hands in what
// arrives.
//
// One handshake at a time: a new HELLO replaces the pending one (its
// ephemeral secret zeroed), so a WELCOME answers only the latest HELLO and
// only once; a replayed or forged WELCOME finds nothing (unknown_link) or
// fails the mac. Timestamps only grow, even when the clock steps back
// within one process, so the repeater's replay rule never refuses our own
// retry.

import { randomBytes } from 'node:crypto';
import { decodeWelcome, encodeLinkHello, type HandshakeError, type LinkHelloFields } from '../wire/handshake.js';
import type { Identity, PeerKey } from './identity.js';
import { type InitiatorPending, LinkCipher, PairSecret, readWelcome, writeHello, zeroPending } from './link-keys.js';

export type WelcomeRefusal = HandshakeError | 'unknown_link' | 'stale' | 'auth_failed' | 'bad_key';

export class LinkInitiator {
  private readonly pair: PairSecret;
  private pending: InitiatorPending | null = null;
  private lastTimestampMs = 0;

  /** Throws when the repeater's key gives a weak shared secret (a peers file never lists one). */
  constructor(
    private readonly local: Identity,
    readonly repeater: PeerKey,
    /** A WELCOME later than this after its HELLO is refused (the agent has sent another by then). */
    private readonly helloTimeoutMs = 5_000,
    private readonly drawLinkId: () => number = () => randomBytes(4).readUInt32LE(0),
  ) {
    const pair = PairSecret.of(local, repeater, true);
    if (pair === null) throw new Error(`the key of ${repeater.text} gives a weak shared secret`);
    this.pair = pair;
  }

  /** A new HELLO (the previous pending handshake is abandoned). */
  hello(nowMs: number, fields: LinkHelloFields): Uint8Array {
    this.abandon();
    const timestampMs = Math.max(Math.floor(nowMs), this.lastTimestampMs + 1);
    this.lastTimestampMs = timestampMs;
    let initiatorLink = 0;
    while (initiatorLink === 0) initiatorLink = this.drawLinkId() >>> 0;
    const { hello, pending } = writeHello(this.pair, this.local, { initiatorLink, timestampMs, payload: encodeLinkHello(fields) });
    this.pending = pending;
    return hello;
  }

  /** The link a WELCOME completes, or why it completes none. */
  welcome(bytes: Uint8Array, nowMs: number): { cipher: LinkCipher; responderTimeMs: number } | WelcomeRefusal {
    const w = decodeWelcome(bytes);
    if (typeof w === 'string') return w;
    const p = this.pending;
    if (p === null || w.initiatorLink !== p.initiatorLink) return 'unknown_link';
    if (nowMs - p.timestampMs > this.helloTimeoutMs) {
      this.abandon();
      return 'stale';
    }
    const done = readWelcome(p, this.local, w);
    if (typeof done === 'string') return done;
    this.pending = null;
    return { cipher: new LinkCipher(done.secrets), responderTimeMs: done.responderTimeMs };
  }

  /** The link id of the pending handshake (the one its WELCOME echoes); 0 when none. */
  get pendingLink(): number {
    return this.pending?.initiatorLink ?? 0;
  }

  /** Drops the pending handshake, if any. */
  abandon(): void {
    if (this.pending !== null) zeroPending(this.pending);
    this.pending = null;
  }

  destroy(): void {
    this.abandon();
    this.pair.destroy();
  }
}

// The repeater's side of the link handshake (docs/PROTOCOL.md, "Identities
// and links"): which HELLO earns a DH, and when a link is believed. No I/O:
// the caller hands in datagrams and the time and sends what comes back.
//
// A HELLO passes, in this order, each check cheaper than the next:
//   1 decode (fixed layout, 128-1024 bytes)               no crypto
//   2 its identity id is a listed peer   else unknown_peer  a map lookup
//   3 its mac verifies                   else auth_failed   one keyed BLAKE2b
//   4 its timestamp is within the skew   else stale
//     and above the last one accepted from that peer since we started
//                                        else replay
//   5 the peer's bucket and the global bucket have a token  else rate_limited
//   6 its payload opens (one DH: es)     else auth_failed
// Only then: a fresh ephemeral, two DH, a WELCOME (84 bytes, never more than
// the HELLO), and one pending link per peer, which replaces that peer's
// previous pending one and never its established link. A pending link is
// believed (becomes the peer's link, replacing the old) only when a frame
// opens under its receive key, which needs the initiator's ephemeral secret:
// a replayed HELLO can make us do steps 1-6 at most once per start (the
// timestamp rule), never more, and what it leaves is a pending entry nobody
// can confirm, forgotten after `pendingMs`.
//
// Every table is keyed by authenticated identities (at most one state per
// listed peer), so it is bounded by the peers file.

import { randomBytes } from 'node:crypto';
import { decodeHello, decodeLinkHello, decodeDataHeader, type HandshakeError, type LinkHelloFields, LinkType } from '../wire/handshake.js';
import type { Identity, PeerKey } from './identity.js';
import { LinkCipher, PairSecret, readHello, writeWelcome } from './link-keys.js';

export interface ResponderOptions {
  /** HELLO timestamps further than this from our clock are stale. */
  readonly maxSkewMs: number;
  /** Handshakes one peer may start: a burst, then this many per second. */
  readonly peerBurst: number;
  readonly peerPerSecond: number;
  /** Handshakes all peers together may start (each costs about four X25519). */
  readonly globalBurst: number;
  readonly globalPerSecond: number;
  /** An unconfirmed link is forgotten after this long. */
  readonly pendingMs: number;
}

export const RESPONDER_DEFAULTS: ResponderOptions = { maxSkewMs: 30_000, peerBurst: 4, peerPerSecond: 1, globalBurst: 64, globalPerSecond: 200, pendingMs: 10_000 };

export type HelloRefusal = HandshakeError | 'unknown_peer' | 'revoked' | 'auth_failed' | 'stale' | 'replay' | 'rate_limited' | 'bad_key';
export type FrameRefusal = HandshakeError | 'unknown_link' | 'revoked' | 'auth_failed' | 'replay';

/** Revoked identity ids and link ids remembered (to count their traffic as `revoked`), and for how long. */
export const REVOKED_MEMORY = 4096;
export const REVOKED_MEMORY_MS = 10 * 60_000;

class Bucket {
  private tokens: number;
  private last = -Infinity;
  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
  ) {
    this.tokens = burst;
  }

  take(nowMs: number): boolean {
    if (this.last !== -Infinity) this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.last) / 1000) * this.perSecond);
    this.last = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** A link, confirmed or not. */
export interface Link {
  readonly peer: PeerKey;
  readonly cipher: LinkCipher;
  /** What the agent asked for in its HELLO; acted on only once confirmed. */
  readonly hello: LinkHelloFields;
  readonly createdAtMs: number;
  confirmed: boolean;
}

interface PeerState {
  lastTimestampMs: number;
  readonly bucket: Bucket;
  pending: Link | null;
  link: Link | null;
}

export class LinkResponder {
  private readonly opts: ResponderOptions;
  private pairs = new Map<string, PairSecret>();
  private readonly states = new Map<string, PeerState>();
  private readonly byLinkId = new Map<number, Link>();
  /** Identity ids (hex) and link ids of revoked peers -> when forgotten; bounded, oldest dropped first. */
  private readonly revoked = new Map<string | number, number>();
  private readonly global: Bucket;

  constructor(
    private readonly local: Identity,
    peers: Iterable<PeerKey>,
    opts: Partial<ResponderOptions> = {},
    private readonly drawLinkId: () => number = () => randomBytes(4).readUInt32LE(0),
  ) {
    this.opts = { ...RESPONDER_DEFAULTS, ...opts };
    this.global = new Bucket(this.opts.globalBurst, this.opts.globalPerSecond);
    this.setPeers(peers);
  }

  /**
   * Replaces the set of peers (a reload). Unchanged peers keep their pair
   * secret and links; a removed peer's links, pending or not, are dropped,
   * their keys zeroed, and returned (its frames are refused from now on:
   * `revoked` for REVOKED_MEMORY_MS, then unknown_link; its HELLOs likewise,
   * then unknown_peer).
   */
  setPeers(peers: Iterable<PeerKey>, nowMs = Date.now()): Link[] {
    const next = new Map<string, PairSecret>();
    for (const p of peers) {
      const kept = this.pairs.get(p.idHex);
      if (kept !== undefined && kept.peer.hex === p.hex) next.set(p.idHex, kept);
      else {
        const pair = PairSecret.of(this.local, p, false);
        if (pair !== null) next.set(p.idHex, pair);
      }
    }
    const dropped: Link[] = [];
    for (const [idHex, pair] of this.pairs) {
      if (next.get(idHex) === pair) continue;
      this.remember(idHex, nowMs);
      const st = this.states.get(idHex);
      if (st !== undefined) {
        for (const l of [st.pending, st.link]) {
          if (l === null) continue;
          this.remember(l.cipher.secrets.localLink, nowMs);
          this.forget(l).cipher.destroy();
          dropped.push(l);
        }
        this.states.delete(idHex);
      }
      pair.destroy();
    }
    // A key listed again is trusted again.
    for (const idHex of next.keys()) this.revoked.delete(idHex);
    this.pairs = next;
    return dropped;
  }

  private remember(id: string | number, nowMs: number): void {
    this.revoked.delete(id);
    if (this.revoked.size >= REVOKED_MEMORY) this.revoked.delete(this.revoked.keys().next().value!);
    this.revoked.set(id, nowMs + REVOKED_MEMORY_MS);
  }

  /** 'revoked' when `id` belonged to a peer removed lately, else `otherwise`. */
  private unknown<T extends string>(id: string | number, nowMs: number, otherwise: T): T | 'revoked' {
    const until = this.revoked.get(id);
    if (until === undefined) return otherwise;
    if (nowMs <= until) return 'revoked';
    this.revoked.delete(id);
    return otherwise;
  }

  /** The peer's confirmed link, if any. */
  linkOf(peer: PeerKey): Link | null {
    return this.states.get(peer.idHex)?.link ?? null;
  }

  get links(): number {
    return this.byLinkId.size;
  }

  /** The peer a link id (confirmed or pending) belongs to, to tell whose frame was refused; null: none. */
  peerOfLink(id: number): PeerKey | null {
    return this.byLinkId.get(id)?.peer ?? null;
  }

  /** Handles a HELLO; on success, what to send back and the pending link it made. */
  hello(bytes: Uint8Array, nowMs: number): { welcome: Uint8Array; pending: Link } | HelloRefusal {
    const hello = decodeHello(bytes);
    if (typeof hello === 'string') return hello;
    const idHex = Buffer.from(hello.identityId).toString('hex');
    const pair = this.pairs.get(idHex);
    if (pair === undefined) return this.unknown(idHex, nowMs, 'unknown_peer');
    if (!pair.macOk(hello)) return 'auth_failed';
    if (Math.abs(hello.timestampMs - nowMs) > this.opts.maxSkewMs) return 'stale';
    let st = this.states.get(idHex);
    if (st !== undefined && hello.timestampMs <= st.lastTimestampMs) return 'replay';
    if (st === undefined) {
      st = { lastTimestampMs: -1, bucket: new Bucket(this.opts.peerBurst, this.opts.peerPerSecond), pending: null, link: null };
      this.states.set(idHex, st);
    }
    if (!st.bucket.take(nowMs) || !this.global.take(nowMs)) return 'rate_limited';
    const read = readHello(pair, this.local, hello);
    if (typeof read === 'string') return read;
    st.lastTimestampMs = hello.timestampMs;
    const fields = decodeLinkHello(read.payload);
    if (fields === 'bad_payload') {
      read.ck1.fill(0);
      return 'bad_payload';
    }
    const written = writeWelcome(read, { responderLink: this.freeLinkId(), nowMs });
    if (written === 'bad_key') return 'bad_key';
    if (st.pending !== null) this.forget(st.pending).cipher.destroy();
    const pending: Link = { peer: pair.peer, cipher: new LinkCipher(written.secrets), hello: fields, createdAtMs: nowMs, confirmed: false };
    st.pending = pending;
    this.byLinkId.set(written.secrets.localLink, pending);
    return { welcome: written.welcome, pending };
  }

  /**
   * Opens a link frame. A frame for a pending link that opens confirms it:
   * it becomes the peer's link and the one it replaces is dropped and
   * returned in `replaced` (the caller moves what it held to the new one).
   */
  open(frame: Uint8Array, nowMs: number): { link: Link; plain: Uint8Array; replaced: Link | null } | FrameRefusal {
    const h = decodeDataHeader(frame);
    if (typeof h === 'string') return h;
    if (h.type !== LinkType.LinkData) return 'unknown_link';
    const link = this.byLinkId.get(h.id);
    if (link === undefined) return this.unknown(h.id, nowMs, 'unknown_link');
    const st = this.states.get(link.peer.idHex)!;
    if (!link.confirmed && nowMs - link.createdAtMs > this.opts.pendingMs) {
      this.forget(link).cipher.destroy();
      return 'unknown_link';
    }
    const opened = link.cipher.open(frame);
    if (typeof opened === 'string') return opened;
    let replaced: Link | null = null;
    if (!link.confirmed) {
      link.confirmed = true;
      st.pending = null;
      replaced = st.link;
      if (replaced !== null) this.forget(replaced).cipher.destroy();
      st.link = link;
    }
    return { link, plain: opened.plain, replaced };
  }

  /** Forgets unconfirmed links older than pendingMs; returns how many. */
  expire(nowMs: number): number {
    let n = 0;
    for (const st of this.states.values()) {
      if (st.pending !== null && nowMs - st.pending.createdAtMs > this.opts.pendingMs) {
        this.forget(st.pending).cipher.destroy();
        n++;
      }
    }
    return n;
  }

  /** Removes a link from the tables (not its keys: the caller destroys or hands them on). */
  private forget(link: Link): Link {
    this.byLinkId.delete(link.cipher.secrets.localLink);
    const st = this.states.get(link.peer.idHex);
    if (st !== undefined) {
      if (st.pending === link) st.pending = null;
      if (st.link === link) st.link = null;
    }
    return link;
  }

  private freeLinkId(): number {
    for (;;) {
      const id = this.drawLinkId() >>> 0;
      if (id !== 0 && !this.byLinkId.has(id)) return id;
    }
  }
}

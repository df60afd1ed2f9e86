// The link handshake's cryptography (docs/PROTOCOL.md, "Identities and
// links"): a Noise-KK-like pattern over libsodium, as pure functions. Both
// sides know each other's static key beforehand (from their peers files);
// each handshake draws fresh ephemerals on both sides.
//
//   ck0 = H("udprepeater link v1")          h0 = H(ck0 || S_i || S_r)
//   HELLO    h1 = H(h0 || hello[0..56])
//            (ck1, k1) = KDF(ck0, es || ss || h1)   es = DH(e_i, S_r), ss = DH(s_i, S_r)
//            payload sealed under k1 (zero nonce); h2 = H(h1 || sealed)
//   WELCOME  h3 = H(h2 || welcome[0..44])
//            (ck2, k2) = KDF(ck1, ee || se || h3)   ee = DH(e_r, E_i), se = DH(e_r, S_i)
//            responder clock sealed under k2; h4 = H(h3 || sealed)
//   keys     (k_ir, k_ri) = KDF(ck2, h4): agent->repeater, repeater->agent
//   mac      BLAKE2b-128 keyed with macKey = BLAKE2b-256(key ss, "udprepeater link v1 mac" || S_i || S_r)
//
// H is BLAKE2b-256; KDF(ck, x) is HKDF with keyed BLAKE2b as its PRF:
// t = B(ck, x), o1 = B(t, 0x01), o2 = B(t, o1 || 0x02). DH is X25519
// (crypto_scalarmult; a weak key, one with an all-zero result, is refused).
// crypto_kx_* derives session keys from a single DH; a link needs four, so
// only its key pairs are used here.
//
// Why this holds (the brief's four properties):
// - every link has its own keys: k_ir and k_ri depend on both ephemerals
//   and on the whole transcript (h4: both link ids, both ephemerals);
// - a frame from one link or one start does not open on another: another
//   link's keys come from other ephemerals;
// - forward secrecy: the transport keys need ee, which needs an ephemeral
//   secret that is zeroed once the keys exist; stolen static keys give ss,
//   es and se, never ee;
// - nothing is believed before authentication: the mac (ss) is checked
//   before any DH, the payload only opens under k1 (needs s_r or s_i), the
//   WELCOME only under k2 (needs es, hence s_r, and se), and a responder
//   takes the initiator for live only once a frame opens under k_ir, which
//   needs e_i (crypto/link-responder.ts).

import sodium from 'libsodium-wrappers';
import { ReplayWindow } from '../judge/replay.js';
import { BoxKey, scratchBox, type Staged } from './secretbox.js';
import type { Identity, PeerKey } from './identity.js';
import { MAC_BYTES, NONCE_BYTES } from '../wire/frame.js';
import {
  decodeDataHeader,
  dataNonce,
  DATA_HEADER,
  encodeHello,
  encodeWelcome,
  HANDSHAKE_MAC_BYTES,
  type HandshakeError,
  type Hello,
  LinkType,
  type Welcome,
  writeDataHeader,
} from '../wire/handshake.js';

const enc = new TextEncoder();
const PROTOCOL = enc.encode('udprepeater link v1');
const MAC_LABEL = enc.encode('udprepeater link v1 mac');
const ZERO_NONCE = new Uint8Array(NONCE_BYTES);
/** The raw path's scratch space, one per process (made on first use: it needs sodiumReady()). */
const scratch = scratchBox;

/** Puts one plaintext in the scratch box for LinkCipher.sealStaged on several links (nothing else may seal or open in between). */
export function stageForLinks(plain: Uint8Array): Staged {
  return scratch().stage(plain);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const H = (...parts: Uint8Array[]) => sodium.crypto_generichash(32, concat(...parts), null);
const B = (key: Uint8Array, ...parts: Uint8Array[]) => sodium.crypto_generichash(32, concat(...parts), key);

/** HKDF over keyed BLAKE2b: two 32-byte outputs. */
export function kdf(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const t = B(ck, ikm);
  const o1 = B(t, Uint8Array.of(1));
  const o2 = B(t, o1, Uint8Array.of(2));
  t.fill(0);
  return [o1, o2];
}

const CK0 = (): Uint8Array => H(PROTOCOL);

/** Constant-time equality of two MACs. */
function sameMac(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && sodium.memcmp(a, b);
}

function dh(secret: Uint8Array, pub: Uint8Array): Uint8Array | null {
  try {
    return sodium.crypto_scalarmult(secret, pub);
  } catch {
    return null;
  }
}

/**
 * What one side precomputes per peer (one DH, at peers-file load): the
 * static-static secret, the mac key, and h0. `weInitiate`: we are the agent.
 */
export class PairSecret {
  readonly macKey: Uint8Array;
  readonly h0: Uint8Array;
  private constructor(
    readonly peer: PeerKey,
    readonly ss: Uint8Array,
    readonly initiatorStatic: Uint8Array,
    readonly responderStatic: Uint8Array,
  ) {
    this.macKey = B(ss, MAC_LABEL, initiatorStatic, responderStatic);
    this.h0 = H(CK0(), initiatorStatic, responderStatic);
  }

  /** Null when the peer's key gives a weak shared secret (never for a key peerKeyOf accepted, checked anyway). */
  static of(local: Identity, peer: PeerKey, weInitiate: boolean): PairSecret | null {
    const ss = dh0(local, peer.dhPublic);
    if (ss === null) return null;
    const mine = local.peer.dhPublic;
    return weInitiate ? new PairSecret(peer, ss, mine, peer.dhPublic) : new PairSecret(peer, ss, peer.dhPublic, mine);
  }

  /** The handshake mac of `macked`. */
  mac(macked: Uint8Array): Uint8Array {
    return sodium.crypto_generichash(HANDSHAKE_MAC_BYTES, macked, this.macKey);
  }

  /** The cheap check a responder makes before any DH: one keyed hash. */
  macOk(msg: { macked: Uint8Array; mac: Uint8Array }): boolean {
    return sameMac(this.mac(msg.macked), msg.mac);
  }

  destroy(): void {
    this.ss.fill(0);
    this.macKey.fill(0);
  }
}

function dh0(local: Identity, pub: Uint8Array): Uint8Array | null {
  try {
    return local.dh(pub);
  } catch {
    return null;
  }
}

/** The two transport keys of a link and what names it. */
export interface LinkSecrets {
  readonly peer: PeerKey;
  /** The key we seal with, and the one we open with. */
  readonly send: Uint8Array;
  readonly receive: Uint8Array;
  /** The id frames to us carry, and the id frames from us carry. */
  readonly localLink: number;
  readonly remoteLink: number;
  /** h4: the transcript hash, the same on both sides. */
  readonly handshakeHash: Uint8Array;
}

export interface EphemeralPair {
  readonly publicKey: Uint8Array;
  readonly privateKey: Uint8Array;
}

/** The agent's state between its HELLO and the WELCOME. */
export interface InitiatorPending {
  readonly pair: PairSecret;
  readonly initiatorLink: number;
  readonly timestampMs: number;
  readonly ephemeral: EphemeralPair;
  readonly ck1: Uint8Array;
  readonly h2: Uint8Array;
}

export function zeroPending(p: { ephemeral?: EphemeralPair; ck1: Uint8Array }): void {
  p.ephemeral?.privateKey.fill(0);
  p.ck1.fill(0);
}

/** The agent's HELLO. `ephemeral` only for tests; otherwise a fresh pair. */
export function writeHello(
  pair: PairSecret,
  local: Identity,
  f: { initiatorLink: number; timestampMs: number; payload: Uint8Array },
  ephemeral: EphemeralPair = sodium.crypto_kx_keypair(),
): { hello: Uint8Array; pending: InitiatorPending } {
  const es = dh(ephemeral.privateKey, pair.peer.dhPublic);
  if (es === null) throw new Error('the repeater key gives a weak shared secret');
  // The clear part first (the payload is sealed under a key that hashes it).
  const sealedLength = f.payload.length + MAC_BYTES;
  const draft = encodeHello({ initiatorLink: f.initiatorLink, identityId: local.peer.id, ephemeral: ephemeral.publicKey, timestampMs: f.timestampMs, sealed: new Uint8Array(sealedLength) });
  const clear = draft.subarray(0, draft.length - sealedLength - HANDSHAKE_MAC_BYTES);
  const h1 = H(pair.h0, clear);
  const [ck1, k1] = kdf(CK0(), concat(es, pair.ss, h1));
  es.fill(0);
  const sealed = sodium.crypto_secretbox_easy(f.payload, ZERO_NONCE, k1);
  k1.fill(0);
  draft.set(sealed, clear.length);
  const h2 = H(h1, sealed);
  const end = draft.length - HANDSHAKE_MAC_BYTES;
  draft.set(pair.mac(draft.subarray(0, end)), end);
  return { hello: draft, pending: { pair, initiatorLink: f.initiatorLink, timestampMs: f.timestampMs, ephemeral, ck1, h2 } };
}

/** What the responder learned from a HELLO whose mac it checked. */
export interface HelloRead {
  readonly pair: PairSecret;
  readonly hello: Hello;
  readonly payload: Uint8Array;
  readonly ck1: Uint8Array;
  readonly h2: Uint8Array;
}

/**
 * Opens a HELLO's payload: one DH (es; ss is precomputed). Call only after
 * pair.macOk(hello) and the replay and rate checks. 'auth_failed' when the
 * payload does not open, 'bad_key' for a weak ephemeral.
 */
export function readHello(pair: PairSecret, local: Identity, hello: Hello): HelloRead | 'auth_failed' | 'bad_key' {
  const es = dh0(local, hello.ephemeral);
  if (es === null) return 'bad_key';
  const h1 = H(pair.h0, hello.clear);
  const [ck1, k1] = kdf(CK0(), concat(es, pair.ss, h1));
  es.fill(0);
  let payload: Uint8Array;
  try {
    payload = sodium.crypto_secretbox_open_easy(hello.sealed, ZERO_NONCE, k1);
  } catch {
    ck1.fill(0);
    return 'auth_failed';
  } finally {
    k1.fill(0);
  }
  return { pair, hello, payload, ck1, h2: H(h1, hello.sealed) };
}

const u64 = (n: number) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
};

/** The repeater's WELCOME and the link's keys: a fresh ephemeral and two DH (ee, se). */
export function writeWelcome(
  read: HelloRead,
  f: { responderLink: number; nowMs: number },
  ephemeral: EphemeralPair = sodium.crypto_kx_keypair(),
): { welcome: Uint8Array; secrets: LinkSecrets } | 'bad_key' {
  const ee = dh(ephemeral.privateKey, read.hello.ephemeral);
  const se = dh(ephemeral.privateKey, read.pair.peer.dhPublic);
  ephemeral.privateKey.fill(0);
  if (ee === null || se === null) {
    read.ck1.fill(0);
    return 'bad_key';
  }
  const draft = encodeWelcome({ initiatorLink: read.hello.initiatorLink, responderLink: f.responderLink, ephemeral: ephemeral.publicKey, sealed: new Uint8Array(MAC_BYTES + 8) });
  const clearEnd = draft.length - MAC_BYTES - 8 - HANDSHAKE_MAC_BYTES;
  const h3 = H(read.h2, draft.subarray(0, clearEnd));
  const [ck2, k2] = kdf(read.ck1, concat(ee, se, h3));
  ee.fill(0);
  se.fill(0);
  read.ck1.fill(0);
  const sealed = sodium.crypto_secretbox_easy(u64(f.nowMs), ZERO_NONCE, k2);
  k2.fill(0);
  draft.set(sealed, clearEnd);
  const h4 = H(h3, sealed);
  const end = draft.length - HANDSHAKE_MAC_BYTES;
  draft.set(read.pair.mac(draft.subarray(0, end)), end);
  const [kir, kri] = kdf(ck2, h4);
  ck2.fill(0);
  return { welcome: draft, secrets: { peer: read.pair.peer, send: kri, receive: kir, localLink: f.responderLink, remoteLink: read.hello.initiatorLink, handshakeHash: h4 } };
}

/**
 * The agent's side of a WELCOME for `pending` (the caller found it by the
 * echoed initiator link id): mac, two DH (ee, se), open. On success the
 * pending ephemeral is zeroed; on failure it stays usable for a genuine
 * WELCOME.
 */
export function readWelcome(pending: InitiatorPending, local: Identity, welcome: Welcome): { secrets: LinkSecrets; responderTimeMs: number } | 'auth_failed' | 'bad_key' {
  if (welcome.initiatorLink !== pending.initiatorLink || !pending.pair.macOk(welcome)) return 'auth_failed';
  const ee = dh(pending.ephemeral.privateKey, welcome.ephemeral);
  const se = dh0(local, welcome.ephemeral);
  if (ee === null || se === null) return 'bad_key';
  const h3 = H(pending.h2, welcome.clear);
  const [ck2, k2] = kdf(pending.ck1, concat(ee, se, h3));
  ee.fill(0);
  se.fill(0);
  let clock: Uint8Array;
  try {
    clock = sodium.crypto_secretbox_open_easy(welcome.sealed, ZERO_NONCE, k2);
  } catch {
    ck2.fill(0);
    return 'auth_failed';
  } finally {
    k2.fill(0);
  }
  const h4 = H(h3, welcome.sealed);
  const [kir, kri] = kdf(ck2, h4);
  ck2.fill(0);
  zeroPending(pending);
  const responderTimeMs = Number(new DataView(clock.buffer, clock.byteOffset, 8).getBigUint64(0, true));
  return { secrets: { peer: pending.pair.peer, send: kir, receive: kri, localLink: pending.initiatorLink, remoteLink: welcome.responderLink, handshakeHash: h4 }, responderTimeMs };
}

/**
 * Sealing and opening frames under one link's keys. Sealing is on the data
 * path (a repeater seals each live datagram once per linked subscriber), so
 * it uses crypto/secretbox.ts's raw path (the key kept in the wasm heap, no
 * allocation but the frame); opening uses the public API. Counters start at
 * 1 and never repeat under a key; received ones pass a replay window after
 * the MAC.
 */
export class LinkCipher {
  private counter = 0;
  private readonly window = new ReplayWindow();
  private sendKey: BoxKey | null = null;
  constructor(readonly secrets: LinkSecrets) {}

  seal(plain: Uint8Array): Buffer {
    return this.sealStaged(scratch().stage(plain));
  }

  /**
   * The plaintext stageForLinks() put in the scratch box, sealed as this
   * link's next frame: one copy of a datagram into the box, then one seal
   * per link. Throws if anything used the box since.
   */
  sealStaged(staged: Staged): Buffer {
    const out = Buffer.allocUnsafe(DATA_HEADER + MAC_BYTES + staged.length);
    writeDataHeader(out, { type: LinkType.LinkData, id: this.secrets.remoteLink, counter: ++this.counter });
    this.sendKey ??= new BoxKey(this.secrets.send);
    scratch().sealStaged(this.sendKey, out.subarray(0, DATA_HEADER), out, DATA_HEADER, staged);
    return out;
  }

  /**
   * The plaintext and counter, or why the frame is refused: a header
   * problem, 'unknown_link' (another link's id), 'auth_failed', 'replay'
   * (a counter seen, or too far behind). The window moves only after the MAC.
   */
  open(frame: Uint8Array): { plain: Uint8Array; counter: number } | HandshakeError | 'unknown_link' | 'auth_failed' | 'replay' {
    const h = decodeDataHeader(frame);
    if (typeof h === 'string') return h;
    if (h.type !== LinkType.LinkData || h.id !== this.secrets.localLink) return 'unknown_link';
    let plain: Uint8Array;
    try {
      plain = sodium.crypto_secretbox_open_easy(frame.subarray(DATA_HEADER), dataNonce(frame), this.secrets.receive);
    } catch {
      return 'auth_failed';
    }
    if (!this.window.accept(h.counter)) return 'replay';
    return { plain, counter: h.counter };
  }

  destroy(): void {
    this.secrets.send.fill(0);
    this.secrets.receive.fill(0);
    this.sendKey?.destroy();
    this.sendKey = null;
  }
}

// The cryptography of the bus key announcement (wire/bus-key.ts; docs/PROTOCOL.md,
// "The cluster bus with identities"). A repeater hands its bus sending key
// to each repeater its peers file lists, sealed under a key only that pair
// can derive:
//
//   es  = DH(e, S_r) = DH(s_r, E)     e, E: an ephemeral drawn per announcement
//   ss  = DH(s_s, S_r) = DH(s_r, S_s) the pair's static secret
//   k_r = BLAKE2b-256 keyed with ss over "udprepeater bus key v1" || es || H(clear) || id_r
//   sealed_r = secretbox(k_r, zero nonce, sending key)   (k_r seals one message: e is fresh)
//
// and signs the whole announcement with its Ed25519 identity.
// - Only the sender could have made it: the signature, and ss in every k_r.
// - Only r opens its entry: k_r needs ss (s_s or s_r) and es (e or s_r).
// - A stolen static key of the sender later does not open past
//   announcements: es needs e, zeroed once sealed (a stolen key of the
//   recipient does: a one-way message cannot do better).
// - The header (origin, key id, time) is bound into every k_r and the signature.

import sodium from 'libsodium-wrappers';
import type { Identity, PeerKey } from './identity.js';
import { keyIdOf } from './keyring.js';
import { NONCE_BYTES } from '../wire/frame.js';
import { type BusKeyAnnouncement, busKeyBody, busKeyHeader } from '../wire/bus-key.js';

const LABEL = new TextEncoder().encode('udprepeater bus key v1');
const ZERO_NONCE = new Uint8Array(NONCE_BYTES);

function recipientKey(ss: Uint8Array, es: Uint8Array, clear: Uint8Array, recipientId: Uint8Array): Uint8Array {
  const h = sodium.crypto_generichash(32, clear, null);
  const input = new Uint8Array(LABEL.length + es.length + h.length + recipientId.length);
  input.set(LABEL, 0);
  input.set(es, LABEL.length);
  input.set(h, LABEL.length + es.length);
  input.set(recipientId, LABEL.length + es.length + h.length);
  return sodium.crypto_generichash(32, input, ss);
}

function dh(secret: Uint8Array, pub: Uint8Array): Uint8Array | null {
  try {
    return sodium.crypto_scalarmult(secret, pub);
  } catch {
    return null;
  }
}

/** A whole signed announcement of `key` for `recipients` (the listed repeaters but us). Needs sodiumReady(). */
export function writeBusKey(local: Identity, recipients: readonly PeerKey[], key: Uint8Array, origin: bigint, sentAtMs: number): Uint8Array {
  const e = sodium.crypto_kx_keypair();
  const header = busKeyHeader({ senderId: local.peer.id, origin, sentAtMs, keyId: keyIdOf(key), ephemeral: e.publicKey, recipients: recipients.length });
  const sealed: Array<{ id: Uint8Array; sealed: Uint8Array }> = [];
  try {
    for (const r of recipients) {
      const es = dh(e.privateKey, r.dhPublic);
      let ss: Uint8Array | null = null;
      try {
        ss = local.dh(r.dhPublic);
      } catch {
        ss = null;
      }
      // Never for a key peerKeyOf accepted; that recipient is left out rather than sealed to a weak key.
      if (es === null || ss === null) continue;
      const k = recipientKey(ss, es, header, r.id);
      sealed.push({ id: r.id, sealed: sodium.crypto_secretbox_easy(key, ZERO_NONCE, k) });
      k.fill(0);
      es.fill(0);
      ss.fill(0);
    }
  } finally {
    e.privateKey.fill(0);
  }
  // A recipient left out changes the count the header states.
  if (sealed.length !== recipients.length) new DataView(header.buffer, header.byteOffset).setUint16(64, sealed.length, true);
  const body = busKeyBody(header, sealed);
  const out = new Uint8Array(body.length + 64);
  out.set(body, 0);
  out.set(local.sign(body), body.length);
  return out;
}

/** The signature verifies under the sender's listed key: one Ed25519 verify, no DH. */
export function busKeySigned(a: BusKeyAnnouncement, sender: PeerKey): boolean {
  try {
    return sodium.crypto_sign_verify_detached(a.signature, a.signed, sender.publicKey);
  } catch {
    return false;
  }
}

/**
 * The sending key `a` sealed for us (two DH and one open), after busKeySigned.
 * `not_for_us`: the sender does not list us as a repeater.
 */
export function openBusKey(local: Identity, sender: PeerKey, a: BusKeyAnnouncement): Uint8Array | 'not_for_us' | 'auth_failed' | 'bad_payload' {
  const mine = a.recipients.find((r) => r.idHex === local.peer.idHex);
  if (mine === undefined) return 'not_for_us';
  let es: Uint8Array;
  let ss: Uint8Array;
  try {
    es = local.dh(a.ephemeral);
    ss = local.dh(sender.dhPublic);
  } catch {
    return 'auth_failed';
  }
  const k = recipientKey(ss, es, a.clear, local.peer.id);
  es.fill(0);
  ss.fill(0);
  let key: Uint8Array;
  try {
    key = sodium.crypto_secretbox_open_easy(mine.sealed, ZERO_NONCE, k);
  } catch {
    return 'auth_failed';
  } finally {
    k.fill(0);
  }
  // The key id in the header names this key: a frame under it is found by that id.
  if (key.length !== 32 || keyIdOf(key) !== a.keyId) {
    key.fill(0);
    return 'bad_payload';
  }
  return key;
}

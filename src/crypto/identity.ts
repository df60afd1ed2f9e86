// Per-node identities (docs/PROTOCOL.md, "Identities and links"): one
// Ed25519 key pair per node, repeater or TLS cache, kept as its 32-byte seed.
//
// Ed25519, not a bare X25519 key: the same seed signs (what a later step
// seals on the cluster bus, where one message goes to many repeaters and a
// per-pair key would not say which repeater spoke) and, converted with
// crypto_sign_ed25519_{pk,sk}_to_curve25519, takes part in the link
// handshake's Diffie-Hellman. The conversion also refuses points that are
// not valid public keys, so a peers file cannot list a weak key.
//
// Text forms, after NATS NKeys (a type prefix, base32, a checksum) so that a
// mistyped, truncated or swapped key is refused with a reason instead of
// being trusted or failing later:
//   public:  "urid1" + base32(key[32] || check[4])   63 characters
//   private: "ursk1" + base32(seed[32] || check[4])  only in identity files
// check = SHA-256("udprepeater identity checksum" 0x00 prefix key)[0..4]: it
// covers the prefix, so a private key pasted as a public one (or the
// reverse) fails it even with the prefix edited. base32 is RFC 4648's
// alphabet in lower case without padding (read in either case); the two
// unused bits of the last character must be zero, so every key has exactly
// one spelling.

import { closeSync, fchmodSync, openSync, writeSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import sodium from 'libsodium-wrappers';
import { ConfigError, describe } from '../base/errors.js';
import { readTrusted } from '../base/trust.js';

export const PUBLIC_PREFIX = 'urid1';
export const SECRET_PREFIX = 'ursk1';
export const KEY_BYTES = 32;
const CHECK_BYTES = 4;
/** Characters after the prefix: base32 of 36 bytes. */
export const BODY_CHARS = Math.ceil(((KEY_BYTES + CHECK_BYTES) * 8) / 5);
/** Bytes of the identity id a handshake names its sender by. */
export const IDENTITY_ID_BYTES = 8;
/** An identity file is a few lines; anything larger is not one. */
const MAX_FILE_BYTES = 4096;

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

function base32(bytes: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

/** Decodes base32 (either case); a problem when a character is not in the alphabet or unused bits are set. */
function unbase32(text: string): Uint8Array | string {
  const out = new Uint8Array(Math.floor((text.length * 5) / 8));
  let acc = 0;
  let bits = 0;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const v = ALPHABET.indexOf(text[i]!.toLowerCase());
    if (v < 0) return `the character ${JSON.stringify(text[i])} at position ${i + 1} is not base32 (a-z, 2-7)`;
    acc = ((acc << 5) | v) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      out[n++] = (acc >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) return 'the checksum does not match: a character was mistyped or changed';
  return out;
}

function checksum(prefix: string, key: Uint8Array): Uint8Array {
  return createHash('sha256').update('udprepeater identity checksum\0').update(prefix).update(key).digest().subarray(0, CHECK_BYTES);
}

function encodeKey(prefix: string, key: Uint8Array): string {
  const body = new Uint8Array(KEY_BYTES + CHECK_BYTES);
  body.set(key);
  body.set(checksum(prefix, key), KEY_BYTES);
  return prefix + base32(body);
}

/** The 32 key bytes of a text key with `prefix`, or why it is not one. Pure: no libsodium. */
function decodeKey(text: string, prefix: string): Uint8Array | string {
  const body = text.slice(prefix.length);
  if (body.length !== BODY_CHARS) {
    return `has ${body.length} characters after "${prefix}" where a key has ${BODY_CHARS}: ${body.length < BODY_CHARS ? 'truncated' : 'something was added to it'}`;
  }
  const bytes = unbase32(body);
  if (typeof bytes === 'string') return bytes;
  const key = bytes.subarray(0, KEY_BYTES);
  const check = checksum(prefix, key);
  if (!check.every((b, i) => b === bytes[KEY_BYTES + i])) return 'the checksum does not match: a character was mistyped or changed';
  return Uint8Array.from(key);
}

/** The Ed25519 public key a public key text names, or why it names none. Pure: the point itself is checked by peerKeyOf. */
export function parsePublicKey(text: string): Uint8Array | string {
  const t = text.trim();
  if (t.toLowerCase().startsWith(SECRET_PREFIX)) {
    return `is a private key ("${SECRET_PREFIX}..."), not a public key: never copy it off its host; udprepeater pubkey FILE prints the public key`;
  }
  if (!t.toLowerCase().startsWith(PUBLIC_PREFIX)) return `is not an identity public key: one starts with "${PUBLIC_PREFIX}" (udprepeater pubkey FILE prints it)`;
  return decodeKey(t.slice(0, PUBLIC_PREFIX.length).toLowerCase() + t.slice(PUBLIC_PREFIX.length), PUBLIC_PREFIX);
}

export function formatPublicKey(key: Uint8Array): string {
  return encodeKey(PUBLIC_PREFIX, key);
}

/** The id a handshake names an identity by: SHA-256("udprepeater identity id" 0x00 publicKey)[0..8]. */
export function identityIdOf(publicKey: Uint8Array): Uint8Array {
  return Uint8Array.from(createHash('sha256').update('udprepeater identity id\0').update(publicKey).digest().subarray(0, IDENTITY_ID_BYTES));
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** Someone else's identity, as a peers file lists it. Needs sodiumReady(). */
export interface PeerKey {
  /** The canonical text (lower case). */
  readonly text: string;
  /** Ed25519 public key. */
  readonly publicKey: Uint8Array;
  /** Hex of publicKey: the key of maps. */
  readonly hex: string;
  /** identityIdOf(publicKey). */
  readonly id: Uint8Array;
  readonly idHex: string;
  /** The X25519 form, for the handshake. */
  readonly dhPublic: Uint8Array;
}

/** A PeerKey from Ed25519 public key bytes; a problem when they are not a valid point. */
export function peerKeyOf(publicKey: Uint8Array): PeerKey | string {
  let dhPublic: Uint8Array;
  try {
    dhPublic = sodium.crypto_sign_ed25519_pk_to_curve25519(publicKey);
  } catch {
    return 'is not a valid Ed25519 public key (its checksum matches: it was made that way, not mistyped)';
  }
  const id = identityIdOf(publicKey);
  return Object.freeze({ text: formatPublicKey(publicKey), publicKey: Uint8Array.from(publicKey), hex: hex(publicKey), id, idHex: hex(id), dhPublic });
}

/** parsePublicKey then peerKeyOf. */
export function peerKeyFromText(text: string): PeerKey | string {
  const key = parsePublicKey(text);
  return typeof key === 'string' ? key : peerKeyOf(key);
}

/** Our own identity: the key pair derived from the seed. Needs sodiumReady(). */
export class Identity {
  readonly peer: PeerKey;
  private signSecret: Uint8Array;
  private dhSecret: Uint8Array;

  private constructor(seed: Uint8Array) {
    const kp = sodium.crypto_sign_seed_keypair(seed);
    const peer = peerKeyOf(kp.publicKey);
    if (typeof peer === 'string') throw new Error('libsodium derived an invalid public key');
    this.peer = peer;
    this.signSecret = kp.privateKey;
    this.dhSecret = sodium.crypto_sign_ed25519_sk_to_curve25519(kp.privateKey);
  }

  static fromSeed(seed: Uint8Array): Identity {
    if (seed.length !== KEY_BYTES) throw new Error(`an identity seed is ${KEY_BYTES} bytes, got ${seed.length}`);
    return new Identity(seed);
  }

  /** The public key's text: what `udprepeater pubkey` prints and peers files list. */
  get publicText(): string {
    return this.peer.text;
  }

  /** X25519(our static secret, their X25519 public key); throws on a weak key (an all-zero result). */
  dh(theirs: Uint8Array): Uint8Array {
    return sodium.crypto_scalarmult(this.dhSecret, theirs);
  }

  /** An Ed25519 signature of `message` (64 bytes). */
  sign(message: Uint8Array): Uint8Array {
    return sodium.crypto_sign_detached(message, this.signSecret);
  }

  /** Zeroes the secrets; the identity must not be used afterwards. */
  destroy(): void {
    this.signSecret.fill(0);
    this.dhSecret.fill(0);
  }
}

/** The text of an identity file holding `seed`. */
export function identityFileText(seed: Uint8Array, publicText: string): string {
  return (
    '# udprepeater identity: a private key. Keep it mode 0600 and never copy it off this host;\n' +
    '# `udprepeater pubkey FILE` prints its public key for the peers files of the hosts it talks to.\n' +
    `# public key: ${publicText}\n` +
    `${encodeKey(SECRET_PREFIX, seed)}\n`
  );
}

/**
 * Reads an identity file's text: `#` comment lines, blank lines and exactly
 * one private key line. A "# public key:" comment, when present, must name
 * the key the private key derives (a file edited by hand is refused, not
 * half believed). Throws a ConfigError naming `where`.
 */
export function parseIdentityText(text: string, where: string): Identity {
  const lines = text.replace(/^\uFEFF/, '').split('\n').map((l) => l.replace(/\r$/, '').trim());
  let seed: Uint8Array | null = null;
  let stated: string | null = null;
  for (const [i, line] of lines.entries()) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^#\s*public key:\s*(\S+)\s*$/i.exec(line);
      if (m !== null) stated = m[1]!;
      continue;
    }
    if (seed !== null) throw new ConfigError(`${where}:${i + 1}: a second key line; an identity file holds one private key`);
    if (line.toLowerCase().startsWith(PUBLIC_PREFIX)) {
      throw new ConfigError(`${where}:${i + 1}: holds a public key, not an identity; udprepeater keygen --identity FILE writes one`);
    }
    if (!line.toLowerCase().startsWith(SECRET_PREFIX)) {
      throw new ConfigError(`${where}:${i + 1}: not an identity (an identity line starts with "${SECRET_PREFIX}"; udprepeater keygen --identity FILE writes one)`);
    }
    const key = decodeKey(line.slice(0, SECRET_PREFIX.length).toLowerCase() + line.slice(SECRET_PREFIX.length), SECRET_PREFIX);
    if (typeof key === 'string') throw new ConfigError(`${where}:${i + 1}: the private key ${key}`);
    seed = key;
  }
  if (seed === null) throw new ConfigError(`${where}: holds no private key; udprepeater keygen --identity FILE writes one`);
  // The documentation's examples use seeds of one repeated byte: known to everyone, never an identity.
  if (seed.every((b) => b === seed![0])) throw new ConfigError(`${where}: holds an example key from the documentation, which everyone knows; udprepeater keygen --identity FILE writes a real one`);
  const identity = Identity.fromSeed(seed);
  seed.fill(0);
  if (stated !== null && stated.toLowerCase() !== identity.publicText) {
    identity.destroy();
    throw new ConfigError(`${where}: its "# public key:" comment names ${stated}, but its private key's public key is another: the file was edited; remove the comment or restore the file`);
  }
  return identity;
}

/**
 * Loads an identity file through the trusted-file checks (ours, no symbolic
 * link, no access for group or others). Throws a ConfigError naming `label`
 * and the file.
 */
export function loadIdentity(file: string, label = '--identity'): Identity {
  const bytes = readTrusted(file, label, { secret: true, noun: 'the identity' });
  if (bytes === null) throw new ConfigError(`${label} ${file}: no such file; udprepeater keygen --identity ${file} writes one`);
  try {
    if (bytes.length > MAX_FILE_BYTES) throw new ConfigError(`${label} ${file}: ${bytes.length} bytes, too large for an identity file`);
    return parseIdentityText(bytes.toString('utf8'), `${label} ${file}`);
  } finally {
    bytes.fill(0);
  }
}

/**
 * Writes a new identity to `file` with mode 0600, never over an existing
 * file. Returns its public key's text.
 */
export function generateIdentityFile(file: string): { publicText: string } {
  const seed = randomBytes(KEY_BYTES);
  const identity = Identity.fromSeed(seed);
  const text = Buffer.from(identityFileText(seed, identity.publicText));
  seed.fill(0);
  const publicText = identity.publicText;
  identity.destroy();
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (err) {
    text.fill(0);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new ConfigError(`${file} already exists; refusing to overwrite an identity (or any file)`);
    throw new ConfigError(`cannot create ${file}: ${describe(err)}`);
  }
  try {
    fchmodSync(fd, 0o600);
    writeSync(fd, text);
  } finally {
    closeSync(fd);
    text.fill(0);
  }
  return { publicText };
}

// Identities (src/crypto/identity.ts): the identity file (round trip, mode
// 0600, never overwritten, read through the trusted-file checks) and the
// public key's text form (a mistyped, truncated, extended or swapped key is
// refused with the reason, never read as another key).

import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import sodium from 'libsodium-wrappers';
import { ConfigError } from '../src/base/errors.js';
import {
  BODY_CHARS,
  formatPublicKey,
  generateIdentityFile,
  Identity,
  identityFileText,
  identityIdOf,
  loadIdentity,
  parseIdentityText,
  parsePublicKey,
  peerKeyFromText,
  PUBLIC_PREFIX,
  SECRET_PREFIX,
} from '../src/crypto/identity.js';
import { generateKeyFile } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';

before(() => sodiumReady());

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-identity-'));
chmodSync(dir, 0o700);
let n = 0;
const path = (name = 'id') => join(dir, `${name}-${++n}`);
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const refused = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test(e.message);

describe('identity files', () => {
  test('round trip: written with mode 0600, loaded back to the same key pair', () => {
    const file = path();
    const { publicText } = generateIdentityFile(file);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.match(publicText, new RegExp(`^${PUBLIC_PREFIX}[a-z2-7]{${BODY_CHARS}}$`));
    const text = readFileSync(file, 'utf8');
    assert.match(text, new RegExp(`^${SECRET_PREFIX}[a-z2-7]{${BODY_CHARS}}$`, 'm'), 'the private key line');
    assert.ok(!text.split('\n').some((l) => !l.startsWith('#') && l.includes(publicText)), 'the public key appears only in a comment');
    const id = loadIdentity(file);
    assert.equal(id.publicText, publicText);
    // The key pair works: a signature verifies under the listed public key.
    const msg = Buffer.from('a bus message');
    assert.ok(sodium.crypto_sign_verify_detached(id.sign(msg), msg, id.peer.publicKey));
    assert.deepEqual(id.peer.id, identityIdOf(id.peer.publicKey));
    assert.equal(id.peer.id.length, 8);
    id.destroy();
    // Two identities differ.
    assert.notEqual(generateIdentityFile(path()).publicText, publicText);
  });

  test('an existing file is never overwritten', () => {
    const file = path();
    generateIdentityFile(file);
    const before = readFileSync(file);
    assert.throws(() => generateIdentityFile(file), refused(/already exists; refusing to overwrite/));
    assert.deepEqual(readFileSync(file), before);
    // Not a key file either.
    const key = path('key');
    generateKeyFile(key);
    assert.throws(() => generateIdentityFile(key), refused(/already exists/));
  });

  test('read through the trusted-file checks: others may not read it, a symbolic link is refused, a missing file is named', () => {
    const file = path();
    generateIdentityFile(file);
    chmodSync(file, 0o640);
    assert.throws(() => loadIdentity(file), refused(new RegExp(`--identity ${esc(file)}: group or others can access the identity \\(mode 0640\\); run chmod 600`)));
    chmodSync(file, 0o600);
    const link = path('link');
    symlinkSync(file, link);
    assert.throws(() => loadIdentity(link), refused(new RegExp(`--identity ${esc(link)}: a symbolic link`)));
    const missing = path('missing');
    assert.throws(() => loadIdentity(missing), refused(new RegExp(`--identity ${esc(missing)}: no such file; udprepeater keygen --identity`)));
  });

  test('what is not an identity is refused with the reason and the line', () => {
    const seed = Buffer.from(sodium.randombytes_buf(32));
    const good = Identity.fromSeed(seed);
    const text = identityFileText(seed, good.publicText);
    assert.equal(parseIdentityText(text, 'f').publicText, good.publicText);
    // Without comments, with CRLF: the same identity.
    const bare = text.split('\n').filter((l) => !l.startsWith('#')).join('\r\n');
    assert.equal(parseIdentityText(bare, 'f').publicText, good.publicText);

    const keyLine = text.split('\n').find((l) => l.startsWith(SECRET_PREFIX))!;
    const cases: Array<[string, string, RegExp]> = [
      ['a secretbox key file (base64 text)', `${Buffer.alloc(32, 7).toString('base64')}\n`, /^f:1: not an identity/],
      ['a secretbox key file (hex text)', `${Buffer.alloc(32, 7).toString('hex')}\n`, /^f:1: not an identity/],
      ['empty', '# nothing\n\n', /^f: holds no private key/],
      ['a public key', `${good.publicText}\n`, /^f:1: holds a public key, not an identity/],
      ['two key lines', `${keyLine}\n${keyLine}\n`, /^f:2: a second key line/],
      ['truncated', `${keyLine.slice(0, -3)}\n`, /^f:1: the private key has 55 characters .* truncated/],
      ['mistyped', `${keyLine.slice(0, 10)}${keyLine[10] === 'a' ? 'b' : 'a'}${keyLine.slice(11)}\n`, /^f:1: the private key the checksum does not match/],
      ['edited public key comment', text.replace(/# public key: \S+/, `# public key: ${Identity.fromSeed(Buffer.alloc(32, 6)).publicText}`), /^f: its "# public key:" comment names .* the file was edited/],
      ['the documentation\'s example', identityFileText(Buffer.alloc(32, 1), Identity.fromSeed(Buffer.alloc(32, 1)).publicText), /^f: holds an example key from the documentation/],
    ];
    for (const [what, body, re] of cases) assert.throws(() => parseIdentityText(body, 'f'), refused(re), what);
  });
});

/** A fresh identity's public key, as text and bytes (after sodiumReady). */
function key(): { text: string; bytes: Uint8Array } {
  const id = Identity.fromSeed(sodium.randombytes_buf(32));
  const out = { text: id.publicText, bytes: id.peer.publicKey };
  id.destroy();
  return out;
}

describe('public key text', () => {
  test('round trip, in either case; one spelling per key', () => {
    const { text, bytes } = key();
    assert.deepEqual(parsePublicKey(text), bytes);
    assert.deepEqual(parsePublicKey(`  ${text.toUpperCase()}\n`), bytes);
    assert.equal(formatPublicKey(bytes), text);
    assert.equal(text.length, PUBLIC_PREFIX.length + BODY_CHARS);
  });

  test('every single mistyped character is refused', () => {
    const { text } = key();
    const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
    let tried = 0;
    for (let i = PUBLIC_PREFIX.length; i < text.length; i++) {
      for (const c of alphabet) {
        if (c === text[i]) continue;
        const typo = text.slice(0, i) + c + text.slice(i + 1);
        const r = parsePublicKey(typo);
        assert.equal(typeof r, 'string', `position ${i} as ${c} was accepted`);
        assert.match(r as string, /checksum does not match/);
        tried++;
      }
    }
    assert.equal(tried, BODY_CHARS * 31);
    // Characters outside the alphabet are named.
    assert.match(parsePublicKey(text.slice(0, 20) + '1' + text.slice(21)) as string, /the character "1" at position 16 is not base32/);
    // Two swapped neighbours.
    const i = 30;
    if (text[i] !== text[i + 1]) assert.match(parsePublicKey(text.slice(0, i) + text[i + 1] + text[i] + text.slice(i + 2)) as string, /checksum/);
  });

  test('truncated or extended keys are refused, saying which', () => {
    const { text } = key();
    for (let len = 0; len < text.length; len++) {
      const r = parsePublicKey(text.slice(0, len));
      assert.equal(typeof r, 'string', `the first ${len} characters were accepted`);
    }
    assert.match(parsePublicKey(text.slice(0, -1)) as string, /has 57 characters after "urid1" where a key has 58: truncated/);
    assert.match(parsePublicKey(`${text}a`) as string, /something was added to it/);
  });

  test('a private key pasted as a public key is refused as such, even with its prefix edited', () => {
    const seed = Buffer.alloc(32, 9);
    const secretLine = identityFileText(seed, '').split('\n').find((l) => l.startsWith(SECRET_PREFIX))!;
    assert.match(parsePublicKey(secretLine) as string, /is a private key .* never copy it off its host/);
    // The checksum covers the prefix: the same body under the public prefix is no public key.
    assert.match(parsePublicKey(PUBLIC_PREFIX + secretLine.slice(SECRET_PREFIX.length)) as string, /checksum does not match/);
    assert.match(parsePublicKey('AAAAC3NzaC1lZDI1NTE5AAAAI') as string, /is not an identity public key: one starts with "urid1"/);
  });

  test('non-zero unused bits (a second spelling of the same bytes) are refused', () => {
    const { text } = key();
    const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
    const last = alphabet.indexOf(text[text.length - 1]!);
    // The last character carries 3 data bits and 2 unused ones.
    const other = alphabet[last ^ 1]!;
    assert.match(parsePublicKey(text.slice(0, -1) + other) as string, /checksum does not match/);
  });

  test('a well-formed text of a point that is no Ed25519 public key is refused by peerKeyFromText', () => {
    for (const bad of [new Uint8Array(32), new Uint8Array(32).fill(0xff)]) {
      const text = formatPublicKey(bad);
      assert.deepEqual(parsePublicKey(text), bad, 'the format itself is fine');
      assert.match(peerKeyFromText(text) as string, /is not a valid Ed25519 public key/);
    }
    const { text } = key();
    const peer = peerKeyFromText(text);
    assert.equal(typeof peer, 'object');
  });
});

// Sealed frames, the gate, the key ring and the replay window.

import assert from 'node:assert/strict';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import { generateKeyFile, keyIdOf, KeyRing, parseKey, readKeyFile } from '../src/crypto/keyring.js';
import { NonceSource } from '../src/crypto/nonce.js';
import { ReplayWindow, WINDOW } from '../src/judge/replay.js';
import { BoxKey, knownAnswers, Secretbox, sodiumReady } from '../src/crypto/secretbox.js';
import sodium from 'libsodium-wrappers';
import { repoRoot } from './helpers/uwsgi.js';
import { SecureSession } from '../src/crypto/session.js';
import { ConfigError } from '../src/base/errors.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { EnvelopeKind, Role } from '../src/wire/envelope.js';
import { FRAME_HEADER, FRAME_OVERHEAD, FRAME_VERSION, NONCE_BYTES } from '../src/wire/frame.js';
import { keyDir, newKeyFile } from './helpers/keys.js';
import { MAX_FENCED_ORIGINS, Membership } from '../src/judge/membership.js';
import { decodeEnvelope, encodeEnvelope, bigintToLong } from '../src/wire/envelope.js';

before(() => sodiumReady());

const datagram = encodeCacheSet(Buffer.from('sess1'), Buffer.alloc(300, 7), 1795213916);
const SKEW = 30_000;

/** An agent and a repeater; started long ago, so frames sealed "in the past" are not before their start. */
function pair(): { a: SecureSession; b: SecureSession; ring: KeyRing } {
  return { a: new SecureSession(Role.Agent, { startedAtMs: 0 }), b: new SecureSession(Role.Repeater, { startedAtMs: 0 }), ring: KeyRing.load([newKeyFile()]) };
}

function sealDatagram(s: SecureSession, ring: KeyRing, d: Buffer = datagram, now?: number): Buffer {
  return s.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: d, address: null }, now)!;
}

describe('seal and open', () => {
  test('round trip of datagrams and subscriptions', () => {
    const { a, b, ring } = pair();
    for (const size of [1, 200, 4096, 60000]) {
      const d = Buffer.alloc(size, size & 0xff);
      const env = b.open(ring, sealDatagram(a, ring, d), SKEW);
      assert.ok(typeof env === 'object');
      assert.equal(env.kind, EnvelopeKind.CacheDatagram);
      assert.deepEqual(env.datagram, d);
      assert.equal(env.origin, a.origin);
      assert.equal(env.channelKey, 'ssl');
    }
    const sub = a.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: '10.0.0.5:7272' })!;
    const env = b.open(ring, sub, SKEW);
    assert.ok(typeof env === 'object');
    assert.equal(env.kind, EnvelopeKind.Subscribe);
    assert.equal(env.address, '10.0.0.5:7272');
  });

  test('a frame too large for one UDP datagram is refused at seal time', () => {
    const { a, ring } = pair();
    assert.equal(a.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: Buffer.alloc(65500), address: null }), null);
    assert.equal(a.framesSealed, 0, 'a refused seal must not consume a sequence number');
  });

  test('flipping any byte of a frame makes it fail', () => {
    const { a, b, ring } = pair();
    const frame = sealDatagram(a, ring, Buffer.from([111, 5, 0, 11, 1, 0, 0x6b, 0, 0]));
    for (let i = 0; i < frame.length; i++) {
      const bad = Buffer.from(frame);
      bad[i]! ^= 0x01;
      const r = b.open(ring, bad, SKEW);
      const want = i < 2 ? 'unsealed' : i < 4 ? 'bad_version' : i < FRAME_HEADER ? 'unknown_key' : 'auth_failed';
      assert.equal(r, want, `byte ${i}`);
    }
    assert.equal(typeof b.open(ring, frame, SKEW), 'object', 'the untouched frame still opens');
  });

  test('property: random corruption never opens and never throws', () => {
    const { a, b, ring } = pair();
    const frame = sealDatagram(a, ring);
    fc.assert(
      fc.property(fc.nat(frame.length - 1), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const bad = Buffer.from(frame);
        bad[at]! ^= x;
        assert.equal(typeof b.open(ring, bad, SKEW), 'string');
      }),
      { numRuns: 2000 },
    );
  });

  test('a key the receiver does not hold: unknown key id', () => {
    const { a, b, ring } = pair();
    const other = KeyRing.load([newKeyFile()]);
    assert.equal(b.open(other, sealDatagram(a, ring), SKEW), 'unknown_key');
  });

  test('the wrong key under a matching id fails authentication', () => {
    const { a, b, ring } = pair();
    const frame = sealDatagram(a, ring);
    const other = KeyRing.load([newKeyFile()]);
    frame.writeUInt32LE(other.sealing.id, 4); // claim the other key's id
    assert.equal(b.open(other, frame, SKEW), 'auth_failed');
  });

  test('truncated frames are refused at every length', () => {
    const { a, b, ring } = pair();
    const frame = sealDatagram(a, ring);
    for (let n = 0; n < frame.length; n++) {
      const r = b.open(ring, frame.subarray(0, n), SKEW);
      assert.equal(r, n < 2 ? 'unsealed' : n < FRAME_OVERHEAD ? 'too_short' : 'auth_failed', `length ${n}`);
    }
  });

  test('plain uwsgi datagrams are not frames', () => {
    const { b, ring } = pair();
    assert.equal(b.open(ring, datagram, SKEW), 'unsealed');
    assert.equal(b.open(ring, Buffer.from([0xe0, 0, 0, 0]), SKEW), 'unsealed');
  });

  test('protobuf garbage inside a valid box is bad_payload, never an exception', () => {
    const { b, ring } = pair();
    const box = new Secretbox();
    const nonces = new NonceSource();
    const key = ring.sealing;
    const outcomes = new Map<string, number>();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (garbage) => {
        const frame = Buffer.alloc(FRAME_OVERHEAD + garbage.length);
        frame.set([0x75, 0x72, FRAME_VERSION, 0]);
        frame.writeUInt32LE(key.id, 4);
        nonces.next(frame, FRAME_HEADER);
        box.seal(key.box, frame.subarray(FRAME_HEADER, FRAME_HEADER + NONCE_BYTES), garbage, frame, FRAME_HEADER + NONCE_BYTES);
        const r = b.open(ring, frame, SKEW);
        // Random bytes almost never form an Envelope the gate accepts (it needs a known kind, a
        // role, a sequence and a send time within the skew); whatever they form is a clean refusal.
        if (typeof r === 'string') {
          outcomes.set(r, (outcomes.get(r) ?? 0) + 1);
          assert.ok(['bad_payload', 'wrong_role', 'stale', 'before_start', 'wrong_receiver', 'replay'].includes(r), r);
        } else assert.fail(`random plaintext opened as ${JSON.stringify({ kind: r.kind, sequence: r.sequence })}`);
      }),
      { numRuns: 3000 },
    );
    assert.ok((outcomes.get('bad_payload') ?? 0) > 2000, `garbage did not reach the payload check: ${JSON.stringify([...outcomes])}`);
  });

  test('frames outside the clock skew are stale, on either side', () => {
    const { a, b, ring } = pair();
    const now = Date.now();
    assert.equal(b.open(ring, sealDatagram(a, ring, datagram, now - SKEW - 1), SKEW, now), 'stale');
    assert.equal(b.open(ring, sealDatagram(a, ring, datagram, now + SKEW + 1), SKEW, now), 'stale');
    assert.equal(typeof b.open(ring, sealDatagram(a, ring, datagram, now - SKEW + 1), SKEW, now), 'object');
  });

  test('a replayed frame is dropped; a stale or forged one does not burn its sequence', () => {
    const { a, b, ring } = pair();
    const frame = sealDatagram(a, ring);
    const forged = Buffer.from(frame);
    forged[forged.length - 1]! ^= 1;
    assert.equal(b.open(ring, forged, SKEW), 'auth_failed');
    assert.equal(b.open(ring, frame, SKEW, Date.now() + SKEW * 10), 'stale');
    assert.equal(typeof b.open(ring, frame, SKEW), 'object');
    assert.equal(b.open(ring, frame, SKEW), 'replay');
  });

  test('our own frames reflected back are dropped', () => {
    const { a, ring } = pair();
    assert.equal(a.open(ring, sealDatagram(a, ring), SKEW), 'own_origin');
  });

  test('a frame sealed by our own role is refused: a capture from one leg cannot be replayed on the other', () => {
    const { a, b, ring } = pair();
    const otherAgent = new SecureSession(Role.Agent, { startedAtMs: 0 });
    assert.equal(otherAgent.open(ring, sealDatagram(a, ring), SKEW), 'wrong_role', 'an agent opened a frame meant for the repeater');
    const otherRepeater = new SecureSession(Role.Repeater, { startedAtMs: 0 });
    assert.equal(otherRepeater.open(ring, sealDatagram(b, ring), SKEW), 'wrong_role', 'a repeater opened a frame meant for agents');
    assert.equal(typeof a.open(ring, sealDatagram(b, ring), SKEW), 'object');
  });

  test('a frame sealed before the receiver started is refused, even within the skew and never seen', () => {
    const { a, ring } = pair();
    const now = Date.now();
    const restarted = new SecureSession(Role.Repeater, { startedAtMs: now });
    assert.equal(restarted.open(ring, sealDatagram(a, ring, datagram, now - 1), SKEW, now), 'before_start');
    assert.equal(typeof restarted.open(ring, sealDatagram(a, ring, datagram, now), SKEW, now), 'object');
  });

  test('a frame sealed for one receiver opens there alone; a gate without a name refuses it', () => {
    const { b: repeater, ring } = pair();
    const [n2, n3] = [new SecureSession(Role.Agent, { startedAtMs: 0 }), new SecureSession(Role.Agent, { startedAtMs: 0 })];
    const forN3 = repeater.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram, address: null, receiver: '127.0.0.1:3333' })!;
    assert.equal(n2.open(ring, forN3, SKEW, Date.now(), new Membership(() => '127.0.0.1:2222')), 'wrong_receiver');
    assert.equal(n2.open(ring, forN3, SKEW, Date.now(), new Membership(() => null)), 'wrong_receiver', 'an agent that has no name yet');
    assert.equal(n2.open(ring, forN3, SKEW), 'wrong_receiver', 'a gate without a name (the cluster bus)');
    const env = n3.open(ring, forN3, SKEW, Date.now(), new Membership(() => '127.0.0.1:3333'));
    assert.ok(typeof env === 'object');
    assert.equal(env.receiver, '127.0.0.1:3333');
    // A group frame names nobody and opens at every member.
    const group = sealDatagram(repeater, ring);
    for (const s of [n2, n3]) assert.equal((s.open(ring, group, SKEW, Date.now(), new Membership(() => 'x')) as { receiver: string }).receiver, '');
  });

  test('group frames of an origin sealed before its MEMBERSHIP frame said we joined are refused; the fence only rises', () => {
    const { b: repeater, ring } = pair();
    const other = new SecureSession(Role.Repeater, { startedAtMs: 0 });
    const agent = new SecureSession(Role.Agent, { startedAtMs: 0 });
    const me = new Membership(() => '127.0.0.1:2222');
    const early = sealDatagram(repeater, ring);
    const earlyNamed = repeater.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram, address: null, receiver: '127.0.0.1:2222' })!;
    const from = repeater.nextSequence;
    const m = repeater.seal(ring, { kind: EnvelopeKind.Membership, channelKey: 'ssl', datagram: null, address: null, receiver: '127.0.0.1:2222', memberFrom: from })!;
    const later = sealDatagram(repeater, ring);
    const fromOther = sealDatagram(other, ring);
    // Before the MEMBERSHIP frame nothing is known: everything opens.
    assert.equal(typeof agent.open(ring, sealDatagram(repeater, ring), SKEW, Date.now(), me), 'object');
    const env = agent.open(ring, m, SKEW, Date.now(), me);
    assert.ok(typeof env === 'object' && env.kind === EnvelopeKind.Membership);
    assert.equal(env.memberFrom, from);
    me.raise(env.origin, env.memberFrom!);
    assert.equal(agent.open(ring, early, SKEW, Date.now(), me), 'before_join');
    assert.equal(agent.open(ring, earlyNamed, SKEW, Date.now(), me), 'before_join', 'a frame for us from before we joined is old too');
    assert.equal(typeof agent.open(ring, later, SKEW, Date.now(), me), 'object');
    assert.equal(typeof agent.open(ring, fromOther, SKEW, Date.now(), me), 'object', "another origin's frames are not fenced");
    me.raise(repeater.origin, 1);
    assert.equal(me.fence(repeater.origin), from, 'a lower fence never lowers it');
    assert.equal(agent.open(ring, m, SKEW, Date.now(), me), 'replay', 'the MEMBERSHIP frame itself is judged by the replay window');
  });

  test('MEMBERSHIP frames come from a repeater, name their receiver and a channel key, and carry a sequence', () => {
    const base = { kind: EnvelopeKind.Membership, channelKey: 'ssl', sequence: 3, sentAtMs: Date.now(), datagram: null, trace: null, address: null, receiver: '127.0.0.1:2222', memberFrom: 2 };
    const decode = (f: object) => decodeEnvelope(encodeEnvelope({ ...base, role: Role.Repeater, ...f }, bigintToLong(5n)));
    assert.equal((decode({}) as { memberFrom: number }).memberFrom, 2);
    assert.equal(decode({ role: Role.Agent }), 'bad_payload');
    assert.equal(decode({ receiver: '' }), 'bad_payload');
    assert.equal(decode({ channelKey: '' }), 'bad_payload');
    assert.equal(decode({ memberFrom: undefined }), 'bad_payload');
    assert.equal(decode({ receiver: 'x'.repeat(256) }), 'bad_payload');
  });

  test('an older release reads a newer Envelope: the schema without receiver and member_from decodes it, ignoring them', async () => {
    const protobuf = (await import('protobufjs')).default;
    const { UDPREPEATER_PROTO } = await import('../src/wire/schema.js');
    const older = UDPREPEATER_PROTO.replace(/^\s*string receiver = 12;$/m, '').replace(/^\s*uint64 member_from = 13;$/m, '');
    assert.ok(!/= 12;|= 13;/.test(older.slice(older.indexOf('message Envelope'), older.indexOf('message TicketSchedule'))), 'the fields were taken out');
    const OlderEnvelope = protobuf.parse(older).root.lookupType('udprepeater.Envelope');
    const sub = { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', sequence: 1, sentAtMs: Date.now(), role: Role.Agent, datagram: null, trace: null, address: '127.0.0.1:4000', receiver: '127.0.0.1:7272' };
    const m = OlderEnvelope.decode(encodeEnvelope(sub, bigintToLong(5n))) as unknown as { kind: number; subscription: { address: string }; receiver?: string };
    assert.equal(m.kind, EnvelopeKind.Subscribe);
    assert.equal(m.subscription.address, '127.0.0.1:4000');
    assert.equal(m.receiver, undefined);
    // And this release reads an older one's: no receiver is a group frame (or, at a repeater, a subscription from an older agent).
    const fromOlder = OlderEnvelope.encode({ kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', origin: bigintToLong(5n), sequence: 2, sentAtMs: Date.now(), role: Role.Repeater, datagram }).finish();
    assert.equal((decodeEnvelope(fromOlder) as { receiver: string }).receiver, '');
  });

  test('the fence table is bounded: the origin least recently raised is forgotten first', () => {
    const me = new Membership(() => 'a');
    for (let i = 1; i <= MAX_FENCED_ORIGINS + 10; i++) me.raise(BigInt(i), i);
    assert.equal(me.origins, MAX_FENCED_ORIGINS);
    assert.equal(me.fence(1n), 0);
    assert.equal(me.fence(BigInt(MAX_FENCED_ORIGINS + 10)), MAX_FENCED_ORIGINS + 10);
    me.raise(11n, 100);
    me.raise(BigInt(MAX_FENCED_ORIGINS + 11), 1);
    assert.equal(me.fence(11n), 100, 'a raised origin moved to the back');
    assert.equal(me.fence(12n), 0);
  });

  test('subscriptions must name their address', () => {
    const { a, b, ring } = pair();
    const bare = a.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: '' })!;
    assert.equal(b.open(ring, bare, SKEW), 'bad_payload');
  });

  test('nonces never repeat and differ between processes', () => {
    const n1 = new NonceSource();
    const n2 = new NonceSource();
    const seen = new Set<string>();
    const buf = Buffer.alloc(NONCE_BYTES);
    for (const src of [n1, n2]) {
      for (let i = 0; i < 5000; i++) {
        src.next(buf, 0);
        const h = buf.toString('hex');
        assert.ok(!seen.has(h));
        seen.add(h);
      }
    }
  });

  test('a failed open leaves the raw secretbox usable (no exception, no leak of state)', () => {
    const box = new Secretbox();
    const key = new BoxKey(Buffer.alloc(32, 1));
    const nonce = Buffer.alloc(24, 2);
    const out = Buffer.alloc(16 + 5);
    box.seal(key, nonce, Buffer.from('hello'), out, 0);
    assert.equal(box.open(key, Buffer.alloc(24, 3), out), null);
    assert.deepEqual(box.open(key, nonce, out), Buffer.from('hello'));
    key.destroy();
    assert.throws(() => key.pointer, /destroyed/);
  });
});

describe('the raw secretbox path against the library', () => {
  test('known answers: the raw exports seal and open exactly as the public API does', () => {
    assert.equal(knownAnswers(), null);
  });

  test('a change of calling convention is caught before any frame is sealed', () => {
    const raw = (sodium as unknown as { libsodium: Record<string, unknown> }).libsodium;
    const real = raw['_crypto_secretbox_easy'] as (...a: number[]) => number;
    // As if a release swapped the message and nonce arguments.
    raw['_crypto_secretbox_easy'] = (c: number, m: number, lo: number, hi: number, n: number, k: number) => real(c, n, lo, hi, m, k);
    try {
      assert.match(knownAnswers() ?? 'agreed', /seal of/);
    } finally {
      raw['_crypto_secretbox_easy'] = real;
    }
    assert.equal(knownAnswers(), null);
  });

  test('the pinned versions are exact in package.json', () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as { dependencies: Record<string, string>; overrides: Record<string, string> };
    assert.match(pkg.dependencies['libsodium-wrappers']!, /^\d+\.\d+\.\d+$/);
    assert.match(pkg.overrides['libsodium']!, /^\d+\.\d+\.\d+$/);
  });
});

describe('replay window', () => {
  test('in order, duplicates, reordering within the window', () => {
    const w = new ReplayWindow();
    for (let i = 1; i <= 100; i++) assert.equal(w.accept(i), true);
    assert.equal(w.accept(100), false);
    assert.equal(w.accept(50), false);
    assert.equal(w.accept(105), true);
    assert.equal(w.accept(103), true, 'late but new, within the window');
    assert.equal(w.accept(103), false);
    assert.equal(w.accept(101), true);
  });

  test('window edges: the oldest accepted and the first refused', () => {
    const w = new ReplayWindow();
    const top = 10 * WINDOW;
    assert.equal(w.accept(top), true);
    assert.equal(w.accept(top - WINDOW + 1), true, 'just inside');
    assert.equal(w.accept(top - WINDOW), false, 'just outside');
    assert.equal(w.accept(top - WINDOW - 1000), false);
  });

  test('a large jump forgets the old window but still refuses the old numbers', () => {
    const w = new ReplayWindow();
    for (let i = 1; i < 50; i++) w.accept(i);
    assert.equal(w.accept(1_000_000), true);
    assert.equal(w.accept(1_000_000 - 1), true, 'bits were cleared by the jump');
    assert.equal(w.accept(40), false, 'too old now');
    assert.equal(w.accept(2 ** 52), true, 'huge counters work');
    assert.equal(w.accept(2 ** 52 - 31), true);
    assert.equal(w.accept(2 ** 52 - 31), false);
  });

  test('property: accepts each number at most once, and every number within the window of the newest once', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20000 }), { maxLength: 400 }), (seqs) => {
        const w = new ReplayWindow();
        const accepted = new Set<number>();
        let newest = -1;
        for (const s of seqs) {
          const ok = w.accept(s);
          if (accepted.has(s)) assert.equal(ok, false, `duplicate ${s} accepted`);
          else if (s > newest - WINDOW) assert.equal(ok, true, `new ${s} refused (newest ${newest})`);
          else assert.equal(ok, false, `${s} older than the window accepted`);
          if (ok) accepted.add(s);
          newest = Math.max(newest, s);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('key files', () => {
  test('keygen writes 32 bytes with mode 0600 and refuses to overwrite', () => {
    const file = join(keyDir, 'fresh');
    const { id } = generateKeyFile(file);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readFileSync(file).length, 32);
    assert.equal(id, keyIdOf(readFileSync(file)).toString(16).padStart(8, '0'));
    assert.throws(() => generateKeyFile(file), /already exists; refusing to overwrite/);
  });

  test('a key file group or others can read is refused, naming it', () => {
    const file = newKeyFile();
    chmodSync(file, 0o644);
    assert.throws(() => readKeyFile(file), (e: unknown) => e instanceof ConfigError && e.message.includes(file) && /mode 0644/.test(e.message));
    chmodSync(file, 0o640);
    assert.throws(() => KeyRing.load([file]), new RegExp(`key file ${file}: group or others`));
  });

  test('raw, base64 and hex key files load; anything else is refused', () => {
    const key = Buffer.alloc(32, 9);
    assert.deepEqual(Buffer.from(parseKey(key)!), key);
    assert.deepEqual(Buffer.from(parseKey(Buffer.from(key.toString('base64') + '\n'))!), key);
    assert.deepEqual(Buffer.from(parseKey(Buffer.from(key.toString('hex')))!), key);
    assert.equal(parseKey(Buffer.alloc(31)), null);
    const file = join(keyDir, 'short');
    writeFileSync(file, 'not a key\n', { mode: 0o600 });
    assert.throws(() => readKeyFile(file), new RegExp(`key file ${file}: not a 32-byte key`));
    assert.throws(() => readKeyFile(join(keyDir, 'missing')), /ENOENT/);
  });

  test('the ring: the first key seals, every key opens, duplicates are refused', () => {
    const [k1, k2] = [newKeyFile(), newKeyFile()];
    const old = KeyRing.load([k1]);
    const both = KeyRing.load([k2, k1]);
    assert.equal(both.sealing.file, k2);
    const a = new SecureSession(Role.Agent);
    const b = new SecureSession(Role.Repeater);
    assert.equal(typeof b.open(both, sealDatagram(a, old), SKEW), 'object', 'old key still opens');
    assert.equal(typeof b.open(old, sealDatagram(a, KeyRing.load([k1, k2])), SKEW), 'object');
    assert.equal(b.open(old, sealDatagram(a, both), SKEW), 'unknown_key', 'new sealing key unknown to the old ring');
    assert.throws(() => KeyRing.load([k1, k1]), /holds the same key as/);
    assert.throws(() => KeyRing.load([]), /at least one --key-file/);
  });
});

// The link handshake (src/crypto/link-keys.ts, link-responder.ts,
// link-initiator.ts; docs/PROTOCOL.md, "Identities and links"): both sides
// derive the same keys; every link, and every start, has its own; a HELLO
// replayed after a restart of either side, or to another repeater, yields
// nothing usable; a wrong static key is refused; nothing is believed before
// it is authenticated; an unauthenticated HELLO costs no DH. The cost of one
// handshake is measured and printed, not asserted.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import sodium from 'libsodium-wrappers';
import { Identity, type PeerKey } from '../src/crypto/identity.js';
import { LinkInitiator } from '../src/crypto/link-initiator.js';
import { LinkCipher, PairSecret, readHello, readWelcome, stageForLinks, writeHello, writeWelcome } from '../src/crypto/link-keys.js';
import { type Link, LinkResponder } from '../src/crypto/link-responder.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { decodeHello, decodeWelcome, encodeLinkHello, HELLO_CLEAR, HELLO_MIN, receiverLinkOf, WELCOME_BYTES } from '../src/wire/handshake.js';

before(() => sodiumReady());

const T0 = 1_800_000_000_000;
const ASK = { channelKey: 'ssl', address: '10.0.0.2:4000' };
const ident = () => Identity.fromSeed(sodium.randombytes_buf(32));
const text = (b: Uint8Array) => Buffer.from(b).toString();

/** Runs a whole handshake; returns both ends (the responder's link confirmed by the agent's first frame). */
function connect(agent: LinkInitiator, repeater: LinkResponder, now = T0): { agentSide: LinkCipher; repeaterSide: Link; hello: Uint8Array } {
  const hello = agent.hello(now, ASK);
  const answer = repeater.hello(hello, now);
  assert.equal(typeof answer, 'object', `HELLO refused: ${String(answer)}`);
  const done = agent.welcome((answer as { welcome: Uint8Array }).welcome, now);
  assert.equal(typeof done, 'object', `WELCOME refused: ${String(done)}`);
  const agentSide = (done as { cipher: LinkCipher }).cipher;
  const first = repeater.open(agentSide.seal(Buffer.from('subscribe')), now);
  assert.equal(typeof first, 'object', `first frame refused: ${String(first)}`);
  return { agentSide, repeaterSide: (first as { link: Link }).link, hello };
}

describe('the handshake', () => {
  test('both sides derive the same keys: one per direction, link ids crossed, the same transcript', () => {
    const [a, r] = [ident(), ident()];
    const { agentSide, repeaterSide } = connect(new LinkInitiator(a, r.peer), new LinkResponder(r, [a.peer]));
    const [x, y] = [agentSide.secrets, repeaterSide.cipher.secrets];
    assert.deepEqual(x.send, y.receive);
    assert.deepEqual(x.receive, y.send);
    assert.notDeepEqual(x.send, x.receive, 'one key per direction');
    assert.equal(x.localLink, y.remoteLink);
    assert.equal(x.remoteLink, y.localLink);
    assert.deepEqual(x.handshakeHash, y.handshakeHash);
    assert.equal(x.peer.text, r.publicText);
    assert.equal(y.peer.text, a.publicText);
    assert.deepEqual(repeaterSide.hello, ASK, 'what the agent asked for, read once the link is confirmed');
    assert.ok(repeaterSide.confirmed);
    // Both ways, and no reflection: a frame the agent sealed does not open as one from the repeater.
    const down = repeaterSide.cipher.seal(Buffer.from('cache update'));
    assert.equal(text((agentSide.open(down) as { plain: Uint8Array }).plain), 'cache update');
    const up = agentSide.seal(Buffer.from('up'));
    assert.equal(agentSide.open(up), 'unknown_link');
  });

  test('the receiver link id an agent reads off a WELCOME and off the frames to it is its own link id (several repeaters on one host are told apart by it)', () => {
    const [a, r] = [ident(), ident()];
    const init = new LinkInitiator(a, r.peer);
    const responder = new LinkResponder(r, [a.peer]);
    const hello = init.hello(T0, ASK);
    const pending = init.pendingLink;
    assert.notEqual(pending, 0);
    const { welcome } = responder.hello(hello, T0) as { welcome: Uint8Array };
    assert.equal(receiverLinkOf(welcome), pending);
    const { cipher } = init.welcome(welcome, T0) as { cipher: LinkCipher };
    assert.equal(init.pendingLink, 0, 'the handshake is no longer pending');
    const link = (responder.open(cipher.seal(Buffer.from('subscribe')), T0) as { link: Link }).link;
    assert.equal(receiverLinkOf(link.cipher.seal(Buffer.from('update'))), cipher.secrets.localLink);
    assert.equal(receiverLinkOf(hello), null, 'a HELLO is addressed to no link');
    assert.equal(receiverLinkOf(Buffer.from('ur\x03\x03ab')), null, 'too short');
  });

  test('sizes: a HELLO is 128 bytes or more, a WELCOME 84, never more than the HELLO it answers', () => {
    const [a, r] = [ident(), ident()];
    const agent = new LinkInitiator(a, r.peer);
    const hello = agent.hello(T0, { channelKey: 'k', address: '1.2.3.4:5' });
    assert.equal(hello.length, HELLO_MIN);
    const answer = new LinkResponder(r, [a.peer]).hello(hello, T0) as { welcome: Uint8Array };
    assert.equal(answer.welcome.length, WELCOME_BYTES);
    assert.ok(answer.welcome.length <= hello.length);
  });

  test('frames are bound to their link: a frame sealed on link A does not open on link B, even with B\'s id written in', () => {
    const [a, b, r] = [ident(), ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer, b.peer]);
    const A = connect(new LinkInitiator(a, r.peer), repeater);
    const B = connect(new LinkInitiator(b, r.peer), repeater);
    assert.notDeepEqual(A.agentSide.secrets.receive, B.agentSide.secrets.receive);
    // Repeater to agent: captured on A's link, sent to B's agent.
    const toA = A.repeaterSide.cipher.seal(Buffer.from('for node A'));
    assert.equal(B.agentSide.open(toA), 'unknown_link');
    const relabelled = Uint8Array.from(toA);
    new DataView(relabelled.buffer).setUint32(4, B.agentSide.secrets.localLink, true);
    assert.equal(B.agentSide.open(relabelled), 'auth_failed');
    // Agent to repeater: A's frame with B's link id.
    const fromA = A.agentSide.seal(Buffer.from('from A'));
    const asB = Uint8Array.from(fromA);
    new DataView(asB.buffer).setUint32(4, B.agentSide.secrets.remoteLink, true);
    assert.equal(repeater.open(asB, T0), 'auth_failed');
    assert.equal(text((repeater.open(fromA, T0) as { plain: Uint8Array }).plain), 'from A');
    // The header is authenticated (it is the nonce) and a frame opens once.
    const again = A.repeaterSide.cipher.seal(Buffer.from('x'));
    const bumped = Uint8Array.from(again);
    bumped[8]! ^= 1;
    assert.equal(A.agentSide.open(bumped), 'auth_failed');
    assert.equal(typeof A.agentSide.open(again), 'object');
    assert.equal(A.agentSide.open(again), 'replay');
  });

  test('one plaintext staged once and sealed for several links: each frame opens on its own link only, with the counters of that link', () => {
    const [a, b, r] = [ident(), ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer, b.peer]);
    const A = connect(new LinkInitiator(a, r.peer), repeater);
    const B = connect(new LinkInitiator(b, r.peer), repeater);
    const plain = Buffer.from('one datagram for every linked member, 2^32 + 5 counters apart'.repeat(4));
    // Past 2^32 on A's counter: the header's high word is written too.
    (A.repeaterSide.cipher as unknown as { counter: number }).counter = 2 ** 32 + 4;
    const staged = stageForLinks(plain);
    const toA = A.repeaterSide.cipher.sealStaged(staged);
    const toB = B.repeaterSide.cipher.sealStaged(staged);
    assert.equal(new DataView(toA.buffer, toA.byteOffset).getBigUint64(8, true), 2n ** 32n + 5n);
    assert.deepEqual(Buffer.from((A.agentSide.open(toA) as { plain: Uint8Array }).plain), plain);
    assert.deepEqual(Buffer.from((B.agentSide.open(toB) as { plain: Uint8Array }).plain), plain);
    assert.equal(B.agentSide.open(toA), 'unknown_link');
    // A seal in between takes the scratch: the earlier stage is refused, never sealed as whatever the scratch holds now.
    const earlier = stageForLinks(plain);
    const between = A.repeaterSide.cipher.seal(Buffer.from('in between'));
    assert.throws(() => B.repeaterSide.cipher.sealStaged(earlier), /replaced before it was sealed/);
    assert.equal(text((A.agentSide.open(between) as { plain: Uint8Array }).plain), 'in between');
  });

  test('a HELLO replayed to the same repeater does nothing; after the repeater restarts it yields a link nobody can use', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    const first = connect(new LinkInitiator(a, r.peer), repeater);
    const captured = first.agentSide.seal(Buffer.from('captured on the first link'));
    assert.equal(repeater.hello(first.hello, T0 + 1000), 'replay');
    assert.equal(repeater.linkOf(a.peer), first.repeaterSide, 'the established link is untouched');

    // The repeater restarts (same identity, nothing remembered): the replay is answered once...
    const restarted = new LinkResponder(r, [a.peer]);
    const answer = restarted.hello(first.hello, T0 + 1000);
    assert.equal(typeof answer, 'object');
    const pending = (answer as { pending: Link }).pending;
    assert.equal(pending.confirmed, false);
    // ...with keys unlike the first link's (a fresh ephemeral), under which nothing captured opens,
    assert.notDeepEqual(pending.cipher.secrets.receive, first.repeaterSide.cipher.secrets.receive);
    assert.equal(restarted.open(captured, T0 + 1000), 'unknown_link');
    const relabelled = Uint8Array.from(captured);
    new DataView(relabelled.buffer).setUint32(4, pending.cipher.secrets.localLink, true);
    assert.equal(restarted.open(relabelled, T0 + 1000), 'auth_failed');
    assert.equal(pending.confirmed, false, 'still nobody believed');
    assert.equal(restarted.linkOf(a.peer), null);
    // ...and never a second time.
    assert.equal(restarted.hello(first.hello, T0 + 1001), 'replay');
    // The WELCOME it sent opens for nobody: the agent that sent that HELLO has moved on (here: a new handshake).
    const agentNow = new LinkInitiator(a, r.peer);
    agentNow.hello(T0 + 1000, ASK);
    assert.equal(agentNow.welcome((answer as { welcome: Uint8Array }).welcome, T0 + 1000), 'unknown_link');
    // The unconfirmed entry is forgotten.
    assert.equal(restarted.expire(T0 + 1000 + 10_001), 1);
    assert.equal(restarted.links, 0);
  });

  test('after the agent restarts: its old HELLO is refused and its old frames do not open on its new link', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    const before = connect(new LinkInitiator(a, r.peer), repeater, T0);
    const oldFrame = before.agentSide.seal(Buffer.from('before the restart'));
    const after = connect(new LinkInitiator(a, r.peer), repeater, T0 + 5000);
    assert.equal(repeater.linkOf(a.peer), after.repeaterSide, 'the confirmed new link replaced the old');
    assert.equal(repeater.open(oldFrame, T0 + 5000), 'unknown_link', 'the old link is gone');
    assert.equal(repeater.hello(before.hello, T0 + 5000), 'replay');
    const down = before.repeaterSide.cipher.seal(Buffer.from('old key'));
    assert.notEqual(typeof after.agentSide.open(down), 'object');
  });

  test('a new HELLO never displaces a working link until its own link is confirmed', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    const live = connect(new LinkInitiator(a, r.peer), repeater);
    // The same agent (or whoever holds its key) starts another handshake and never finishes it.
    const other = new LinkInitiator(a, r.peer);
    assert.equal(typeof repeater.hello(other.hello(T0 + 2000, ASK), T0 + 2000), 'object');
    assert.equal(repeater.linkOf(a.peer), live.repeaterSide);
    assert.equal(text((repeater.open(live.agentSide.seal(Buffer.from('still here')), T0 + 2000) as { plain: Uint8Array }).plain), 'still here');
  });

  test('a HELLO for another repeater, or from an identity not listed, is refused before any DH', () => {
    const [a, r, r2, stranger] = [ident(), ident(), ident(), ident()];
    const hello = new LinkInitiator(a, r.peer).hello(T0, ASK);
    // Another repeater that also trusts the agent: the mac is keyed by the pair's static secret.
    assert.equal(new LinkResponder(r2, [a.peer]).hello(hello, T0), 'auth_failed');
    // A repeater that does not list the agent.
    assert.equal(new LinkResponder(r, [stranger.peer]).hello(hello, T0), 'unknown_peer');
  });

  test('a wrong static key is refused on either side', () => {
    const [a, r, impostor] = [ident(), ident(), ident()];
    // Someone who knows the agent's public key (and so its id) but holds another secret.
    const forged = forgeAs(impostor, a.peer, r.peer);
    assert.equal(new LinkResponder(r, [a.peer]).hello(forged, T0), 'auth_failed');
    // An agent whose peers file has the wrong key for this repeater.
    assert.equal(new LinkResponder(r, [a.peer]).hello(new LinkInitiator(a, impostor.peer).hello(T0, ASK), T0), 'auth_failed');
    // A repeater impostor (its own identity, listing the agent) answering a HELLO meant for the real one:
    // the agent's pending handshake is with r; the WELCOME, with the same link ids, fails.
    const fixed = () => 0x01020304;
    const toReal = new LinkInitiator(a, r.peer, 5000, fixed);
    toReal.hello(T0, ASK);
    const toImpostor = new LinkInitiator(a, impostor.peer, 5000, fixed);
    const answer = new LinkResponder(impostor, [a.peer]).hello(toImpostor.hello(T0, ASK), T0) as { welcome: Uint8Array };
    assert.equal(decodeWelcome(answer.welcome).constructor, Object);
    assert.equal(toReal.welcome(answer.welcome, T0), 'auth_failed');
    // Even with a valid mac (an insider holding the pair's mac key but not the repeater's secret), the WELCOME does not open.
    const pair = PairSecret.of(a, r.peer, true)!;
    const { pending } = writeHello(pair, a, { initiatorLink: 7, timestampMs: T0, payload: encodeLinkHello(ASK) });
    const w = Uint8Array.from(answer.welcome);
    new DataView(w.buffer).setUint32(4, 7, true);
    w.set(pair.mac(w.subarray(0, w.length - 16)), w.length - 16);
    assert.equal(readWelcome(pending, a, decodeWelcome(w) as never), 'auth_failed');
  });

  test('time and rate: stale HELLOs, a WELCOME too late or twice, a flood from one identity', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    assert.equal(repeater.hello(new LinkInitiator(a, r.peer).hello(T0 - 30_001, ASK), T0), 'stale');
    assert.equal(repeater.hello(new LinkInitiator(a, r.peer).hello(T0 + 30_001, ASK), T0), 'stale');
    const agent = new LinkInitiator(a, r.peer);
    const answer = repeater.hello(agent.hello(T0, ASK), T0) as { welcome: Uint8Array };
    assert.equal(agent.welcome(answer.welcome, T0 + 5001), 'stale');
    const again = new LinkInitiator(a, r.peer);
    const w2 = (repeater.hello(again.hello(T0 + 1, ASK), T0 + 1) as { welcome: Uint8Array }).welcome;
    assert.equal(typeof again.welcome(w2, T0 + 1), 'object');
    assert.equal(again.welcome(w2, T0 + 1), 'unknown_link', 'a WELCOME completes one handshake once');
    // Only the latest HELLO: the answer to an earlier one finds nothing.
    const twice = new LinkInitiator(a, r.peer);
    const firstAnswer = (repeater.hello(twice.hello(T0 + 2, ASK), T0 + 2) as { welcome: Uint8Array }).welcome;
    twice.hello(T0 + 3, ASK);
    assert.equal(twice.welcome(firstAnswer, T0 + 3), 'unknown_link');
    // Fresh HELLOs from one identity (each with a later timestamp): a burst, then one a second.
    const flood = new LinkResponder(r, [a.peer]);
    const sender = new LinkInitiator(a, r.peer);
    const verdicts = Array.from({ length: 10 }, (_, i) => flood.hello(sender.hello(T0 + i, ASK), T0 + i));
    assert.deepEqual(
      verdicts.map((v) => (typeof v === 'string' ? v : 'ok')),
      ['ok', 'ok', 'ok', 'ok', ...Array(6).fill('rate_limited')],
    );
    assert.equal(typeof flood.hello(sender.hello(T0 + 1100, ASK), T0 + 1100), 'object', 'a token again after a second');
  });

  test('revoking a peer drops its links at once; its frames and HELLOs are refused as revoked', () => {
    const [a, b, r] = [ident(), ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer, b.peer]);
    const A = connect(new LinkInitiator(a, r.peer), repeater);
    const B = connect(new LinkInitiator(b, r.peer), repeater);
    const dropped = repeater.setPeers([b.peer], T0);
    assert.deepEqual(dropped.map((l) => l.peer.text), [a.publicText]);
    assert.deepEqual(dropped[0]!.cipher.secrets.receive, new Uint8Array(32), 'its keys are zeroed');
    assert.equal(repeater.open(A.agentSide.seal(Buffer.from('after revocation')), T0), 'revoked');
    assert.equal(repeater.hello(new LinkInitiator(a, r.peer).hello(T0 + 10, ASK), T0 + 10), 'revoked');
    // Counted as revoked for a while, then as unknown.
    assert.equal(repeater.open(A.agentSide.seal(Buffer.from('much later')), T0 + 10 * 60_000 + 1), 'unknown_link');
    assert.equal(repeater.hello(new LinkInitiator(a, r.peer).hello(T0 + 10 * 60_000 + 1, ASK), T0 + 10 * 60_000 + 1), 'unknown_peer');
    // Listed again: trusted again, with a new handshake.
    repeater.setPeers([a.peer, b.peer], T0 + 20);
    connect(new LinkInitiator(a, r.peer), repeater, T0 + 20);
    assert.equal(repeater.linkOf(b.peer), B.repeaterSide, 'the others keep theirs');
    assert.equal(typeof repeater.open(B.agentSide.seal(Buffer.from('b')), T0), 'object');
  });

  test('hostile bytes never throw and never create a link', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    const agent = new LinkInitiator(a, r.peer);
    const hello = agent.hello(T0, ASK);
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 1200 }), fc.tuple(fc.nat(hello.length - 1), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
        const m = Uint8Array.from(hello);
        m[i]! ^= x;
        return m;
      })), (bytes) => {
        const v = repeater.hello(bytes, T0);
        assert.equal(typeof v, 'string');
        assert.equal(typeof repeater.open(bytes, T0), 'string');
        assert.equal(typeof agent.welcome(bytes, T0), 'string');
      }),
      { numRuns: 400 },
    );
    assert.equal(repeater.links, 0);
  });
});

describe('the key schedule', () => {
  const cat = (...p: Uint8Array[]) => Buffer.concat(p);
  const H = (...p: Uint8Array[]) => sodium.crypto_generichash(32, cat(...p), null);
  const B = (k: Uint8Array, ...p: Uint8Array[]) => sodium.crypto_generichash(32, cat(...p), k);
  const KDF = (ck: Uint8Array, x: Uint8Array) => {
    const t = B(ck, x);
    const o1 = B(t, Uint8Array.of(1));
    return [o1, B(t, o1, Uint8Array.of(2))] as const;
  };
  const DH = (s: Uint8Array, p: Uint8Array) => sodium.crypto_scalarmult(s, p);

  test('is the one docs/PROTOCOL.md writes down: derived again here from its formulas, from the wire bytes', () => {
    const [a, r] = [ident(), ident()];
    const ei = sodium.crypto_kx_keypair();
    const er = sodium.crypto_kx_keypair();
    const [eiSecret, erSecret] = [Uint8Array.from(ei.privateKey), Uint8Array.from(er.privateKey)];
    const { hello, pending } = writeHello(PairSecret.of(a, r.peer, true)!, a, { initiatorLink: 11, timestampMs: T0, payload: encodeLinkHello(ASK) }, ei);
    const read = readHello(PairSecret.of(r, a.peer, false)!, r, decodeHello(hello) as never);
    const { welcome, secrets: rs } = writeWelcome(read as never, { responderLink: 22, nowMs: T0 }, er) as { welcome: Uint8Array; secrets: { send: Uint8Array; receive: Uint8Array; handshakeHash: Uint8Array } };
    const as = readWelcome(pending, a, decodeWelcome(welcome) as never) as { secrets: { send: Uint8Array; receive: Uint8Array } };

    // The document's formulas, with the static secrets only as DH inputs (s_i = a, s_r = r).
    const [Si, Sr] = [a.peer.dhPublic, r.peer.dhPublic];
    const ck0 = H(Buffer.from('udprepeater link v1'));
    const h0 = H(ck0, Si, Sr);
    const h1 = H(h0, hello.subarray(0, 56));
    const es = DH(eiSecret, Sr);
    const ss = a.dh(Sr);
    const [ck1, k1] = KDF(ck0, cat(es, ss, h1));
    const sealed1 = hello.subarray(56, hello.length - 16);
    assert.deepEqual(Buffer.from(sodium.crypto_secretbox_open_easy(sealed1, new Uint8Array(24), k1)), Buffer.from(encodeLinkHello(ASK)));
    const h2 = H(h1, sealed1);
    const macKey = B(ss, Buffer.from('udprepeater link v1 mac'), Si, Sr);
    assert.deepEqual(sodium.crypto_generichash(16, hello.subarray(0, hello.length - 16), macKey), hello.subarray(hello.length - 16));
    const h3 = H(h2, welcome.subarray(0, 44));
    const ee = DH(erSecret, ei.publicKey);
    const se = DH(erSecret, Si);
    assert.deepEqual(ee, DH(eiSecret, welcome.subarray(12, 44)), 'ee is the same from both ephemerals');
    const [ck2, k2] = KDF(ck1, cat(ee, se, h3));
    const sealed2 = welcome.subarray(44, 68);
    assert.equal(Buffer.from(sodium.crypto_secretbox_open_easy(sealed2, new Uint8Array(24), k2)).readBigUInt64LE(0), BigInt(T0));
    const h4 = H(h3, sealed2);
    assert.deepEqual(sodium.crypto_generichash(16, welcome.subarray(0, 68), macKey), welcome.subarray(68));
    const [kir, kri] = KDF(ck2, h4);
    assert.deepEqual(rs.handshakeHash, h4);
    assert.deepEqual([as.secrets.send, as.secrets.receive], [kir, kri]);
    assert.deepEqual([rs.receive, rs.send], [kir, kri]);
  });

  test('the example in docs/PROTOCOL.md: fixed seeds give the bytes and keys written there', () => {
    const a = Identity.fromSeed(new Uint8Array(32).fill(1));
    const r = Identity.fromSeed(new Uint8Array(32).fill(2));
    const ei = sodium.crypto_kx_seed_keypair(new Uint8Array(32).fill(3));
    const er = sodium.crypto_kx_seed_keypair(new Uint8Array(32).fill(4));
    const T = 1796667395015;
    const { hello, pending } = writeHello(PairSecret.of(a, r.peer, true)!, a, { initiatorLink: 0x11223344, timestampMs: T, payload: encodeLinkHello({ channelKey: 'ssl', address: '10.0.0.2:51300' }) }, ei);
    const read = readHello(PairSecret.of(r, a.peer, false)!, r, decodeHello(hello) as never);
    const { welcome } = writeWelcome(read as never, { responderLink: 0x55667788, nowMs: T + 3 }, er) as { welcome: Uint8Array };
    const done = readWelcome(pending, a, decodeWelcome(welcome) as never) as { secrets: { send: Uint8Array; receive: Uint8Array } };
    const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
    assert.equal(a.publicText, 'urid1rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5od37nz6u');
    assert.equal(r.publicText, 'urid1qe4xodvipulv6vvdkrtmgtd6ztfy3curwtxdpis56yhvxd6jwokah2ruwy');
    assert.equal(hex(hello.subarray(0, 16)), '7572030144332211532421a5836d7d3a');
    assert.equal(hex(hello.subarray(112)), 'fa72a1c01cea8c6045921f9e7ab4ae67');
    assert.equal(hex(welcome.subarray(0, 16)), '7572030244332211887766555fd61ddf');
    assert.equal(hex(welcome.subarray(68)), '78be0bafc5827405c0e76ec3161e4746');
    assert.equal(hex(done.secrets.send), '34d96cc221227a4a2489fe8c7fb072bf9b3f308691ab979d3e24ce45d6e74bf2');
    assert.equal(hex(done.secrets.receive), '379b39c26be0f33423d508517e6ed57c797a1f842060aa5c56c57949752445cb');
  });

  test('forward secrecy: both stolen static keys and the recorded handshake do not open the recorded frames', () => {
    const [a, r] = [ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer]);
    const agent = new LinkInitiator(a, r.peer);
    const hello = agent.hello(T0, ASK);
    const { welcome } = repeater.hello(hello, T0) as { welcome: Uint8Array };
    const link = (agent.welcome(welcome, T0) as { cipher: LinkCipher }).cipher;
    const recorded = link.seal(Buffer.from('a TLS session secret'));
    // The thief holds a's and r's identities (their static secrets) and the recorded bytes.
    // Every DH it can compute: ss, es (r, E_i), se (a, E_r); never ee (both ephemeral secrets are gone).
    const Ei = hello.subarray(16, 48);
    const Er = welcome.subarray(12, 44);
    const computable = [a.dh(r.peer.dhPublic), r.dh(Ei), a.dh(Er), new Uint8Array(32)];
    const read = readHello(PairSecret.of(r, a.peer, false)!, r, decodeHello(hello) as never);
    assert.equal(typeof read, 'object', 'the HELLO payload is readable with the repeater\'s static key (documented)');
    const { ck1, h2 } = read as { ck1: Uint8Array; h2: Uint8Array };
    const h3 = H(h2, welcome.subarray(0, 44));
    // Whatever it mixes in where the schedule has ee and se (two, one or none of what it can compute):
    const guesses = [...computable.flatMap((x) => computable.map((y) => [x, y])), ...computable.map((x) => [x]), []];
    for (const guess of guesses) {
      const [ck2] = KDF(ck1, cat(...guess, h3));
      const [kir] = KDF(ck2, H(h3, welcome.subarray(44, 68)));
      assert.throws(() => sodium.crypto_secretbox_open_easy(recorded.subarray(16), Buffer.concat([recorded.subarray(0, 16), Buffer.alloc(8)]), kir));
    }
    // The responder run again with the stolen key answers with a fresh ephemeral: other keys.
    const rerun = writeWelcome(readHello(PairSecret.of(r, a.peer, false)!, r, decodeHello(hello) as never) as never, { responderLink: 1, nowMs: T0 }) as { secrets: { receive: Uint8Array } };
    assert.throws(() => sodium.crypto_secretbox_open_easy(recorded.subarray(16), Buffer.concat([recorded.subarray(0, 16), Buffer.alloc(8)]), rerun.secrets.receive));
  });
});

/** A HELLO naming `victim`'s identity id, built by someone holding only `holder`'s secret. */
function forgeAs(holder: Identity, victim: PeerKey, repeater: PeerKey): Uint8Array {
  const pair = PairSecret.of(holder, repeater, true)!;
  const { hello } = writeHello(pair, holder, { initiatorLink: 9, timestampMs: T0, payload: encodeLinkHello(ASK) });
  const forged = Uint8Array.from(hello);
  forged.set(victim.id, 8);
  forged.set(pair.mac(forged.subarray(0, forged.length - 16)), forged.length - 16);
  return forged;
}

describe('cost', () => {
  test('one handshake, and one refused HELLO (printed, not asserted)', (t) => {
    const [a, r, other] = [ident(), ident(), ident()];
    const repeater = new LinkResponder(r, [a.peer], { peerBurst: 1e9, globalBurst: 1e9 });
    const agent = new LinkInitiator(a, r.peer);
    const N = 40;
    let agentNs = 0n;
    let repeaterNs = 0n;
    for (let i = 0; i < N; i++) {
      const t0 = process.hrtime.bigint();
      const hello = agent.hello(T0 + i, ASK);
      const t1 = process.hrtime.bigint();
      const answer = repeater.hello(hello, T0 + i) as { welcome: Uint8Array };
      const t2 = process.hrtime.bigint();
      assert.equal(typeof agent.welcome(answer.welcome, T0 + i), 'object');
      const t3 = process.hrtime.bigint();
      agentNs += t1 - t0 + (t3 - t2);
      repeaterNs += t2 - t1;
    }
    // Refused before any DH: a well-formed HELLO naming a listed identity with a wrong mac.
    const forged = new LinkInitiator(other, r.peer).hello(T0, ASK);
    forged.set(a.peer.id, 8);
    const M = 2000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < M; i++) assert.equal(repeater.hello(forged, T0), 'auth_failed');
    const refusedNs = process.hrtime.bigint() - t0;
    const us = (ns: bigint, k: number) => (Number(ns) / k / 1000).toFixed(0);
    t.diagnostic(`handshake: agent ${us(agentNs, N)} us (HELLO + WELCOME), repeater ${us(repeaterNs, N)} us per HELLO answered; a HELLO refused by its mac: ${(Number(refusedNs) / M / 1000).toFixed(1)} us`);
    assert.equal(HELLO_CLEAR, 56);
    assert.ok(decodeHello(forged));
  });
});

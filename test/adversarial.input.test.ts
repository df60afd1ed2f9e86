// Hostile input: random and mutated datagrams (cache updates, subscriptions,
// sealed frames) at plain and sealed listeners. Nothing may escape, every
// datagram that arrives must be accounted for (forwarded, one drop reason, or
// an accepted subscription), and valid traffic between the garbage must keep
// flowing, in order. The stream is seeded: ADVERSARIAL_SEED reproduces it.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { parseEndpoint } from '../src/wire/address.js';
import { inspectCacheUpdate,
  newShape, decodeCacheUpdate, encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { decodeEnvelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { frameKeyId } from '../src/wire/frame.js';
import { encodePacket } from '../src/wire/uwsgi.js';
import { decodeSubscription, encodeSubscription } from '../src/wire/subscription.js';
import { nativeStatus } from '../src/net/native.js';
import {
  accountingProblems,
  EscapeTrap,
  type Ledger,
  ledgerFromMetrics,
  ledgerOf,
  mutate,
  mutationArb,
  nonZero,
  plainOutput,
  scrape,
  SEED,
} from './helpers/adversarial.js';
import { Daemon } from './helpers/daemon.js';
import { newKeyFile } from './helpers/keys.js';
import { freePort, Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import type { } from './helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);


const trap = new EscapeTrap();
before(() => sodiumReady());
const set = (k: string, v = 'v') => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);

console.log(`adversarial seed ${SEED} (set ADVERSARIAL_SEED to reproduce or vary)`);

describe('codecs on hostile bytes (fast-check)', () => {
  test('decoders never throw, the hot-path classifier agrees with the decoder and with an independent reading of PROTOCOL.md', async () => {
    await sodiumReady();
    const raw = (m2: number, ...parts: Buffer[]) => encodePacket(111, m2, Buffer.concat(parts));
    const u16 = (n: number) => Buffer.from([n & 0xff, n >> 8]);
    const k = Buffer.from('sess1');
    const templates = [
      encodeCacheSet(k, Buffer.from('hello'), 1795213916),
      encodeCacheDelete(k, false),
      encodeCacheDelete(k, true),
      encodeSubscription({ key: 'ssl', address: '127.0.0.1:4141' }),
      encodeSubscription({ key: 'ssl', address: '[::1]:4141', unsubscribe: true }),
      // The edges: 20 and 21 digits of expires, an empty expires block, none, a non-digit,
      // a delete padded with 00 01, with one stray byte, an empty key.
      raw(10, u16(5), k, u16(1), Buffer.from('v'), u16(20), Buffer.from('9'.repeat(20))),
      raw(10, u16(5), k, u16(1), Buffer.from('v'), u16(21), Buffer.from('9'.repeat(21))),
      raw(10, u16(5), k, u16(1), Buffer.from('v'), u16(0)),
      raw(10, u16(5), k, u16(1), Buffer.from('v')),
      raw(10, u16(5), k, u16(1), Buffer.from('v'), u16(2), Buffer.from('1x')),
      raw(11, u16(5), k, Buffer.from([0, 1])),
      raw(11, u16(5), k, Buffer.from([0])),
      raw(10, u16(0), u16(1), Buffer.from('v')),
    ];
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
      fc.tuple(fc.nat(), fc.array(mutationArb, { maxLength: 4 }), fc.boolean()).map(([i, ops, fix]) => mutate(templates[i % templates.length]!, ops, templates, fix)),
    );
    const ring = KeyRing.load([newKeyFile()]);
    const session = new SecureSession(Role.Agent);
    fc.assert(
      fc.property(bytes, (b) => {
        const verdict = inspectCacheUpdate(b, newShape());
        // The oracle (test/helpers/adversarial.ts) is written from the protocol, not from src/wire.
        assert.equal(verdict === undefined, plainOutput(b, 65535) !== null, `inspect says ${verdict ?? 'valid'} for ${b.toString('hex')}`);
        decodeCacheUpdate(b);
        decodeSubscription(b);
        frameKeyId(b);
        decodeEnvelope(b);
        const env = session.open(ring, b, 30_000);
        assert.equal(typeof env, 'string', 'random bytes opened as a frame');
      }),
      { seed: SEED, numRuns: 20_000 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 80 }), fc.ipV6().map((ip) => `[${ip}]:${ip.length}`), fc.ipV4Extended().map((ip) => `${ip}:80`), fc.webAuthority()), (s) => {
        parseEndpoint(s);
        parseEndpoint(s, true);
      }),
      { seed: SEED, numRuns: 10_000 },
    );
    ring.destroy();
  });
});

describe('accounting, case by case', () => {
  test('an unsubscribe naming an address that is not subscribed (or a static output) is counted', async () => {
    const ref = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--to', ref.address]);
    await sender.send(encodeSubscription({ key: 'ssl', address: '127.0.0.1:9', unsubscribe: true }), r.port());
    await sender.send(encodeSubscription({ key: 'ssl', address: ref.address, unsubscribe: true }), r.port());
    await sender.send(set('marker'), r.port());
    assert.deepEqual(await ref.waitFor(1), [set('marker')]);
    const ch = [...r.handle.repeater.channels.values()][0]!;
    assert.deepEqual(accountingProblems('channel', 3, 1, ledgerOf(ch.stats)), []);
  });

  test('a sealed subscription is counted once in received{kind}', async () => {
    const key = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', key]);
    const ring = KeyRing.load([key]);
    const node = await receiver();
    await sender.send(new SecureSession(Role.Agent).seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: node.address })!, r.port());
    await r.tap.waitFor('subscribed', { address: node.address });
    const l = ledgerOf([...r.handle.repeater.channels.values()][0]!.stats);
    assert.equal(l.received, 1, `one datagram arrived, received counters say ${JSON.stringify(nonZero(l.receivedByKind))}`);
    ring.destroy();
  });

  test('a datagram too large to seal, delivered to the plain subscribers of its channel, is not also counted as a drop', async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const [pp, sp] = [await freePort(), await freePort()];
    const plainRx = await receiver();
    const sealedRx = await receiver();
    const r = await repeater(['--listen', `127.0.0.1:${pp},channel=mix`, '--listen-sealed', `127.0.0.1:${sp},channel=mix`, '--key-file', key, '--to', plainRx.address]);
    await sender.send(new SecureSession(Role.Agent).seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: sealedRx.address })!, sp);
    await r.tap.waitFor('subscribed', { address: sealedRx.address });
    // 65507 bytes: the largest IPv4 UDP payload; sealed, it would not fit.
    const big = encodeCacheSet(Buffer.from('k'), Buffer.alloc(65507 - 12, 1), 0);
    assert.equal(big.length, 65507);
    await sender.send(big, pp);
    await sender.send(set('marker'), pp);
    assert.deepEqual((await plainRx.waitFor(2)).map((b) => b.length), [65507, set('marker').length]);
    await sealedRx.waitFor(1);
    const st = r.handle.repeater.channels.get('mix')!.stats;
    const l = ledgerOf(st);
    console.log(`too-large-to-seal: dropped ${JSON.stringify(nonZero(l.dropped))}, forwarded copies ${l.forwardedCopies}`);
    // 2 plain datagrams arrived, both forwarded; the subscription frame is accounted as control.
    assert.equal(l.inputDrops, 0, `a forwarded datagram was also counted as dropped: ${JSON.stringify(nonZero(l.dropped))}`);
    ring.destroy();
  });

  test('the largest valid unpadded delete is delivered (repaired) or counted as a dropped copy, never counted as forwarded and lost', async () => {
    const ref = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--to', ref.address]);
    await largestDelete(r.port(), ref, async () => {
      const l = ledgerOf([...r.handle.repeater.channels.values()][0]!.stats);
      return l;
    }, `in-process (${nativeStatus === 'loaded' ? 'native path' : 'node:dgram path'})`);
  });

  test('the same with the real binary on the node:dgram path (UDPREPEATER_NATIVE=0)', async () => {
    const ref = await receiver();
    const port = await freePort();
    const d = Daemon.spawn(['serve', '--log-format', 'json', '--listen', `127.0.0.1:${port}`, '--to', ref.address, '--metrics', '127.0.0.1:0'], { UDPREPEATER_NATIVE: '0' });
    scope.track({ close: () => d.stop() });
    await d.log.waitFor('udprepeater started');
    const mport = await d.metricsPort();
    await largestDelete(port, ref, async () => ledgerFromMetrics(await scrape(mport), `127.0.0.1:${port}`), 'real binary, node:dgram path');
  });
});

/** Sends the largest valid unpadded delete, then a marker; checks what was delivered against what was counted. */
async function largestDelete(port: number, ref: Receiver, ledger: () => Promise<Ledger>, label: string): Promise<void> {
  // 65507 bytes on the wire; its padded form would be 65509, over the UDP limit.
  const del = encodeCacheDelete(Buffer.alloc(65507 - 6, 0x61), false);
  await sender.send(del, port);
  await sender.send(set('marker'), port);
  const first = await ref.next();
  const delivered = first.length > 1000 ? 1 : 0;
  if (delivered === 0) assert.deepEqual(first, set('marker'));
  else assert.deepEqual(await ref.next(), set('marker'));
  const l = await ledger();
  const copyDrops = (l.dropped['queue_full'] ?? 0) + (l.dropped['send_error'] ?? 0);
  console.log(`${label}: largest delete delivered ${delivered}, forwarded copies counted ${l.forwardedCopies}, dropped ${JSON.stringify(nonZero(l.dropped))}`);
  assert.equal(l.forwardedCopies, 1 + delivered, `${label}: forwarded_total counts ${l.forwardedCopies} copies; the subscriber got ${1 + delivered}`);
  assert.equal(delivered + copyDrops + l.inputDrops, 1, `${label}: the delete is neither delivered nor counted as dropped`);
}

describe('authenticated garbage must not kill anything', () => {
  // A key holder can send any Envelope. protobufjs leaves an absent message
  // field as null (from the prototype), not undefined.
  const bare = (kind: EnvelopeKind, ring: KeyRing) => new SecureSession(Role.Agent).seal(ring, { kind, channelKey: 'ssl', datagram: null, address: null })!;

  test('a sealed Subscribe/Unsubscribe without its subscription field is dropped (in-process)', async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const ref = await receiver();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', key, '--to', `${ref.address},sealed`]);
    const before = trap.errors.length;
    await sender.send(bare(EnvelopeKind.Subscribe, ring), r.port());
    await sender.send(bare(EnvelopeKind.Unsubscribe, ring), r.port());
    await sender.send(new SecureSession(Role.Agent).seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('marker'), address: null })!, r.port());
    const markerCame = await ref.waitFor(1, 2000).then(
      () => true,
      () => false,
    );
    const escaped = trap.errors.splice(before);
    assert.deepEqual(escaped, [], 'an exception escaped the datagram path');
    assert.ok(markerCame, 'the valid frame sent after them was lost');
    assert.equal(ledgerOf([...r.handle.repeater.channels.values()][0]!.stats).dropped['bad_payload'], 2);
    ring.destroy();
  });

  test('the real repeater and agent survive it', async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const ref = await receiver();
    const port = await freePort();
    const d = await Daemon.serve(['--listen-sealed', `127.0.0.1:${port}`, '--key-file', key, '--to', `${ref.address},sealed`, '--metrics', 'off']);
    scope.track({ close: () => d.stop() });
    const [agentPort, local] = [await freePort(), await freePort()];
    const node = await receiver();
    const a = Daemon.spawn(['agent', '--log-format', 'json', '--repeater', `127.0.0.1:${port}`, '--bind', `127.0.0.1:${agentPort}`, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--key-file', key]);
    scope.track({ close: () => a.stop() });
    await a.log.waitFor('udprepeater agent running');
    const died = (who: string, dd: Daemon) =>
      dd.exited.then(({ code, signal }) => {
        throw new Error(`the ${who} exited (code ${code}, signal ${signal}): ${JSON.stringify(dd.log.matching('fatal error, exiting')[0] ?? dd.log.records.slice(-2))}`);
      });
    const repeaterDied = died('repeater', d);
    const agentDied = died('agent', a);
    repeaterDied.catch(() => undefined);
    agentDied.catch(() => undefined);
    // At the repeater's sealed listener, and at the agent's sealed socket (from a repeater address).
    await sender.send(bare(EnvelopeKind.Subscribe, ring), port);
    await sender.send(bare(EnvelopeKind.Subscribe, ring), agentPort);
    const marker = set('marker');
    // Sealed as an agent for the repeater, and as a repeater for the agent (each opens only the other's).
    const sealedMarker = (role: Role) => new SecureSession(role).seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: marker, address: null })!;
    await sender.send(sealedMarker(Role.Agent), port);
    await sender.send(sealedMarker(Role.Repeater), agentPort);
    await Promise.race([Promise.all([ref.waitFor(1), node.waitFor(1)]), repeaterDied, agentDied]);
    // The node may also get the repeater's copy once the agent has subscribed: look at the first.
    assert.deepEqual(node.received[0], marker);
    assert.equal((await d.stop()).code, 0);
    assert.equal((await a.stop()).code, 0);
    ring.destroy();
  });
});

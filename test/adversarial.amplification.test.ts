// Amplification: what one input can make the repeater send. In secure mode,
// anything unauthenticated, replayed, stale or reflected must produce zero
// output datagrams (and nothing back to the sender); one valid frame produces
// exactly one copy per subscriber. In plain mode, one input produces at most
// one copy per subscriber of its channel, no copy is larger than
// --max-datagram, and a source outside the allow-list produces nothing; and
// spoofed subscriptions buy an address at most one live state from warm
// joins, however many ports, unsubscribes and subscribes they try
// (test/load/warm.test.ts runs the same attack at full size).

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { EnvelopeKind, Role } from '../src/wire/envelope.js';
import { writeFrameHeader } from '../src/wire/frame.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { EscapeTrap, ledgerOf, nonZero, plainOutput, SEED, prng, until } from './helpers/adversarial.js';
import { freePort, traceOf } from './helpers/net.js';
import { REDO_BYTES } from '../src/repeater/warm-budget.js';
import { newKeyFile } from './helpers/keys.js';
import { Receiver, Sender } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import type { TestRepeater } from './helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const trap = new EscapeTrap();
before(() => sodiumReady());
const set = (k: string, v: string | Buffer = 'v') => encodeCacheSet(Buffer.from(k), Buffer.isBuffer(v) ? v : Buffer.from(v), 0);
const only = (r: TestRepeater) => [...r.handle.repeater.channels.values()][0]!;

/** Proves `rx` got nothing beyond its first `seen` datagrams: a probe sent straight to it must come next. */
async function nothingMore(rx: Receiver, seen: number): Promise<void> {
  const probe = Buffer.from(`probe-${rx.port}-${seen}`);
  await sender.send(probe, rx.port, rx.socket.address().address);
  const got = await rx.waitFor(seen + 1);
  assert.deepEqual(got[seen], probe, `${rx.address} received ${rx.received.length - seen} unexpected datagram(s)`);
}

/** Sends `msgs` from `from` in batches, each read by the repeater (its received counter) before the next; returns the new count. */
async function sendAll(r: TestRepeater, from: Receiver, port: number, msgs: readonly Buffer[], base: number): Promise<number> {
  let n = base;
  for (let i = 0; i < msgs.length; i += 200) {
    const batch = msgs.slice(i, i + 200);
    await Promise.all(batch.map((m) => new Promise<void>((res, rej) => from.socket.send(m, port, '127.0.0.1', (e) => (e ? rej(e) : res())))));
    n += batch.length;
    const want = n;
    await until(`the repeater to read ${want} datagrams`, () => ledgerOf(only(r).stats).receivedByKind['sealed']! >= want);
  }
  return n;
}

describe('secure mode: zero output for anything unauthenticated or replayed', () => {
  test('garbage, forged frames, unknown keys, replays, reflections, stale and future frames produce no datagram at all; one valid frame produces one per subscriber', async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    const foreign = KeyRing.load([newKeyFile()]);
    const plainOut = await receiver();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', key, '--to', plainOut.address]);
    const port = r.port();
    // Four sealed subscribers (raw sockets: every datagram reaching them is counted).
    const subs = await Promise.all([1, 2, 3, 4].map(() => receiver()));
    const node = new SecureSession(Role.Agent);
    const subscribeFrames: Buffer[] = [];
    for (const s of subs) {
      const f = node.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: s.address })!;
      subscribeFrames.push(f);
      await sender.send(f, port);
      await r.tap.waitFor('subscribed', { address: s.address });
    }
    const attacker = await receiver();
    const outputs = () => subs.reduce((n, s) => n + s.received.length, 0) + plainOut.received.length;

    // One legitimate frame, captured: it goes out once per subscriber.
    const src = new SecureSession(Role.Agent);
    const captured = src.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('captured'), address: null })!;
    await sender.send(captured, port);
    for (const s of [...subs, plainOut]) await s.waitFor(1);
    const reflected = subs[0]!.received[0]!;
    assert.equal(outputs(), 5);

    const rnd = prng(SEED);
    const rb = (n: number) => {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i++) b[i] = (rnd() * 256) | 0;
      return b;
    };
    const fresh = () => src.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set(`k${(rnd() * 1e9) | 0}`), address: null })!;
    const attack: Array<[string, string, Buffer[]]> = [];
    const add = (what: string, reason: string, n: number, make: (i: number) => Buffer) => attack.push([what, reason, Array.from({ length: n }, (_, i) => make(i))]);
    add('random bytes', 'unsealed', 2000, () => {
      const b = rb(1 + ((rnd() * 1400) | 0));
      if (b[0] === 0x75) b[0] = 0;
      return b;
    });
    add('forged frames (real key id, random nonce and box)', 'auth_failed', 2000, () => {
      const b = rb(48 + ((rnd() * 600) | 0));
      writeFrameHeader(b, ring.sealing.id);
      return b;
    });
    add('frames sealed with a key the repeater lacks', 'unknown_key', 1000, () =>
      new SecureSession(Role.Agent).seal(foreign, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('alien'), address: null })!,
    );
    add('frames naming random key ids', 'unknown_key', 500, () => {
      const b = Buffer.from(fresh());
      b.writeUInt32LE(((ring.sealing.id + 1 + ((rnd() * 1e6) | 0)) >>> 0), 4);
      return b;
    });
    add('replays of the captured valid frame', 'replay', 1000, () => captured);
    add('replays of the subscriptions', 'replay', 400, (i) => subscribeFrames[i % subscribeFrames.length]!);
    add("the repeater's own output sent back to it", 'own_origin', 500, () => reflected);
    add('stale frames (10 minutes old)', 'stale', 500, () => src.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('old'), address: null }, Date.now() - 600_000)!);
    add('future frames (10 minutes ahead)', 'stale', 500, () => src.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('new'), address: null }, Date.now() + 600_000)!);
    add('valid frames with one bit flipped in the nonce or box', 'auth_failed', 1000, () => {
      const b = Buffer.from(fresh());
      const bit = 8 * 8 + ((rnd() * (b.length - 8) * 8) | 0);
      b[bit >> 3] = b[bit >> 3]! ^ (1 << (bit & 7));
      return b;
    });
    add('valid frames truncated', 'auth_failed', 500, () => {
      const b = fresh();
      return b.subarray(0, 48 + ((rnd() * (b.length - 48)) | 0));
    });
    add('plain cache updates and subscriptions on the sealed port', 'unsealed', 500, (i) =>
      i % 2 === 0 ? set(`plain${i}`) : encodeSubscription({ key: 'ssl', address: attacker.address }),
    );

    let sentCount = ledgerOf(only(r).stats).receivedByKind['sealed']!;
    let bytesIn = 0;
    for (const [, , msgs] of attack) {
      sentCount = await sendAll(r, attacker, port, msgs, sentCount);
      bytesIn += msgs.reduce((n, m) => n + m.length, 0);
    }
    // Everything was read by the repeater; none of it may have produced a datagram.
    for (const s of [...subs, plainOut]) await nothingMore(s, 1);
    await nothingMore(attacker, 0);
    const l = ledgerOf(only(r).stats);
    const expected: Record<string, number> = {};
    for (const [, reason, msgs] of attack) expected[reason] = (expected[reason] ?? 0) + msgs.length;
    const tried = attack.reduce((n, [, , m]) => n + m.length, 0);
    console.log(
      JSON.stringify({
        attackDatagrams: tried,
        attackBytes: bytesIn,
        outputDatagrams: outputs() - 5,
        dropped: nonZero(l.dropped),
        byCategory: Object.fromEntries(attack.map(([what, , m]) => [what, m.length])),
      }),
    );
    assert.equal(l.receivedByKind['sealed'], tried + 5, 'the repeater did not read every datagram');
    for (const [reason, n] of Object.entries(expected)) assert.equal(l.dropped[reason], n, `dropped{reason=${reason}}`);
    assert.equal(l.forwardedCopies, 5, 'output copies counted beyond the one valid frame');

    // One valid frame now: exactly one copy per subscriber, and nothing to the sender.
    await sender.send(fresh(), port);
    for (const s of [...subs, plainOut]) await s.waitFor(3);
    for (const s of [...subs, plainOut]) await nothingMore(s, 3);
    await nothingMore(attacker, 1);
    assert.equal(ledgerOf(only(r).stats).forwardedCopies, 10);
    trap.check();
    ring.destroy();
    foreign.destroy();
  });
});

describe('plain mode: the amplification bound', () => {
  test('one input produces at most one copy per subscriber of its channel, never larger than --max-datagram; garbage and subscriptions produce none', async () => {
    const S = 6;
    const r = await repeater(['--listen', '127.0.0.1:0', '--subscribe-rate', '100000', '--subscribe-burst', '100000']);
    const port = r.port();
    const subs = await Promise.all(Array.from({ length: S }, () => receiver()));
    for (const s of subs) s.socket.setRecvBufferSize(8 << 20);
    for (const s of subs) {
      await sender.send(encodeSubscription({ key: 'ssl', address: s.address }), port);
      await r.tap.waitFor('subscribed', { address: s.address });
    }
    const maxDatagram = r.handle.repeater.current.limits.maxDatagram;
    const rnd = prng(SEED + 7);
    const inputs: Buffer[] = [];
    // Value sizes up to the largest set that fits a UDP datagram (11 bytes of framing plus the key).
    const sizes = [1, 10, 100, 1000, 4000, 16000, Infinity];
    for (let i = 0; i < 400; i++) {
      const c = i % 8;
      const k = `s${i}`;
      if (c === 0) inputs.push(set(k, Buffer.alloc(Math.min(sizes[(rnd() * sizes.length) | 0]!, 65507 - 11 - k.length), 0x61)));
      else if (c === 1) inputs.push(encodeCacheDelete(Buffer.from(`d${i}`), rnd() < 0.5));
      else if (c === 2) inputs.push(encodeSubscription({ key: 'ssl', address: subs[i % S]!.address }));
      else if (c === 3) inputs.push(Buffer.from(Array.from({ length: 1 + ((rnd() * 1400) | 0) }, () => (rnd() * 256) | 0)));
      else inputs.push(set(`k${i}`, Buffer.alloc((rnd() * 600) | 0, 0x62)));
    }
    const expected = inputs.map((m) => plainOutput(m, maxDatagram)).filter((o): o is Buffer => o !== null);
    const before = ledgerOf(only(r).stats);
    let bytesIn = 0;
    let soFar = 0;
    for (const m of inputs) {
      await sender.send(m, port);
      bytesIn += m.length;
      if (plainOutput(m, maxDatagram) !== null) soFar++;
      // Large copies: let the subscribers read them before more follow.
      if (m.length > 8000) for (const s of subs) await s.waitFor(soFar);
    }
    for (const s of subs) await s.waitFor(expected.length);
    for (const s of subs) await nothingMore(s, expected.length);
    let copies = 0;
    let bytesOut = 0;
    let largest = 0;
    for (const s of subs) {
      for (let i = 0; i < expected.length; i++) assert.ok(s.received[i]!.equals(expected[i]!), `${s.address}: datagram ${i} is not the expected copy`);
      // What crossed the wire: the copies with their loop trace.
      for (const d of s.raw.slice(0, expected.length)) {
        copies++;
        bytesOut += d.length;
        largest = Math.max(largest, d.length);
      }
    }
    const after = ledgerOf(only(r).stats);
    console.log(
      JSON.stringify({
        subscribers: S,
        inputs: inputs.length,
        forwardedInputs: expected.length,
        copies,
        copiesPerInput: Number((copies / inputs.length).toFixed(2)),
        bytesIn,
        bytesOut,
        bytesOutPerByteIn: Number((bytesOut / bytesIn).toFixed(2)),
        largestCopy: largest,
        maxDatagram,
      }),
    );
    assert.equal(copies, expected.length * S, 'each forwarded input must reach each subscriber exactly once');
    assert.ok(copies <= inputs.length * S);
    assert.ok(largest <= maxDatagram, `a copy of ${largest} bytes exceeds --max-datagram ${maxDatagram}`);
    assert.ok(bytesOut <= inputs.length * S * maxDatagram);
    assert.equal(after.forwardedCopies - before.forwardedCopies, copies, 'forwarded_total disagrees with the copies that arrived');
    assert.equal(after.bytesForwarded - before.bytesForwarded, bytesOut, 'bytes_forwarded_total disagrees with the bytes that arrived');
    trap.check();
  });

  test('a delete at the --max-datagram limit: its copies stay within the limit', async () => {
    const rx = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--max-datagram', '1000', '--to', rx.address]);
    const del = encodeCacheDelete(Buffer.alloc(1000 - 6, 0x61), false);
    assert.equal(del.length, 1000);
    await sender.send(del, r.port());
    // One byte shorter: its padded form (+2) still fits, so it is delivered.
    const fits = encodeCacheDelete(Buffer.alloc(1000 - 8, 0x62), false);
    await sender.send(fits, r.port());
    await sender.send(set('marker'), r.port());
    const got = await rx.waitFor(2);
    // The delete whose padded form would exceed the limit is dropped and counted, not sent oversized.
    assert.deepEqual(got, [encodeCacheDelete(Buffer.alloc(1000 - 8, 0x62), true), set('marker')]);
    await nothingMore(rx, 2);
    assert.equal(ledgerOf(only(r).stats).dropped['too_large'], 1);
    console.log(`delete of ${del.length} bytes at --max-datagram 1000: dropped as too_large (its padded form is 1002 bytes)`);
  });

  test('a source outside the allow-list produces nothing, and cannot subscribe anyone; subscriptions naming addresses outside it are refused', async () => {
    const inside = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--allow', '127.0.0.1/32', '--to', inside.address, '--subscribe-burst', '1000']);
    const port = r.port();
    const outsider = await Sender.bound('127.0.0.2');
    scope.track(outsider);
    const victim = await receiver('127.0.0.2');
    const victimOnAllowed = await receiver();
    for (let i = 0; i < 200; i++) await outsider.send(set(`x${i}`), port);
    for (let i = 0; i < 50; i++) await outsider.send(encodeSubscription({ key: 'ssl', address: victimOnAllowed.address }), port);
    // From an allowed source, naming an address outside the list.
    for (let i = 0; i < 50; i++) await sender.send(encodeSubscription({ key: 'ssl', address: victim.address }), port);
    await sender.send(set('marker'), port);
    assert.deepEqual(await inside.waitFor(1), [set('marker')]);
    await nothingMore(inside, 1);
    await nothingMore(victim, 0);
    await nothingMore(victimOnAllowed, 0);
    const l = ledgerOf(only(r).stats);
    assert.equal(l.dropped['not_allowed'], 250);
    assert.equal(l.dropped['address_not_allowed'], 50);
    assert.equal(only(r).size, 1);
    trap.check();
  });
});

describe('plain mode: warm joins are not an amplifier', () => {
  test('spoofed subscriptions toward one address: from elsewhere they start no join; from the address itself, 4 ports and 10 rounds of subscribe and unsubscribe get it one live state in all; another address still gets all of it', async () => {
    // Slow enough that every round cuts joins short while they send (40 entries take 0.2 s).
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-rate', '200', '--subscribe-rate', '1000', '--subscribe-burst', '1000']);
    const port = r.port();
    const ch = only(r);
    const warm = r.handle.repeater.warm;
    const N = 40;
    const entries = Array.from({ length: N }, (_, i) => set(`s${String(i).padStart(2, '0')}`, Buffer.alloc(4000, 0x61 + (i % 26))));
    for (const m of entries) await sender.send(m, port);
    await until('the live state', () => ch.stats.accepted >= N);
    // One live state on the wire: every set with the 26-byte trace a repeater stamps.
    const stateBytes = entries.reduce((n, m) => n + m.length + 26, 0);

    // The victim: one address, four ports. On loopback any 127/8 address can be bound, so
    // "spoofing" the victim's address as a source is binding it.
    const victimIp = '127.0.0.5';
    const victims = await Promise.all([0, 1, 2, 3].map(() => receiver(victimIp)));
    const attacker = scope.track(await Sender.bound('127.0.0.9'));
    const spoofer = scope.track(await Sender.bound(victimIp));
    let attack = 0;
    let attackBytes = 0;
    const announce = async (from: Sender, address: string, unsubscribe = false) => {
      const m = encodeSubscription({ key: 'ssl', address, unsubscribe });
      attack++;
      attackBytes += m.length;
      await from.send(m, port);
    };
    const arrived = () => victims.reduce((n, v) => n + v.received.length, 0);

    // From another address of the allow-list: subscribed, never warmed; and an unsubscribe from a
    // third address (neither the one named nor the one that announced it) is not believed.
    for (const v of victims) {
      const mark = r.tap.length;
      await announce(attacker, v.address);
      await r.tap.waitFor('warm join not started', { address: v.address }, { from: mark });
    }
    const third = scope.track(await Sender.bound('127.0.0.10'));
    for (const v of victims) await announce(third, v.address, true);
    await until('four foreign unsubscribes refused', () => ledgerOf(ch.stats).dropped['foreign_unsubscribe'] === 4);
    assert.equal(warm.statsOf(ch.name)!.started, 0);
    assert.equal(ch.size, 4);

    // From the victim's address: each round starts four joins, lets them send, and cuts them short.
    for (let round = 0; round < 10; round++) {
      const mark = r.tap.length;
      const before = arrived();
      for (const v of victims) await announce(spoofer, v.address);
      await r.tap.waitFor('warm join started', {}, { from: mark, count: 4 });
      // Cut once they send, or once they have nothing to send.
      await until(`round ${round}: the joins to send or finish`, () => arrived() > before || r.tap.matching('warm join completed').length > 0 || arrived() >= N, 5000);
      for (const v of victims) await announce(spoofer, v.address, true);
      await until(`round ${round}: four unsubscribes`, () => ch.size === 0);
    }
    // Then subscribed for good, and every join left to finish.
    for (const v of victims) await announce(spoofer, v.address);
    await until('the joins to finish', () => ch.size === 4 && warm.activeIn(ch.name) === 0, 10_000);
    const seen = victims.map((v) => v.received.length);
    for (const [i, v] of victims.entries()) await nothingMore(v, seen[i]!);

    const raw = victims.flatMap((v, i) => v.raw.slice(0, seen[i]));
    const bytes = raw.reduce((n, d) => n + d.length, 0);
    const keys = victims.flatMap((v, i) => v.received.slice(0, seen[i])).map((d) => d.toString('latin1', 6, 6 + d.readUInt16LE(4)));
    const stats = warm.statsOf(ch.name)!;
    console.log(
      JSON.stringify({
        stateEntries: N,
        stateBytes,
        attackDatagrams: attack,
        attackBytes,
        joinsStarted: stats.started,
        joinsResumed: stats.resumed,
        victimDatagrams: raw.length,
        victimBytes: bytes,
        victimBytesPerAttackByte: Number((bytes / attackBytes).toFixed(1)),
      }),
    );
    assert.ok(raw.every((d) => traceOf(d)?.ingress === r.handle.repeater.loops.self), 'only warm datagrams reached it');
    assert.equal(new Set(keys).size, N, 'the victim address holds the live state');
    assert.equal(keys.length, N, `each entry once: ${keys.length} datagrams for ${N} entries`);
    assert.ok(bytes <= stateBytes, `${bytes} bytes to the victim address, one live state is ${stateBytes}`);
    assert.ok(stats.resumed >= 4 * 10, 'every later join went on from the mark');

    // A node on another address that subscribes afterwards gets all of it.
    const legit = await receiver('127.0.0.6');
    const own = scope.track(await Sender.bound('127.0.0.6'));
    const mark = r.tap.length;
    await own.send(encodeSubscription({ key: 'ssl', address: legit.address }), port);
    const done = await r.tap.waitFor('warm join completed', { address: legit.address }, { from: mark, ms: 10_000 });
    assert.equal(done['sent'], N);
    const got = await legit.waitFor(N);
    assert.equal(new Set(got.map((d) => d.toString('latin1', 6, 6 + d.readUInt16LE(4)))).size, N);
    assert.equal(legit.raw.reduce((n, d) => n + d.length, 0), stateBytes);
    trap.check();
  });

  test('an address whose port is closed (it answers with ICMP) and is announced again and again gets one live state and at most 1 MiB sent again', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--subscribe-rate', '1000', '--subscribe-burst', '1000']);
    const port = r.port();
    const ch = only(r);
    const warm = r.handle.repeater.warm;
    const N = 40;
    const entries = Array.from({ length: N }, (_, i) => set(`c${String(i).padStart(2, '0')}`, Buffer.alloc(60_000, 0x61 + (i % 26))));
    for (const m of entries) await sender.send(m, port);
    await until('the live state', () => ch.stats.accepted >= N);
    const stateBytes = entries.reduce((n, m) => n + m.length + 26, 0);
    const victimIp = '127.0.0.7';
    const address = `${victimIp}:${await freePort(victimIp)}`; // nobody listens: every datagram is answered with ICMP
    const spoofer = scope.track(await Sender.bound(victimIp));
    let packets = 0;
    const completed = () => r.tap.matching('warm join completed', { address }).length > 0;
    // Announced again each time it is suspended: each announce brings it back, and its join
    // goes on (never from the first entry) until it is suspended again or has walked the state.
    for (let round = 0; round < 20; round++) {
      const mark = r.tap.length;
      packets++;
      await spoofer.send(encodeSubscription({ key: 'ssl', address }), port);
      await r.tap.waitFor(round === 0 ? 'subscribed' : 'refreshed', { address }, { from: mark });
      await until(`round ${round}: suspended again, or a join over`, () => (ch.find(address)?.suspendedUntil ?? 0) !== 0 || completed(), 10_000);
      // Over: an announce now brings nothing to send, so nothing to be suspended for (a loaded machine reads the ICMP late and gets there in fewer rounds).
      if (completed()) break;
    }
    const stats = warm.statsOf(ch.name)!;
    console.log(JSON.stringify({ stateBytes, packets, warmBytes: stats.bytes, restarted: stats.restarted, redoBudget: REDO_BYTES, completed: completed() }));
    assert.ok(stats.bytes <= stateBytes + REDO_BYTES + 60_100, `${stats.bytes} bytes toward a closed port for ${packets} announces; one live state is ${stateBytes}`);
    assert.ok(completed(), `the join walked the whole state within ${packets} announces`);
    trap.check();
  });

  test('a port that closes in the middle of a join: what it lost is sent again, at most 1 MiB per address and cooldown', async () => {
    // 8 MB/s: 4.8 MB take 0.6 s, and the last quarter to half second before the loss is noticed holds 2 to 4 MB.
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-byte-rate', '8000000']);
    const port = r.port();
    const ch = only(r);
    const warm = r.handle.repeater.warm;
    const N = 80;
    const entries = Array.from({ length: N }, (_, i) => set(`m${String(i).padStart(2, '0')}`, Buffer.alloc(60_000, 0x61 + (i % 26))));
    for (const m of entries) await sender.send(m, port);
    await until('the live state', () => ch.stats.accepted >= N);
    const stateBytes = entries.reduce((n, m) => n + m.length + 26, 0);
    const ip = '127.0.0.8';
    let node = await receiver(ip);
    node.socket.setRecvBufferSize(8 << 20);
    const nodePort = node.port;
    const address = node.address;
    const own = scope.track(await Sender.bound(ip));
    await own.send(encodeSubscription({ key: 'ssl', address }), port);
    await node.waitFor(30, 10_000);
    node.close(); // the node dies: what follows meets a closed port
    const mark = r.tap.length;
    await r.tap.waitFor('warm join restarted', { address, reason: 'datagrams met a closed port' }, { from: mark });
    node = await scope.receiver(ip, nodePort);
    await own.send(encodeSubscription({ key: 'ssl', address }), port);
    await r.tap.waitFor('warm join completed', { address }, { from: mark, ms: 10_000 });
    const stats = warm.statsOf(ch.name)!;
    console.log(JSON.stringify({ stateBytes, warmBytes: stats.bytes, sentAgain: stats.bytes - stateBytes, redoBudget: REDO_BYTES }));
    assert.ok(stats.bytes > stateBytes, 'something was sent again');
    assert.ok(stats.bytes <= stateBytes + REDO_BYTES + 60_100, `${stats.bytes - stateBytes} bytes sent again; the budget is ${REDO_BYTES} (and one datagram)`);
    trap.check();
  });
});

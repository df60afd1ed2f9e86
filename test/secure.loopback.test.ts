// Secure mode over real loopback sockets: agents, sealed listeners, mixed
// channels, replays, foreign keys, rotation under traffic.

import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { DROP_REASONS, type DropReason } from '../src/base/stats.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { EnvelopeKind, Role } from '../src/wire/envelope.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { keyDir, newKeyFile } from './helpers/keys.js';
import { freePort, Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import { configOf, startTestAgent, type TestAgent, type TestRepeater } from './helpers/repeater.js';
import { Tap } from './helpers/attack.js';
import { eventually } from './helpers/net.js';

const scope = new Scope();
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

before(() => sodiumReady());

const set = (k: string, v: string) => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);

/** An agent whose node is a Receiver (its cache-udp-server) and whose local port is returned. */
async function agent(repeaterPort: number, keys: string[], extra: string[] = []): Promise<{ a: TestAgent; node: Receiver; local: number }> {
  const node = await receiver();
  const local = await freePort();
  const a = await startTestAgent([
    '--repeater', `127.0.0.1:${repeaterPort}`,
    '--local', `127.0.0.1:${local}`,
    '--deliver', node.address,
    '--channel-key', 'ssl',
    ...keys.flatMap((k) => ['--key-file', k]),
    ...extra,
  ]);
  scope.track(a);
  return { a, node, local };
}

function dropped(r: TestRepeater, reason: DropReason): number {
  const i = DROP_REASONS.indexOf(reason);
  let n = 0;
  for (const ch of r.handle.repeater.channels.values()) n += ch.stats.dropped[i]!;
  return n;
}

/** Waits until the repeater logs `count` sealed subscriptions (from the start). */
function subscribed(r: TestRepeater, count: number): Promise<unknown> {
  return r.tap.waitFor('subscribed', { form: 'sealed' }, { count });
}

/** Proves `rx` got nothing beyond its first `seen` datagrams (see the plain tests). */
async function assertNothingMore(rx: Receiver, seen: number): Promise<void> {
  const probe = Buffer.from('probe');
  await sender.send(probe, rx.port);
  const got = await rx.waitFor(seen + 1);
  assert.deepEqual(got[seen], probe, `${rx.address} received something it should not have`);
}

describe('secure mode over loopback', () => {
  test('agent to repeater to agent, deletes repaired at delivery, never back to the origin', async () => {
    const k = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', k]);
    const one = await agent(r.port(), [k]);
    const two = await agent(r.port(), [k]);
    await subscribed(r, 2);
    await sender.send(set('sess1', 'secret-value'), one.local);
    await sender.send(encodeCacheDelete(Buffer.from('sess1'), false), one.local);
    assert.deepEqual(await two.node.waitFor(2), [set('sess1', 'secret-value'), encodeCacheDelete(Buffer.from('sess1'), true)]);
    // And the other way; one's node then sees only two's datagram.
    await sender.send(set('from-two', 'v'), two.local);
    assert.deepEqual(await one.node.waitFor(1), [set('from-two', 'v')]);
    await assertNothingMore(one.node, 1);
  });

  test('mixed plain and sealed subscribers on one channel', async () => {
    const k = newKeyFile();
    const [plainPort, sealedPort] = [await freePort(), await freePort()];
    const r = await repeater([
      '--listen', `127.0.0.1:${plainPort},channel=ssl,key=ssl`,
      '--listen-sealed', `127.0.0.1:${sealedPort},channel=ssl,key=ssl`,
      '--key-file', k,
    ]);
    const plainNode = await receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: plainNode.address }), plainPort);
    await r.tap.waitFor('subscribed', { address: plainNode.address });
    const sealed = await agent(sealedPort, [k]);
    await subscribed(r, 1);

    // Sealed in: the plain subscriber gets the original bytes, repaired.
    await sender.send(encodeCacheDelete(Buffer.from('gone'), false), sealed.local);
    assert.deepEqual(await plainNode.next(), encodeCacheDelete(Buffer.from('gone'), true));
    // Plain in: the sealed subscriber gets it through its agent.
    await sender.send(set('plain-in', 'v'), plainPort);
    assert.deepEqual(await sealed.node.next(), set('plain-in', 'v'));
    assert.deepEqual(await plainNode.next(), set('plain-in', 'v'));
  });

  test('a plain datagram or unsealed subscription on a sealed listener is never forwarded', async () => {
    const k = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', k]);
    const good = await agent(r.port(), [k]);
    const other = await agent(r.port(), [k]);
    await subscribed(r, 2);
    const spy = await receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: spy.address }), r.port());
    await sender.send(set('plain', 'x'), r.port());
    // Datagrams on one socket are handled in order: once a later sealed one is delivered, both were judged.
    await sender.send(set('marker', 'v'), good.local);
    assert.deepEqual(await other.node.next(), set('marker', 'v'));
    await assertNothingMore(other.node, 1);
    await assertNothingMore(spy, 0);
    assert.equal(dropped(r, 'unsealed'), 2);
  });

  test('a captured frame sent again, and a frame sealed with a key the repeater lacks, are dropped', async () => {
    const k = newKeyFile();
    const foreign = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', k]);
    const rx = await agent(r.port(), [k]);
    await subscribed(r, 1);
    // The test plays an agent: it seals frames itself and captures them.
    const attacker = new SecureSession(Role.Agent);
    const ring = KeyRing.load([k]);
    const frame = attacker.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('once', 'v'), address: null })!;
    await sender.send(frame, r.port());
    assert.deepEqual(await rx.node.next(), set('once', 'v'));
    await sender.send(frame, r.port());
    const alien = attacker.seal(KeyRing.load([foreign]), { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('alien', 'v'), address: null })!;
    await sender.send(alien, r.port());
    const stale = attacker.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('old', 'v'), address: null }, Date.now() - 120_000)!;
    await sender.send(stale, r.port());
    const marker = attacker.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set('marker', 'v'), address: null })!;
    await sender.send(marker, r.port());
    assert.deepEqual(await rx.node.next(), set('marker', 'v'));
    await assertNothingMore(rx.node, 2);
    assert.equal(dropped(r, 'replay'), 1);
    assert.equal(dropped(r, 'unknown_key'), 1);
    assert.equal(dropped(r, 'stale'), 1);
  });

  test('sealed subscriptions for another channel key are refused', async () => {
    const k = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0,key=ssl', '--key-file', k]);
    const node = await receiver();
    const local = await freePort();
    const wrong = await startTestAgent(['--repeater', `127.0.0.1:${r.port()}`, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'other', '--key-file', k]);
    scope.track(wrong);
    await r.tap.waitFor('subscription refused', { reason: 'key_mismatch' });
  });

  test('an agent that stops unsubscribes (no wait for its expiry)', async () => {
    const k = newKeyFile();
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', k]);
    const a = await agent(r.port(), [k]);
    const sub = (await subscribed(r, 1)) as Record<string, unknown>;
    await a.a.close();
    await r.tap.waitFor('unsubscribed', { address: sub['address'] });
  });

  test('key rotation under continuous traffic loses nothing', async () => {
    const k1 = newKeyFile();
    const k2 = newKeyFile();
    // Each process reads its own copy, as separate hosts would.
    const files = (n: string) => ({ k1: copy(k1, `${n}-1`), k2: copy(k2, `${n}-2`) });
    const rk = files('rep');
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', rk.k1]);
    const sk = files('send');
    const dk = files('dest');
    const src = await agent(r.port(), [sk.k1]);
    const dst = await agent(r.port(), [dk.k1]);
    await subscribed(r, 2);
    const argsOf = (t: { local: number; node: Receiver }, keys: string[]) => [
      '--repeater', `127.0.0.1:${r.port()}`,
      '--local', `127.0.0.1:${t.local}`,
      '--deliver', t.node.address,
      '--channel-key', 'ssl',
      ...keys.flatMap((k) => ['--key-file', k]),
    ];
    let sent = 0;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        await sender.send(set(`k${sent}`, 'v'), src.local);
        sent++;
        if (sent % 20 === 0) await new Promise((res) => setImmediate(res));
      }
    })();
    const steps: Array<[string, string[], string[], string[]]> = [
      ['add the new key everywhere (second)', [rk.k1, rk.k2], [sk.k1, sk.k2], [dk.k1, dk.k2]],
      ['make it first everywhere', [rk.k2, rk.k1], [sk.k2, sk.k1], [dk.k2, dk.k1]],
      ['remove the old one', [rk.k2], [sk.k2], [dk.k2]],
    ];
    for (const [, rkeys, skeys, dkeys] of steps) {
      // Let traffic flow under the current rings before each step.
      await dst.node.waitFor(dst.node.received.length + 200);
      assert.equal(await r.reload(['--listen-sealed', '127.0.0.1:0', ...rkeys.flatMap((k) => ['--key-file', k])]), true);
      assert.equal(await src.a.reload(argsOf(src, skeys)), true);
      assert.equal(await dst.a.reload(argsOf(dst, dkeys)), true);
    }
    await dst.node.waitFor(dst.node.received.length + 200);
    stop = true;
    await traffic;
    const got = await dst.node.waitFor(sent);
    assert.equal(got.length, sent);
    assert.ok(sent >= 800, `only ${sent} datagrams were sent during the rotation`);
    for (let i = 0; i < sent; i++) assert.deepEqual(got[i], set(`k${i}`, 'v'), `datagram ${i}`);
    assert.equal(dropped(r, 'unknown_key') + dropped(r, 'auth_failed'), 0);
    assert.deepEqual(r.handle.repeater.dataSeal!.keyIds().length, 1);
  });
});

describe('sealed frames name their receiver', () => {
  test('a wildcard sealed listener takes subscriptions naming its port on any local address', async () => {
    const k = newKeyFile();
    const r = await repeater(['--listen-sealed', '0.0.0.0:0', '--allow', '127.0.0.0/8', '--key-file', k]);
    const port = r.port();
    const one = await agent(port, [k]);
    const node = await receiver();
    const local = await freePort();
    // Another loopback address reaches the same wildcard listener: a subscription naming it is ours.
    const two = scope.track(await startTestAgent(['--repeater', `127.0.0.2:${port}`, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--key-file', k]));
    await subscribed(r, 2);
    await sender.send(set('both', 'v'), one.local);
    await eventually('the second agent to be served', () => (two.handle.agent.toNode.received.some((n) => n > 0) ? true : undefined));
    assert.equal(dropped(r, 'wrong_receiver'), 0);
  });

  test('agents behind a proxy: public= is the address they name; without it their subscriptions are refused', async () => {
    const k = newKeyFile();
    const sp = await freePort();
    const proxy = scope.track(await Tap.open(sp));
    const args = (pub: boolean) => ['--listen-sealed', `127.0.0.1:${sp}${pub ? `,public=127.0.0.1:${proxy.port}` : ''}`, '--key-file', k];
    const r = await repeater(args(true));
    const behind = await agent(proxy.port, [k], ['--subscribe-interval', '0.2']);
    const direct = await agent(sp, [k]);
    await subscribed(r, 2);
    await sender.send(set('via-proxy', 'v'), behind.local);
    assert.deepEqual(await direct.node.waitFor(1), [set('via-proxy', 'v')]);
    assert.equal(dropped(r, 'wrong_receiver'), 0);
    // Without public= the proxy's address is nobody here: the next announce through it is refused.
    assert.equal(await r.reload(args(false)), true);
    await eventually('an announce through the proxy to be refused', () => (dropped(r, 'wrong_receiver') > 0 ? true : undefined));
  });

  test('public= must be a unicast address, and only on sealed listeners', () => {
    const k = newKeyFile();
    for (const bad of ['0.0.0.0:7000', '224.0.0.1:7000', '255.255.255.255:7000', 'example.com:7000', '10.0.0.1']) {
      assert.throws(() => configOf(['--listen-sealed', `127.0.0.1:7272,public=${bad}`, '--key-file', k]), /--listen-sealed/, bad);
    }
    assert.throws(() => configOf(['--listen', '127.0.0.1:7171,public=10.0.0.1:7171']), /unknown parameter "public"/);
    assert.equal(configOf(['--listen-sealed', '127.0.0.1:7272,public=[::ffff:10.0.0.1]:7000', '--key-file', k]).listeners[0]!.publicAddress?.text, '10.0.0.1:7000');
  });

  test('an older agent (its subscription names no receiver) is still served, and is sent no MEMBERSHIP frame', async () => {
    const k = newKeyFile();
    const pp = await freePort();
    const r = await repeater(['--listen', `127.0.0.1:${pp},channel=c,key=ssl`, '--listen-sealed', '127.0.0.1:0,channel=c,key=ssl', '--key-file', k]);
    const sp = r.port('127.0.0.1:0');
    const ring = KeyRing.load([k]);
    const older = await receiver();
    const s = new SecureSession(Role.Agent);
    const sub = s.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: older.address })!;
    await new Promise<void>((res, rej) => older.socket.send(sub, sp, '127.0.0.1', (err) => (err ? rej(err) : res())));
    await subscribed(r, 1);
    const newer = await agent(sp, [k]);
    await subscribed(r, 2);
    await sender.send(set('live', 'v'), pp);
    assert.deepEqual(await newer.node.waitFor(1), [set('live', 'v')]);
    const [frame] = await older.waitFor(1);
    const env = s.open(ring, frame!, 30_000);
    assert.ok(typeof env === 'object', String(env));
    assert.equal(env.kind, EnvelopeKind.CacheDatagram);
    assert.equal(env.receiver, '', 'a live frame is a group frame');
    await assertNothingMore(older, 1);
  });
});

function copy(file: string, name: string): string {
  const to = join(keyDir, name);
  copyFileSync(file, to);
  return to;
}

// The plain repeater over real loopback sockets: subscriptions, fan-out,
// expiry, static outputs, access control, limits, delete repair, reload.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DROP_REASONS, type DropReason } from '../src/base/stats.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { eventually, freePort, Receiver, Sender } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import type { TestRepeater } from './helpers/repeater.js';

const scope = new Scope();
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const set = (k: string, v: string | Buffer, e = 0) => encodeCacheSet(Buffer.from(k), Buffer.isBuffer(v) ? v : Buffer.from(v), e);
const sub = (address: string, key = 'ssl', unsubscribe = false) => encodeSubscription({ key, address, unsubscribe });

/** Subscribes `rx` and waits until the repeater logs it. */
async function subscribe(r: TestRepeater, rx: Receiver, key = 'ssl', port = r.port()): Promise<void> {
  const from = r.tap.length;
  await sender.send(sub(rx.address, key), port);
  await r.tap.waitFor('subscribed', { address: rx.address }, { from });
}

/**
 * Proves `rx` got nothing beyond its first `seen` datagrams: a probe sent
 * straight to it queues behind anything already in flight, so once the probe
 * is read everything before it has been read too.
 */
async function assertNothingMore(rx: Receiver, seen: number): Promise<void> {
  const probe = Buffer.from('probe');
  await sender.send(probe, rx.port);
  const got = await rx.waitFor(seen + 1);
  assert.deepEqual(got[seen], probe, `${rx.address} received something it should not have`);
}

function dropped(r: TestRepeater, reason: DropReason, channel?: string): number {
  const i = DROP_REASONS.indexOf(reason);
  let n = 0;
  for (const ch of r.handle.repeater.channels.values()) if (channel === undefined || ch.name === channel) n += ch.stats.dropped[i]!;
  return n;
}

describe('subscriptions', () => {
  test('a subscribed node receives every cache update byte for byte', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const rx = await receiver();
    await subscribe(r, rx);
    const value = Buffer.alloc(3000, 0xab);
    const msgs = [set('a', 'hello', 1795213916), set('b', value), set('c', '')];
    for (const m of msgs) await sender.send(m, r.port());
    assert.deepEqual(await rx.waitFor(3), msgs);
  });

  test('fan-out reaches many receivers, each exactly once per datagram', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const rxs = await Promise.all(Array.from({ length: 24 }, () => receiver()));
    for (const rx of rxs) await subscribe(r, rx);
    const msgs = Array.from({ length: 20 }, (_, i) => set(`k${i}`, `v${i}`));
    for (const m of msgs) await sender.send(m, r.port());
    for (const rx of rxs) assert.deepEqual(await rx.waitFor(20), msgs);
    for (const rx of rxs) await assertNothingMore(rx, 20);
    const ch = [...r.handle.repeater.channels.values()][0]!;
    assert.equal(ch.stats.forwarded, 24 * 20);
  });

  test('a refresh keeps one entry and moves its deadline', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--tolerance', '30']);
    const rx = await receiver();
    await subscribe(r, rx);
    const entry = () => [...r.handle.repeater.channels.values()][0]!.find(rx.address)!;
    const first = entry().deadline;
    // The refresh must happen on a later millisecond than the subscription, or a deadline that did not move would pass.
    const seen = entry().lastSeen;
    while (Date.now() <= seen) {
      // a millisecond at most
    }
    const from = r.tap.length;
    await sender.send(sub(rx.address), r.port());
    await r.tap.waitFor('refreshed', { address: rx.address }, { from });
    assert.ok(entry().deadline > first, 'the refresh did not move the deadline');
    assert.equal(entry().deadline, entry().lastSeen + 30_000);
    assert.equal([...r.handle.repeater.channels.values()][0]!.size, 1);
  });

  test('a subscriber that stops announcing expires after the tolerance', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--tolerance', '0.3']);
    const rx = await receiver();
    const t0 = Date.now();
    await subscribe(r, rx);
    await r.tap.waitFor('subscriber expired', { address: rx.address });
    assert.ok(Date.now() - t0 >= 300, 'expired before the tolerance');
    await sender.send(set('late', 'x'), r.port());
    const marker = await receiver();
    await subscribe(r, marker);
    await sender.send(set('m', 'x'), r.port());
    await marker.waitFor(1);
    await assertNothingMore(rx, 0);
    assert.ok(dropped(r, 'no_subscribers') >= 1);
  });

  test('an unsubscribe removes the node without waiting for its expiry', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const gone = await receiver();
    const stays = await receiver();
    await subscribe(r, gone);
    await subscribe(r, stays);
    const from = r.tap.length;
    await sender.send(sub(gone.address, 'ssl', true), r.port());
    await r.tap.waitFor('unsubscribed', { address: gone.address }, { from });
    await sender.send(set('after', 'x'), r.port());
    await stays.waitFor(1);
    await assertNothingMore(gone, 0);
  });

  test('a channel key refuses subscriptions for another key', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0,key=ssl']);
    const rx = await receiver();
    const from = r.tap.length;
    await sender.send(sub(rx.address, 'other'), r.port());
    const rec = await r.tap.waitFor('subscription refused', { reason: 'key_mismatch' }, { from });
    assert.equal(rec['key'], 'other');
    await subscribe(r, rx, 'ssl');
  });

  test('subscriptions that would loop or name no unicast address are refused', async () => {
    const port = await freePort();
    const r = await repeater(['--listen', `127.0.0.1:${port}`]);
    for (const [address, reason] of [
      [`127.0.0.1:${port}`, 'loop'],
      ['239.1.1.1:4000', 'bad_address'],
      ['0.0.0.0:4000', 'bad_address'],
      ['localhost:4000', 'bad_address'],
      ['127.0.0.1:0', 'bad_address'],
    ] as const) {
      const before = dropped(r, reason);
      await sender.send(sub(address), port);
      // Every refusal is kept for /refusals (log lines are throttled per reason).
      await eventually(`${address} to be refused`, () => (r.handle.repeater.subscriptions.recent().some((x) => x.address === address) ? true : undefined));
      assert.deepEqual(r.handle.repeater.subscriptions.recent().filter((x) => x.address === address).map((x) => x.reason), [reason]);
      assert.equal(dropped(r, reason), before + 1, `${address} should be counted once as ${reason}`);
    }
    assert.equal([...r.handle.repeater.channels.values()][0]!.size, 0);
  });

  test('the registry cap refuses further subscribers and keeps serving the others', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--max-subscribers', '2']);
    const [a, b, c] = [await receiver(), await receiver(), await receiver()];
    await subscribe(r, a);
    await subscribe(r, b);
    const from = r.tap.length;
    await sender.send(sub(c.address), r.port());
    await r.tap.waitFor('subscription refused', { reason: 'registry_full' }, { from });
    await sender.send(set('k', 'v'), r.port());
    await a.waitFor(1);
    await b.waitFor(1);
    await assertNothingMore(c, 0);
  });

  test('the per-source subscription rate limit holds', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--subscribe-rate', '0.001', '--subscribe-burst', '3']);
    const rxs = await Promise.all(Array.from({ length: 5 }, () => receiver()));
    for (const rx of rxs) await sender.send(sub(rx.address), r.port());
    await r.tap.waitFor('subscribed', {}, { count: 3 });
    await r.tap.waitFor('subscription refused', { reason: 'rate_limited' });
    // Datagrams are handled in order, so once a later data datagram is
    // forwarded, all five subscriptions have been judged.
    await sender.send(set('k', 'v'), r.port());
    await rxs[0]!.waitFor(1);
    assert.equal([...r.handle.repeater.channels.values()][0]!.size, 3);
    assert.equal(dropped(r, 'rate_limited'), 2);
  });
});

describe('data path', () => {
  test('deletes are repaired into the padded form uWSGI applies', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const rx = await receiver();
    await subscribe(r, rx);
    await sender.send(encodeCacheDelete(Buffer.from('sess1'), false), r.port());
    await sender.send(encodeCacheDelete(Buffer.from('sess2'), true), r.port());
    assert.deepEqual(await rx.waitFor(2), [encodeCacheDelete(Buffer.from('sess1'), true), encodeCacheDelete(Buffer.from('sess2'), true)]);
  });

  test('--no-repair-deletes forwards deletes as received', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--no-repair-deletes']);
    const rx = await receiver();
    await subscribe(r, rx);
    const del = encodeCacheDelete(Buffer.from('sess1'), false);
    await sender.send(del, r.port());
    assert.deepEqual(await rx.next(), del);
  });

  test('malformed and unknown datagrams are dropped and counted by reason', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--max-datagram', '1000']);
    const rx = await receiver();
    await subscribe(r, rx);
    const bad: Array<[Buffer, DropReason]> = [
      [Buffer.from([1, 2]), 'too_short'],
      [Buffer.from([111, 9, 0, 10, 1, 0]), 'size_mismatch'],
      [Buffer.from([111, 2, 0, 10, 0, 0]), 'empty_key'],
      [Buffer.from([111, 3, 0, 11, 9, 0, 0x6b]), 'malformed'],
      [Buffer.from([5, 0, 0, 0]), 'unknown_type'],
      [Buffer.concat([Buffer.from([111, 0xe9, 0x03, 10]), Buffer.alloc(1001)]), 'too_large'],
    ];
    for (const [b] of bad) await sender.send(b, r.port());
    await sender.send(set('ok', 'v'), r.port());
    assert.deepEqual(await rx.waitFor(1), [set('ok', 'v')]);
    await assertNothingMore(rx, 1);
    for (const [, reason] of bad) assert.equal(dropped(r, reason), 1, reason);
  });

  test('--forward-unknown fans out any datagram opaquely', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--forward-unknown']);
    const rx = await receiver();
    await subscribe(r, rx);
    const odd = [Buffer.from('netflow-ish payload'), Buffer.from([111, 1, 0, 10, 0])];
    for (const b of odd) await sender.send(b, r.port());
    assert.deepEqual(await rx.waitFor(2), odd);
  });

  test('static --to outputs receive without subscribing and ignore unsubscribes', async () => {
    const a = await receiver();
    const b = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--to', a.address, '--to', b.address]);
    await sender.send(sub(a.address, 'ssl', true), r.port());
    await sender.send(set('k', 'v'), r.port());
    assert.deepEqual(await a.waitFor(1), [set('k', 'v')]);
    assert.deepEqual(await b.waitFor(1), [set('k', 'v')]);
  });

  test('a receiver whose port is closed does not disturb the others', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const deadPort = await freePort();
    const before = await receiver();
    await subscribe(r, before);
    const from = r.tap.length;
    await sender.send(sub(`127.0.0.1:${deadPort}`), r.port());
    await r.tap.waitFor('subscribed', { address: `127.0.0.1:${deadPort}` }, { from });
    const afterRx = await receiver();
    await subscribe(r, afterRx);
    const n = 200;
    for (let i = 0; i < n; i++) await sender.send(set(`k${i}`, 'v'), r.port());
    assert.equal((await before.waitFor(n)).length, n);
    assert.equal((await afterRx.waitFor(n)).length, n);
    const dead = [...r.handle.repeater.channels.values()][0]!.find(`127.0.0.1:${deadPort}`)!;
    await r.tap.waitFor('subscriber unreachable', { address: `127.0.0.1:${deadPort}` });
    assert.ok(dead.outlet.errors > 0);
    assert.equal(dead.outlet.lastError, 'ECONNREFUSED');
  });

  test('IPv6 listeners and subscribers work', async () => {
    const r = await repeater(['--listen', '[::1]:0']);
    const rx = await receiver('::1');
    const v6 = Sender.open(6);
    scope.track(v6);
    const from = r.tap.length;
    await v6.send(sub(rx.address), r.port(), '::1');
    await r.tap.waitFor('subscribed', { address: rx.address }, { from });
    await v6.send(set('k6', 'v6'), r.port(), '::1');
    assert.deepEqual(await rx.next(), set('k6', 'v6'));
  });

  test('listeners grouped by channel= share subscribers; other channels are separate', async () => {
    const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
    const r = await repeater([
      '--listen', `127.0.0.1:${p1},channel=ssl`,
      '--listen', `127.0.0.1:${p2},channel=ssl`,
      '--listen', `127.0.0.1:${p3}`,
    ]);
    const a = await receiver();
    const other = await receiver();
    await subscribe(r, a, 'ssl', p1);
    await subscribe(r, other, 'x', p3);
    await sender.send(set('via2', 'v'), p2);
    assert.deepEqual(await a.next(), set('via2', 'v'));
    await sender.send(set('via3', 'v'), p3);
    await other.waitFor(1);
    await assertNothingMore(a, 1);
  });
});

describe('access control', () => {
  test('datagrams from outside the allow-list are dropped', async () => {
    const marker = await receiver();
    const r = await repeater(['--listen', '127.0.0.1:0', '--allow', '127.0.0.2/32', '--to', marker.address]);
    const from = r.tap.length;
    await sender.send(set('k', 'v'), r.port());
    await sender.send(sub('127.0.0.2:4000'), r.port());
    // An allowed source's datagram queues behind the refused ones.
    const allowed = await Sender.bound('127.0.0.2');
    scope.track(allowed);
    await allowed.send(set('marker', 'v'), r.port());
    assert.deepEqual(await marker.waitFor(1), [set('marker', 'v')]);
    assert.equal(dropped(r, 'not_allowed'), 2);
    assert.equal(r.tap.matching('subscribed', {}, from).length, 0);
  });

  test('a subscription naming an address outside the allow-list is refused', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--allow', '127.0.0.1/32']);
    const from = r.tap.length;
    await sender.send(sub('127.0.0.9:4000'), r.port());
    await r.tap.waitFor('subscription refused', { reason: 'address_not_allowed', address: '127.0.0.9:4000' }, { from });
  });
});

describe('reload', () => {
  test('a good reload changes outputs and listeners and keeps live subscriptions', async () => {
    const p1 = await freePort();
    const staticRx = await receiver();
    const r = await repeater(['--listen', `127.0.0.1:${p1}`]);
    const live = await receiver();
    await subscribe(r, live, 'ssl', p1);
    const p2 = await freePort();
    assert.equal(await r.reload(['--listen', `127.0.0.1:${p1}`, '--listen', `127.0.0.1:${p2},channel=127.0.0.1:${p1}`, '--to', staticRx.address]), true);
    await sender.send(set('via-new-listener', 'v'), p2);
    assert.deepEqual(await live.next(), set('via-new-listener', 'v'));
    assert.deepEqual(await staticRx.next(), set('via-new-listener', 'v'));
    assert.equal(r.handle.ops.reloadsOk, 1);
  });

  test('a bad reload is refused with a reason and the running config keeps working', async () => {
    const p1 = await freePort();
    const r = await repeater(['--listen', `127.0.0.1:${p1}`]);
    const live = await receiver();
    await subscribe(r, live, 'ssl', p1);
    const taken = await receiver();
    // The second listener cannot bind: the port is taken.
    assert.equal(await r.reload(['--listen', `127.0.0.1:${p1}`, '--listen', taken.address]), false);
    const rec = await r.tap.waitFor('reload refused; keeping the running config');
    assert.match(String(rec['error']), new RegExp(`cannot listen on ${taken.address}`));
    // An invalid config is refused the same way.
    assert.equal(await r.reload(['--listen', `127.0.0.1:${p1}`, '--tolerance', '0']), false);
    await sender.send(set('still', 'works'), p1);
    assert.deepEqual(await live.next(), set('still', 'works'));
    assert.equal(r.handle.ops.reloadsFailed, 2);
    assert.deepEqual(r.handle.repeater.listeners().map((l) => l.address), [`127.0.0.1:${p1}`]);
  });

  test('narrowing the allow-list on reload evicts subscribers outside it', async () => {
    const p1 = await freePort();
    const r = await repeater(['--listen', `127.0.0.1:${p1}`, '--allow', '127.0.0.0/8']);
    const rx = await receiver('127.0.0.1');
    await subscribe(r, rx, 'ssl', p1);
    assert.equal(await r.reload(['--listen', `127.0.0.1:${p1}`, '--allow', '127.0.0.2/32']), true);
    await r.tap.waitFor('subscriber evicted: the new config refuses its address', { address: rx.address });
  });
});

// Warm joins over real loopback sockets, with an in-process repeater: what a
// new subscriber receives (plain and sealed, through an agent), what it does
// not (deleted, expired, evicted), the rules of a join (one per subscriber,
// ended when the subscriber goes, current values only), the shared rates
// held against the clock, what a spoofed subscription can buy (the source
// rule, unsubscribes, one live state per address and cooldown), reloads, the
// cluster hook and the live state file.

import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { LIVE_STATE_FILE } from '../src/daemon/live-store.js';
import { subscribersView } from '../src/daemon/serve.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { DropSlot } from '../src/base/stats.js';
import { ENTRY_OVERHEAD } from '../src/path/live-state.js';
import type { Channel } from '../src/path/channel.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { decodeLiveState, encodeLiveState } from '../src/wire/live-state-file.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { newKeyFile } from './helpers/keys.js';
import { eventually, freePort, type Receiver, Sender, traceOf } from './helpers/net.js';
import { configOf, startRepeater, type TestRepeater } from './helpers/repeater.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const receiver = () => scope.receiver();
const repeater = (args: string[]) => scope.repeater(args);

before(() => sodiumReady());

const nowSec = () => Math.floor(Date.now() / 1000);
const set = (k: string, v: string, expires = 0) => encodeCacheSet(Buffer.from(k), Buffer.from(v), expires);
const del = (k: string) => encodeCacheDelete(Buffer.from(k), false);
const sub = (address: string, unsubscribe = false) => encodeSubscription({ key: 'ssl', address, unsubscribe });

function channel(r: TestRepeater): Channel {
  return [...r.handle.repeater.channels.values()][0]!;
}

/** Subscribes `rx` and waits for the repeater's "subscribed" (or "refreshed") line. */
async function subscribe(r: TestRepeater, rx: Receiver, msg = 'subscribed'): Promise<void> {
  const from = r.tap.length;
  await sender.send(sub(rx.address), r.port());
  await r.tap.waitFor(msg, { address: rx.address }, { from });
}

/** Sends every datagram, then waits until the repeater accepted `n` in all (so the live state has them). */
async function feed(r: TestRepeater, msgs: Buffer[], accepted: number): Promise<void> {
  for (const m of msgs) await sender.send(m, r.port());
  await eventually(`${accepted} datagrams accepted`, () => (channel(r).stats.accepted >= accepted ? true : undefined));
}

/** key -> value of every set a receiver got, the last one winning (what a uWSGI cache would hold). */
function cacheOf(datagrams: Buffer[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const d of datagrams) {
    if (d[0] !== 111) continue;
    const klen = d.readUInt16LE(4);
    const key = d.toString('latin1', 6, 6 + klen);
    if (d[3] === 11) {
      out.delete(key);
      continue;
    }
    const vlen = d.readUInt16LE(6 + klen);
    out.set(key, d.toString('latin1', 8 + klen, 8 + klen + vlen));
  }
  return out;
}

const keysOf = (datagrams: Buffer[]) => datagrams.map((d) => d.toString('latin1', 6, 6 + d.readUInt16LE(4)));

describe('warm join, plain subscribers', () => {
  test('a new subscriber receives the latest set of every live key once, traced here, and nothing deleted or expired', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const soon = nowSec() + 1;
    const msgs: Buffer[] = [];
    for (let i = 0; i < 60; i++) msgs.push(set(`k${i}`, `v${i}`));
    for (let i = 0; i < 10; i++) msgs.push(set(`k${i}`, `new${i}`)); // overwritten
    for (let i = 10; i < 20; i++) msgs.push(del(`k${i}`)); // deleted, as uWSGI sends it
    for (let i = 20; i < 30; i++) msgs.push(set(`k${i}`, `short${i}`, soon)); // expire within 2 s
    msgs.push(set('dead', 'on-arrival', nowSec() - 10)); // already expired
    await feed(r, msgs, msgs.length);
    const state = r.handle.repeater.warm.state(channel(r).name)!;
    // Waits for the repeater's own sweep, not for a clock.
    await eventually('the short-lived entries to expire', () => (state.expired === 11 ? true : undefined), 5000);

    const rx = await receiver();
    await subscribe(r, rx);
    const done = await r.tap.waitFor('warm join completed', { address: rx.address });
    assert.equal(done['sent'], 40);
    const got = await rx.waitFor(40);
    const want = new Map<string, string>();
    for (let i = 0; i < 60; i++) if (i >= 30 || i < 10) want.set(`k${i}`, i < 10 ? `new${i}` : `v${i}`);
    assert.deepEqual(cacheOf(got), want);
    assert.equal(new Set(keysOf(got)).size, 40, 'each key once');
    const self = r.handle.repeater.loops.self;
    for (const raw of rx.raw) assert.equal(traceOf(raw)?.ingress, self, 'every warm datagram carries a trace stamped by this repeater');
    // Oldest first: the untouched keys, then the overwritten ones in the order they were set again.
    assert.deepEqual(keysOf(got).slice(-10), Array.from({ length: 10 }, (_, i) => `k${i}`));
    const stats = r.handle.repeater.warm.statsOf(channel(r).name)!;
    assert.equal(stats.datagrams, 40);
    assert.equal(stats.completed, 1);
    assert.equal(channel(r).stats.forwarded, 0, 'warm datagrams are not counted as forwarded copies');
  });

  test('a refresh is not new; a join ends when its subscriber unsubscribes, and is never run twice for one subscriber', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-rate', '200']);
    const msgs = Array.from({ length: 400 }, (_, i) => set(`k${i}`, 'v'));
    await feed(r, msgs, msgs.length);
    const rx = await receiver();
    const name = channel(r).name;
    const warm = r.handle.repeater.warm;

    await subscribe(r, rx);
    await rx.waitFor(10);
    await subscribe(r, rx, 'refreshed');
    assert.equal(warm.statsOf(name)!.started, 1, 'a refresh starts nothing');
    assert.equal(warm.activeIn(name), 1);
    // /subscribers shows the join in progress.
    const view = subscribersView(r.handle.repeater) as Array<{ address: string; warmJoin: { sent: number; total: number } | null }>;
    const mine = view.find((v) => v.address === rx.address)!;
    assert.ok(mine.warmJoin !== null && mine.warmJoin.total === 400 && mine.warmJoin.sent >= 10 && mine.warmJoin.sent < 400, JSON.stringify(mine.warmJoin));

    // A goodbye and a hello in a row: the first join ends, one new join runs.
    let from = r.tap.length;
    await sender.send(sub(rx.address, true), r.port());
    await sender.send(sub(rx.address), r.port());
    await r.tap.waitFor('subscribed', { address: rx.address }, { from });
    // Ended by the pump ("subscriber gone") or by the new subscription, whichever came first.
    await r.tap.waitFor('warm join ended', { address: rx.address }, { from });
    assert.equal(warm.activeIn(name), 1, 'never two joins for one subscriber');
    assert.equal(warm.statsOf(name)!.started, 2);

    // An unsubscribe ends it for good: nothing more arrives once it is logged.
    from = r.tap.length;
    await sender.send(sub(rx.address, true), r.port());
    await r.tap.waitFor('warm join ended', { address: rx.address }, { from });
    assert.equal(warm.activeIn(name), 0);
    const seen = rx.received.length;
    assert.ok(seen < 800);
    const probe = Buffer.from('probe');
    await sender.send(probe, rx.port);
    const after = await rx.waitFor(seen + 1);
    assert.deepEqual(after[seen], probe, 'a warm datagram arrived after the join ended');
    assert.equal(warm.statsOf(name)!.completed, 0);
  });

  test('a key set again during the join ends with its new value, sent once on the live path', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-rate', '100']);
    const msgs = Array.from({ length: 200 }, (_, i) => set(`k${i}`, 'old'));
    await feed(r, msgs, msgs.length);
    const rx = await receiver();
    await subscribe(r, rx);
    await rx.waitFor(20);
    // k0 was sent already; k199 is last in the walk and not sent yet.
    await sender.send(set('k0', 'new'), r.port());
    await sender.send(set('k199', 'new'), r.port());
    const done = await r.tap.waitFor('warm join completed', { address: rx.address });
    // A probe straight to the receiver queues behind everything sent to it before: then all has arrived.
    await sender.send(Buffer.from('probe'), rx.port);
    const all = await rx.waitFor(Number(done['sent']) + 3);
    assert.deepEqual(all.at(-1), Buffer.from('probe'), 'nothing but the warm and the two live datagrams');
    const got = all.slice(0, -1);
    const cache = cacheOf(got);
    assert.equal(cache.get('k0'), 'new');
    assert.equal(cache.get('k199'), 'new');
    assert.equal(keysOf(got).filter((k) => k === 'k199').length, 1, 'the join skipped the key the live path had delivered');
    assert.equal(cache.size, 200);
  });

  // Three joins at once, toward three addresses, each announced from its own
  // address. Every arrival is held against the bound: by `t` ms after the
  // subscriptions left, the repeater cannot have sent more than the rate
  // times t, plus one burst (5 ms of the rate) and one datagram of debt. A
  // late arrival only loosens the bound; a join with a rate of its own (three
  // times the rate together), or bytes not counted, passes it within 0.2 s.
  for (const c of [
    { what: 'bytes', flag: '--warm-byte-rate', rate: 300_000, value: 1000, measure: (d: Buffer) => d.length },
    { what: 'datagrams', flag: '--warm-rate', rate: 300, value: 10, measure: () => 1 },
  ]) {
    test(`the rate is shared and binding (${c.what}): three joins together never send more than ${c.flag} ${c.rate} per second`, async () => {
      const r = await repeater(['--listen', '127.0.0.1:0', c.flag, String(c.rate)]);
      const n = 100;
      await feed(r, Array.from({ length: n }, (_, i) => set(`k${String(i).padStart(3, '0')}`, 'x'.repeat(c.value))), n);
      const hosts = ['127.0.0.21', '127.0.0.22', '127.0.0.23'];
      const rxs = await Promise.all(hosts.map((h) => scope.receiver(h)));
      const from = await Promise.all(hosts.map(async (h) => scope.track(await Sender.bound(h))));
      const largest = set('k000', 'x'.repeat(c.value)).length + 26;
      const slack = c.rate * 0.005 + 2 * c.measure(Buffer.alloc(largest));
      let total = 0;
      let worst = -Infinity;
      const t0 = performance.now();
      for (const rx of rxs) {
        rx.socket.on('message', (m: Buffer) => {
          total += c.measure(m);
          worst = Math.max(worst, total - ((c.rate * (performance.now() - t0)) / 1000 + slack));
        });
      }
      const mark = r.tap.length;
      await Promise.all(rxs.map((rx, i) => from[i]!.send(sub(rx.address), r.port())));
      await r.tap.waitFor('warm join completed', {}, { from: mark, count: 3, ms: 10_000 });
      for (const rx of rxs) assert.equal(new Set(keysOf(await rx.waitFor(n))).size, n, `${rx.address}: every entry`);
      const ms = performance.now() - t0;
      assert.equal(r.handle.repeater.warm.statsOf(channel(r).name)!.datagrams, 3 * n);
      assert.ok(worst <= 0, `${c.what}: ${Math.round(worst)} more than the rate allows at some point (${total} in ${Math.round(ms)} ms)`);
      // Sent at the rate, not slower than a fifth of it: the pacing keeps them all going.
      assert.ok(total <= (c.rate * ms) / 1000 + slack && total >= (c.rate * ms) / 5000, `${total} ${c.what} in ${Math.round(ms)} ms`);
    });
  }

  test('--state-max-bytes: the oldest entries are evicted first and counted; a new subscriber gets the newest', async () => {
    const one = set('k00', 'v').length + 3 + ENTRY_OVERHEAD;
    const r = await repeater(['--listen', '127.0.0.1:0', '--state-max-bytes', String(5 * one)]);
    const msgs = Array.from({ length: 20 }, (_, i) => set(`k${String(i).padStart(2, '0')}`, 'v'));
    await feed(r, msgs, msgs.length);
    const state = r.handle.repeater.warm.state(channel(r).name)!;
    assert.equal(state.size, 5);
    assert.equal(state.evictions, 15);
    const rx = await receiver();
    await subscribe(r, rx);
    await r.tap.waitFor('warm join completed', { address: rx.address });
    assert.deepEqual(keysOf(await rx.waitFor(5)), ['k15', 'k16', 'k17', 'k18', 'k19']);
  });

  test('--no-warm-join keeps no state and sends nothing; a reload turns it on and off', async () => {
    const args = ['--listen', '127.0.0.1:0', '--no-warm-join'];
    const r = await repeater(args);
    await feed(r, [set('a', '1')], 1);
    assert.equal(r.handle.repeater.warm.state(channel(r).name), undefined);
    const rx = await receiver();
    await subscribe(r, rx);
    assert.ok(await r.reload(['--listen', '127.0.0.1:0', '--warm-rate', '50']));
    await feed(r, Array.from({ length: 100 }, (_, i) => set(`k${i}`, 'v')), 101);
    const late = await receiver();
    await subscribe(r, late);
    await r.tap.waitFor('warm join started', { address: late.address, entries: 100 });
    await late.waitFor(5);
    // Turned off mid-join: the join ends and the secrets are dropped.
    assert.ok(await r.reload(['--listen', '127.0.0.1:0', '--no-warm-join']));
    await r.tap.waitFor('warm join ended', { address: late.address, reason: 'warm joins turned off' });
    assert.equal(r.handle.repeater.warm.state(channel(r).name), undefined);
    assert.equal(r.handle.repeater.warm.activeIn(channel(r).name), 0);
    // The first subscriber got only the live copies; the second a part of the state at most.
    assert.equal(rx.received.length, 100);
    assert.ok(late.received.length < 100);
  });

  test('a subscriber brought back from a suspension by its announce is warmed again', async () => {
    const port = await freePort();
    const r = await repeater(['--listen', '127.0.0.1:0', '--dead-after', '3', '--dead-retry', '600']);
    await feed(r, Array.from({ length: 50 }, (_, i) => set(`k${i}`, 'v')), 50);
    const address = `127.0.0.1:${port}`;
    let from = r.tap.length;
    await sender.send(sub(address), r.port());
    await r.tap.waitFor('subscribed', { address }, { from });
    // Nobody listens there: the warm datagrams meet ICMP port unreachable until it is suspended.
    await r.tap.waitFor('subscriber suspended: unreachable', { address });
    const back = await scope.receiver('127.0.0.1', port);
    from = r.tap.length;
    await sender.send(sub(address), r.port());
    await r.tap.waitFor('refreshed', { address }, { from });
    await r.tap.waitFor('warm join completed', { address }, { from });
    const got = await back.waitFor(50);
    assert.equal(new Set(keysOf(got)).size, 50);
  });

  test('a join whose datagrams met a closed port starts over once the port is open (uWSGI announces before it listens)', async () => {
    const port = await freePort();
    const r = await repeater(['--listen', '127.0.0.1:0', '--dead-after', '1000', '--warm-rate', '1000']);
    await feed(r, Array.from({ length: 100 }, (_, i) => set(`k${i}`, 'v')), 100);
    const address = `127.0.0.1:${port}`;
    const from = r.tap.length;
    await sender.send(sub(address), r.port());
    await r.tap.waitFor('subscribed', { address }, { from });
    // Nothing listens yet: the first warm datagrams are answered with ICMP port unreachable.
    await eventually('an ICMP answer charged to the subscriber', () => ((channel(r).find(address)?.strikes ?? 0) > 0 ? true : undefined));
    const rx = await scope.receiver('127.0.0.1', port);
    await r.tap.waitFor('warm join restarted', { address, reason: 'datagrams met a closed port' }, { from });
    const done = await r.tap.waitFor('warm join completed', { address }, { from, ms: 10_000 });
    // What met the closed port was sent again (resent), the rest once.
    assert.ok(Number(done['resent']) > 0);
    assert.equal(Number(done['sent']) - Number(done['resent']), 100);
    // A probe straight to the receiver queues behind everything sent to it before.
    await sender.send(Buffer.from('probe'), rx.port);
    await eventually('the probe', () => (rx.received.some((d) => d.toString() === 'probe') ? true : undefined));
    const got = rx.received.filter((d) => d.toString() !== 'probe');
    assert.equal(new Set(keysOf(got)).size, 100, 'every entry arrived once the port was open');
  });

  test('the cluster hook: updates applied from elsewhere reach the state, and a new subscriber', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    const warm = r.handle.repeater.warm;
    const name = channel(r).name;
    assert.equal(warm.applyUpdate(name, set('remote', 'x')), 'set');
    assert.equal(warm.applyUpdate(name, set('gone', 'x')), 'set');
    assert.equal(warm.applyUpdate(name, del('gone')), 'deleted');
    assert.equal(warm.applyUpdate(name, Buffer.from('junk')), 'size_mismatch');
    assert.equal(warm.applyUpdate('nope', set('a', 'b')), 'no_state');
    const rx = await receiver();
    await subscribe(r, rx);
    assert.deepEqual(cacheOf(await rx.waitFor(1)), new Map([['remote', 'x']]));
  });
});

describe('warm join, plain subscribers: what a spoofed subscription can buy', () => {
  /** A receiver on `host`, and a sender bound to the same address (as uWSGI announces from its own host). */
  async function nodeAt(host: string, port?: number): Promise<{ rx: Receiver; from: Sender }> {
    return { rx: await scope.receiver(host, port), from: scope.track(await Sender.bound(host)) };
  }
  async function announce(r: TestRepeater, from: Sender, address: string, msg: string, unsubscribe = false): Promise<Record<string, unknown>> {
    const mark = r.tap.length;
    await from.send(sub(address, unsubscribe), r.port());
    return r.tap.waitFor(msg, { address }, { from: mark });
  }

  test('a subscription from another address starts no join; the first announce from the address itself does; warm-any-source waives the rule', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0']);
    await feed(r, Array.from({ length: 20 }, (_, i) => set(`k${i}`, 'v')), 20);
    const node = await nodeAt('127.0.0.31');
    const other = scope.track(await Sender.bound('127.0.0.32'));
    const warm = r.handle.repeater.warm;
    const stats = warm.statsOf(channel(r).name)!;
    const refused = await announce(r, other, node.rx.address, 'warm join not started');
    assert.equal(refused['reason'], 'the subscription did not come from the address it names');
    assert.equal(warm.activeIn(channel(r).name), 0);
    assert.deepEqual([stats.started, stats.refused], [0, 1]);
    // It is subscribed all the same: live copies reach it.
    await sender.send(set('live', '1'), r.port());
    assert.deepEqual(keysOf(await node.rx.waitFor(1)), ['live']);
    // Its own address announces it: a refresh, but its first warm join.
    await announce(r, node.from, node.rx.address, 'refreshed');
    const done = await r.tap.waitFor('warm join completed', { address: node.rx.address });
    assert.equal(done['sent'], 21, 'the whole state (what it got live included: no join had sent it anything)');
    assert.equal(stats.started, 1);

    // A listener for nodes behind NAT: warmed whatever the source.
    const nat = await repeater(['--listen', '127.0.0.1:0,warm-any-source']);
    await feed(nat, Array.from({ length: 5 }, (_, i) => set(`n${i}`, 'v')), 5);
    const behind = await scope.receiver('127.0.0.33');
    await announce(nat, other, behind.address, 'subscribed');
    assert.equal((await nat.tap.waitFor('warm join completed', { address: behind.address }))['sent'], 5);
  });

  test('a plain unsubscribe is believed only from the address it names or the source that announced it; a refresh from elsewhere does not change that', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0,warm-any-source']);
    const node = await nodeAt('127.0.0.41');
    const gateway = scope.track(await Sender.bound('127.0.0.42')); // the NAT address it announces through
    const third = scope.track(await Sender.bound('127.0.0.43'));
    const ch = channel(r);
    await announce(r, gateway, node.rx.address, 'subscribed');
    await announce(r, third, node.rx.address, 'refreshed');
    const mark = r.tap.length;
    await third.send(sub(node.rx.address, true), r.port());
    await r.tap.waitFor('subscription refused', { reason: 'foreign_unsubscribe', source: '127.0.0.43' }, { from: mark });
    assert.equal(ch.stats.dropped[DropSlot.foreign_unsubscribe], 1);
    assert.equal(ch.find(node.rx.address)?.source, '127.0.0.42', 'a refresh from a third address did not make it the source');
    await announce(r, gateway, node.rx.address, 'unsubscribed', true);
    await announce(r, third, node.rx.address, 'subscribed');
    await announce(r, node.from, node.rx.address, 'unsubscribed', true);
    assert.equal(ch.find(node.rx.address), undefined);
  });

  test('a join cut short comes back where it stopped: unsubscribed, subscribed again and from another port, the address gets each entry once', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-rate', '100']);
    await feed(r, Array.from({ length: 60 }, (_, i) => set(`k${String(i).padStart(2, '0')}`, 'v')), 60);
    const a = await nodeAt('127.0.0.51');
    const b = await scope.receiver('127.0.0.51');
    await announce(r, a.from, a.rx.address, 'subscribed');
    await a.rx.waitFor(10);
    await announce(r, a.from, a.rx.address, 'warm join ended', true);
    const again = await announce(r, a.from, a.rx.address, 'warm join started');
    assert.equal(again['resumed'], true);
    assert.ok(Number(again['from']) > 0, 'it goes on from the mark');
    await a.rx.waitFor(a.rx.received.length + 5);
    // Another port of the same address, meanwhile: the two share what is left.
    await announce(r, a.from, b.address, 'warm join started');
    await r.tap.waitFor('warm join completed', { address: a.rx.address });
    await r.tap.waitFor('warm join completed', { address: b.address });
    for (const rx of [a.rx, b]) {
      await sender.send(Buffer.from('probe'), rx.port, '127.0.0.51');
      await eventually('the probe', () => (rx.received.some((d) => d.toString() === 'probe') ? true : undefined));
    }
    const keys = [...a.rx.received, ...b.received].filter((d) => d.toString() !== 'probe').map((d) => keysOf([d])[0]!);
    assert.equal(keys.length, 60, `the address got ${keys.length} datagrams for 60 entries`);
    assert.equal(new Set(keys).size, 60);
    assert.equal(r.handle.repeater.warm.statsOf(channel(r).name)!.resumed, 2);
  });

  test('back from a suspension by its announce: the join resumes with what it was not sent, never from the first entry', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--dead-after', '3', '--dead-retry', '600']);
    await feed(r, Array.from({ length: 50 }, (_, i) => set(`k${i}`, 'v')), 50);
    let node = await nodeAt('127.0.0.61');
    const port = node.rx.port;
    const address = node.rx.address;
    await announce(r, node.from, address, 'subscribed');
    await r.tap.waitFor('warm join completed', { address });
    assert.equal((await node.rx.waitFor(50)).length, 50);
    // The node goes away; live updates meet its closed port until it is suspended.
    node.rx.close();
    for (let i = 0; i < 5; i++) await sender.send(set(`new${i}`, 'v'), r.port());
    await r.tap.waitFor('subscriber suspended: unreachable', { address });
    node = { rx: await scope.receiver('127.0.0.61', port), from: node.from };
    const mark = r.tap.length;
    await node.from.send(sub(address), r.port());
    const started = await r.tap.waitFor('warm join started', { address }, { from: mark });
    assert.equal(started['resumed'], true);
    const done = await r.tap.waitFor('warm join completed', { address }, { from: mark });
    assert.equal(done['sent'], 5, 'only what it missed: the five sets it was suspended for');
    assert.deepEqual(new Set(keysOf(await node.rx.waitFor(5))), new Set(Array.from({ length: 5 }, (_, i) => `new${i}`)));
  });

  test('--warm-cooldown: past it the address gets a full join again; 0 gives every subscriber its own', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--warm-cooldown', '0.5']);
    await feed(r, Array.from({ length: 30 }, (_, i) => set(`k${i}`, 'v')), 30);
    const a = await nodeAt('127.0.0.71');
    const b = await scope.receiver('127.0.0.71');
    await announce(r, a.from, a.rx.address, 'subscribed');
    assert.equal((await r.tap.waitFor('warm join completed', { address: a.rx.address }))['sent'], 30);
    await announce(r, a.from, b.address, 'subscribed');
    assert.equal((await r.tap.waitFor('warm join completed', { address: b.address }))['sent'], 0, 'within the cooldown: nothing it was not sent');
    const first = Date.now();
    const c = await scope.receiver('127.0.0.71');
    await eventually('the cooldown to pass', () => (Date.now() - first > 600 ? true : undefined), 2000);
    await announce(r, a.from, c.address, 'subscribed');
    assert.equal((await r.tap.waitFor('warm join completed', { address: c.address }))['sent'], 30, 'past the cooldown: all of it');

    const off = await repeater(['--listen', '127.0.0.1:0', '--warm-cooldown', '0']);
    await feed(off, Array.from({ length: 30 }, (_, i) => set(`k${i}`, 'v')), 30);
    for (const rx of [a.rx, b]) {
      await announce(off, a.from, rx.address, 'subscribed');
      assert.equal((await off.tap.waitFor('warm join completed', { address: rx.address }))['sent'], 30);
    }
    assert.equal(off.handle.repeater.warm.destinations.size, 0);
  });

  test('the new flags are checked at start', () => {
    assert.throws(() => configOf(['--listen', '127.0.0.1:0', '--warm-byte-rate', '1000']), /--warm-byte-rate must be between 65536/);
    assert.throws(() => configOf(['--listen', '127.0.0.1:0', '--warm-cooldown', '100000']), /--warm-cooldown must be between 0 and 86400/);
    assert.throws(() => configOf(['--listen', '127.0.0.1:0,warm-any-source=yes']), /"warm-any-source" takes no value/);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:0,warm-any-source', '--key-file', newKeyFile()]), /unknown parameter "warm-any-source"/);
    const c = configOf(['--listen', '127.0.0.1:0,warm-any-source', '--listen', '127.0.0.1:1']);
    assert.deepEqual(c.listeners.map((l) => l.warmAnySource), [true, false]);
    assert.deepEqual([c.warm.byteRate, c.warm.cooldownMs], [25_000_000, 300_000]);
  });
});

describe('warm join, sealed subscribers', () => {
  test("an agent that starts is warmed: sealed frames to it alone, delivered to its node with the agent's repair", async () => {
    const k = newKeyFile();
    const plainPort = await freePort();
    const sealedPort = await freePort();
    const r = await repeater(['--listen', `127.0.0.1:${plainPort},channel=ssl`, '--listen-sealed', `127.0.0.1:${sealedPort},channel=ssl`, '--key-file', k]);
    const msgs = Array.from({ length: 30 }, (_, i) => set(`s${i}`, `secret${i}`));
    msgs.push(del('s0'));
    for (const m of msgs) await sender.send(m, plainPort);
    await eventually('accepted', () => (channel(r).stats.accepted >= 31 ? true : undefined));
    // A plain subscriber already there must get none of the warm datagrams.
    const bystander = await receiver();
    let from = r.tap.length;
    await sender.send(sub(bystander.address), plainPort);
    await r.tap.waitFor('warm join completed', { address: bystander.address }, { from });
    const seenBefore = (await bystander.waitFor(29)).length;

    const node = await receiver();
    const local = await freePort();
    from = r.tap.length;
    const agent = await scope.agent(['--repeater', `127.0.0.1:${sealedPort}`, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--key-file', k]);
    const subscribed = await r.tap.waitFor('subscribed', { form: 'sealed' }, { from });
    const done = await r.tap.waitFor('warm join completed', { address: subscribed['address'] }, { from });
    assert.equal(done['form'], 'sealed');
    assert.equal(done['sent'], 29);
    const got = await node.waitFor(29);
    assert.deepEqual(cacheOf(got), new Map(Array.from({ length: 29 }, (_, i) => [`s${i + 1}`, `secret${i + 1}`])));
    // Traced by the repeater, passed by the agent (hops 2).
    for (const raw of node.raw) assert.deepEqual([traceOf(raw)?.ingress, traceOf(raw)?.hops], [r.handle.repeater.loops.self, 2]);
    assert.equal(agent.handle.agent.toNode.forwarded, 29);
    assert.equal(bystander.received.length, seenBefore, 'the sealed join went to its one subscriber only');

    // SIGUSR1's path: the agent announces as new, and the node is warmed again.
    from = r.tap.length;
    agent.handle.agent.rejoin();
    await r.tap.waitFor('unsubscribed', { address: subscribed['address'] }, { from });
    await r.tap.waitFor('warm join completed', { address: subscribed['address'] }, { from });
    assert.equal((await node.waitFor(58)).length, 58);
  });
});

describe('the live state file', () => {
  const stateDir = () => mkdtempSync(join(tmpdir(), 'udprepeater-live-'));

  test('--save-live-state needs --state-dir', () => {
    assert.throws(() => configOf(['--listen', '127.0.0.1:0', '--save-live-state']), /--save-live-state needs --state-dir/);
  });

  test('written at stop with mode 0600, read back at start and deleted; a new subscriber is warm at once', async () => {
    const dir = stateDir();
    const port = await freePort();
    const args = ['--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--save-live-state'];
    const first = await startRepeater(args);
    for (const m of [set('a', '1'), set('b', '2', nowSec() + 3600), set('c', '3'), del('c')]) await sender.send(m, port);
    await eventually('accepted', () => ([...first.handle.repeater.channels.values()][0]!.stats.accepted >= 4 ? true : undefined));
    await first.close();
    const file = join(dir, LIVE_STATE_FILE);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const saved = decodeLiveState(readFileSync(file))!;
    assert.deepEqual(saved.channels.map((c) => [c.channel, c.sets.length]), [[`127.0.0.1:${port}`, 2]]);

    const second = await repeater(args);
    await second.tap.waitFor('restored the live state', { restored: 2 });
    assert.equal(existsSync(file), false, 'consumed at start: a later crash cannot bring back an old state');
    const rx = await receiver();
    await subscribe(second, rx);
    assert.deepEqual(cacheOf(await rx.waitFor(2)), new Map([['a', '1'], ['b', '2']]));
  });

  test('refused unread when group or others can read it, when it is too old, and deleted when saving is off', async () => {
    const dir = stateDir();
    const port = await freePort();
    const file = join(dir, LIVE_STATE_FILE);
    const channelName = `127.0.0.1:${port}`;
    const write = (savedAtMs: number, mode: number) => {
      writeFileSync(file, encodeLiveState({ savedAtMs, channels: [{ channel: channelName, sets: [set('leak', 'x')] }] }), { mode });
      chmodSync(file, mode);
    };
    const cases: Array<{ savedAtMs: number; mode: number; save: boolean; line: string }> = [
      { savedAtMs: Date.now(), mode: 0o644, save: true, line: 'saved live state deleted unread' },
      { savedAtMs: Date.now() - 6 * 60_000, mode: 0o600, save: true, line: 'saved live state refused: written too long ago (or in the future)' },
      { savedAtMs: Date.now() + 3_600_000, mode: 0o600, save: true, line: 'saved live state refused: written too long ago (or in the future)' },
      { savedAtMs: Date.now(), mode: 0o600, save: false, line: 'saved live state deleted unread' },
    ];
    for (const c of cases) {
      write(c.savedAtMs, c.mode);
      const r = await startRepeater(['--listen', channelName, '--state-dir', dir, ...(c.save ? ['--save-live-state'] : [])]);
      try {
        await r.tap.waitFor(c.line);
        assert.equal(existsSync(file), false, `${c.line}: the file is gone`);
        assert.equal(r.handle.repeater.warm.state(channelName)!.size, 0);
      } finally {
        await r.close();
      }
    }
  });

  test('each saved set is checked as if it came from the network: foreign channels, garbage, traces and deletes are skipped', async () => {
    const dir = stateDir();
    const port = await freePort();
    const channelName = `127.0.0.1:${port}`;
    const good = set('good', 'v');
    const expired = set('expired', 'v', nowSec() - 5);
    const traced = Buffer.concat([good.subarray(0, 1), Buffer.from([0, 0]), good.subarray(3)]);
    writeFileSync(
      join(dir, LIVE_STATE_FILE),
      encodeLiveState({
        savedAtMs: Date.now(),
        channels: [
          { channel: channelName, sets: [good, expired, del('good'), Buffer.from('garbage'), traced] },
          { channel: 'no-such-channel', sets: [set('x', 'y')] },
        ],
      }),
      { mode: 0o600 },
    );
    const r = await repeater(['--listen', channelName, '--state-dir', dir, '--save-live-state']);
    const line = await r.tap.waitFor('restored the live state');
    assert.equal(line['restored'], 1);
    assert.deepEqual(line['skipped'], { expired: 1, 'not a set without trace': 1, size_mismatch: 2, 'no such channel': 1 });
    assert.equal(r.handle.repeater.warm.state(channelName)!.size, 1);
  });
});

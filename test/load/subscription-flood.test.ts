// Load: a flood of subscriptions for 25,000 distinct addresses (10% outside
// the allow-list). The registry stays at its cap with every refusal counted,
// memory stays bounded, and subscribers already registered keep receiving
// every datagram throughout.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { EscapeTrap, ledgerOf, mb, MB, nonZero, udpDrops } from '../helpers/adversarial.js';
import { Scope } from '../helpers/scope.js';
import type { TestRepeater } from '../helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const trap = new EscapeTrap();
const only = (r: TestRepeater) => [...r.handle.repeater.channels.values()][0]!;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);
const gc = (globalThis as { gc?: () => void }).gc;

function memory(): { heap: number; rss: number } {
  gc?.();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, rss: m.rss };
}

describe('subscription floods', () => {
  test('25,000 distinct addresses (10% outside the allow-list): the registry holds at --max-subscribers, refusals are counted, memory stays bounded, live subscribers miss nothing', async () => {
    const CAP = 1000;
    const FLOOD = Number(process.env["FLOOD"] ?? 25_000);
    const r = await repeater(['--listen', '127.0.0.1:0', '--max-subscribers', String(CAP), '--subscribe-rate', '1000000', '--subscribe-burst', '1000000', '--tolerance', '300', '--log-level', 'info']);
    const port = r.port();
    const ch = only(r);
    const live = await Promise.all([1, 2, 3, 4].map(() => receiver()));
    for (const rx of live) {
      await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), port);
      await r.tap.waitFor('subscribed', { address: rx.address });
    }
    const kernelBefore = udpDrops([port, ...live.map((rx) => rx.port)]);
    let markers = 0;
    let outside = 0;
    let inside = 0;
    let atCap: { heap: number; rss: number } | null = null;
    const samples: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < FLOOD; i++) {
      // Distinct (address, port) pairs; every tenth names a host outside 127.0.0.0/8.
      const host = i % 10 === 9 ? `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` : `127.77.${(i >> 8) & 255}.${1 + (i % 250)}`;
      if (i % 10 === 9) outside++;
      else inside++;
      void sender.send(encodeSubscription({ key: 'ssl', address: `${host}:${10_000 + (i % 50_000)}` }), port);
      if (i % 500 === 499) {
        // A datagram between the subscriptions: every live subscriber must get it, in order.
        await sender.send(set(`during-${++markers}`), port);
        for (const rx of live) await rx.waitFor(markers);
        if (atCap === null && ch.plain.dynamicSize >= CAP) atCap = memory();
        if (atCap !== null) samples.push(memory().heap);
        // A live subscriber re-announces while the registry is full: a refresh, not a refusal.
        if (markers % 10 === 0) {
          await sender.send(encodeSubscription({ key: 'ssl', address: live[markers % live.length]!.address }), port);
          await sender.send(set(`refresh-${markers}`), port);
          markers++;
          for (const rx of live) await rx.waitFor(markers);
        }
      }
    }
    await sender.send(set('last'), port);
    markers++;
    for (const rx of live) await rx.waitFor(markers);
    const seconds = (performance.now() - t0) / 1000;
    const end = memory();
    const l = ledgerOf(ch.stats);
    const refreshes = Math.floor(FLOOD / 500 / 10);
    const report = {
      flood: FLOOD,
      seconds: Number(seconds.toFixed(2)),
      registry: ch.size,
      dropped: nonZero(l.dropped),
      events: nonZero(l.events),
      heapAtCap: atCap && mb(atCap.heap),
      heapAtEnd: mb(end.heap),
      rssAtCap: atCap && mb(atCap.rss),
      rssAtEnd: mb(end.rss),
      gcForced: gc !== undefined,
    };
    console.log(JSON.stringify(report));
    trap.check();
    assert.equal(udpDrops([port, ...live.map((rx) => rx.port)]) - kernelBefore, 0, 'kernel drops at our sockets: the flood was not all read');
    assert.equal(ch.size, CAP, 'the registry is not at its cap');
    assert.equal(ch.plain.dynamicSize, CAP);
    for (const rx of live) assert.ok(ch.find(rx.address) !== undefined, `live subscriber ${rx.address} was pushed out`);
    assert.equal(l.events['subscribe'], CAP);
    assert.equal(l.dropped['address_not_allowed'], outside);
    assert.equal(l.dropped['registry_full'], inside - (CAP - live.length));
    assert.equal(l.dropped['rate_limited'], 0);
    assert.equal(l.events['refresh'], refreshes);
    assert.equal(l.events['reject'], outside + inside - (CAP - live.length));
    // Every live subscriber got every datagram, in order.
    for (const rx of live) {
      const keys = rx.received.map((d) => d.subarray(6, 6 + d.readUInt16LE(4)).toString());
      assert.equal(keys.length, markers);
      assert.equal(keys[keys.length - 1], 'last');
      assert.equal(new Set(keys).size, markers, 'duplicates');
    }
    // Memory: refused subscriptions must not accumulate anything.
    assert.ok(atCap !== null);
    const heapGrowth = end.heap - atCap.heap;
    const bound = gc !== undefined ? 8 * MB : 48 * MB;
    assert.ok(heapGrowth < bound, `heap grew ${mb(heapGrowth)} while ${FLOOD - CAP} subscriptions were refused (bound ${mb(bound)})`);
    assert.ok(end.rss - atCap.rss < 96 * MB, `RSS grew ${mb(end.rss - atCap.rss)} after the cap`);
  });

});

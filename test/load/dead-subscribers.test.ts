// Load: 300 subscribers die at once (their ports answer ICMP unreachable).
// They are suspended within a few datagrams and then cost no sends, and the
// live subscriber loses nothing. Timings are printed, never asserted.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { EscapeTrap } from '../helpers/adversarial.js';
import { Receiver } from '../helpers/net.js';
import { Scope } from '../helpers/scope.js';
import type { TestRepeater } from '../helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const trap = new EscapeTrap();
before(() => sodiumReady());
const only = (r: TestRepeater) => [...r.handle.repeater.channels.values()][0]!;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');

async function subscribeAll(r: TestRepeater, addresses: string[]): Promise<void> {
  for (const a of addresses) {
    const from = r.tap.length;
    await sender.send(encodeSubscription({ key: 'ssl', address: a }), r.port());
    await r.tap.waitFor('subscribed', { address: a }, { from });
  }
}

/** Ports that were bound a moment ago and are closed now: subscribers that are gone. */
async function deadAddresses(n: number): Promise<string[]> {
  const rs = await Promise.all(Array.from({ length: n }, () => Receiver.open()));
  const out = rs.map((r) => r.address);
  for (const r of rs) r.close();
  return out;
}

describe('subscribers that die, at scale', () => {
  test('300 dead subscribers at once do not slow delivery to a live one', async () => {
    const r = await repeater(['--listen', '127.0.0.1:0', '--dead-after', '3', '--dead-retry', '600', '--subscribe-burst', '1000']);
    const live = await receiver();
    await subscribeAll(r, [live.address]);
    const N = 3000;
    const WINDOW = 100;
    let sent = 0;
    const deliver = async (n: number): Promise<number> => {
      const t = performance.now();
      for (let i = 0; i < n; i += WINDOW) {
        for (let j = 0; j < WINDOW; j++) void sender.send(set(`d${sent++}`), r.port());
        await live.waitFor(sent);
      }
      return performance.now() - t;
    };
    await deliver(WINDOW); // warm-up
    const baseline = await deliver(N);
    const dead = await deadAddresses(300);
    await subscribeAll(r, dead);
    const ch = only(r);
    // The first datagrams reach the dead ones too; they are suspended within a few.
    let untilSuspended = 0;
    while (dead.some((a) => ch.find(a)!.suspendedUntil === 0)) {
      assert.ok(untilSuspended < 200, `not all dead subscribers suspended after ${untilSuspended} datagrams`);
      await sender.send(set(`d${sent++}`), r.port());
      await live.waitFor(sent);
      untilSuspended++;
    }
    const costBefore = dead.reduce((n, a) => n + ch.find(a)!.outlet.sent + ch.find(a)!.outlet.errors, 0);
    const withDead = await deliver(N);
    const costAfter = dead.reduce((n, a) => n + ch.find(a)!.outlet.sent + ch.find(a)!.outlet.errors, 0);
    console.log(JSON.stringify({ live: 1, dead: dead.length, datagrams: N, baselineMs: Math.round(baseline), withDeadMs: Math.round(withDead), datagramsUntilAllSuspended: untilSuspended }));
    assert.deepEqual(live.received.map(keyOf), Array.from({ length: sent }, (_, i) => `d${i}`), 'the live subscriber lost or reordered datagrams');
    // The behaviour under test: suspended subscribers cost no sends at all. The
    // timings are printed for the record, not asserted (speed belongs to bench/).
    assert.equal(costAfter, costBefore, 'suspended subscribers still cost sends');
    trap.check();
  });
});

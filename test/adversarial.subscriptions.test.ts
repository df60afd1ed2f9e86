// Subscription abuse: sources that exceed their rate are cut to their burst,
// every refusal counted, other sources unaffected. (Floods of distinct
// addresses: test/load/subscription-flood.test.ts.)

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { EscapeTrap, ledgerOf, nonZero, until } from './helpers/adversarial.js';
import { Sender } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import type { TestRepeater } from './helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const trap = new EscapeTrap();
const only = (r: TestRepeater) => [...r.handle.repeater.channels.values()][0]!;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);

describe('subscription floods', () => {
  test('the per-source rate limit: exactly --subscribe-burst announces per source pass, the rest are counted as rate_limited, other sources are unaffected', async () => {
    const BURST = 25;
    const r = await repeater(['--listen', '127.0.0.1:0', '--subscribe-rate', '0.01', '--subscribe-burst', String(BURST), '--max-subscribers', '10000', '--log-level', 'info']);
    const port = r.port();
    const ref = await receiver();
    const sources = await Promise.all(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5'].map((h) => Sender.bound(h)));
    for (const s of sources) scope.track(s);
    const PER_SOURCE = 120;
    // The first announce of the test sender subscribes the reference subscriber.
    await sender.send(encodeSubscription({ key: 'ssl', address: ref.address }), port);
    await r.tap.waitFor('subscribed', { address: ref.address });
    for (let i = 0; i < 300; i++) void sender.send(encodeSubscription({ key: 'ssl', address: `127.88.0.${1 + (i % 250)}:${20_000 + i}` }), port);
    for (const [n, s] of sources.entries()) {
      for (let i = 0; i < PER_SOURCE; i++) void s.send(encodeSubscription({ key: 'ssl', address: `127.89.${n}.${1 + (i % 250)}:${20_000 + i}` }), port);
    }
    await sender.send(set('marker'), port);
    // The sources' datagrams arrive on the same socket; once the marker is out, the earlier ones from
    // this sender have been judged; the other sources are polled through the counters.
    assert.deepEqual(await ref.waitFor(1), [set('marker')]);
    const ch = only(r);
    const total = 1 + 300 + sources.length * PER_SOURCE;
    await until('every announce to be read', () => ledgerOf(ch.stats).received >= total + 1);
    const l = ledgerOf(ch.stats);
    console.log(JSON.stringify({ sources: 1 + sources.length, announces: total, events: nonZero(l.events), dropped: nonZero(l.dropped) }));
    assert.equal(l.received, total + 1, 'not every announce was read');
    assert.equal(l.events['subscribe'], BURST * (1 + sources.length));
    assert.equal(l.dropped['rate_limited'], total - BURST * (1 + sources.length));
    assert.equal(ch.size, BURST * (1 + sources.length));
    // Rate-limited or not, the data path is untouched.
    await sender.send(set('after'), port);
    assert.deepEqual(await ref.next(), set('after'));
    trap.check();
  });
});

// The two socket backends (native addon and node:dgram) behave alike: the
// same scenario run through each prints the same sources, counts the same
// drops and refusals, and refuses the same bad settings. Runs every backend
// this machine has (CI builds the addon, so both).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DROP_REASONS, EVENTS } from '../src/base/stats.js';
import type { Backend } from '../src/net/io.js';
import { nativeStatus } from '../src/net/native.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { encodePacket } from '../src/wire/uwsgi.js';
import { freePort, Receiver, Sender } from './helpers/net.js';
import { configOf } from './helpers/repeater.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const BACKENDS: Backend[] = nativeStatus === 'loaded' ? ['native', 'dgram'] : ['dgram'];
if (BACKENDS.length === 1) process.stderr.write(`\n!! net.parity: the native backend is not built here (${nativeStatus}); only node:dgram runs\n\n`);

const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);

/** One scenario on one backend; returns what an operator would see. */
async function scenario(backend: Backend): Promise<Record<string, unknown>> {
  const v6 = await freePort('::1');
  const r = await scope.repeater(['--listen', `[::1]:${v6},channel=ssl`, '--listen', '127.0.0.1:0,channel=ssl', '--dead-after', '2', '--dead-retry', '600'], backend);
  const v4 = r.port('127.0.0.1:0');
  const s6 = scope.track(Sender.open(6));
  const rx6 = scope.track(await Receiver.open('::1'));
  // A subscription from an IPv6 source: the logged source is canonical.
  await s6.send(encodeSubscription({ key: 'ssl', address: rx6.address }), v6, '::1');
  const subscribed = await r.tap.waitFor('subscribed', { address: rx6.address });
  // A dead subscriber is suspended after --dead-after unreachable answers.
  const dead = await freePort();
  await scope.sender.send(encodeSubscription({ key: 'ssl', address: `127.0.0.1:${dead}` }), v4);
  await r.tap.waitFor('subscribed', { address: `127.0.0.1:${dead}` });
  // Malformed datagrams of several kinds, then valid ones, through both families.
  const bad = [Buffer.from([111]), encodePacket(111, 12, Buffer.from([1, 0, 0x6b])), Buffer.from('hello'), encodePacket(224, 0, Buffer.alloc(40 * 4))];
  for (const b of bad) await scope.sender.send(b, v4);
  let i = 0;
  while (r.tap.matching('subscriber suspended: unreachable').length === 0) {
    assert.ok(i < 50, 'the dead subscriber was never suspended');
    await scope.sender.send(set(`k${i++}`), v4);
    await rx6.waitFor(i);
  }
  await s6.send(encodeCacheDelete(Buffer.from('gone'), false), v6, '::1');
  const last = await rx6.waitFor(i + 1);
  const ch = r.handle.repeater.channels.get('ssl')!;
  const nonZero = <T extends string>(names: readonly T[], v: Float64Array) => Object.fromEntries(names.flatMap((n, j) => (v[j] ? [[n, v[j]]] : [])));
  const out = {
    source: subscribed['source'],
    suspendedAfter: i,
    lastDelivered: last[i]!.toString('hex'),
    dropped: nonZero(DROP_REASONS, ch.stats.dropped),
    events: nonZero(EVENTS, ch.stats.events),
  };
  await r.close();
  return out;
}

describe('backend parity', () => {
  test(`the same scenario on ${BACKENDS.join(' and ')}: same sources, counts and suspensions`, async () => {
    const results: Record<string, Record<string, unknown>> = {};
    for (const b of BACKENDS) results[b] = await scenario(b);
    console.log(JSON.stringify(results));
    for (const b of BACKENDS) {
      assert.equal(results[b]!['source'], '::1', `${b}: the IPv6 source is not printed canonically`);
      assert.deepEqual(results[b]!['dropped'], { too_short: 1, size_mismatch: 1, unknown_type: 1, too_many_vars: 1 }, `${b}: drops`);
    }
    const [first, ...rest] = BACKENDS;
    for (const b of rest) {
      assert.deepEqual({ ...results[b], suspendedAfter: 0 }, { ...results[first!], suspendedAfter: 0 }, `${b} and ${first} differ`);
    }
  });

  test('a receive buffer larger than a socket option can hold is refused, on every backend, before any socket', () => {
    assert.throws(() => configOf(['--listen', '127.0.0.1:0', '--recv-buffer', String(2 ** 31)]), /--recv-buffer must be between 0 and 2147483647/);
    assert.throws(() => configOf(['--listen', '127.0.0.1:0', '--send-buffer', String(2 ** 32)]), /--send-buffer must be between 0 and 2147483647/);
  });
});

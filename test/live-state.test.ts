// The live state of a channel and the warm-join pacer, on their own: a clock
// passed in, no sockets. Expiry, eviction order, byte accounting, deletes,
// versions, and the pacer's counts over a simulated clock.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ENTRY_OVERHEAD, LiveState, TOMBSTONE_MS, TOMBSTONE_OVERHEAD } from '../src/path/live-state.js';
import { Pacer } from '../src/repeater/warm-budget.js';
import { encodeCacheDelete, encodeCacheSet, forwardForm, inspectCacheUpdate, newShape } from '../src/wire/cache.js';

const NOW = 1_796_000_000;
const set = (k: string, v: string, expires = 0) => encodeCacheSet(Buffer.from(k), Buffer.from(v), expires);
const del = (k: string, padded = false) => encodeCacheDelete(Buffer.from(k), padded);
const cost = (k: string, v: string, expires = 0) => set(k, v, expires).length + k.length + ENTRY_OVERHEAD;

function keys(s: LiveState): string[] {
  return [...s.walk()].map(([k]) => k);
}
function valueOf(s: LiveState, k: string): string | null {
  const e = s.get(k);
  if (e === undefined) return null;
  const vlen = e.content.readUInt16LE(6 + k.length);
  return e.content.toString('latin1', 8 + k.length, 8 + k.length + vlen);
}

describe('live state', () => {
  test('the latest set of each key, in the order they were last set; a delete removes it in either form', () => {
    const s = new LiveState(1 << 20);
    assert.equal(s.apply(set('a', '1'), NOW), 'set');
    assert.equal(s.apply(set('b', '1'), NOW), 'set');
    assert.equal(s.apply(set('c', '1'), NOW), 'set');
    assert.equal(s.apply(set('a', '2'), NOW), 'set');
    assert.deepEqual(keys(s), ['b', 'c', 'a']);
    assert.equal(valueOf(s, 'a'), '2');
    assert.equal(s.apply(del('b'), NOW), 'deleted');
    assert.equal(s.apply(del('c', true), NOW), 'deleted');
    assert.equal(s.apply(del('zz'), NOW), 'absent');
    assert.deepEqual(keys(s), ['a']);
    assert.equal(s.size, 1);
  });

  test('a binary key round-trips, and a traced update is stored without its trace', () => {
    const s = new LiveState(1 << 20);
    const key = Buffer.from([0, 0xff, 0x80, 10, 0]);
    const plain = encodeCacheSet(key, Buffer.from('v'), 0);
    const traced = forwardForm(plain, shapeOf(plain), true, { ingress: 7, sequence: 1, hops: 1 }, 65507) as Buffer;
    assert.ok(traced.length > plain.length);
    assert.equal(s.apply(traced, NOW), 'set');
    const [[k, e]] = [...s.walk()];
    assert.equal(Buffer.from(k!, 'latin1').toString('hex'), key.toString('hex'));
    assert.deepEqual(e!.content, plain);
  });

  test('bytes count each entry as its datagram, its key and the overhead, and each tombstone as its key and its overhead, exactly', () => {
    const s = new LiveState(1 << 20);
    s.apply(set('k1', 'x'.repeat(300)), NOW);
    s.apply(set('key-two', 'y'), NOW);
    assert.equal(s.bytes, cost('k1', 'x'.repeat(300)) + cost('key-two', 'y'));
    s.apply(set('k1', 'short'), NOW);
    assert.equal(s.bytes, cost('k1', 'short') + cost('key-two', 'y'));
    s.apply(del('key-two'), NOW);
    const tomb = (k: string) => k.length + TOMBSTONE_OVERHEAD;
    assert.equal(s.bytes, cost('k1', 'short') + tomb('key-two'));
    s.apply(del('k1'), NOW);
    assert.equal(s.bytes, tomb('key-two') + tomb('k1'));
    // A set of a deleted key removes its tombstone.
    s.apply(set('k1', 'back'), NOW);
    assert.equal(s.bytes, tomb('key-two') + cost('k1', 'back'));
    s.clear();
    assert.equal(s.bytes, 0);
  });

  test('a delete leaves a tombstone: never walked (no subscriber gets it), kept TOMBSTONE_MS, at most a quarter of the bound', () => {
    let clock = 1_000_000;
    const s = new LiveState(1 << 20, () => clock);
    s.apply(set('a', '1'), NOW);
    s.apply(del('a'), NOW);
    s.apply(del('never-set'), NOW);
    assert.deepEqual(keys(s), [], 'a tombstone was walked as an entry');
    assert.equal(s.tombstoneCount, 2);
    assert.equal(s.tombstone('a')?.atMs, clock);
    assert.deepEqual([...s.walkTombstones()].map(([k]) => k), ['a', 'never-set']);
    // A peer says it learnt the delete earlier: the earlier time is kept, a later one is not.
    s.backdate('a', clock - 5000);
    s.backdate('a', clock + 5000);
    assert.equal(s.tombstone('a')?.atMs, clock - 5000);
    clock += TOMBSTONE_MS - 4000;
    s.sweep(NOW);
    assert.equal(s.tombstone('a'), undefined, 'kept past TOMBSTONE_MS');
    assert.notEqual(s.tombstone('never-set'), undefined, 'forgotten before TOMBSTONE_MS');
    // Bounded: deletes of 10,000 distinct keys in a 64 KiB state keep at most 16 KiB of tombstones, the newest.
    const small = new LiveState(64 << 10, () => clock);
    small.apply(set('live', 'v'), NOW);
    for (let i = 0; i < 10_000; i++) small.apply(del(`gone-${i}`), NOW);
    assert.ok(small.bytes - cost('live', 'v') <= (64 << 10) / 4, `${small.bytes} bytes held`);
    assert.equal(small.get('live') !== undefined, true, 'tombstones evicted a live entry');
    assert.notEqual(small.tombstone('gone-9999'), undefined);
    assert.equal(small.tombstone('gone-0'), undefined);
    assert.ok(small.tombstonesEvicted > 9000);
  });

  test('past the bound the oldest-set entries are evicted first, and counted', () => {
    const one = cost('k0', 'v');
    const s = new LiveState(3 * one);
    for (const k of ['k0', 'k1', 'k2']) s.apply(set(k, 'v'), NOW);
    s.apply(set('k0', 'v'), NOW); // k0 is now the newest
    s.apply(set('k3', 'v'), NOW);
    assert.deepEqual(keys(s), ['k2', 'k0', 'k3']);
    assert.equal(s.evictions, 1);
    assert.ok(s.bytes <= 3 * one);
    s.setMaxBytes(one);
    assert.deepEqual(keys(s), ['k3']);
    assert.equal(s.evictions, 3);
    // An entry larger than the bound on its own is not kept, and takes its older value with it.
    assert.equal(s.apply(set('k3', 'much longer than before'), NOW), 'too_large');
    assert.equal(s.size, 0);
    assert.equal(s.evictions, 4);
    assert.equal(s.bytes, 0);
  });

  test('an entry is dropped when the absolute expiry it carried passes (0 = never); an expired set removes the older value', () => {
    const s = new LiveState(1 << 20);
    s.apply(set('never', 'v', 0), NOW);
    s.apply(set('soon', 'v', NOW + 1), NOW);
    s.apply(set('later', 'v', NOW + 5), NOW);
    s.apply(set('moved', 'v', NOW + 1), NOW);
    s.apply(set('moved', 'v', NOW + 9), NOW); // its new expiry replaces the old one
    assert.equal(s.sweep(NOW), 0);
    assert.equal(s.sweep(NOW + 1), 1);
    assert.deepEqual(keys(s).sort(), ['later', 'moved', 'never']);
    assert.equal(s.sweep(NOW + 8), 1);
    assert.deepEqual(keys(s).sort(), ['moved', 'never']);
    assert.equal(s.expired, 2);
    // A set that arrives already expired (the node's cache would drop it too) deletes the key.
    assert.equal(s.apply(set('never', 'v2', NOW - 1), NOW + 8), 'expired');
    assert.equal(s.get('never'), undefined);
    assert.equal(s.expired, 3, 'a set that arrived expired counts as expired');
    assert.equal(s.sweep(NOW + 100), 1);
    assert.equal(s.size, 0);
    assert.equal(s.bytes, 0);
  });

  test('deleted and re-set keys are swept by their own expiry only; many distinct expiries keep the heap bounded', () => {
    const s = new LiveState(1 << 30);
    for (let i = 0; i < 5000; i++) {
      s.apply(set(`k${i}`, 'v', NOW + 10 + i), NOW);
      s.apply(del(`k${i}`), NOW);
    }
    s.apply(set('last', 'v', NOW + 20_000), NOW);
    assert.ok((s as unknown as { heap: number[] }).heap.length <= 2 * 1 + 64 + 1, 'stale seconds are compacted away');
    assert.equal(s.sweep(NOW + 19_999), 0);
    assert.equal(s.sweep(NOW + 20_000), 1);
  });

  test('versions: every change takes the next one, so the walk goes in version order; an update applied without delivery says so', () => {
    const s = new LiveState(1 << 20);
    s.apply(set('a', '1'), NOW);
    const start = s.version;
    s.apply(set('b', '1'), NOW);
    s.apply(set('c', '1'), NOW, false);
    s.apply(set('a', '2'), NOW, false); // the same size: overwritten in place, moved to the end
    assert.ok(s.get('b')!.version > start, 'delivered after the start: a join skips it');
    assert.deepEqual([s.get('b')!.delivered, s.get('c')!.delivered, s.get('a')!.delivered], [true, false, false], 'not delivered: a join sends it');
    const versions = [...s.walk()].map(([, e]) => e.version);
    assert.deepEqual(versions, [...versions].sort((x, y) => x - y));
    assert.equal(versions.at(-1), s.version, 'the last set takes the newest version, delivered or not');
  });

  test('the walk is live: an entry set again moves behind the walker, a deleted one is never reached', () => {
    const s = new LiveState(1 << 20);
    for (const k of ['a', 'b', 'c', 'd']) s.apply(set(k, '1'), NOW);
    const it = s.walk();
    assert.equal(it.next().value![0], 'a');
    s.apply(set('a', '2'), NOW);
    s.apply(del('c'), NOW);
    assert.deepEqual([...it].map(([k, e]) => `${k}${valueOf(s, k) ?? ''}@${e.version}`), ['b1@2', 'd1@4', 'a2@5']);
  });

  test('a replaced, deleted, expired or evicted entry has its bytes zeroed (a dead session does not linger)', () => {
    const s = new LiveState(1 << 20);
    s.apply(set('a', 'secret-1'), NOW);
    const first = s.get('a')!.content;
    // The same size: overwritten in place, the old value is gone.
    s.apply(set('a', 'secret-2'), NOW);
    assert.equal(first.indexOf('secret-1'), -1);
    assert.equal(s.get('a')!.content.indexOf('secret-2') > 0, true);
    // Another size: a new copy, the old one zeroed.
    const second = s.get('a')!.content;
    s.apply(set('a', 'a-longer-secret'), NOW);
    assert.ok(second.every((b) => b === 0));
    const longer = s.get('a')!.content;
    s.apply(del('a'), NOW);
    assert.ok(longer.every((b) => b === 0));
    s.apply(set('x', 'secret-3', NOW + 1), NOW);
    const third = s.get('x')!.content;
    s.sweep(NOW + 1);
    assert.ok(third.every((b) => b === 0));
  });

  test('garbage offered from elsewhere is refused with the wire reason and changes nothing', () => {
    const s = new LiveState(1 << 20);
    assert.equal(s.apply(Buffer.from([111, 1, 0, 10, 0]), NOW), 'too_short');
    assert.equal(s.apply(Buffer.from('hello'), NOW), 'size_mismatch');
    assert.equal(s.size, 0);
    assert.equal(s.version, 0);
  });
});

function shapeOf(buf: Buffer) {
  const s = newShape();
  assert.equal(inspectCacheUpdate(buf, s), undefined);
  return s;
}

describe('warm-join pacer', () => {
  /** Drains the pacer on a simulated clock ticking every `tickMs`; returns tokens taken per tick. */
  function run(rate: number, tickMs: number, ms: number): number[] {
    const p = new Pacer(rate);
    p.reset(0);
    const taken: number[] = [];
    for (let t = tickMs; t <= ms; t += tickMs) {
      const n = p.available(t);
      p.take(n);
      taken.push(n);
    }
    return taken;
  }
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

  test('over a second of 1 ms ticks it grants the rate, within one token', () => {
    for (const rate of [1000, 20_000, 123_456]) {
      const got = sum(run(rate, 1, 1000));
      assert.ok(Math.abs(got - rate) <= 1, `rate ${rate}: granted ${got}`);
    }
  });

  test('in any window it never grants more than the rate over that window plus one burst of 5 ms', () => {
    const rate = 20_000;
    const taken = run(rate, 1, 2000);
    for (let w = 1; w <= 200; w *= 2) {
      for (let i = 0; i + w <= taken.length; i++) {
        const n = sum(taken.slice(i, i + w));
        assert.ok(n <= (rate * w) / 1000 + rate * 0.005, `${n} granted in ${w} ms`);
      }
    }
  });

  test('a late timer does not save up more than the burst; a reset forgets what was saved', () => {
    const p = new Pacer(20_000);
    p.reset(0);
    assert.equal(p.available(1000), 100, 'a second late: 5 ms of the rate, no more');
    p.reset(1000);
    assert.equal(p.available(1000), 0);
    const slow = new Pacer(10);
    slow.reset(0);
    assert.equal(slow.available(50), 0);
    assert.equal(slow.available(100), 1, 'below one token per tick, tokens still accrue across ticks');
  });
});

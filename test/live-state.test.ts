// The live state of a channel and the warm-join pacer, on their own: a clock
// passed in, no sockets. Expiry, eviction order, byte accounting, deletes,
// versions, and the pacer's counts over a simulated clock.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ENTRY_OVERHEAD, type LiveEntry, LiveState, SPARE_MAX_BYTES, TOMBSTONE_MS, TOMBSTONE_OVERHEAD } from '../src/path/live-state.js';
import { SetOrder } from '../src/path/live-order.js';
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
    assert.ok((s as unknown as { expiry: { heapSize: number } }).expiry.heapSize <= 2 * 1 + 64 + 1, 'stale seconds are compacted away');
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
    // Another size that fits its storage (slotSize): overwritten there, the old value is gone.
    const second = s.get('a')!.content;
    s.apply(set('a', 'a-longer-secret'), NOW);
    assert.equal(Buffer.from(second.buffer, second.byteOffset, second.buffer.byteLength).indexOf('secret-2'), -1);
    // A size that does not fit: new storage, the old one zeroed whole.
    s.apply(set('a', 'x'.repeat(100)), NOW);
    assert.ok(new Uint8Array(second.buffer).every((b) => b === 0));
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

/**
 * The live state as it was specified before the ordered slots (a Map
 * re-inserted on every set, evicting its first key): the reference the
 * property test holds LiveState to, walks included (a Map iterator is live
 * in exactly the way LiveState.walk promises).
 */
class ModelState {
  readonly entries = new Map<string, { content: Buffer; expires: number; version: number; delivered: boolean; cost: number; atMs: number }>();
  readonly tombs = new Map<string, { atMs: number; version: number; cost: number }>();
  tombBytes = 0;
  bytes = 0;
  version = 0;
  evictions = 0;
  expired = 0;
  tombstonesEvicted = 0;
  constructor(
    public max: number,
    private readonly clock: () => number,
  ) {}

  set(key: string, content: Buffer, expires: number, nowSec: number, delivered: boolean): string {
    this.remove(key);
    this.untomb(key);
    this.version++;
    if (expires !== 0 && expires <= nowSec) {
      this.expired++;
      return 'expired';
    }
    const cost = content.length + key.length + ENTRY_OVERHEAD;
    if (cost > this.max) {
      this.evictions++;
      return 'too_large';
    }
    this.entries.set(key, { content: Buffer.from(content), expires, version: this.version, delivered, cost, atMs: this.clock() });
    this.bytes += cost;
    this.evictDownTo(this.max);
    return 'set';
  }

  delete(key: string): boolean {
    const had = this.remove(key);
    this.version++;
    this.untomb(key);
    const cost = key.length + TOMBSTONE_OVERHEAD;
    this.tombs.set(key, { atMs: this.clock(), version: this.version, cost });
    this.tombBytes += cost;
    this.bytes += cost;
    this.trimTombs();
    this.evictDownTo(this.max);
    return had;
  }

  sweep(nowSec: number): number {
    const limit = this.clock() - TOMBSTONE_MS;
    for (const [k, t] of this.tombs) {
      if (t.atMs > limit) break;
      this.untomb(k);
    }
    let n = 0;
    for (const [k, e] of this.entries) {
      if (e.expires !== 0 && e.expires <= nowSec) {
        this.remove(k);
        n++;
      }
    }
    if (n > 0) {
      this.version++;
      this.expired += n;
    }
    return n;
  }

  setMax(max: number): void {
    this.max = max;
    this.trimTombs();
    this.evictDownTo(max);
  }

  backdate(key: string, atMs: number): void {
    const e = this.entries.get(key) ?? this.tombs.get(key);
    if (e !== undefined && atMs < e.atMs) e.atMs = atMs;
  }

  clear(): void {
    this.entries.clear();
    this.tombs.clear();
    this.tombBytes = this.bytes = 0;
    this.version++;
  }

  private trimTombs(): void {
    while (this.tombBytes > this.max / 4 && this.tombs.size > 0) {
      this.untomb(this.tombs.keys().next().value as string);
      this.tombstonesEvicted++;
    }
  }

  private evictDownTo(limit: number): void {
    while (this.bytes > limit && this.entries.size > 0) {
      this.remove(this.entries.keys().next().value as string);
      this.evictions++;
    }
  }

  private remove(key: string): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    this.entries.delete(key);
    this.bytes -= e.cost;
    return true;
  }

  private untomb(key: string): void {
    const t = this.tombs.get(key);
    if (t === undefined) return;
    this.tombs.delete(key);
    this.tombBytes -= t.cost;
    this.bytes -= t.cost;
  }
}

type Op =
  | { op: 'set'; k: number; vlen: number; exp: number; delivered: boolean; traced: boolean }
  | { op: 'del'; k: number; padded: boolean }
  | { op: 'tick'; sec: number; ms: number }
  | { op: 'max'; bytes: number }
  | { op: 'walk'; w: number }
  | { op: 'step'; w: number; n: number }
  | { op: 'backdate'; k: number; ms: number }
  | { op: 'clear' };

const KEYS = Array.from({ length: 12 }, (_, i) => `key-${i}`.padEnd(4 + (i % 5) * 7, '.'));
const ONE = ENTRY_OVERHEAD + 64;
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ op: fc.constant('set' as const), k: fc.nat(11), vlen: fc.constantFrom(0, 1, 13, 14, 15, 40, 41, 100, 300), exp: fc.constantFrom(0, 0, -1, 1, 2, 3, 5), delivered: fc.boolean(), traced: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('del' as const), k: fc.nat(11), padded: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('tick' as const), sec: fc.nat(2), ms: fc.constantFrom(0, 1000, TOMBSTONE_MS / 3) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('max' as const), bytes: fc.constantFrom(1 << 20, 3 * ONE, 5 * ONE, 8 * ONE, ONE, 100) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('walk' as const), w: fc.nat(1) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('step' as const), w: fc.nat(1), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('backdate' as const), k: fc.nat(11), ms: fc.nat(5000) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
);

describe('live state against its reference (fast-check)', () => {
  test('every sequence of sets, deletes, expiries, sweeps, bounds and live walks leaves what the reference leaves, and no dead value in any storage', () => {
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 10, maxLength: 150, size: 'max' }), fc.integer({ min: 3, max: 12 }), (ops, maxEntries) => {
        let ms = 5_000_000;
        let sec = NOW;
        const s = new LiveState(maxEntries * ONE, () => ms);
        const m = new ModelState(maxEntries * ONE, () => ms);
        const walks: Array<[Iterator<[string, LiveEntry]>, Iterator<[string, { version: number }]>] | null> = [null, null];
        const seen: Buffer[] = [];
        for (const o of ops) {
          if (o.op === 'set') {
            const key = KEYS[o.k]!;
            const value = Buffer.alloc(o.vlen, 0x41 + ((sec + ms + o.k) % 26));
            const expires = o.exp === 0 ? 0 : sec + o.exp;
            const plain = encodeCacheSet(Buffer.from(key), value, expires);
            const sh = shapeOf(plain);
            const datagram = o.traced ? (forwardForm(plain, sh, false, { ingress: 3, sequence: 1, hops: 1 }, 65507) as Buffer) : plain;
            assert.equal(s.apply(datagram, sec, o.delivered), m.set(key, plain, expires, sec, o.delivered));
            const e = s.get(key);
            if (e !== undefined) seen.push(e.content);
          } else if (o.op === 'del') {
            assert.equal(s.apply(del(KEYS[o.k]!, o.padded), sec), m.delete(KEYS[o.k]!) ? 'deleted' : 'absent');
          } else if (o.op === 'tick') {
            sec += o.sec;
            ms += o.ms;
            assert.equal(s.sweep(sec), m.sweep(sec));
          } else if (o.op === 'max') {
            s.setMaxBytes(o.bytes);
            m.setMax(o.bytes);
          } else if (o.op === 'walk') {
            walks[o.w] = [s.walk(), m.entries.entries()];
          } else if (o.op === 'step') {
            const w = walks[o.w];
            for (let i = 0; w !== null && w !== undefined && i < o.n; i++) {
              const a = w[0].next();
              const b = w[1].next();
              assert.equal(a.done, b.done, 'a walk ended where the reference did not, or went on');
              if (a.done !== true) assert.deepEqual([a.value[0], a.value[1].version], [b.value![0], b.value![1].version]);
            }
          } else if (o.op === 'backdate') {
            s.backdate(KEYS[o.k]!, ms - o.ms);
            m.backdate(KEYS[o.k]!, ms - o.ms);
          } else {
            s.clear();
            m.clear();
          }
          const view = (e: { content: Buffer; version: number; delivered: boolean; expires: number; atMs: number }) => [e.version, e.delivered, e.expires, e.atMs, e.content.toString('hex')];
          assert.deepEqual([...s.walk()].map(([k, e]) => [k, ...view(e)]), [...m.entries].map(([k, e]) => [k, ...view(e)]));
          assert.deepEqual([...s.walkTombstones()].map(([k, t]) => [k, t.version, t.atMs]), [...m.tombs].map(([k, t]) => [k, t.version, t.atMs]));
          assert.deepEqual([s.bytes, s.size, s.version, s.evictions, s.expired, s.tombstonesEvicted, s.tombstoneCount], [m.bytes, m.entries.size, m.version, m.evictions, m.expired, m.tombstonesEvicted, m.tombs.size]);
          assert.ok(s.spareStorage <= Math.min(SPARE_MAX_BYTES, s.maxBytes / 16));
        }
        // No dead value lingers: every content ever handed out is now all zeros, or (its storage reused) the
        // current content of the entry that holds that storage, followed by zeros.
        const holders = new Map<ArrayBufferLike, Buffer>();
        for (const [, e] of s.walk()) holders.set(e.content.buffer, e.content);
        for (const v of seen) {
          const now = holders.get(v.buffer);
          for (let i = 0; i < v.length; i++) assert.equal(v[i], now !== undefined && i < now.length ? now[i] : 0, 'a dead value lingers');
        }
      }),
      { seed: 17, numRuns: 400 },
    );
  });

  test('evicting, moving and deleting cost the same work per change with 1,000 entries as with 100,000 (counted, not timed)', () => {
    const perChange = (entries: number): number => {
      // One datagram whose key digits are rewritten in place: k000000000000042.
      const datagram = encodeCacheSet(Buffer.from('k'.padEnd(16, '0')), Buffer.alloc(24, 1), 0);
      const deletion = del('k'.padEnd(16, '0'));
      const keyed = (d: Buffer, i: number) => {
        d.write(String(i).padStart(15, '0'), 7, 'latin1');
        return d;
      };
      const s = new LiveState(entries * (datagram.length + 16 + ENTRY_OVERHEAD));
      for (let i = 0; i < entries; i++) s.apply(keyed(datagram, i), NOW);
      assert.equal(s.size, entries, 'full');
      const before = s.orderWork;
      const rounds = 4_000;
      let next = entries;
      for (let i = 0; i < rounds; i++) {
        s.apply(keyed(datagram, next++), NOW); // a new key: the oldest is evicted
        s.apply(keyed(datagram, next++), NOW);
        s.apply(keyed(datagram, next - 1 - ((i * 7919) % (s.size - 1))), NOW); // a key held, set again: moved to the end
        s.apply(keyed(deletion, next - 2 - ((i * 104729) % (s.size - 2))), NOW); // a key held, deleted: a tombstone
      }
      assert.ok(s.evictions >= rounds, `${s.evictions} evictions`);
      return (s.orderWork - before) / (4 * rounds);
    };
    const small = perChange(1_000);
    const large = perChange(100_000);
    assert.ok(small <= 4 && large <= 4, `slots stepped over per change: ${small} at 1,000 entries, ${large} at 100,000`);
    assert.ok(large <= small * 1.5 + 0.5, `the work per change grew with the size: ${small} -> ${large}`);
  });
});

describe('the set order (fast-check)', () => {
  test('with compactions every few holes, it keeps a Map\'s order, and its live walks yield what a Map\'s iterators yield', () => {
    type Item = { key: string; version: number; slot: number };
    type OrderOp = { op: 'set'; k: number } | { op: 'remove'; k: number } | { op: 'first' } | { op: 'walk'; w: number } | { op: 'step'; w: number; n: number };
    const orderOp: fc.Arbitrary<OrderOp> = fc.oneof(
      { weight: 6, arbitrary: fc.record({ op: fc.constant('set' as const), k: fc.nat(7) }) },
      { weight: 2, arbitrary: fc.record({ op: fc.constant('remove' as const), k: fc.nat(7) }) },
      { weight: 1, arbitrary: fc.constant({ op: 'first' as const }) },
      { weight: 1, arbitrary: fc.record({ op: fc.constant('walk' as const), w: fc.nat(2) }) },
      { weight: 4, arbitrary: fc.record({ op: fc.constant('step' as const), w: fc.nat(2), n: fc.integer({ min: 1, max: 4 }) }) },
    );
    fc.assert(
      fc.property(fc.array(orderOp, { minLength: 20, maxLength: 300, size: 'max' }), fc.integer({ min: 0, max: 6 }), (ops, compactMin) => {
        const order = new SetOrder<Item>(compactMin);
        const model = new Map<string, Item>();
        const items = new Map<string, Item>();
        const walks: Array<[Iterator<[string, Item]>, Iterator<[string, Item]>] | undefined> = [];
        let version = 0;
        for (const o of ops) {
          if (o.op === 'set' || o.op === 'remove') {
            const key = `k${o.k}`;
            const held = items.get(key);
            if (held !== undefined) {
              order.remove(held);
              model.delete(key);
              items.delete(key);
            }
            if (o.op === 'set') {
              const item = { key, version: ++version, slot: -1 };
              order.push(item);
              model.set(key, item);
              items.set(key, item);
            }
          } else if (o.op === 'first') {
            assert.equal(order.first()?.key, model.keys().next().value);
          } else if (o.op === 'walk') {
            walks[o.w] = [order.walk(), model.entries()];
          } else {
            const w = walks[o.w];
            for (let i = 0; w !== undefined && i < o.n; i++) {
              const a = w[0].next();
              const b = w[1].next();
              assert.equal(a.done, b.done);
              if (a.done !== true) assert.equal(a.value[1], b.value![1]);
            }
          }
          assert.deepEqual([...order.walk()].map(([k]) => k), [...model.keys()]);
          assert.equal(order.size, model.size);
        }
      }),
      { seed: 17, numRuns: 500 },
    );
  });
});

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

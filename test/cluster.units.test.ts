// Cluster mode's pure parts, without sockets: the bus codec (wire/bus.ts)
// round-trips every body, refuses each malformed field and never throws on
// garbage; rendezvous hashing (gate/rendezvous.ts) is order-free, balanced
// and moves only a removed candidate's items; the exactly-once window
// (gate/recent.ts) catches duplicates within its window and its documented
// limits, stays bounded, and its hasher is seeded per instance.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Hasher, RecentUpdates } from '../src/gate/recent.js';
import { owner } from '../src/gate/rendezvous.js';
import { type BusBody, type BusMessage, decodeBus, encodeBus, MAX_BATCH } from '../src/wire/bus.js';
import { bigintToLong } from '../src/wire/envelope.js';
import { protoRoot } from '../src/wire/proto.js';
import { prng } from './helpers/adversarial.js';

const BusType = protoRoot.lookupType('udprepeater.BusMessage');

function randomBuffer(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

const NOW = 1_700_000_000_000;
const msg = (body: BusBody, sender = 0x0123456789abcdefn): BusMessage => ({ sender, sentAtMs: NOW, body });

const datagram = (over: Partial<Extract<BusBody, { type: 'datagram' }>> = {}): BusBody => ({
  type: 'datagram',
  channel: 'ssl',
  datagram: Buffer.from('a cache update'),
  trace: null,
  origin: 0n,
  opaque: false,
  ...over,
});
const heartbeat = (over: Partial<Extract<BusBody, { type: 'heartbeat' }>> = {}): BusBody => ({
  type: 'heartbeat',
  name: 'host/1234',
  startedAtMs: NOW - 5_000,
  intervalMs: 500,
  subscribers: 7,
  ...over,
});
const subscriber = (over: Partial<Extract<BusBody, { type: 'subscriber' }>> = {}): BusBody => ({
  type: 'subscriber',
  channel: 'ssl',
  sealed: false,
  address: '127.0.0.1:4000',
  key: 'ssl',
  origin: 0n,
  deadlineMs: NOW + 30_000,
  isStatic: false,
  ...over,
});

/** Every valid body shape the codec has to carry. */
const SAMPLES: ReadonlyArray<readonly [string, BusMessage]> = [
  ['datagram without trace', msg(datagram())],
  ['datagram with trace, origin and opaque', msg(datagram({ trace: { ingress: 2 ** 48 - 1, sequence: Number.MAX_SAFE_INTEGER, hops: 255 }, origin: 0xffffffffffffffffn, opaque: true }), 0xffffffffffffffffn)],
  ['datagram of one byte, channel of 255 chars', msg(datagram({ datagram: Buffer.from([0]), channel: 'c'.repeat(255) }), 1n)],
  ['batch of three, traced and not, two channels', msg({ type: 'batch', datagrams: [datagram(), datagram({ trace: { ingress: 7, sequence: 9, hops: 2 } }) as Extract<BusBody, { type: 'datagram' }>, datagram({ channel: 'other', opaque: true }) as Extract<BusBody, { type: 'datagram' }>] as Array<Extract<BusBody, { type: 'datagram' }>> })],
  ['heartbeat', msg(heartbeat())],
  ['heartbeat with empty name and zero counts', msg(heartbeat({ name: '', startedAtMs: 0, intervalMs: 0, subscribers: 0 }))],
  ['subscriber', msg(subscriber({ sealed: true, origin: 0xfeedfacecafebeefn }))],
  ['subscriber gone (deadline 0)', msg(subscriber({ deadlineMs: 0 }))],
  ['static subscriber', msg(subscriber({ deadlineMs: Number.MAX_SAFE_INTEGER, isStatic: true, address: '[::1]:65535' }))],
  ['heartbeat of a peer holding the live state', msg(heartbeat({ stateReady: true }))],
  ['state request', msg({ type: 'state_request', target: 0xfeedfacecafebeefn, request: 1 })],
  ['state chunk of two entries, two channels, the last', msg({ type: 'state_chunk', request: 3, seq: 7, entries: [datagram() as Extract<BusBody, { type: 'datagram' }>, datagram({ channel: 'other' }) as Extract<BusBody, { type: 'datagram' }>], last: true, total: 1502, declined: false })],
  ['state chunk: declined', msg({ type: 'state_chunk', request: 9, seq: 0, entries: [], last: true, total: 0, declined: true })],
];

/** What decodeBus promises of anything it returns. */
function assertWellFormed(m: BusMessage): void {
  assert.notEqual(m.sender, 0n, 'decoded a message with sender 0');
  assert.ok(m.sender > 0n && m.sender < 2n ** 64n);
  assert.ok(Number.isSafeInteger(m.sentAtMs), 'unsafe sentAtMs');
  const b = m.body;
  if (b.type === 'batch') {
    assert.ok(b.datagrams.length >= 1 && b.datagrams.length <= MAX_BATCH, 'bad batch length');
    for (const d of b.datagrams) assertWellFormed({ ...m, body: d });
  } else if (b.type === 'datagram') {
    assert.ok(b.datagram.length > 0 && b.channel.length > 0 && b.channel.length <= 255, 'bad datagram body');
    assert.ok(Buffer.isBuffer(b.datagram));
    if (b.trace !== null) {
      assert.ok(b.trace.ingress >= 1 && b.trace.ingress < 2 ** 48, 'bad trace ingress');
      assert.ok(b.trace.sequence >= 1 && Number.isSafeInteger(b.trace.sequence), 'bad trace sequence');
      assert.ok(b.trace.hops >= 1 && b.trace.hops <= 255, 'bad trace hops');
    }
  } else if (b.type === 'heartbeat') {
    assert.ok(b.name.length <= 255, 'heartbeat name too long');
  } else if (b.type === 'state_request') {
    assert.ok(b.target !== 0n && b.request >= 1 && Number.isSafeInteger(b.request), 'bad state request');
  } else if (b.type === 'state_chunk') {
    assert.ok(b.request >= 1 && Number.isSafeInteger(b.request) && b.entries.length <= MAX_BATCH, 'bad state chunk');
    for (const d of b.entries) {
      assert.ok(d.trace === null && !d.opaque && d.origin === 0n, 'a state entry with a trace, an origin or opaque');
      assertWellFormed({ ...m, body: d });
    }
  } else if (b.type === 'tickets') {
    // checked by the tickets codec's own tests
  } else {
    assert.equal(b.type, 'subscriber');
    assert.ok(b.channel.length > 0 && b.channel.length <= 255 && b.address.length > 0 && b.address.length <= 255 && b.key.length <= 255, 'bad subscriber strings');
    assert.ok(Number.isSafeInteger(b.deadlineMs) && b.deadlineMs >= 0, 'bad subscriber deadline');
  }
}

/** decodeBus must return, never throw; anything it returns must be well formed. */
function decodeSafely(buf: Uint8Array, what: string): BusMessage | 'bad_payload' {
  let out: BusMessage | 'bad_payload';
  try {
    out = decodeBus(buf);
  } catch (err) {
    assert.fail(`decodeBus threw on ${what} (${Buffer.from(buf).toString('hex')}): ${String(err)}`);
  }
  if (out !== 'bad_payload') {
    assert.equal(typeof out, 'object', `decodeBus returned ${String(out)} on ${what}`);
    assertWellFormed(out);
  }
  return out;
}

describe('wire/bus.ts: the bus codec', () => {
  for (const [name, m] of SAMPLES) {
    test(`round trip: ${name}`, () => {
      const back = decodeBus(encodeBus(m));
      assert.notEqual(back, 'bad_payload');
      assert.deepEqual(back, m);
    });
  }

  test('state chunks: an entry with a trace, an origin or opaque, or more than MAX_BATCH entries, is refused whole', () => {
    const chunk = (entries: BusBody[]) => msg({ type: 'state_chunk', request: 1, seq: 0, entries: entries as Array<Extract<BusBody, { type: 'datagram' }>>, last: false, total: 0, declined: false });
    assert.notEqual(decodeBus(encodeBus(chunk([datagram()]))), 'bad_payload');
    assert.equal(decodeBus(encodeBus(chunk([datagram(), datagram({ trace: { ingress: 1, sequence: 1, hops: 1 } })]))), 'bad_payload');
    assert.equal(decodeBus(encodeBus(chunk([datagram({ origin: 5n })]))), 'bad_payload');
    assert.equal(decodeBus(encodeBus(chunk([datagram({ opaque: true })]))), 'bad_payload');
    assert.notEqual(decodeBus(encodeBus(chunk(Array.from({ length: MAX_BATCH }, () => datagram())))), 'bad_payload');
    assert.equal(decodeBus(encodeBus(chunk(Array.from({ length: MAX_BATCH + 1 }, () => datagram())))), 'bad_payload');
    assert.equal(decodeBus(encodeBus(msg({ type: 'state_request', target: 0n, request: 1 }))), 'bad_payload', 'a request to nobody');
    assert.equal(decodeBus(encodeBus(msg({ type: 'state_request', target: 1n, request: 0 }))), 'bad_payload', 'request numbers start at 1');
  });

  test('garbage never throws and never decodes: random buffers of every length up to 300', () => {
    const rand = prng(1);
    let threw = 0;
    let parsed = 0;
    let messages = 0;
    for (let n = 0; n <= 300; n++) {
      for (let k = 0; k < 40; k++) {
        const buf = randomBuffer(rand, n);
        // What protobufjs alone makes of it: a throw (decodeBus must catch it) or some message (decodeBus must check it).
        try {
          BusType.decode(buf);
          parsed++;
        } catch {
          threw++;
        }
        if (decodeSafely(buf, `random buffer of ${n} bytes`) !== 'bad_payload') messages++;
      }
    }
    // Both paths were reached (with this seed: 11,977 throws, 63 parsed), and none of it became a message.
    assert.ok(threw > 0 && parsed > 0, `protobufjs threw on ${threw} and parsed ${parsed}: the fuzz missed a path`);
    assert.equal(messages, 0, `${messages} random buffers decoded as bus messages`);
  });

  test('garbage never throws: every truncation of every valid message', () => {
    for (const [name, m] of SAMPLES) {
      const full = encodeBus(m);
      for (let n = 0; n < full.length; n++) decodeSafely(full.subarray(0, n), `${name} cut to ${n} bytes`);
      // And with trailing junk.
      decodeSafely(Buffer.concat([full, Buffer.from([0xff, 0xff, 0xff])]), `${name} with junk appended`);
    }
  });

  test('garbage never throws: every single-byte mutation of every valid message', () => {
    let decoded = 0;
    let refused = 0;
    for (const [name, m] of SAMPLES) {
      const full = Buffer.from(encodeBus(m));
      for (let i = 0; i < full.length; i++) {
        const orig = full[i]!;
        for (let v = 0; v < 256; v++) {
          if (v === orig) continue;
          full[i] = v;
          if (decodeSafely(full, `${name} with byte ${i} set to ${v}`) === 'bad_payload') refused++;
          else decoded++;
        }
        full[i] = orig;
      }
    }
    // Both outcomes occur: the fuzz reached the checks as well as the decoder.
    assert.ok(decoded > 0 && refused > 0, `decoded ${decoded}, refused ${refused}`);
  });

  const refusals: ReadonlyArray<readonly [string, () => Uint8Array]> = [
    ['sender 0', () => encodeBus(msg(heartbeat(), 0n))],
    ['sentAtMs beyond 2^53', () => BusType.encode({ sender: bigintToLong(5n), sentAtMs: { low: 0, high: 0x00400000, unsigned: true }, heartbeat: { name: 'x' } }).finish()],
    ['an empty datagram', () => encodeBus(msg(datagram({ datagram: Buffer.alloc(0) })))],
    ['a datagram with an empty channel', () => encodeBus(msg(datagram({ channel: '' })))],
    ['a datagram with a channel of 256 chars', () => encodeBus(msg(datagram({ channel: 'c'.repeat(256) })))],
    ['a trace with hops 0', () => encodeBus(msg(datagram({ trace: { ingress: 1, sequence: 1, hops: 0 } })))],
    ['a trace with hops 256', () => encodeBus(msg(datagram({ trace: { ingress: 1, sequence: 1, hops: 256 } })))],
    ['a trace with ingress 2^48', () => encodeBus(msg(datagram({ trace: { ingress: 2 ** 48, sequence: 1, hops: 1 } })))],
    ['a trace with ingress 0', () => encodeBus(msg(datagram({ trace: { ingress: 0, sequence: 1, hops: 1 } })))],
    ['a trace with sequence 0', () => encodeBus(msg(datagram({ trace: { ingress: 1, sequence: 0, hops: 1 } })))],
    ['a heartbeat with a name of 256 chars', () => encodeBus(msg(heartbeat({ name: 'n'.repeat(256) })))],
    ['a subscriber with an empty address', () => encodeBus(msg(subscriber({ address: '' })))],
    ['a subscriber with an empty channel', () => encodeBus(msg(subscriber({ channel: '' })))],
    ['a subscriber with an address of 256 chars', () => encodeBus(msg(subscriber({ address: 'a'.repeat(256) })))],
    ['a subscriber with a key of 256 chars', () => encodeBus(msg(subscriber({ key: 'k'.repeat(256) })))],
    ['a subscriber with a negative deadline', () => encodeBus(msg(subscriber({ deadlineMs: -1 })))],
    ['a subscriber with a deadline of 2^53', () => BusType.encode({ sender: bigintToLong(5n), sentAtMs: NOW, subscriber: { channel: 'ssl', address: '127.0.0.1:1', deadlineMs: { low: 0, high: 0x00200000, unsigned: true } } }).finish()],
    ['an empty batch', () => BusType.encode({ sender: bigintToLong(5n), sentAtMs: NOW, batch: { datagrams: [] } }).finish()],
    ['a batch with one bad datagram among good ones', () => encodeBus(msg({ type: 'batch', datagrams: [datagram(), datagram({ channel: '' }), datagram()] as Array<Extract<BusBody, { type: 'datagram' }>> }))],
    [`a batch of ${MAX_BATCH + 1}`, () => encodeBus(msg({ type: 'batch', datagrams: Array.from({ length: MAX_BATCH + 1 }, () => datagram()) as Array<Extract<BusBody, { type: 'datagram' }>> }))],
    ['no body at all', () => BusType.encode({ sender: bigintToLong(5n), sentAtMs: NOW }).finish()],
    ['an empty buffer', () => new Uint8Array(0)],
  ];
  for (const [what, make] of refusals) {
    test(`refused: ${what}`, () => {
      assert.equal(decodeSafely(make(), what), 'bad_payload');
    });
  }
});

describe('gate/rendezvous.ts: who serves a subscriber', () => {
  const ids = (n: number, seed: number): bigint[] => {
    const rand = prng(seed);
    return Array.from({ length: n }, () => randomBuffer(rand, 8).readBigUInt64LE(0) || 1n);
  };
  const items = (n: number) => Array.from({ length: n }, (_, i) => `ssl|plain|10.0.${i >> 8}.${i & 255}:3000`);

  test('the same candidates in any order pick the same owner', () => {
    const cs = ids(5, 7);
    const orders = [cs, [...cs].reverse(), [cs[2]!, cs[0]!, cs[4]!, cs[1]!, cs[3]!], [cs[4]!, cs[3]!, cs[0]!, cs[2]!, cs[1]!]];
    for (const item of items(500)) {
      const want = owner(orders[0]!, item);
      assert.ok(want !== null && cs.includes(want));
      for (const o of orders.slice(1)) assert.equal(owner(o, item), want, `order changed the owner of ${item}`);
      // Any iterable, e.g. a Set built in sorted order, gives the same answer.
      assert.equal(owner(new Set([...cs].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))), item), want);
    }
  });

  test('three candidates over 3000 items: each serves 25% to 42%', () => {
    const cs = ids(3, 11);
    const count = new Map<bigint, number>(cs.map((c) => [c, 0]));
    for (const item of items(3000)) {
      const o = owner(cs, item)!;
      count.set(o, count.get(o)! + 1);
    }
    for (const [c, n] of count) assert.ok(n >= 750 && n <= 1260, `candidate ${c.toString(16)} owns ${n} of 3000`);
  });

  test('removing a candidate moves only the items it owned', () => {
    const cs = ids(4, 13);
    const all = items(3000);
    const before = new Map(all.map((i) => [i, owner(cs, i)!]));
    const gone = cs[1]!;
    const rest = cs.filter((c) => c !== gone);
    let moved = 0;
    for (const i of all) {
      const now = owner(rest, i)!;
      if (before.get(i) === gone) {
        assert.notEqual(now, gone);
        moved++;
      } else assert.equal(now, before.get(i), `${i} moved although its owner stayed`);
    }
    assert.ok(moved > 0, 'the removed candidate owned nothing: the test proves nothing');
    // And adding it back restores exactly the old assignment.
    for (const i of all) assert.equal(owner([...rest, gone], i), before.get(i));
  });

  test('no candidates: null', () => {
    assert.equal(owner([], 'ssl|plain|127.0.0.1:1'), null);
    assert.equal(owner(new Set<bigint>(), 'x'), null);
    assert.equal(owner([42n], 'x'), 42n);
  });
});

describe('gate/recent.ts: an update seen twice is delivered once', () => {
  const WINDOW = 1_000;
  const [A, B, C, D, E] = [101, 102, 103, 104, 105];

  test('the same key and content within the window is a duplicate; after the window it is admitted', () => {
    const r = new RecentUpdates(WINDOW);
    assert.equal(r.admit(1, A, NOW), true);
    assert.equal(r.admit(1, A, NOW + 1), false);
    assert.equal(r.admit(1, A, NOW + WINDOW - 1), false);
    // A duplicate does not extend the window: it is measured from the first sighting.
    assert.equal(r.admit(1, A, NOW + WINDOW), true);
    assert.equal(r.admit(1, A, NOW + WINDOW + 1), false);
  });

  test('A, B, A within the window: the second A is a duplicate (the documented limit)', () => {
    const r = new RecentUpdates(WINDOW);
    assert.equal(r.admit(1, A, NOW), true);
    assert.equal(r.admit(1, B, NOW + 1), true);
    assert.equal(r.admit(1, A, NOW + 2), false);
  });

  test('A, B, C, D, A: A is still among the last four contents; A, B, C, D, E, A: it is not, and is admitted', () => {
    const r = new RecentUpdates(WINDOW);
    for (const [i, c] of [A, B, C, D].entries()) assert.equal(r.admit(1, c, NOW + i), true);
    assert.equal(r.admit(1, A, NOW + 10), false);
    const s = new RecentUpdates(WINDOW);
    for (const [i, c] of [A, B, C, D, E].entries()) assert.equal(s.admit(1, c, NOW + i), true);
    assert.equal(s.admit(1, A, NOW + 10), true);
  });

  test('different keys are independent', () => {
    const r = new RecentUpdates(WINDOW);
    assert.equal(r.admit(1, A, NOW), true);
    assert.equal(r.admit(2, A, NOW), true);
    assert.equal(r.admit(3, A, NOW), true);
    assert.equal(r.admit(2, A, NOW + 1), false);
    // Four other contents on key 1 do not push A out of key 2.
    for (const c of [B, C, D, E]) r.admit(1, c, NOW + 2);
    assert.equal(r.admit(2, A, NOW + 3), false);
    assert.equal(r.admit(1, A, NOW + 3), true);
  });

  test('the key table stays bounded: the oldest keys are forgotten, the newest remembered', () => {
    const MAX_KEYS = 1 << 17;
    const N = 140_000;
    const r = new RecentUpdates(60_000);
    for (let k = 0; k < N; k++) r.admit(k, A, NOW);
    assert.ok(r.keys <= MAX_KEYS, `${r.keys} keys held, more than ${MAX_KEYS}`);
    assert.ok(r.keys >= MAX_KEYS - 1024, `${r.keys} keys held: far fewer than the bound, the table forgets too early`);
    // The newest are remembered (a duplicate changes nothing in the table)...
    for (let k = N - 1000; k < N; k++) assert.equal(r.admit(k, A, NOW + 1), false, `key ${k} (recent) was forgotten`);
    // ...the oldest were forgotten.
    for (let k = 0; k < 1000; k++) assert.equal(r.admit(k, A, NOW + 1), true, `key ${k} (oldest) is still remembered`);
    assert.ok(r.keys <= MAX_KEYS);
  });

  test('a key updated again moves to the back of the queue: forgotten last', () => {
    const MAX_KEYS = 1 << 17;
    const r = new RecentUpdates(60_000);
    for (let k = 0; k < MAX_KEYS; k++) r.admit(k, A, NOW);
    assert.equal(r.admit(0, B, NOW + 1), true); // key 0, new content: now the most recent
    r.admit(MAX_KEYS, A, NOW + 2); // one more key evicts the oldest: key 1, not key 0
    assert.equal(r.admit(0, B, NOW + 3), false, 'the refreshed key was evicted');
    assert.equal(r.admit(1, A, NOW + 3), true, 'the oldest key was not evicted');
  });

  test('Hasher: seeded per instance, deterministic, range equals subarray', () => {
    const rand = prng(3);
    const h1 = new Hasher();
    const h2 = new Hasher();
    const bufs = Array.from({ length: 50 }, (_, i) => randomBuffer(rand, 1 + i * 7));
    let differ = 0;
    for (const b of bufs) {
      const x = h1.hash(b);
      assert.equal(h1.hash(b), x, 'the same instance hashed the same bytes twice differently');
      assert.equal(h1.hash(Buffer.from(b)), x);
      assert.ok(Number.isSafeInteger(x) && x >= 0);
      if (h2.hash(b) !== x) differ++;
      for (const [from, to] of [[0, b.length], [0, 0], [1, b.length], [0, Math.floor(b.length / 2)], [Math.floor(b.length / 3), Math.floor((2 * b.length) / 3)]] as const) {
        assert.equal(h1.hash(b, from, to), h1.hash(b.subarray(from, to)), `range [${from}, ${to}) of ${b.length} bytes`);
      }
    }
    assert.equal(differ, bufs.length, 'two hashers agreed on some bytes: the seeds are not random per instance');
    // And a hasher tells different bytes apart.
    assert.notEqual(h1.hash(Buffer.from('key-a')), h1.hash(Buffer.from('key-b')));
  });
});

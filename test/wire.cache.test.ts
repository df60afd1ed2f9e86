import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  CACHE_DELETE,
  CACHE_SET,
  classifyCacheUpdate,
  decodeCacheUpdate,
  encodeCacheDelete,
  encodeCacheSet,
  repairDelete,
} from '../src/wire/cache.js';

const hex = (s: string) => Buffer.from(s.replace(/[^0-9a-f]/gi, ''), 'hex');

// Byte sequences observed from uWSGI 2.0.21 (PROTOCOL.md).
const OBSERVED_SET = Buffer.concat([hex('6f1a000a 0500'), Buffer.from('sess1'), hex('0500'), Buffer.from('hello'), hex('0a00'), Buffer.from('1795213916')]);
const OBSERVED_DEL = Buffer.concat([hex('6f07000b 0500'), Buffer.from('sess1')]);
const PADDED_DEL = Buffer.concat([hex('6f09000b 0500'), Buffer.from('sess1'), hex('0000')]);

test('encoders reproduce what uWSGI sends', () => {
  assert.deepEqual(encodeCacheSet(Buffer.from('sess1'), Buffer.from('hello'), 1795213916n), OBSERVED_SET);
  assert.deepEqual(encodeCacheDelete(Buffer.from('sess1'), false), OBSERVED_DEL);
  assert.deepEqual(encodeCacheDelete(Buffer.from('sess1'), true), PADDED_DEL);
});

test('decodes the observed set and both delete forms', () => {
  assert.deepEqual(decodeCacheUpdate(OBSERVED_SET), { op: 'set', key: Buffer.from('sess1'), value: Buffer.from('hello'), expires: 1795213916n });
  assert.deepEqual(decodeCacheUpdate(OBSERVED_DEL), { op: 'delete', key: Buffer.from('sess1'), padded: false });
  assert.deepEqual(decodeCacheUpdate(PADDED_DEL), { op: 'delete', key: Buffer.from('sess1'), padded: true });
});

test('repairDelete pads the unpadded form and leaves the padded one alone', () => {
  assert.deepEqual(repairDelete(OBSERVED_DEL), PADDED_DEL);
  assert.equal(repairDelete(PADDED_DEL), PADDED_DEL);
  assert.equal(classifyCacheUpdate(repairDelete(OBSERVED_DEL)), CACHE_DELETE);
});

test('a set without the expires block is accepted (hand-made packets)', () => {
  const b = Buffer.concat([hex('6f0c000a 0300'), Buffer.from('abc'), hex('0500'), Buffer.from('hello')]);
  assert.deepEqual(decodeCacheUpdate(b), { op: 'set', key: Buffer.from('abc'), value: Buffer.from('hello'), expires: null });
});

function withSize(body: Buffer, m2: number, datasize = body.length): Buffer {
  const h = Buffer.alloc(4);
  h[0] = 111;
  h.writeUInt16LE(datasize & 0xffff, 1);
  h[3] = m2;
  return Buffer.concat([h, body]);
}

const malformed: Array<[string, Buffer, string]> = [
  ['empty datagram', Buffer.alloc(0), 'too_short'],
  ['shorter than a header', hex('6f 00 00'), 'too_short'],
  ['header only', withSize(Buffer.alloc(0), 10), 'too_short'],
  ['datasize larger than the body', withSize(Buffer.concat([hex('0100'), Buffer.from('k')]), 11, 9), 'size_mismatch'],
  ['datasize smaller than the body', withSize(Buffer.concat([hex('0100'), Buffer.from('k')]), 11, 2), 'size_mismatch'],
  ['key running past the end', withSize(Buffer.concat([hex('0900'), Buffer.from('abc')]), 11), 'malformed'],
  ['empty key (set)', withSize(Buffer.concat([hex('0000 0100'), Buffer.from('v')]), 10), 'empty_key'],
  ['empty key (delete)', withSize(hex('0000'), 11), 'empty_key'],
  ['value length missing', withSize(Buffer.concat([hex('0100'), Buffer.from('k')]), 10), 'malformed'],
  ['value running past the end', withSize(Buffer.concat([hex('0100'), Buffer.from('k'), hex('0500'), Buffer.from('ab')]), 10), 'malformed'],
  ['one stray byte after the value', withSize(Buffer.concat([hex('0100'), Buffer.from('k'), hex('0100'), Buffer.from('v'), hex('01')]), 10), 'malformed'],
  ['expires running past the end', withSize(Buffer.concat([hex('0100 6b 0100 76 0500'), Buffer.from('12')]), 10), 'malformed'],
  ['trailing bytes after expires', withSize(Buffer.concat([hex('0100 6b 0100 76 0200'), Buffer.from('12'), hex('00')]), 10), 'malformed'],
  ['non-decimal expires', withSize(Buffer.concat([hex('0100 6b 0100 76 0300'), Buffer.from('1x2')]), 10), 'bad_expires'],
  ['negative expires', withSize(Buffer.concat([hex('0100 6b 0100 76 0200'), Buffer.from('-1')]), 10), 'bad_expires'],
  ['expires longer than a u64', withSize(Buffer.concat([hex('0100 6b 0100 76 1500'), Buffer.from('1'.repeat(21))]), 10), 'bad_expires'],
  ['delete with trailing non-zero padding', withSize(hex('0100 6b 0100'), 11), 'malformed'],
  ['delete with three trailing bytes', withSize(hex('0100 6b 000000'), 11), 'malformed'],
  ['unknown modifier2', withSize(hex('0100 6b'), 12), 'unknown_command'],
  ['another modifier1', Buffer.concat([hex('e0 03 00 00 0100 6b')]), 'unknown_command'],
  ['a 65 KiB datagram', Buffer.concat([hex('6f ff ff 0a'), Buffer.alloc(65 * 1024)]), 'size_mismatch'],
];

for (const [name, buf, reason] of malformed) {
  test(`refuses ${name} as ${reason}`, () => {
    assert.equal(classifyCacheUpdate(buf), reason);
    assert.equal(decodeCacheUpdate(buf), reason);
  });
}

const key = fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => Buffer.from(a));
const value = fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a));
const expires = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

test('property: set round-trips through encode/decode', () => {
  fc.assert(
    fc.property(key, value, expires, (k, v, e) => {
      const b = encodeCacheSet(k, v, e);
      assert.equal(classifyCacheUpdate(b), CACHE_SET);
      assert.deepEqual(decodeCacheUpdate(b), { op: 'set', key: k, value: v, expires: e });
    }),
  );
});

test('property: delete round-trips in both forms and repair is idempotent', () => {
  fc.assert(
    fc.property(key, fc.boolean(), (k, padded) => {
      const b = encodeCacheDelete(k, padded);
      assert.deepEqual(decodeCacheUpdate(b), { op: 'delete', key: k, padded });
      const r = repairDelete(b);
      assert.deepEqual(decodeCacheUpdate(r), { op: 'delete', key: k, padded: true });
      assert.equal(repairDelete(r), r);
    }),
  );
});

test('property: random bytes never throw and classify and decode agree', () => {
  const cacheish = fc.tuple(fc.constantFrom(10, 11, 12), fc.uint8Array({ maxLength: 64 })).map(([m2, body]) => withSize(Buffer.from(body), m2));
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)), cacheish), (b) => {
      const c = classifyCacheUpdate(b);
      const d = decodeCacheUpdate(b);
      if (typeof c === 'string') assert.equal(d, c);
      else assert.equal(typeof d, 'object');
    }),
    { numRuns: 5000 },
  );
});

test('property: truncating a valid set anywhere is refused, never misread', () => {
  fc.assert(
    fc.property(key, value, expires, fc.nat(), (k, v, e, cut) => {
      const b = encodeCacheSet(k, v, e);
      const n = cut % b.length;
      const t = Buffer.from(b.subarray(0, n));
      if (t.length >= 3) t.writeUInt16LE(Math.max(0, t.length - 4), 1); // keep the header consistent
      const r = classifyCacheUpdate(t);
      // A truncation that ends exactly after the value is a valid set without expires.
      if (r === CACHE_SET) assert.equal(n, 4 + 2 + k.length + 2 + v.length);
      else assert.equal(typeof r, 'string');
    }),
  );
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  CACHE_DELETE,
  CACHE_SET,
  decodeCacheUpdate,
  encodeCacheDelete,
  encodeCacheSet,
  forwardForm,
  inspectCacheUpdate,
  newShape,
} from '../src/wire/cache.js';
import { TRACE_BYTES, type TraceFields } from '../src/wire/trace.js';

const hex = (s: string) => Buffer.from(s.replace(/[^0-9a-f]/gi, ''), 'hex');

// Byte sequences observed from uWSGI 2.0.21 (docs/PROTOCOL.md).
const OBSERVED_SET = Buffer.concat([hex('6f1a000a 0500'), Buffer.from('sess1'), hex('0500'), Buffer.from('hello'), hex('0a00'), Buffer.from('1795213916')]);
const OBSERVED_DEL = Buffer.concat([hex('6f07000b 0500'), Buffer.from('sess1')]);
const PADDED_DEL = Buffer.concat([hex('6f09000b 0500'), Buffer.from('sess1'), hex('0000')]);
const TRACE: TraceFields = { ingress: 0xa1b2c3d4e5f6, sequence: 2 ** 40 + 7, hops: 3 };

/**
 * What uWSGI 2.0.21's cache-udp-server does with a datagram, ported line for
 * line from core/cache.c (cache_udp_server_loop): the independent model the
 * forwarder's output is checked against. null: silently ignored.
 */
function uwsgiApplies(buf: Buffer): { op: 'set'; key: string; value: string; expires: bigint } | { op: 'del'; key: string } | null {
  const len = buf.length;
  if (len <= 7) return null;
  if (buf[0] !== 111) return null;
  const pktsize = buf.readUInt16LE(1);
  if (pktsize !== len - 4) return null;
  let ss = buf.readUInt16LE(4);
  if (4 + ss > pktsize) return null;
  const keylen = ss;
  const key = buf.toString('latin1', 6, 6 + keylen);
  if (buf[3] === 10) {
    if (keylen + 2 + 2 > pktsize) return null;
    ss = buf.readUInt16LE(6 + keylen);
    if (4 + keylen + ss > pktsize) return null;
    const vallen = ss;
    const value = buf.toString('latin1', 8 + keylen, 8 + keylen + vallen);
    let expires = 0n;
    if (2 + keylen + 2 + vallen + 2 < pktsize) {
      ss = buf.readUInt16LE(8 + keylen + vallen);
      if (6 + keylen + vallen + ss > pktsize) return null;
      // uwsgi_str_num: sum of digit * 10^position, whatever the bytes are.
      let n = 0n;
      for (let i = 0; i < ss; i++) n = n * 10n + BigInt(buf[10 + keylen + vallen + i]! - 48);
      expires = n;
    }
    return { op: 'set', key, value, expires };
  }
  if (buf[3] === 11) return { op: 'del', key };
  return null;
}

test('encoders reproduce what uWSGI sends', () => {
  assert.deepEqual(encodeCacheSet(Buffer.from('sess1'), Buffer.from('hello'), 1795213916n), OBSERVED_SET);
  assert.deepEqual(encodeCacheDelete(Buffer.from('sess1'), false), OBSERVED_DEL);
  assert.deepEqual(encodeCacheDelete(Buffer.from('sess1'), true), PADDED_DEL);
});

test('decodes the observed set and both delete forms', () => {
  assert.deepEqual(decodeCacheUpdate(OBSERVED_SET), { op: 'set', key: Buffer.from('sess1'), value: Buffer.from('hello'), expires: 1795213916n, trace: null });
  assert.deepEqual(decodeCacheUpdate(OBSERVED_DEL), { op: 'delete', key: Buffer.from('sess1'), padded: false, trace: null });
  assert.deepEqual(decodeCacheUpdate(PADDED_DEL), { op: 'delete', key: Buffer.from('sess1'), padded: true, trace: null });
});

test('the uWSGI model ignores the delete uWSGI sends and applies the padded one (docs/PROTOCOL.md)', () => {
  assert.equal(uwsgiApplies(OBSERVED_DEL), null);
  assert.deepEqual(uwsgiApplies(PADDED_DEL), { op: 'del', key: 'sess1' });
  assert.deepEqual(uwsgiApplies(OBSERVED_SET), { op: 'set', key: 'sess1', value: 'hello', expires: 1795213916n });
});

function forward(buf: Buffer, repair: boolean, trace: TraceFields | null, limit = 65507): Buffer | 'too_large' {
  const s = newShape();
  assert.equal(inspectCacheUpdate(buf, s), undefined);
  return forwardForm(buf, s, repair, trace, limit);
}

test('a traced set is stored by uWSGI exactly as the original, and decodes with its trace', () => {
  const out = forward(OBSERVED_SET, true, TRACE) as Buffer;
  assert.equal(out.length, OBSERVED_SET.length + TRACE_BYTES);
  assert.deepEqual(uwsgiApplies(out), uwsgiApplies(OBSERVED_SET));
  assert.deepEqual(decodeCacheUpdate(out), { op: 'set', key: Buffer.from('sess1'), value: Buffer.from('hello'), expires: 1795213916n, trace: TRACE });
});

test('an unpadded delete is repaired and traced, and uWSGI applies it', () => {
  const out = forward(OBSERVED_DEL, true, TRACE) as Buffer;
  assert.deepEqual(uwsgiApplies(out), { op: 'del', key: 'sess1' });
  assert.deepEqual(decodeCacheUpdate(out), { op: 'delete', key: Buffer.from('sess1'), padded: true, trace: TRACE });
});

test('without repair an unpadded delete goes as it came, untraced, and uWSGI still ignores it', () => {
  const out = forward(OBSERVED_DEL, false, TRACE) as Buffer;
  assert.deepEqual(out, OBSERVED_DEL);
  assert.equal(uwsgiApplies(out), null);
});

test('a set without expires gets "0" before its trace, which uWSGI reads as never, like the absent block', () => {
  const bare = Buffer.concat([hex('6f0c000a 0300'), Buffer.from('abc'), hex('0500'), Buffer.from('hello')]);
  assert.deepEqual(decodeCacheUpdate(bare), { op: 'set', key: Buffer.from('abc'), value: Buffer.from('hello'), expires: null, trace: null });
  const out = forward(bare, true, TRACE) as Buffer;
  assert.deepEqual(uwsgiApplies(out), { op: 'set', key: 'abc', value: 'hello', expires: 0n });
  assert.deepEqual(uwsgiApplies(out), uwsgiApplies(bare));
  assert.deepEqual(decodeCacheUpdate(out), { op: 'set', key: Buffer.from('abc'), value: Buffer.from('hello'), expires: 0n, trace: TRACE });
});

test('forwarding a traced datagram replaces its trace; the size limit counts the trace', () => {
  const once = forward(OBSERVED_SET, true, TRACE) as Buffer;
  const next = { ...TRACE, hops: TRACE.hops + 1 };
  const twice = forward(once, true, next) as Buffer;
  assert.equal(twice.length, once.length);
  assert.deepEqual((decodeCacheUpdate(twice) as { trace: TraceFields }).trace, next);
  assert.equal(forward(OBSERVED_SET, true, TRACE, OBSERVED_SET.length + TRACE_BYTES - 1), 'too_large');
  assert.deepEqual(forward(OBSERVED_SET, true, null, OBSERVED_SET.length), OBSERVED_SET);
});

function withSize(body: Buffer, m2: number, datasize = body.length): Buffer {
  const h = Buffer.alloc(4);
  h[0] = 111;
  h.writeUInt16LE(datasize & 0xffff, 1);
  h[3] = m2;
  return Buffer.concat([h, body]);
}

const traceBytes = (forward(PADDED_DEL, true, TRACE) as Buffer).subarray(PADDED_DEL.length);

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
  // uWSGI would read the trace as the expires block: the forwarder writes "0" before a trace instead.
  ['a trace after a set without expires (read as its expires block)', withSize(Buffer.concat([hex('0100 6b 0100 76'), traceBytes]), 10), 'bad_expires'],
  ['a trace after an unpadded delete', withSize(Buffer.concat([hex('0100 6b'), traceBytes]), 11), 'malformed'],
  ['a trace with one byte missing', withSize(Buffer.concat([hex('0100 6b 0000'), traceBytes.subarray(0, TRACE_BYTES - 1)]), 11), 'malformed'],
  ['two traces', withSize(Buffer.concat([hex('0100 6b 0000'), traceBytes, traceBytes]), 11), 'malformed'],
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
    assert.equal(inspectCacheUpdate(buf, newShape()), reason);
    assert.equal(decodeCacheUpdate(buf), reason);
  });
}

test('a trace whose ingress or sequence is out of range is refused by the decoder', () => {
  const out = forward(PADDED_DEL, true, TRACE) as Buffer;
  const zero = Buffer.from(out);
  zero.fill(0, out.length - 16, out.length - 8); // ingress = 0
  assert.equal(decodeCacheUpdate(zero), 'malformed');
  const huge = Buffer.from(out);
  huge.writeUInt32LE(0xffffffff, out.length - 4); // sequence beyond 2^53
  assert.equal(decodeCacheUpdate(huge), 'malformed');
});

const key = fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => Buffer.from(a));
const value = fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a));
const expires = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const trace = fc
  .record({ ingress: fc.integer({ min: 1, max: 2 ** 48 - 1 }), sequence: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), hops: fc.integer({ min: 1, max: 255 }) })
  .map((t): TraceFields => ({ ...t }));

test('property: a set round-trips through encode, decode and a traced forward, and uWSGI stores the same', () => {
  fc.assert(
    fc.property(key, value, expires, trace, (k, v, e, t) => {
      const b = encodeCacheSet(k, v, e);
      const s = newShape();
      assert.equal(inspectCacheUpdate(b, s), undefined);
      assert.equal(s.cmd, CACHE_SET);
      assert.deepEqual(decodeCacheUpdate(b), { op: 'set', key: k, value: v, expires: e, trace: null });
      const out = forwardForm(b, s, true, t, 65535 + 4) as Buffer;
      assert.deepEqual(decodeCacheUpdate(out), { op: 'set', key: k, value: v, expires: e, trace: t });
      assert.deepEqual(uwsgiApplies(out), uwsgiApplies(b));
    }),
  );
});

test('property: a delete round-trips in both forms; the repaired, traced forward is applied by uWSGI', () => {
  fc.assert(
    fc.property(key, fc.boolean(), trace, (k, padded, t) => {
      const b = encodeCacheDelete(k, padded);
      const s = newShape();
      assert.equal(inspectCacheUpdate(b, s), undefined);
      assert.equal(s.cmd, CACHE_DELETE);
      assert.deepEqual(decodeCacheUpdate(b), { op: 'delete', key: k, padded, trace: null });
      const out = forwardForm(b, s, true, t, 65535) as Buffer;
      assert.deepEqual(decodeCacheUpdate(out), { op: 'delete', key: k, padded: true, trace: t });
      assert.deepEqual(uwsgiApplies(out), { op: 'del', key: k.toString('latin1') });
    }),
  );
});

test('property: random bytes never throw; whatever is accepted is something uWSGI applies the same way', () => {
  const cacheish = fc.tuple(fc.constantFrom(10, 11, 12), fc.uint8Array({ maxLength: 64 })).map(([m2, body]) => withSize(Buffer.from(body), m2));
  // Real updates with a random tail (often empty): most are valid, some are near misses.
  const nearMiss = fc
    .tuple(key, value, fc.boolean(), fc.boolean(), fc.uint8Array({ maxLength: 3 }), fc.boolean())
    .map(([k, v, isSet, padded, tail, keepTail]) => {
      const b = isSet ? encodeCacheSet(k, v, 42) : encodeCacheDelete(k, padded);
      return keepTail ? b : withSize(Buffer.concat([b.subarray(4), tail]), b[3]!);
    });
  let accepted = 0;
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)), cacheish, nearMiss), (b) => {
      const s = newShape();
      if (inspectCacheUpdate(b, s) !== undefined) return;
      accepted++;
      const out = forwardForm(b, s, true, TRACE, 65535) as Buffer;
      const model = uwsgiApplies(out);
      assert.notEqual(model, null, `accepted ${b.toString('hex')} but uWSGI would ignore its forward`);
      const d = decodeCacheUpdate(b) as { op: string; key: Buffer };
      assert.equal(model!.key, d.key.toString('latin1'));
    }),
    { numRuns: 5000 },
  );
  assert.ok(accepted > 50, `only ${accepted} random datagrams were valid: the generator does not exercise acceptance`);
});

test('property: truncating a valid set anywhere is refused, never misread', () => {
  fc.assert(
    fc.property(key, value, expires, fc.nat(), (k, v, e, cut) => {
      const b = encodeCacheSet(k, v, e);
      const n = cut % b.length;
      const t = Buffer.from(b.subarray(0, n));
      if (t.length >= 3) t.writeUInt16LE(Math.max(0, t.length - 4), 1); // keep the header consistent
      const s = newShape();
      const r = inspectCacheUpdate(t, s);
      // A truncation that ends exactly after the value is a valid set without expires.
      if (r === undefined) {
        assert.equal(n, 4 + 2 + k.length + 2 + v.length);
        assert.equal(s.expiresAbsent, true);
      } else assert.equal(typeof r, 'string');
    }),
  );
});

// The live state file's codec (src/wire/live-state-file.ts), written by hand
// so that a file of millions of sets can be checked without allocating per
// set and read a set at a time: held to protobufjs reading
// proto/live-state.proto, byte for byte both ways, and to never throwing on
// damaged files.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import { decodeLiveState, encodeLiveState, openLiveState, SetCursor } from '../src/wire/live-state-file.js';
import { repoRoot } from './helpers/uwsgi.js';

const FileType = protobuf.loadSync(join(repoRoot(), 'proto', 'live-state.proto')).lookupType('udprepeater.LiveStateFile');

const fileArb = fc.record({
  savedAtMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2 ** 31 }), fc.maxSafeNat()),
  channels: fc.array(
    fc.record({
      channel: fc.oneof(fc.constant(''), fc.string(), fc.string({ unit: 'grapheme', maxLength: 8 })),
      sets: fc.array(fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)), { maxLength: 6 }),
    }),
    { maxLength: 4 },
  ),
});

function viaProtobuf(buf: Uint8Array): { savedAtMs: number; channels: Array<{ channel: string; sets: string[] }> } {
  const m = FileType.toObject(FileType.decode(buf), { longs: Number, defaults: true }) as { savedAtMs: number; channels: Array<{ channel: string; sets: Uint8Array[] }> };
  return { savedAtMs: m.savedAtMs, channels: m.channels.map((c) => ({ channel: c.channel, sets: c.sets.map((s) => Buffer.from(s).toString('hex')) })) };
}

const hexed = (f: { savedAtMs: number; channels: ReadonlyArray<{ channel: string; sets: readonly Buffer[] }> }) => ({
  savedAtMs: f.savedAtMs,
  channels: f.channels.map((c) => ({ channel: c.channel, sets: c.sets.map((s) => s.toString('hex')) })),
});

describe('the live state file codec', () => {
  test('writes the bytes protobufjs writes, and reads back what protobufjs reads', () => {
    fc.assert(
      fc.property(fileArb, (f) => {
        const ours = encodeLiveState(f);
        const theirs = FileType.encode({ savedAtMs: f.savedAtMs, channels: f.channels }).finish();
        assert.equal(ours.toString('hex'), Buffer.from(theirs).toString('hex'));
        assert.deepEqual(hexed(decodeLiveState(theirs)!), viaProtobuf(theirs));
        const opened = openLiveState(ours)!;
        assert.equal(opened.total, f.channels.reduce((n, c) => n + c.sets.length, 0));
        assert.deepEqual(opened.channels.map((c) => [c.channel, c.count]), f.channels.map((c) => [c.channel, c.sets.length]));
      }),
      { seed: 17, numRuns: 500 },
    );
  });

  test('reads what another writer may put there: fields in any order, unknown fields, a repeated time (the last wins)', () => {
    const set = Buffer.from('0a0b0c', 'hex');
    // channel {2: set, 9: varint 5 (unknown), 1: "c", 2: set}, 7: fixed32 (unknown), 1: 5, 1: 300
    const channel = Buffer.concat([Buffer.from([0x12, 3]), set, Buffer.from([0x48, 5, 0x0a, 1, 0x63, 0x12, 3]), set]);
    const file = Buffer.concat([Buffer.from([0x12, channel.length]), channel, Buffer.from([0x3d, 1, 2, 3, 4, 0x08, 5, 0x08, 0xac, 0x02])]);
    assert.deepEqual(hexed(decodeLiveState(file)!), viaProtobuf(file));
    assert.deepEqual(hexed(decodeLiveState(file)!), { savedAtMs: 300, channels: [{ channel: 'c', sets: ['0a0b0c', '0a0b0c'] }] });
  });

  test('damaged files are refused whole (null), never thrown on; the sets of a whole file are handed out one at a time', () => {
    const good = encodeLiveState({ savedAtMs: Date.now(), channels: [{ channel: 'a', sets: [Buffer.from('one'), Buffer.from('two')] }, { channel: 'b', sets: [Buffer.from('three')] }] });
    for (let cut = 1; cut < good.length; cut++) {
      const r = openLiveState(good.subarray(0, cut));
      if (r !== null) assert.ok(r.total <= 3);
    }
    assert.equal(openLiveState(Buffer.from([0x12, 0x7f, 1])), null, 'a length past the end');
    assert.equal(openLiveState(Buffer.from([0x13, 0x14])), null, 'a group');
    assert.equal(openLiveState(Buffer.from([0x10, 1])), null, 'channels as a varint');
    assert.equal(openLiveState(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])), null, 'a varint of 11 bytes');
    assert.equal(openLiveState(Buffer.from([0x00, 0x01])), null, 'field 0');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.nat(good.length - 1), fc.nat(255), (junk, at, byte) => {
        openLiveState(junk);
        const bent = Buffer.from(good);
        bent[at] = byte;
        const r = openLiveState(bent);
        if (r === null) return;
        for (const c of r.channels) {
          const cursor = new SetCursor(bent, c);
          let n = 0;
          while (cursor.next() !== null) n++;
          assert.equal(n, c.count);
        }
      }),
      { seed: 17, numRuns: 2000 },
    );
    const opened = openLiveState(good)!;
    const cursor = new SetCursor(good, opened.channels[0]!);
    assert.deepEqual([cursor.next()?.toString(), cursor.next()?.toString(), cursor.next()], ['one', 'two', null]);
    assert.equal(cursor.read, 2);
  });
});

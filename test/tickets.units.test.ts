// The ticket-key schedule and its codec, without sockets: strict decoding of
// what a key holder sends, the merge rule every holder applies (so a fleet
// converges on one schedule whatever the order), the grid the repeater
// generates on, what a server loads at each moment, and the 48-byte layouts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { keysHeld, MAX_TICKET_LEAD_MS, newTicketKey, nginxTicketKey, nodeTicketKey, TicketKeys } from '../src/crypto/tickets.js';
import { bigintToLong } from '../src/wire/longs.js';
import { decodeEnvelope, encodeEnvelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { decodeTicketSchedule, encodeTicketSchedule, MAX_TICKET_KEYS, type TicketKey, ticketsFromProto } from '../src/wire/tickets.js';

const H = 3_600_000;
const NOW = 1_796_000_000_000;
const key = (nb: number, created = NOW, id = 1n): TicketKey => ({ id, notBeforeMs: nb, notAfterMs: nb + 2 * H, createdMs: created, secret: Buffer.alloc(80, Number(id % 251n)) });

test('a TICKET_KEYS envelope round-trips, and only a repeater may send one', () => {
  const keys = [key(NOW, NOW, 7n), key(NOW + H, NOW, 8n)];
  const fields = { kind: EnvelopeKind.TicketKeys, channelKey: 'ssl', sequence: 1, sentAtMs: NOW, datagram: null, trace: null, address: null, tickets: keys };
  const env = decodeEnvelope(encodeEnvelope({ ...fields, role: Role.Repeater }, bigintToLong(5n)));
  assert.ok(typeof env !== 'string');
  assert.deepEqual(env.tickets, keys);
  assert.equal(decodeEnvelope(encodeEnvelope({ ...fields, role: Role.Agent }, bigintToLong(5n))), 'bad_payload');
  assert.equal(decodeEnvelope(encodeEnvelope({ ...fields, role: Role.Repeater, tickets: null }, bigintToLong(5n))), 'bad_payload');
});

test('schedules are checked strictly: count, ids, sizes, times', () => {
  const proto = (keys: Array<Partial<Record<string, unknown>>>) => ({ keys });
  const good = { id: bigintToLong(1n), notBeforeMs: NOW, notAfterMs: NOW + H, createdMs: NOW, secret: Buffer.alloc(80) };
  assert.ok(Array.isArray(ticketsFromProto(proto([good]))));
  const bad: Array<[string, unknown]> = [
    ['no keys', proto([])],
    ['too many', proto(Array.from({ length: MAX_TICKET_KEYS + 1 }, (_, i) => ({ ...good, id: bigintToLong(BigInt(i + 1)) })))],
    ['id 0', proto([{ ...good, id: bigintToLong(0n) }])],
    ['an id twice', proto([good, good])],
    ['79-byte secret', proto([{ ...good, secret: Buffer.alloc(79) }])],
    ['48-byte secret', proto([{ ...good, secret: Buffer.alloc(48) }])],
    ['no secret', proto([{ ...good, secret: undefined }])],
    ['ends before it starts', proto([{ ...good, notAfterMs: NOW }])],
    ['lives 61 days', proto([{ ...good, notAfterMs: NOW + 61 * 86_400_000 }])],
    ['time 0', proto([{ ...good, createdMs: 0 }])],
    ['no schedule', null],
  ];
  for (const [what, m] of bad) assert.equal(ticketsFromProto(m), 'bad_payload', what);
  assert.equal(decodeTicketSchedule(Buffer.from('garbage, not protobuf')), 'bad_payload');
  const keys = [key(NOW, NOW, 3n)];
  assert.deepEqual(decodeTicketSchedule(encodeTicketSchedule(keys)), keys);
});

test('merging: per not_before the older key wins (then the smaller id), in any order', () => {
  const t = new TicketKeys();
  assert.equal(t.merge([key(NOW, NOW + 5, 1n)], NOW), true);
  assert.equal(t.merge([key(NOW, NOW + 1, 9n)], NOW), true, 'an older key replaces it');
  assert.equal(t.keys[0]!.id, 9n);
  assert.equal(t.merge([key(NOW, NOW + 1, 10n)], NOW), false, 'same age, larger id: ignored');
  assert.equal(t.merge([key(NOW, NOW + 1, 4n)], NOW), true, 'same age, smaller id: wins');
  assert.equal(t.merge([key(NOW, NOW + 1, 4n)], NOW), false, 'idempotent');
  // Expired, or announced implausibly far ahead: ignored.
  assert.equal(t.merge([{ ...key(NOW - 3 * H), id: 20n }], NOW), false);
  assert.equal(t.merge([{ ...key(NOW + MAX_TICKET_LEAD_MS + H), id: 21n }], NOW), false);

  const arb = fc.array(fc.record({ slot: fc.integer({ min: 0, max: 5 }), created: fc.integer({ min: 0, max: 3 }), id: fc.bigInt({ min: 1n, max: 6n }) }), { maxLength: 20 });
  fc.assert(
    fc.property(arb, fc.array(fc.nat(), { maxLength: 20 }), (specs, perm) => {
      const keys = specs.map((s) => ({ ...key(NOW + s.slot * H, NOW + s.created, s.id), secret: Buffer.alloc(80, Number(s.id)) }));
      const shuffled = [...keys];
      perm.forEach((p, i) => {
        const j = p % shuffled.length;
        if (shuffled.length > 0) [shuffled[i % shuffled.length], shuffled[j]] = [shuffled[j]!, shuffled[i % shuffled.length]!];
      });
      const a = new TicketKeys();
      a.merge(keys, NOW);
      const b = new TicketKeys();
      for (const k of shuffled) b.merge([k], NOW);
      const view = (t: TicketKeys) => t.keys.map((k) => [k.notBeforeMs, k.id, k.createdMs, k.secret.toString('hex')]);
      assert.deepEqual(view(b), view(a));
    }),
  );
});

test('the grid: the current and the next period get a key, once, only when allowed', () => {
  const p = { rotateMs: H, lifetimeMs: H };
  const t = new TicketKeys();
  const now = 10 * H + 1234;
  assert.equal(t.ensure(p, now, () => false), 0);
  assert.equal(t.ensure(p, now), 2);
  assert.deepEqual(t.keys.map((k) => [k.notBeforeMs, k.notAfterMs]), [[10 * H, 12 * H], [11 * H, 13 * H]]);
  assert.equal(t.ensure(p, now), 0);
  // At the boundary the next-but-one is made; the one before still decrypts until its not_after.
  assert.equal(t.ensure(p, 11 * H), 1);
  const v = t.view(11 * H + 1);
  assert.deepEqual([v.encrypting!.notBeforeMs, v.next!.notBeforeMs, v.older.map((k) => k.notBeforeMs)], [11 * H, 12 * H, [10 * H]]);
  assert.equal(t.nextChange(11 * H + 1), 12 * H);
  const old = t.keys[0]!;
  assert.equal(t.prune(12 * H), true);
  assert.ok(old.secret.every((b) => b === 0), 'an erased key is zeroed');
  assert.equal(keysHeld(p), 3);
  assert.equal(keysHeld({ rotateMs: H, lifetimeMs: 2.5 * H }), 5);
});

test('48-byte layouts: Node is name, HMAC, AES; nginx is name, AES, HMAC; 80 bytes is the secret', () => {
  const k = newTicketKey(NOW, NOW + H, NOW);
  const node = nodeTicketKey(k);
  const ng = nginxTicketKey(k, 48);
  assert.equal(node.length, 48);
  assert.ok(ng.subarray(0, 16).equals(node.subarray(0, 16)));
  assert.ok(ng.subarray(16, 32).equals(node.subarray(32, 48)));
  assert.ok(ng.subarray(32, 48).equals(node.subarray(16, 32)));
  assert.ok(nginxTicketKey(k, 80).equals(k.secret));
  // Derived, never a slice of the secret.
  assert.equal(k.secret.includes(node.subarray(16, 32)), false);
});

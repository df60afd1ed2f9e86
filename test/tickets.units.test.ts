// The ticket-key schedule and its codec, without sockets: strict decoding of
// what a key holder sends, the merge rule every holder applies (so a fleet
// converges on one schedule whatever the order), the grid the repeater
// generates on, what a server loads at each moment, the repeater's horizon
// (keys its schedule cannot produce are refused, from the bus and from
// tickets.pb), pruning that never drops the encrypting or the next key, and
// the 48-byte layouts.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { Logger } from '../src/base/log.js';
import { beyondHorizon, keysHeld, MAX_TICKET_LEAD_MS, newTicketKey, nginxTicketKey, nodeTicketKey, TICKET_HORIZON_SLACK_MS, TicketKeys } from '../src/crypto/ticket-schedule.js';
import { TicketStore } from '../src/daemon/ticket-store.js';
import { TicketService } from '../src/repeater/ticket-service.js';
import { bigintToLong } from '../src/wire/longs.js';
import { decodeEnvelope, encodeEnvelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { decodeTicketSchedule, encodeTicketSchedule, MAX_TICKET_KEYS, type TicketKey, ticketsFromProto } from '../src/wire/ticket-codec.js';

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
      const view = (t: readonly TicketKey[]) => t.map((k) => [k.notBeforeMs, k.id, k.createdMs, k.secret.toString('hex')]);
      // The rule, written out independently: per not_before, the smallest (created, id, secret).
      const best = new Map<number, TicketKey>();
      for (const k of keys) {
        const h = best.get(k.notBeforeMs);
        const before = h === undefined || k.createdMs < h.createdMs || (k.createdMs === h.createdMs && (k.id < h.id || (k.id === h.id && Buffer.compare(k.secret, h.secret) < 0)));
        if (before) best.set(k.notBeforeMs, k);
      }
      const expected = [...best.values()].sort((x, y) => x.notBeforeMs - y.notBeforeMs);
      assert.deepEqual(view(a.keys), view(expected), 'all at once');
      assert.deepEqual(view(b.keys), view(expected), 'one by one, shuffled');
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

const quiet = new Logger('error', 'json', { write: () => undefined });
const P = { rotateMs: H, lifetimeMs: H };

test('the horizon: a key further ahead than one rotation, or living longer than rotation + lifetime, is nothing our schedule makes', () => {
  const now = 10 * H + 1234;
  const k = (nb: number, span = 2 * H): TicketKey => ({ ...key(nb), notAfterMs: nb + span });
  // What ensure() generates is inside, at every moment of a period.
  const t = new TicketKeys();
  t.ensure(P, now);
  for (const g of t.keys) assert.equal(beyondHorizon(g, P, now), false);
  assert.equal(beyondHorizon(k(now + H + TICKET_HORIZON_SLACK_MS), P, now), false, 'one rotation ahead, slack included');
  assert.equal(beyondHorizon(k(now + H + TICKET_HORIZON_SLACK_MS + 1), P, now), true, 'further ahead');
  assert.equal(beyondHorizon(k(now, 2 * H + TICKET_HORIZON_SLACK_MS), P, now), false, 'rotation + lifetime, slack included');
  assert.equal(beyondHorizon(k(now, 2 * H + TICKET_HORIZON_SLACK_MS + 1), P, now), true, 'living longer');
  assert.equal(beyondHorizon(k(now - 3 * H, 60 * 86_400_000), P, now), true, 'started long ago, lives 60 days');
});

test('the repeater refuses and counts keys beyond its horizon, from the bus and from tickets.pb; the others are merged', () => {
  const now = Date.now();
  const s = new TicketService(P, { channels: () => [], send: () => 0, store: null, log: quiet });
  try {
    s.start([{ ...newTicketKey(now + 5 * H, now + 7 * H, now - H), id: 11n }]);
    assert.deepEqual(s.refused, { file: 1, bus: 0 });
    assert.equal(s.keys.keys.some((k) => k.id === 11n), false);
    const ahead = { ...newTicketKey(now + 3 * H, now + 5 * H, 1), id: 12n };
    const long = { ...newTicketKey(now, now + 60 * 86_400_000, 1), id: 13n };
    // Generated first (created 1): it would win its not_before over ours, and it is within the horizon.
    const next = s.keys.view(now).next!;
    const fair = { ...newTicketKey(next.notBeforeMs, next.notAfterMs, 1), id: 14n };
    s.merge([ahead, long, fair]);
    assert.deepEqual(s.refused, { file: 1, bus: 2 });
    assert.deepEqual(s.keys.keys.map((k) => k.id).filter((id) => id >= 11n && id <= 14n), [14n]);
  } finally {
    s.close();
  }
});

test('pruning beyond MAX_TICKET_KEYS keeps the encrypting and the next key: further ahead go first, then the oldest', () => {
  const now = 100 * H + 5;
  const cur = Math.floor(now / H) * H;
  const at = (nb: number, id: bigint): TicketKey => ({ id, notBeforeMs: nb, notAfterMs: nb + 30 * H, createdMs: 1, secret: Buffer.alloc(80, Number(id)) });
  // 16 future keys, then the current period's key generated as the grid asks: 17 held for a moment.
  const t = new TicketKeys();
  t.merge(Array.from({ length: MAX_TICKET_KEYS }, (_, i) => at(cur + (i + 1) * H, BigInt(i + 1))), now);
  assert.equal(t.ensure(P, now), 1);
  let v = t.view(now);
  assert.equal(v.encrypting?.notBeforeMs, cur, 'the encrypting key was pruned');
  assert.equal(v.next?.notBeforeMs, cur + H, 'the next key was pruned');
  assert.equal(t.size, MAX_TICKET_KEYS);
  assert.equal(Math.max(...t.keys.map((k) => k.notBeforeMs)), cur + (MAX_TICKET_KEYS - 1) * H, 'not the furthest ahead that went');
  // Older keys still decrypting, the encrypting one, the next, and more ahead: the furthest ahead go, then the oldest.
  const u = new TicketKeys();
  const older = Array.from({ length: 10 }, (_, i) => at(cur - (10 - i) * H, BigInt(100 + i)));
  const ahead = Array.from({ length: 8 }, (_, i) => at(cur + (i + 1) * H, BigInt(200 + i)));
  u.merge([...older, at(cur, 300n), ...ahead], now);
  v = u.view(now);
  assert.equal(u.size, MAX_TICKET_KEYS);
  assert.equal(v.encrypting?.id, 300n);
  assert.equal(v.next?.id, 200n);
  assert.deepEqual(u.keys.map((k) => k.id), [...older.map((k) => k.id), 300n, 200n, 201n, 202n, 203n, 204n]);
  // Nothing but older keys to spare: the oldest go.
  const w = new TicketKeys();
  w.merge([...Array.from({ length: 17 }, (_, i) => at(cur - (17 - i) * H, BigInt(400 + i))), at(cur, 500n), at(cur + H, 501n)], now);
  assert.deepEqual([w.view(now).encrypting?.id, w.view(now).next?.id, w.size, w.keys[0]!.id], [500n, 501n, MAX_TICKET_KEYS, 403n]);
});

test('a tickets.pb holding 16 future keys starts with a key that encrypts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-tickets-'));
  const now = Date.now();
  const cur = Math.floor(now / H) * H;
  try {
    new TicketStore(dir, quiet).save(Array.from({ length: MAX_TICKET_KEYS }, (_, i) => ({ ...newTicketKey(cur + (i + 1) * H, cur + (i + 3) * H, now - H), id: BigInt(i + 1) })));
    const s = new TicketService(P, { channels: () => [], send: () => 0, store: null, log: quiet });
    try {
      s.start(new TicketStore(dir, quiet).load());
      const v = s.keys.view(Date.now());
      assert.notEqual(v.encrypting, null, 'started with no key that encrypts');
      assert.equal(v.next?.notBeforeMs, cur + H);
      assert.equal(s.encryptingAge() >= 0, true);
    } finally {
      s.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

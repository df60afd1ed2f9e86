// The identity bus in-process (src/cluster/bus-identity.ts over
// src/crypto/bus-key-seal.ts and src/wire/bus-key.ts): key announcements and
// bus frames between IdentityBusSeals with real keys, every check of
// docs/PROTOCOL.md "The cluster bus with identities" in order, the table
// bounded to listed repeaters, and revocation. The daemons over a real
// nats-server: test/system/cluster.identity.test.ts.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { IdentityBusSeal } from '../src/cluster/bus-identity.js';
import type { SealHost } from '../src/cluster/bus-seal.js';
import { Logger } from '../src/base/log.js';
import { parsePeers, type PeerTable } from '../src/config/peers-file.js';
import { writeBusKey } from '../src/crypto/bus-key-seal.js';
import { Identity } from '../src/crypto/identity.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { decodeBusKey } from '../src/wire/bus-key.js';
import { encodeBus } from '../src/wire/bus.js';

const quiet = new Logger('error', 'json', { write: () => undefined });
const seed = (b: number) => new Uint8Array(32).map((_, i) => (b * 7 + i * 13 + 1) & 0xff);

interface Party {
  readonly id: Identity;
  readonly seal: IdentityBusSeal;
  readonly out: Uint8Array[];
  readonly forgotten: bigint[];
  readonly counts: Map<string, number>;
}

describe('the identity bus: key announcements and frames', () => {
  let ids: { a: Identity; b: Identity; c: Identity; n: Identity };
  let table: (lines: string[]) => PeerTable;
  let fleet: string[];

  before(async () => {
    await sodiumReady();
    ids = { a: Identity.fromSeed(seed(1)), b: Identity.fromSeed(seed(2)), c: Identity.fromSeed(seed(3)), n: Identity.fromSeed(seed(4)) };
    table = (lines) => parsePeers(lines.join('\n'), 'peers');
    fleet = [`${ids.a.publicText} a role=repeater`, `${ids.b.publicText} b role=repeater`, `${ids.c.publicText} c role=repeater`, `${ids.n.publicText} node-1`];
  });

  function party(id: Identity, peers: string[]): Party {
    const seal = new IdentityBusSeal(id, table(peers), 30_000, quiet);
    const p: Party = { id, seal, out: [], forgotten: [], counts: new Map() };
    const host: SealHost = {
      publish: (payload) => (p.out.push(payload), true),
      whenConnected: (fn) => fn(),
      count: (what, reason) => p.counts.set(`${what}:${reason}`, (p.counts.get(`${what}:${reason}`) ?? 0) + 1),
      forget: (origin) => p.forgotten.push(origin),
    };
    seal.attach(host);
    return p;
  }
  const last = (p: Party) => Buffer.from(p.out.at(-1)!);
  const frame = (p: Party) => p.seal.seal(encodeBus({ sender: p.seal.origin, sentAtMs: Date.now(), body: { type: 'heartbeat', name: 'x', startedAtMs: 1, intervalMs: 300, subscribers: 0 } }))!;

  test('two listed repeaters learn each other\'s keys, the newcomer\'s answered at once; their frames open with the sender\'s origin', () => {
    const a = party(ids.a, fleet);
    const b = party(ids.b, fleet);
    assert.equal(a.out.length, 1, 'a repeater announces on connect');
    assert.equal(decodeBusKey(last(a)) !== 'bad_payload' && (decodeBusKey(last(a)) as { recipients: readonly unknown[] }).recipients.length, 2, 'sealed for b and c, not for itself or the node');
    assert.equal(b.seal.open(last(a)), null);
    assert.equal(b.out.length, 2, 'b answered a key it did not hold');
    assert.equal(a.seal.open(last(b)), null);
    assert.equal(a.out.length, 2, 'a answered b\'s key, new to it');
    // a's answer: a key b holds, so not answered; then the same announcement again.
    assert.equal(b.seal.open(last(a)), null);
    assert.equal(b.out.length, 2, 'b answered a key it already held');
    assert.equal(b.seal.open(last(a)), 'replay', 'the same announcement twice');
    const env = b.seal.open(frame(a));
    assert.ok(typeof env === 'object' && env !== null, String(env));
    assert.equal(env.origin, a.seal.origin);
    // A key already held is not answered again (no announcement storm).
    a.seal.announce();
    const before = b.out.length;
    assert.equal(b.seal.open(last(a)), null);
    assert.equal(b.out.length, before);
  });

  test('a node\'s announcement is refused as not_repeater before any crypto, an unlisted one as unknown_peer; neither gets an entry, their frames are unknown_key', () => {
    const a = party(ids.a, fleet);
    const n = party(ids.n, [`${ids.a.publicText} a role=repeater`]);
    const stranger = party(Identity.fromSeed(seed(9)), [`${ids.a.publicText} a role=repeater`]);
    assert.equal(a.seal.open(last(n)), 'not_repeater');
    assert.equal(a.seal.open(last(stranger)), 'unknown_peer');
    assert.equal(a.seal.open(frame(n)), 'unknown_key');
    assert.equal(a.seal.open(frame(stranger)), 'unknown_key');
    assert.deepEqual(a.seal.keyIds().length, 1, 'only our own key in the table');
    assert.equal(a.out.length, 1, 'nobody answered');
  });

  test('every byte of an announcement counts: a flipped byte is refused; a key sealed for another repeater does not open here; a stale one is refused', () => {
    const a = party(ids.a, fleet);
    const ann = last(a);
    const reasons = new Set<string>();
    for (let i = 4; i < ann.length; i++) {
      const b = party(ids.b, fleet);
      const bad = Buffer.from(ann);
      bad[i]! ^= 0x01;
      const why = b.seal.open(bad);
      assert.notEqual(why, null, `byte ${i} flipped was accepted`);
      reasons.add(String(why));
    }
    console.log(JSON.stringify({ reasons: [...reasons].sort() }));
    // Sealed for b and c only: the node, whose peers file lists a as a repeater, finds nothing for it.
    const n = party(ids.n, [`${ids.a.publicText} a role=repeater`]);
    assert.equal(n.seal.open(ann), 'not_for_us');
    // Old: written with a clock 31 s behind.
    const old = writeBusKey(ids.a, [ids.b.peer], new Uint8Array(32).fill(7), 5n, Date.now() - 31_000);
    assert.equal(party(ids.b, fleet).seal.open(Buffer.from(old)), 'stale');
  });

  test('a frame whose origin is not the one its key\'s owner announced is refused (wrong_origin)', () => {
    const a = party(ids.a, fleet);
    const b = party(ids.b, fleet);
    assert.equal(b.seal.open(last(a)), null);
    assert.ok(typeof b.seal.open(frame(a)) === 'object');
    // a's identity announces another key under another origin (as after a restart): frames under the
    // previous key still open for 2 s, but their origin is no longer the owner's.
    const next = writeBusKey(ids.a, [ids.b.peer], new Uint8Array(32).fill(7), a.seal.origin + 1n, Date.now() + 1);
    assert.equal(b.seal.open(Buffer.from(next)), null);
    assert.equal(b.seal.open(frame(a)), 'wrong_origin');
  });

  test('a reload that removes a repeater revokes it: its key and announcements refused as revoked, forgotten as a peer, and our new key is sealed for the others only', () => {
    const a = party(ids.a, fleet);
    const b = party(ids.b, fleet);
    const c = party(ids.c, fleet);
    for (const [x, y] of [[a, c], [b, c], [c, a], [c, b], [a, b], [b, a]] as Array<[Party, Party]>) x.seal.open(last(y));
    const oldKey = a.seal.keyIds()[0];
    a.seal.usePeers(table(fleet.filter((l) => !l.startsWith(ids.c.publicText))), 30_000);
    assert.deepEqual(a.forgotten, [c.seal.origin]);
    assert.equal(a.seal.open(frame(c)), 'revoked');
    c.seal.announce();
    assert.equal(a.seal.open(last(c)), 'revoked');
    assert.notEqual(a.seal.keyIds()[0], oldKey, 'a kept its sending key');
    // The new key: b opens it, c finds nothing for it, and a's next frame does not open at c.
    assert.equal(b.seal.open(last(a)), null);
    assert.equal(c.seal.open(last(a)), 'not_for_us');
    const f = frame(a);
    assert.ok(typeof b.seal.open(f) === 'object');
    assert.equal(c.seal.open(frame(a)), 'unknown_key');
  });
});

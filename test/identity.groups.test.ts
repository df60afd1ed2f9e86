// Group keys in identity mode (docs/PROTOCOL.md, "Group keys and
// revocation"): the pure rules of the repeater's and the member's sides with
// real keys, then real `serve` and `agent` daemons by identity over real
// UDP: members that acknowledged the key get one group frame per datagram,
// and a revocation replaces the key before the reload returns.

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { GroupCipher } from '../src/crypto/group-cipher.js';
import type { Link } from '../src/crypto/link-responder.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { MemberGroups } from '../src/member/member-groups.js';
import { GroupKeys, groupScope } from '../src/path/group-keys.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { decodeEnvelope, encodeEnvelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { agent, type Running, serve } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { eventually, freePort, type Receiver } from './helpers/net.js';
import { groupFrames, linkFrames, Relay } from './helpers/relay.js';
import { Scope } from './helpers/scope.js';
import { writePeers } from './helpers/identities.js';

before(() => sodiumReady());

const T0 = 1_800_000_000_000;
const link = () => ({}) as unknown as Link;
const keyIdOf = (frame: Buffer) => frame.readUInt32LE(4);

describe('group keys: the rules', () => {
  test('a group frame opens under its key only, once, and not after a byte changed', () => {
    const k = GroupCipher.draw(() => false);
    const other = GroupCipher.draw((id) => id === k.keyId);
    const member = new GroupCipher(k.keyId, Uint8Array.from(k.secret));
    const f = k.seal(Buffer.from('one datagram for every member'));
    assert.equal(keyIdOf(f), k.keyId);
    assert.equal(other.open(f), 'unknown_key');
    const flipped = Buffer.from(f);
    flipped[20]! ^= 1;
    assert.equal(member.open(flipped), 'auth_failed');
    assert.equal(Buffer.from((member.open(f) as { plain: Uint8Array }).plain).toString(), 'one datagram for every member');
    assert.equal(member.open(f), 'replay');
    // A link frame's type with the key id written in does not open as a group frame.
    const asLink = Buffer.from(f);
    asLink[3] = 3;
    assert.equal(member.open(asLink), 'unknown_key');
  });

  test('the repeater: a key is offered until its exact key and epoch are acknowledged over that link; a rotation replaces every key, held by nobody', () => {
    const g = new GroupKeys();
    const [a, b] = [link(), link()];
    const offer = g.offer(a, 'ssl')!;
    assert.equal(offer.epoch, 1);
    assert.equal(offer.replacesKeyId, 0);
    assert.deepEqual(g.offer(b, 'ssl')!.keyId, offer.keyId, 'one key per channel key');
    const v = g.version;
    assert.equal(g.ack(a, 'ssl', { keyId: offer.keyId, epoch: 2 }), false, 'another epoch');
    assert.equal(g.ack(a, 'ssl', { keyId: offer.keyId ^ 1, epoch: 1 }), false, 'another key');
    assert.equal(g.ack(a, 'other', { keyId: offer.keyId, epoch: 1 }), false, 'another channel key');
    assert.equal(g.holds(a, 'ssl'), false);
    assert.equal(g.version, v, 'a refused ack changed what is cached');
    assert.equal(g.ack(a, 'ssl', { keyId: offer.keyId, epoch: 1 }), true);
    assert.ok(g.holds(a, 'ssl') && !g.holds(b, 'ssl'));
    assert.ok(g.version > v);
    assert.equal(g.offer(a, 'ssl'), null, 'offered again to a holder');
    const sealed = g.current('ssl')!.cipher;
    sealed.seal(Buffer.from('x'));
    sealed.seal(Buffer.from('y'));
    g.rotate();
    assert.ok(!g.holds(a, 'ssl'), 'a holder of the old key holds the new one');
    assert.equal(sealed.secret.every((x) => x === 0), true, 'the old key was not zeroed');
    const next = g.offer(a, 'ssl')!;
    assert.notEqual(next.keyId, offer.keyId);
    assert.equal(next.epoch, 2);
    assert.deepEqual([next.replacesKeyId, next.replacesUntilCounter], [offer.keyId, 3]);
    // Two channels with the same channel key: keys of their own (a member of one cannot open the other's frames).
    assert.notEqual(g.offer(a, groupScope('one', 'ssl'))!.keyId, g.offer(a, groupScope('two', 'ssl'))!.keyId);
  });

  test('the member: a newer epoch replaces the key, the old one opens only what was sealed before, for 2 s; an older epoch is ignored unless the link was made again', () => {
    const m = new MemberGroups();
    const k1 = GroupCipher.draw(() => false);
    const give = (k: GroupCipher, epoch: number, replaces = { keyId: 0, until: 0 }) => ({ keyId: k.keyId, key: Uint8Array.from(k.secret), epoch, replacesKeyId: replaces.keyId, replacesUntilCounter: replaces.until });
    assert.equal(m.take('r', give(k1, 1), T0), 'new');
    assert.equal(m.take('r', give(k1, 1), T0), 'same');
    const early = k1.seal(Buffer.from('sealed before the revocation'));
    const k2 = GroupCipher.draw((id) => id === k1.keyId);
    assert.equal(m.take('r', give(k2, 2, { keyId: k1.keyId, until: k1.nextCounter }), T0), 'new');
    const late = k1.seal(Buffer.from('sealed under the old key after the revocation'));
    assert.equal(Buffer.from(m.open('r', early, T0 + 100) as Uint8Array).toString(), 'sealed before the revocation');
    assert.equal(m.open('r', late, T0 + 100), 'unknown_key');
    assert.equal(Buffer.from(m.open('r', k2.seal(Buffer.from('new')), T0 + 100) as Uint8Array).toString(), 'new');
    const inFlight = k1.seal(Buffer.from('x'));
    assert.equal(m.open('r', inFlight, T0 + 2_001), 'unknown_key', 'the old key outlived its grace');
    // An older epoch: a stale GroupKey, ignored; after a new link (a restarted repeater counts from 1), taken.
    const k3 = GroupCipher.draw(() => false);
    assert.equal(m.take('r', give(k3, 1), T0), 'stale');
    m.relinked('r');
    assert.equal(Buffer.from(m.open('r', k2.seal(Buffer.from('still open')), T0) as Uint8Array).toString(), 'still open', 'a new link lost the held key before a new one came');
    assert.equal(m.take('r', give(k3, 1), T0), 'new');
    // Keys of one repeater open nothing of another.
    assert.equal(m.open('another', k3.seal(Buffer.from('x')), T0), 'unknown_key');
  });

  test('GROUP_KEY only from a repeater, GROUP_KEY_ACK only from an agent, each naming the channel key it travels with', () => {
    const k = GroupCipher.draw(() => false);
    const base = { channelKey: 'ssl', sequence: 1, sentAtMs: T0, datagram: null, trace: null, address: null };
    const groupKey = { keyId: k.keyId, key: k.secret, epoch: 1, replacesKeyId: 0, replacesUntilCounter: 0 };
    const ok = decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKey, role: Role.Repeater, groupKey }, 1));
    assert.equal(typeof ok, 'object');
    assert.deepEqual(Buffer.from((ok as { groupKey: { key: Uint8Array } }).groupKey.key), Buffer.from(k.secret));
    assert.equal(decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKey, role: Role.Agent, groupKey }, 1)), 'bad_payload');
    assert.equal(decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKey, role: Role.Repeater, groupKey: { ...groupKey, key: k.secret.subarray(0, 31) } }, 1)), 'bad_payload');
    assert.equal(decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKey, role: Role.Repeater, groupKey: { ...groupKey, keyId: 0 } }, 1)), 'bad_payload');
    const ack = { keyId: k.keyId, epoch: 1 };
    assert.equal(typeof decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKeyAck, role: Role.Agent, groupKeyAck: ack }, 1)), 'object');
    assert.equal(decodeEnvelope(encodeEnvelope({ ...base, kind: EnvelopeKind.GroupKeyAck, role: Role.Repeater, groupKeyAck: ack }, 1)), 'bad_payload');
  });
});

describe('group keys: real daemons by identity', () => {
  const scope = new Scope();
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-groups-'));
  let files = 0;
  const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`session ${k};`), 0);
  const keyOf = (b: Buffer) => /session ([^;]+);/.exec(b.toString('latin1'))?.[1] ?? null;
  async function identity(): Promise<{ file: string; pub: string }> {
    const file = join(dir, `id${files++}`);
    assert.equal((await runCli(['keygen', '--identity', file])).code, 0);
    return { file, pub: (await runCli(['pubkey', file])).stdout.trim() };
  }
  const peers = (lines: string[], file = join(dir, `peers${files++}`)) => {
    return writePeers(file, lines);
  };
  function track<T extends { stop(): Promise<unknown> } | { close(): unknown }>(r: T): T {
    scope.track({ close: () => ('stop' in r ? r.stop() : r.close()) });
    return r;
  }

  test('members that acknowledged the key get one group frame per datagram, whatever their number; a revocation replaces the key before the reload returns and the others take the new one at once', async () => {
    const [rid, ia, ib, ic, id] = [await identity(), await identity(), await identity(), await identity(), await identity()];
    const sp = await freePort();
    const repeaterPeers = peers([`${ia.pub} node-a`, `${ib.pub} node-b`, `${ic.pub} node-c`, `${id.pub} node-d`]);
    const r = track(await serve(['--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--identity', rid.file, '--peers', repeaterPeers]));
    const agentPeers = peers([`${rid.pub} repeater-a role=repeater`]);
    // B is reached through a relay both ways (it advertises the relay): its frames are captured.
    const relay = track(await Relay.open(sp));
    // B announces every 5 s: a new key it holds within a second of the reload was pushed, not answered to a SUBSCRIBE.
    const linked = async (who: { file: string }, node: Receiver, viaRelay = false): Promise<Running & { local: number }> => {
      const local = await freePort();
      const bind = await freePort();
      const args = ['--repeater', `127.0.0.1:${viaRelay ? relay.port : sp}`, '--identity', who.file, '--peers', agentPeers, '--local', `127.0.0.1:${local}`, '--bind', `127.0.0.1:${bind}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', viaRelay ? '5' : '0.5'];
      if (viaRelay) args.push('--advertise', `127.0.0.1:${relay.port}`);
      return Object.assign(track(await agent(args)), { local });
    };
    const [na, nb, nc, nd] = [await scope.receiver(), await scope.receiver(), await scope.receiver(), await scope.receiver()];
    const a = await linked(ia, na);
    await linked(ib, nb, true);
    await linked(ic, nc);
    await linked(id, nd);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 4 });
    // Every member acknowledges the key it was handed with its first MEMBERSHIP: wait until a datagram goes as one group frame to all three others.
    const groupSeals = async () => (await r.metrics()).value('udprepeater_group_frames_total');
    let n = 0;
    await eventually('a datagram sealed once for every member', async () => {
      const before = { group: await groupSeals(), link: (await r.metrics()).value('udprepeater_sealed_frames_total') };
      await scope.sender.send(set(`warm-${n++}`), a.local);
      await nb.waitFor(n);
      const after = { group: await groupSeals(), link: (await r.metrics()).value('udprepeater_sealed_frames_total') };
      return after.group === before.group + 1 && after.link === before.link ? true : undefined;
    });
    // Twenty more: twenty group seals for three members, no copy sealed per link.
    const g0 = await groupSeals();
    const l0 = (await r.metrics()).value('udprepeater_sealed_frames_total');
    for (let i = 0; i < 20; i++) await scope.sender.send(set(`g${i}`), a.local);
    for (const node of [nb, nc, nd]) await node.waitFor(n + 20);
    assert.equal((await groupSeals()) - g0, 20);
    // (Link seals meanwhile: only MEMBERSHIP answers to the agents' SUBSCRIBEs, every 0.5 s; per-link copies would be 60.)
    const linkSeals = (await r.metrics()).value('udprepeater_sealed_frames_total') - l0;
    assert.ok(linkSeals < 10, `${linkSeals} frames sealed per link while members held the key`);
    assert.equal((await r.metrics()).value('udprepeater_group_keys'), 1);
    const keyBefore = keyIdOf(groupFrames(relay.toAgent).at(-1)!);

    // D revoked: the key is replaced; B and C lose nothing; what follows is under a key D never held.
    const capturedBefore = relay.toAgent.length;
    peers([`${ia.pub} node-a`, `${ib.pub} node-b`, `${ic.pub} node-c`], repeaterPeers);
    const reloadAt = Date.now();
    r.d.signal('SIGHUP');
    await r.d.log.waitFor('identities revoked: links dropped');
    let sent = 0;
    const newKeyAt = await eventually('B back on group frames under a new key', async () => {
      await scope.sender.send(set(`after${sent++}`), a.local);
      await nb.waitFor(n + 20 + sent);
      const g = groupFrames(relay.toAgent.slice(capturedBefore));
      return g.length > 0 ? Date.now() : undefined;
    }, 3000);
    for (const node of [nb, nc]) {
      const got = new Set((await node.waitFor(n + 20 + sent)).map(keyOf));
      for (let i = 0; i < sent; i++) assert.ok(got.has(`after${i}`), `a remaining member lost after${i}`);
    }
    const after = relay.toAgent.slice(capturedBefore);
    assert.ok(!groupFrames(after).some((f) => keyIdOf(f) === keyBefore), 'a group frame after the revocation under the key the revoked node holds');
    assert.ok(linkFrames(after).length >= 2, 'no GROUP_KEY and link-sealed copies after the revocation');
    // Pushed with the reload: well before B's next SUBSCRIBE (every 5 s) could have fetched it.
    assert.ok(newKeyAt - reloadAt < 2000, `B took the new key ${newKeyAt - reloadAt} ms after the reload`);
    console.log(JSON.stringify({ reloadToGroupFramesAgainMs: newKeyAt - reloadAt, datagramsUnderLinkKeyMeanwhile: sent - 1 }));
  });
});

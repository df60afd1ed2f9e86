// When a repeater tells a sealed subscriber from which of its sequence
// numbers it is a member of its channel key's group (MEMBERSHIP frames,
// SECURITY.md "Secure mode"): at a new subscription, again at every announce
// with the same number, and with a new number whenever it becomes a member
// anew (the end of a suspension, regained ownership in a cluster); never to a
// subscriber whose subscription named no receiver (an older agent). A real
// channel, a real sealed gate and real loopback sockets; what the subscriber
// gets is opened as an agent opens it, and every group frame sealed while it
// was out is below the number it is told. The frames leave through the
// datagram path's out door, as on the live path.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { LoopGuard } from '../src/judge/loop-guard.js';
import { Membership } from '../src/judge/membership.js';
import { createFanout } from '../src/net/io.js';
import { Channel, type Subscriber } from '../src/path/channel.js';
import { DataSeal } from '../src/path/data-seal.js';
import { OutDoor } from '../src/path/out-door.js';
import { parseEndpoint, type Endpoint } from '../src/wire/address.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { type Envelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { newKeyFile } from './helpers/keys.js';
import type { Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const fanout = createFanout('dgram', { sendBuffer: 0, sendQueue: 64 });
after(() => fanout.close());
before(() => sodiumReady());

const ep = (text: string) => parseEndpoint(text) as Endpoint;
const content = encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0);

async function setup() {
  const ring = KeyRing.load([newKeyFile()]);
  const repeater = new SecureSession(Role.Repeater);
  const gate = new DataSeal(repeater, ring, { maxSkewMs: 30_000 });
  const events = { outOfService: () => undefined, outletError: () => undefined };
  const ch = new Channel('ssl', 'ssl', { maxSubscribers: 16, toleranceMs: 60_000, deadAfter: 0, deadRetryMs: 1000, multicastTtl: 1, multicastInterface: null }, fanout, events);
  const out = new OutDoor(fanout, new LoopGuard(), () => ({ seal: gate, links: null, repairDeletes: false, outLimit: 65_507 }));
  ch.sealer = gate;
  ch.teller = (c, e, from) => out.membership(c, e, from);
  scope.track({ close: () => ch.close() });
  /** A sealed subscriber at a real socket, and what it is sent, opened as an agent opens it. */
  const subscriber = async () => {
    const rx: Receiver = await scope.receiver();
    const e = (ch.sealed.upsert({ endpoint: ep(rx.address), key: 'ssl', source: '127.0.0.1', origin: 1n }, Date.now()) as { entry: Subscriber }).entry;
    const agent = new SecureSession(Role.Agent, { startedAtMs: 0 });
    const me = new Membership(() => rx.address);
    const open = (frame: Buffer) => {
      const env = agent.open(ring, frame, 30_000, Date.now(), me);
      // As the agent and the session cache do.
      if (typeof env === 'object' && env.kind === EnvelopeKind.Membership) me.raise(env.origin, env.memberFrom!);
      return env;
    };
    const next = async (): Promise<Envelope> => {
      const env = open(await rx.next());
      assert.ok(typeof env === 'object', String(env));
      return env;
    };
    return { rx, e, next, open };
  };
  let forwarded = 0;
  /** One live datagram to the channel's sealed subscribers; returns how many were forwarded so far. */
  const forward = () => {
    out.live(ch, content, true, { content, trace: null }, null);
    return ++forwarded;
  };
  return { ch, gate, repeater, subscriber, forward };
}

test('a subscriber that named its receiver is told when it joined, again at each announce, and anew after each break', async () => {
  const { ch, gate, subscriber, forward } = await setup();
  const s = await subscriber();
  const other = await subscriber(); // another member: group frames are sealed while the first is out
  // A new subscription: told before the first group frame it gets.
  ch.confirmMember(s.e);
  const m1 = await s.next();
  assert.equal(m1.kind, EnvelopeKind.Membership);
  assert.equal(m1.receiver, s.rx.address);
  forward();
  const g1 = await s.next();
  assert.equal(g1.kind, EnvelopeKind.CacheDatagram);
  assert.equal(g1.receiver, '', 'a live frame is a group frame');
  assert.ok(g1.sequence >= m1.memberFrom!);
  // Every announce tells it again, with the same number: it has been a member all along.
  ch.confirmMember(s.e);
  assert.equal((await s.next()).memberFrom, m1.memberFrom);

  const breaks: Array<[string, (e: Subscriber) => void, (e: Subscriber) => void]> = [
    ['a suspension', (e) => ch.sealed.suspend(e, Date.now() + 1), () => ch.sealed.resumeDue(Date.now() + 10)],
    ['lost ownership', (e) => ((e.owned = false), ch.sealed.touch()), (e) => ((e.owned = true), ch.sealed.touch())],
  ];
  for (const [what, leave, back] of breaks) {
    leave(s.e);
    const missed = gate.nextSequence;
    const n = forward(); // sealed for the group without it; the other member, never told anything, gets one frame per datagram
    const captured = (await other.rx.waitFor(n))[n - 1]!;
    back(s.e);
    forward(); // the first frame after it is back: the channel tells it first
    const m = await s.next();
    assert.equal(m.kind, EnvelopeKind.Membership, what);
    assert.ok(m.memberFrom! > missed, `${what}: the frame it missed (${missed}) is below its new number (${m.memberFrom})`);
    const g = await s.next();
    assert.equal(g.kind, EnvelopeKind.CacheDatagram, what);
    assert.ok(g.sequence >= m.memberFrom!, what);
    // The frame it missed, captured at the other member and replayed to it, is refused.
    assert.equal(s.open(captured), 'before_join', what);
  }
});

test('a subscriber whose subscription named no receiver (an older agent) is never sent a MEMBERSHIP frame', async () => {
  const { ch, subscriber, forward } = await setup();
  const s = await subscriber();
  forward();
  ch.sealed.suspend(s.e, Date.now() + 1);
  forward();
  ch.sealed.resumeDue(Date.now() + 10);
  forward();
  const kinds = [(await s.next()).kind, (await s.next()).kind];
  assert.deepEqual(kinds, [EnvelopeKind.CacheDatagram, EnvelopeKind.CacheDatagram]);
  const probe = Buffer.from('probe');
  await scope.sender.send(probe, s.rx.port);
  assert.deepEqual(await s.rx.waitFor(3).then((got) => got[2]), probe, 'something more was sent');
});

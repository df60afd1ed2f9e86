// Safety of cluster mode against an attacker on the bus: a rogue NATS client
// that reaches the NATS server (as anyone on its network could) but holds no
// key. It publishes garbage and unsealed messages, replays captured sealed
// frames, seals with a key of its own, replays frames across legs (agent <->
// repeater <-> bus) and, on a cluster run with --cluster-insecure, forges
// subscriber announcements and floods heartbeats. Proves: nothing it sends
// is delivered, every refusal is counted under its reason in
// udprepeater_cluster_messages_dropped_total, announcements never add a
// destination, the peer table stays bounded, and the repeaters keep
// forwarding. Real nats-server, real repeaters through the CLI, real agent;
// test sockets as nodes and subscribers.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, before, describe, test } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { BusSeal } from '../../src/cluster/bus-seal.js';
import { idOf } from '../../src/cluster/heard.js';
import { owner } from '../../src/judge/rendezvous.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { type BusBody, encodeBus } from '../../src/wire/bus.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { frames, httpGet, keygen, Metrics, type Running } from '../helpers/attack.js';
import { Daemon } from '../helpers/daemon.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster safety suite (test/system/safety.cluster.test.ts)', 'Cluster mode safety is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const WAIT = 10_000;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);
const keyOf = (d: Buffer) => (d.length >= 6 ? d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1') : `<${d.toString('hex')}>`);
const DROPPED = 'udprepeater_cluster_messages_dropped_total';

interface Node {
  readonly r: Running;
  readonly port: number;
  readonly name: string;
  /** --listen-sealed port, when asked for. */
  readonly sealedPort: number | null;
}

/** A NATS client with bus access and no key: what it captures, and what it publishes. */
class Rogue {
  readonly captured: Array<{ subject: string; data: Buffer }> = [];
  private constructor(readonly nc: NatsConnection) {}

  static async connect(url: string): Promise<Rogue> {
    // noEcho: what it captures is what the repeaters published, never its own.
    return new Rogue(await connect({ servers: url, name: 'rogue', noEcho: true }));
  }

  /** Captures every message on `subject` from now on. */
  async watch(subject: string): Promise<void> {
    this.nc.subscribe(subject, {
      callback: (err, m) => {
        if (err === null) this.captured.push({ subject: m.subject, data: Buffer.from(m.data) });
      },
    });
    await this.nc.flush();
  }

  /** Publishes each payload on each subject; resolves once the server has them all. */
  async publish(subjects: readonly string[], payloads: readonly Uint8Array[]): Promise<void> {
    for (const s of subjects) for (const p of payloads) this.nc.publish(s, p);
    await this.nc.flush();
  }

  /** The first captured message on a subject matching `re` (waiting for it). */
  first(re: RegExp): Promise<{ subject: string; data: Buffer }> {
    return eventually(`a bus message on ${re}`, () => this.captured.find((c) => re.test(c.subject)), WAIT);
  }

  close(): Promise<void> {
    return this.nc.close();
  }
}

/** `serve` (test/helpers/attack.ts) with a start timeout that tolerates a loaded machine. */
async function serveSlowly(args: string[]): Promise<Running> {
  const d = await Daemon.serve([...args, '--metrics', '127.0.0.1:0'], WAIT);
  const metricsPort = Number((await d.log.waitFor('status server listening', {}, { ms: WAIT }))['port']);
  return { d, metricsPort, metrics: async () => new Metrics((await httpGet(metricsPort, '/metrics')).body), stop: () => d.stop() };
}

/** `agent` likewise; stopped when the file's tests end. */
async function agentSlowly(args: string[]): Promise<Daemon> {
  const d = Daemon.spawn(['agent', '--log-format', 'json', '--log-level', 'debug', ...args]);
  scope.track({ close: () => d.stop() });
  await d.log.waitFor('udprepeater agent running', {}, { ms: WAIT });
  return d;
}

describe('cluster mode under attack from the bus', { skip }, () => {
  let nats: NatsCluster;
  /** The data key (agents hold it) and the bus's own key (repeaters only). */
  let key: string;
  let clusterKey: string;
  let rogue: Rogue;
  let clusters = 0;
  const nodes: Node[] = [];

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(1, 'ursafety');
    key = await keygen();
    clusterKey = await keygen();
    rogue = await Rogue.connect(nats.urls[0]!);
    await sodiumReady();
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.r.stop();
  });
  after(async () => {
    await rogue?.close();
    await nats?.close();
  });

  /** A fresh cluster name per test: what one test publishes never reaches another's repeaters. */
  const fresh = () => `safety${clusters++}`;

  async function repeater(cluster: string, opts: { insecure?: boolean; sealedListener?: boolean; extra?: string[] } = {}): Promise<Node> {
    const port = await freePort();
    const sealedPort = opts.sealedListener === true ? await freePort() : null;
    const r = await serveSlowly([
      '--listen', `127.0.0.1:${port},channel=ssl,key=ssl`,
      ...(sealedPort === null ? [] : ['--listen-sealed', `127.0.0.1:${sealedPort},channel=ssl,key=ssl`]),
      '--cluster', nats.urls[0]!,
      '--cluster-name', cluster,
      '--cluster-peer-timeout', '1.5',
      ...(opts.insecure === true ? ['--cluster-insecure'] : ['--key-file', key, '--cluster-key-file', clusterKey]),
      '--log-level', 'info',
      ...(opts.extra ?? []),
    ]);
    const node: Node = { r, port, name: `repeater@${port}`, sealedPort };
    nodes.push(node);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: WAIT });
    return node;
  }

  /** Waits until each repeater hears `count` peers (so each one's bus subscription is in place). */
  async function peersSee(ns: Node[], count: number): Promise<void> {
    for (const n of ns) {
      await eventually(`${n.name} to see ${count} peers`, async () => {
        const h = JSON.parse((await httpGet(n.r.metricsPort, '/healthz')).body) as { cluster: { peers: unknown[] } };
        return h.cluster.peers.length === count ? true : undefined;
      }, WAIT);
    }
  }

  async function subscribe(n: Node, rx: Receiver): Promise<void> {
    const from = n.r.d.log.length;
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), n.port);
    await n.r.d.log.waitFor('subscribed', { address: rx.address }, { from });
  }

  const metric = async (n: Node, name: string, labels: Record<string, string> = {}) => (await n.r.metrics()).value(name, labels);
  const dropped = (n: Node, reason: string) => metric(n, DROPPED, { reason });

  /** Waits until `n` counted at least `count` bus messages dropped for `reason`; returns the count. */
  function dropsReach(n: Node, reason: string, count: number): Promise<number> {
    return eventually(`${n.name} to count ${count} bus messages dropped as ${reason}`, async () => {
      const v = await dropped(n, reason);
      return v >= count ? v : undefined;
    }, WAIT);
  }

  /**
   * The sentinel: sends set(marker) into `via` after the attack was processed
   * and returns, per receiver, the keys it got from its `from` index on,
   * before the marker. Whatever the attack got through arrived before it.
   */
  async function beforeMarker(rxs: ReadonlyArray<readonly [Receiver, number]>, marker: string, via: Node): Promise<string[][]> {
    await sender.send(set(marker), via.port);
    const out: string[][] = [];
    for (const [rx, from] of rxs) {
      out.push(
        await eventually(`${marker} at ${rx.address}`, () => {
          const keys = rx.received.slice(from).map(keyOf);
          const at = keys.indexOf(marker);
          return at < 0 ? undefined : keys.slice(0, at);
        }, WAIT),
      );
    }
    return out;
  }

  /** A BusMessage as a repeater would publish it, unsealed. */
  const plainBus = (body: BusBody, senderId = randomBytes(8).readBigUInt64LE(0) | 1n) => encodeBus({ sender: senderId, sentAtMs: Date.now(), body });
  const busDatagram = (k: string): BusBody => ({ type: 'datagram', channel: 'ssl', datagram: set(k), trace: null, origin: 0n, opaque: false });

  /** Bus sealing as src/daemon/serve.ts builds it, over the key file given (a repeater's, or whatever a forger holds). */
  const gateOf = (keyFile: string): BusSeal => BusSeal.load([keyFile], [], 30_000);

  test('garbage and unsealed bus messages on the data and control subjects: nothing delivered, each counted by reason, the fan-out goes on', async () => {
    const name = fresh();
    const [a, b] = [await repeater(name), await repeater(name)];
    await peersSee([a, b], 1);
    const [rxA, rxB] = [await scope.receiver(), await scope.receiver()];
    await subscribe(a, rxA);
    await subscribe(b, rxB);
    await rogue.watch(`${name}.ctl`);
    // A real frame tells the attacker the cluster's key id (it is in every frame header).
    const keyId = (await rogue.first(new RegExp(`^${name}\\.ctl$`))).data.readUInt32LE(4);
    const frameLike = (version: number, id: number, size: number) => {
      const f = randomBytes(size);
      f[0] = 0x75;
      f[1] = 0x72;
      f[2] = version;
      f[3] = 0;
      f.writeUInt32LE(id >>> 0, 4);
      return f;
    };
    const garbage = Array.from({ length: 20 }, (_, i) => {
      const g = randomBytes(1 + i * 13);
      if (g[0] === 0x75) g[0] = 0;
      return g;
    });
    const unsealed = [
      plainBus(busDatagram('forged-dg')),
      plainBus({ type: 'heartbeat', name: 'evil/1', startedAtMs: Date.now(), intervalMs: 500, subscribers: 0 }),
      plainBus({ type: 'subscriber', channel: 'ssl', sealed: false, address: rxA.address, key: 'ssl', origin: 0n, deadlineMs: 0, isStatic: false }),
    ];
    const attack: Array<readonly [string, Uint8Array]> = [
      ...garbage.map((g) => ['unsealed', g] as const),
      ...unsealed.map((u) => ['unsealed', u] as const),
      ['unsealed', new Uint8Array(0)],
      ['too_short', frameLike(2, keyId, 40)],
      ['bad_version', frameLike(1, keyId, 100)],
      ['unknown_key', frameLike(2, keyId ^ 0x5a5a5a5a, 100)],
      ['auth_failed', frameLike(2, keyId, 100)],
    ];
    const subjects = [`${name}.dg.ssl`, `${name}.ctl`, `${name}.dg.other`];
    const [fromA, fromB] = [rxA.received.length, rxB.received.length];
    await rogue.publish(subjects, attack.map(([, p]) => p));
    const want = new Map<string, number>();
    for (const [reason] of attack) want.set(reason, (want.get(reason) ?? 0) + subjects.length);
    for (const n of [a, b]) for (const [reason, count] of want) await dropsReach(n, reason, count);
    const [gotA, gotB] = await beforeMarker([[rxA, fromA], [rxB, fromB]], 'sentinel-a', a);
    const counts = Object.fromEntries(await Promise.all([...want.keys()].map(async (r) => [r, [await dropped(a, r), await dropped(b, r)]] as const)));
    console.log(JSON.stringify({ published: attack.length * subjects.length, droppedAtAandB: counts }));
    assert.deepEqual(gotA, [], `the subscriber of A received ${JSON.stringify(gotA)} from the rogue`);
    assert.deepEqual(gotB, [], `the subscriber of B received ${JSON.stringify(gotB)} from the rogue`);
    for (const n of [a, b]) for (const [reason, count] of want) assert.equal(await dropped(n, reason), count, `${n.name}: ${reason}`);
    // Nothing the rogue sent was taken for a message from a peer: the one datagram B took off the bus is the sentinel.
    assert.equal(await metric(a, 'udprepeater_cluster_messages_received_total', { kind: 'datagram' }), 0, 'A took a forged datagram off the bus');
    assert.equal(await metric(b, 'udprepeater_cluster_messages_received_total', { kind: 'datagram' }), 1, 'B took a forged datagram off the bus');
  });

  test('a captured sealed bus frame replayed: delivered once, every replay counted', async () => {
    const name = fresh();
    // A dedup window of 10 ms: the replay guard alone has to stop the replays.
    const extra = ['--cluster-dedup-window', '0.01'];
    const [a, b] = [await repeater(name, { extra }), await repeater(name, { extra })];
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(b, rx);
    await rogue.watch(`${name}.dg.>`);
    await sender.send(set('once'), a.port);
    await rx.waitFor(1, WAIT);
    const frame = await rogue.first(new RegExp(`^${name}\\.dg\\.ssl$`));
    assert.equal(frames([frame.data]).length, 1, 'the bus frame is not sealed');
    const REPLAYS = 5;
    for (let i = 0; i < REPLAYS; i++) await rogue.publish([frame.subject], [frame.data]);
    // B refuses them as replays; A, whose frame it is, as its own.
    await dropsReach(b, 'replay', REPLAYS);
    await dropsReach(a, 'own_origin', REPLAYS);
    const [got] = await beforeMarker([[rx, 0]], 'sentinel-b', a);
    console.log(JSON.stringify({ replays: REPLAYS, delivered: got, droppedAtB: { replay: await dropped(b, 'replay') }, droppedAtA: { own_origin: await dropped(a, 'own_origin') } }));
    assert.deepEqual(got, ['once'], 'the replayed bus frame was delivered again');
    assert.equal(await dropped(b, 'replay'), REPLAYS);
    assert.equal(await dropped(a, 'own_origin'), REPLAYS);
  });

  test('a bus message sealed with another key, or by a key holder speaking for another sender: dropped, nothing delivered', async () => {
    const name = fresh();
    const [a, b] = [await repeater(name), await repeater(name)];
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(b, rx);
    await rogue.watch(`${name}.ctl`);
    const keyId = (await rogue.first(new RegExp(`^${name}\\.ctl$`))).data.readUInt32LE(4);
    const foreign = gateOf(await keygen());
    const seal = (g: BusSeal, body: BusBody, senderId = g.origin) => g.seal(encodeBus({ sender: senderId, sentAtMs: Date.now(), body }))!;
    // The control: the same construction with the cluster's key is delivered, so the refusals below are the key's doing.
    const real = gateOf(clusterKey);
    await rogue.publish([`${name}.dg.ssl`], [seal(real, busDatagram('control'))]);
    await eventually('the control datagram', () => (rx.received.some((d) => keyOf(d) === 'control') ? true : undefined), WAIT);
    const from = rx.received.length;
    const otherKey = [seal(foreign, busDatagram('foreign-key')), seal(foreign, { type: 'heartbeat', name: 'evil/2', startedAtMs: Date.now(), intervalMs: 500, subscribers: 0 })];
    // Sealed with the other key, but claiming the cluster's key id: the MAC fails.
    const claimed = otherKey.map((f) => {
      const c = Buffer.from(f);
      c.writeUInt32LE(keyId, 4);
      return c;
    });
    // A key holder (here: the control's gate) claiming to be repeater A.
    const aId = BigInt(`0x${(JSON.parse((await httpGet(a.r.metricsPort, '/healthz')).body) as { cluster: { id: string } }).cluster.id}`);
    assert.notEqual(aId, 0n);
    const impostor = [seal(real, busDatagram('impostor'), aId)];
    await rogue.publish([`${name}.dg.ssl`, `${name}.ctl`], [...otherKey, ...claimed]);
    // Once only: a second copy would be refused as a replay before its sender is looked at.
    await rogue.publish([`${name}.dg.ssl`], impostor);
    for (const n of [a, b]) {
      await dropsReach(n, 'unknown_key', 2 * otherKey.length);
      await dropsReach(n, 'auth_failed', 2 * claimed.length);
    }
    // The impostor's frame opens, but its sender is not its origin.
    for (const n of [a, b]) await dropsReach(n, 'bad_payload', impostor.length);
    const [got] = await beforeMarker([[rx, from]], 'sentinel-c', a);
    console.log(JSON.stringify({ delivered: got, droppedAtB: { unknown_key: await dropped(b, 'unknown_key'), auth_failed: await dropped(b, 'auth_failed'), bad_payload: await dropped(b, 'bad_payload') } }));
    assert.deepEqual(got, [], `delivered from a foreign key or an impostor: ${JSON.stringify(got)}`);
    assert.equal(await dropped(b, 'unknown_key'), 2 * otherKey.length);
    assert.equal(await dropped(b, 'auth_failed'), 2 * claimed.length);
    assert.equal(await dropped(b, 'bad_payload'), impostor.length);
    foreign.dispose();
    real.dispose();
  });

  test('--cluster-insecure: forged subscriber announcements never add a destination', async () => {
    const name = fresh();
    const a = await repeater(name, { insecure: true });
    const rx = await scope.receiver();
    const victim = await scope.receiver();
    await subscribe(a, rx);
    const forger = randomBytes(8).readBigUInt64LE(0) | 1n;
    const now = Date.now();
    const announce = (over: Partial<Extract<BusBody, { type: 'subscriber' }>>): Uint8Array =>
      plainBus({ type: 'subscriber', channel: 'ssl', sealed: false, address: victim.address, key: 'ssl', origin: 0n, deadlineMs: now + 60_000, isStatic: false, ...over }, forger);
    const forged = [
      plainBus({ type: 'heartbeat', name: 'evil/3', startedAtMs: now, intervalMs: 500, subscribers: 1 }, forger),
      announce({}),
      announce({ sealed: true, origin: 77n }),
      announce({ deadlineMs: Number.MAX_SAFE_INTEGER, isStatic: true }),
      announce({ channel: 'nosuch' }),
      // And a goodbye for the real subscriber, from someone who never heard it.
      announce({ address: rx.address, deadlineMs: 0 }),
    ];
    await rogue.publish([`${name}.ctl`], forged);
    await eventually('A to take in the forged announcements', async () => ((await metric(a, 'udprepeater_cluster_messages_received_total', { kind: 'subscriber' })) >= forged.length - 1 ? true : undefined), WAIT);
    for (let i = 0; i < 5; i++) await sender.send(set(`real-${i}`), a.port);
    const [got] = await beforeMarker([[rx, 0]], 'sentinel-d', a);
    assert.deepEqual(got, ['real-0', 'real-1', 'real-2', 'real-3', 'real-4'], 'the real subscriber stopped being served');
    // The victim: a probe sent to it after the sentinel arrived must be the first thing it got.
    await sender.send(Buffer.from('probe'), victim.port);
    await victim.waitFor(1, WAIT);
    const subs = JSON.parse((await httpGet(a.r.metricsPort, '/subscribers')).body) as Array<{ address: string }>;
    console.log(JSON.stringify({ victimGot: victim.received.map((d) => d.toString('latin1').slice(0, 40)), subscribers: subs.map((s) => s.address) }));
    assert.equal(String(victim.received[0]), 'probe', 'the repeater sent to an address it only heard of on the bus');
    assert.ok(!subs.some((s) => s.address === victim.address), 'the forged address became a subscriber');
  });

  test('--cluster-insecure: heartbeats from 1000 forged senders leave the peer table bounded and the repeater forwarding', async () => {
    const name = fresh();
    const a = await repeater(name, { insecure: true });
    const rx = await scope.receiver();
    await subscribe(a, rx);
    const FORGED = 1000;
    const MAX_PEERS = 64;
    const now = Date.now();
    const beats = Array.from({ length: FORGED }, (_, i) => plainBus({ type: 'heartbeat', name: `evil/${i}`, startedAtMs: now, intervalMs: 500, subscribers: 0 }, BigInt(i + 1) * 0x9e3779b97f4a7c15n % (1n << 64n) || 1n));
    await rogue.publish([`${name}.ctl`], beats);
    await dropsReach(a, 'too_many_peers', FORGED - MAX_PEERS);
    const peers = await metric(a, 'udprepeater_cluster_peers');
    await sender.send(set('still-forwarding'), a.port);
    const [got] = await beforeMarker([[rx, 0]], 'sentinel-e', a);
    const joined = a.r.d.log.matching('cluster peer joined').length;
    console.log(JSON.stringify({ forged: FORGED, peersGauge: peers, joined, tooManyPeers: await dropped(a, 'too_many_peers') }));
    assert.ok(peers <= MAX_PEERS, `${peers} peers tracked, more than ${MAX_PEERS}`);
    assert.equal(joined, MAX_PEERS, `${joined} forged peers joined`);
    assert.equal(await dropped(a, 'too_many_peers'), FORGED - MAX_PEERS);
    assert.deepEqual(got, ['still-forwarding']);
    // The forgers fell silent: once they are past the peer timeout a real repeater takes a dead one's place.
    const b = await repeater(name, { insecure: true });
    await eventually('A to take B in', () => (a.r.d.log.matching('cluster peer joined').length > MAX_PEERS ? true : undefined), WAIT);
    await peersSee([a, b], 1);
  });

  /** `n` forged repeaters sealing the bus with `keyFile`, each with its own origin (as many sessions). */
  const forgers = (keyFile: string, n: number): BusSeal[] => Array.from({ length: n }, () => gateOf(keyFile));
  const sealAs = (g: BusSeal, body: BusBody) => g.seal(encodeBus({ sender: g.origin, sentAtMs: Date.now(), body }))!;
  const beat = (i: number): BusBody => ({ type: 'heartbeat', name: `forged/${i}`, startedAtMs: 1, intervalMs: 300, subscribers: 1, stateReady: true });

  test('a holder of the data key (any agent host) sealing bus messages: refused as unknown_key, counted, no peer, nothing delivered', async () => {
    const name = fresh();
    const a = await repeater(name);
    const rx = await scope.receiver();
    await subscribe(a, rx);
    const [f] = forgers(key, 1);
    const now = Date.now();
    const forged = [
      sealAs(f!, beat(0)),
      sealAs(f!, { type: 'subscriber', channel: 'ssl', sealed: false, address: rx.address, key: 'ssl', origin: 0n, deadlineMs: now + 60_000, isStatic: false }),
      sealAs(f!, { type: 'tickets', keys: [{ id: 7n, notBeforeMs: now + 86_400_000, notAfterMs: now + 2 * 86_400_000, createdMs: 1, secret: randomBytes(80) }] }),
    ];
    await rogue.publish([`${name}.ctl`], forged);
    const dg = sealAs(f!, busDatagram('from-an-agent-host'));
    await rogue.publish([`${name}.dg.ssl`], [dg]);
    await dropsReach(a, 'unknown_key', forged.length + 1);
    const [got] = await beforeMarker([[rx, 0]], 'sentinel-g', a);
    const h = JSON.parse((await httpGet(a.r.metricsPort, '/healthz')).body) as { cluster: { peers: unknown[] } };
    console.log(JSON.stringify({ sent: forged.length + 1, unknownKey: await dropped(a, 'unknown_key'), peers: h.cluster.peers.length, delivered: got }));
    assert.equal(await dropped(a, 'unknown_key'), forged.length + 1);
    assert.equal(h.cluster.peers.length, 0, 'a forged peer was taken in');
    assert.equal(a.r.d.log.matching('cluster peer joined').length, 0);
    assert.deepEqual(got, [], `delivered from a data-key holder: ${JSON.stringify(got)}`);
    f!.dispose();
  });

  test('a data-key holder flooding as 100 repeaters: a real second repeater still joins, and no forger takes a real subscriber over', async () => {
    const name = fresh();
    const a = await repeater(name);
    const rx = await scope.receiver();
    await subscribe(a, rx);
    const aId = BigInt(`0x${(JSON.parse((await httpGet(a.r.metricsPort, '/healthz')).body) as { cluster: { id: string } }).cluster.id}`);
    // Forgers that would each win rx over A by the rendezvous hash, were they believed; 100 of them
    // (more than the 64 peers a repeater tracks), beating every 300 ms for as long as the test runs.
    const item = idOf('ssl', false, rx.address);
    const fs: BusSeal[] = [];
    while (fs.length < 100) {
      const [g] = forgers(key, 1);
      if (owner([aId, g!.origin], item) === g!.origin) fs.push(g!);
      else g!.dispose();
    }
    const flood = async () => {
      const now = Date.now();
      const msgs = fs.flatMap((g, i) => [sealAs(g, beat(i)), sealAs(g, { type: 'subscriber', channel: 'ssl', sealed: false, address: rx.address, key: 'ssl', origin: 0n, deadlineMs: now + 60_000, isStatic: false })]);
      await rogue.publish([`${name}.ctl`], msgs);
    };
    await flood();
    const timer = setInterval(() => void flood().catch(() => undefined), 300);
    try {
      // A sentinel sent after a second round of the flood: had the forgers been believed, A would no longer serve rx.
      await flood();
      const [alone] = await beforeMarker([[rx, 0]], 'sentinel-h0', a);
      assert.deepEqual(alone, [], `before the marker: ${JSON.stringify(alone)}`);
      // The flood goes on (a round every 300 ms) while B starts, which takes longer.
      const b = await repeater(name);
      await peersSee([a, b], 1);
      const from = rx.received.length;
      for (let i = 0; i < 10; i++) await sender.send(set(`during-flood-${i}`), i % 2 === 0 ? a.port : b.port);
      const [got] = await beforeMarker([[rx, from]], 'sentinel-h', b);
      const subs = JSON.parse((await httpGet(a.r.metricsPort, '/subscribers')).body) as Array<{ address: string; served: boolean }>;
      console.log(JSON.stringify({ forgers: fs.length, unknownKeyAtA: await dropped(a, 'unknown_key'), tooManyPeersAtA: await dropped(a, 'too_many_peers'), delivered: got.length, served: subs.find((x) => x.address === rx.address)?.served }));
      // Half came in through B and the bus: only the set is ordered.
      assert.deepEqual([...got].sort(), Array.from({ length: 10 }, (_, i) => `during-flood-${i}`).sort(), 'the real subscriber was taken over');
      assert.equal(subs.find((x) => x.address === rx.address)?.served, true, 'A does not serve its own subscriber');
      assert.equal(await dropped(a, 'too_many_peers'), 0);
      assert.ok((await dropped(a, 'unknown_key')) >= 2 * fs.length, 'the flood did not reach A');
    } finally {
      clearInterval(timer);
      for (const g of fs) g.dispose();
    }
  });

  test('cross-leg replays: agent and repeater frames on the bus, bus frames on a sealed listener, all refused by key', async () => {
    const name = fresh();
    const capture = await scope.receiver();
    const a = await repeater(name);
    const b = await repeater(name, { sealedListener: true, extra: ['--to', `${capture.address},sealed,key=ssl`] });
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(a, rx);
    await rogue.watch(`${name}.>`);
    // A real agent's frames (its subscription, then a sealed update), captured on the wire.
    const agentOut = await scope.receiver();
    const local = await freePort();
    const node = await scope.receiver();
    await agentSlowly(['--repeater', agentOut.address, '--key-file', key, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '30']);
    await agentOut.waitFor(1, WAIT);
    await sender.send(set('via-agent'), local);
    const agentFrames = frames(await agentOut.waitFor(2, WAIT));
    assert.equal(agentFrames.length, 2, 'the agent sent no sealed frames');
    // A real repeater-to-agent frame: B's static sealed output.
    await sender.send(set('to-agent'), b.port);
    const repeaterFrames = frames(await capture.waitFor(1, WAIT));
    assert.equal(repeaterFrames.length, 1);
    // The same update reached rx through the bus; the attack starts after it.
    await eventually('to-agent at rx', () => (rx.received.some((d) => keyOf(d) === 'to-agent') ? true : undefined), WAIT);
    const fromRx = rx.received.length;
    await rogue.publish([`${name}.dg.ssl`, `${name}.ctl`], [...agentFrames, ...repeaterFrames]);
    // The data legs are sealed with the data key, the bus with its own: every one of them is
    // refused on both subjects before it is opened (the role check would come after).
    const onBus = 2 * (agentFrames.length + repeaterFrames.length);
    for (const n of [a, b]) await dropsReach(n, 'unknown_key', onBus);
    // Real bus frames (a datagram and heartbeats, as the repeaters published them) sent to B's sealed listener.
    const busFrames = [(await rogue.first(new RegExp(`^${name}\\.dg\\.ssl$`))).data, ...rogue.captured.filter((c) => c.subject === `${name}.ctl`).slice(0, 3).map((c) => c.data)];
    assert.ok(busFrames.length >= 2);
    const listenerDropped = async () => metric(b, 'udprepeater_datagrams_dropped_total', { reason: 'unknown_key' });
    for (const f of busFrames) await sender.send(f, b.sealedPort!);
    await eventually('B to refuse the bus frames on its sealed listener', async () => ((await listenerDropped()) >= busFrames.length ? true : undefined), WAIT);
    const [got] = await beforeMarker([[rx, fromRx]], 'sentinel-f', b);
    const m = { unknownKeyOnBus: [await dropped(a, 'unknown_key'), await dropped(b, 'unknown_key')], unknownKeyOnListener: await listenerDropped() };
    console.log(JSON.stringify({ agentFrames: agentFrames.length, repeaterFrames: repeaterFrames.length, busFrames: busFrames.length, delivered: got, ...m }));
    assert.deepEqual(got, [], `a cross-leg replay was delivered: ${JSON.stringify(got)}`);
    for (const n of [a, b]) assert.equal(await dropped(n, 'unknown_key'), onBus, `${n.name}: agent and repeater frames on the bus`);
    assert.equal(await listenerDropped(), busFrames.length, 'bus frames on the sealed listener');
  });
});

// Warm join in cluster mode, over real nats-server processes (two servers
// joined by a route) and real repeaters through the CLI, test sockets as
// nodes: every repeater's live state learns what comes off the bus, and a
// repeater that starts fetches the cluster's live state from a peer before it
// warms anyone (src/cluster/state-fetch.ts).

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { BusSeal } from '../../src/cluster/bus-seal.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { type BusBody, type BusMessage, decodeBus, encodeBus } from '../../src/wire/bus.js';
import { encodeCacheDelete, encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver, untraced } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster warm-join suite (test/system/cluster.warm.test.ts)', 'Cluster warm join is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const PEER_TIMEOUT_S = 1.5;
const FETCH_OVER = 'cluster: live state fetch over; warm joins start';
const set = (k: string, v: string) => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);
const del = (k: string) => encodeCacheDelete(Buffer.from(k), false);

/** key -> value of every set received, the last one winning, deletes applied (what a uWSGI cache would hold); and every key set, in order. */
function cacheOf(datagrams: Buffer[]): { cache: Map<string, string>; keys: string[] } {
  const cache = new Map<string, string>();
  const keys: string[] = [];
  for (const raw of datagrams) {
    const d = untraced(raw);
    const klen = d.readUInt16LE(4);
    const key = d.toString('latin1', 6, 6 + klen);
    if (d[3] === 11) {
      cache.delete(key);
      continue;
    }
    keys.push(key);
    cache.set(key, d.toString('latin1', 8 + klen, 8 + klen + d.readUInt16LE(6 + klen)));
  }
  return { cache, keys };
}

interface Node {
  readonly r: Running;
  readonly port: number;
}

/**
 * A repeater as far as the bus can tell (a NATS client sealing with the
 * cluster's key), driven by hand: it heartbeats every 300 ms, collects the
 * state requests addressed to it, and publishes what the test tells it to.
 */
class HandPeer {
  readonly requests: Array<Extract<BusMessage['body'], { type: 'state_request' }> & { from: bigint }> = [];
  private readonly beat: NodeJS.Timeout;

  private constructor(
    readonly gate: BusSeal,
    readonly nc: NatsConnection,
    readonly cluster: string,
    name: string,
    stateReady: boolean,
  ) {
    // A beat in flight when the test closes the connection is of no interest.
    this.beat = setInterval(() => this.publish(`${cluster}.ctl`, { type: 'heartbeat', name, startedAtMs: 1, intervalMs: 300, subscribers: 0, stateReady }).catch(() => undefined), 300);
  }

  static async join(url: string, cluster: string, keyFile: string, name: string, stateReady: boolean): Promise<HandPeer> {
    // Sealed as a repeater seals the bus: the cluster's key, a bus session of its own.
    const gate = BusSeal.load([keyFile], [], 30_000);
    const nc = await connect({ servers: url, noEcho: true });
    const peer = new HandPeer(gate, nc, cluster, name, stateReady);
    nc.subscribe(`${cluster}.ctl`, {
      callback: (err, m) => {
        if (err !== null) return;
        const env = gate.open(Buffer.from(m.data));
        if (typeof env === 'string') return;
        const msg = decodeBus(env.bus!);
        if (typeof msg !== 'string' && msg.body.type === 'state_request' && msg.body.target === gate.origin) peer.requests.push({ ...msg.body, from: msg.sender });
      },
    });
    await nc.flush();
    return peer;
  }

  /** The first state request addressed to this peer. */
  asked(): Promise<HandPeer['requests'][number]> {
    return eventually('a state request', () => this.requests[0], 10_000);
  }

  /** Seals `body` as this peer and publishes it; resolves once the server has it. */
  async publish(subject: string, body: BusBody): Promise<void> {
    this.nc.publish(subject, this.gate.seal(encodeBus({ sender: this.gate.origin, sentAtMs: Date.now(), body }))!);
    await this.nc.flush();
  }

  /** A state chunk to `requester`, of cache sets (key, value). */
  answer(requester: bigint, request: number, sets: Array<[string, string]>): Promise<void> {
    const entries = sets.map(([k, v]) => ({ type: 'datagram' as const, channel: 'ssl', datagram: set(k, v), trace: null, origin: 0n, opaque: false }));
    return this.publish(`${this.cluster}.st.${requester.toString(16)}`, { type: 'state_chunk', request, seq: 0, entries, last: true, total: entries.length, declined: false });
  }

  async close(): Promise<void> {
    clearInterval(this.beat);
    await this.nc.close();
    this.gate.dispose();
  }
}

describe('cluster mode: warm join', { skip }, () => {
  let nats: NatsCluster;
  let key: string;
  const nodes: Node[] = [];

  before(async () => {
    requireNats();
    await sodiumReady();
    nats = await NatsCluster.start(2, 'urwarm');
    key = await keygen();
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.r.stop();
  });
  after(async () => {
    await nats?.close();
  });

  /** A repeater on the bus (NATS server `server` first); resolves once its fetch at start is over, with its result. */
  async function repeater(server: number, opts: { name?: string; timeoutS?: number; waitFetch?: boolean } = {}): Promise<Node & { fetch: string | null }> {
    const port = await freePort();
    const urls = [...nats.urls.slice(server), ...nats.urls.slice(0, server)];
    const r = await serve([
      '--listen', `127.0.0.1:${port},channel=ssl`,
      ...urls.flatMap((u) => ['--cluster', u]),
      '--cluster-name', opts.name ?? 'w',
      '--cluster-peer-timeout', String(opts.timeoutS ?? PEER_TIMEOUT_S),
      '--cluster-key-file', key,
      '--log-level', 'info',
    ]);
    const node = { r, port };
    nodes.push(node);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
    if (opts.waitFetch === false) return { ...node, fetch: null };
    const over = await r.d.log.waitFor(FETCH_OVER, {}, { ms: 4 * (opts.timeoutS ?? PEER_TIMEOUT_S) * 1000 + 5000 });
    return { ...node, fetch: over['result'] as string };
  }

  async function subscribe(n: Node, rx: Receiver): Promise<void> {
    const from = n.r.d.log.length;
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), n.port);
    await n.r.d.log.waitFor('subscribed', { address: rx.address }, { from });
  }

  const entries = async (n: Node) => (await n.r.metrics()).value('udprepeater_live_state_entries', { channel: 'ssl' });

  test('a repeater started after others hold live entries warms a new subscriber with exactly those, deleted keys left out', async () => {
    const a = await repeater(0);
    assert.equal(a.fetch, 'no_peer', 'the first repeater of a cluster has nobody to ask, and goes on cold');
    const b = await repeater(1);
    assert.equal(b.fetch, 'complete', 'the second asks the first, which holds the (empty) state');

    // Updates through both repeaters: each one's live state learns the other's from the bus.
    // Each phase waits for the bus before the next, as a session's delete comes long after its set:
    // two repeaters order updates of one key only as the bus brings them.
    const want = new Map<string, string>();
    for (let i = 0; i < 150; i++) {
      await sender.send(set(`a${i}`, `va${i}`), a.port);
      want.set(`a${i}`, `va${i}`);
      await sender.send(set(`b${i}`, `vb${i}`), b.port);
      want.set(`b${i}`, `vb${i}`);
    }
    const held = async (n: number) => {
      for (const r of [a, b]) await eventually(`${r.port} to hold ${n} live entries`, async () => ((await entries(r)) === n ? true : undefined), 10_000);
    };
    await held(300);
    // Overwritten through the other repeater, then deleted through either (b's publications reach a in order).
    for (let i = 0; i < 20; i++) {
      await sender.send(set(`a${i}`, `new${i}`), b.port);
      want.set(`a${i}`, `new${i}`);
    }
    for (let i = 20; i < 40; i++) {
      await sender.send(del(`a${i}`), b.port);
      await sender.send(del(`b${i}`), a.port);
      want.delete(`a${i}`);
      want.delete(`b${i}`);
    }
    const N = want.size;
    assert.equal(N, 260);
    await held(N);

    const c = await repeater(0);
    assert.equal(c.fetch, 'complete');
    const m = await c.r.metrics();
    assert.equal(m.value('udprepeater_cluster_state_fetches_total', { result: 'complete' }), 1);
    assert.equal(m.value('udprepeater_cluster_state_entries_received_total', { outcome: 'set' }), N, 'the peer sent every live entry once, and no deleted one');
    assert.equal(await entries(c), N);
    const answered = (await a.r.metrics()).value('udprepeater_cluster_state_answers_total', { result: 'complete' }) + (await b.r.metrics()).value('udprepeater_cluster_state_answers_total', { result: 'complete' });
    assert.equal(answered, 2, 'one answer to b, one to c');

    const rx = await scope.receiver();
    await subscribe(c, rx);
    const done = await c.r.d.log.waitFor('warm join completed', { address: rx.address }, { ms: 10_000 });
    assert.equal(done['sent'], N);
    const got = await rx.waitFor(N, 10_000);
    const { cache, keys } = cacheOf(got);
    assert.deepEqual(cache, want, 'exactly the live entries, latest values');
    assert.equal(new Set(keys).size, keys.length, 'each key once');
    for (let i = 20; i < 40; i++) assert.ok(!keys.includes(`a${i}`) && !keys.includes(`b${i}`), 'a key deleted before the fetch is not sent');
  });

  test('a subscriber that joins while the fetch is in progress is warmed after it ends, without what it got live', async () => {
    // Alone in its cluster: the fetch waits the peer timeout for a peer, then goes on cold.
    const d = await repeater(1, { name: 'lonely', timeoutS: 6, waitFetch: false });
    for (let i = 0; i < 20; i++) await sender.send(set(`early${i}`, 'v'), d.port);
    await eventually('20 live entries', async () => ((await entries(d)) === 20 ? true : undefined), 5000);
    const rx = await scope.receiver();
    await subscribe(d, rx);
    const view = JSON.parse((await httpGet(d.r.metricsPort, '/subscribers')).body) as Array<{ address: string; warmJoin: { waiting?: string } | null }>;
    assert.equal(view.find((s) => s.address === rx.address)?.warmJoin?.waiting, 'cluster state', '/subscribers shows the join waiting');
    for (let i = 0; i < 5; i++) await sender.send(set(`late${i}`, 'v'), d.port);
    await rx.waitFor(5, 5000);
    assert.equal(rx.received.length, 5, 'nothing but live traffic before the fetch is over');
    const over = await d.r.d.log.waitFor(FETCH_OVER, {}, { ms: 20_000 });
    assert.equal(over['result'], 'no_peer');
    const done = await d.r.d.log.waitFor('warm join completed', { address: rx.address }, { ms: 10_000 });
    assert.equal(done['sent'], 20, 'the entries from before it subscribed; what it got live is not sent again');
    const { keys } = cacheOf(await rx.waitFor(25, 5000));
    assert.equal(new Set(keys).size, 25);
    assert.equal((await d.r.metrics()).value('udprepeater_cluster_state_fetches_total', { result: 'no_peer' }), 1, 'counted');
  });

  test('a peer that holds the state but never answers: the starting repeater goes on cold within the bound, counted; a chunk from another peer is not believed', async () => {
    // Both heartbeat; only the silent one says it holds the state, and it never answers.
    const silent = await HandPeer.join(nats.urls[0]!, 'quiet', key, 'silent/1', true);
    const impostor = await HandPeer.join(nats.urls[0]!, 'quiet', key, 'impostor/1', false);
    try {
      const r = await repeater(0, { name: 'quiet', waitFetch: false });
      const asked = await silent.asked();
      // Once the repeater knows the impostor (else its chunk would count as unknown_peer):
      await eventually('both peers known', async () => ((JSON.parse((await httpGet(r.r.metricsPort, '/healthz')).body) as { cluster: { peers: unknown[] } }).cluster.peers.length === 2 ? true : undefined), 5000);
      // an answer from a peer that was not asked, for the right request number: not believed.
      await impostor.answer(asked.from, asked.request, [['forged', 'x']]);
      const over = await r.r.d.log.waitFor(FETCH_OVER, {}, { ms: 10_000 });
      assert.equal(over['result'], 'timeout');
      assert.ok((over['ms'] as number) >= PEER_TIMEOUT_S * 1000, 'it waited the bound for an answer');
      const m = await r.r.metrics();
      assert.equal(m.value('udprepeater_cluster_state_fetches_total', { result: 'timeout' }), 1);
      assert.equal(m.value('udprepeater_cluster_messages_dropped_total', { reason: 'unexpected_state' }), 1, 'the impostor chunk');
      assert.equal(await entries(r), 0, 'nothing of it reached the live state');
      assert.equal(impostor.requests.length, 0, 'the peer that does not hold the state is never asked');
      // Cold, but working: a new subscriber is warmed with what the repeater learns from now on.
      for (let i = 0; i < 5; i++) await sender.send(set(`k${i}`, 'v'), r.port);
      await eventually('5 live entries', async () => ((await entries(r)) === 5 ? true : undefined), 5000);
      const rx = await scope.receiver();
      await subscribe(r, rx);
      const done = await r.r.d.log.waitFor('warm join completed', { address: rx.address }, { ms: 10_000 });
      assert.equal(done['sent'], 5);
    } finally {
      await silent.close();
      await impostor.close();
    }
  });

  test('a key set or deleted live while the fetch runs keeps its live value: the older fetched entry is not applied', async () => {
    // A peer that answers by hand, after the live updates.
    const peer = await HandPeer.join(nats.urls[1]!, 'late', key, 'peer/1', true);
    try {
      const r = await repeater(1, { name: 'late', timeoutS: 5, waitFetch: false });
      const asked = await peer.asked();
      // Live, while the fetch waits for the answer: one key set anew, one set and deleted.
      await sender.send(set('fresh', 'live value'), r.port);
      await sender.send(set('gone', 'live value'), r.port);
      await sender.send(del('gone'), r.port);
      await eventually('the live updates', async () => ((await r.r.metrics()).value('udprepeater_datagrams_accepted_total') >= 3 ? true : undefined), 5000);
      await peer.answer(asked.from, asked.request, [['fresh', 'old value'], ['gone', 'old value'], ['peer-only', 'p']]);
      const over = await r.r.d.log.waitFor(FETCH_OVER, {}, { ms: 10_000 });
      assert.equal(over['result'], 'complete');
      const m = await r.r.metrics();
      assert.equal(m.value('udprepeater_cluster_state_entries_received_total', { outcome: 'live_newer' }), 2);
      assert.equal(m.value('udprepeater_cluster_state_entries_received_total', { outcome: 'set' }), 1);
      const rx = await scope.receiver();
      await subscribe(r, rx);
      const done = await r.r.d.log.waitFor('warm join completed', { address: rx.address }, { ms: 10_000 });
      assert.equal(done['sent'], 2);
      assert.deepEqual(cacheOf(await rx.waitFor(2, 5000)).cache, new Map([['fresh', 'live value'], ['peer-only', 'p']]));
    } finally {
      await peer.close();
    }
  });

  test('entries near 64 KiB: every chunk fits one sealed frame; an entry too large for any is left out and counted', async () => {
    const a = await repeater(0, { name: 'big' });
    // Small before large: a chunk that took the next entry whatever its size would pass the frame.
    const sizes = [20_000, 64_000, 20_000, 20_000, 64_000, 20_000, 65_300];
    for (const [i, n] of sizes.entries()) await sender.send(set(`big${i}`, 'x'.repeat(n)), a.port);
    await eventually(`${sizes.length} live entries`, async () => ((await entries(a)) === sizes.length ? true : undefined), 5000);
    const b = await repeater(1, { name: 'big' });
    assert.equal(b.fetch, 'complete');
    assert.equal((await b.r.metrics()).value('udprepeater_cluster_state_entries_received_total', { outcome: 'set' }), 6);
    const ma = await a.r.metrics();
    assert.equal(ma.value('udprepeater_cluster_state_entries_too_large_total'), 1, 'the 65,300-byte value cannot travel in a sealed chunk');
    // (Its live copy could not cross the bus either: counted by the bus as seal_failed.)
    assert.equal(ma.value('udprepeater_cluster_state_answers_total', { result: 'complete' }), 1, 'no chunk was too large to seal');
    assert.equal(ma.value('udprepeater_cluster_state_answers_total', { result: 'failed' }), 0);
    assert.equal(await entries(b), 6);
  });

  test('a node that subscribes to two repeaters is warmed once, by the one that serves it', async () => {
    const a = await repeater(0, { name: 'both' });
    const b = await repeater(1, { name: 'both' });
    for (let i = 0; i < 50; i++) await sender.send(set(`s${i}`, 'v'), i % 2 === 0 ? a.port : b.port);
    for (const n of [a, b]) await eventually('50 live entries', async () => ((await entries(n)) === 50 ? true : undefined), 5000);
    const rx = await scope.receiver();
    const marks = [a.r.d.log.length, b.r.d.log.length];
    await subscribe(a, rx);
    await subscribe(b, rx);
    // The join starts 100 ms after the subscription, by when the two agree on its server.
    const outcome = async (n: Node, from: number) =>
      Promise.race([
        n.r.d.log.waitFor('warm join completed', { address: rx.address }, { from, ms: 10_000 }).then((l) => ['completed', l] as const),
        n.r.d.log.waitFor('warm join ended', { address: rx.address, reason: 'served by another repeater' }, { from, ms: 10_000 }).then((l) => ['ended', l] as const),
      ]);
    const [oa, ob] = await Promise.all([outcome(a, marks[0]!), outcome(b, marks[1]!)]);
    assert.deepEqual([oa[0], ob[0]].sort(), ['completed', 'ended']);
    assert.equal((oa[0] === 'completed' ? oa : ob)[1]['sent'], 50);
    assert.equal((oa[0] === 'ended' ? oa : ob)[1]['sent'], 0, 'the other sent nothing');
    const { keys } = cacheOf(await rx.waitFor(50, 5000));
    assert.equal(new Set(keys).size, 50);
  });

  test('live bus: a large datagram after a small one in the same turn still crosses the bus (each batch fits a sealed frame)', async () => {
    const a = await repeater(0, { name: 'batch' });
    const b = await repeater(1, { name: 'batch' });
    const rx = await scope.receiver();
    await subscribe(b, rx);
    // Back to back, so a's listener reads both in one turn and batches them.
    const small = set('small', 's'.repeat(20_000));
    const large = set('large', 'l'.repeat(60_000));
    await Promise.all([sender.send(small, a.port), sender.send(large, a.port)]);
    const got = await rx.waitFor(2, 5000);
    assert.deepEqual([...cacheOf(got).cache.keys()].sort(), ['large', 'small']);
    assert.equal((await a.r.metrics()).value('udprepeater_cluster_messages_dropped_total', { reason: 'seal_failed' }), 0);
  });
});

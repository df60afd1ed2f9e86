// Warm join in cluster mode, over real nats-server processes (two servers
// joined by a route) and real repeaters through the CLI, test sockets as
// nodes: every repeater's live state learns what comes off the bus, and a
// repeater that starts fetches the cluster's live state from a peer before it
// warms anyone (src/cluster/state-fetch.ts).

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from './helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from './helpers/nats.js';
import { eventually, freePort, type Receiver, untraced } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster warm-join suite (test/cluster.warm.test.ts)', 'Cluster warm join is NOT being tested.', natsAvailability(), NATS_HINT);

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

describe('cluster mode: warm join', { skip }, () => {
  let nats: NatsCluster;
  let key: string;
  const nodes: Node[] = [];

  before(async () => {
    requireNats();
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
      '--key-file', key,
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
});

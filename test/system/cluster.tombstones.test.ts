// A fetched state must not resurrect deletes (issue 16, item 5): real
// repeaters on a real three-server NATS cluster. Repeater 3, the longest
// running, is cut off from the bus (its only NATS server killed) while keys
// are deleted through repeater 2, then comes back holding them. A fourth
// repeater that starts then fetches the live state from the peer steadiest
// on the bus, not from the one that was cut off: no deleted key comes back
// into its live state or to a subscriber it warms. And a repeater restarted
// from a saved live state that still holds deleted keys loses them in its
// fetch: answers carry the deletes (tombstones) the answering peer remembers.

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { encodeCacheDelete, encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster tombstone suite (test/system/cluster.tombstones.test.ts)', 'Deletes across a partition and a fetch are NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const PEER_TIMEOUT_S = 1.5;
const KEYS = 20;
const DELETED = 10;
const FETCH_OVER = 'cluster: live state fetch over; warm joins start';
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);
const del = (k: string) => encodeCacheDelete(Buffer.from(k), true);

interface Node {
  readonly r: Running;
  readonly port: number;
}

describe('cluster mode: a fetched state does not resurrect deletes', { skip, timeout: 120_000 }, () => {
  let nats: NatsCluster;
  let key: string;
  const nodes: Node[] = [];

  before(async () => {
    requireNats();
    // Servers that do not tell clients of each other: a repeater given one server stays on it, and is cut off with it.
    nats = await NatsCluster.start(3, 'urtomb', ['--no_advertise=true']);
    key = await keygen();
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.r.stop();
    for (const s of nats.servers) if (!s.running) await s.start();
    await nats.routed();
  });
  after(async () => {
    await nats?.close();
  });

  /** A repeater on NATS server `server` only (cut it off by killing that server); resolves once its own fetch is over. */
  async function repeater(server: number, extra: string[] = []): Promise<Node & { fetch: string }> {
    const port = await freePort();
    const r = await serve([
      '--listen', `127.0.0.1:${port},channel=ssl`,
      '--cluster', nats.urls[server]!,
      '--cluster-name', 'tomb',
      '--cluster-peer-timeout', String(PEER_TIMEOUT_S),
      '--cluster-key-file', key,
      '--log-level', 'info',
      ...extra,
    ]);
    const node = { r, port };
    nodes.push(node);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
    const over = await r.d.log.waitFor(FETCH_OVER, {}, { ms: 4 * PEER_TIMEOUT_S * 1000 + 5000 });
    return { ...node, fetch: over['result'] as string };
  }

  const entries = async (n: Node) => (await n.r.metrics()).value('udprepeater_live_state_entries', { channel: 'ssl' });
  const holds = async (ns: Node[], n: number) => {
    for (const x of ns) await eventually(`${x.port} to hold ${n} live entries`, async () => ((await entries(x)) === n ? true : undefined), 10_000);
  };
  const idOf = async (n: Node) => (JSON.parse((await httpGet(n.r.metricsPort, '/healthz')).body) as { cluster: { id: string } }).cluster.id;

  /** Keys a new subscriber of `n` is warmed with. */
  async function warmedWith(n: Node): Promise<string[]> {
    const rx = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), n.port);
    const done = await n.r.d.log.waitFor('warm join completed', { address: rx.address }, { ms: 10_000 });
    const got = await rx.waitFor(Number(done['sent']), 5_000);
    return got.map(keyOf).sort();
  }

  /** Sets KEYS keys through `via` and waits until `all` hold them. */
  async function setAll(via: Node, all: Node[]): Promise<void> {
    for (let i = 0; i < KEYS; i++) await sender.send(set(`k${i}`), via.port);
    await holds(all, KEYS);
  }

  const kept = Array.from({ length: KEYS - DELETED }, (_, i) => `k${DELETED + i}`).sort();

  test('repeater 3 cut off while keys are deleted, then back: a new repeater fetches from a steady peer, and no deleted key comes back', async () => {
    // Repeater 3 first: the longest running, the one a preference for age would ask.
    const r3 = await repeater(2);
    const r1 = await repeater(0);
    const r2 = await repeater(1);
    await setAll(r1, [r1, r2, r3]);

    // Cut off: its only NATS server dies. The deletes go through repeater 2 meanwhile.
    const from = r3.r.d.log.length;
    await nats.servers[2]!.kill();
    await r3.r.d.log.waitFor('cluster bus disconnected: serving our own listeners to the subscribers we heard', {}, { from, ms: 10_000 });
    for (let i = 0; i < DELETED; i++) await sender.send(del(`k${i}`), r2.port);
    await holds([r1, r2], KEYS - DELETED);
    assert.equal(await entries(r3), KEYS, 'repeater 3 heard the deletes: it was not cut off');

    // Healed: it comes back with the deleted keys, and says how long it has been steady.
    await nats.servers[2]!.start();
    await nats.routed();
    await r3.r.d.log.waitFor('cluster bus connected', {}, { from, ms: 10_000 });
    // Out for less than the peer timeout, maybe: its peers need not have noticed. It hears them again.
    await eventually('repeater 3 to hear both peers again', async () => ((JSON.parse((await httpGet(r3.r.metricsPort, '/healthz')).body) as { cluster: { peers: unknown[] } }).cluster.peers.length === 2 ? true : undefined), 10_000);

    // On repeater 3's own NATS server: its heartbeat reaches the newcomer first.
    const r4 = await repeater(2);
    const asked = await r4.r.d.log.waitFor('cluster: fetching the live state from a peer', {});
    console.log(JSON.stringify({ fetch: r4.fetch, askedCutOffRepeater: asked['peer'] === (await idOf(r3)), entries: await entries(r4) }));
    assert.equal(r4.fetch, 'complete');
    const warmed = await warmedWith(r4);
    assert.deepEqual(warmed, kept, 'a subscriber of the new repeater was warmed with a deleted key (or misses a live one)');
    assert.equal(await entries(r4), KEYS - DELETED, "deleted keys came back into the new repeater's live state");
    assert.notEqual(asked['peer'], await idOf(r3), 'the new repeater asked the repeater that had been cut off');
  });

  test('a repeater restarted from a saved live state that still holds deleted keys: its fetch deletes them (tombstones)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-tomb-state-'));
    const saving = ['--state-dir', dir, '--save-live-state'];
    const r1 = await repeater(0);
    const r3 = await repeater(2, saving);
    await setAll(r1, [r1, r3]);
    // Repeater 3 stops, saving the state it holds (every key); the keys are deleted while it is down.
    await r3.r.stop();
    nodes.splice(nodes.indexOf(r3), 1);
    for (let i = 0; i < DELETED; i++) await sender.send(del(`k${i}`), r1.port);
    await holds([r1], KEYS - DELETED);

    const again = await repeater(2, saving);
    const m = await again.r.metrics();
    console.log(JSON.stringify({ fetch: again.fetch, entries: await entries(again), received: Object.fromEntries(['set', 'deleted', 'absent', 'tombstoned', 'live_newer'].map((o) => [o, m.value('udprepeater_cluster_state_entries_received_total', { outcome: o })])) }));
    assert.equal(again.fetch, 'complete');
    assert.equal(await entries(again), KEYS - DELETED, 'keys deleted while it was down are back in its live state');
    assert.deepEqual(await warmedWith(again), kept, 'a subscriber was warmed with a key deleted while its repeater was down');
  });
});

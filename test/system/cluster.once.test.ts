// Exactly once must never drop a real update (issue 16, item 1): real uWSGI
// nodes on two repeaters joined by a real nats-server. A node that sets
// k=A, k=B, k=A and j=X, deletes j, sets j=X, 150 ms apart, through its own
// repeater or through both (node=R1;R2), must leave every node with k=A and
// j=X, and so must the live state a late joiner is warmed with: the exactly-
// once memory pairs copies per ingress (judge/copies.ts), so a node's own
// repetitions are never taken for the copy another repeater brought.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, untilValue, UwsgiNode, uwsgiAvailability } from '../helpers/uwsgi.js';

const uwsgi = requirement('real uWSGI interop', 'the exactly-once suite (test/system/cluster.once.test.ts)', 'Exactly-once with real uWSGI nodes is NOT being tested.', uwsgiAvailability(), INSTALL_HINT);
const nats = requirement('nats-server', 'the exactly-once suite (test/system/cluster.once.test.ts)', 'Exactly-once with real uWSGI nodes is NOT being tested.', natsAvailability(), NATS_HINT, !uwsgi.skip);
const skip = uwsgi.skip || nats.skip;
const HOOK = { timeout: 90_000 };
const STEP_MS = 150;
const A = Buffer.from('value A of the session');
const B = Buffer.from('value B of the session');
const X = Buffer.from('value X of the other session');

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('cluster mode: exactly once never drops a real update', { skip, timeout: 180_000 }, () => {
  let bus: NatsCluster;
  const repeaters: Running[] = [];
  const ports: number[] = [];
  const nodes: UwsgiNode[] = [];

  before(async () => {
    uwsgi.require();
    nats.require();
    bus = await NatsCluster.start(1, 'uronce');
    const clusterKey = await keygen();
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      const r = await serve([
        '--listen', `127.0.0.1:${port},channel=ssl`,
        '--cluster', bus.urls[0]!,
        '--cluster-name', 'once',
        '--cluster-key-file', clusterKey,
        '--cluster-peer-timeout', '1.5',
        // Every node is on 127.0.0.1: without this the late joiners' warm joins would skip what 127.0.0.1 was sent live.
        '--warm-cooldown', '0',
      ]);
      await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
      repeaters.push(r);
      ports.push(port);
    }
    for (const r of repeaters) await r.d.log.waitFor('cluster peer joined', {}, { ms: 10_000 });
  }, HOOK);

  after(async () => {
    for (const n of nodes) await n.stop();
    killAllUwsgi();
    for (const r of repeaters) await r.stop();
    await bus?.close();
  }, HOOK);

  const at = (i: number) => `127.0.0.1:${ports[i]!}`;

  /** The sequence for (k, j), STEP_MS apart. */
  async function sequence(n: UwsgiNode, k: string, j: string): Promise<void> {
    await n.set(k, A);
    await pause(STEP_MS);
    await n.set(j, X);
    await pause(STEP_MS);
    await n.set(k, B);
    await pause(STEP_MS);
    assert.equal(await n.del(j), true);
    await pause(STEP_MS);
    await n.set(k, A);
    await pause(STEP_MS);
    await n.set(j, X);
  }

  test('k=A,B,A and j=X,delete,X through one repeater or through both: every node and every late joiner ends with k=A and j=X', async () => {
    const n1 = await UwsgiNode.start({ repeater: at(0), name: 'n1 (on R1)' });
    const n2 = await UwsgiNode.start({ repeater: at(1), name: 'n2 (on R2)' });
    const both = [at(0), at(1)];
    const n3 = await UwsgiNode.start({ cacheNode: both.join(';'), subscribeTo: both, name: 'n3 (node=R1;R2)' });
    nodes.push(n1, n2, n3);
    for (const r of repeaters) await r.d.log.waitFor('subscribed', {}, { count: 2, ms: 10_000 });

    const writers = [n1, n2, n3];
    const keys = writers.map((_, i) => ({ k: `k-of-n${i + 1}`, j: `j-of-n${i + 1}` }));
    await Promise.all(writers.map((n, i) => sequence(n, keys[i]!.k, keys[i]!.j)));
    // A sentinel after the sequences, from every writer: once a node holds all three, what came before did arrive
    // (one writer's updates keep their order through its repeater and the bus).
    for (const [i, n] of writers.entries()) await n.set(`sentinel-${i}`, Buffer.from('end'));
    for (const n of nodes) for (let i = 0; i < writers.length; i++) await untilValue(n, `sentinel-${i}`, Buffer.from('end'));

    const wrong: string[] = [];
    for (const n of nodes) {
      for (const { k, j } of keys) {
        const [vk, vj] = [await n.get(k), await n.get(j)];
        if (vk === null || !vk.equals(A)) wrong.push(`${n.name}: ${k} = ${vk === null ? 'absent' : vk.equals(B) ? 'B' : vk.toString()}`);
        if (vj === null || !vj.equals(X)) wrong.push(`${n.name}: ${j} = ${vj === null ? 'deleted' : vj.toString()}`);
      }
    }
    const dups = async () => Promise.all(repeaters.map(async (r) => (await r.metrics()).value('udprepeater_cluster_duplicates_total')));
    console.log(JSON.stringify({ wrong, duplicatesSuppressed: await dups() }));
    assert.deepEqual(wrong, [], 'a node holds a value the writer overwrote, or misses one it set again');
    // The copies n3 sent through both repeaters were paired: each of its 6 updates had its second copy dropped by a
    // repeater. Both drop one when each read its own copy before the other's came off the bus (both published); only
    // one when the other's came first (it then drops its own and publishes nothing, so the other sees one copy).
    // The last ones' second copies may still be on the bus: one path's sentinel can overtake the other's.
    await eventually('the second copy of each of n3\'s updates dropped', async () => ((await dups()).reduce((a, b) => a + b, 0) >= 6 ? true : undefined), 5_000);

    // The live state: a node that joins now is warmed with it, by each repeater.
    for (const [i, via] of [at(0), at(1)].entries()) {
      const late = await UwsgiNode.start({ repeater: via, name: `late joiner on R${i + 1}` });
      nodes.push(late);
      const done = await repeaters[i]!.d.log.waitFor('warm join completed', { address: late.udpAddress }, { ms: 15_000 });
      assert.ok(Number(done['sent']) >= 2 * keys.length, `the warm join sent ${String(done['sent'])} entries`);
      for (const { k, j } of keys) {
        await untilValue(late, k, A);
        await untilValue(late, j, X);
      }
    }
  });
});

// No downgrade across a cluster: the form an address is served in is one fact
// for all the repeaters. Two repeaters on a real nats-server, each with a
// plain and a sealed listener on channel ssl, started through the CLI; a real
// agent subscribed sealed to the second only (the README's "one repeater
// each"); spoofed plain subscriptions naming the agent's address from a
// loopback socket. The agent's socket must never receive a cache value in
// clear: anything a repeater sends it that is not its own sealed frame is
// counted by the agent (not_allowed: not from its repeater; unsealed).

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { agent, httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster form suite (test/system/cluster.forms.test.ts)', 'No downgrade across a cluster is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const WAIT = 10_000;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`secret session ${k}`), 0);
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');

interface Node {
  readonly r: Running;
  readonly plain: number;
  readonly sealed: number;
}

describe('cluster mode: a plain subscription can never downgrade an address another repeater serves sealed', { skip, timeout: 120_000 }, () => {
  let nats: NatsCluster;
  let key: string;
  let clusterKey: string;
  let clusters = 0;

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(1, 'urforms');
    scope.track(nats);
    [key, clusterKey] = [await keygen(), await keygen()];
  });

  async function repeater(cluster: string): Promise<Node> {
    const [plain, sealed] = [await freePort(), await freePort()];
    const r = await serve([
      '--listen', `127.0.0.1:${plain},channel=ssl,key=ssl`,
      '--listen-sealed', `127.0.0.1:${sealed},channel=ssl,key=ssl`,
      '--key-file', key,
      '--cluster-key-file', clusterKey,
      '--cluster', nats.urls[0]!,
      '--cluster-name', cluster,
      '--cluster-peer-timeout', '1.5',
    ]);
    scope.track({ close: () => r.stop() });
    await r.d.log.waitFor('cluster bus connected', {}, { ms: WAIT });
    return { r, plain, sealed };
  }

  /** Two repeaters that know each other, and an agent on a fixed address subscribed sealed to the second only. */
  async function layout(): Promise<{ r1: Node; r2: Node; node: Receiver; agentAddress: string; startAgent: () => Promise<Running> }> {
    const name = `forms${clusters++}`;
    const r1 = await repeater(name);
    const r2 = await repeater(name);
    for (const n of [r1, r2]) await n.r.d.log.waitFor('cluster peer joined', {}, { ms: WAIT });
    const node = await scope.receiver();
    const [bind, local] = [await freePort(), await freePort()];
    const agentAddress = `127.0.0.1:${bind}`;
    const startAgent = async () => {
      const a = await agent(['--repeater', `127.0.0.1:${r2.sealed}`, '--key-file', key, '--bind', agentAddress, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']);
      scope.track({ close: () => a.stop() });
      return a;
    };
    return { r1, r2, node, agentAddress, startAgent };
  }

  /** What reached the agent's socket other than its repeater's sealed frames: plain copies. */
  async function inClear(a: Running): Promise<number> {
    const m = await a.metrics();
    return m.value('udprepeater_agent_datagrams_dropped_total', { channel: 'to_node', reason: 'not_allowed' }) + m.value('udprepeater_agent_datagrams_dropped_total', { channel: 'to_node', reason: 'unsealed' });
  }

  /**
   * Sends `n` sets into R1's plain listener and a sentinel; resolves once the
   * agent's node has the sentinel through R2. R1 sent its copies before it
   * published them, so any plain copy reached the agent's socket before the
   * sealed sentinel did, and the agent counted it first.
   */
  async function traffic(r1: Node, node: Receiver, prefix: string, n: number): Promise<string[]> {
    const from = node.received.length;
    for (let i = 0; i < n; i++) await sender.send(set(`${prefix}${i}`), r1.plain);
    await sender.send(set(`${prefix}sentinel`), r1.plain);
    return eventually(`${prefix}sentinel at the agent's node`, () => {
      const keys = node.received.slice(from).map(keyOf);
      return keys.includes(`${prefix}sentinel`) ? keys : undefined;
    }, WAIT);
  }

  const refusals = async (n: Node, address: string) => (JSON.parse((await httpGet(n.r.metricsPort, '/refusals')).body) as Array<{ address: string; reason: string }>).filter((x) => x.address === address).map((x) => x.reason);
  const formConflicts = async (n: Node) => (await n.r.metrics()).value('udprepeater_datagrams_dropped_total', { reason: 'form_conflict' });

  test("a spoofed plain subscription to R1 naming the address of an agent served sealed by R2: refused as form_conflict, no value reaches the agent in clear", async () => {
    const { r1, r2, node, agentAddress, startAgent } = await layout();
    const a = await startAgent();
    await r2.r.d.log.waitFor('subscribed', { address: agentAddress, form: 'sealed' }, { ms: WAIT });
    // R1 heard R2's announcement of it (the only subscriber on this cluster).
    await eventually("R1 to hear R2's announcement", async () => ((await r1.r.metrics()).value('udprepeater_cluster_messages_received_total', { kind: 'subscriber' }) >= 1 ? true : undefined), WAIT);
    const SPOOFS = 3;
    for (let i = 0; i < SPOOFS; i++) await sender.send(encodeSubscription({ key: 'ssl', address: agentAddress }), r1.plain);
    const judged = async () => {
      const m = await r1.r.metrics();
      return ['reject', 'subscribe', 'refresh'].reduce((sum, event) => sum + m.value('udprepeater_subscription_events_total', { event }), 0);
    };
    await eventually('R1 to judge the spoofed subscriptions', async () => ((await judged()) >= SPOOFS ? true : undefined), WAIT);
    const N = 10;
    const got = await traffic(r1, node, 'v', N);
    const clear = await inClear(a);
    const conflicts = await formConflicts(r1);
    console.log(JSON.stringify({ datagrams: N, reachedTheAgentInClear: clear, formConflictAtR1: conflicts, atTheNode: got.length }));
    assert.equal(clear, 0, `${clear} cache values reached the sealed agent in clear`);
    assert.equal(conflicts, SPOOFS, 'R1 did not count the spoofed subscriptions as form_conflict');
    assert.deepEqual(await refusals(r1, agentAddress), Array.from({ length: SPOOFS }, () => 'form_conflict'));
    assert.equal(r1.r.d.log.matching('subscribed', { address: agentAddress }).length, 0, 'R1 took the spoofed subscription');
    assert.deepEqual(got, [...Array.from({ length: N }, (_, i) => `v${i}`), 'vsentinel'], 'the agent lost updates');
  });

  test('a plain subscriber R1 took before the agent subscribed sealed to R2 is dropped when R2 announces it', async () => {
    const { r1, r2, node, agentAddress, startAgent } = await layout();
    // The race the cluster cannot close: the spoof reaches R1 before anyone serves the address sealed.
    await sender.send(encodeSubscription({ key: 'ssl', address: agentAddress }), r1.plain);
    await r1.r.d.log.waitFor('subscribed', { address: agentAddress, form: 'plain' }, { ms: WAIT });
    const a = await startAgent();
    await r2.r.d.log.waitFor('subscribed', { address: agentAddress, form: 'sealed' }, { ms: WAIT });
    await r1.r.d.log.waitFor('plain subscriber replaced by a sealed one', { address: agentAddress }, { ms: WAIT });
    // And the spoofer keeps refreshing it: refused from now on.
    await sender.send(encodeSubscription({ key: 'ssl', address: agentAddress }), r1.plain);
    await eventually('R1 to refuse the refresh', async () => ((await formConflicts(r1)) >= 1 ? true : undefined), WAIT);
    const N = 10;
    const got = await traffic(r1, node, 'w', N);
    const clear = await inClear(a);
    const subs = JSON.parse((await httpGet(r1.r.metricsPort, '/subscribers')).body) as Array<{ address: string }>;
    console.log(JSON.stringify({ datagrams: N, reachedTheAgentInClear: clear, formConflictAtR1: await formConflicts(r1), r1Subscribers: subs.map((x) => x.address) }));
    assert.equal(clear, 0, `${clear} cache values reached the sealed agent in clear`);
    assert.ok(!subs.some((x) => x.address === agentAddress), 'R1 still holds the plain subscriber');
    assert.deepEqual(got, [...Array.from({ length: N }, (_, i) => `w${i}`), 'wsentinel']);
  });
});

// Safety: a subscriber's form is fixed by how it was authenticated. Nothing
// plain (and so spoofable) can replace, refresh, remove or crowd out a sealed
// subscriber, so a sealed node's cache values never travel in clear (issue 8,
// "downgrade"). Black box, like test/safety.loops.test.ts.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, httpGet, keygen, type Running, serve } from './helpers/attack.js';
import { eventually, freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`secret session ${k}`), 0);

function track<T extends { stop(): Promise<unknown> }>(r: T): T {
  scope.track({ close: () => r.stop() });
  return r;
}

interface View {
  address: string;
  form: string;
}

async function subscribers(r: Running): Promise<View[]> {
  return JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as View[];
}

/** A mixed channel (plain and sealed listeners), an agent on a fixed port, and its node. */
async function mixed(extra: string[] = []) {
  const key = await keygen();
  const [pp, sp, bind, local] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key, ...extra]));
  const node = await scope.receiver();
  const agentAddress = `127.0.0.1:${bind}`;
  const start = () => agent(['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--bind', agentAddress, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.3']);
  return { r, pp, sp, key, node, agentAddress, start };
}

describe('plain can never touch sealed', () => {
  test("a spoofed plain subscription naming a sealed agent's address is refused: no value reaches it in clear", async () => {
    const { r, pp, node, agentAddress, start } = await mixed();
    const a = track(await start());
    await r.d.log.waitFor('subscribed', { address: agentAddress });
    await sender.send(encodeSubscription({ key: 'ssl', address: agentAddress }), pp);
    await eventually('the plain subscription to be judged', async () =>
      (await r.metrics()).value('udprepeater_subscription_events_total', { event: 'reject' }) + (await r.metrics()).value('udprepeater_subscription_events_total', { event: 'subscribe' }) >= 2 ? true : undefined,
    );
    const N = 50;
    for (let i = 0; i < N; i++) await sender.send(set(`k${i}`), pp);
    // Everything reaches the agent's socket, sealed or not: count what came in clear.
    await eventually(`${N} datagrams at the agent`, async () => ((await a.metrics()).value('udprepeater_agent_bytes_received_total', { channel: 'to_node' }) > 0 && (await a.metrics()).value('udprepeater_agent_datagrams_received_total', { channel: 'to_node' }) >= N ? true : undefined));
    const m = await a.metrics();
    const inClear = m.value('udprepeater_agent_datagrams_dropped_total', { channel: 'to_node', reason: 'unsealed' });
    const view = (await subscribers(r)).filter((s) => s.address === agentAddress);
    console.log(JSON.stringify({ datagrams: N, reachedTheAgentInClear: inClear, entries: view }));
    assert.equal(inClear, 0, `${inClear} of ${N} cache values reached the sealed agent in clear`);
    await node.waitFor(N);
    assert.deepEqual(view.map((v) => v.form), ['sealed']);
    const refusals = JSON.parse((await httpGet(r.metricsPort, '/refusals')).body) as Array<{ address: string; reason: string }>;
    assert.deepEqual(refusals.filter((x) => x.address === agentAddress).map((x) => x.reason), ['form_conflict']);
  });

  test('a spoofed plain unsubscribe cannot remove a sealed subscriber', async () => {
    const { r, pp, node, agentAddress, start } = await mixed(['--tolerance', '60']);
    track(await start());
    await r.d.log.waitFor('subscribed', { address: agentAddress });
    for (let i = 0; i < 5; i++) await sender.send(encodeSubscription({ key: 'ssl', address: agentAddress, unsubscribe: true }), pp);
    await sender.send(set('after'), pp);
    const got = await node.waitFor(1);
    assert.deepEqual(got.map(String), [String(set('after'))]);
    assert.equal(r.d.log.matching('unsubscribed', { address: agentAddress }).length, 0, 'a plain unsubscribe removed the sealed subscriber');
    assert.deepEqual((await subscribers(r)).filter((s) => s.address === agentAddress).map((s) => s.form), ['sealed']);
  });

  test('plain subscriptions filling their registry leave room for sealed ones', async () => {
    const CAP = 20;
    const { r, pp, node, agentAddress, start } = await mixed(['--max-subscribers', String(CAP), '--subscribe-burst', '100']);
    for (let i = 0; i < CAP + 10; i++) await sender.send(encodeSubscription({ key: 'ssl', address: `127.0.9.${1 + i}:9` }), pp);
    await eventually('the plain registry to fill', async () => ((await r.metrics()).value('udprepeater_subscribers') >= CAP ? true : undefined));
    track(await start());
    await r.d.log.waitFor('subscribed', { address: agentAddress });
    await sender.send(set('k'), pp);
    assert.deepEqual((await node.waitFor(1)).map(String), [String(set('k'))]);
  });
});

// The agent's links to its repeaters (src/agent/agent.ts), over real daemons
// through the CLI (UDPREPEATER_CLI runs them against another build):
// - two repeaters on one host, different ports (the HA layout on one machine,
//   or two repeaters behind one address): the agent subscribes to both and
//   sends both every update (its links are keyed by host and port; frames
//   come back from any port of a repeater's host);
// - a node behind an agent gets every update its repeater sends it exactly
//   once, whatever else arrives: in a mixed channel (plain and sealed
//   listeners), a plain subscription naming the agent's --local makes the
//   repeater send a traced plain copy there too, which must not make the
//   agent drop the sealed copy as a duplicate. A real uWSGI node writes.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, freeAddress, httpGet, keygen, type Running, serve } from './helpers/attack.js';
import { eventually, freePort, untraced } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability } from './helpers/uwsgi.js';

const scope = new Scope(killAllUwsgi);
const { sender } = scope;
const uwsgi = requirement('real uWSGI interop', 'the agent links suite (test/agent.links.test.ts)', 'A node behind an agent in a mixed channel is NOT being tested.', uwsgiAvailability(), INSTALL_HINT);
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');

function track(r: Running): Running {
  scope.track({ close: () => r.stop() });
  return r;
}

const hostPort = (a: string): [string, number] => [a.slice(0, a.lastIndexOf(':')), Number(a.slice(a.lastIndexOf(':') + 1))];

describe('the agent and its repeaters', () => {
  test('two repeaters on 127.0.0.1, different ports: both hear the agent\'s subscription and both get its updates', async () => {
    const key = await keygen();
    const ports = [await freePort(), await freePort()];
    const plain = [await freePort(), await freePort()];
    const rs = [];
    for (let i = 0; i < 2; i++) {
      rs.push(track(await serve(['--listen', `127.0.0.1:${plain[i]},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${ports[i]},channel=ssl,key=ssl`, '--key-file', key, '--no-warm-join'])));
    }
    // A sink on each repeater, as the other nodes of the channel.
    const sinks = [await scope.receiver(), await scope.receiver()];
    for (let i = 0; i < 2; i++) {
      await sender.send(encodeSubscription({ key: 'ssl', address: sinks[i]!.address }), plain[i]!);
      await rs[i]!.d.log.waitFor('subscribed', { address: sinks[i]!.address });
    }
    const node = await scope.receiver();
    const local = await freeAddress();
    const a = track(await agent(['--repeater', `127.0.0.1:${ports[0]}`, '--repeater', `127.0.0.1:${ports[1]}`, '--key-file', key, '--local', local, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']));
    for (const r of rs) await r.d.log.waitFor('subscribed', { form: 'sealed' }, { ms: 5000 });
    const links = (JSON.parse((await httpGet(a.metricsPort, '/healthz')).body) as { links: Array<{ repeater: string }> }).links.map((l) => l.repeater);
    assert.deepEqual(links.sort(), ports.map((p) => `127.0.0.1:${p}`).sort());
    // The node's updates (sent to --local from a socket of the node's user: this process owns --deliver) reach both.
    const [lh, lp] = hostPort(local);
    for (let i = 0; i < 5; i++) await sender.send(encodeCacheSet(Buffer.from(`ha${i}`), Buffer.from('v'), 0), lp, lh);
    for (const s of sinks) assert.deepEqual((await s.waitFor(5)).map((d) => keyOf(untraced(d))), ['ha0', 'ha1', 'ha2', 'ha3', 'ha4']);
    // And what each repeater sends comes back to the node (frames from any port of the repeater's host).
    for (let i = 0; i < 2; i++) await sender.send(encodeCacheSet(Buffer.from(`back${i}`), Buffer.from('v'), 0), plain[i]!);
    const got = (await node.waitFor(2)).map((d) => keyOf(untraced(d))).sort();
    assert.deepEqual(got, ['back0', 'back1']);
  });

  test('a mixed channel and a plain subscription naming the agent\'s --local: the node behind the agent gets every update exactly once', { skip: uwsgi.skip }, async () => {
    uwsgi.require();
    const key = await keygen();
    const [pp, sp] = [await freePort(), await freePort()];
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key, '--no-warm-join']));
    // The node behind the agent: its cache-udp-server here counts every copy it is sent.
    const node = await scope.receiver();
    const local = await freeAddress();
    const a = track(await agent(['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--local', local, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']));
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { ms: 5000 });
    // Anyone on the allow-list names the agent's --local as a plain subscriber.
    await sender.send(encodeSubscription({ key: 'ssl', address: local }), pp);
    await r.d.log.waitFor('subscribed', { address: local, form: 'plain' });
    // A real uWSGI node writes through the plain listener.
    const writer = await UwsgiNode.start({ repeater: `127.0.0.1:${pp}`, name: 'writer' });
    scope.track({ close: () => writer.stop() });
    const N = 20;
    for (let i = 0; i < N; i++) await writer.set(`mixed${i}`, `value ${i}`, 0);
    // A marker after them on the same path: once it is in, every copy would be.
    await writer.set('marker', 'end', 0);
    await eventually('the marker at the node', () => (node.received.some((d) => keyOf(untraced(d)) === 'marker') ? true : undefined), 10_000);
    await eventually('the repeater\'s copies to --local to have been read', async () => {
      const m = await a.metrics();
      return m.value('udprepeater_agent_datagrams_received_total', { channel: 'to_repeater', kind: 'set' }) >= N + 1 ? true : undefined;
    }, 5000);
    const counts = new Map<string, number>();
    for (const d of node.received) if (d[3] === 10) counts.set(keyOf(untraced(d)), (counts.get(keyOf(untraced(d))) ?? 0) + 1);
    const m = await a.metrics();
    console.log(JSON.stringify({ updates: N, atTheNode: Object.fromEntries(counts), agentDroppedAsDuplicate: m.value('udprepeater_agent_datagrams_dropped_total', { reason: 'duplicate' }), agentDroppedAsLoop: m.value('udprepeater_agent_datagrams_dropped_total', { reason: 'loop' }) }));
    for (let i = 0; i < N; i++) assert.equal(counts.get(`mixed${i}`) ?? 0, 1, `mixed${i} reached the node ${counts.get(`mixed${i}`) ?? 0} times`);
    assert.equal(m.value('udprepeater_agent_datagrams_forwarded_total', { channel: 'to_repeater' }), 0, 'the agent sealed a repeater\'s copy as if the node had sent it');
    assert.equal(m.value('udprepeater_agent_datagrams_dropped_total', { reason: 'duplicate' }), 0, 'a sealed copy was dropped as a duplicate');
  });
});

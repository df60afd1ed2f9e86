// Safety: one datagram in, at most one copy out per subscriber, whatever
// subscriptions arrive and however repeaters and agents are wired together
// (issue 8, "one datagram, endless copies"). Black box: real daemons through
// the CLI (UDPREPEATER_CLI=/path/to/old/cli.js runs the same attacks against
// another build). Each test ends with a marker whose arrival proves anything
// circulating would already have been counted.

import assert from 'node:assert/strict';
import { networkInterfaces } from 'node:os';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, freeAddress, httpGet, keygen, type Running, serve } from './helpers/attack.js';
import { Daemon } from './helpers/daemon.js';
import { eventually, freePort, type Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);
const sub = (address: string, key = 'ssl') => encodeSubscription({ key, address });

function track(r: Running): Running {
  scope.track({ close: () => r.stop() });
  return r;
}

/**
 * Sends the subscriptions and waits until the repeater has judged every one
 * (its subscription events count them); refusals are read from /refusals,
 * which keeps each one (logs are throttled per reason).
 */
async function announce(r: Running, port: number, addresses: readonly string[]): Promise<{ subscribed: string[]; refused: Map<string, string> }> {
  const judged = async () => {
    const m = await r.metrics();
    return ['subscribe', 'refresh', 'reject'].reduce((n, event) => n + m.value('udprepeater_subscription_events_total', { event }), 0);
  };
  const before = await judged();
  for (const a of addresses) await sender.send(sub(a), port);
  await eventually(`${addresses.length} subscriptions judged`, async () => ((await judged()) >= before + addresses.length ? true : undefined));
  // Read from the daemon's own view, not its log: a log line may still be in the pipe when the counters say judged.
  const held = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as Array<{ address: string }>;
  const subscribed = held.map((x) => x.address).filter((a) => addresses.includes(a));
  const recent = JSON.parse((await httpGet(r.metricsPort, '/refusals')).body) as Array<{ address: string | null; reason: string }>;
  const refused = new Map(recent.filter((x) => x.address !== null && addresses.includes(x.address)).map((x) => [x.address!, x.reason]));
  return { subscribed, refused };
}

/** Sends `n` sets, then waits for them at the sink: returns how many sets the repeater had read by then. */
async function sendAndCount(r: Running, port: number, sink: Receiver, n: number): Promise<number> {
  for (let i = 0; i < n; i++) await sender.send(set(`k${i}`), port);
  await sink.waitFor(n);
  return (await r.metrics()).value('udprepeater_datagrams_received_total', { kind: 'set' });
}

describe('no circulation through one repeater', () => {
  test('its own listener named as an IPv4-mapped IPv6 address (any spelling) is refused: a set is read once', async () => {
    const port = await freePort();
    const r = track(await serve(['--listen', `127.0.0.1:${port}`]));
    const sink = await scope.receiver();
    const aliases = [`[::ffff:127.0.0.1]:${port}`, `[::ffff:7f00:1]:${port}`, `[0:0:0:0:0:ffff:127.0.0.1]:${port}`, `[::FFFF:127.0.0.1]:${port}`];
    const { subscribed, refused } = await announce(r, port, [sink.address, ...aliases]);
    assert.deepEqual(subscribed, [sink.address]);
    for (const a of aliases) assert.equal(refused.get(a), 'loop', `${a} was not refused as a loop`);
    assert.equal(await sendAndCount(r, port, sink, 3), 3, 'the repeater read its own copies back');
    assert.deepEqual((await sink.waitFor(3)).map(String), [set('k0'), set('k1'), set('k2')].map(String));
  });

  test('a wildcard listener owns every local address on its port, in every spelling', async () => {
    const port = await freePort('0.0.0.0');
    const r = track(await serve(['--listen', `0.0.0.0:${port}`, '--allow', '127.0.0.0/8', '--allow', '::/0', '--allow', '10.0.0.0/8', '--allow', '172.16.0.0/12', '--allow', '192.168.0.0/16']));
    const sink = await scope.receiver();
    const local = Object.values(networkInterfaces())
      .flat()
      .filter((a) => a !== undefined && a.family === 'IPv4')
      .map((a) => a!.address);
    const aliases = [`127.0.0.1:${port}`, `127.0.0.2:${port}`, `[::ffff:127.0.0.3]:${port}`, ...local.map((ip) => `[::ffff:${ip}]:${port}`), ...local.map((ip) => `${ip}:${port}`)];
    const { subscribed, refused } = await announce(r, port, [sink.address, ...aliases]);
    assert.deepEqual(subscribed, [sink.address]);
    for (const a of aliases) assert.equal(refused.get(a), 'loop', `${a} was not refused as a loop`);
    assert.equal(await sendAndCount(r, port, sink, 3), 3, 'the repeater read its own copies back');
  });

  test('unspecified, multicast and broadcast addresses, mapped or not, are refused even under --allow-any', async () => {
    const port = await freePort();
    const r = track(await serve(['--listen', `127.0.0.1:${port}`, '--allow-any']));
    const sink = await scope.receiver();
    const bad = [`[::ffff:0.0.0.0]:${port}`, `0.0.0.0:${port}`, `[::]:${port}`, `[::ffff:224.0.0.1]:${port}`, `239.1.1.1:${port}`, `[ff02::1]:${port}`, `[::ffff:255.255.255.255]:${port}`, `255.255.255.255:${port}`, `0.1.2.3:${port}`, `240.0.0.1:${port}`];
    const { subscribed, refused } = await announce(r, port, [sink.address, ...bad]);
    assert.deepEqual(subscribed, [sink.address]);
    for (const a of bad) assert.equal(refused.get(a), 'bad_address', `${a} was not refused`);
    assert.equal(await sendAndCount(r, port, sink, 3), 3, 'the repeater read its own copies back');
  });

  test('a static --to naming our own listener as a mapped address refuses the start (exit 78)', async () => {
    const port = await freePort();
    const d = Daemon.spawn(['serve', '--listen', `127.0.0.1:${port}`, '--to', `[::ffff:127.0.0.1]:${port}`, '--metrics', 'off']);
    scope.track({ close: () => d.stop() });
    const exit = await Promise.race([d.exited, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
    assert.notEqual(exit, null, 'the repeater started with a static output that loops to itself');
    assert.equal(exit!.code, 78);
    assert.match(d.log.records.map((x) => x.msg).join('\n'), /own listeners: that would loop/);
  });
});

describe('no circulation between forwarders', () => {
  test('two repeaters subscribed to each other: every node gets each datagram once, each repeater forwards it once', async () => {
    const [p1, p2] = [await freePort(), await freePort()];
    const r1 = track(await serve(['--listen', `127.0.0.1:${p1}`]));
    const r2 = track(await serve(['--listen', `127.0.0.1:${p2}`]));
    const [n1, n2] = [await scope.receiver(), await scope.receiver()];
    await announce(r1, p1, [n1.address, `127.0.0.1:${p2}`]);
    await announce(r2, p2, [n2.address, `127.0.0.1:${p1}`]);
    const N = 20;
    for (let i = 0; i < N; i++) await sender.send(set(`k${i}`), p1);
    await n1.waitFor(N);
    await n2.waitFor(N);
    // Each set comes back to r1 once, through r2, and stops there.
    await eventually('r1 to see each set come back', async () => ((await r1.metrics()).value('udprepeater_datagrams_received_total', { kind: 'set' }) >= 2 * N ? true : undefined));
    // A marker sent to each node straight after proves nothing more is in flight to them.
    for (const n of [n1, n2]) {
      await sender.send(Buffer.from('probe'), n.port);
      const got = await n.waitFor(N + 1);
      assert.equal(String(got[N]), 'probe', `${n.address} got more than one copy of some datagram`);
    }
    const [m1, m2] = [await r1.metrics(), await r2.metrics()];
    const summary = {
      r1: { readSets: m1.value('udprepeater_datagrams_received_total', { kind: 'set' }), forwarded: m1.value('udprepeater_datagrams_forwarded_total'), loops: m1.dropped('loop') },
      r2: { readSets: m2.value('udprepeater_datagrams_received_total', { kind: 'set' }), forwarded: m2.value('udprepeater_datagrams_forwarded_total'), loops: m2.dropped('loop') + m2.dropped('duplicate') },
    };
    console.log(JSON.stringify({ datagrams: N, ...summary }));
    assert.equal(summary.r1.readSets, 2 * N, 'r1 read a datagram more than twice (its own, and once back)');
    assert.equal(summary.r1.loops, N, 'r1 did not stop each returning datagram');
    assert.equal(summary.r1.forwarded, 2 * N, 'r1 forwarded more than one copy per subscriber');
    assert.equal(summary.r2.readSets, N);
    assert.equal(summary.r2.forwarded, 2 * N);
  });

  test("a plain subscription naming an agent's --local: the agent stops its own datagram when it comes back", async () => {
    const key = await keygen();
    const [pp, sp] = [await freePort(), await freePort()];
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key]));
    const node = await scope.receiver();
    const local = await freeAddress();
    const a = track(await agent(['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--local', local, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']));
    const sink = await scope.receiver();
    await announce(r, pp, [sink.address, local]);
    const N = 10;
    const [lh, lp] = [local.slice(0, local.lastIndexOf(':')), Number(local.slice(local.lastIndexOf(':') + 1))];
    for (let i = 0; i < N; i++) await sender.send(set(`k${i}`), lp, lh);
    await sink.waitFor(N);
    // Each set comes back to the agent's --local once and must stop there.
    await eventually('each set to come back to the agent', async () => ((await a.metrics()).value('udprepeater_agent_datagrams_received_total', { channel: 'to_repeater', kind: 'set' }) >= 2 * N ? true : undefined));
    await sender.send(Buffer.from('probe'), sink.port);
    assert.equal(String((await sink.waitFor(N + 1))[N]), 'probe', 'the sink got a datagram twice');
    const m = await a.metrics();
    const sealedOut = m.value('udprepeater_agent_datagrams_forwarded_total', { channel: 'to_repeater' });
    const readBack = m.value('udprepeater_agent_datagrams_received_total', { channel: 'to_repeater', kind: 'set' });
    console.log(JSON.stringify({ datagrams: N, agentRead: readBack, agentSealed: sealedOut, agentLoopDrops: m.value('udprepeater_agent_datagrams_dropped_total', { reason: 'loop' }) }));
    assert.equal(readBack, 2 * N);
    assert.equal(sealedOut, N, 'the agent sealed a datagram that came back to it');
  });
});

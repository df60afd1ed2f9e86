// Cluster mode over a real three-server NATS cluster (routes on loopback):
// one fan-out across repeaters, exactly once per subscriber, failover when a
// repeater or a NATS server dies, degraded service without the bus and the
// way back. Real repeaters through the CLI; test sockets as nodes.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { REPAIR_MARGIN_MS } from '../../src/cluster/takeover.js';
import { MARK_MS } from '../../src/repeater/warm-repair.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Metrics, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver, untraced } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster suite (test/system/cluster.test.ts)', 'Cluster mode is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const PEER_TIMEOUT_S = 1.5;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');

interface Node {
  readonly r: Running;
  readonly port: number;
  readonly name: string;
}

describe('cluster mode', { skip }, () => {
  let nats: NatsCluster;
  let key: string;
  const nodes: Node[] = [];

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(3);
    key = await keygen();
  });
  // Each test's repeaters leave the bus before the next one counts its peers.
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.r.stop();
  });
  after(async () => {
    await nats?.close();
  });

  /** A repeater on the bus; `server` picks the NATS server it names first. */
  async function repeater(server: number, extra: string[] = []): Promise<Node> {
    const port = await freePort();
    const urls = [...nats.urls.slice(server), ...nats.urls.slice(0, server)];
    const r = await serve([
      '--listen', `127.0.0.1:${port},channel=ssl`,
      ...urls.flatMap((u) => ['--cluster', u]),
      '--cluster-name', 't',
      '--cluster-peer-timeout', String(PEER_TIMEOUT_S),
      '--cluster-key-file', key,
      '--log-level', 'info',
      ...extra,
    ]);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
    const node = { r, port, name: `repeater@${port}` };
    nodes.push(node);
    return node;
  }

  async function health(n: Node): Promise<{ status: string; cluster: { peers: unknown[]; degraded: boolean; connected: boolean; server: string; ownedSubscribers: number } }> {
    return JSON.parse((await httpGet(n.r.metricsPort, '/healthz')).body);
  }

  async function peersSee(ns: Node[], count: number): Promise<void> {
    for (const n of ns) await eventually(`${n.name} to see ${count} peers`, async () => ((await health(n)).cluster.peers.length === count ? true : undefined), 10_000);
  }

  async function subscribe(n: Node, rx: Receiver): Promise<void> {
    const from = n.r.d.log.length;
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), n.port);
    await n.r.d.log.waitFor('subscribed', { address: rx.address }, { from });
  }

  /** Waits until every repeater in `ns` knows who serves `rx` and exactly one of those that heard it does. */
  async function settled(ns: Node[], rx: Receiver): Promise<Node> {
    return eventually(`one server for ${rx.address}`, async () => {
      const serving: Node[] = [];
      for (const n of ns) {
        const subs = JSON.parse((await httpGet(n.r.metricsPort, '/subscribers')).body) as Array<{ address: string; served: boolean }>;
        if (subs.some((s) => s.address === rx.address && s.served)) serving.push(n);
      }
      return serving.length === 1 ? serving[0] : undefined;
    }, 10_000);
  }

  /**
   * Sends `marker` through `via` (the same repeaters and bus as the traffic,
   * whose order NATS keeps per publisher) and returns the keys `rx` got from
   * `from` on, before the marker: once it is in, nothing sent earlier is
   * still on its way.
   */
  async function until(rx: Receiver, from: number, marker: string, via: Node[]): Promise<string[]> {
    for (const n of via) await sender.send(set(marker), n.port);
    return eventually(`${marker} at ${rx.address}`, () => {
      const keys = rx.received.slice(from).map((d) => keyOf(untraced(d)));
      const at = keys.indexOf(marker);
      return at < 0 ? undefined : keys.slice(0, at);
    }, 10_000);
  }

  test('one fan-out: a datagram accepted by any repeater reaches every subscriber known to any repeater, once', async () => {
    const [a, b, c] = [await repeater(0), await repeater(1), await repeater(2)];
    await peersSee([a, b, c], 2);
    const sinks = [await scope.receiver(), await scope.receiver(), await scope.receiver()];
    for (const [i, n] of [a, b, c].entries()) await subscribe(n, sinks[i]!);
    for (const [i, n] of [a, b, c].entries()) await settled([n], sinks[i]!);
    // Each repeater must know what the others heard before the first datagram (their announces cross the bus).
    const N = 30;
    for (let i = 0; i < N; i++) await sender.send(set(`via-a-${i}`), a.port);
    for (let i = 0; i < N; i++) await sender.send(set(`via-c-${i}`), c.port);
    for (const rx of sinks) await rx.waitFor(2 * N, 10_000);
    for (const rx of sinks) {
      const got = (await until(rx, 0, `end-${rx.port}`, [a, c])).filter((k) => k.startsWith('via-'));
      assert.equal(got.length, 2 * N, `${rx.address} got ${got.length} datagrams for ${2 * N}`);
      assert.equal(new Set(got).size, 2 * N, `${rx.address} got a datagram twice`);
    }
  });

  test('a burst goes over the bus in fewer messages than datagrams, and the datagram counters count every datagram once', async () => {
    const [a, b] = [await repeater(0), await repeater(1)];
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(b, rx);
    await settled([b], rx);
    const busMessages = (m: Metrics) => m.value('udprepeater_cluster_messages_published_total', { kind: 'datagram' }) + m.value('udprepeater_cluster_messages_published_total', { kind: 'batch' });
    const [a0, b0] = [await a.r.metrics(), await b.r.metrics()];
    // A burst: A is stopped while the whole of it lands in its listener's
    // queue (on loopback a send has reached the queue when its callback runs),
    // so A reads it in one go and batches it however fast this machine is.
    // 200 small datagrams fit the default receive buffer; the kernel drop
    // counter below says if they did not. A is stopped for milliseconds, far
    // below the peer timeout.
    const N = 200;
    a.r.d.child.kill('SIGSTOP');
    try {
      await Promise.all(Array.from({ length: N }, (_, i) => sender.send(set(`burst-${i}`), a.port)));
    } finally {
      a.r.d.child.kill('SIGCONT');
    }
    await rx.waitFor(N, 10_000);
    const [a1, b1] = [await a.r.metrics(), await b.r.metrics()];
    const delta = (x: Metrics, y: Metrics, name: string) => y.value(name) - x.value(name);
    assert.equal(delta(a0, a1, 'udprepeater_listener_kernel_drops_total'), 0, 'the burst overflowed A\'s listener: the test needs a smaller one');
    const published = delta(a0, a1, 'udprepeater_cluster_datagrams_published_total');
    const messages = busMessages(a1) - busMessages(a0);
    console.log(JSON.stringify({ sent: N, datagramsPublished: published, busMessages: messages, datagramsReceivedByB: delta(b0, b1, 'udprepeater_cluster_datagrams_received_total') }));
    assert.equal(published, N, 'A published other than one datagram per datagram sent');
    assert.equal(delta(b0, b1, 'udprepeater_cluster_datagrams_received_total'), N, 'B took other than every datagram off the bus');
    assert.ok(messages >= 1 && messages < N, `${messages} bus messages for ${N} datagrams: the burst was not batched`);
    assert.equal(delta(a0, a1, 'udprepeater_cluster_publish_skipped_total'), 0);
    assert.equal(delta(b0, b1, 'udprepeater_cluster_messages_dropped_total'), 0);
    const got = rx.received.map((d) => keyOf(untraced(d))).filter((k) => k.startsWith('burst-'));
    assert.equal(new Set(got).size, N, `${rx.address} got ${new Set(got).size} distinct datagrams of ${N}`);
  });

  test('a repeater that joins later learns what the others heard: a static subscriber of both is served once', async () => {
    const rx = await scope.receiver();
    const a = await repeater(0, ['--to', `${rx.address},channel=ssl`]);
    // b joins after a holds the subscriber: a's answer to b's first heartbeat must not be lost.
    const b = await repeater(1, ['--to', `${rx.address},channel=ssl`]);
    await peersSee([a, b], 1);
    await settled([a, b], rx);
    const N = 20;
    for (let i = 0; i < N; i++) await sender.send(set(`late-${i}`), i % 2 === 0 ? a.port : b.port);
    await rx.waitFor(N, 10_000);
    // The marker through b: its bus messages keep their order, so it comes after b's datagrams.
    const got = (await until(rx, 0, 'late-end', [b])).filter((k) => k.startsWith('late-'));
    assert.deepEqual(got.sort(), Array.from({ length: N }, (_, i) => `late-${i}`).sort());
  });

  test('a node on two repeaters (node=R1;R2, subscribe2 to both) gets each update once, and so does everyone else', async () => {
    const [a, b, c] = [await repeater(0), await repeater(1), await repeater(2)];
    await peersSee([a, b, c], 2);
    const both = await scope.receiver();
    const third = await scope.receiver();
    await subscribe(a, both);
    await subscribe(b, both);
    await subscribe(c, third);
    await settled([a, b], both);
    const N = 50;
    for (let i = 0; i < N; i++) {
      // As uWSGI does with node=R1;R2: the same datagram to both.
      await sender.send(set(`k${i}`), a.port);
      await sender.send(set(`k${i}`), b.port);
    }
    await both.waitFor(N, 10_000);
    await third.waitFor(N, 10_000);
    const keys = (l: string[]) => l.filter((k) => /^k[0-9]+$/.test(k));
    const [g1, g2] = [keys(await until(both, 0, 'end-1', [a, b])), keys(await until(third, 0, 'end-2', [a, b]))];
    const dups = (await a.r.metrics()).value('udprepeater_cluster_duplicates_total') + (await b.r.metrics()).value('udprepeater_cluster_duplicates_total') + (await c.r.metrics()).value('udprepeater_cluster_duplicates_total');
    console.log(JSON.stringify({ updates: N, onBothRepeaters: g1.length, onTheThird: g2.length, duplicatesSuppressed: dups }));
    assert.deepEqual(g1, Array.from({ length: N }, (_, i) => `k${i}`), 'the node on two repeaters got an update twice or out of order');
    assert.deepEqual(g2, Array.from({ length: N }, (_, i) => `k${i}`));
    assert.ok(dups >= N, 'no duplicate was suppressed: the test did not send through two repeaters');
  });

  test('a repeater killed under steady traffic: another that heard its subscribers serves them within the bound, and repairs what they missed meanwhile', async () => {
    const [a, b, c] = [await repeater(0), await repeater(1), await repeater(2)];
    await peersSee([a, b, c], 2);
    // Its (empty) warm join over before the traffic: the one the survivor takes over is not owed a whole join.
    for (const n of [a, b]) await n.r.d.log.waitFor('cluster: live state fetch over; warm joins start', {}, { ms: 10_000 });
    const rx = await scope.receiver();
    await subscribe(a, rx);
    await subscribe(b, rx);
    const server = await settled([a, b], rx);
    const survivor = server === a ? b : a;
    // Steady traffic into the third repeater, which serves nobody.
    const RATE = 200;
    let sent = 0;
    const sentAt: number[] = [];
    const t0 = Date.now();
    const timer = setInterval(() => {
      const want = Math.floor(((Date.now() - t0) * RATE) / 1000);
      while (sent < want) {
        sentAt.push(Date.now());
        void sender.send(set(`s${sent++}`), c.port);
      }
    }, 5);
    await rx.waitFor(100, 10_000);
    const killedAt = sent;
    const killTime = Date.now();
    const from = survivor.r.d.log.length;
    server.r.d.child.kill('SIGKILL');
    await server.r.d.exited;
    nodes.splice(nodes.indexOf(server), 1);
    await survivor.r.d.log.waitFor('cluster peer lost: serving the subscribers it served that we heard', {}, { ms: 10_000 });
    const resumedAt = sent;
    await eventually('traffic to reach the subscriber again', () => (rx.received.some((d) => keyOf(untraced(d)) === `s${resumedAt + 20}`) ? true : undefined), 10_000);
    clearInterval(timer);
    const end = sent;
    await eventually('the last datagram', () => (rx.received.some((d) => keyOf(untraced(d)) === `s${end - 1}`) ? true : undefined), 10_000);
    // The survivor sends it what changed since the dead one was last heard (src/cluster/takeover.ts).
    const repair = await survivor.r.d.log.waitFor('warm join completed', { address: rx.address, kind: 'repair' }, { from, ms: 10_000 });
    const got = (await until(rx, 0, 'end', [c])).filter((k) => k.startsWith('s'));
    const seen = new Map<string, number>();
    for (const k of got) seen.set(k, (seen.get(k) ?? 0) + 1);
    const lost = end - seen.size;
    const duplicated = [...seen.values()].filter((v) => v > 1).length;
    // Sent again: what the dead one delivered after the repair's start, its last heartbeat (at most a heartbeat
    // period before the kill, and 200 ms for a late timer) less the margin and a mark's width.
    const reach = REPAIR_MARGIN_MS + (PEER_TIMEOUT_S * 1000) / 3 + MARK_MS + 200;
    const bound = sentAt.filter((t) => t >= killTime - reach && t <= killTime).length;
    console.log(JSON.stringify({ rate: RATE, peerTimeoutS: PEER_TIMEOUT_S, sent: end, killedAt, resumedAt, lost, duplicated, boundOnDuplicates: bound, repaired: repair['sent'], failovers: (await survivor.r.metrics()).value('udprepeater_cluster_failovers_total') }));
    assert.equal(lost, 0, `${lost} datagrams lost during failover`);
    assert.ok(duplicated <= bound, `${duplicated} datagrams delivered twice, more than ${bound}`);
    assert.ok((await survivor.r.metrics()).value('udprepeater_cluster_failovers_total') >= 1);
  });

  test('a NATS server killed: its repeaters move to another server and the fan-out goes on', async () => {
    const [a, b] = [await repeater(0), await repeater(1)];
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(b, rx);
    await settled([b], rx);
    // The server `a` is connected to (the client picks one of the list at random).
    const url = `nats://${(await health(a)).cluster.server}`;
    const victim = nats.servers.find((s) => s.url === url)!;
    // b may have picked the same server: both then move.
    const moving = [a];
    if (`nats://${(await health(b)).cluster.server}` === url) moving.push(b);
    await victim.kill();
    for (const n of moving) await n.r.d.log.waitFor('cluster bus connected', {}, { count: 2, ms: 10_000 });
    // Core NATS is at-most-once: until the new server has learned b's interest over
    // its routes, a publish is dropped. Probe until one gets through, then count exactly.
    let probes = 0;
    await eventually('the fan-out to resume through another server', async () => {
      await sender.send(set(`probe-${probes++}`), a.port);
      return rx.received.some((d) => keyOf(untraced(d)).startsWith('probe-')) ? true : undefined;
    }, 10_000);
    await sender.send(set('after-server-loss'), a.port);
    assert.deepEqual((await until(rx, 0, 'end', [a])).slice(-1), ['after-server-loss']);
    assert.ok((await a.r.metrics()).value('udprepeater_cluster_disconnects_total') >= 1);
    await victim.start();
    await nats.routed();
  });

  test('the whole bus down: each repeater serves its own listeners (degraded), then rejoins when the bus is back', async () => {
    const [a, b] = [await repeater(0), await repeater(1)];
    await peersSee([a, b], 1);
    const rx = await scope.receiver();
    await subscribe(a, rx);
    await subscribe(b, rx);
    const server = await settled([a, b], rx);
    const other = server === a ? b : a;
    for (const s of nats.servers) await s.kill();
    await eventually('both repeaters degraded', async () => ((await health(a)).status === 'degraded' && (await health(b)).status === 'degraded' ? true : undefined), 10_000);
    // The one that did not serve the subscriber serves it now, from its own listener.
    await eventually(`${other.name} to serve it alone`, async () => {
      const subs = JSON.parse((await httpGet(other.r.metricsPort, '/subscribers')).body) as Array<{ address: string; served: boolean }>;
      return subs.some((s) => s.address === rx.address && s.served) ? true : undefined;
    }, 10_000);
    await sender.send(set('no-bus'), other.port);
    assert.deepEqual((await until(rx, 0, 'end-1', [other])).slice(-1), ['no-bus']);
    assert.ok((await other.r.metrics()).value('udprepeater_cluster_publish_skipped_total') >= 1);
    for (const s of nats.servers) await s.start();
    await nats.routed();
    await peersSee([a, b], 1);
    await settled([a, b], rx);
    const before = rx.received.length;
    await sender.send(set('bus-back'), other.port);
    const got = await until(rx, before, 'end-2', [other]);
    assert.deepEqual(got, ['bus-back'], 'after the bus came back the subscriber got the datagram other than once');
  });
});

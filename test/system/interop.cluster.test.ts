// Cluster mode with real uWSGI nodes on a real three-server NATS cluster:
// nodes on different repeaters converge (sets and deletes), plain and behind
// agents (secure mode), and a capture of the bus holds no cache key or value
// in clear while a capture of a node's own loopback leg (the control) does.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { agent, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, Receiver, Sender } from '../helpers/net.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { REQUIRED, requirement } from '../helpers/requirement.js';
import { Capture, tcpdumpAvailability } from '../helpers/tcpdump.js';
import { INSTALL_HINT, killAllUwsgi, sessionBytes, sessionId, untilAbsent, untilValue, UwsgiNode, uwsgiAvailability } from '../helpers/uwsgi.js';

const uwsgi = requirement('real uWSGI interop', 'the cluster real-uWSGI suite (test/system/interop.cluster.test.ts)', 'Cluster mode with real uWSGI nodes is NOT being tested.', uwsgiAvailability(), INSTALL_HINT);
const nats = requirement('nats-server', 'the cluster real-uWSGI suite (test/system/interop.cluster.test.ts)', 'Cluster mode with real uWSGI nodes is NOT being tested.', natsAvailability(), NATS_HINT, !uwsgi.skip);
const dump = tcpdumpAvailability();
const skip = uwsgi.skip || nats.skip;
const HOOK = { timeout: 60_000 };

/** Any 16 bytes of `secret` in `haystack`. */
function leaks(haystack: Buffer, secret: Buffer): boolean {
  for (let i = 0; i + 16 <= secret.length; i += 8) if (haystack.includes(secret.subarray(i, i + 16))) return true;
  return false;
}

describe('cluster mode with real uWSGI nodes', { skip, timeout: 120_000 }, () => {
  let bus: NatsCluster;
  let key: string;
  let clusterKey: string;
  const repeaters: Running[] = [];
  const ports: Array<{ plain: number; sealed: number }> = [];
  const agents: Running[] = [];
  let a: UwsgiNode, b: UwsgiNode, c: UwsgiNode, d: UwsgiNode, e: UwsgiNode;
  let sink: Receiver;
  const announcer = Sender.open();
  let cLocal: number;

  before(async () => {
    uwsgi.require();
    nats.require();
    bus = await NatsCluster.start(3, 'urint');
    key = await keygen();
    clusterKey = await keygen();
    for (let i = 0; i < 2; i++) {
      const [plain, sealed] = [await freePort(), await freePort()];
      const r = await serve([
        '--listen', `127.0.0.1:${plain},channel=ssl,key=ssl`,
        '--listen-sealed', `127.0.0.1:${sealed},channel=ssl,key=ssl`,
        '--key-file', key,
        ...bus.urls.flatMap((u) => ['--cluster', u]),
        '--cluster-name', 'int',
        '--cluster-key-file', clusterKey,
        '--cluster-peer-timeout', '1.5',
        '--tolerance', '5',
      ]);
      await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
      repeaters.push(r);
      ports.push({ plain, sealed });
    }
    await repeaters[0]!.d.log.waitFor('cluster peer joined', {}, { ms: 10_000 });
    // Plain nodes: a on the first repeater, b on the second.
    a = await UwsgiNode.start({ repeater: `127.0.0.1:${ports[0]!.plain}`, name: 'a' });
    b = await UwsgiNode.start({ repeater: `127.0.0.1:${ports[1]!.plain}`, name: 'b' });
    // e lists both repeaters (node=R1;R2, a subscribe2 line for each): each update enters the cluster twice.
    const both = ports.map((p) => `127.0.0.1:${p.plain}`);
    e = await UwsgiNode.start({ cacheNode: both.join(';'), subscribeTo: both, name: 'e' });
    // A sink announced to both repeaters, as a node listing both would be: it counts what it gets.
    sink = await Receiver.open();
    for (const p of ports) await announcer.send(encodeSubscription({ key: 'ssl', address: sink.address }), p.plain);
    // Sealed nodes: c behind an agent of the first repeater, d behind one of the second.
    const cAgentPort = await freePort();
    const dAgentPort = await freePort();
    cLocal = cAgentPort;
    c = await UwsgiNode.start({ cacheNode: `127.0.0.1:${cAgentPort}`, subscribeTo: [], name: 'c' });
    d = await UwsgiNode.start({ cacheNode: `127.0.0.1:${dAgentPort}`, subscribeTo: [], name: 'd' });
    for (const [node, local, i] of [[c, cAgentPort, 0], [d, dAgentPort, 1]] as const) {
      agents.push(
        await agent(['--repeater', `127.0.0.1:${ports[i]!.sealed}`, '--key-file', key, '--local', `127.0.0.1:${local}`, '--deliver', node.udpAddress, '--channel-key', 'ssl', '--subscribe-interval', '1']),
      );
    }
    for (const r of repeaters) {
      await r.d.log.waitFor('subscribed', { form: 'plain' }, { ms: 10_000 });
      await r.d.log.waitFor('subscribed', { form: 'sealed' }, { ms: 10_000 });
    }
  }, HOOK);

  after(async () => {
    sink?.close();
    announcer.close();
    for (const x of [a, b, c, d, e]) await x?.stop();
    killAllUwsgi();
    for (const x of agents) await x.stop();
    for (const r of repeaters) await r.stop();
    await bus?.close();
  }, HOOK);

  test('nodes on different repeaters converge: a set on one is on all, a delete on another is gone from all', async () => {
    const k = sessionId();
    const v = sessionBytes(1500);
    await a.set(k, v, 300);
    await Promise.all([b, c, d].map((n) => untilValue(n, k, v)));
    await b.del(k);
    await Promise.all([a, c, d].map((n) => untilAbsent(n, k)));
  });

  test('a node on two repeaters: each of its updates reaches a sink on both exactly once', async () => {
    const n = 20;
    const prefix = `twice-${Date.now()}-`;
    const keys = Array.from({ length: n }, (_, i) => `${prefix}${i}`);
    for (const k of keys) await e.set(k, Buffer.from(`value of ${k}`), 300);
    await Promise.all(keys.map((k) => untilValue(a, k, Buffer.from(`value of ${k}`))));
    // A sentinel after them, through the same two paths: once it is in, any duplicate would be too.
    const sentinel = `${prefix}sentinel`;
    await e.set(sentinel, Buffer.from('end'), 300);
    const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');
    await eventually('the sentinel at the sink', () => (sink.received.some((d) => d[3] === 10 && keyOf(d) === sentinel) ? true : undefined));
    const got = sink.received.filter((d) => d[3] === 10 && keyOf(d).startsWith(prefix) && keyOf(d) !== sentinel).map(keyOf);
    assert.deepEqual(got.sort(), [...keys].sort(), 'each update exactly once');
    assert.equal(sink.received.filter((d) => d[3] === 10 && keyOf(d) === sentinel).length, 1);
  });

  test('secure mode across repeaters: a node behind an agent on one repeater reaches one behind an agent on the other, and the bus carries no key or value in clear', { skip: dump.ok ? false : REQUIRED ? false : dump.reason }, async () => {
    if (!dump.ok) throw new Error(`tcpdump is required under CI: ${dump.reason}`);
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-cluster-cap-'));
    const natsPorts = bus.servers.map((s) => s.port);
    const busCap = await Capture.start(join(dir, 'bus.pcap'), `tcp and (${natsPorts.map((p) => `port ${p}`).join(' or ')})`);
    const plainCap = await Capture.start(join(dir, 'plain.pcap'), `udp and port ${cLocal}`);
    const k = sessionId();
    const v = sessionBytes(2000);
    await c.set(k, v, 300);
    await Promise.all([a, b, d].map((n) => untilValue(n, k, v)));
    // A sentinel through the same path marks the end of what must be in the captures.
    const sentinel = sessionId();
    await c.set(sentinel, Buffer.from('sentinel-value-bytes-sentinel-value-bytes'), 300);
    await untilValue(d, sentinel, Buffer.from('sentinel-value-bytes-sentinel-value-bytes'));
    await plainCap.contains(sentinel);
    await Promise.all([busCap.stop(), plainCap.stop()]);
    const busBytes = readFileSync(busCap.file);
    const plainBytes = readFileSync(plainCap.file);
    // NATS framing is clear text: the capture must hold the data subject's messages, one of them large
    // enough to carry the value sealed (heartbeats alone would make a capture of any size).
    const dataSizes = [...busBytes.toString('latin1').matchAll(/(?:PUB|MSG) int\.dg\.ssl [^\r\n]*?(\d+)\r\n/g)].map((m) => Number(m[1]));
    console.log(JSON.stringify({ busCaptureBytes: busBytes.length, plainCaptureBytes: plainBytes.length, dataMessageSizes: dataSizes }));
    assert.ok(dataSizes.some((n) => n > v.length), `the bus capture holds no data message that could carry the value (sizes ${JSON.stringify(dataSizes)}): it proves nothing`);
    assert.ok(leaks(plainBytes, v) && plainBytes.includes(k), 'the control failed: the plain leg should hold the value in clear');
    assert.ok(!leaks(busBytes, v), 'a value crossed the bus in clear');
    assert.ok(!busBytes.includes(k), 'a key crossed the bus in clear');
  });
});

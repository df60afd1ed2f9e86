// Failover that repairs what it missed (README.md, "Cluster mode": the
// failure table), with real uWSGI nodes on a real nats-server and three real
// repeaters, laid out as the README advises: every node lists all three
// (cache2 node=R1;R2;R3, a subscribe2 line for each).
//
// - The repeater that serves a node is SIGKILLed while another node writes:
//   until the survivors take it for dead (the peer timeout) nobody sends that
//   node anything. The one that takes it over sends it the live-state entries
//   changed since the dead one was last heard, so it ends with every key.
// - A warm join cut off by the death of its repeater is finished by the new
//   owner (it never heard that join completed); a join whose completion was
//   announced is not sent again: the next owner only repairs.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { REPAIR_MARGIN_MS } from '../../src/cluster/takeover.js';
import { MARK_MS } from '../../src/repeater/warm-repair.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, Sender } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability } from '../helpers/uwsgi.js';

const uwsgi = requirement('real uWSGI interop', 'the cluster failover suite (test/system/cluster.failover.test.ts)', 'Cluster failover with real uWSGI nodes is NOT being tested.', uwsgiAvailability(), INSTALL_HINT);
const natsReq = requirement('nats-server', 'the cluster failover suite (test/system/cluster.failover.test.ts)', 'Cluster failover with real uWSGI nodes is NOT being tested.', natsAvailability(), NATS_HINT, !uwsgi.skip);
const skip = uwsgi.skip || natsReq.skip;
const PEER_TIMEOUT_S = 1.5;
const HOOK = { timeout: 60_000 };

interface Rep {
  readonly r: Running;
  readonly port: number;
  readonly addr: string;
}

interface SubscriberView {
  address: string;
  served: boolean;
  warmJoin: { sent: number } | null;
}

describe('cluster failover with real uWSGI nodes: the new owner repairs what the dead one missed', { skip, timeout: 180_000 }, () => {
  let nats: NatsCluster;
  let key: string;
  const reps: Rep[] = [];
  const nodes: UwsgiNode[] = [];
  const sender = Sender.open();

  before(async () => {
    uwsgi.require();
    natsReq.require();
    nats = await NatsCluster.start(1, 'urfail');
    key = await keygen();
  }, HOOK);
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.stop();
    for (const r of reps.splice(0)) await r.r.stop();
  });
  after(async () => {
    killAllUwsgi();
    sender.close();
    await nats?.close();
  }, HOOK);

  async function repeaters(name: string, extra: string[] = []): Promise<Rep[]> {
    const out: Rep[] = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const r = await serve([
        '--listen', `127.0.0.1:${port},channel=ssl,key=ssl`,
        '--cluster', nats.urls[0]!,
        '--cluster-name', name,
        '--cluster-peer-timeout', String(PEER_TIMEOUT_S),
        '--cluster-key-file', key,
        '--log-level', 'info',
        ...extra,
      ]);
      await r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
      const rep = { r, port, addr: `127.0.0.1:${port}` };
      reps.push(rep);
      out.push(rep);
    }
    for (const rep of out) {
      await eventually('every repeater to see the other two', async () => {
        const h = JSON.parse((await httpGet(rep.r.metricsPort, '/healthz')).body) as { cluster: { peers: unknown[] } };
        return h.cluster.peers.length === 2 ? true : undefined;
      }, 10_000);
    }
    return out;
  }

  /** A uWSGI node listing every repeater of `rs`, as the README advises. */
  async function node(rs: Rep[], name: string, items = 1000): Promise<UwsgiNode> {
    const all = rs.map((r) => r.addr);
    const n = await UwsgiNode.start({ cacheNode: all.join(';'), subscribeTo: all, name, items, blocksize: 256 });
    nodes.push(n);
    return n;
  }

  const view = async (r: Rep): Promise<SubscriberView[]> => JSON.parse((await httpGet(r.r.metricsPort, '/subscribers')).body) as SubscriberView[];

  /** The repeater of `rs` that serves `n`, once all of them heard it and exactly one serves it. */
  async function servedBy(rs: Rep[], n: UwsgiNode): Promise<Rep> {
    return eventually(`one repeater to serve ${n.name}`, async () => {
      const serving: Rep[] = [];
      for (const r of rs) {
        const e = (await view(r)).find((s) => s.address === n.udpAddress);
        if (e === undefined) return undefined;
        if (e.served) serving.push(r);
      }
      return serving.length === 1 ? serving[0] : undefined;
    }, 10_000);
  }

  async function kill(r: Rep): Promise<void> {
    r.r.d.child.kill('SIGKILL');
    await r.r.d.exited;
    reps.splice(reps.indexOf(r), 1);
  }

  const warmEvents = async (r: Rep, event: string) => (await r.r.metrics()).value('udprepeater_warm_joins_total', { channel: 'ssl', event });

  test('the repeater serving a node is SIGKILLed while another node writes 10 sets/s for 20 s: both other nodes end with all 200 keys at their last values', async () => {
    const rs = await repeaters('fo');
    const [writer, n2, n3] = [await node(rs, 'n1'), await node(rs, 'n2'), await node(rs, 'n3')];
    for (const n of [writer, n2, n3]) await servedBy(rs, n);
    const victim = await servedBy(rs, n3);
    const survivors = rs.filter((r) => r !== victim);
    const want = new Map<string, string>();
    const N = 200;
    const t0 = Date.now();
    let killedAt = -1;
    for (let i = 0; i < N; i++) {
      const k = `k${i}`;
      const v = `value of ${k} ${Date.now()} ${'x'.repeat(64)}`;
      await writer.set(k, v, 0);
      want.set(k, v);
      if (i === 60) {
        killedAt = i;
        await kill(victim);
      }
      const next = t0 + (i + 1) * 100;
      if (next > Date.now()) await new Promise((r) => setTimeout(r, next - Date.now()));
    }
    const hex = (k: string) => Buffer.from(k).toString('hex');
    const missing = async (n: UwsgiNode) => {
      const d = await n.dump();
      return [...want].filter(([k, v]) => d.get(hex(k))?.toString() !== v).map(([k]) => k);
    };
    const results: Record<string, number> = {};
    for (const n of [n2, n3]) {
      try {
        await eventually(`${n.name} to hold all ${want.size} keys at their last values`, async () => ((await missing(n)).length === 0 ? true : undefined), 15_000);
        results[n.name] = 0;
      } catch (err) {
        results[n.name] = (await missing(n)).length;
        console.log(JSON.stringify({ node: n.name, address: n.udpAddress, missing: await missing(n) }));
        for (const r of survivors) console.log(JSON.stringify(r.r.d.log.records.filter((l) => /warm|cluster|subscri|moved/.test(String(l.msg)) && l.msg !== 'subscribed')));
        throw err;
      }
    }
    let repairs = 0;
    let warmDatagrams = 0;
    for (const r of survivors) {
      repairs += await warmEvents(r, 'repair');
      warmDatagrams += (await r.r.metrics()).value('udprepeater_warm_datagrams_total', { channel: 'ssl' });
    }
    console.log(JSON.stringify({ sets: N, keys: want.size, killedAtSet: killedAt, peerTimeoutS: PEER_TIMEOUT_S, missingAtEnd: results, repairs, warmDatagramsSentBySurvivors: warmDatagrams }));
    assert.ok(repairs >= 1, 'the new owner of n3 started no repair');
    // Bounded by what changed, not the state: per repaired node, 10 sets/s over the loss window (the peer timeout and a
    // heartbeat period), the margin, a mark's width and 1 s for late timers.
    const perRepair = Math.ceil(10 * ((PEER_TIMEOUT_S * 4) / 3 + REPAIR_MARGIN_MS / 1000 + MARK_MS / 1000 + 1));
    assert.ok(warmDatagrams <= repairs * perRepair, `${repairs} repairs sent ${warmDatagrams} datagrams: more than what changed since the dead repeater was last heard`);
  });

  test('a 20,000-key warm join cut off by SIGKILL of its repeater completes through the new owner; the next owner only repairs', async () => {
    // Slow enough that the join is still running when its repeater dies (20,000 keys at 2,000/s: 10 s).
    const rs = await repeaters('fw', ['--warm-rate', '2000']);
    const KEYS = 20_000;
    const value = (i: number) => `session ${i} ${'s'.repeat(100)}`;
    const load = Sender.open();
    try {
      for (let i = 0; i < KEYS; i++) {
        await load.send(encodeCacheSet(Buffer.from(`w${i}`), Buffer.from(value(i)), 0), rs[i % 3]!.port);
        if (i % 500 === 499) await new Promise((r) => setImmediate(r));
      }
    } finally {
      load.close();
    }
    for (const r of rs) {
      await eventually(`${r.addr} to hold ${KEYS} live entries`, async () => ((await r.r.metrics()).value('udprepeater_live_state_entries', { channel: 'ssl' }) === KEYS ? true : undefined), 20_000);
    }
    const n = await node(rs, 'joiner', KEYS + 1000);
    const owner = await servedBy(rs, n);
    // Cut it off a few thousand keys in.
    await eventually('the warm join to be a few thousand keys in', async () => {
      const e = (await view(owner)).find((s) => s.address === n.udpAddress);
      return e?.warmJoin !== null && e?.warmJoin !== undefined && e.warmJoin.sent >= 3000 ? true : undefined;
    }, 15_000);
    await kill(owner);
    const cutAt = (await n.dump()).size;
    assert.ok(cutAt < KEYS, `the join was not cut (${cutAt} keys already there)`);
    const second = await servedBy(rs.filter((r) => r !== owner), n);
    const done = await second.r.d.log.waitFor('warm join completed', { address: n.udpAddress }, { ms: 30_000 });
    const hasAll = async () => {
      const d = await n.dump();
      for (let i = 0; i < KEYS; i++) if (d.get(Buffer.from(`w${i}`).toString('hex'))?.toString() !== value(i)) return false;
      return true;
    };
    await eventually(`${n.name} to hold all ${KEYS} keys`, async () => ((await hasAll()) ? true : undefined), 15_000);
    assert.equal(await warmEvents(second, 'takeover'), 1, 'the join was finished as a takeover');
    console.log(JSON.stringify({ keys: KEYS, atTheCut: cutAt, finishedBy: second.addr, sentByTheNewOwner: done['sent'] }));

    // That join completed and said so on the bus: when its repeater dies too, the last one only
    // repairs: the 20 keys set (through it) while nobody served the node, not the whole state again.
    const third = rs.find((r) => r !== owner && r !== second)!;
    const before = (await third.r.metrics()).value('udprepeater_warm_datagrams_total', { channel: 'ssl' });
    const from = third.r.d.log.length;
    await kill(second);
    const late = Sender.open();
    try {
      for (let i = 0; i < 20; i++) await late.send(encodeCacheSet(Buffer.from(`late${i}`), Buffer.from(value(i)), 0), third.port);
    } finally {
      late.close();
    }
    await third.r.d.log.waitFor('warm repair started', { address: n.udpAddress }, { from, ms: 10_000 });
    await third.r.d.log.waitFor('warm join completed', { address: n.udpAddress, kind: 'repair' }, { from, ms: 10_000 });
    for (let i = 0; i < 20; i++) assert.equal((await n.get(`late${i}`))?.toString(), value(i), `late${i} was not repaired`);
    const sent = (await third.r.metrics()).value('udprepeater_warm_datagrams_total', { channel: 'ssl' }) - before;
    console.log(JSON.stringify({ repairedByTheLastOwner: sent }));
    assert.equal(await warmEvents(third, 'takeover'), 0, 'a join announced complete was started again');
    assert.ok(sent >= 20 && sent < 100, `the last owner sent ${sent} datagrams: a full join again, not a repair`);
  });
});

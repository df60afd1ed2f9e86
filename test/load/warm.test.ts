// Warm joins at size: 20,000 sessions into a real uWSGI node at the default
// rate while live updates (sets, overwrites, deletes) keep flowing, 32
// subscribers on 32 addresses joining at once and sharing the rates, and the
// amplification attack of issue 15 against the real CLI: a 24 MB live state,
// a spoofer that subscribes four ports of one address and unsubscribes and
// subscribes them again every second for 10 s. Counts, not times: every
// receiver must end with exactly the live state, each entry delivered as the
// rules say, and the attacked address with one live state at most.
// UDPREPEATER_CLI=/path/to/cli.js runs the attack against another build.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { encodeCacheDelete, encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { Daemon } from '../helpers/daemon.js';
import { eventually, freePort, Receiver, Sender } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability } from '../helpers/uwsgi.js';

const { skip, require: requireUwsgi } = requirement(
  'real uWSGI interop',
  'the warm-join load suite (test/load/warm.test.ts)',
  'A warm join of 20,000 sessions into a real uWSGI node is NOT being tested.',
  uwsgiAvailability(),
  INSTALL_HINT,
);

const sender = Sender.open();
const cleanup: Array<() => unknown> = [];
after(async () => {
  for (const c of cleanup.reverse()) await c();
  killAllUwsgi();
  sender.close();
});

async function metric(port: number, name: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3000) });
  let n = 0;
  for (const m of (await res.text()).matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, 'gm'))) n += Number(m[2]);
  return n;
}

/** Sends `msgs` in batches, waiting after each until the repeater accepted them, so none is lost on the way in. */
async function feed(port: number, metricsPort: number, msgs: Buffer[], batch = 500): Promise<void> {
  const base = await metric(metricsPort, 'udprepeater_datagrams_accepted_total');
  for (let i = 0; i < msgs.length; i += batch) {
    for (const m of msgs.slice(i, i + batch)) await sender.send(m, port);
    const want = base + Math.min(i + batch, msgs.length);
    await eventually(`${want} datagrams accepted`, async () => ((await metric(metricsPort, 'udprepeater_datagrams_accepted_total')) >= want ? true : undefined), 10_000);
  }
}

describe('warm join at size', () => {
  test('20,000 sessions into a real uWSGI node at the default rate, with live sets and deletes during the join: it ends with exactly the live state', { skip, timeout: 180_000 }, async (t) => {
    requireUwsgi();
    const port = await freePort();
    const rep = await Daemon.serve(['--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', '--log-level', 'info']);
    cleanup.push(() => rep.stop());
    const metricsPort = await rep.metricsPort();
    const N = 20_000;
    const expires = Math.floor(Date.now() / 1000) + 3600;
    const live = new Map<string, Buffer>();
    const keys = Array.from({ length: N }, () => randomBytes(32));
    const msgs = keys.map((k) => {
      const v = randomBytes(300);
      live.set(k.toString('hex'), v);
      return encodeCacheSet(k, v, expires);
    });
    await feed(port, metricsPort, msgs);
    assert.equal(await metric(metricsPort, 'udprepeater_live_state_entries'), N);

    const node = await UwsgiNode.start({ repeater: `127.0.0.1:${port}`, name: 'big-joiner', items: N + 2000, blocksize: 512, startUnsubscribed: true, ms: 30_000 });
    cleanup.push(() => node.kill());
    const buf = node.raiseReceiveBuffer(16 << 20);
    t.diagnostic(`the node's receive buffer: ${buf ?? 'the default (could not be raised)'}`);
    node.enableSubscriptions();
    await rep.log.waitFor('warm join started', { address: node.udpAddress }, { ms: 10_000 });

    // Live traffic during the join: overwrites of the oldest and newest sessions, deletes, new sessions.
    const liveMsgs: Buffer[] = [];
    for (let i = 0; i < 1000; i++) {
      const k = keys[i % 2 === 0 ? i : N - i]!;
      const v = randomBytes(200);
      live.set(k.toString('hex'), v);
      liveMsgs.push(encodeCacheSet(k, v, expires));
    }
    for (let i = 1000; i < 1500; i++) {
      live.delete(keys[i]!.toString('hex'));
      liveMsgs.push(encodeCacheDelete(keys[i]!, false));
    }
    for (let i = 0; i < 500; i++) {
      const k = randomBytes(32);
      const v = randomBytes(100);
      live.set(k.toString('hex'), v);
      liveMsgs.push(encodeCacheSet(k, v, expires));
    }
    await feed(port, metricsPort, liveMsgs, 100);
    const done = await rep.log.waitFor('warm join completed', { address: node.udpAddress }, { ms: 60_000 });
    t.diagnostic(`warm join: ${JSON.stringify(done)}`);
    assert.equal(await metric(metricsPort, 'udprepeater_live_state_entries'), live.size);

    let last = '';
    await eventually(
      'the node to hold exactly the live state',
      async () => {
        const got = await node.dump();
        const missing = [...live.keys()].filter((k) => !got.has(k)).length;
        const wrong = [...live].filter(([k, v]) => got.has(k) && !got.get(k)!.equals(v)).length;
        const extra = [...got.keys()].filter((k) => !live.has(k)).length;
        last = `missing ${missing}, wrong ${wrong}, extra ${extra}`;
        return missing + wrong + extra === 0 ? true : undefined;
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${last}`);
    });
  });

  test('32 subscribers on 32 addresses joining at once share the rates: each ends with exactly the live state, each entry sent to each at most once', { timeout: 120_000 }, async () => {
    const port = await freePort();
    const rep = await Daemon.serve(['--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', '--log-level', 'info', '--subscribe-burst', '100']);
    cleanup.push(() => rep.stop());
    const metricsPort = await rep.metricsPort();
    const N = 2000;
    const state = new Map<string, string>();
    const msgs = Array.from({ length: N }, (_, i) => {
      state.set(`k${i}`, 'v0');
      return encodeCacheSet(Buffer.from(`k${i}`), Buffer.from('v0'), 0);
    });
    await feed(port, metricsPort, msgs);
    // One address each (a destination is an IP: ports of one address share one live state), each announcing from its own.
    const hosts = Array.from({ length: 32 }, (_, i) => `127.0.1.${i + 1}`);
    const rxs = await Promise.all(hosts.map((h) => Receiver.open(h)));
    const froms = await Promise.all(hosts.map((h) => Sender.bound(h)));
    cleanup.push(() => rxs.forEach((r) => r.close()));
    cleanup.push(() => froms.forEach((f) => f.close()));
    for (const [i, rx] of rxs.entries()) await froms[i]!.send(encodeSubscription({ key: 'ssl', address: rx.address }), port);
    await rep.log.waitFor('warm join started', {}, { count: 32, ms: 10_000 });
    // Live updates while the joins run: every receiver gets them on the live path.
    const updates: Buffer[] = [];
    for (let i = 0; i < N; i += 10) {
      state.set(`k${i}`, 'v1');
      updates.push(encodeCacheSet(Buffer.from(`k${i}`), Buffer.from('v1'), 0));
    }
    await feed(port, metricsPort, updates, 50);
    await rep.log.waitFor('warm join completed', {}, { count: 32, ms: 60_000 });
    const completed = rep.log.matching('warm join completed');
    for (const c of completed) assert.equal(Number(c['sent']) + Number(c['skipped']), N + 0, `${c['address']}: every entry sent or skipped once (${JSON.stringify(c)})`);
    for (const rx of rxs) {
      const got = await rx.waitFor(Number(completed.find((c) => c['address'] === rx.address)!['sent']) + updates.length, 20_000);
      const cache = new Map<string, string>();
      const seen = new Map<string, number>();
      for (const d of got) {
        const klen = d.readUInt16LE(4);
        const k = d.toString('latin1', 6, 6 + klen);
        cache.set(k, d.toString('latin1', 8 + klen, 8 + klen + d.readUInt16LE(6 + klen)));
        seen.set(k, (seen.get(k) ?? 0) + 1);
      }
      assert.deepEqual(cache, state, `${rx.address} holds the live state`);
      // A key set again during the join came once on the live path and at most once from the join (before its update).
      assert.ok([...seen.values()].every((n) => n <= 2));
    }
    assert.equal(await metric(metricsPort, 'udprepeater_warm_datagrams_total'), completed.reduce((n, c) => n + Number(c['sent']), 0));
  });

  test('the amplification attack of issue 15: 4 ports of one address unsubscribed and subscribed every second for 10 s get one 24 MB live state at most; an address that subscribes afterwards gets all of it', { timeout: 120_000 }, async (t) => {
    const port = await freePort();
    const rep = await Daemon.serve(['--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', '--log-level', 'info', '--subscribe-burst', '100']);
    cleanup.push(() => rep.stop());
    const metricsPort = await rep.metricsPort();
    // 400 sets of 60 KB, which any allowed source may send.
    const N = 400;
    const sets = Array.from({ length: N }, (_, i) => encodeCacheSet(Buffer.from(`big${String(i).padStart(3, '0')}`), randomBytes(60_000), 0));
    await feed(port, metricsPort, sets, 20);
    assert.equal(await metric(metricsPort, 'udprepeater_live_state_entries'), N);
    // On the wire each carries the 26-byte trace the repeater stamps.
    const stateBytes = sets.reduce((n, m) => n + m.length + 26, 0);

    // The victim: four ports of 127.0.0.5, counting what arrives (bytes only: a broken build sends gigabytes).
    const victimIp = '127.0.0.5';
    const victims = await Promise.all([0, 1, 2, 3].map(() => Receiver.open(victimIp)));
    cleanup.push(() => victims.forEach((v) => v.close()));
    let arrived = 0;
    let arrivedDatagrams = 0;
    for (const v of victims) {
      v.socket.setRecvBufferSize(4 << 20);
      v.socket.removeAllListeners('message');
      v.socket.on('message', (m: Buffer) => {
        arrived += m.length;
        arrivedDatagrams++;
      });
    }
    // The spoofer sends with the victim's address as source (on loopback: bound to it).
    const spoofer = await Sender.bound(victimIp);
    cleanup.push(() => spoofer.close());
    let packets = 0;
    let packetBytes = 0;
    const announce = async (address: string, unsubscribe = false) => {
      const m = encodeSubscription({ key: 'ssl', address, unsubscribe });
      packets++;
      packetBytes += m.length;
      await spoofer.send(m, port);
    };
    const warmBefore = await metric(metricsPort, 'udprepeater_warm_bytes_total');
    const t0 = Date.now();
    for (const v of victims) await announce(v.address);
    for (let second = 1; second <= 10; second++) {
      // Paced by the clock on purpose: the attack is "every second".
      await new Promise((r) => setTimeout(r, t0 + second * 1000 - Date.now()));
      for (const v of victims) await announce(v.address, true);
      for (const v of victims) await announce(v.address);
    }
    await eventually('the joins to finish', async () => ((await metric(metricsPort, 'udprepeater_warm_joins_active')) === 0 ? true : undefined), 60_000);
    const sent = (await metric(metricsPort, 'udprepeater_warm_bytes_total')) - warmBefore;
    const figures = {
      stateBytes,
      attackPackets: packets,
      attackBytes: packetBytes,
      sentToVictimAddress: sent,
      arrivedAtVictimAddress: arrived,
      arrivedDatagrams,
      bytesPerAttackPacket: Math.round(sent / packets),
      amplification: Math.round(sent / packetBytes),
      liveStates: Number((sent / stateBytes).toFixed(3)),
    };
    t.diagnostic(JSON.stringify(figures));
    console.log(JSON.stringify(figures));
    assert.ok(sent <= stateBytes + (1 << 20), `${sent} bytes sent toward ${victimIp} for ${packets} spoofed packets: more than one live state (${stateBytes}) and the 1 MiB re-send budget`);
    assert.ok(arrived <= sent, 'what arrived was sent by warm joins (nothing else is sent to those ports)');

    // A node on another address, subscribing after the attack, is warmed with all of it.
    const legit = await Receiver.open('127.0.0.6');
    cleanup.push(() => legit.close());
    legit.socket.setRecvBufferSize(4 << 20);
    const keys = new Set<string>();
    let legitBytes = 0;
    legit.socket.removeAllListeners('message');
    legit.socket.on('message', (m: Buffer) => {
      legitBytes += m.length;
      keys.add(m.toString('latin1', 6, 6 + m.readUInt16LE(4)));
    });
    const own = await Sender.bound('127.0.0.6');
    cleanup.push(() => own.close());
    const from = rep.log.length;
    await own.send(encodeSubscription({ key: 'ssl', address: legit.address }), port);
    const done = await rep.log.waitFor('warm join completed', { address: legit.address }, { from, ms: 30_000 });
    assert.equal(done['sent'], N);
    await eventually(`${N} entries at ${legit.address}`, () => (keys.size === N ? true : undefined), 10_000).catch((err: Error) => {
      throw new Error(`${err.message}: ${keys.size} arrived (${legitBytes} bytes; a full receive buffer drops what the test cannot read in time)`);
    });
    assert.equal(legitBytes, stateBytes);
  });
});

// Warm joins at size: 20,000 sessions into a real uWSGI node at the default
// rate while live updates (sets, overwrites, deletes) keep flowing, and 32
// subscribers joining at once and sharing the rate. Counts, not times: every
// receiver must end with exactly the live state, each entry delivered as the
// rules say.

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

  test('32 subscribers joining at once share the rate: each ends with exactly the live state, each entry sent to each at most once', { timeout: 120_000 }, async () => {
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
    const rxs = await Promise.all(Array.from({ length: 32 }, () => Receiver.open()));
    cleanup.push(() => rxs.forEach((r) => r.close()));
    for (const rx of rxs) await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), port);
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
});

// Interop with real uWSGI 2.0 nodes: the repeater (the real CLI) and several
// uWSGI masters whose only cache-sync config is the repeater's address.
// Values are driven through each node's own cache API over HTTP.
//
// Skipped loudly when uWSGI or its python3 plugin is missing, unless
// UDPREPEATER_REQUIRE_UWSGI=1 (CI), where a missing uWSGI fails the run.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Daemon } from './helpers/daemon.js';
import { requirement } from './helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability, sessionBytes, sessionId, untilAbsent, untilSynced } from './helpers/uwsgi.js';

const TOLERANCE_S = 3;
const SUBSCRIBE_FREQ_S = 1;
/** Largest value the nodes' cache holds: uWSGI refuses a value above blocksize. */
const BLOCKSIZE = 4096;

const { skip, require: requireUwsgi } = requirement(
  'real uWSGI interop',
  'the real-uWSGI interop suite (test/interop.uwsgi.test.ts)',
  'Cache sync with real uWSGI nodes is NOT being tested.',
  uwsgiAvailability(),
  INSTALL_HINT,
);
const opts = { skip, timeout: 30_000 };
const HOOK = { timeout: 30_000 };


async function startRepeater(extra: string[]): Promise<{ daemon: Daemon; address: string }> {
  const daemon = await Daemon.serve(['--listen', '127.0.0.1:0', '--tolerance', String(TOLERANCE_S), ...extra]);
  const port = await daemon.portOf('127.0.0.1:0');
  return { daemon, address: `127.0.0.1:${port}` };
}

async function startNodes(repeater: string, names: string[]): Promise<UwsgiNode[]> {
  const started = await Promise.allSettled(
    names.map((name) => UwsgiNode.start({ repeater, name, blocksize: BLOCKSIZE, subscribeFreq: SUBSCRIBE_FREQ_S })),
  );
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) {
    for (const r of started) if (r.status === 'fulfilled') await r.value.kill();
    throw failed.reason;
  }
  return started.map((r) => (r as PromiseFulfilledResult<UwsgiNode>).value);
}

/** Waits for the repeater's "subscribed" line for every node. */
async function allSubscribed(daemon: Daemon, nodes: UwsgiNode[]): Promise<void> {
  await Promise.all(nodes.map((n) => daemon.log.waitFor('subscribed', { address: n.udpAddress, key: 'ssl' }, { ms: 10_000 })));
}

async function subscribers(metricsPort: number): Promise<Array<{ address: string; key: string; static: boolean }>> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/subscribers`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  return (await res.json()) as Array<{ address: string; key: string; static: boolean }>;
}

const sorted = (xs: string[]) => [...xs].sort();

describe('real uWSGI nodes through the repeater', () => {
  let rep: Daemon;
  let repAddress: string;
  let metricsPort: number;
  /** a, b, c stay up all along; d is stopped cleanly, e is SIGKILLed. */
  let nodes: UwsgiNode[] = [];
  let a: UwsgiNode, b: UwsgiNode, c: UwsgiNode, d: UwsgiNode, e: UwsgiNode;

  before(async () => {
    if (skip) return;
    requireUwsgi();
    ({ daemon: rep, address: repAddress } = await startRepeater(['--metrics', '127.0.0.1:0']));
    metricsPort = await rep.metricsPort();
    nodes = await startNodes(repAddress, ['node-a', 'node-b', 'node-c', 'node-d', 'node-e']);
    [a, b, c, d, e] = nodes as [UwsgiNode, UwsgiNode, UwsgiNode, UwsgiNode, UwsgiNode];
    await allSubscribed(rep, nodes);
  }, HOOK);

  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    killAllUwsgi();
    if (rep !== undefined) await rep.stop();
  }, HOOK);

  test('every node is listed in /subscribers under its announced cache-udp-server address', opts, async () => {
    const subs = await subscribers(metricsPort);
    assert.deepEqual(sorted(subs.map((s) => s.address)), sorted(nodes.map((n) => n.udpAddress)));
    for (const s of subs) {
      assert.equal(s.key, 'ssl');
      assert.equal(s.static, false);
    }
  });

  test('(1) a session set through one node is read through every other node', opts, async () => {
    // Session-sized binary values up to the largest the cache accepts, each
    // written through a different node under a raw 32-byte session id.
    const writes = [
      { via: a, key: sessionId(), value: sessionBytes(300) },
      { via: b, key: sessionId(), value: sessionBytes(1500) },
      { via: c, key: sessionId(), value: sessionBytes(BLOCKSIZE) },
    ];
    for (const w of writes) await w.via.set(w.key, w.value, 300);
    for (const w of writes) {
      await Promise.all(nodes.filter((n) => n !== w.via).map((n) => untilSynced(n, w.key, w.value)));
    }

    // An update (session renegotiated) through another node replaces it everywhere.
    const renewed = sessionBytes(700);
    await c.set(writes[0]!.key, renewed);
    await Promise.all(nodes.map((n) => untilSynced(n, writes[0]!.key, renewed)));
  });

  test('uWSGI itself refuses a value above the cache blocksize (the largest session that can sync)', opts, async () => {
    const key = sessionId();
    assert.equal(await a.trySet(key, sessionBytes(BLOCKSIZE + 1)), 507);
    assert.equal(await a.get(key), null);
  });

  test('(2) a delete through one node removes the session from every node', opts, async () => {
    const key = sessionId();
    const value = sessionBytes(512);
    await a.set(key, value, 300);
    await Promise.all(nodes.filter((n) => n !== a).map((n) => untilSynced(n, key, value)));

    // Deleted through a node other than the writer. uWSGI drops its own
    // (unpadded) deletes; only the repeater's padding makes this propagate.
    assert.equal(await b.del(key), true);
    await Promise.all(nodes.map((n) => untilAbsent(n, key)));
  });

  describe('with --no-repair-deletes (deletes forwarded byte for byte)', () => {
    let plain: Daemon;
    let pair: UwsgiNode[] = [];

    before(async () => {
      if (skip) return;
      requireUwsgi();
      const r = await startRepeater(['--metrics', 'off', '--no-repair-deletes']);
      plain = r.daemon;
      pair = await startNodes(r.address, ['plain-1', 'plain-2']);
      await allSubscribed(plain, pair);
    }, HOOK);

    after(async () => {
      await Promise.all(pair.map((n) => n.kill()));
      if (plain !== undefined) await plain.stop();
    }, HOOK);

    test('(2b) a delete does not reach the other node: uWSGI ignores its own unpadded deletes', opts, async () => {
      const [p1, p2] = pair as [UwsgiNode, UwsgiNode];
      const key = sessionId();
      const value = sessionBytes(512);
      await p1.set(key, value, 300);
      await untilSynced(p2, key, value);
      // p1 gets its own set back too, and a late one would bring the key back
      // after the delete below: a set from p2 reaches p1 behind it.
      const fence = sessionId();
      const fenceValue = sessionBytes(64);
      await p2.set(fence, fenceValue);
      await untilSynced(p1, fence, fenceValue);

      assert.equal(await p1.del(key), true);
      assert.equal(await p1.get(key), null);
      // A later set from the same node travels the same path after the delete:
      // once it has arrived, the delete has been delivered (or dropped) too.
      const marker = sessionId();
      const markerValue = sessionBytes(64);
      await p1.set(marker, markerValue);
      await untilSynced(p2, marker, markerValue);

      assert.deepEqual(await p2.get(key), value, 'the unpadded delete must have been ignored by uWSGI');
    });
  });

  test('(3) a node stopped cleanly (SIGINT) is unsubscribed at once, well before the tolerance', opts, async (t) => {
    const from = rep.log.length;
    const t0 = Date.now();
    const stopping = d.stop();
    const line = await rep.log.waitFor('unsubscribed', { address: d.udpAddress }, { from, ms: (TOLERANCE_S * 1000) / 2 });
    const took = Date.parse(String(line['time'])) - t0;
    assert.ok(took < (TOLERANCE_S * 1000) / 2, `unsubscribed ${took} ms after SIGINT`);
    assert.deepEqual(await stopping, { code: 0, signal: null });
    t.diagnostic(`SIGINT -> unsubscribed: ${took} ms; SIGINT -> exit: ${Date.now() - t0} ms`);
    assert.match(d.output, /unsubscribing from server=/);

    const subs = await subscribers(metricsPort);
    assert.deepEqual(sorted(subs.map((s) => s.address)), sorted([a, b, c, e].map((n) => n.udpAddress)));

    // The remaining nodes still sync.
    const key = sessionId();
    const value = sessionBytes(256);
    await c.set(key, value);
    await Promise.all([a, b, e].map((n) => untilSynced(n, key, value)));
  });

  test('(4) a node killed with SIGKILL expires after the tolerance, not before', opts, async (t) => {
    const from = rep.log.length;
    const killedAt = Date.now();
    await e.kill();

    // Traffic while the dead node is still subscribed: its outlet meets
    // ECONNREFUSED, and the others must keep syncing.
    const key = sessionId();
    const value = sessionBytes(1024);
    await a.set(key, value);
    await Promise.all([b, c].map((n) => untilSynced(n, key, value)));

    const expired = await rep.log.waitFor('subscriber expired', { address: e.udpAddress }, { from, ms: TOLERANCE_S * 1000 + 3000 });
    const expiredAt = Date.parse(String(expired['time']));
    const lastSeen = Date.parse(String(expired['lastSeen']));
    // The repeater's own record of the last announce, and its log line of it.
    const announces = rep.log.records.filter((r) => (r.msg === 'subscribed' || r.msg === 'refreshed') && r['address'] === e.udpAddress);
    const lastAnnounce = Math.max(...announces.map((r) => Date.parse(String(r['time']))));
    const tolMs = TOLERANCE_S * 1000;
    assert.ok(lastAnnounce - lastSeen >= 0 && lastAnnounce - lastSeen <= 50, `lastSeen ${expired['lastSeen']} is the last announce (${lastAnnounce})`);
    assert.ok(expiredAt - lastSeen >= tolMs, `expired ${expiredAt - lastSeen} ms after the last announce; tolerance is ${tolMs} ms`);
    // Independently of lastSeen (a few ms of slack between a record and its log line).
    assert.ok(expiredAt - lastAnnounce >= tolMs - 5, `expired ${expiredAt - lastAnnounce} ms after the logged last announce`);
    // Not far past it either: the sweeper runs at least once a second.
    assert.ok(expiredAt - killedAt <= tolMs + 2000, `expired ${expiredAt - killedAt} ms after the kill`);
    t.diagnostic(`SIGKILL -> expired: ${expiredAt - killedAt} ms; last announce -> expired: ${expiredAt - lastSeen} ms`);

    const subs = await subscribers(metricsPort);
    assert.deepEqual(sorted(subs.map((s) => s.address)), sorted([a, b, c].map((n) => n.udpAddress)));
    // The cleanly stopped node was removed by its unsubscribe, never left to expire.
    assert.deepEqual(rep.log.matching('subscriber expired', { address: d.udpAddress }), []);
    assert.equal(rep.child.exitCode, null, 'the repeater is still running');
  });
});

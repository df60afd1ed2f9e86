// Overload: the real binary under offered load far above its capacity for
// 10+ seconds (worker threads blasting small valid cache updates), with
// reading subscribers and subscribers that never read (their buffers fill).
// Its RSS must stay bounded and stop growing, the excess must show up as
// counted drops (queue_full / send_error in /metrics, or kernel drops at its
// listener), and as soon as the load is normal again every datagram must
// reach every reading subscriber. Prints the figures.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { startBlasters, startSink } from '../helpers/adversarial-worker.js';
import { ledgerFromMetrics, mb, MB, nonZero, scrape, Tally, udpSocket, vmRss } from '../helpers/adversarial.js';
import { Daemon } from '../helpers/daemon.js';
import { freePort, Sender } from '../helpers/net.js';

const FLOOD_MS = Number(process.env['ADVERSARIAL_FLOOD_MS'] ?? 10_000);
const BLASTERS = 3;
const RSS_LIMIT = 300 * MB;
const PACED = 2000;
const WINDOW = 50;

const sender = Sender.open();
const cleanup: Array<() => unknown> = [];
after(async () => {
  for (const c of cleanup.reverse()) await c();
  sender.close();
});

const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('paced-value'), 0);

describe('overload', () => {
  test(`offered load far above capacity for ${FLOOD_MS / 1000} s: bounded RSS, counted drops, zero loss once the load is normal`, async () => {
    const port = await freePort();
    const d = await Daemon.serve(['--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', '--log-level', 'info', '--subscribe-burst', '1000']);
    cleanup.push(() => d.stop());
    const mport = await d.metricsPort();
    const pid = d.child.pid!;

    // Three reading subscribers, two that never read.
    const readers = await Promise.all([1, 2, 3].map(() => Tally.open('paced-', 4 << 20)));
    cleanup.push(() => readers.forEach((r) => r.close()));
    const sinks = await Promise.all([1, 2].map(() => startSink()));
    cleanup.push(() => Promise.all(sinks.map((s) => s.close())));
    for (const a of [...readers.map((r) => r.address), ...sinks.map((s) => `127.0.0.1:${s.port}`)]) {
      await sender.send(encodeSubscription({ key: 'ssl', address: a }), port);
      await d.log.waitFor('subscribed', { address: a });
    }
    const rssStart = vmRss(pid)!;

    // Before: a paced datagram reaches every reader.
    await sender.send(set('paced-before'), port);
    for (const r of readers) assert.ok(await r.waitForKey('paced-before', 5000), 'no delivery before the flood');

    // The flood, with RSS sampled throughout.
    const samples: Array<{ t: number; rss: number }> = [];
    const t0 = Date.now();
    const sampler = setInterval(() => {
      const rss = vmRss(pid);
      if (rss !== null) samples.push({ t: Date.now() - t0, rss });
    }, 100);
    const listenerBefore = udpSocket(port);
    const blasters = startBlasters(port, BLASTERS);
    cleanup.push(() => blasters.stop());
    await new Promise((r) => setTimeout(r, FLOOD_MS)); // the load's duration, not a synchronisation
    const offered = (await blasters.stop()).reduce((a, b) => a + b, 0);
    const floodEnd = Date.now();
    clearInterval(sampler);
    assert.equal(d.child.exitCode, null, 'the repeater died under load');

    // Recovery: probes, one after the other, until 20 in a row reach every reader within 50 ms each
    // (a late probe is not lost: the repeater may still be draining its listener's backlog).
    let streakStart = 0;
    let streak = 0;
    let probes = 0;
    while (streak < 20) {
      assert.ok(Date.now() - floodEnd < 15_000, 'delivery did not recover within 15 s after the flood');
      const key = `paced-probe-${probes++}`;
      const sentAt = Date.now();
      await sender.send(set(key), port);
      const ok = (await Promise.all(readers.map((r) => r.waitForKey(key, 50)))).every(Boolean);
      if (!ok) streak = 0;
      else if (streak++ === 0) streakStart = sentAt;
    }
    const recoveryMs = streakStart - floodEnd;

    // Normal load again: N paced datagrams, every one at every reader, in order.
    const listenerPaced = udpSocket(port);
    const readerDropsPaced = readers.map((r) => udpSocket(r.port).drops);
    const from = readers.map((r) => r.keys.length);
    const tPaced = Date.now();
    for (let i = 0; i < PACED; i += WINDOW) {
      for (let j = i; j < i + WINDOW; j++) void sender.send(set(`paced-${j}`), port);
      for (const r of readers) assert.ok(await r.waitForKey(`paced-${i + WINDOW - 1}`, 5000), `window ${i / WINDOW} lost at ${r.address}`);
    }
    const pacedMs = Date.now() - tPaced;
    const metrics = await scrape(mport);
    const l = ledgerFromMetrics(metrics, `127.0.0.1:${port}`);
    const listenerEnd = udpSocket(port);
    const peak = Math.max(...samples.map((s) => s.rss));
    const third = Math.floor(samples.length / 3);
    const middlePeak = Math.max(...samples.slice(third, 2 * third).map((s) => s.rss));
    const lastPeak = Math.max(...samples.slice(2 * third).map((s) => s.rss));
    const figures = {
      floodSeconds: FLOOD_MS / 1000,
      offered,
      offeredPerSecond: Math.round(offered / (FLOOD_MS / 1000)),
      received: l.received,
      handledPerSecond: Math.round(l.received / (FLOOD_MS / 1000)),
      forwardedCopies: l.forwardedCopies,
      dropped: nonZero(l.dropped),
      kernelDropsAtListener: listenerEnd.drops - listenerBefore.drops,
      kernelDropShare: Number(((listenerEnd.drops - listenerBefore.drops) / offered).toFixed(3)),
      readersGot: readers.map((r) => r.count),
      rssStart: mb(rssStart),
      rssPeak: mb(peak),
      rssMiddleThirdPeak: mb(middlePeak),
      rssLastThirdPeak: mb(lastPeak),
      rssSamples: samples.length,
      timeToRecoverMs: recoveryMs,
      probesUntilRecovered: probes,
      paced: PACED,
      pacedMs,
    };
    console.log(JSON.stringify(figures, null, 1));

    assert.equal(d.child.exitCode, null, 'the repeater died');
    assert.ok(samples.length >= (FLOOD_MS / 100) * 0.8, 'RSS was not sampled throughout');
    assert.ok(peak < RSS_LIMIT, `peak RSS ${mb(peak)} over ${mb(RSS_LIMIT)}`);
    assert.ok(lastPeak - middlePeak < 12 * MB, `RSS still growing: ${mb(middlePeak)} in the middle third, ${mb(lastPeak)} in the last`);
    // The load really was above capacity, and what could not be handled was counted somewhere.
    const counted = figures.kernelDropsAtListener + (l.dropped['queue_full'] ?? 0) + (l.dropped['send_error'] ?? 0);
    assert.ok(counted > 0, 'no drop counted anywhere: the load was not above capacity');
    assert.ok(l.received + figures.kernelDropsAtListener >= offered * 0.99, `offered ${offered}, but the repeater read ${l.received} and the kernel dropped ${figures.kernelDropsAtListener} at its listener`);
    // Zero loss at normal load.
    for (const [i, r] of readers.entries()) {
      const got = r.keys.slice(from[i]).filter((k) => /^paced-\d+$/.test(k));
      assert.equal(got.length, PACED, `${r.address} got ${got.length} of ${PACED} paced datagrams`);
      assert.deepEqual(got, Array.from({ length: PACED }, (_, j) => `paced-${j}`), `${r.address}: paced datagrams out of order`);
    }
    assert.equal(listenerEnd.drops - listenerPaced.drops, 0, 'kernel drops at the listener at normal load');
    assert.deepEqual(readers.map((r) => udpSocket(r.port).drops), readerDropsPaced, 'kernel drops at a reader at normal load');
    assert.ok(recoveryMs < 5000, `took ${recoveryMs} ms to recover`);
    assert.deepEqual(d.log.matching('fatal error, exiting'), []);
    assert.equal((await d.stop()).code, 0);
  });
});

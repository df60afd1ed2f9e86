// The live state at size (src/path/live-state.ts, src/daemon/live-restore.ts):
// - evicting the oldest key costs the same with 60,000 or 100,000 entries
//   as with 1,000 (timed: medians of several runs, a generous bound; the
//   old Map walked the slots it had deleted since its last rehash);
// - what the state counts against --state-max-bytes is what it holds:
//   heap and ArrayBuffer memory after a full GC, for 20,000 and 65,000
//   sessions of 300 B, also after every key was set again (traced, as the
//   bus delivers them) while the rest of the process kept taking small
//   buffers from Node's pool (which used to keep a whole 8 KiB pool slab
//   alive per entry);
// - a saved state of 1,000,000 sets is restored by the real CLI with its
//   listener open, and datagrams keep being forwarded, each within
//   MAX_LATENCY_MS, while it is.
// UDPREPEATER_CLI=/path/to/cli.js runs the restore against another build.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { LIVE_STATE_FILE } from '../../src/daemon/live-store.js';
import { LiveState } from '../../src/path/live-state.js';
import { encodeCacheSet, forwardForm, inspectCacheUpdate, newShape } from '../../src/wire/cache.js';
import { encodeLiveState } from '../../src/wire/live-state-file.js';
import { Daemon } from '../helpers/daemon.js';
import { freePort, Receiver, Sender } from '../helpers/net.js';

const NOW = Math.floor(Date.now() / 1000);
const cleanup: Array<() => unknown> = [];
after(async () => {
  for (const c of cleanup.reverse()) await c();
});

/** A set whose key (16 bytes, `k` and 15 digits) is rewritten in place: no allocation per set. */
function keyedSet(valueBytes: number): { datagram: Buffer; key(i: number): Buffer } {
  const datagram = encodeCacheSet(Buffer.from('k'.padEnd(16, '0')), Buffer.alloc(valueBytes, 0x5a), 0);
  return {
    datagram,
    key(i: number) {
      datagram.write(String(i).padStart(15, '0'), 7, 'latin1');
      return datagram;
    },
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

describe('the live state at size', () => {
  test('a new key in a full state (the oldest evicted) costs the same with 60,000 or 100,000 entries as with 1,000 (medians of 5 runs, within 4x)', (t) => {
    const shape = newShape();
    /** Microseconds of CPU per new key, in a state full with `entries`. */
    const costAt = (entries: number): number => {
      const d = keyedSet(300);
      const s = new LiveState(entries * (d.datagram.length + 16 + 640) + 100);
      let i = 0;
      for (; i < entries; i++) {
        inspectCacheUpdate(d.key(i), shape);
        s.learn(d.datagram, shape, NOW);
      }
      const n = 30_000;
      const t0 = process.cpuUsage();
      for (const end = i + n; i < end; i++) {
        inspectCacheUpdate(d.key(i), shape);
        s.learn(d.datagram, shape, NOW);
      }
      const used = process.cpuUsage(t0);
      assert.ok(s.evictions >= n, 'every new key evicted one');
      return (used.user + used.system) / n;
    };
    costAt(1000); // warm up the JIT
    const sizes = [1_000, 60_000, 100_000];
    const runs: number[][] = sizes.map(() => []);
    for (let r = 0; r < 5; r++) sizes.forEach((n, i) => runs[i]!.push(costAt(n)));
    const [small, ...large] = runs.map(median);
    t.diagnostic(`CPU per new key: ${sizes.map((n, i) => `${runs[i]!.map((x) => x.toFixed(2)).join('/')} us at ${n}`).join('; ')}`);
    for (const [i, l] of large.entries()) {
      assert.ok(l < 4 * small!, `a new key costs ${small!.toFixed(2)} us at 1,000 entries and ${l.toFixed(2)} us at ${sizes[i + 1]} (${(l / small!).toFixed(1)}x)`);
    }
  });

  test('heap and ArrayBuffer memory after a full GC stay within 1.25x of the bytes counted, however the keys were set (20,000 and 65,000 sessions of 300 B)', (t) => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const held = (): number => {
      gc();
      gc();
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    const shape = newShape();
    const traced = (d: Buffer) => {
      inspectCacheUpdate(d, shape);
      return forwardForm(d, shape, false, { ingress: 9, sequence: 1, hops: 1 }, 65507) as Buffer;
    };
    for (const n of [20_000, 65_000]) {
      const before = held();
      const s = new LiveState(1 << 30);
      const d = keyedSet(300);
      for (let i = 0; i < n; i++) s.apply(d.key(i), NOW);
      const fresh = held() - before;
      // Every key set again, traced, three times, while the rest of the process takes small pooled buffers
      // (forward forms, sealed frames, log lines) that die at once.
      const litter: Buffer[] = [];
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < n; i++) {
          s.apply(traced(d.key(i)), NOW);
          for (let j = 0; j < 4; j++) litter.push(Buffer.from(d.datagram));
          if (litter.length > 64) litter.length = 0;
        }
      }
      litter.length = 0;
      const reset = held() - before;
      const ratios = [fresh / s.bytes, reset / s.bytes];
      t.diagnostic(`${n} sessions: counted ${(s.bytes / 1e6).toFixed(1)} MB, held ${(fresh / 1e6).toFixed(1)} MB set once, ${(reset / 1e6).toFixed(1)} MB set again (${ratios.map((r) => r.toFixed(2)).join('x, ')}x)`);
      assert.ok(
        ratios.every((r) => r <= 1.25),
        `${n} sessions counted ${(s.bytes / 1e6).toFixed(1)} MB; held ${(fresh / 1e6).toFixed(1)} MB when set once (${ratios[0]!.toFixed(2)}x), ${(reset / 1e6).toFixed(1)} MB when set again (${ratios[1]!.toFixed(2)}x)`,
      );
      s.clear();
    }
  });

  test('a saved state of 1,000,000 sets is restored with the listener open: datagrams are forwarded during it, each within 1 s', { timeout: 300_000 }, async (t) => {
    const MAX_LATENCY_MS = 1000;
    const N = 1_000_000;
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-restore-'));
    const port = await freePort();
    const channel = `127.0.0.1:${port}`;
    const d = keyedSet(16);
    const sets: Buffer[] = [];
    for (let i = 0; i < N; i++) sets.push(Buffer.from(d.key(i)));
    writeFileSync(join(dir, LIVE_STATE_FILE), encodeLiveState({ savedAtMs: Date.now(), channels: [{ channel, sets }] }), { mode: 0o600 });
    sets.length = 0;

    const rx = await Receiver.open();
    cleanup.push(() => rx.socket.close());
    const tx = Sender.open();
    cleanup.push(() => tx.close());
    const rep = Daemon.spawn(['serve', '--log-format', 'json', '--log-level', 'info', '--listen', channel, '--to', rx.address, '--state-dir', dir, '--save-live-state', '--metrics', '127.0.0.1:0']);
    cleanup.push(() => rep.stop());

    // Probes from the moment the listener is bound: each carries its number; its send time is kept here.
    await rep.log.waitFor('listening', {}, { ms: 30_000 });
    const sentAt: number[] = [];
    const arrived = new Map<number, number>();
    let late: string | null = null;
    const probe = () => {
      const n = sentAt.length;
      sentAt.push(performance.now());
      tx.send(encodeCacheSet(Buffer.from(`probe-${n}`), Buffer.from(String(n)), 0), port).catch(() => undefined);
      // Read what came back, and look for a probe that waits too long.
      for (; readCursor < rx.received.length; readCursor++) {
        const m = /^probe-(\d+)$/.exec(rx.received[readCursor]!.toString('latin1', 6, 6 + rx.received[readCursor]!.readUInt16LE(4)));
        if (m !== null) arrived.set(Number(m[1]), performance.now());
      }
      for (; oldest < sentAt.length && arrived.has(oldest); oldest++);
      if (oldest < sentAt.length && performance.now() - sentAt[oldest]! > MAX_LATENCY_MS) late ??= `probe ${oldest} not forwarded after ${MAX_LATENCY_MS} ms`;
    };
    let readCursor = 0;
    let oldest = 0;
    const timer = setInterval(probe, 2);
    cleanup.push(() => clearInterval(timer));
    const failFast = new Promise<never>((_, reject) => {
      const t = setInterval(() => {
        if (late !== null) reject(new Error(`the event loop was blocked by the restore: ${late}`));
      }, 50);
      cleanup.push(() => clearInterval(t));
    });
    failFast.catch(() => undefined);
    await Promise.race([rep.log.waitFor('restoring the live state', {}, { ms: 60_000 }), failFast]);
    const duringFrom = arrived.size;
    const done = await Promise.race([rep.log.waitFor('restored the live state', {}, { ms: 240_000 }), failFast]);
    const during = arrived.size - duringFrom;
    clearInterval(timer);
    probe();
    const worst = Math.max(...[...arrived].map(([n, at]) => at - sentAt[n]!));
    t.diagnostic(`restored ${String(done['restored'])} sets in ${String(done['ms'])} ms (${String(done['slices'])} slices); ${during} probes forwarded meanwhile, the slowest in ${worst.toFixed(0)} ms`);
    assert.equal(late, null, late ?? '');
    assert.equal(done['restored'], N, 'every set was applied (the oldest evicted under --state-max-bytes)');
    assert.ok(during >= 10, `only ${during} probes were forwarded during a restore of ${String(done['ms'])} ms`);
  });
});

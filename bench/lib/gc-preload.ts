// Loaded into a udprepeater under test with NODE_OPTIONS=--require <this
// file> (gcstats.ts): counts the process's garbage-collection pauses and
// reads its memory, and keeps a snapshot of both in the file named by
// UDPREPEATER_BENCH_GC_FILE for the bench to read. The repeater's own code
// is unchanged; this file imports nothing of it.
//
// Invariants:
// - every figure is cumulative since the process started (the bench takes
//   differences between two snapshots);
// - the snapshot is replaced whole (write to a temporary file, rename), so a
//   reader never sees half of one; `at` (Date.now()) says how fresh it is;
// - it is written at most every 100 ms after a GC and every 250 ms in any
//   case, from an unref'd timer: it never keeps the process alive, and the
//   writes cost a few tens of µs each.
// - pause durations go into a histogram (gc-histogram.ts), from which the
//   bench reads the largest pause of a window.

import { renameSync, writeFileSync } from 'node:fs';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GC_BUCKETS, gcBucket } from './gc-histogram.js';

const file = process.env['UDPREPEATER_BENCH_GC_FILE'];
if (file !== undefined && file !== '') {
  const hist = new Array<number>(GC_BUCKETS).fill(0);
  const kinds: Record<string, number> = { minor: 0, major: 0, incremental: 0, weakcb: 0, other: 0 };
  let count = 0;
  let totalMs = 0;
  let maxMs = 0;
  let lastWrite = 0;
  let fullGcs = 0;
  const kindName = (k: number | undefined) =>
    k === constants.NODE_PERFORMANCE_GC_MINOR
      ? 'minor'
      : k === constants.NODE_PERFORMANCE_GC_MAJOR
        ? 'major'
        : k === constants.NODE_PERFORMANCE_GC_INCREMENTAL
          ? 'incremental'
          : k === constants.NODE_PERFORMANCE_GC_WEAKCB
            ? 'weakcb'
            : 'other';
  const write = () => {
    lastWrite = Date.now();
    const m = process.memoryUsage();
    const snap = { at: lastWrite, pid: process.pid, fullGcs, count, totalMs, maxMs, kinds, hist, memory: { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers } };
    try {
      writeFileSync(`${file}.tmp`, JSON.stringify(snap));
      renameSync(`${file}.tmp`, file);
    } catch {
      // the bench's scratch directory went away: nothing to report to
    }
  };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const ms = e.duration;
      count++;
      totalMs += ms;
      if (ms > maxMs) maxMs = ms;
      hist[gcBucket(ms * 1000)]!++;
      const k = kindName(((e as unknown as { detail?: { kind?: number } }).detail)?.kind);
      kinds[k] = (kinds[k] ?? 0) + 1;
    }
    if (Date.now() - lastWrite >= 100) write();
  });
  obs.observe({ entryTypes: ['gc'] });
  setInterval(write, 250).unref();
  write();
  // The memory check (state.ts) asks for memory after a full collection: SIGUSR2, only when it says so.
  if (process.env['UDPREPEATER_BENCH_GC_ON_SIGNAL'] === '1') {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    process.on('SIGUSR2', () => {
      gc();
      gc();
      fullGcs++;
      write();
    });
  }
}

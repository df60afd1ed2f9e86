// udprepeater's live state under load (README.md, "Warm join"): what a full
// state costs per datagram, and what memory a state takes against the bound
// that counts it.
//
// - fillState (measure.ts): before a state target (udprepeater-state8m,
//   -state64m) is measured, it is sent sets of keys never seen before (gen
//   --unique-keys) until its state has evicted (it is full). The
//   measurement's own unique keys then evict the oldest entry on every set.
// - runStateMemory (here): a repeater with --state-max-bytes N is given K keys whose
//   entries fill about 90% of N, then each of them is set again LAPS times
//   with a value of the same size; its memory is read (through gc-preload.ts,
//   after a full collection asked for with SIGUSR2) after a warm-up of as
//   many sets of 16 keys (the baseline: whatever any load grows, a state of
//   16 entries), after the first lap and after the re-sets, beside the
//   bytes the state counts.
//
// Every wait is bounded; a repeater that does not fill is reported, not
// waited for.

import { join } from 'node:path';
import { type Context, ENTRY_OVERHEAD_GUESS, fmtRate, nextFillRun, runGen, startReceivers, syntheticArgs } from './measure.js';
import { PLAIN } from './modes.js';
import { freshGc, type GcSnapshot } from './gcstats.js';
import { writePool } from './pool.js';
import { memory } from './procstat.js';
import { sleep } from './procs.js';
import { type SyntheticSpec, syntheticPool } from './synthetic.js';
import { type RepeaterFanOut, startRepeater } from './targets.js';

/** Memory of the repeater process at one moment (bytes), after a full collection when it could ask for one. */
export interface MemoryPoint {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  /** The state's own count (udprepeater_live_state_bytes) and entries. */
  stateBytes: number;
  entries: number;
  /** True when a full collection ran just before (SIGUSR2 to the preload). */
  afterFullGc: boolean;
}

export interface MemoryResult {
  maxBytes: number;
  keys: number;
  valueSize: string;
  laps: number;
  rate: number;
  baseline: MemoryPoint;
  afterFill: MemoryPoint;
  afterResets: MemoryPoint;
  evictions: number;
  peakRssKiB: number;
  command: string;
  seconds: number;
  warnings: string[];
}

async function memoryPoint(rep: RepeaterFanOut): Promise<MemoryPoint> {
  const c = await rep.counters();
  const t = Date.now();
  let snap: GcSnapshot | null = null;
  if (rep.gcFile !== undefined) {
    try {
      process.kill(rep.child.pid, 'SIGUSR2');
    } catch {
      // gone: read what there is
    }
    // The snapshot written after the collection: later than t, with one more full collection.
    const deadline = Date.now() + 3000;
    const before = (await freshGc(rep.gcFile, 0))?.fullGcs ?? 0;
    for (;;) {
      snap = await freshGc(rep.gcFile, t, 500);
      if ((snap !== null && snap.fullGcs > before) || Date.now() > deadline) break;
    }
  }
  const rss = memory(rep.child.pid).rssKiB * 1024;
  return {
    rss,
    heapUsed: snap?.memory.heapUsed ?? NaN,
    external: snap?.memory.external ?? NaN,
    arrayBuffers: snap?.memory.arrayBuffers ?? NaN,
    stateBytes: c.state?.bytes ?? NaN,
    entries: c.state?.entries ?? NaN,
    afterFullGc: snap !== null && snap.at >= t,
  };
}

/**
 * The memory a full state takes: K keys fill about 90% of `maxBytes`
 * (counted as the repeater counts them), then `laps` re-sets of every key
 * with a value of the same size.
 */
export async function runStateMemory(ctx: Context, maxBytes: number, spec: SyntheticSpec, laps: number, rate: number, onTick: (s: string) => void): Promise<MemoryResult> {
  const t0 = Date.now();
  const meanKey = (spec.keySize.min + spec.keySize.max) / 2;
  const meanValue = (spec.valueSize.min + spec.valueSize.max) / 2;
  // header 4, key length 2, value length 2, expiry length 2 and 10 digits
  const perEntry = 20 + meanKey * 2 + meanValue + ENTRY_OVERHEAD_GUESS;
  const keys = Math.max(1, Math.floor((0.9 * maxBytes) / perEntry));
  const sizeSpec: SyntheticSpec = { ...spec, deletes: 0, poolSize: keys, seed: 7 };
  const poolPath = join(ctx.scratch, `memory-${maxBytes}.bin`);
  const records = syntheticPool(sizeSpec);
  writePool(poolPath, records, 0);
  // The warm-up's pool: 16 of the same keys, so that it runs the same paths (learn, renew in place) and
  // grows what any load grows (V8's young generation, allocator arenas) without growing the state.
  const warmPath = join(ctx.scratch, `memory-${maxBytes}-warm.bin`);
  writePool(warmPath, records.slice(0, 16), 0);
  const { recv, ports } = await startReceivers(ctx, 1, `memory-${maxBytes}`);
  let rep: RepeaterFanOut | null = null;
  try {
    rep = await startRepeater(PLAIN, ports, {
      cpu: ctx.cpuFanout,
      recvBuffer: ctx.recvBuffer,
      repeaterArgs: ['--state-max-bytes', String(maxBytes), ...ctx.repeaterArgs],
      gcFile: join(ctx.scratch, `gc-memory-${maxBytes}.json`),
      gcOnSignal: true,
    });
    const r = rep;
    const src = { kind: 'synthetic', rate, spec: sizeSpec } as const;
    const send = async (count: number, what: string, path = poolPath) => {
      onTick(`${(maxBytes / 2 ** 20).toFixed(0)} MiB state: ${what}`);
      await runGen(ctx, path, [r.inputPort], ['--rate', String(rate), ...syntheticArgs(src)], count / rate + 10, count, nextFillRun(), ctx.cpuLoad);
      // Until the repeater has read everything (its input count stops moving), at most 10 s.
      let last = -1;
      for (let i = 0; i < 100; i++) {
        const c = await r.counters();
        if (c.received === last) break;
        last = c.received;
        await sleep(100);
      }
    };
    await send(keys * (laps + 1), 'warm-up: as many sets, of 16 keys', warmPath);
    const baseline = await memoryPoint(r);
    await send(keys, `first lap, ${keys} keys`);
    const afterFill = await memoryPoint(r);
    await send(keys * laps, `${laps} laps of re-sets of the same keys, values of the same size`);
    const afterResets = await memoryPoint(r);
    const c = await r.counters();
    return {
      maxBytes,
      keys,
      valueSize: spec.valueSize.text,
      laps,
      rate,
      baseline,
      afterFill,
      afterResets,
      evictions: c.state?.evictions ?? NaN,
      peakRssKiB: memory(r.child.pid).peakKiB,
      command: r.command ?? '',
      seconds: (Date.now() - t0) / 1000,
      warnings: [...r.warnings],
    };
  } finally {
    if (rep !== null) await rep.stop();
    await recv.stop();
  }
}

/** One line for the progress output. */
export function memoryLine(m: MemoryResult): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const grow = m.afterResets.rss - m.baseline.rss;
  const counted = m.afterResets.stateBytes - m.baseline.stateBytes;
  return (
    `--state-max-bytes ${mib(m.maxBytes)}: ${m.keys} keys, ${m.laps} laps of same-size re-sets at ${fmtRate(m.rate)}/s; state counts ${mib(m.afterResets.stateBytes)}; ` +
    `RSS +${mib(m.afterFill.rss - m.baseline.rss)} after the first lap, +${mib(grow)} after the re-sets (${(grow / counted).toFixed(2)}x what the state counts); ` +
    `JS heap +${mib(m.afterResets.heapUsed - m.baseline.heapUsed)}, Buffer memory +${mib(m.afterResets.arrayBuffers - m.baseline.arrayBuffers)}`
  );
}

// The bench's side of gc-preload.ts: the environment that loads it into a
// udprepeater under test, and the pauses of one measurement read from two
// of its snapshots.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gcBucketTop } from './gc-histogram.js';
import { BUILD_DIR } from './paths.js';
import { sleep } from './procs.js';

/** The compiled preload (build/bench/lib/gc-preload.js). */
export const GC_PRELOAD = join(BUILD_DIR, 'lib', 'gc-preload.js');

export interface GcSnapshot {
  at: number;
  pid: number;
  /** Full collections asked for with SIGUSR2 (UDPREPEATER_BENCH_GC_ON_SIGNAL=1). */
  fullGcs: number;
  count: number;
  totalMs: number;
  maxMs: number;
  kinds: Record<string, number>;
  hist: number[];
  memory: { rss: number; heapUsed: number; heapTotal: number; external: number; arrayBuffers: number };
}

/** GC pauses over one measurement (ms). `maxMs` is the top of the largest pause's histogram bucket (within 6%). */
export interface GcFigures {
  count: number;
  totalMs: number;
  maxMs: number;
  /** Pauses by kind: minor (scavenge), major (mark-compact), incremental marking, weak callbacks. */
  kinds: Record<string, number>;
}

/** Environment for a udprepeater whose GC pauses are counted into `file`. */
export function gcEnv(base: NodeJS.ProcessEnv, file: string, fullGcOnSignal = false): NodeJS.ProcessEnv {
  const prior = base['NODE_OPTIONS'] ?? '';
  // A path with a space would split NODE_OPTIONS: the preload is then left out (no GC figures) rather than breaking the start.
  if (/\s/.test(GC_PRELOAD)) return base;
  return {
    ...base,
    NODE_OPTIONS: `${prior} --require ${GC_PRELOAD}`.trim(),
    UDPREPEATER_BENCH_GC_FILE: file,
    ...(fullGcOnSignal ? { UDPREPEATER_BENCH_GC_ON_SIGNAL: '1' } : {}),
  };
}

export function readGc(file: string): GcSnapshot | null {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as GcSnapshot;
  } catch {
    return null;
  }
}

/**
 * The first snapshot written at or after `notBefore` (ms since the epoch),
 * waiting at most `ms` for it (the preload writes one every 250 ms); null
 * when the process has no preload or wrote nothing in time.
 */
export async function freshGc(file: string, notBefore: number, ms = 1500): Promise<GcSnapshot | null> {
  if (!existsSync(file)) {
    await sleep(300);
    if (!existsSync(file)) return null;
  }
  const deadline = Date.now() + ms;
  for (;;) {
    const s = readGc(file);
    if (s !== null && s.at >= notBefore) return s;
    if (Date.now() > deadline) return s;
    await sleep(50);
  }
}

export function gcDelta(a: GcSnapshot, b: GcSnapshot): GcFigures {
  let top = -1;
  for (let i = b.hist.length - 1; i >= 0; i--) {
    if ((b.hist[i] ?? 0) - (a.hist[i] ?? 0) > 0) {
      top = i;
      break;
    }
  }
  const kinds: Record<string, number> = {};
  for (const [k, v] of Object.entries(b.kinds)) if (v - (a.kinds[k] ?? 0) > 0) kinds[k] = v - (a.kinds[k] ?? 0);
  // The process's own running maximum is exact; it counts only when this window set it.
  const maxMs = top < 0 ? 0 : b.maxMs > a.maxMs ? b.maxMs : gcBucketTop(top) / 1000;
  return { count: b.count - a.count, totalMs: b.totalMs - a.totalMs, maxMs, kinds };
}

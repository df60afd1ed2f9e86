// The live state on its own (src/path/live-state.ts), no sockets: CPU per
// update and restore time, so a change to the state's data structure can be
// judged without the noise of a whole repeater. Each figure is the median of
// --rounds interleaved rounds (CPU time of this process: user + system).
//
//   npm run build:dev && node build/bench/live-state.js [--rounds 5] [--other DIST]
//
// --other DIST: the same figures for another build's compiled src (a dist/ or
// build/src/ directory, e.g. of an older checkout), side by side.
//
// Rows:
// - new key, STATE: every update a key never seen (a new TLS session), into a
//   state that is empty and grows (no eviction), or full at 8 MiB or 64 MiB
//   (each update evicts the oldest);
// - re-set: the same 20,000 keys set again, as a node sends them, and traced
//   (as the bus or another repeater delivers them);
// - restore N: a saved state of N sets of 300 B applied under the default
//   64 MiB bound (validation included), and the longest the event loop
//   waited meanwhile (this build: in slices; another build: at once).

import { parseArgs } from 'node:util';
import { encodeCacheSet, forwardForm, inspectCacheUpdate, newShape } from '../src/wire/cache.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, other: { type: 'string' } } });
const ROUNDS = Number(values.rounds);
const NOW = Math.floor(Date.now() / 1000);
const VALUE = 300;

interface StateLike {
  learn(buf: Buffer, s: ReturnType<typeof newShape>, nowSec: number): string;
  readonly size: number;
}
interface Build {
  readonly name: string;
  LiveState: new (maxBytes: number) => StateLike;
  /** Applies a saved state; resolves with the longest event-loop wait (ms). */
  restore?(sets: Buffer[]): Promise<number>;
}

/** A set whose 32-byte key ends in digits rewritten in place (no allocation per update). */
function keyed(): { datagram: Buffer; key(i: number): Buffer } {
  const datagram = encodeCacheSet(Buffer.alloc(32, 0x6b), Buffer.alloc(VALUE, 0x76), 0);
  return {
    datagram,
    key(i: number) {
      datagram.write(String(i).padStart(16, '0'), 6 + 16, 'latin1');
      return datagram;
    },
  };
}

function cpuUs(f: () => number): number {
  const t0 = process.cpuUsage();
  const n = f();
  const t = process.cpuUsage(t0);
  return (t.user + t.system) / n;
}

function newKeys(b: Build, maxBytes: number, fill: boolean): number {
  const shape = newShape();
  const d = keyed();
  const s = new b.LiveState(maxBytes);
  let i = 0;
  if (fill) for (; i < 200_000 && (i < 1000 || s.size === i); i++) s.learn(d.key(i), (inspectCacheUpdate(d.datagram, shape), shape), NOW);
  const n = 100_000;
  return cpuUs(() => {
    for (const end = i + n; i < end; i++) {
      inspectCacheUpdate(d.key(i), shape);
      s.learn(d.datagram, shape, NOW);
    }
    return n;
  });
}

function reSets(b: Build, traced: boolean): number {
  const shape = newShape();
  const keys = 20_000;
  const d = keyed();
  const s = new b.LiveState(64 << 20);
  const form = (i: number) => {
    const plain = d.key(i);
    if (!traced) return plain;
    inspectCacheUpdate(plain, shape);
    return Buffer.from(forwardForm(plain, shape, false, { ingress: 5, sequence: 1, hops: 1 }, 65507) as Buffer);
  };
  const forms = Array.from({ length: 64 }, (_, i) => form(i));
  for (let i = 0; i < keys; i++) {
    const f = form(i);
    inspectCacheUpdate(f, shape);
    s.learn(f, shape, NOW);
  }
  const n = 200_000;
  return cpuUs(() => {
    for (let i = 0; i < n; i++) {
      const f = forms[i & 63]!;
      f.write(String((i * 7919) % keys).padStart(16, '0'), 6 + 16, 'latin1');
      inspectCacheUpdate(f, shape);
      s.learn(f, shape, NOW);
    }
    return n;
  });
}

async function load(dir: string, name: string): Promise<Build> {
  // This build keeps it in path/; builds before the datagram path's redesign in repeater/.
  const m = (await import(`${dir}/path/live-state.js`).catch(() => import(`${dir}/repeater/live-state.js`))) as { LiveState: Build['LiveState'] };
  const b: { -readonly [K in keyof Build]: Build[K] } = { name, LiveState: m.LiveState };
  try {
    const r = (await import(`${dir}/daemon/live-restore.js`)) as typeof import('../src/daemon/live-restore.js');
    const f = (await import(`${dir}/wire/live-state-file.js`)) as typeof import('../src/wire/live-state-file.js');
    b.restore = (sets) => {
      const file = f.encodeLiveState({ savedAtMs: Date.now(), channels: [{ channel: 'c', sets }] });
      const state = new m.LiveState(64 << 20) as unknown as import('../src/path/live-state.js').LiveState;
      const job = new r.LiveRestore(file, f.openLiveState(file)!, () => state, () => undefined);
      return timed(async () => {
        job.start();
        await job.done;
      });
    };
  } catch {
    // An older build: no sliced restore; the sets are applied at once, as its LiveStore did.
    b.restore = (sets) =>
      timed(async () => {
        const shape = newShape();
        const s = new m.LiveState(64 << 20);
        for (const set of sets) if (inspectCacheUpdate(set, shape) === undefined) s.learn(set, shape, NOW);
      });
  }
  return b;
}

/** Runs `f`, returning [wall ms, longest event-loop wait ms] as one string. */
async function timed(f: () => Promise<void>): Promise<number> {
  let last = performance.now();
  let worst = 0;
  const t = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  await f();
  const wall = performance.now() - t0;
  await new Promise((r) => setImmediate(r));
  clearInterval(t);
  worst = Math.max(worst, performance.now() - last);
  lastWorst = worst;
  return wall;
}
let lastWorst = 0;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

async function main(): Promise<void> {
  const builds = [await load('../src', 'this build')];
  if (values.other !== undefined) builds.push(await load(values.other, values.other));
  const rows: Array<[string, (b: Build) => number | Promise<string>]> = [
    ['new key, empty state (grows)', (b) => newKeys(b, 1 << 30, false)],
    ['new key, full 8 MiB state', (b) => newKeys(b, 8 << 20, true)],
    ['new key, full 64 MiB state', (b) => newKeys(b, 64 << 20, true)],
    ['re-set, 20,000 keys', (b) => reSets(b, false)],
    ['re-set traced, 20,000 keys', (b) => reSets(b, true)],
  ];
  console.log(`| per update, CPU us (median of ${ROUNDS}) | ${builds.map((b) => b.name).join(' | ')} |`);
  console.log(`|---|${builds.map(() => '---').join('|')}|`);
  for (const [label, f] of rows) {
    const runs = builds.map(() => [] as number[]);
    for (let r = 0; r < ROUNDS; r++) for (const [i, b] of builds.entries()) runs[i]!.push((await f(b)) as number);
    console.log(`| ${label} | ${runs.map((x) => median(x).toFixed(2)).join(' | ')} |`);
  }
  console.log(`\n| restore, ${VALUE} B sets, 64 MiB bound | ${builds.map((b) => b.name).join(' | ')} |`);
  console.log(`|---|${builds.map(() => '---').join('|')}|`);
  for (const n of [300_000, 2_000_000]) {
    const d = keyed();
    const sets = Array.from({ length: n }, (_, i) => Buffer.from(d.key(i)));
    const cells: string[] = [];
    for (const b of builds) {
      const wall = await b.restore!(sets);
      cells.push(`${(wall / 1000).toFixed(2)} s, loop blocked at most ${lastWorst.toFixed(0)} ms`);
    }
    console.log(`| ${n.toLocaleString('en')} sets | ${cells.join(' | ')} |`);
  }
}

void main();

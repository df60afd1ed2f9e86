// One scenario: receivers, then both fan-outs (the C floor and udprepeater)
// sending to the same receivers, then repeated measurements alternating
// between them, so that noise on this shared machine hits both alike. A
// secure scenario and its plain twin are measured as a group: both sets of
// receivers and all four fan-outs side by side, measurements rotating.
//
// A measurement: arm the receivers for a fresh run id, read the fan-out's
// counters and CPU time, run the generator for the scenario's duration,
// wait until arrivals stop, read everything again.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type BenchMode, CHANNEL_KEY, type ModeName, PLAIN } from './modes.js';
import type { NativeTools } from './native.js';
import { poolSummary, writePool } from './pool.js';
import { captureToPool, readPcap } from './pcap.js';
import { clockTicks, cpuSeconds, ksoftirqdCpu, machineCpu, memory } from './procstat.js';
import type { Progress } from './progress.js';
import { BenchError, Child, sleep } from './procs.js';
import { keygen } from './secure-check.js';
import { describeSynthetic, type SyntheticSpec, syntheticPool } from './synthetic.js';
import { type ClusterFanOut, type ClusterInput, type ClusterSample, type ClusterSnapshot, clusterSample, startCluster } from './cluster.js';
import { freshGc, type GcFigures, gcDelta, type GcSnapshot } from './gcstats.js';
import { type PeerSpec, startPeer } from './peer.js';
import {
  type FanCounters,
  type FanOut,
  isCluster,
  isPeer,
  isRepeater,
  REPEATER_VARIANTS,
  type RepeaterFanOut,
  startFloor,
  startRepeater,
  subscribeAll,
  type TargetKind,
} from './targets.js';

export type Source =
  /** uniqueKeys: every set of a key never seen before (gen --unique-keys): a live state fills and then evicts on every set. */
  | { readonly kind: 'synthetic'; readonly rate: number; readonly spec: SyntheticSpec; readonly uniqueKeys?: boolean }
  | { readonly kind: 'replay'; readonly speed: number; readonly capture: string; readonly dport?: number | undefined; readonly all?: boolean };

export interface Scenario {
  readonly id: string;
  readonly title: string;
  /** Chart series (offered output datagrams/s), or null when not charted. */
  readonly series: number | null;
  readonly subscribers: number;
  /** Subscribe the receivers with uWSGI subscription packets instead of --to. */
  readonly dynamic: boolean;
  readonly source: Source;
  readonly duration: number;
  readonly repeats: number;
  readonly targets: readonly TargetKind[];
  /** What travels on the wire (modes.ts); absent in results of older runs: plain. */
  readonly mode?: ModeName;
  /** Secure scenarios: the id of the plain scenario measuring the same load (for the secure/plain ratios). */
  readonly twin?: string;
  /**
   * Cluster scenarios (cluster.ts): how the input reaches the cluster targets
   * (all to A, or split between A and B). Every repeater of the scenario, the
   * standalone one too, listens with channel=ssl (cluster mode needs it).
   */
  readonly cluster?: { readonly input: ClusterInput };
}

export interface Context {
  readonly tools: NativeTools;
  /** The modes this run can use: plain always, secure once its key file is made (run.ts). */
  readonly modes: Partial<Record<ModeName, BenchMode>>;
  readonly scratch: string;
  readonly cpuFanout: string | undefined;
  readonly cpuLoad: string | undefined;
  readonly recvBuffer: number;
  readonly repeaterArgs: readonly string[];
  readonly warmup: number;
  readonly progress: Progress;
  /** Waiting for a quiet machine before each measurement: the threshold (CPUs busy elsewhere) and a total budget in seconds. */
  readonly quiet: { threshold: number; budget: number; perMeasurement: number; spent: number };
  /** Other fan-out programs (--peer-cmd), by target kind. */
  readonly peers: ReadonlyMap<TargetKind, PeerSpec>;
  /** Count udprepeater's GC pauses (gc-preload.ts); off with --no-gc-stats. */
  readonly gcStats: boolean;
  /** Cluster scenarios: nats-server, where the cluster's processes run, the sealed bus's key (made on first use). */
  readonly cluster?: { readonly natsServer: string; readonly cpuA: string | undefined; readonly cpuB: string | undefined; readonly cpuNats: string | undefined; keyFile: string | null };
}

export interface Latency {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** One measurement of one fan-out. Rates are per second; latencies in µs. */
export interface Sample {
  target: TargetKind;
  rep: number;
  offeredIn: number | null;
  genSent: number;
  genStamped: number;
  genRate: number;
  genElapsed: number;
  genMaxLagMs: number;
  genErrors: number;
  genCpuUtil: number;
  fanIn: number;
  fanOut: number;
  fanDrops: Record<string, number>;
  delivered: number;
  duplicates: number;
  reordered: number;
  receiverKernelDrops: number;
  window: number;
  deliveredRate: number;
  /** Offered output = stamped datagrams sent x subscribers. */
  offeredOutRate: number;
  loss: number;
  inputLoss: number;
  worstReceiverLoss: number;
  worstReceiverP99: number;
  latency: Latency;
  cpu: number;
  cpuPerOutUs: number;
  fanCpuUtil: number;
  recvCpuUtil: number;
  /** CPU (in cores) used by everything else on the machine during the run. */
  otherLoad: number;
  steal: number;
  /** ksoftirqd CPU during the run, in CPUs. */
  softirqd: number;
  flags: string[];
  /** Secure mode: frames the receivers could not open (unknown key id, bad header, failed MAC), ... */
  recvUnopened?: number;
  /** ... frames that opened but held no valid CACHE_DATAGRAM Envelope, ... */
  recvBadEnvelope?: number;
  /** ... and datagrams that were no frame at all. */
  recvUnsealed?: number;
  /** Identity mode: data frames that opened at the receivers as link frames (type 3) and group frames (type 4). */
  recvLinkFrames?: number;
  recvGroupFrames?: number;
  /** [port, delivered, p50 µs, p99 µs, max µs] per receiver (scenarios up to 256 subscribers). */
  receivers?: Array<[number, number, number, number, number]>;
  /** Cluster targets: each repeater's share, nats-server's CPU, the direct and the bus path apart. */
  cluster?: ClusterSample;
  /** udprepeater: its GC pauses during the run (gc-preload.ts). */
  gc?: GcFigures;
  /** udprepeater: its live state at the end of the run, and what it evicted and expired during it. */
  state?: StateFigures;
}

export interface TargetResult {
  target: TargetKind;
  samples: Sample[];
  peakRssKiB: number;
  /** The command line that started it, ports of the receivers as {receiver} (absent in older results). */
  command?: string;
  /** How its live state was filled before measuring (state targets). */
  stateNote?: string;
  /** Cluster targets: how the receivers were split between A and B, and each process's peak RSS (KiB). */
  cluster?: { note: string; servedByA: number; servedByB: number; peakRssKiB: { A: number; B: number; nats: number } };
  warnings: string[];
  setupSeconds: number;
}

export interface ScenarioResult {
  scenario: Scenario;
  source: string;
  results: TargetResult[];
  /** Scenarios whose measurements alternated with this one's (a secure scenario and its plain twin). */
  measuredWith?: string[];
}

interface GenReport {
  sent: number;
  stamped: number;
  copies: number;
  errors: number;
  last_error: string;
  t0_ns: number;
  t_end_ns: number;
  elapsed_s: number;
  rate: number;
  max_lag_ms: number;
  cpu_s: number;
  /** Secure mode: the key id it sealed under (hex), its origin, the frames it sealed. */
  key_id?: string;
  origin?: string;
  sealed?: number;
}

interface RecvSocket {
  port: number;
  count: number;
  uniq: number;
  dup: number;
  ooo: number;
  foreign: number;
  drops: number;
  unopened: number;
  badenv: number;
  unsealed: number;
  p50: number;
  p99: number;
  max: number;
  first: number;
  last: number;
}
export interface RecvTotal {
  count: number;
  uniq: number;
  dup: number;
  ooo: number;
  foreign: number;
  drops: number;
  unopened: number;
  badenv: number;
  unsealed: number;
  /** Identity mode: data frames that opened, link frames (type 3) and group frames (type 4). */
  link_data?: number;
  group_data?: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  first: number;
  last: number;
}
export interface RecvDump {
  run: number;
  sockets?: RecvSocket[];
  total: RecvTotal;
  secure: number;
  opens: number;
  cache_hits: number;
  /** Secure mode: the first and last Envelope origin that opened since RUN (hex), and how often it changed. */
  origin_first: string;
  origin_last: string;
  origin_changes: number;
  cpu_s: number;
}

/** The mode a scenario runs in. */
export function modeOf(ctx: Context, sc: { readonly mode?: ModeName }): BenchMode {
  const name = sc.mode ?? 'plain';
  const m = ctx.modes[name];
  if (m === undefined) throw new BenchError(`internal: ${name} mode was not prepared for this run`);
  return m;
}

/** Sealed-gate drop reasons of udprepeater (src/base/stats.ts): any of them in a measurement is a bench or repeater bug. */
export const SEALED_GATE_DROPS = ['unsealed', 'bad_version', 'unknown_key', 'auth_failed', 'stale', 'replay', 'bad_payload', 'own_origin', 'key_mismatch', 'unknown_link', 'unknown_peer', 'revoked', 'wrong_role', 'not_allowed', 'rate_limited'];

let runId = (Math.floor(Math.random() * 0x3fffffff) + 1) >>> 0;
export interface PoolFile {
  path: string;
  text: string;
  count: number;
  spanNs: number;
  meanBytes: number;
}
const poolCache = new Map<string, PoolFile>();

/** Writes (once) the pool file a source needs; returns its path and a description. */
export function poolFor(ctx: Context, src: Source): PoolFile {
  const key = JSON.stringify(src, (_k, v: unknown) => (typeof v === 'object' && v !== null && 'sample' in v ? (v as unknown as { text: string }).text : v));
  const hit = poolCache.get(key);
  if (hit !== undefined) return hit;
  const path = join(ctx.scratch, `pool-${poolCache.size}.bin`);
  let out: PoolFile;
  if (src.kind === 'synthetic') {
    const records = syntheticPool(src.spec);
    writePool(path, records, 0);
    const s = poolSummary(records);
    const unique = src.uniqueKeys === true ? ', every set of a key never seen before (gen --unique-keys)' : '';
    out = { path, text: `${describeSynthetic(src.spec)}${unique} (pool of ${s.count}, mean ${s.meanBytes.toFixed(0)} B)`, count: s.count, spanNs: 0, meanBytes: s.meanBytes };
  } else {
    const cap = readPcap(readFileSync(src.capture), src.capture);
    const p = captureToPool(cap, { dport: src.dport, all: src.all === true });
    writePool(path, p.records, p.spanNs);
    const s = poolSummary(p.records);
    const speed = src.speed === 0 ? 'as fast as possible' : `${src.speed}x`;
    out = {
      path,
      text: `replay of ${src.capture.split('/').pop()} at ${speed} (${s.count} datagrams over ${(p.spanNs / 1e9).toFixed(1)} s, mean ${s.meanBytes.toFixed(0)} B, ${s.stamped} stampable)`,
      count: s.count,
      spanNs: p.spanNs,
      meanBytes: s.meanBytes,
    };
  }
  poolCache.set(key, out);
  return out;
}

/**
 * Generator flags of a synthetic source: each set's expiry rewritten to the
 * send time + its lifetime (a pool built minutes earlier would carry sets
 * that have expired), and unique keys when the source wants them.
 */
export function syntheticArgs(src: Extract<Source, { kind: 'synthetic' }>): string[] {
  return [...(src.spec.lifetime > 0 ? ['--expires-in', String(src.spec.lifetime)] : []), ...(src.uniqueKeys === true ? ['--unique-keys'] : [])];
}

/** Generator flags that pace a source for `duration` seconds, and the most it may send. */
function pacing(src: Source, pool: { count: number; spanNs: number }, duration: number): { args: string[]; cap: number; offered: number | null } {
  if (src.kind === 'synthetic') {
    const cap = Math.ceil(src.rate * duration) + 64;
    return { args: ['--rate', String(src.rate), ...syntheticArgs(src)], cap, offered: src.rate };
  }
  if (src.speed > 0) {
    const rate = (pool.count / (pool.spanNs / 1e9)) * src.speed;
    return { args: ['--timeline', '--loop', '--speed', String(src.speed)], cap: Math.ceil(rate * duration * 1.05) + 1000, offered: rate };
  }
  return { args: ['--timeline', '--loop', '--speed', '0'], cap: Math.ceil(2e6 * duration), offered: null };
}

export async function runGen(
  ctx: Context,
  pool: string,
  to: readonly number[],
  pace: string[],
  duration: number,
  count: number,
  run: number,
  cpu: string | undefined,
  onTick?: (s: number) => void,
  mode: BenchMode = PLAIN,
): Promise<GenReport> {
  const args = ['--pool', pool, ...to.flatMap((p) => ['--to', `127.0.0.1:${p}`]), ...pace];
  args.push('--duration', String(duration), '--count', String(count), '--run', String(run), ...mode.genArgs());
  const gen = Child.spawn('gen', ctx.tools.gen, args, { cpu });
  const t0 = Date.now();
  const ticker = setInterval(() => onTick?.((Date.now() - t0) / 1000), 250);
  try {
    const { code } = await gen.wait((duration + 15) * 1000);
    if (code !== 0) throw new BenchError(`gen exited with ${code}:\n${gen.stderrTail}`);
    const line = gen.drainLines().find((l) => l.startsWith('{'));
    if (line === undefined) throw new BenchError(`gen printed no report:\n${gen.stderrTail}`);
    return JSON.parse(line) as GenReport;
  } finally {
    clearInterval(ticker);
  }
}

/** Starts N receivers; returns the child and their ports. */
export async function startReceivers(ctx: Context, n: number, tag: string, mode: BenchMode = PLAIN): Promise<{ recv: Child; ports: number[]; portsFile: string }> {
  const portsFile = join(ctx.scratch, `ports-${tag}.txt`);
  const recv = Child.spawn('recv', ctx.tools.recv, ['--count', String(n), '--ports-out', portsFile, '--rcvbuf', String(ctx.recvBuffer), ...mode.recvArgs()], {
    cpu: ctx.cpuLoad,
    stdin: true,
  });
  await recv.nextLine((l) => l.startsWith('READY'), 30_000, 'READY from the receivers');
  const ports = readFileSync(portsFile, 'utf8').trim().split('\n').map(Number);
  if (ports.length !== n) throw new BenchError(`receivers reported ${ports.length} ports, expected ${n}`);
  return { recv, ports, portsFile };
}

/** Arms the receivers for run `id` (sequence numbers below `maxseq` are deduplicated). */
export async function arm(recv: Child, id: number, maxseq: number): Promise<void> {
  recv.send(`RUN ${id} ${maxseq}`);
  await recv.nextLine((l) => l === `OK RUN ${id}`, 30_000, `OK RUN ${id}`);
}

/** Waits until arrivals stop (no change for 80 ms), at most `ms`. */
export async function drain(recv: Child, ms = 4000): Promise<RecvDump> {
  const deadline = Date.now() + ms;
  let prev = -1;
  for (;;) {
    const d = await recv.ask<RecvDump>('TOTAL');
    if (d.total.count === prev || Date.now() > deadline) return d;
    prev = d.total.count;
    await sleep(80);
  }
}

/**
 * This machine is shared. Before a measurement, waits (in 100 ms probes)
 * until the rest of the machine uses less than `threshold` CPUs, drawing on
 * a run-wide budget so that a busy machine slows the bench down only so much.
 * Our own idle children count as "the rest" here; they use next to nothing.
 */
export async function awaitQuiet(ctx: Context): Promise<void> {
  const q = ctx.quiet;
  const until = Date.now() + q.perMeasurement * 1000;
  for (;;) {
    const a = machineCpu();
    await sleep(100);
    const busy = (machineCpu().busy - a.busy) / 0.1;
    if (busy < q.threshold || q.spent >= q.budget || Date.now() >= until) return;
    q.spent += 0.1;
    ctx.progress.tick(`waiting for a quiet machine (${(busy * 100).toFixed(0)}% of a CPU busy elsewhere)`);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
export { median };

async function measureOnce(ctx: Context, sc: Scenario, fan: FanOut, recv: Child, pool: ReturnType<typeof poolFor>, rep: number, label: string): Promise<Sample> {
  const { args, cap, offered } = pacing(sc.source, pool, sc.duration);
  const id = (runId = (runId + 1) >>> 0 || 1);
  await arm(recv, id, cap + 1);
  await awaitQuiet(ctx);
  const recvBefore = await recv.ask<RecvDump>('TOTAL');
  const clusterFan = isCluster(fan.kind) ? (fan as ClusterFanOut) : null;
  const cl0: ClusterSnapshot | null = clusterFan === null ? null : await clusterFan.snapshot();
  const gc0: GcSnapshot | null = fan.gcFile === undefined ? null : await freshGc(fan.gcFile, Date.now());
  const before: FanCounters = await fan.counters();
  const cpuOf = () => (fan.cpuSeconds ? fan.cpuSeconds() : cpuSeconds(fan.child.pid));
  const cpu0 = cpuOf();
  const m0 = machineCpu();
  const k0 = ksoftirqdCpu();
  const mode = modeOf(ctx, sc);
  const gen = await runGen(
    ctx,
    pool.path,
    fan.inputPorts ?? [fan.inputPort],
    [...args, ...spreadArgs(fan), ...(fan.genArgs?.() ?? [])],
    sc.duration,
    cap,
    id,
    ctx.cpuLoad,
    (s) => ctx.progress.tick(`${label}: ${s.toFixed(1)}/${sc.duration} s`),
    mode,
  );
  ctx.progress.tick(`${label}: draining`);
  // Cluster: first until the bus is empty (what A published, B took off it), then the receivers.
  if (clusterFan !== null) await clusterFan.settle(10_000);
  await drain(recv);
  const cpu1 = cpuOf();
  const m1 = machineCpu();
  const k1 = ksoftirqdCpu();
  const cl1: ClusterSnapshot | null = clusterFan === null ? null : await clusterFan.snapshot();
  const after = await fan.counters();
  const gc1: GcSnapshot | null = fan.gcFile === undefined ? null : await freshGc(fan.gcFile, Date.now());
  const dump = await recv.ask<RecvDump>(sc.subscribers <= 256 ? 'DUMP' : 'TOTAL', 30_000);
  const t = dump.total;
  const n = sc.subscribers;
  const expected = gen.stamped * n;
  const window = Math.max(gen.elapsed_s, t.last > 0 ? (t.last - gen.t0_ns) / 1e9 : 0);
  // A peer counts nothing: what the receivers got (and their kernels dropped) left it; what the generator sent, less its input's kernel drops, came in.
  const inputDrops = (after.drops['input_rcvbuf'] ?? 0) - (before.drops['input_rcvbuf'] ?? 0);
  const fanIn = fan.countsFromReceivers === true ? Math.max(0, gen.sent - inputDrops) : after.received - before.received;
  const fanOut = fan.countsFromReceivers === true ? t.count + t.drops : after.sent - before.sent;
  const drops: Record<string, number> = {};
  for (const [k, v] of Object.entries(after.drops)) {
    const d = v - (before.drops[k] ?? 0);
    if (d > 0) drops[k] = d;
  }
  const cpu = cpu1 - cpu0;
  const recvCpu = dump.cpu_s - recvBefore.cpu_s;
  // Cluster: nats-server is part of what runs for the fan-out, not "other load" (its CPU is reported apart).
  const natsCpu = cl0 !== null && cl1 !== null ? cl1.natsCpu - cl0.natsCpu : 0;
  // Everything else that ran on the machine meanwhile (other users, our own idle children, the driver).
  const otherLoad = Math.max(0, m1.busy - m0.busy - cpu - natsCpu - recvCpu - gen.cpu_s) / window;
  const steal = (m1.steal - m0.steal) / window;
  const flags: string[] = [];
  if (otherLoad > 0.2) flags.push(`other processes kept ${(otherLoad * 100).toFixed(0)}% of a CPU busy during the run`);
  const ticks = Math.round(cpu * clockTicks());
  if (ticks < 30) flags.push(`the CPU figure rests on ${ticks} clock ticks of ${(1000 / clockTicks()).toFixed(0)} ms: rough at this rate`);
  const softirqd = (k1 - k0) / window;
  if (softirqd > 0.05) flags.push(`ksoftirqd ran ${(softirqd * 100).toFixed(0)}% of a CPU: softirq work escaped the fan-out's CPU figures`);
  if (steal > 0.05) flags.push(`the hypervisor stole ${(steal * 100).toFixed(0)}% of a CPU during the run`);
  if (offered !== null && gen.rate < 0.97 * offered) flags.push(`generator reached only ${(gen.rate / offered * 100).toFixed(0)}% of the offered rate`);
  if (offered !== null && gen.max_lag_ms > 50) flags.push(`generator fell ${gen.max_lag_ms.toFixed(0)} ms behind schedule`);
  if (gen.errors > 0) flags.push(`generator send errors: ${gen.errors} (${gen.last_error})`);
  if (recvCpu / window > 0.85) flags.push(`receivers busy ${(recvCpu / window * 100).toFixed(0)}% of a core`);
  if (t.drops > 0) flags.push(`receiver sockets overflowed: ${t.drops} dropped by the kernel at the receivers`);
  if (mode.name !== 'plain') {
    // Frames that do not open, or a fan-out refusing the generator's frames, are a bench or repeater bug, never load.
    const bad = [t.unopened ? `${t.unopened} did not open` : '', t.badenv ? `${t.badenv} held no valid Envelope` : '', t.unsealed ? `${t.unsealed} were not frames` : ''].filter(Boolean);
    if (bad.length > 0) flags.push(`BUG: of the datagrams the receivers got, ${bad.join(', ')}`);
    const gate = Object.entries(drops).filter(([k]) => SEALED_GATE_DROPS.includes(k) || k === 'unopened' || k === 'badenv');
    if (gate.length > 0) flags.push(`BUG: ${fan.kind} refused frames of the generator: ${gate.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
  // Identity mode: every subscriber acknowledged the group key before the run, so nearly all data comes as group frames.
  if (mode.name === 'identity' && t.uniq > 0 && (t.group_data ?? 0) < 0.9 * ((t.group_data ?? 0) + (t.link_data ?? 0)))
    flags.push(`only ${t.group_data ?? 0} of ${(t.group_data ?? 0) + (t.link_data ?? 0)} data frames at the receivers were group frames`);
  const sockets = dump.sockets ?? [];
  const worstLoss = sockets.length ? Math.max(...sockets.map((s) => (gen.stamped ? 1 - s.uniq / gen.stamped : 0))) : expected ? 1 - t.uniq / expected : 0;
  const sample: Sample = {
    target: fan.kind,
    rep,
    offeredIn: offered,
    genSent: gen.sent,
    genStamped: gen.stamped,
    genRate: gen.rate,
    genElapsed: gen.elapsed_s,
    genMaxLagMs: gen.max_lag_ms,
    genErrors: gen.errors,
    genCpuUtil: gen.elapsed_s > 0 ? gen.cpu_s / gen.elapsed_s : 0,
    fanIn,
    fanOut,
    fanDrops: drops,
    delivered: t.uniq,
    duplicates: t.dup,
    reordered: t.ooo,
    receiverKernelDrops: t.drops,
    ...(mode.name !== 'plain' ? { recvUnopened: t.unopened, recvBadEnvelope: t.badenv, recvUnsealed: t.unsealed } : {}),
    ...(mode.name === 'identity' ? { recvLinkFrames: t.link_data ?? 0, recvGroupFrames: t.group_data ?? 0 } : {}),
    window,
    deliveredRate: t.uniq / window,
    offeredOutRate: (gen.stamped * n) / Math.max(gen.elapsed_s, 1e-9),
    loss: expected > 0 ? 1 - t.uniq / expected : 0,
    inputLoss: gen.sent > 0 ? Math.max(0, 1 - fanIn / gen.sent) : 0,
    worstReceiverLoss: worstLoss,
    worstReceiverP99: sockets.length ? Math.max(...sockets.map((s) => s.p99)) / 1000 : t.p99 / 1000,
    latency: { p50: t.p50 / 1000, p90: t.p90 / 1000, p99: t.p99 / 1000, p999: t.p999 / 1000, max: t.max / 1000 },
    cpu,
    cpuPerOutUs: fanOut > 0 ? (cpu / fanOut) * 1e6 : NaN,
    fanCpuUtil: cpu / window,
    recvCpuUtil: recvCpu / window,
    otherLoad,
    steal,
    softirqd,
    flags,
  };
  if (gc0 !== null && gc1 !== null) sample.gc = gcDelta(gc0, gc1);
  if (before.state !== undefined && after.state !== undefined) {
    sample.state = {
      entries: after.state.entries,
      bytes: after.state.bytes,
      evictions: after.state.evictions - before.state.evictions,
      expired: after.state.expired - before.state.expired,
    };
  }
  if (sockets.length > 0) {
    sample.receivers = sockets.map((s) => [s.port, s.uniq, Math.round(s.p50 / 100) / 10, Math.round(s.p99 / 100) / 10, Math.round(s.max / 100) / 10]);
  }
  if (clusterFan !== null && cl0 !== null && cl1 !== null) {
    sample.cluster = await clusterSample(clusterFan, cl0, cl1, recv, gen.stamped, window, flags);
    // Each receiver is served by exactly one repeater: a copy from both is a cluster bug (or a peer taken for dead).
    if (t.dup > 0) flags.push(`cluster: the receivers got ${t.dup} duplicates (a receiver served by both repeaters)`);
  }
  return sample;
}

/** What the repeater counts per entry beyond its datagram and key (src/path/live-state.ts, ENTRY_OVERHEAD): for sizing only. */
export const ENTRY_OVERHEAD_GUESS = 640;

/** Run ids of the fill traffic: never armed at the receivers (counted as foreign there). */
let fillRun = 0xf0000000;
export const nextFillRun = () => fillRun++;

/** What a live state held at the end of a measurement, and what it evicted and expired during it. */
export interface StateFigures {
  entries: number;
  bytes: number;
  evictions: number;
  expired: number;
}

/**
 * Sends `src`'s datagrams with unique keys until the repeater's state has
 * evicted something (it is full), at most 4 rounds of 1.25 x the entries the
 * bound should hold, and 60 s. Returns a line for the report.
 */
export async function fillState(ctx: Context, fan: RepeaterFanOut, maxBytes: number, src: Extract<Source, { kind: 'synthetic' }>, onTick: (s: string) => void): Promise<string> {
  const pool = poolFor(ctx, src);
  const meanKey = (src.spec.keySize.min + src.spec.keySize.max) / 2;
  const perEntry = pool.meanBytes + meanKey + ENTRY_OVERHEAD_GUESS;
  const round = Math.ceil((1.25 * maxBytes) / perEntry);
  const t0 = Date.now();
  let sent = 0;
  for (let i = 0; i < 4 && Date.now() - t0 < 60_000; i++) {
    onTick(`filling the live state (${(maxBytes / 2 ** 20).toFixed(0)} MiB): round ${i + 1}`);
    const args = ['--rate', String(src.rate), ...syntheticArgs({ ...src, uniqueKeys: true })];
    const g = await runGen(ctx, pool.path, [fan.inputPort], args, round / src.rate + 5, round, nextFillRun(), ctx.cpuLoad);
    sent += g.sent;
    await sleep(200);
    const st = (await fan.counters()).state;
    if (st !== undefined && st.evictions > 0) {
      return `state filled before measuring: ${sent} sets of new keys in ${((Date.now() - t0) / 1000).toFixed(1)} s; then ${st.entries} entries, ${(st.bytes / 2 ** 20).toFixed(1)} MiB counted of ${(maxBytes / 2 ** 20).toFixed(0)} MiB, ${st.evictions} evicted`;
    }
  }
  const st = (await fan.counters()).state;
  return `state NOT full after ${sent} sets of new keys (${st?.entries ?? '?'} entries, ${((st?.bytes ?? 0) / 2 ** 20).toFixed(1)} MiB counted of ${(maxBytes / 2 ** 20).toFixed(0)} MiB, no eviction): the figures are of a state that was not full`;
}

async function warm(ctx: Context, sc: Scenario, fan: FanOut, pool: ReturnType<typeof poolFor>): Promise<void> {
  if (ctx.warmup <= 0) return;
  const { args } = pacing(sc.source, pool, ctx.warmup);
  // A run id the receivers are not armed for: its arrivals are counted as foreign and ignored.
  await runGen(ctx, pool.path, fan.inputPorts ?? [fan.inputPort], [...args, ...spreadArgs(fan), ...(fan.genArgs?.() ?? [])], ctx.warmup, Math.ceil(2e6 * ctx.warmup), 0, ctx.cpuLoad, undefined, modeOf(ctx, sc));
  await sleep(100);
}

/** A fan-out with several inputs (cluster, input split) gets datagram i on input i mod N. */
function spreadArgs(fan: FanOut): string[] {
  return (fan.inputPorts?.length ?? 1) > 1 ? ['--spread'] : [];
}

export function fmtRate(r: number): string {
  return r >= 1e6 ? `${(r / 1e6).toFixed(2)}M` : r >= 1e3 ? `${(r / 1e3).toFixed(1)}k` : r.toFixed(0);
}

/** Ephemeral ports the kernel hands out (bind to port 0, or connect on an unbound socket). */
function ephemeralPorts(): number {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    return hi! - lo! + 1;
  } catch {
    return 28232;
  }
}

/**
 * Both fan-outs normally run side by side and the measurements alternate
 * between them. Each output socket of a fan-out holds an ephemeral port, as
 * does each receiver: with many subscribers they would not all fit (and the
 * second fan-out would fail to connect some outputs), so then the fan-outs
 * run one after the other.
 */
export function interleaves(sc: Scenario): boolean {
  return sc.subscribers * (sc.targets.length + 1) + 2000 < ephemeralPorts();
}

/** Whether scenarios measured together (their fan-outs all side by side) fit in the ephemeral ports. */
function groupFits(scs: readonly Scenario[]): boolean {
  return scs.reduce((n, sc) => n + sc.subscribers * (sc.targets.length + 1), 0) + 2000 < ephemeralPorts();
}

/** One scenario of a group: its load, receivers and measurements. */
interface Lane {
  readonly sc: Scenario;
  readonly pool: ReturnType<typeof poolFor>;
  readonly mode: BenchMode;
  readonly recv: Child;
  readonly ports: number[];
  readonly portsFile: string;
  readonly samples: Map<TargetKind, Sample[]>;
  readonly results: TargetResult[];
  readonly setup: Map<TargetKind, number>;
  readonly stateNotes: Map<TargetKind, string>;
}

export async function runScenario(ctx: Context, sc: Scenario): Promise<ScenarioResult> {
  return (await runGroup(ctx, [sc]))[0]!;
}

/**
 * Measures scenarios together: each has its own receivers and fan-outs,
 * all started side by side, and the measurements rotate over every fan-out
 * of every scenario (floor / udprepeater of the first, then of the second,
 * order reversed on every repeat), so that a secure scenario and its plain
 * twin see the same noise. One scenario alone alternates its fan-outs as
 * before; when they would not fit in the ephemeral ports side by side, the
 * scenarios run one after the other.
 */
export async function runGroup(ctx: Context, scs: readonly Scenario[]): Promise<ScenarioResult[]> {
  if (scs.length > 1 && !groupFits(scs)) {
    const out: ScenarioResult[] = [];
    for (const sc of scs) out.push(await runScenario(ctx, sc));
    return out;
  }
  const lanes: Lane[] = [];
  const live: FanOut[] = [];
  const start = async (lane: Lane, kind: TargetKind): Promise<FanOut> => {
    const { sc, mode, ports, portsFile } = lane;
    const t0 = Date.now();
    // Cluster mode needs channel= on every listener; the standalone repeater of a cluster scenario gets the same listener.
    const opts = { cpu: ctx.cpuFanout, repeaterArgs: ctx.repeaterArgs, recvBuffer: ctx.recvBuffer, ...(sc.cluster ? { listen: `127.0.0.1:0,channel=${CHANNEL_KEY}` } : {}) };
    let fan: FanOut;
    let stateNote: string | undefined;
    if (kind === 'floor') fan = await startFloor(ctx.tools, mode, portsFile, opts);
    else if (isPeer(kind)) {
      const spec = ctx.peers.get(kind);
      if (spec === undefined) throw new BenchError(`internal: no --peer-cmd for ${kind}`);
      if (sc.dynamic || mode.name !== 'plain') throw new BenchError(`internal: ${kind} in a scenario with ${sc.dynamic ? 'dynamic subscribers' : `${mode.name} mode`}`);
      fan = await startPeer(spec, ports, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer });
      live.push(fan);
    }
    else if (isCluster(kind)) {
      const c = ctx.cluster;
      if (c === undefined || sc.cluster === undefined) throw new BenchError(`internal: ${kind} outside a cluster scenario`);
      if (sc.dynamic) throw new BenchError('internal: cluster scenarios use static subscribers');
      let keyFile: string | null = null;
      if (kind === 'udprepeater-cluster-sealed') {
        // One key for the run's sealed buses, made by the real CLI on first use.
        c.keyFile ??= keygen(join(ctx.scratch, 'cluster.key')).file;
        keyFile = c.keyFile;
      }
      fan = await startCluster(kind, mode, ports, {
        ...opts,
        cpu: c.cpuA,
        cpuB: c.cpuB,
        natsCpu: c.cpuNats,
        natsServer: c.natsServer,
        input: sc.cluster.input,
        keyFile,
        onProgress: (s) => ctx.progress.tick(s),
      });
      live.push(fan);
    } else {
      const dynArgs = sc.dynamic
        ? ['--max-subscribers', String(sc.subscribers + 16), '--subscribe-rate', '1000000', '--subscribe-burst', '1000000', '--tolerance', '3600']
        : [];
      if (!isRepeater(kind)) throw new BenchError(`internal: unknown target ${kind}`);
      const gcFile = ctx.gcStats ? join(ctx.scratch, `gc-${sc.id}-${kind}.json`) : undefined;
      const rep: RepeaterFanOut = await startRepeater(
        mode,
        sc.dynamic ? [] : ports,
        { ...opts, repeaterArgs: [...dynArgs, ...ctx.repeaterArgs], ...(gcFile === undefined ? {} : { gcFile }) },
        kind,
      );
      live.push(rep);
      if (mode.link !== undefined) {
        // Identity mode: the keys exist once this repeater runs; the harness links the writer and every receiver.
        ctx.progress.tick(`linking ${sc.subscribers} node identities and the writer`);
        const linked = await mode.link(rep, ports, lane.recv);
        const linkedRep: RepeaterFanOut = { ...rep, genArgs: linked.genArgs, stop: async () => (linked.close(), rep.stop()) };
        live.splice(live.indexOf(rep), 1, linkedRep);
        lane.stateNotes.set(kind, linked.note);
        fan = linkedRep;
      } else fan = rep;
      const fill = REPEATER_VARIANTS[kind].fillState;
      if (fill !== undefined) {
        if (sc.source.kind !== 'synthetic') throw new BenchError(`internal: ${kind} needs a synthetic source to fill its state`);
        stateNote = await fillState(ctx, rep, fill, sc.source, (x) => ctx.progress.tick(x));
      }
      if (sc.dynamic) {
        ctx.progress.tick(`subscribing ${sc.subscribers} receivers`);
        await subscribeAll(rep, mode, ports, CHANNEL_KEY, (n) => ctx.progress.tick(`subscribed ${n}/${sc.subscribers}`));
      }
    }
    if (!live.includes(fan)) live.push(fan);
    if (stateNote !== undefined) lane.stateNotes.set(kind, stateNote);
    lane.setup.set(kind, (Date.now() - t0) / 1000);
    await warm(ctx, sc, fan, lane.pool);
    return fan;
  };
  const finish = async (lane: Lane, fan: FanOut) => {
    const peak = fan.peakRssKiB ? fan.peakRssKiB() : memory(fan.child.pid).peakKiB;
    const r: TargetResult = {
      target: fan.kind,
      samples: lane.samples.get(fan.kind)!,
      peakRssKiB: peak,
      ...(fan.command === undefined ? {} : { command: fan.command }),
      ...(lane.stateNotes.has(fan.kind) ? { stateNote: lane.stateNotes.get(fan.kind)! } : {}),
      warnings: [...fan.warnings],
      setupSeconds: lane.setup.get(fan.kind) ?? 0,
    };
    if (isCluster(fan.kind)) {
      const c = fan as ClusterFanOut;
      r.cluster = { note: c.note, servedByA: c.servedBy.A.length, servedByB: c.servedBy.B.length, peakRssKiB: c.peakRssParts() };
    }
    lane.results.push(r);
    await fan.stop();
    live.splice(live.indexOf(fan), 1);
  };
  const measure = async (lane: Lane, fan: FanOut, rep: number) => {
    const label = `${lane.sc.title}: ${fan.kind} ${rep + 1}/${lane.sc.repeats}`;
    ctx.progress.next(label);
    lane.samples.get(fan.kind)!.push(await measureOnce(ctx, lane.sc, fan, lane.recv, lane.pool, rep, label));
  };
  try {
    for (const sc of scs) {
      const mode = modeOf(ctx, sc);
      const pool = poolFor(ctx, sc.source);
      const r = await startReceivers(ctx, sc.subscribers, sc.id, mode);
      lanes.push({ sc, pool, mode, ...r, samples: new Map(sc.targets.map((k) => [k, []])), results: [], setup: new Map(), stateNotes: new Map() });
    }
    if (scs.length > 1 || interleaves(scs[0]!)) {
      const fans: Array<[Lane, FanOut]> = [];
      for (const lane of lanes) for (const kind of lane.sc.targets) fans.push([lane, await start(lane, kind)]);
      const repeats = Math.max(...scs.map((sc) => sc.repeats));
      for (let rep = 0; rep < repeats; rep++) {
        // Alternate the order so that no fan-out always runs first.
        for (const [lane, fan] of rep % 2 === 0 ? fans : [...fans].reverse()) if (rep < lane.sc.repeats) await measure(lane, fan, rep);
      }
      for (const [lane, fan] of fans) await finish(lane, fan);
    } else {
      const lane = lanes[0]!;
      for (const kind of lane.sc.targets) {
        const fan = await start(lane, kind);
        for (let rep = 0; rep < lane.sc.repeats; rep++) await measure(lane, fan, rep);
        await finish(lane, fan);
      }
    }
    return lanes.map((l) => ({
      scenario: l.sc,
      source: l.pool.text,
      results: l.results,
      ...(scs.length > 1 ? { measuredWith: scs.filter((x) => x !== l.sc).map((x) => x.id) } : {}),
    }));
  } finally {
    for (const f of live) await f.stop();
    for (const l of lanes) await l.recv.stop();
  }
}

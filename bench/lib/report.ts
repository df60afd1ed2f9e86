// Turns measurements into bench/results/<name>.json (every raw sample),
// <name>.md (tables of medians, udprepeater as ratios to the floor) and
// <name>.svg (delivered rate and CPU per output datagram against the number
// of subscribers). Hand-written SVG: no dependencies.

import { identitySection } from './identity-report.js';
import type { ModeName } from './modes.js';
import type { RevocationResult } from './revocation.js';
import { writeFileSync } from 'node:fs';
import type { CapacityResult } from './capacity.js';
import type { Machine } from './machine.js';
import { fmtRate, interleaves, median, type Sample, type ScenarioResult, SEALED_GATE_DROPS } from './measure.js';
import { kfmt } from './plan.js';
import { figuresSection } from './figures.js';
import type { MemoryResult } from './state.js';
import { isCluster, type TargetKind, targetName } from './targets.js';

export interface RunInfo {
  readonly command: string;
  /** Identity mode: the revocation latency (null: not measured in this run). */
  readonly identity?: { readonly revocation: RevocationResult | null; readonly check?: readonly string[] };
  readonly mode: string;
  readonly quick: boolean;
  readonly started: string;
  readonly seconds: number;
  readonly pinning: string;
  readonly repeats: number;
  readonly duration: number;
  readonly warmup: number;
  readonly machine: Machine;
  readonly repeaterArgs: readonly string[];
  readonly recvBuffer: number;
  readonly gitHead: string | null;
  readonly quiet: { threshold: number; budget: number; perMeasurement: number; spent: number };
  readonly repeaterPath: string;
  readonly targets: readonly TargetKind[];
  /** Secure mode in this run (absent in older results): its key, libsodium, the interoperability check's lines. */
  readonly secure?: { keyId: string; keyFile: string; libsodium: string; openEvery: boolean; check: string[] } | null;
  /** Cluster scenarios in this run (absent in older results): nats-server, where the cluster ran, what was asked for. */
  readonly cluster?: { natsServer: string; pinning: string; variants: string[]; points: string[] } | null;
  /** Other fan-out programs (--peer-cmd), as given. */
  readonly peers?: ReadonlyArray<{ name: string; command: string }>;
  /** Load average (1, 5, 15 min) when the run ended. */
  readonly loadEnd?: readonly number[];
  /** Whether udprepeater's GC pauses were counted (gc-preload.ts). */
  readonly gcStats?: boolean;
}

/** Secure mode's target: udprepeater's CPU per output datagram at most this many times plain mode's. */
export const SECURE_TARGET = 1.15;

export interface TargetSummary {
  target: TargetKind;
  repeats: number;
  /** Measurements the medians are taken over. */
  used: number;
  /** True when those are the quiet ones only. */
  quietUsed: boolean;
  offeredIn: number | null;
  inRate: number;
  offeredOutRate: number;
  deliveredRate: number;
  loss: number;
  inputLoss: number;
  worstReceiverLoss: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  worstReceiverP99: number;
  cpuPerOutUs: number;
  fanCpuUtil: number;
  /** The fan-out's CPU time over the generator's run: the cores it needed to keep up (absent in older results). */
  cores?: number;
  /** Its CPU per datagram read from its input. */
  cpuPerInUs?: number;
  recvCpuUtil: number;
  otherLoad: number;
  peakRssMiB: number;
  drops: Record<string, number>;
  flags: string[];
  /** Secure mode: frames the receivers could not open, or that held no valid Envelope, or were no frames (per measurement, mean). */
  recvErrors: number;
  /** Cluster targets: medians of each repeater's share, nats-server and the two paths. */
  cluster?: ClusterSummary;
  /** udprepeater: GC pauses per measurement (medians of count and total; the largest pause of any measurement used). */
  gc?: { count: number; totalMs: number; maxMs: number; measurementS: number };
  /** udprepeater: its live state (medians): entries and bytes after a measurement, evictions per second of the generator's run. */
  state?: { entries: number; bytes: number; evictionsPerS: number; expiredPerS: number };
  /** How its state was filled before measuring (state targets). */
  stateNote?: string;
  /** The command line that started it (absent in older results). */
  command?: string;
}

/** Medians of a cluster target's measurements (rates per second of the run, CPU as a share of one core, latency in µs). */
export interface ClusterSummary {
  input: 'one' | 'split';
  sealed: boolean;
  /** How the receivers were split between A and B. */
  note: string;
  servedByA: number;
  servedByB: number;
  /**
   * Per repeater, rates per second of the generator's run (what it had to keep up with); `cores`: its CPU time
   * over that time, the cores it needed to keep up (above 1: it could not, and caught up after the generator stopped).
   */
  members: Array<{
    name: 'A' | 'B';
    inRate: number;
    outRate: number;
    publishedRate: number;
    fromBusRate: number;
    cores: number;
    cpuPerOutUs: number;
    /** CPU per datagram it handled (read from its listener or taken off the bus). */
    cpuPerDatagramUs: number;
    peakRssMiB: number;
  }>;
  natsCores: number;
  natsCpuPerMessageUs: number;
  natsCpuPerOutUs: number;
  natsPeakRssMiB: number;
  totalCpuPerOutUs: number;
  /** Bus messages carrying datagrams, per second of the generator's run. */
  busMessagesRate: number;
  /** Datagrams per such bus message (the batching; NaN in results from before the datagram counters). */
  datagramsPerBusMessage?: number;
  paths: Record<'direct' | 'bus', { receivers: number; deliveredRate: number; loss: number; p50: number; p90: number; p99: number; max: number }>;
}

export interface Ratios {
  deliveredRate: number;
  cpuPerOut: number;
  p50: number;
  p99: number;
  max: number;
}

export interface ScenarioSummary {
  id: string;
  title: string;
  series: number | null;
  subscribers: number;
  dynamic: boolean;
  interleaved: boolean;
  source: string;
  mode: ModeName;
  /** Secure and identity scenarios: the plain scenario with the same load. */
  twin: string | null;
  /** Scenarios whose measurements alternated with this one's. */
  measuredWith: string[];
  targets: Partial<Record<TargetKind, TargetSummary>>;
  /** Each udprepeater variant / floor, when both ran. */
  ratios: Partial<Record<TargetKind, Ratios>>;
}

/** The targets of a scenario that ran, in the order they were measured. */
export function targetList<T>(m: Partial<Record<TargetKind, T>>): T[] {
  return Object.values(m).filter((t): t is T => t !== undefined);
}

/** A measurement counts as quiet when everything else on the machine used less than this many CPUs. */
export const QUIET_LOAD = 0.1;

export function summarize(r: ScenarioResult): ScenarioSummary {
  const targets: Partial<Record<TargetKind, TargetSummary>> = {};
  for (const t of r.results) {
    // Medians over the measurements the rest of the machine left alone, when there are at least two.
    const quiet = t.samples.filter((x) => x.otherLoad < QUIET_LOAD && x.steal < 0.05);
    const s = quiet.length >= Math.min(2, t.samples.length) ? quiet : t.samples;
    const m = (f: (x: Sample) => number) => median(s.map(f));
    const drops: Record<string, number> = {};
    for (const x of s) for (const [k, v] of Object.entries(x.fanDrops)) drops[k] = (drops[k] ?? 0) + v / s.length;
    // Group flags by kind (numbers masked), say in how many measurements each came up.
    const kinds = new Map<string, { first: string; n: number }>();
    for (const x of s) {
      // "Behind schedule" means nothing for an as-fast-as-possible source (results of older runs carry it).
      for (const f of new Set(x.flags.filter((g) => x.offeredIn !== null || !g.includes('behind schedule')))) {
        const k = f.replace(/[0-9]+(\.[0-9]+)?/g, '#');
        const e = kinds.get(k);
        if (e === undefined) kinds.set(k, { first: f, n: 1 });
        else e.n++;
      }
    }
    targets[t.target] = {
      target: t.target,
      repeats: t.samples.length,
      used: s.length,
      quietUsed: s === quiet,
      offeredIn: s[0]?.offeredIn ?? null,
      inRate: m((x) => x.genRate),
      offeredOutRate: m((x) => x.offeredOutRate),
      deliveredRate: m((x) => x.deliveredRate),
      loss: m((x) => x.loss),
      inputLoss: m((x) => x.inputLoss),
      worstReceiverLoss: m((x) => x.worstReceiverLoss),
      p50: m((x) => x.latency.p50),
      p90: m((x) => x.latency.p90),
      p99: m((x) => x.latency.p99),
      max: m((x) => x.latency.max),
      worstReceiverP99: m((x) => x.worstReceiverP99),
      cpuPerOutUs: m((x) => x.cpuPerOutUs),
      fanCpuUtil: m((x) => x.fanCpuUtil),
      cores: m((x) => x.cpu / Math.max(x.genElapsed, 1e-9)),
      cpuPerInUs: m((x) => (x.fanIn > 0 ? (x.cpu / x.fanIn) * 1e6 : NaN)),
      recvCpuUtil: m((x) => x.recvCpuUtil),
      peakRssMiB: t.peakRssKiB / 1024,
      drops,
      otherLoad: m((x) => x.otherLoad),
      recvErrors: s.reduce((n, x) => n + (x.recvUnopened ?? 0) + (x.recvBadEnvelope ?? 0) + (x.recvUnsealed ?? 0), 0) / Math.max(1, s.length),
      flags: [...kinds.values()].map((e) => `${e.first} (${e.n} of ${s.length} measurements${e.n > 1 ? '; first shown' : ''})`),
      ...(t.command === undefined ? {} : { command: t.command }),
      ...(t.stateNote === undefined ? {} : { stateNote: t.stateNote }),
    };
    const gs = s.filter((x) => x.gc !== undefined);
    if (gs.length > 0) {
      targets[t.target]!.gc = {
        count: median(gs.map((x) => x.gc!.count)),
        totalMs: median(gs.map((x) => x.gc!.totalMs)),
        maxMs: Math.max(...gs.map((x) => x.gc!.maxMs)),
        measurementS: median(gs.map((x) => x.genElapsed)),
      };
    }
    const ss = s.filter((x) => x.state !== undefined);
    if (ss.length > 0) {
      targets[t.target]!.state = {
        entries: median(ss.map((x) => x.state!.entries)),
        bytes: median(ss.map((x) => x.state!.bytes)),
        evictionsPerS: median(ss.map((x) => x.state!.evictions / Math.max(x.genElapsed, 1e-9))),
        expiredPerS: median(ss.map((x) => x.state!.expired / Math.max(x.genElapsed, 1e-9))),
      };
    }
    const cs = s.filter((x) => x.cluster !== undefined);
    if (isCluster(t.target) && cs.length > 0) {
      // Rates over the generator's run: the load each process had to keep up with.
      const c = (f: (x: NonNullable<Sample['cluster']>, w: number) => number) => median(cs.map((x) => f(x.cluster!, Math.max(x.genElapsed, 1e-9))));
      const first = cs[0]!.cluster!;
      const rss = t.cluster?.peakRssKiB;
      const path = (k: 'direct' | 'bus') => ({
        receivers: first[k].receivers,
        deliveredRate: c((x, w) => x[k].delivered / w),
        loss: c((x) => x[k].loss),
        p50: c((x) => x[k].p50),
        p90: c((x) => x[k].p90),
        p99: c((x) => x[k].p99),
        max: c((x) => x[k].max),
      });
      targets[t.target]!.cluster = {
        input: first.input,
        sealed: first.sealed,
        note: t.cluster?.note ?? '',
        servedByA: t.cluster?.servedByA ?? NaN,
        servedByB: t.cluster?.servedByB ?? NaN,
        members: ([0, 1] as const).map((i) => ({
          name: i === 0 ? ('A' as const) : ('B' as const),
          inRate: c((x, w) => x.members[i]!.received / w),
          outRate: c((x, w) => x.members[i]!.forwarded / w),
          publishedRate: c((x, w) => x.members[i]!.published / w),
          fromBusRate: c((x, w) => x.members[i]!.fromBus / w),
          cores: c((x, w) => x.members[i]!.cpu / w),
          cpuPerOutUs: c((x) => x.members[i]!.cpuPerOutUs),
          cpuPerDatagramUs: c((x) => (x.members[i]!.cpu / Math.max(1, x.members[i]!.received + x.members[i]!.fromBus)) * 1e6),
          peakRssMiB: rss === undefined ? NaN : (i === 0 ? rss.A : rss.B) / 1024,
        })),
        natsCores: c((x, w) => x.natsCpu / w),
        natsCpuPerMessageUs: c((x) => x.natsCpuPerMessageUs),
        natsCpuPerOutUs: c((x) => x.natsCpuPerOutUs),
        natsPeakRssMiB: rss === undefined ? NaN : rss.nats / 1024,
        totalCpuPerOutUs: c((x) => x.totalCpuPerOutUs),
        busMessagesRate: c((x, w) => x.busMessages / w),
        datagramsPerBusMessage: c((x) => (x.busDatagrams ?? NaN) / x.busMessages),
        paths: { direct: path('direct'), bus: path('bus') },
      };
    }
  }
  const f = targets.floor;
  const ratios: Partial<Record<TargetKind, Ratios>> = {};
  for (const u of targetList(targets)) {
    if (f === undefined || u.target === 'floor') continue;
    ratios[u.target] = { deliveredRate: u.deliveredRate / f.deliveredRate, cpuPerOut: u.cpuPerOutUs / f.cpuPerOutUs, p50: u.p50 / f.p50, p99: u.p99 / f.p99, max: u.max / f.max };
  }
  const sc = r.scenario;
  return {
    id: sc.id,
    title: sc.title,
    series: sc.series,
    subscribers: sc.subscribers,
    dynamic: sc.dynamic,
    interleaved: interleaves(sc),
    source: r.source,
    mode: sc.mode ?? 'plain',
    twin: sc.twin ?? null,
    measuredWith: r.measuredWith ?? [],
    targets,
    ratios,
  };
}

const pct = (x: number) => (!Number.isFinite(x) ? '-' : x === 0 ? '0' : x < 0.0001 ? '<0.01%' : `${(x * 100).toFixed(x < 0.01 ? 2 : 1)}%`);
const us = (x: number) => (!Number.isFinite(x) ? '-' : x >= 100000 ? `${(x / 1000).toFixed(0)} ms` : x >= 1000 ? `${(x / 1000).toFixed(1)} ms` : `${x.toFixed(x < 10 ? 1 : 0)} µs`);
const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');
const cpuUs = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');

export function markdown(info: RunInfo, sums: ScenarioSummary[], cap: CapacityResult[], memory: readonly MemoryResult[] = []): string {
  const m = info.machine;
  const L: string[] = [];
  const modeText = info.mode === 'both' ? `plain and secure modes${info.cluster ? ', cluster mode' : ''}` : `${info.mode} mode`;
  L.push(`# udprepeater bench (${info.quick ? 'quick' : 'full'} run, ${modeText})`, '');
  L.push(`Produced by \`${info.command}\` on ${info.started} in ${info.seconds.toFixed(0)} s${info.gitHead ? ` (tree at ${info.gitHead})` : ''}.`, '');
  L.push(
    `Machine: ${m.nproc} x ${m.cpuModel}, Linux ${m.kernel}, Node ${m.node}, ${m.memGiB} GiB RAM, ` +
      `net.core.rmem_max ${m.rmemMax}, wmem_max ${m.wmemMax}, rmem_default ${m.rmemDefault}, netdev_max_backlog ${m.netdevMaxBacklog}, ` +
      `load average ${m.loadAvg1m} at start, cgroup cpu.max ${m.cgroupCpuMax ?? 'n/a'}, open files ${m.fdLimit ?? '?'}, ${m.compiler}.`,
    '',
  );
  L.push(
    `Method: ${info.pinning}. Every figure is a median over ${info.repeats} measurements of ${info.duration} s (the 10k-subscriber run may be longer), ` +
      `taken over the quiet ones only (the rest of the machine used less than ${QUIET_LOAD} CPU) when at least two were quiet; the last column says which; ` +
      `the fan-outs (${info.targets.join(', ')}) alternating, after a ${info.warmup} s warm-up of each. ` +
      `SO_RCVBUF ${info.recvBuffer} for the fan-out input and every receiver. udprepeater flags added: \`${info.repeaterArgs.join(' ') || '(none)'}\`. ` +
      `Before each measurement the bench waited for the rest of the machine to use less than ${info.quiet.threshold} CPU ` +
      `(${info.quiet.spent.toFixed(1)} s spent waiting, budget ${info.quiet.budget} s).`,
    '',
  );

  L.push(...figuresSection(info, sums, memory));
  L.push(...secureSection(info, sums));
  L.push(...identitySection(info, sums));
  L.push(...clusterSection(info, sums));

  L.push('## udprepeater against the floor', '');
  L.push('Ratios are udprepeater / floor: above 1x is worse for CPU and latency, below 1x is worse for delivered rate.', '');
  L.push(
    'On this shared VM a single scheduling stall of a few tens of ms during a measurement sets its p99 and max (1% of a 3 s run is 30 ms of traffic): ' +
      'compare p50 and p90, and CPU per output, before reading anything into p99.',
    '',
  );
  L.push(`udprepeater's datagram path in this run: ${info.repeaterPath}${info.targets.includes('udprepeater-dgram') ? '; udprepeater-dgram is the same build with UDPREPEATER_NATIVE=0 (node:dgram)' : ''}.`, '');
  L.push('| scenario | target | delivered out/s: target / floor | ratio | loss: target / floor | CPU µs per output: target / floor | ratio | p50 latency | p90 latency | p99 latency | max latency | peak RSS MiB | medians of (target / floor) |');
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const usedText = (t: TargetSummary) => (t.quietUsed ? `${t.used} quiet` : `all ${t.repeats}`);
  for (const s of sums) {
    const f = s.targets.floor;
    for (const u of targetList(s.targets)) {
      const r = s.ratios[u.target];
      if (!f || !r) continue;
      L.push(
        `| ${s.title} | ${targetName(u.target)} | ${fmtRate(u.deliveredRate)} / ${fmtRate(f.deliveredRate)} | ${ratio(r.deliveredRate)} | ${pct(u.loss)} / ${pct(f.loss)} | ` +
          `${cpuUs(u.cpuPerOutUs)} / ${cpuUs(f.cpuPerOutUs)} | ${ratio(r.cpuPerOut)} | ${us(u.p50)} / ${us(f.p50)} (${ratio(r.p50)}) | ${us(u.p90)} / ${us(f.p90)} | ` +
          `${us(u.p99)} / ${us(f.p99)} (${ratio(r.p99)}) | ${us(u.max)} / ${us(f.max)} | ${u.peakRssMiB.toFixed(0)} / ${f.peakRssMiB.toFixed(1)} | ` +
          `${usedText(u)} / ${usedText(f)} |`,
      );
    }
  }
  L.push('');

  L.push('## All figures (medians)', '');
  L.push(
    '| scenario | target | offered in/s | sent in/s | offered out/s | delivered out/s | loss | lost at input | worst receiver loss | p50 | p99 | max | worst receiver p99 | CPU µs per output | CPU µs per datagram in | GC pauses: count, total, largest | live state: entries, evicted/s | fan-out CPU | receivers CPU | other load | peak RSS MiB | medians of |',
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of sums) {
    for (const t of targetList(s.targets)) {
      L.push(
        `| ${s.title} | ${targetName(t.target)} | ${t.offeredIn === null ? 'max' : fmtRate(t.offeredIn)} | ${fmtRate(t.inRate)} | ${fmtRate(t.offeredOutRate)} | ` +
          `${fmtRate(t.deliveredRate)} | ${pct(t.loss)} | ${pct(t.inputLoss)} | ${pct(t.worstReceiverLoss)} | ${us(t.p50)} | ${us(t.p99)} | ${us(t.max)} | ` +
          `${us(t.worstReceiverP99)} | ${cpuUs(t.cpuPerOutUs)} | ${cpuUs(t.cpuPerInUs ?? NaN)} | ${t.gc ? `${t.gc.count.toFixed(0)}, ${t.gc.totalMs.toFixed(1)} ms, ${t.gc.maxMs.toFixed(2)} ms` : '-'} | ` +
          `${t.state ? `${t.state.entries.toFixed(0)}, ${fmtRate(t.state.evictionsPerS)}` : '-'} | ${pct(t.fanCpuUtil)} | ${pct(t.recvCpuUtil)} | ${pct(t.otherLoad)} | ${t.peakRssMiB.toFixed(1)} | ${t.quietUsed ? `${t.used} quiet of ${t.repeats}` : `all ${t.repeats}`} |`,
      );
    }
  }
  L.push('');
  L.push('Sources:', '');
  for (const s of sums) {
    const how = s.mode === 'identity' ? '; receivers linked by node identity (sealed SUBSCRIBE under each link)' : s.dynamic ? '; receivers subscribed with uWSGI subscription packets (224/0)' : '; static --to subscribers';
    const order = s.interleaved
      ? s.measuredWith.length > 0
        ? `; measured alternating with ${s.measuredWith.join(', ')} (all fan-outs side by side)`
        : ''
      : '; the fan-outs ran one after the other (side by side they would need more ephemeral ports than the kernel has)';
    L.push(`- ${s.title} (id ${s.id}): ${s.source}${how}${order}`);
  }
  L.push('');

  const dropLines = sums.flatMap((s) =>
    targetList(s.targets)
      .filter((t) => Object.keys(t.drops).length > 0)
      .map((t) => `- ${s.title}, ${t.target}: ${Object.entries(t.drops).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')} (mean per measurement)`),
  );
  const flagLines = sums.flatMap((s) => targetList(s.targets).flatMap((t) => t.flags.map((f) => `- ${s.title}, ${t.target}: ${f}`)));
  L.push('## Drops reported by the fan-outs', '');
  L.push(...(dropLines.length ? dropLines : ['None.']), '');
  L.push('## Warnings about the load itself', '');
  L.push('A figure measured while the generator or the receivers were the limit is about the load tools, not the fan-out.', '');
  L.push(...(flagLines.length ? flagLines : ['None: the generator kept its schedule and the receivers kept up in every measurement.']), '');

  if (cap.length > 0) {
    L.push('## Load tools on their own (generator straight to receivers)', '');
    L.push('The generator sends each datagram to every receiver itself (no fan-out); it runs on the fan-out CPU, the receivers on theirs.', '');
    L.push('| check | offered copies/s | sent copies/s | delivered/s | loss | kernel drops at receivers | p50 | p99 | max | generator µs CPU per copy | receivers µs CPU per datagram | generator CPU | receivers CPU | other load |');
    L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const c of cap) {
      const x = c.median;
      L.push(
        `| ${c.case.title} | ${x.offeredCopies === null ? 'max' : fmtRate(x.offeredCopies)} | ${fmtRate(x.copiesRate)} | ${fmtRate(x.deliveredRate)} | ${pct(x.loss)} | ${x.receiverKernelDrops.toFixed(0)} | ` +
          `${us(x.latency.p50)} | ${us(x.latency.p99)} | ${us(x.latency.max)} | ${cpuUs(x.genCpuPerCopyUs)} | ${cpuUs(x.recvCpuPerDatagramUs)} | ${pct(x.genCpuUtil)} | ${pct(x.recvCpuUtil)} | ${pct(x.otherLoad)} |`,
      );
    }
    L.push('');
    L.push(
      'Per-datagram CPU costs are the capacity figures: one core sends about 1/(generator µs) copies per second and receives about ' +
        '1/(receivers µs) datagrams per second (at low rates wake-ups dominate and the per-datagram figures are higher). ' +
        'In the fan-out runs the generator sends only the input rate, and the receivers\' CPU column shows how much room they had.',
      '',
    );
  }

  L.push('## Reading the figures', '');
  L.push(
    '- offered in/s: the generator schedule; sent in/s: what it achieved; offered out/s = sent stamped datagrams x subscribers.',
    '- delivered out/s: distinct (run, sequence) datagrams that reached the receivers, all receivers together, per second of the run.',
    '- loss: 1 - delivered / offered out; lost at input: datagrams the fan-out never read (kernel drops at its input socket).',
    '- latency: generator send time (stamped in the datagram) to the receiver\'s return from recvmmsg, CLOCK_MONOTONIC, all receivers together; ' +
      'it includes two loopback hops and the receivers\' own wake-up, so compare it with the direct generator-to-receiver figures above.',
    '- CPU µs per output: the fan-out process\'s user+system CPU (all threads, /proc/PID/stat) during the run divided by the output datagrams it handed to the kernel.',
    '- fan-out CPU: that CPU time over the run\'s wall time (100% = one core busy). peak RSS: VmHWM at the end of the scenario.',
    '- other load: CPU time used by everything else on the machine during the run (from /proc/stat, minus the fan-out, generator and receivers), in cores. ' +
      'This machine is shared: when it is high, latency and delivered rate suffer for reasons outside the fan-out.',
    '- CPU time is tick-sampled by the kernel; softirq work (loopback delivery into the receivers\' sockets) is charged to whichever task the tick interrupts, ' +
      'which under load is mostly the sending fan-out itself.',
    '',
  );
  return L.join('\n');
}

/** The secure-vs-plain section: udprepeater secure / plain per output datagram, same run, and the floor's for reference. */
function secureSection(info: RunInfo, sums: ScenarioSummary[]): string[] {
  const secure = sums.filter((s) => s.mode === 'secure');
  if (secure.length === 0) return [];
  const byId = new Map(sums.map((s) => [s.id, s]));
  const L: string[] = ['## Secure mode against plain mode', ''];
  const pairs = secure.map((s) => ({ s, p: s.twin === null ? undefined : byId.get(s.twin) }));
  const cpuRatio = (a: TargetSummary | undefined, b: TargetSummary | undefined) => (a && b ? a.cpuPerOutUs / b.cpuPerOutUs : NaN);
  // The headline: 8 subscribers, 200-byte values (sets, no deletes), preferably at 20k/s in (160k/s out).
  const std = (x: (typeof pairs)[number]) => x.p !== undefined && x.s.subscribers === 8 && /^sets of 200 B values,/.test(x.s.source);
  const head = pairs.find((x) => std(x) && x.s.id === 's8-in20k-secure') ?? pairs.find(std);
  if (head !== undefined) {
    const u = head.s.targets.udprepeater;
    const pu = head.p!.targets.udprepeater;
    const r = cpuRatio(u, pu);
    const ok = r <= SECURE_TARGET;
    L.push(
      `**secure mode: CPU per output datagram = ${Number.isFinite(r) ? r.toFixed(2) : '-'} times plain mode (8 subscribers, 200-byte values)**; ` +
        `target ≤ ${SECURE_TARGET}x: **${!Number.isFinite(r) ? 'not measured' : ok ? 'met' : 'missed'}** ` +
        `(udprepeater ${cpuUs(u?.cpuPerOutUs ?? NaN)} µs secure / ${cpuUs(pu?.cpuPerOutUs ?? NaN)} µs plain per output datagram; ` +
        `scenarios ${head.s.id} / ${head.p!.id}, this run; the floor: ${ratio(cpuRatio(head.s.targets.floor, head.p!.targets.floor))}).`,
      '',
    );
  } else {
    L.push('No secure scenario with 8 subscribers and 200-byte values (sets only) and its plain twin in this run: no headline ratio.', '');
  }
  L.push(
    'Secure: a sealed listener (`--listen-sealed ...,key=ssl`) and sealed static subscribers (`--to ...,sealed,key=ssl`), one key from `udprepeater keygen`. ' +
      'The generator seals every datagram itself (its own origin, sequence, send time, nonce); udprepeater opens each frame once and seals it once for all ' +
      'its subscribers; the receivers open what they get (a byte-identical copy of a frame that already opened is not opened again' +
      `${info.secure?.openEvery ? '; this run: --open-every, every frame opened' : ''}). ` +
      'The floor does the same cryptographic work as udprepeater and no more: one open and one seal (libsodium, C) per input datagram, one frame to all outputs. ' +
      'Each secure scenario is measured together with its plain twin (same load, same number of receivers): the four fan-outs (floor and udprepeater, ' +
      'plain and secure) run side by side and the measurements rotate over them, so that the noise of this shared machine hits both modes alike; ' +
      'ratios are secure / plain.',
    '',
  );
  L.push(
    `| scenario | udprepeater CPU µs per output: secure / plain | ratio | ≤ ${SECURE_TARGET}x | floor CPU µs per output: secure / plain | floor ratio | secure: udprepeater / floor | delivered out/s: secure / plain | loss: secure / plain | p50: secure / plain | p90: secure / plain | p99: secure / plain | medians of (secure / plain) |`,
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const usedText = (t: TargetSummary | undefined) => (t === undefined ? '-' : t.quietUsed ? `${t.used} quiet` : `all ${t.repeats}`);
  // One row per udprepeater variant (udprepeater-dgram too, when it ran).
  const rows = pairs.flatMap(({ s, p }) => (['udprepeater', 'udprepeater-dgram'] as const).filter((k) => k === 'udprepeater' || s.targets[k] !== undefined).map((k) => ({ s, p, k })));
  for (const { s, p, k } of rows) {
    const u = s.targets[k];
    const pu = p?.targets[k];
    const f = s.targets.floor;
    const pf = p?.targets.floor;
    const r = cpuRatio(u, pu);
    const mark = !Number.isFinite(r) ? '-' : r <= SECURE_TARGET ? 'yes' : '**no**';
    const name = k === 'udprepeater' ? s.title : `${s.title} (${k})`;
    const title = head !== undefined && s === head.s && k === 'udprepeater' ? `**${name}** (target line)` : name;
    const v = (t: TargetSummary | undefined, g: (t: TargetSummary) => string) => (t === undefined ? '-' : g(t));
    L.push(
      `| ${title} | ${v(u, (t) => cpuUs(t.cpuPerOutUs))} / ${v(pu, (t) => cpuUs(t.cpuPerOutUs))} | ${ratio(r)} | ${mark} | ` +
        `${v(f, (t) => cpuUs(t.cpuPerOutUs))} / ${v(pf, (t) => cpuUs(t.cpuPerOutUs))} | ${ratio(cpuRatio(f, pf))} | ${ratio(cpuRatio(u, f))} | ` +
        `${v(u, (t) => fmtRate(t.deliveredRate))} / ${v(pu, (t) => fmtRate(t.deliveredRate))} | ${v(u, (t) => pct(t.loss))} / ${v(pu, (t) => pct(t.loss))} | ` +
        `${v(u, (t) => us(t.p50))} / ${v(pu, (t) => us(t.p50))} | ${v(u, (t) => us(t.p90))} / ${v(pu, (t) => us(t.p90))} | ${v(u, (t) => us(t.p99))} / ${v(pu, (t) => us(t.p99))} | ` +
        `${usedText(u)} / ${usedText(pu)} |`,
    );
  }
  L.push('');
  // Anything refused on the secure path is a bench or repeater bug, never load: say so loudly.
  // udprepeater's sealed-gate reasons, and the floor's frames that did not open.
  const gate = new Set([...SEALED_GATE_DROPS, 'unopened', 'badenv']);
  const bugs: string[] = [];
  for (const s of secure) {
    for (const t of targetList(s.targets)) {
      const d = Object.entries(t.drops).filter(([k, v]) => gate.has(k) && v > 0);
      if (d.length > 0) bugs.push(`- ${s.title}, ${t.target}: refused frames: ${d.map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')} (mean per measurement)`);
      if (t.recvErrors > 0) bugs.push(`- ${s.title}, ${t.target}: the receivers could not open ${t.recvErrors.toFixed(0)} frames per measurement (mean)`);
    }
  }
  L.push(
    ...(bugs.length
      ? ['**Frames refused on the secure path (a bench or repeater bug, not load):**', '', ...bugs]
      : ['Frames refused on the secure path: none (no auth_failed, bad_payload, replay, stale, unknown_key ... at udprepeater or the floor; every frame the receivers got opened).']),
    '',
  );
  if (info.secure) {
    L.push(`Interoperability checked before measuring (key id ${info.secure.keyId}, libsodium ${info.secure.libsodium}):`, '');
    L.push(...info.secure.check.map((l) => `- ${l}`), '');
  }
  return L;
}

const perMessage = (c: ClusterSummary) => (Number.isFinite(c.datagramsPerBusMessage) ? c.datagramsPerBusMessage!.toFixed(1) : '-');

/**
 * Scale-out: the cores the standalone repeater needed for one second of the
 * input over those the busiest of A and B needed for the same. Above 1x the
 * pair carries that many times one repeater's input before its busiest
 * member saturates, each member on a core (a machine) of its own.
 */
function scaleOut(solo: TargetSummary | undefined, c: ClusterSummary): number {
  return (solo?.cores ?? NaN) / Math.max(c.members[0]!.cores, c.members[1]!.cores);
}

/** Progress lines for a cluster scenario (run.ts prints them as each scenario ends). */
export function clusterNotes(s: ScenarioSummary): string[] {
  const out: string[] = [];
  const solo = s.targets.udprepeater;
  const f = s.targets.floor;
  for (const t of targetList(s.targets)) {
    const c = t.cluster;
    if (c === undefined) continue;
    const [a, b] = c.members;
    out.push(
      `${t.target}: ${c.note}; CPU/out A+B ${cpuUs(t.cpuPerOutUs)} µs (${ratio(t.cpuPerOutUs / (solo?.cpuPerOutUs ?? NaN))} standalone, ${ratio(t.cpuPerOutUs / (f?.cpuPerOutUs ?? NaN))} floor), ` +
        `A ${cpuUs(a!.cpuPerOutUs)} B ${cpuUs(b!.cpuPerOutUs)}, nats ${cpuUs(c.natsCpuPerMessageUs)} µs/bus message (${perMessage(c)} datagrams each); ` +
        `scale-out ${ratio(scaleOut(solo, c))}; ` +
        `direct p50/p90/p99 ${us(c.paths.direct.p50)}/${us(c.paths.direct.p90)}/${us(c.paths.direct.p99)}, bus ${us(c.paths.bus.p50)}/${us(c.paths.bus.p90)}/${us(c.paths.bus.p99)}`,
    );
  }
  return out;
}

/** The cluster section: the pair of repeaters against a standalone one and the floor, per path, per repeater, nats-server. */
function clusterSection(info: RunInfo, sums: ScenarioSummary[]): string[] {
  const cl = sums.filter((s) => targetList(s.targets).some((t) => t.cluster !== undefined));
  if (cl.length === 0) return [];
  const L: string[] = ['## Cluster mode: two repeaters over NATS against one', ''];
  const used = (t: TargetSummary) => (t.quietUsed ? `${t.used} quiet of ${t.repeats}` : `all ${t.repeats}`);
  const cores = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(2));
  L.push(
    `Produced by \`${info.command}\`${info.cluster ? ` with ${info.cluster.natsServer}; ${info.cluster.pinning}` : ''}.`,
    '',
    'Each cluster target is two `udprepeater serve` processes, A and B, joined by their own nats-server on a loopback port ' +
      '(`--cluster nats://127.0.0.1:PORT --cluster-name bench`, and `--cluster-insecure` or, sealed, `--cluster-key-file K` from `udprepeater keygen`), ' +
      'both given the same static `--to` receivers: each serves those it wins by rendezvous hashing (B is restarted until the split is even). ' +
      '*Input to A*: the generator sends everything to A, which forwards to its receivers (the **direct** path) and publishes each datagram once on the bus; ' +
      'B takes it off the bus and forwards to its receivers (the **bus** path). *Input split*: datagram i goes to A when i is even, to B when odd ' +
      "(`gen --spread`), so each repeater feeds half its own receivers' datagrams directly and half over the bus; the receivers tell the paths apart by the parity of the sequence number. " +
      'In the same scenario, on the same receivers, the floor and a standalone udprepeater (the same listener, no cluster) take the same input (all of it on one port), ' +
      'and the measurements rotate over all targets.',
    '',
    "- **CPU µs per output** of a cluster target: A's + B's CPU time (user + system, all threads) over A's + B's output datagrams; nats-server's CPU is apart " +
      '(**A+B+NATS** adds it in). Ratios are to the standalone udprepeater and to the floor, same scenario, same run.',
    "- **cores to keep up**: a process's CPU time over the generator's run: what it needed for one second of input (above 1.00 a single core cannot keep up; it then catches up after the generator stops, and latency is queueing).",
    '- **latency** of a path: send stamp to receipt at the receivers on that path only. The bus path adds A\'s publish, nats-server and B\'s receive to the direct path.',
    '- **lost at input**: datagrams neither repeater read from its listener (kernel drops at a full input socket).',
    '',
  );
  L.push('| scenario | target | delivered out/s | loss | lost at input | p50 | p90 | p99 | CPU µs per output | / standalone | / floor | A+B+NATS CPU µs per output | cores to keep up: fan-out (A + B) / nats-server | medians of |');
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of cl) {
    const solo = s.targets.udprepeater;
    const f = s.targets.floor;
    for (const t of targetList(s.targets)) {
      const c = t.cluster;
      const fan = c ? `${cores(t.cores)} (${cores(c.members[0]!.cores)} + ${cores(c.members[1]!.cores)}) / ${cores(c.natsCores)}` : cores(t.cores);
      L.push(
        `| ${s.title} | ${t.target} | ${fmtRate(t.deliveredRate)} | ${pct(t.loss)} | ${pct(t.inputLoss)} | ${us(t.p50)} | ${us(t.p90)} | ${us(t.p99)} | ${cpuUs(t.cpuPerOutUs)} | ` +
          `${t.target === 'udprepeater' ? '1x' : ratio(t.cpuPerOutUs / (solo?.cpuPerOutUs ?? NaN))} | ${t.target === 'floor' ? '1x' : ratio(t.cpuPerOutUs / (f?.cpuPerOutUs ?? NaN))} | ` +
          `${c ? cpuUs(c.totalCpuPerOutUs) : '-'} | ${fan} | ${used(t)} |`,
      );
    }
  }
  L.push('');
  L.push('**Per path** (the receivers on each path; with a split input every receiver is on both, half its datagrams each):', '');
  L.push('| scenario | target | path | receivers | delivered out/s | loss | p50 | p90 | p99 | max | p50 / standalone p50 |');
  L.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of cl) {
    const solo = s.targets.udprepeater;
    for (const t of targetList(s.targets)) {
      const c = t.cluster;
      if (c === undefined) continue;
      for (const k of ['direct', 'bus'] as const) {
        const p = c.paths[k];
        const who = c.input === 'one' ? (k === 'direct' ? 'served by A' : 'served by B') : k === 'direct' ? "all, via their server's listener" : 'all, via the bus';
        L.push(
          `| ${s.title} | ${t.target} | ${k} | ${p.receivers} (${who}) | ${fmtRate(p.deliveredRate)} | ${pct(p.loss)} | ${us(p.p50)} | ${us(p.p90)} | ${us(p.p99)} | ${us(p.max)} | ${ratio(p.p50 / (solo?.p50 ?? NaN))} |`,
        );
      }
    }
  }
  L.push('');
  L.push(
    '**Per repeater** (and nats-server), against the standalone repeater of the same scenario. Rates are per second of the generator\'s run; ' +
      '"per datagram" is per datagram the process handled (read from its listener or taken off the bus):',
    '',
  );
  L.push('| scenario | target | process | serves | read from its listener/s | published/s | taken off the bus/s | out/s | cores to keep up | CPU µs per output | / standalone | CPU µs per datagram | peak RSS MiB |');
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of cl) {
    const solo = s.targets.udprepeater;
    if (solo !== undefined) {
      L.push(
        `| ${s.title} | udprepeater | standalone | ${s.subscribers} | ${fmtRate(solo.inRate)} | - | - | ${fmtRate(solo.inRate * s.subscribers * (1 - solo.loss))} | ${cores(solo.cores)} | ` +
          `${cpuUs(solo.cpuPerOutUs)} | 1x | ${cpuUs(solo.cpuPerInUs ?? NaN)} | ${solo.peakRssMiB.toFixed(0)} |`,
      );
    }
    for (const t of targetList(s.targets)) {
      const c = t.cluster;
      if (c === undefined) continue;
      for (const m of c.members) {
        L.push(
          `| ${s.title} | ${t.target} | ${m.name} | ${m.name === 'A' ? c.servedByA : c.servedByB} | ${fmtRate(m.inRate)} | ${fmtRate(m.publishedRate)} | ${fmtRate(m.fromBusRate)} | ${fmtRate(m.outRate)} | ` +
            `${cores(m.cores)} | ${cpuUs(m.cpuPerOutUs)} | ${ratio(m.cpuPerOutUs / (solo?.cpuPerOutUs ?? NaN))} | ${cpuUs(m.cpuPerDatagramUs)} | ${m.peakRssMiB.toFixed(0)} |`,
        );
      }
      L.push(
        `| ${s.title} | ${t.target} | nats-server | - | - | - | ${fmtRate(c.busMessagesRate)} bus messages relayed (${perMessage(c)} datagrams each) | - | ${cores(c.natsCores)} | ` +
          `${cpuUs(c.natsCpuPerOutUs)} | - | ${cpuUs(c.natsCpuPerMessageUs)} per bus message | ${c.natsPeakRssMiB.toFixed(0)} |`,
      );
    }
  }
  L.push('');
  L.push(
    '**Scale-out** (two repeaters each serving half the subscribers against one serving all): the cores the standalone repeater needed for one second of input ' +
      'over the cores the busier of A and B needed for the same. Above 1x the pair carries that many times the input of one repeater before its busier member ' +
      'saturates, each on a core (a machine) of its own; nats-server needs its share on top. With the input to A, A still reads all of it. ' +
      'Cores are what a process used for the input it read: where a target lost input (lost at input above), they understate what the whole input needs; ' +
      'dividing each side by (1 - its loss) gives a first estimate.',
    '',
  );
  L.push('| scenario | target | cores to keep up: standalone | A | B | nats-server | scale-out |');
  L.push('|---|---|---|---|---|---|---|');
  for (const s of cl) {
    const solo = s.targets.udprepeater;
    for (const t of targetList(s.targets)) {
      const c = t.cluster;
      if (c === undefined) continue;
      L.push(`| ${s.title} | ${t.target} | ${cores(solo?.cores)} | ${cores(c.members[0]!.cores)} | ${cores(c.members[1]!.cores)} | ${cores(c.natsCores)} | ${ratio(scaleOut(solo, c))} |`);
    }
  }
  L.push('');
  const notes = cl.flatMap((s) => targetList(s.targets).flatMap((t) => (t.cluster ? [`- ${s.title}, ${t.target}: ${t.cluster.note}`] : [])));
  L.push('Receivers per repeater (rendezvous hashing on random repeater ids):', '', ...notes, '');
  return L;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

/** Two panels: delivered output rate and CPU per output datagram, both against subscribers (log scale). */
export function svg(info: RunInfo, sums: ScenarioSummary[]): string {
  const charted = sums.filter((s) => s.series !== null);
  const seriesList = [...new Set(charted.map((s) => s.series!))].sort((a, b) => a - b);
  const xs = [...new Set(charted.map((s) => s.subscribers))].sort((a, b) => a - b);
  const W = 1000;
  const H = 460;
  const panelW = 420;
  const panelH = 300;
  const top = 70;
  const lefts = [70, 570];
  const palette: Partial<Record<TargetKind, string>> = {
    floor: '#4c72b0',
    udprepeater: '#dd8452',
    'udprepeater-dgram': '#55a868',
    'udprepeater-nowarm': '#937860',
    'udprepeater-cluster': '#c44e52',
    'udprepeater-cluster-sealed': '#8172b3',
  };
  const others = ['#da8bc3', '#8c8c8c', '#ccb974', '#64b5cd'];
  const colorOf = (k: TargetKind) => palette[k] ?? others[Math.max(0, info.targets.indexOf(k)) % others.length]!;
  const kinds = info.targets;
  const dashes = ['', '7 4', '2 3', '10 3 2 3'];
  // Plain points are filled circles, secure ones hollow squares.
  const modes = (['plain', 'secure'] as const).filter((m) => sums.some((s) => s.series !== null && s.mode === m));
  const marker = (mode: 'plain' | 'secure', x: number, y: number, color: string) =>
    mode === 'secure'
      ? `<rect x="${(x - 3.5).toFixed(1)}" y="${(y - 3.5).toFixed(1)}" width="7" height="7" fill="white" stroke="${color}" stroke-width="1.5"/>`
      : `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3.5" fill="${color}"/>`;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">udprepeater vs C floor: fan-out of uWSGI cache datagrams over loopback</text>`,
    `<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">${esc(`${info.machine.nproc} x ${info.machine.cpuModel}, Linux ${info.machine.kernel}, Node ${info.machine.node}; ${info.quick ? 'quick' : 'full'} run, medians of ${info.repeats}; ${info.started.slice(0, 16)}${sums.some((x) => x.series !== null && x.mode === 'secure') ? '; hollow squares: secure mode' : ''}`)}</text>`,
  );
  if (xs.length === 0) {
    out.push(`<text x="${W / 2}" y="200" text-anchor="middle">no charted scenarios in this run</text></svg>`);
    return out.join('\n');
  }
  const lx = (n: number) => Math.log10(n);
  const x0 = lx(xs[0]!) - 0.15;
  const x1 = lx(xs[xs.length - 1]!) + 0.15;
  const panels: Array<{ title: string; y: (t: TargetSummary) => number; fmt: (v: number) => string; offered: boolean }> = [
    { title: 'delivered output datagrams/s (higher is better)', y: (t) => t.deliveredRate, fmt: fmtRate, offered: true },
    { title: 'fan-out CPU µs per output datagram (lower is better)', y: (t) => t.cpuPerOutUs, fmt: (v) => v.toFixed(1), offered: false },
  ];
  panels.forEach((p, pi) => {
    const L0 = lefts[pi]!;
    const values = charted.flatMap((s) => targetList(s.targets).map(p.y)).filter(Number.isFinite);
    if (p.offered) values.push(...seriesList);
    const ymax = niceMax(Math.max(...values, 1e-9) * 1.08);
    const px = (n: number) => L0 + ((lx(n) - x0) / (x1 - x0)) * panelW;
    const py = (v: number) => top + panelH - (v / ymax) * panelH;
    out.push(`<text x="${L0 + panelW / 2}" y="${top - 12}" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`);
    out.push(`<rect x="${L0}" y="${top}" width="${panelW}" height="${panelH}" fill="none" stroke="#999"/>`);
    for (let i = 0; i <= 5; i++) {
      const v = (ymax * i) / 5;
      out.push(`<line x1="${L0}" x2="${L0 + panelW}" y1="${py(v)}" y2="${py(v)}" stroke="#eee"/>`);
      out.push(`<text x="${L0 - 6}" y="${py(v) + 4}" text-anchor="end">${esc(p.fmt(v))}</text>`);
    }
    for (const n of xs) {
      out.push(`<line x1="${px(n)}" x2="${px(n)}" y1="${top}" y2="${top + panelH}" stroke="#f2f2f2"/>`);
      out.push(`<text x="${px(n)}" y="${top + panelH + 16}" text-anchor="middle">${n}</text>`);
    }
    out.push(`<text x="${L0 + panelW / 2}" y="${top + panelH + 34}" text-anchor="middle">subscribers (log scale)</text>`);
    seriesList.forEach((ser, si) => {
      if (p.offered) {
        out.push(`<line x1="${L0}" x2="${L0 + panelW}" y1="${py(ser)}" y2="${py(ser)}" stroke="#999" stroke-dasharray="${dashes[si % dashes.length] || '1 0'}" stroke-width="0.8"/>`);
        out.push(`<text x="${L0 + panelW - 4}" y="${py(ser) - 4}" text-anchor="end" fill="#777">offered ${kfmt(ser)}/s</text>`);
      }
      for (const mode of modes) {
        for (const kind of kinds) {
          const pts = charted
            .filter((s) => s.series === ser && s.mode === mode && s.targets[kind] !== undefined)
            .sort((a, b) => a.subscribers - b.subscribers)
            .map((s) => [px(s.subscribers), py(p.y(s.targets[kind]!))] as const)
            .filter(([, y]) => Number.isFinite(y));
          if (pts.length === 0) continue;
          const d = dashes[si % dashes.length];
          const w = mode === 'secure' ? '1.5" stroke-opacity="0.8' : '2';
          out.push(`<polyline fill="none" stroke="${colorOf(kind)}" stroke-width="${w}"${d ? ` stroke-dasharray="${d}"` : ''} points="${pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`);
          for (const [x, y] of pts) out.push(marker(mode, x, y, colorOf(kind)));
        }
      }
    });
  });
  // Legend, wrapped to the width.
  let ly = top + panelH + 52;
  let lxp = 70;
  seriesList.forEach((ser, si) => {
    for (const mode of modes) {
      if (!charted.some((s) => s.series === ser && s.mode === mode)) continue;
      for (const kind of kinds) {
        const d = dashes[si % dashes.length];
        const label = `${kind}${mode === 'secure' ? ' secure' : ''}, offered ${kfmt(ser)} out/s`;
        const width = 36 + label.length * 6.6 + 24;
        if (lxp + width > W - 10) {
          lxp = 70;
          ly += 18;
        }
        out.push(`<line x1="${lxp}" x2="${lxp + 30}" y1="${ly}" y2="${ly}" stroke="${colorOf(kind)}" stroke-width="2"${d ? ` stroke-dasharray="${d}"` : ''}/>`);
        out.push(marker(mode, lxp + 15, ly, colorOf(kind)));
        out.push(`<text x="${lxp + 36}" y="${ly + 4}">${esc(label)}</text>`);
        lxp += width;
      }
    }
  });
  out.push('</svg>');
  return out.join('\n');
}

function niceMax(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function writeReports(
  base: string,
  info: RunInfo,
  results: ScenarioResult[],
  cap: CapacityResult[],
  memory: readonly MemoryResult[] = [],
): { md: string; svg: string; json: string } {
  const sums = results.map(summarize);
  const paths = { md: `${base}.md`, svg: `${base}.svg`, json: `${base}.json` };
  writeFileSync(paths.json, JSON.stringify({ info, summaries: sums, capacity: cap, memory, scenarios: results }, null, 1) + '\n');
  writeFileSync(paths.md, markdown(info, sums, cap, memory) + '\n');
  writeFileSync(paths.svg, svg(info, sums) + '\n');
  return paths;
}

// The figures table: one table, from one run, of the figures the datagram
// path is held to (bench/README.md "The figures"), each against the floor
// measured beside it, with udprepeater --no-warm-join and any --peer-cmd
// program (samplicator ...) in columns of their own. Every row names the
// scenario it comes from and how to measure it again; the command line of
// every fan-out follows the table.
//
// A row whose scenario did not run says so; nothing is estimated.

import type { MemoryResult } from './state.js';
import type { RevocationResult } from './revocation.js';
import { fmtRate } from './measure.js';
import { FIGURE_CLUSTER, kfmt, STATE_ID } from './plan.js';
import type { RunInfo, ScenarioSummary, TargetSummary } from './report.js';
import { isPeer, type TargetKind, targetName } from './targets.js';

/** The targets the datagram path is held to (issue 17), as ratios. */
export const FIGURE_TARGETS = {
  cpu1: 1.15,
  cpu8: 1.08,
  warmCost: 1.05,
  p99: 10,
  saturation: 0.95,
  /** A full state against no state, per datagram: "no more", within the tick clock's few percent. */
  fullState: 1.05,
  /** Memory growth of a filled state against the bytes it counts. */
  memory: 1.5,
  secure: 1.1,
  /** Secure with identities (group frames) against plain mode, 8 subscribers (issue 18). */
  identity: 1.3,
  cluster: 1.3,
  clusterAddedP50Us: 1000,
} as const;

interface Row {
  figure: string;
  /** Cells by column: udprepeater, --no-warm-join, each peer, floor. */
  cells: Partial<Record<'udprepeater' | 'nowarm' | 'floor' | TargetKind, string>>;
  target: string;
  met: boolean | null;
  /** Scenario ids (or memory checks) the row reads, for the rerun column. */
  scenario: string;
  otherLoad: number;
}

const us = (x: number) => (!Number.isFinite(x) ? '-' : x >= 1000 ? `${(x / 1000).toFixed(x >= 10000 ? 0 : 1)} ms` : `${x.toFixed(x < 10 ? 1 : 0)} µs`);
const cpu = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)} µs` : '-');
const rx = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');
const pct = (x: number) => (!Number.isFinite(x) ? '-' : x === 0 ? '0' : `${(x * 100).toFixed(x < 0.01 ? 2 : 1)}%`);
const mib = (b: number) => (Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MiB` : '-');
const yes = (ok: boolean | null) => (ok === null ? '-' : ok ? 'yes' : '**no**');

/** The peers (--peer-cmd) that ran in any scenario of the run, in order. */
function peerKinds(sums: readonly ScenarioSummary[]): TargetKind[] {
  const out: TargetKind[] = [];
  for (const s of sums) for (const k of Object.keys(s.targets) as TargetKind[]) if (isPeer(k) && !out.includes(k)) out.push(k);
  return out;
}

function maxLoad(ts: Array<TargetSummary | undefined>): number {
  const xs = ts.filter((t): t is TargetSummary => t !== undefined).map((t) => t.otherLoad);
  return xs.length ? Math.max(...xs) : NaN;
}

/** Builds the rows from the run's summaries; a missing scenario gives a row saying so. */
function rows(sums: readonly ScenarioSummary[], memory: readonly MemoryResult[], peers: readonly TargetKind[], revocation: RevocationResult | null): Row[] {
  const by = new Map(sums.map((s) => [s.id, s]));
  const out: Row[] = [];
  const missing = (figure: string, scenario: string, target: string): Row => ({ figure, cells: { udprepeater: 'not measured in this run' }, target, met: null, scenario, otherLoad: NaN });
  const T = FIGURE_TARGETS;

  // One and eight subscribers: CPU per output, each target against the floor.
  const cpuRow = (id: string, figure: string, limit: number) => {
    const s = by.get(id);
    if (s === undefined || s.targets.floor === undefined || s.targets.udprepeater === undefined) return out.push(missing(figure, id, `udprepeater ≤ ${limit}x floor`));
    const f = s.targets.floor;
    const cell = (t: TargetSummary | undefined) => (t === undefined ? '-' : `${cpu(t.cpuPerOutUs)} (${rx(t.cpuPerOutUs / f.cpuPerOutUs)})`);
    const r = s.targets.udprepeater.cpuPerOutUs / f.cpuPerOutUs;
    const cells: Row['cells'] = { udprepeater: cell(s.targets.udprepeater), nowarm: cell(s.targets['udprepeater-nowarm']), floor: cpu(f.cpuPerOutUs) };
    for (const p of peers) cells[p] = cell(s.targets[p]);
    return out.push({ figure, cells, target: `udprepeater ≤ ${limit}x floor`, met: Number.isFinite(r) ? r <= limit : null, scenario: id, otherLoad: maxLoad(Object.values(s.targets)) });
  };
  cpuRow('s1-in20k', '1 subscriber, 20k/s in: CPU per output datagram (x floor)', T.cpu1);
  {
    const id = 's1-in20k';
    const s = by.get(id);
    const on = s?.targets.udprepeater;
    const off = s?.targets['udprepeater-nowarm'];
    const figure = '1 subscriber, 20k/s in: what warm join costs (CPU per output, warm join on / --no-warm-join)';
    if (on === undefined || off === undefined) out.push(missing(figure, id, `≤ ${T.warmCost}x`));
    else {
      const r = on.cpuPerOutUs / off.cpuPerOutUs;
      out.push({ figure, cells: { udprepeater: `${rx(r)} (${cpu(on.cpuPerOutUs)} / ${cpu(off.cpuPerOutUs)})` }, target: `≤ ${T.warmCost}x`, met: Number.isFinite(r) ? r <= T.warmCost : null, scenario: id, otherLoad: maxLoad([on, off]) });
    }
  }
  {
    const id = 's1-in20k';
    const s = by.get(id);
    const figure = '1 subscriber, 20k/s in: latency p50 / p99 (p99 x floor)';
    const f = s?.targets.floor;
    if (s === undefined || f === undefined || s.targets.udprepeater === undefined) out.push(missing(figure, id, `udprepeater p99 ≤ ${T.p99}x floor`));
    else {
      const cell = (t: TargetSummary | undefined) => (t === undefined ? '-' : `${us(t.p50)} / ${us(t.p99)} (${rx(t.p99 / f.p99)})`);
      const cells: Row['cells'] = { udprepeater: cell(s.targets.udprepeater), nowarm: cell(s.targets['udprepeater-nowarm']), floor: `${us(f.p50)} / ${us(f.p99)}` };
      for (const p of peers) cells[p] = cell(s.targets[p]);
      const r = s.targets.udprepeater.p99 / f.p99;
      out.push({ figure, cells, target: `udprepeater p99 ≤ ${T.p99}x floor`, met: Number.isFinite(r) ? r <= T.p99 : null, scenario: id, otherLoad: maxLoad(Object.values(s.targets)) });
    }
  }
  {
    const id = 's1-in20k';
    const s = by.get(id);
    const figure = '1 subscriber, 20k/s in: GC pauses per measurement (count, total, largest of any measurement)';
    const cell = (t: TargetSummary | undefined) => (t?.gc === undefined ? '-' : `${t.gc.count.toFixed(0)} in ${t.gc.measurementS.toFixed(1)} s, ${t.gc.totalMs.toFixed(1)} ms, largest ${t.gc.maxMs.toFixed(2)} ms`);
    if (s?.targets.udprepeater?.gc === undefined) out.push(missing(figure, id, '(what sets the p99)'));
    else out.push({ figure, cells: { udprepeater: cell(s.targets.udprepeater), nowarm: cell(s.targets['udprepeater-nowarm']) }, target: '(what sets the p99)', met: null, scenario: id, otherLoad: maxLoad([s.targets.udprepeater]) });
  }
  cpuRow('s8-in20k', '8 subscribers, 20k/s in: CPU per output datagram (x floor)', T.cpu8);
  {
    const id = 's8-in60k';
    const s = by.get(id);
    const figure = '8 subscribers, 60k/s offered (480k/s out): delivered out/s (x floor)';
    const f = s?.targets.floor;
    if (s === undefined || f === undefined || s.targets.udprepeater === undefined) out.push(missing(figure, id, `udprepeater ≥ ${T.saturation}x floor`));
    else {
      const cell = (t: TargetSummary | undefined) => (t === undefined ? '-' : `${fmtRate(t.deliveredRate)} (${rx(t.deliveredRate / f.deliveredRate)})`);
      const cells: Row['cells'] = { udprepeater: cell(s.targets.udprepeater), nowarm: cell(s.targets['udprepeater-nowarm']), floor: fmtRate(f.deliveredRate) };
      for (const p of peers) cells[p] = cell(s.targets[p]);
      const r = s.targets.udprepeater.deliveredRate / f.deliveredRate;
      out.push({ figure, cells, target: `udprepeater ≥ ${T.saturation}x floor`, met: Number.isFinite(r) ? r >= T.saturation : null, scenario: id, otherLoad: maxLoad(Object.values(s.targets)) });
    }
  }
  for (const [kind, size] of [['udprepeater-state8m', '8 MiB'], ['udprepeater-state64m', '64 MiB']] as const) {
    const s = by.get(STATE_ID);
    const figure = `every set a new key, 30k/s in, 1 subscriber: CPU per datagram and lost at input, full ${size} state (x --no-warm-join)`;
    const full = s?.targets[kind];
    const none = s?.targets['udprepeater-nowarm'];
    const lim = `≤ ${T.fullState}x --no-warm-join`;
    if (full === undefined || none === undefined) {
      out.push(missing(figure, STATE_ID, lim));
      continue;
    }
    const per = (t: TargetSummary) => t.cpuPerInUs ?? NaN;
    const r = per(full) / per(none);
    const f = s?.targets.floor;
    out.push({
      figure,
      cells: {
        udprepeater: `${cpu(per(full))} (${rx(r)}), lost ${pct(full.inputLoss)}${full.state ? `; ${full.state.entries.toFixed(0)} entries, ${fmtRate(full.state.evictionsPerS)} evicted/s` : ''}`,
        nowarm: `${cpu(per(none))}, lost ${pct(none.inputLoss)}`,
        floor: f === undefined ? '-' : `${cpu(per(f))}, lost ${pct(f.inputLoss)}`,
      },
      target: lim,
      met: Number.isFinite(r) ? r <= T.fullState : null,
      scenario: STATE_ID,
      otherLoad: maxLoad([full, none, f]),
    });
  }
  for (const size of [8 << 20, 64 << 20]) {
    const m = memory.find((x) => x.maxBytes === size);
    const figure = `--state-max-bytes ${size >> 20} MiB filled, then every key set again with a value of the same size: RSS growth (x the bytes the state counts)`;
    const id = `memory-${size >> 20}m`;
    const lim = `≤ ${T.memory}x`;
    if (m === undefined) {
      out.push(missing(figure, id, lim));
      continue;
    }
    const grow = m.afterResets.rss - m.baseline.rss;
    const counted = m.afterResets.stateBytes - m.baseline.stateBytes;
    const r = grow / counted;
    const held = m.afterResets.heapUsed + m.afterResets.arrayBuffers - m.baseline.heapUsed - m.baseline.arrayBuffers;
    out.push({
      figure,
      cells: {
        udprepeater:
          `RSS +${mib(grow)} (${rx(r)}; after the first lap +${mib(m.afterFill.rss - m.baseline.rss)}); ` +
          `JS heap + Buffer memory +${mib(held)} (${rx(held / counted)}); the state counts ${mib(counted)} in ${m.afterResets.entries.toFixed(0)} entries`,
      },
      target: lim,
      met: Number.isFinite(r) ? r <= T.memory : null,
      scenario: id,
      otherLoad: NaN,
    });
  }
  for (const [n, limit] of [
    [8, T.secure],
    [1, null],
  ] as const) {
    const id = `s${n}-in20k`;
    const sec = by.get(`${id}-secure`);
    const plain = by.get(id);
    const figure = `secure / plain, ${n} subscriber${n > 1 ? 's' : ''} at 20k/s in: CPU per output datagram`;
    const lim = limit === null ? '(reported)' : `udprepeater ≤ ${limit}x`;
    const u = sec?.targets.udprepeater;
    const pu = plain?.targets.udprepeater;
    if (u === undefined || pu === undefined) {
      out.push(missing(figure, `${id}-secure`, lim));
      continue;
    }
    const r = u.cpuPerOutUs / pu.cpuPerOutUs;
    const f = sec?.targets.floor;
    const pf = plain?.targets.floor;
    out.push({
      figure,
      cells: {
        udprepeater: `${rx(r)} (${cpu(u.cpuPerOutUs)} / ${cpu(pu.cpuPerOutUs)})`,
        floor: f && pf ? `${rx(f.cpuPerOutUs / pf.cpuPerOutUs)} (${cpu(f.cpuPerOutUs)} / ${cpu(pf.cpuPerOutUs)})` : '-',
      },
      target: lim,
      met: limit === null || !Number.isFinite(r) ? null : r <= limit,
      scenario: `${id}-secure`,
      otherLoad: maxLoad([u, pu, f, pf]),
    });
  }
  for (const [n, limit] of [
    [8, T.identity],
    [1, null],
  ] as const) {
    const id = `s${n}-in20k`;
    const idn = by.get(`${id}-identity`);
    const plain = by.get(id);
    const figure = `secure with identities, ${n} subscriber${n > 1 ? 's' : ''} at 20k/s in: CPU per output datagram vs plain`;
    const lim = limit === null ? '(reported: what one seal per datagram costs)' : `udprepeater ≤ ${limit}x`;
    const u = idn?.targets.udprepeater;
    const pu = plain?.targets.udprepeater;
    if (u === undefined || pu === undefined) {
      out.push(missing(figure, `${id}-identity`, lim));
      continue;
    }
    const r = u.cpuPerOutUs / pu.cpuPerOutUs;
    out.push({
      figure,
      cells: { udprepeater: `${rx(r)} (${cpu(u.cpuPerOutUs)} / ${cpu(pu.cpuPerOutUs)})` },
      target: lim,
      met: limit === null || !Number.isFinite(r) ? null : r <= limit,
      scenario: `${id}-identity`,
      otherLoad: maxLoad([u, pu]),
    });
  }
  {
    const r = revocation;
    const figure = 'secure with identities: revocation latency, reload (SIGHUP) to the first refused frame (median)';
    if (r === null) out.push(missing(figure, 'revocation', '(reported)'));
    else out.push({ figure, cells: { udprepeater: `${r.medianMs.toFixed(1)} ms (of ${r.reps.map((x) => x.latencyMs.toFixed(1)).join(', ')})` }, target: '(reported)', met: null, scenario: 'revocation', otherLoad: NaN });
  }
  {
    const [n, rate] = FIGURE_CLUSTER;
    const id = `cluster-s${n}-in${kfmt(rate)}`;
    const s = by.get(id);
    const c = s?.targets['udprepeater-cluster'];
    const solo = s?.targets.udprepeater;
    const f = s?.targets.floor;
    const figure = `cluster of 2 (input to A, bus in clear), ${n} subscribers at ${kfmt(rate)}/s in: CPU per output (A + B, x standalone)`;
    if (c === undefined || solo === undefined) out.push(missing(figure, id, `≤ ${T.cluster}x standalone`));
    else {
      const r = c.cpuPerOutUs / solo.cpuPerOutUs;
      out.push({
        figure,
        cells: { udprepeater: `${cpu(c.cpuPerOutUs)} (${rx(r)}; standalone ${cpu(solo.cpuPerOutUs)})`, floor: f ? cpu(f.cpuPerOutUs) : '-' },
        target: `≤ ${T.cluster}x standalone`,
        met: Number.isFinite(r) ? r <= T.cluster : null,
        scenario: id,
        otherLoad: maxLoad([c, solo, f]),
      });
      const bus = c.cluster?.paths.bus.p50 ?? NaN;
      const added = bus - solo.p50;
      out.push({
        figure: `cluster, ${kfmt(rate)}/s in: p50 latency the bus adds (bus path p50 - standalone p50)`,
        cells: { udprepeater: `${us(added)} (bus path ${us(bus)}, direct path ${us(c.cluster?.paths.direct.p50 ?? NaN)}, standalone ${us(solo.p50)})`, floor: f ? us(f.p50) : '-' },
        target: `< ${us(T.clusterAddedP50Us)}`,
        met: Number.isFinite(added) ? added < T.clusterAddedP50Us : null,
        scenario: id,
        otherLoad: maxLoad([c, solo]),
      });
    }
  }
  return out;
}

/** How to measure one row again: the run's command with --mode figures and --only the scenario. */
function rerun(info: RunInfo, scenario: string): string {
  if (scenario.startsWith('memory-')) return `\`npm run bench -- --mode figures --only '^${scenario}$' --state-memory ${scenario.slice(7, -1)}\``;
  const peers = (info.peers ?? []).map((p) => ` --peer-cmd '${p.name}=${p.command.replace(/'/g, "'\\''")}'`).join('');
  if (scenario === 'revocation') return `\`npm run bench -- --mode identity --only '^revocation$'\``;
  const only = scenario.endsWith('-secure') ? `^${scenario.slice(0, -7)}(-secure)?$` : scenario.endsWith('-identity') ? `^${scenario.slice(0, -9)}(-identity)?$` : `^${scenario}$`;
  return `\`npm run bench -- --mode figures${info.quick ? ' --quick' : ''} --only '${only}'${scenario.startsWith('s') && !scenario.startsWith('state') ? peers : ''}\``;
}

export function figuresSection(info: RunInfo, sums: readonly ScenarioSummary[], memory: readonly MemoryResult[]): string[] {
  const peers = peerKinds(sums);
  const rs = rows(sums, memory, peers, info.identity?.revocation ?? null);
  if (rs.every((r) => r.met === null && r.cells.udprepeater === 'not measured in this run')) return [];
  const L: string[] = ['## The figures', ''];
  const m = info.machine;
  L.push(
    `Produced by \`${info.command}\` (${info.quick ? 'quick run: medians of fewer, shorter measurements' : 'full run'}). ` +
      `Machine: ${m.nproc} x ${m.cpuModel}; load average ${m.loadAvg1m} when the run started${info.loadEnd ? `, ${info.loadEnd.join(' / ')} (1 / 5 / 15 min) when it ended` : ''}; ` +
      'the last column but one is the CPU everything else on the machine used during the row\'s measurements (the largest median of its targets, in cores).',
    '',
  );
  L.push(
    'Every cell is a median over the same measurements as the rest of the report, all columns of a row measured in the same scenario, in turn. ' +
      'CPU figures are the fan-out process\'s user + system time over the output datagrams it sent (per datagram read, for the full-state rows). ' +
      (peers.length ? `${peers.map((p) => targetName(p)).join(', ')}: started from --peer-cmd (commands below); its output is what the receivers got. ` : 'No --peer-cmd in this run: no column for another fan-out program. ') +
      'A row that did not run says so.',
    '',
  );
  const cols = ['udprepeater', 'udprepeater --no-warm-join', ...peers.map((p) => targetName(p)), 'C floor'];
  L.push(`| figure | ${cols.join(' | ')} | target | met | other load | scenario |`);
  L.push(`|---|${cols.map(() => '---').join('|')}|---|---|---|---|`);
  for (const r of rs) {
    const cells = [r.cells.udprepeater ?? '', r.cells.nowarm ?? '', ...peers.map((p) => r.cells[p] ?? ''), r.cells.floor ?? ''];
    L.push(`| ${r.figure} | ${cells.join(' | ')} | ${r.target} | ${yes(r.met)} | ${Number.isFinite(r.otherLoad) ? r.otherLoad.toFixed(2) : '-'} | ${r.scenario} |`);
  }
  L.push('');
  // The command lines behind the rows, per scenario and target.
  const ids = [...new Set(rs.map((r) => r.scenario))];
  const cmd: string[] = [];
  for (const id of ids) {
    const s = sums.find((x) => x.id === id);
    const mem = memory.find((x) => `memory-${x.maxBytes >> 20}m` === id);
    if (s !== undefined) {
      cmd.push(`- **${id}** (${s.title}; ${s.source}); measure again: ${rerun(info, id)}`);
      for (const t of Object.values(s.targets)) if (t?.command) cmd.push(`  - ${targetName(t.target)}: \`${t.command}\`${t.stateNote ? ` (${t.stateNote})` : ''}`);
    } else if (id === 'revocation' && info.identity?.revocation) {
      cmd.push(`- **revocation** (${info.identity.revocation.note}); measure again: ${rerun(info, id)}`);
      cmd.push(`  - udprepeater: \`${info.identity.revocation.command}\``);
    } else if (mem !== undefined) {
      cmd.push(`- **${id}** (${mem.keys} keys of ${mem.valueSize} B values, then ${mem.laps} laps of re-sets at ${fmtRate(mem.rate)}/s; memory read after a full collection asked of the GC preload); measure again: ${rerun(info, id)}`);
      cmd.push(`  - udprepeater: \`${mem.command}\``);
    }
  }
  if (cmd.length > 0) L.push('Each scenario: how to measure it again, and the command line of every fan-out (receiver ports as {receiver}; udprepeater ran with `NODE_OPTIONS=--require build/bench/lib/gc-preload.js`, which counts GC pauses and reads memory, unless --no-gc-stats):', '', ...cmd, '');
  return L;
}

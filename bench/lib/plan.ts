// Which scenarios a run measures. Two chart series hold the offered output
// rate constant while the subscriber count grows (the input rate is the
// output rate divided by the subscribers): 160k/s (8 subscribers at 20k/s
// in) and 480k/s (8 subscribers at 60k/s in). Then one channel with many
// dynamic subscribers, a TLS-session-like mix, and replays of a capture.
//
// Secure mode: each secure point (subscribers, input rate) runs right after
// its plain twin (the same load in plain mode), so every secure figure has a
// plain one from the same run, measured minutes apart at most. The twin is
// added when the plain matrix lacks it. --mode plain drops the secure
// points; --mode secure keeps only them and their twins.
//
// Cluster mode (cluster.ts): at each cluster point (8 subscribers at 20k/s in
// by default) two scenarios, each with its own receivers, measuring side by
// side and in turn the floor, a standalone udprepeater and the cluster of two:
//   cluster-s8-in20k        the input to A only; the cluster with its bus in
//                           clear and, as a fourth target, sealed (--key-file)
//   cluster-split-s8-in20k  the input split between A and B (gen --spread)
// --mode cluster runs only these; --mode plain and --mode secure none of them.
//
// Identity mode (identity-mode.ts): each identity point runs next to its
// plain twin (and its secure twin when that point has one), one group
// measured in turn, udprepeater only; --mode identity keeps only them and
// their twins.
//
// The figures (figures.ts: one table of udprepeater against the floor, its
// variants and any --peer-cmd program): 1 subscriber at 20k/s in, 8 at 20k/s
// and 8 at 60k/s (saturation), each measured with udprepeater, udprepeater
// --no-warm-join, the peers and the floor; a full live state
// (state-s1-in30k: unique keys at 30k/s in to 1 subscriber, against
// --no-warm-join, a full 8 MiB state and, in full runs, a full 64 MiB one);
// secure mode at 1 and 8 subscribers against their plain twins; the cluster
// at 5k/s in. A plain or full run has them all (quick: smaller); --mode
// figures runs only them.

import type { Scenario, Source } from './measure.js';
import type { SyntheticSpec } from './synthetic.js';
import type { ClusterKind, PeerKind, TargetKind } from './targets.js';

/** Cluster scenarios: input to A (with the bus in clear), the same with the bus sealed, input split. */
export type ClusterVariant = 'one' | 'sealed' | 'split';
export const CLUSTER_VARIANTS: readonly ClusterVariant[] = ['one', 'sealed', 'split'];

export type ModeSelection = 'plain' | 'secure' | 'identity' | 'both' | 'cluster' | 'figures';

/** The points (subscribers, input datagrams/s) of the figures table measured against udprepeater's variants and the peers. */
export const FIGURE_POINTS: ReadonlyArray<readonly [number, number]> = [
  [1, 20000],
  [8, 20000],
  [8, 60000],
];
/** Secure points of the figures table (--mode figures runs these). */
export const FIGURE_SECURE: ReadonlyArray<readonly [number, number]> = [
  [1, 20000],
  [8, 20000],
];
/** Identity points of the figures table: secure with identities (link frames) against the plain twin. */
export const FIGURE_IDENTITY: ReadonlyArray<readonly [number, number]> = [
  [1, 20000],
  [8, 20000],
];
/** The cluster point of the figures table: input to A, bus in clear. */
export const FIGURE_CLUSTER: readonly [number, number] = [8, 5000];
/** The full-state scenario: unique keys at this rate to one subscriber. */
export const STATE_RATE = 30000;
export const STATE_ID = `state-s1-in${STATE_RATE / 1000}k`;

export interface PlanOptions {
  readonly quick: boolean;
  readonly subscribers: readonly number[];
  /** Offered output rates (datagrams/s) of the chart series. */
  readonly series: readonly number[];
  /** Extra (subscribers, input rate) points, e.g. 8 at 60000/s in quick mode. */
  readonly extra: ReadonlyArray<readonly [number, number]>;
  readonly big: number;
  readonly bigSeries: number;
  readonly repeats: number;
  readonly duration: number;
  readonly spec: SyntheticSpec;
  readonly tlsSpec: SyntheticSpec | null;
  readonly capture: string | null;
  readonly replaySpeeds: readonly number[];
  readonly replaySubscribers: number;
  readonly replayPort: number | undefined;
  readonly targets: readonly TargetKind[];
  /** Secure points (subscribers, input rate), each measured next to its plain twin. */
  readonly secure: ReadonlyArray<readonly [number, number]>;
  /** Identity points (subscribers, input rate), each measured next to its plain twin (and its secure twin when that runs). */
  readonly identity: ReadonlyArray<readonly [number, number]>;
  /** Which scenarios: the plain matrix, the secure points and the cluster points ('both'), or one of them. */
  readonly mode: ModeSelection;
  /** Cluster points (subscribers, input rate) and which variants to measure there (none: no cluster scenario). */
  readonly cluster: { readonly points: ReadonlyArray<readonly [number, number]>; readonly variants: readonly ClusterVariant[] };
  /** Other fan-out programs (--peer-cmd), measured in the plain scenarios of the figures table. */
  readonly peers: readonly PeerKind[];
  /** State targets of the full-state scenario (quick: 8 MiB only). */
  readonly stateTargets: readonly TargetKind[];
}

export const kfmt = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

export function buildPlan(o: PlanOptions): Scenario[] {
  const out: Scenario[] = [];
  const base = { repeats: o.repeats, duration: o.duration, targets: o.targets, dynamic: false, mode: 'plain' as const };
  const synth = (rate: number, spec = o.spec): Source => ({ kind: 'synthetic', rate, spec });
  const seen = new Set<string>();
  const point = (subs: number, rate: number, series: number | null) => {
    const id = `s${subs}-in${kfmt(rate)}`;
    if (seen.has(id)) return;
    seen.add(id);
    out.push({ ...base, id, title: `${subs} subscriber${subs > 1 ? 's' : ''} at ${kfmt(rate)}/s in`, series, subscribers: subs, source: synth(rate) });
  };
  const matrix = o.mode === 'plain' || o.mode === 'both' || o.mode === 'secure' || o.mode === 'identity';
  const figures = o.mode === 'plain' || o.mode === 'both' || o.mode === 'figures';
  if (matrix) {
    for (const s of o.series) for (const n of o.subscribers) point(n, Math.round(s / n), s);
    for (const [n, rate] of o.extra) point(n, rate, o.series.includes(n * rate) ? n * rate : null);
  }
  if (figures) {
    for (const [n, rate] of FIGURE_POINTS) point(n, rate, o.mode !== 'figures' && o.series.includes(n * rate) ? n * rate : null);
    // Warm join on and off (a quick run: at 1 subscriber only), and the other programs, wherever the figures table reads a plain point.
    const figureIds = new Set(FIGURE_POINTS.map(([n, r]) => `s${n}-in${kfmt(r)}`));
    for (const [i, sc] of out.entries()) {
      if (!figureIds.has(sc.id)) continue;
      const nowarm = !o.quick || sc.subscribers === 1 ? ['udprepeater-nowarm' as const] : [];
      const more = [...nowarm, ...o.peers].filter((k) => !sc.targets.includes(k));
      out[i] = { ...sc, targets: [...sc.targets, ...more] };
    }
  }
  if (matrix && o.big > 0) {
    const rate = Math.max(1, Math.round(o.bigSeries / o.big));
    out.push({
      ...base,
      id: `big-s${o.big}`,
      title: `${o.big} dynamic subscribers at ${rate}/s in`,
      series: o.series.includes(o.big * rate) ? o.big * rate : null,
      subscribers: o.big,
      dynamic: true,
      // Per-output cost needs enough output datagrams for the 10 ms CPU clock.
      duration: Math.max(o.duration, o.quick ? 2 : 5),
      source: synth(rate),
    });
  }
  if (matrix && o.tlsSpec !== null) {
    out.push({ ...base, id: 'tls-s8-in20k', title: '8 subscribers at 20k/s in, TLS-session mix', series: null, subscribers: 8, source: synth(20000, o.tlsSpec) });
  }
  if (figures && o.stateTargets.length > 0) {
    out.push({
      ...base,
      id: STATE_ID,
      title: `1 subscriber at ${kfmt(STATE_RATE)}/s in, every set a new key`,
      series: null,
      subscribers: 1,
      source: { kind: 'synthetic', rate: STATE_RATE, spec: o.spec, uniqueKeys: true },
      targets: ['floor', 'udprepeater-nowarm', ...o.stateTargets],
    });
  }
  if (o.mode !== 'plain' && o.mode !== 'cluster' && o.mode !== 'identity') {
    for (const [n, rate] of o.mode === 'figures' ? FIGURE_SECURE : o.secure) {
      const twinId = `s${n}-in${kfmt(rate)}`;
      if (!seen.has(twinId)) point(n, rate, null);
      const at = out.findIndex((s) => s.id === twinId);
      const twin = out[at]!;
      const id = `${twinId}-secure`;
      if (seen.has(id)) continue;
      seen.add(id);
      // Secure mode: the fan-outs that speak it (the floor and udprepeater as built, or on node:dgram).
      const targets = twin.targets.filter((k) => k === 'floor' || k === 'udprepeater' || k === 'udprepeater-dgram');
      out.splice(at + 1, 0, { ...twin, id, title: `${twin.title}, secure`, mode: 'secure', twin: twinId, targets });
    }
  }
  if (o.mode === 'both' || o.mode === 'figures' || o.mode === 'identity') {
    for (const [n, rate] of o.mode === 'figures' ? FIGURE_IDENTITY : o.identity) {
      const twinId = `s${n}-in${kfmt(rate)}`;
      if (!seen.has(twinId)) point(n, rate, null);
      const id = `${twinId}-identity`;
      if (seen.has(id)) continue;
      seen.add(id);
      let at = out.findIndex((s) => s.id === twinId);
      const twin = out[at]!;
      // After the twin's other companions (its secure twin): one group, measured in turn.
      while (out[at + 1]?.twin === twinId) at++;
      // Identity mode: udprepeater only (the floor speaks no links).
      const targets = twin.targets.filter((k) => k === 'udprepeater' || k === 'udprepeater-dgram');
      out.splice(at + 1, 0, { ...twin, id, title: `${twin.title}, secure with identities`, mode: 'identity', twin: twinId, targets });
    }
  }
  if (matrix && o.capture !== null) {
    for (const speed of o.replaySpeeds) {
      const name = speed === 0 ? 'asap' : `x${speed}`;
      out.push({
        ...base,
        id: `replay-${name}-s${o.replaySubscribers}`,
        title: `replay ${speed === 0 ? 'as fast as possible' : `${speed}x`} to ${o.replaySubscribers} subscribers`,
        series: null,
        subscribers: o.replaySubscribers,
        source: { kind: 'replay', speed, capture: o.capture, dport: o.replayPort },
      });
    }
  }
  if (o.mode === 'secure' || o.mode === 'identity') {
    const twins = new Set(out.filter((s) => s.mode === o.mode).map((s) => s.twin));
    return out.filter((s) => s.mode === o.mode || twins.has(s.id));
  }
  const cl =
    o.mode === 'figures' ? { points: [FIGURE_CLUSTER], variants: ['one' as const] } : o.mode === 'both' || o.mode === 'cluster' ? o.cluster : { points: [], variants: [] };
  const cluster = clusterScenarios(o, base, cl);
  return o.mode === 'cluster' ? cluster : [...out, ...cluster];
}

function clusterScenarios(
  o: PlanOptions,
  base: Pick<Scenario, 'repeats' | 'duration' | 'targets' | 'dynamic' | 'mode'>,
  c: { readonly points: ReadonlyArray<readonly [number, number]>; readonly variants: readonly ClusterVariant[] },
): Scenario[] {
  const v = new Set(c.variants);
  const out: Scenario[] = [];
  // The floor and the standalone repeater(s) the run measures, then the cluster targets.
  const others = o.targets.filter((t) => t === 'floor' || t === 'udprepeater' || t === 'udprepeater-dgram');
  for (const [n, rate] of c.points) {
    const source: Source = { kind: 'synthetic', rate, spec: o.spec };
    const at = `${n} subscribers at ${kfmt(rate)}/s in`;
    const one: ClusterKind[] = [...(v.has('one') ? ['udprepeater-cluster' as const] : []), ...(v.has('sealed') ? ['udprepeater-cluster-sealed' as const] : [])];
    if (one.length > 0) {
      out.push({
        ...base,
        id: `cluster-s${n}-in${kfmt(rate)}`,
        title: `cluster of 2, input to A: ${at}`,
        series: null,
        subscribers: n,
        source,
        targets: [...others, ...one],
        cluster: { input: 'one' },
      });
    }
    if (v.has('split')) {
      out.push({
        ...base,
        id: `cluster-split-s${n}-in${kfmt(rate)}`,
        title: `cluster of 2, input split A/B: ${at}`,
        series: null,
        subscribers: n,
        source,
        targets: [...others, 'udprepeater-cluster'],
        cluster: { input: 'split' },
      });
    }
  }
  return out;
}

/** Parses --cluster: variants (one, sealed, split), comma-separated, or none. */
export function parseClusterVariants(text: string): ClusterVariant[] {
  if (text.trim() === 'none' || text.trim() === '') return [];
  return text.split(',').map((x) => {
    const t = x.trim() as ClusterVariant;
    if (!CLUSTER_VARIANTS.includes(t)) throw new Error(`"${x}": want ${CLUSTER_VARIANTS.join(', ')} or none`);
    return t;
  });
}

/** Parses secure points: "8x20000,1x160000" (subscribers x input datagrams/s); "none" = no point. */
export function parsePoints(text: string): Array<[number, number]> {
  if (text.trim() === 'none' || text.trim() === '') return [];
  return text.split(',').map((p) => {
    const m = /^\s*(\d+)x(\d+)\s*$/.exec(p);
    if (m === null || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`"${p}": want SUBSCRIBERSxRATE, e.g. 8x20000`);
    return [Number(m[1]), Number(m[2])];
  });
}

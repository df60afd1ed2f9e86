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

import type { Scenario, Source } from './measure.js';
import type { SyntheticSpec } from './synthetic.js';
import type { TargetKind } from './targets.js';

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
  /** Which scenarios: the plain matrix and the secure points ('both'), or one side. */
  readonly mode: 'plain' | 'secure' | 'both';
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
  for (const s of o.series) for (const n of o.subscribers) point(n, Math.round(s / n), s);
  for (const [n, rate] of o.extra) point(n, rate, o.series.includes(n * rate) ? n * rate : null);
  if (o.big > 0) {
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
  if (o.tlsSpec !== null) {
    out.push({ ...base, id: 'tls-s8-in20k', title: '8 subscribers at 20k/s in, TLS-session mix', series: null, subscribers: 8, source: synth(20000, o.tlsSpec) });
  }
  if (o.mode !== 'plain') {
    for (const [n, rate] of o.secure) {
      const twinId = `s${n}-in${kfmt(rate)}`;
      if (!seen.has(twinId)) point(n, rate, null);
      const at = out.findIndex((s) => s.id === twinId);
      const twin = out[at]!;
      const id = `${twinId}-secure`;
      if (seen.has(id)) continue;
      seen.add(id);
      out.splice(at + 1, 0, { ...twin, id, title: `${twin.title}, secure`, mode: 'secure', twin: twinId });
    }
  }
  if (o.capture !== null) {
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
  if (o.mode === 'secure') {
    const twins = new Set(out.filter((s) => s.mode === 'secure').map((s) => s.twin));
    return out.filter((s) => s.mode === 'secure' || twins.has(s.id));
  }
  return out;
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

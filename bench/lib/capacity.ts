// The load tools measured on their own: the generator sending straight to
// the receivers (it sends each datagram to every receiver itself, with no
// fan-out in between). Shows what the generator and the receivers can do,
// what each costs per datagram, and the latency of the bare loopback path,
// which is the part of every fan-out latency that is not the fan-out's.

import { arm, awaitQuiet, type Context, drain, median, modeOf, poolFor, runGen, startReceivers } from './measure.js';
import type { ModeName } from './modes.js';
import { machineCpu } from './procstat.js';
import type { SyntheticSpec } from './synthetic.js';

export interface CapacityCase {
  readonly id: string;
  readonly title: string;
  readonly receivers: number;
  /** Input datagrams/s; each goes to every receiver. 0 = as fast as possible. */
  readonly rate: number;
  /** secure: the generator seals each datagram once, every receiver opens it. */
  readonly mode?: ModeName;
}

export interface CapacitySample {
  offeredCopies: number | null;
  genRate: number;
  copiesRate: number;
  deliveredRate: number;
  loss: number;
  receiverKernelDrops: number;
  latency: { p50: number; p99: number; max: number };
  genCpuPerCopyUs: number;
  genCpuUtil: number;
  recvCpuPerDatagramUs: number;
  recvCpuUtil: number;
  /** CPU used by everything else on the machine meanwhile, in CPUs. */
  otherLoad: number;
}

export interface CapacityResult {
  case: CapacityCase;
  samples: CapacitySample[];
  median: CapacitySample;
}

export function capacityCases(quick: boolean, secure = false): CapacityCase[] {
  const all: CapacityCase[] = [
    { id: 'direct-1-20k', title: 'generator -> 1 receiver at 20k/s (latency baseline)', receivers: 1, rate: 20000 },
    { id: 'direct-1-max', title: 'generator -> 1 receiver, as fast as possible', receivers: 1, rate: 0 },
    { id: 'direct-8-max', title: 'generator -> 8 receivers, as fast as possible', receivers: 8, rate: 0 },
    { id: 'direct-256-160k', title: 'generator -> 256 receivers, 625/s in = 160k/s copies', receivers: 256, rate: 625 },
  ];
  // The sealed check (what the load tools can do in secure mode) only in full runs: a quick run has no time to spare.
  if (secure && !quick) {
    all.push({ id: 'direct-8-max-secure', title: 'generator (sealing) -> 8 receivers (opening), as fast as possible', receivers: 8, rate: 0, mode: 'secure' });
  }
  return quick ? all.filter((c) => c.id !== 'direct-256-160k') : all;
}

const FLAT_OUT = 5e6;

export async function runCapacity(ctx: Context, c: CapacityCase, spec: SyntheticSpec, repeats: number, duration: number): Promise<CapacityResult> {
  const rate = c.rate > 0 ? c.rate : FLAT_OUT;
  const pool = poolFor(ctx, { kind: 'synthetic', rate, spec });
  const mode = modeOf(ctx, c);
  const { recv, ports } = await startReceivers(ctx, c.receivers, c.id, mode);
  const samples: CapacitySample[] = [];
  try {
    for (let rep = 0; rep < repeats; rep++) {
      ctx.progress.next(`load tools: ${c.title} ${rep + 1}/${repeats}`);
      const cap = Math.ceil(rate * duration) + 64;
      const id = 0x7f000000 + rep + 1;
      await arm(recv, id, cap + 1);
      await awaitQuiet(ctx);
      const before = await recv.ask<{ cpu_s: number }>('TOTAL');
      const m0 = machineCpu();
      // The generator takes the fan-out's CPU here (idle during this check); receivers keep theirs.
      const gen = await runGen(
        ctx,
        pool.path,
        ports,
        ['--rate', String(rate)],
        duration,
        cap,
        id,
        ctx.cpuFanout,
        (s) => ctx.progress.tick(`${s.toFixed(1)}/${duration} s`),
        mode,
      );
      const t = (await drain(recv)).total;
      const window = Math.max(gen.elapsed_s, (t.last - gen.t0_ns) / 1e9);
      const recvCpu = (await recv.ask<{ cpu_s: number }>('TOTAL')).cpu_s - before.cpu_s;
      const otherLoad = Math.max(0, machineCpu().busy - m0.busy - recvCpu - gen.cpu_s) / window;
      samples.push({
        offeredCopies: c.rate > 0 ? c.rate * c.receivers : null,
        genRate: gen.rate,
        copiesRate: gen.copies / gen.elapsed_s,
        deliveredRate: t.uniq / window,
        loss: gen.stamped ? 1 - t.uniq / (gen.stamped * c.receivers) : 0,
        receiverKernelDrops: t.drops,
        latency: { p50: t.p50 / 1000, p99: t.p99 / 1000, max: t.max / 1000 },
        genCpuPerCopyUs: gen.copies ? (gen.cpu_s / gen.copies) * 1e6 : NaN,
        genCpuUtil: gen.cpu_s / gen.elapsed_s,
        recvCpuPerDatagramUs: t.uniq ? (recvCpu / t.uniq) * 1e6 : NaN,
        recvCpuUtil: recvCpu / window,
        otherLoad,
      });
    }
  } finally {
    await recv.stop();
  }
  const m = <K extends keyof CapacitySample>(k: K) => median(samples.map((s) => s[k] as number));
  return {
    case: c,
    samples,
    median: {
      offeredCopies: samples[0]?.offeredCopies ?? null,
      genRate: m('genRate'),
      copiesRate: m('copiesRate'),
      deliveredRate: m('deliveredRate'),
      loss: m('loss'),
      receiverKernelDrops: m('receiverKernelDrops'),
      latency: {
        p50: median(samples.map((s) => s.latency.p50)),
        p99: median(samples.map((s) => s.latency.p99)),
        max: median(samples.map((s) => s.latency.max)),
      },
      genCpuPerCopyUs: m('genCpuPerCopyUs'),
      genCpuUtil: m('genCpuUtil'),
      recvCpuPerDatagramUs: m('recvCpuPerDatagramUs'),
      recvCpuUtil: m('recvCpuUtil'),
      otherLoad: m('otherLoad'),
    },
  };
}

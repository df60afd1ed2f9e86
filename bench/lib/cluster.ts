// Cluster mode under test: two udprepeaters, A and B, in one cluster over
// their own nats-server on a loopback port (README.md "Cluster mode";
// docs/PROTOCOL.md "The cluster bus"), both given the same static --to
// receivers, so that each serves about half of them (rendezvous hashing).
//
//   input one:    gen ──> A ──> receivers A serves        (the direct path)
//                         └──bus──> B ──> receivers B serves   (the bus path)
//   input split:  gen ──> A (even sequence numbers), B (odd ones), each
//                 publishing what it got for the other (gen --spread)
//
// To the driver (measure.ts) the pair is one fan-out: its input counters,
// output counters and CPU time are A's and B's added up; nats-server's CPU is
// reported apart. Each measurement also reads, per repeater, what it received,
// forwarded, published and took off the bus, and the receivers' latency of
// each path apart (recv PART: the receivers each repeater serves, and with a
// split input the parity of the sequence numbers says which repeater a
// datagram came in through).
//
// Every process here is started through procs.ts (launch, PR_SET_PDEATHSIG)
// and stopped with the fan-out: the repeaters first (they say goodbye on the
// bus), nats-server last.

import { execFileSync } from 'node:child_process';
import type { BenchMode } from './modes.js';
import { BenchError, Child, sleep, within } from './procs.js';
import { cpuSeconds, memory } from './procstat.js';
import { type ClusterKind, type FanCounters, type FanOut, httpGetRetry, type RepeaterFanOut, startRepeater, type TargetOptions } from './targets.js';

/** How the input reaches the cluster: all of it to A, or split between A and B. */
export type ClusterInput = 'one' | 'split';

export interface ClusterOptions extends TargetOptions {
  readonly input: ClusterInput;
  /** The nats-server binary. */
  readonly natsServer: string;
  /** CPU list for nats-server (undefined: not pinned). */
  readonly natsCpu: string | undefined;
  /** CPU list for repeater B (undefined: not pinned); A takes `cpu`. */
  readonly cpuB: string | undefined;
  /** Sealed bus: the key file both repeaters seal the bus with (--cluster-key-file); null = --cluster-insecure. */
  readonly keyFile: string | null;
  /** Starts of B allowed to get an even split of the receivers (default 16); the last split is kept. */
  readonly attempts?: number;
  readonly onProgress?: (s: string) => void;
}

/** One repeater's counters: at one moment (a snapshot), or their growth over a measurement. */
interface MemberCounts {
  /** CPU seconds (user + system, all threads). */
  cpu: number;
  /** Datagrams read from its own listener. */
  received: number;
  /** Output datagrams handed to the kernel. */
  forwarded: number;
  /**
   * Datagrams it published on the bus, and took off it
   * (udprepeater_cluster_datagrams_*_total: whatever the batching).
   */
  published: number;
  fromBus: number;
  /**
   * Bus messages carrying datagrams (kinds datagram and batch) it published,
   * and took off the bus: a repeater batches what it accepts in one turn of
   * its event loop, so under load one message carries many datagrams.
   */
  busPublished: number;
  busReceived: number;
  /** Bus messages dropped (stale, not_deliverable, replay, ...), and datagrams not published because the bus was down. */
  busDropped: Record<string, number>;
  publishSkipped: number;
}

/** One repeater's share of a measurement. */
export interface MemberFigures extends MemberCounts {
  name: 'A' | 'B';
  /** Subscribers it served before and after the measurement. */
  servedBefore: number;
  servedAfter: number;
  cpuPerOutUs: number;
}

/** Delivery and latency of one path (µs). */
export interface PathFigures {
  /** Receivers (or receiver halves, with a split input) on this path. */
  receivers: number;
  expected: number;
  delivered: number;
  loss: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface ClusterSample {
  input: ClusterInput;
  sealed: boolean;
  members: MemberFigures[];
  natsCpu: number;
  /** nats-server CPU per bus message carrying datagrams (published by A or B), and per output datagram of the cluster. */
  natsCpuPerMessageUs: number;
  natsCpuPerOutUs: number;
  /** A + B + nats-server CPU per output datagram. */
  totalCpuPerOutUs: number;
  /** Bus messages carrying datagrams published by A and B, and the datagrams in them. */
  busMessages: number;
  busDatagrams: number;
  /** Datagrams A and B took off the bus. */
  busDelivered: number;
  direct: PathFigures;
  bus: PathFigures;
}

interface MemberSnapshot extends MemberCounts {
  /** Subscribers it serves, live peers, bus connected (1/0). */
  served: number;
  peers: number;
  connected: number;
}

export interface ClusterSnapshot {
  members: [MemberSnapshot, MemberSnapshot];
  natsCpu: number;
}

export interface ClusterFanOut extends FanOut {
  readonly kind: ClusterKind;
  readonly input: ClusterInput;
  readonly sealed: boolean;
  /** Receiver ports A serves and B serves (from their /subscribers). */
  readonly servedBy: { readonly A: readonly number[]; readonly B: readonly number[] };
  readonly natsPid: number;
  /** How the split was reached (restarts of B), for the report. */
  readonly note: string;
  snapshot(): Promise<ClusterSnapshot>;
  /**
   * Waits (at most `ms`) until every bus message carrying datagrams that was
   * published has been taken off the bus (or dropped) by the other repeater: the receivers'
   * own drain (arrivals still for 80 ms) could otherwise end during a stall
   * of the bus path and count late datagrams as lost.
   */
  settle(ms: number): Promise<void>;
  /** recv PART specs of the two paths. */
  pathSpecs(): { direct: string; bus: string };
  peakRssParts(): { A: number; B: number; nats: number };
}

/** The nats-server binary, or a BenchError saying how to get one. */
export function findNatsServer(given: string | undefined): string {
  const bin = given ?? 'nats-server';
  try {
    const v = execFileSync(bin, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    if (!/nats-server/i.test(v)) throw new Error(`"${bin} --version" printed "${v}"`);
    return bin;
  } catch (err) {
    throw new BenchError(
      `the cluster scenarios need nats-server (${err instanceof Error ? err.message : String(err)}).\n` +
        'Install it (Debian/Ubuntu: apt-get install nats-server), pass --nats-server PATH, or skip them with --cluster none.',
    );
  }
}

export function natsVersion(bin: string): string {
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return '?';
  }
}

/** Starts nats-server on 127.0.0.1, a port of the kernel's choosing; returns it with its port. */
async function startNats(bin: string, cpu: string | undefined): Promise<{ child: Child; port: number }> {
  // -p -1: a random free port, which it logs. No monitoring port, no cluster routes.
  const child = Child.spawn('nats-server', bin, ['-a', '127.0.0.1', '-p', '-1'], { cpu });
  // Ready when it says so on stderr (its port comes first); refused if it exits before.
  const ready = new Promise<number>((resolve, reject) => {
    let port = 0;
    child.onStderrLine = (l) => {
      const m = /Listening for client connections on 127\.0\.0\.1:(\d+)/.exec(l);
      if (m !== null) port = Number(m[1]);
      if (/Server is ready/.test(l)) {
        if (port === 0) reject(new BenchError(`nats-server ready without saying its client port:\n${child.stderrTail}`));
        else resolve(port);
      }
    };
    void child.exited.then(() => reject(new BenchError(`nats-server exited before it was ready:\n${child.stderrTail}`)));
  });
  let port: number;
  try {
    port = await within(ready, 15_000, 'nats-server to be ready');
  } catch (err) {
    child.proc.kill('SIGKILL');
    throw new BenchError(`${(err as Error).message}${/^timed out/.test((err as Error).message) ? `:\n${child.stderrTail}` : ''}`);
  }
  return { child, port };
}

async function httpJson<T>(port: number, path: string): Promise<T> {
  return JSON.parse(await httpGetRetry(port, path)) as T;
}

interface SubscriberView {
  address: string;
  served?: boolean;
  servedBy?: string | null;
  heardBy?: string[];
}

async function memberSnapshot(r: RepeaterFanOut): Promise<MemberSnapshot> {
  const cpu = cpuSeconds(r.child.pid);
  const m = await r.metrics();
  const busDropped: Record<string, number> = {};
  for (const [k, v] of m) {
    const x = /^udprepeater_cluster_messages_dropped_total\{(.+)\}$/.exec(k);
    if (x !== null && v > 0) busDropped[x[1]!] = v;
  }
  return {
    cpu,
    received: m.get('udprepeater_datagrams_received_total') ?? 0,
    forwarded: m.get('udprepeater_datagrams_forwarded_total') ?? 0,
    published: m.get('udprepeater_cluster_datagrams_published_total') ?? 0,
    fromBus: m.get('udprepeater_cluster_datagrams_received_total') ?? 0,
    busPublished: (m.get('udprepeater_cluster_messages_published_total{datagram}') ?? 0) + (m.get('udprepeater_cluster_messages_published_total{batch}') ?? 0),
    busReceived: (m.get('udprepeater_cluster_messages_received_total{datagram}') ?? 0) + (m.get('udprepeater_cluster_messages_received_total{batch}') ?? 0),
    busDropped,
    publishSkipped: m.get('udprepeater_cluster_publish_skipped_total') ?? 0,
    served: m.get('udprepeater_cluster_owned_subscribers') ?? 0,
    peers: m.get('udprepeater_cluster_peers') ?? 0,
    connected: m.get('udprepeater_cluster_connected') ?? 0,
  };
}

const portOf = (address: string) => Number(address.split(':').pop());

/**
 * Waits until A and B see each other and agree that each receiver is served
 * by exactly one of them; returns the ports each serves. Null on timeout.
 * A restarted B's predecessor may still count as a live peer of A for a
 * peer timeout, but it said goodbye for every subscriber, so it serves none
 * and the agreement of A and the new B is the whole story.
 */
async function awaitSplit(a: RepeaterFanOut, b: RepeaterFanOut, ports: readonly number[], ms: number): Promise<{ A: number[]; B: number[] } | string> {
  const deadline = Date.now() + ms;
  const want = new Set(ports);
  let last = '';
  for (;;) {
    const [ma, mb] = await Promise.all([memberSnapshot(a), memberSnapshot(b)]);
    const dropped = (m: MemberSnapshot) => Object.entries(m.busDropped).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
    last = `A: connected ${ma.connected}, ${ma.peers} peers, bus messages dropped: ${dropped(ma)}; B: connected ${mb.connected}, ${mb.peers} peers, bus messages dropped: ${dropped(mb)}`;
    if (ma.peers >= 1 && mb.peers >= 1 && ma.connected === 1 && mb.connected === 1) {
      const [sa, sb] = await Promise.all([httpJson<SubscriberView[]>(a.metricsPort, '/subscribers'), httpJson<SubscriberView[]>(b.metricsPort, '/subscribers')]);
      const A = sa.filter((s) => s.served === true).map((s) => portOf(s.address));
      const B = sb.filter((s) => s.served === true).map((s) => portOf(s.address));
      const all = new Set([...A, ...B]);
      // Each knows that both heard every receiver, and between them they serve each exactly once.
      const heardByBoth = [...sa, ...sb].every((s) => s.heardBy?.length === 2);
      if (heardByBoth && A.length + B.length === ports.length && all.size === ports.length && [...all].every((p) => want.has(p))) return { A, B };
      const view = (v: SubscriberView[]) => v.map((s) => `${portOf(s.address)} served ${s.served} by ${s.servedBy}, heard by ${s.heardBy?.length ?? '?'}`).join('; ');
      last += `\nA's /subscribers: ${view(sa)}\nB's /subscribers: ${view(sb)}`;
    }
    if (Date.now() > deadline) return last;
    await sleep(100);
  }
}

/**
 * Starts nats-server, then A and B (same static receivers, same listener
 * spec with channel=ssl, cluster flags), and waits for the split. Unless it
 * is even (N/2 each, or as near as an odd N allows) B is restarted (a new
 * id, so a new draw) up to `attempts` times: per-repeater figures compare
 * best when both serve the same number.
 */
export async function startCluster(kind: ClusterKind, mode: BenchMode, ports: readonly number[], o: ClusterOptions): Promise<ClusterFanOut> {
  const say = o.onProgress ?? (() => undefined);
  const sealed = o.keyFile !== null;
  const nats = await startNats(o.natsServer, o.natsCpu);
  const started: RepeaterFanOut[] = [];
  try {
    const clusterArgs = [
      '--cluster',
      `nats://127.0.0.1:${nats.port}`,
      '--cluster-name',
      'bench',
      ...(sealed ? ['--cluster-key-file', o.keyFile!] : ['--cluster-insecure']),
    ];
    const member = async (cpu: string | undefined) => {
      const r = await startRepeater(mode, ports, { ...o, cpu, repeaterArgs: [...clusterArgs, ...o.repeaterArgs] }, kind);
      started.push(r);
      return r;
    };
    say('starting cluster member A');
    const a = await member(o.cpu);
    let b: RepeaterFanOut | null = null;
    let split: { A: number[]; B: number[] } | null = null;
    const attempts = Math.max(1, o.attempts ?? 16);
    const even = Math.floor(ports.length / 2);
    let starts = 0;
    for (;;) {
      if (b !== null) {
        // B says goodbye for every subscriber on the way out: A then counts only the new B.
        await b.stop();
        started.splice(started.indexOf(b), 1);
      }
      say(`starting cluster member B${starts > 0 ? ` (again: ${split!.A.length}/${split!.B.length} is not even)` : ''}`);
      b = await member(o.cpuB);
      starts++;
      const r = await awaitSplit(a, b, ports, 20_000);
      if (typeof r === 'string') {
        throw new BenchError(`cluster: A and B did not agree on who serves the ${ports.length} receivers within 20 s; last seen:\n${r}\nA's log:\n${a.child.stderrTail}\nB's log:\n${b.child.stderrTail}`);
      }
      split = r;
      if (Math.min(split.A.length, split.B.length) === even || starts >= attempts) break;
    }
    const s = split!;
    const note = `A serves ${s.A.length}, B serves ${s.B.length} of ${ports.length} receivers${starts > 1 ? ` (B started ${starts} times for ${Math.min(s.A.length, s.B.length) === even ? 'an even split' : `an even split, in vain: ${attempts} tries`})` : ''}`;
    const A = a;
    const B = b!;
    const pair = [A, B] as const;
    const cpuSum = () => cpuSeconds(A.child.pid) + cpuSeconds(B.child.pid);
    const spec = (xs: readonly number[], parity: number | null) => xs.map((p) => (parity === null ? String(p) : `${p}:${parity}`));
    const fan: ClusterFanOut = {
      kind,
      input: o.input,
      sealed,
      child: A.child,
      inputPort: A.inputPort,
      ...(o.input === 'split' ? { inputPorts: [A.inputPort, B.inputPort] } : {}),
      servedBy: s,
      natsPid: nats.child.pid,
      note,
      command: `A and B each: ${A.command ?? '?'}; the bus: ${o.natsServer} -a 127.0.0.1 -p -1`,
      // What A and B logged at warn or error (B's marked).
      get warnings() {
        return [...A.warnings, ...B.warnings.map((w) => `B: ${w}`)];
      },
      cpuSeconds: cpuSum,
      peakRssKiB: () => memory(A.child.pid).peakKiB + memory(B.child.pid).peakKiB,
      peakRssParts: () => ({ A: memory(A.child.pid).peakKiB, B: memory(B.child.pid).peakKiB, nats: memory(nats.child.pid).peakKiB }),
      async counters(): Promise<FanCounters> {
        const [ca, cb] = await Promise.all(pair.map((r) => r.counters()));
        const drops: Record<string, number> = { ...ca!.drops };
        for (const [k, v] of Object.entries(cb!.drops)) drops[k] = (drops[k] ?? 0) + v;
        return { received: ca!.received + cb!.received, sent: ca!.sent + cb!.sent, drops };
      },
      async snapshot(): Promise<ClusterSnapshot> {
        const natsCpu = cpuSeconds(nats.child.pid);
        const [ma, mb] = await Promise.all(pair.map(memberSnapshot));
        return { members: [ma!, mb!], natsCpu };
      },
      async settle(ms: number) {
        const deadline = Date.now() + ms;
        for (;;) {
          const [ma, mb] = await Promise.all(pair.map(memberSnapshot));
          // Counted in bus messages, not datagrams: a message dropped whole (refused by the sealed
          // gate, stale) is counted once, whatever it carried. Drops can also be of control
          // messages, or (not_deliverable) of a datagram in a message already counted received,
          // so this may end early, never late: the receivers' own drain still follows.
          const out = ma!.busPublished + mb!.busPublished;
          const taken = ma!.busReceived + mb!.busReceived + Object.values(ma!.busDropped).reduce((x, y) => x + y, 0) + Object.values(mb!.busDropped).reduce((x, y) => x + y, 0);
          if (taken >= out || Date.now() > deadline) return;
          await sleep(50);
        }
      },
      pathSpecs() {
        // Input one: A's receivers get everything from A, B's everything over the bus.
        if (o.input === 'one') return { direct: spec(s.A, null).join(','), bus: spec(s.B, null).join(',') };
        // Split: even sequence numbers went to A, odd ones to B (gen --spread, A first).
        return { direct: [...spec(s.A, 0), ...spec(s.B, 1)].join(','), bus: [...spec(s.A, 1), ...spec(s.B, 0)].join(',') };
      },
      async stop() {
        await Promise.all(pair.map((r) => r.stop()));
        await nats.child.stop();
      },
    };
    return fan;
  } catch (err) {
    for (const r of started) await r.stop();
    await nats.child.stop();
    throw err;
  }
}

interface PartDump {
  part: number;
  count: number;
  uniq: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** What one measurement of the cluster says, beyond the pair's totals. */
export async function clusterSample(
  fan: ClusterFanOut,
  before: ClusterSnapshot,
  after: ClusterSnapshot,
  recv: Child,
  stamped: number,
  window: number,
  flags: string[],
): Promise<ClusterSample> {
  const members: MemberFigures[] = (['A', 'B'] as const).map((name, i) => {
    const x = before.members[i]!;
    const y = after.members[i]!;
    const busDropped: Record<string, number> = {};
    for (const [k, v] of Object.entries(y.busDropped)) if (v - (x.busDropped[k] ?? 0) > 0) busDropped[k] = v - (x.busDropped[k] ?? 0);
    const cpu = y.cpu - x.cpu;
    const forwarded = y.forwarded - x.forwarded;
    return {
      name,
      cpu,
      received: y.received - x.received,
      forwarded,
      published: y.published - x.published,
      fromBus: y.fromBus - x.fromBus,
      busPublished: y.busPublished - x.busPublished,
      busReceived: y.busReceived - x.busReceived,
      busDropped,
      publishSkipped: y.publishSkipped - x.publishSkipped,
      servedBefore: x.served,
      servedAfter: y.served,
      cpuPerOutUs: forwarded > 0 ? (cpu / forwarded) * 1e6 : NaN,
    };
  });
  for (const m of members) {
    // Busy from the first datagram until the bus was empty: it could not keep up, and queues (its listener, the bus) grew.
    if (m.cpu / window > 0.9) flags.push(`cluster: ${m.name} used ${((m.cpu / window) * 100).toFixed(0)}% of a core over the run: saturated`);
    if (m.servedBefore !== m.servedAfter) flags.push(`cluster: ${m.name} served ${m.servedBefore} receivers before the run and ${m.servedAfter} after (a peer was taken for dead?)`);
    const d = Object.entries(m.busDropped);
    if (d.length > 0) flags.push(`cluster: ${m.name} dropped bus messages: ${d.map(([k, v]) => `${k} ${v}`).join(', ')}`);
    if (m.publishSkipped > 0) flags.push(`cluster: ${m.name} did not publish ${m.publishSkipped} datagrams (bus down)`);
  }
  for (const [i, m] of after.members.entries()) {
    if (m.connected !== 1 || m.peers !== 1) flags.push(`cluster: after the run ${i === 0 ? 'A' : 'B'} was ${m.connected === 1 ? 'connected' : 'NOT connected'} and saw ${m.peers} peers`);
  }
  const specs = fan.pathSpecs();
  const split = fan.input === 'split';
  const path = async (spec: string, receivers: number): Promise<PathFigures> => {
    // A path with no receiver (a lopsided split) has no figures.
    if (spec === '') return { receivers: 0, expected: 0, delivered: 0, loss: NaN, p50: NaN, p90: NaN, p99: NaN, max: NaN };
    const d = await recv.ask<PartDump>(`PART ${spec}`);
    // With a split input each receiver half sees every other datagram.
    const expected = split ? (stamped / 2) * receivers : stamped * receivers;
    return {
      receivers,
      expected,
      delivered: d.uniq,
      loss: expected > 0 ? Math.max(0, 1 - d.uniq / expected) : 0,
      p50: d.p50 / 1000,
      p90: d.p90 / 1000,
      p99: d.p99 / 1000,
      max: d.max / 1000,
    };
  };
  const n = fan.servedBy.A.length + fan.servedBy.B.length;
  const direct = await path(specs.direct, split ? n : fan.servedBy.A.length);
  const bus = await path(specs.bus, split ? n : fan.servedBy.B.length);
  const natsCpu = after.natsCpu - before.natsCpu;
  // The bus path much slower than the direct one: messages queued on the way (A's NATS client, nats-server, B).
  if (bus.p50 > 10 * direct.p50 && bus.p50 > 10_000) flags.push(`cluster: bus path p50 ${(bus.p50 / 1000).toFixed(0)} ms against ${(direct.p50 / 1000).toFixed(1)} ms direct: the bus path queued`);
  const out = members.reduce((s, m) => s + m.forwarded, 0);
  const busMessages = members.reduce((s, m) => s + m.busPublished, 0);
  const cpu = members.reduce((s, m) => s + m.cpu, 0);
  return {
    input: fan.input,
    sealed: fan.sealed,
    members,
    natsCpu,
    natsCpuPerMessageUs: busMessages > 0 ? (natsCpu / busMessages) * 1e6 : NaN,
    natsCpuPerOutUs: out > 0 ? (natsCpu / out) * 1e6 : NaN,
    totalCpuPerOutUs: out > 0 ? ((cpu + natsCpu) / out) * 1e6 : NaN,
    busMessages,
    busDatagrams: members.reduce((s, m) => s + m.published, 0),
    busDelivered: members.reduce((s, m) => s + m.fromBus, 0),
    direct,
    bus,
  };
}

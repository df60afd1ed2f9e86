// The fan-outs under test: the C floor and udprepeater. Both listen on an
// ephemeral 127.0.0.1 port, send to the same receiver ports, report their
// own input/output counters, and expose a pid for CPU and memory.

import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import type { BenchMode } from './modes.js';
import type { NativeTools } from './native.js';
import { dirname, join, relative } from 'node:path';
import { gcEnv } from './gcstats.js';
import { REPEATER_CLI, ROOT } from './paths.js';
import { BenchError, Child, sleep, within } from './procs.js';

/**
 * floor: the C reference. udprepeater: `serve` as installed (with its native
 * datagram path when the udpfast addon is built); its variants (below) are
 * the same CLI with a flag or an environment variable more.
 * udprepeater-cluster(-sealed): two repeaters A and B in cluster mode over
 * their own nats-server, the bus in clear or sealed (cluster.ts); only in
 * cluster scenarios, never chosen with --targets.
 * peer:NAME: another fan-out program, started from a --peer-cmd command line
 * (peer.ts).
 */
export type TargetKind = 'floor' | RepeaterKind | ClusterKind | PeerKind;
export type RepeaterKind = 'udprepeater' | 'udprepeater-dgram' | 'udprepeater-nowarm' | 'udprepeater-state8m' | 'udprepeater-state64m';
export type ClusterKind = 'udprepeater-cluster' | 'udprepeater-cluster-sealed';
export type PeerKind = `peer:${string}`;

export interface RepeaterVariant {
  /** Flags added to `serve`. */
  readonly args: readonly string[];
  /** Environment added. */
  readonly env?: Readonly<Record<string, string>>;
  /** The live state is filled to this bound (--state-max-bytes) before measuring (state.ts). */
  readonly fillState?: number;
  readonly text: string;
}

/**
 * udprepeater-dgram: UDPREPEATER_NATIVE=0, the pure node:dgram path.
 * udprepeater-nowarm: --no-warm-join, no live state kept (what warm join costs).
 * udprepeater-state8m / -state64m: --state-max-bytes 8 MiB / 64 MiB, the state
 * filled before measuring (a full live state: every new key evicts the oldest).
 */
export const REPEATER_VARIANTS: Readonly<Record<RepeaterKind, RepeaterVariant>> = {
  udprepeater: { args: [], text: 'udprepeater as built (warm join on: the default)' },
  'udprepeater-dgram': { args: [], env: { UDPREPEATER_NATIVE: '0' }, text: 'udprepeater on its node:dgram path (UDPREPEATER_NATIVE=0)' },
  'udprepeater-nowarm': { args: ['--no-warm-join'], text: 'udprepeater --no-warm-join (no live state)' },
  'udprepeater-state8m': { args: ['--state-max-bytes', String(8 << 20)], fillState: 8 << 20, text: 'udprepeater with a full 8 MiB live state' },
  'udprepeater-state64m': { args: ['--state-max-bytes', String(64 << 20)], fillState: 64 << 20, text: 'udprepeater with a full 64 MiB live state' },
};
export const TARGETS: readonly TargetKind[] = ['floor', ...(Object.keys(REPEATER_VARIANTS) as RepeaterKind[])];
export const CLUSTER_TARGETS: readonly ClusterKind[] = ['udprepeater-cluster', 'udprepeater-cluster-sealed'];
export const isCluster = (k: TargetKind): k is ClusterKind => (CLUSTER_TARGETS as readonly TargetKind[]).includes(k);
export const isPeer = (k: TargetKind): k is PeerKind => k.startsWith('peer:');
export const isRepeater = (k: TargetKind): k is RepeaterKind => Object.hasOwn(REPEATER_VARIANTS, k);
export const DEFAULT_TARGETS: readonly TargetKind[] = ['floor', 'udprepeater'];

/** How a report names a target. */
export function targetName(k: TargetKind): string {
  if (isPeer(k)) return k.slice(5);
  if (k === 'udprepeater-nowarm') return 'udprepeater --no-warm-join';
  if (k === 'udprepeater-state8m') return 'udprepeater, full 8 MiB state';
  if (k === 'udprepeater-state64m') return 'udprepeater, full 64 MiB state';
  return k;
}

/**
 * A command line as a reader can rerun it: paths relative to the
 * repository, receiver ports as {receiver}, a flag repeated for each
 * receiver written once with "(x N)".
 */
export function displayCommand(env: Readonly<Record<string, string>>, argv: readonly string[], receivers: readonly number[]): string {
  const ports = new Set(receivers.map(String));
  const tok = argv.map((a) => {
    let t = a.startsWith('/') ? relative(ROOT, a) || a : a;
    if (t.startsWith('..')) t = a;
    // The build directory the `build` symlink pointed at when the run started.
    t = t.replace(/^build\.[^/]+\//, 'build/');
    return t.replace(/127\.0\.0\.1:(\d+)/g, (m, p: string) => (ports.has(p) ? '127.0.0.1:{receiver}' : m)).replace(/^(\d+)$/, (m) => (ports.has(m) ? '{receiver}' : m));
  });
  const out: string[] = [];
  for (let i = 0; i < tok.length; ) {
    // A window of 1 or 2 tokens repeated: written once, with the count.
    let done = false;
    for (const w of [2, 1]) {
      let n = 1;
      while (i + (n + 1) * w <= tok.length && tok.slice(i, i + w).join('\0') === tok.slice(i + n * w, i + (n + 1) * w).join('\0')) n++;
      if (n > 1) {
        out.push(...tok.slice(i, i + w), `(x ${n})`);
        i += n * w;
        done = true;
        break;
      }
    }
    if (!done) out.push(tok[i++]!);
  }
  const quoted = out.map((t) => (/^[\w@%+=:,./{}()-]+$/.test(t) || /^\(x \d+\)$/.test(t) ? t : `'${t.replace(/'/g, "'\\''")}'`));
  return [...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...quoted].join(' ');
}

/** Which datagram path `udprepeater` (as installed) takes, as the repeater itself decides it. */
export function repeaterPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env['UDPREPEATER_NATIVE'] === '0') return 'node:dgram (UDPREPEATER_NATIVE=0)';
  try {
    // The repeater's own loader (build/src/net/native.js), when this tree has one.
    const m = require(join(dirname(REPEATER_CLI), 'net', 'native.js')) as { nativeStatus?: string };
    if (m.nativeStatus === undefined) return 'unknown';
    return m.nativeStatus === 'loaded' ? 'native (udpfast addon)' : `node:dgram (native path ${m.nativeStatus})`;
  } catch {
    return 'node:dgram (this tree has no native path)';
  }
}

export interface FanCounters {
  /** Datagrams the fan-out read from its input. */
  received: number;
  /** Output datagrams it handed to the kernel. */
  sent: number;
  /** Its own drop counters by reason (udprepeater), or kernel input drops (floor). */
  drops: Record<string, number>;
  /** udprepeater: its live state (all channels): entries and bytes now, evictions and expiries so far. */
  state?: { entries: number; bytes: number; evictions: number; expired: number };
}

export interface FanOut {
  readonly kind: TargetKind;
  readonly child: Child;
  readonly inputPort: number;
  /** Several inputs (cluster, input split): the generator sends datagram i to input i mod N (gen --spread). */
  readonly inputPorts?: readonly number[];
  counters(): Promise<FanCounters>;
  /** CPU seconds of the fan-out (all its processes); by default the child's. */
  cpuSeconds?(): number;
  /** Peak RSS in KiB (all its processes); by default the child's VmHWM. */
  peakRssKiB?(): number;
  /** Warnings and errors the fan-out logged (udprepeater), for the report. */
  readonly warnings: string[];
  /** The command line that started it (displayCommand), for the report. */
  readonly command?: string;
  /** Identity mode: the generator's flags for this fan-out's link (a new counter each run). */
  readonly genArgs?: () => string[];
  /** udprepeater: the file its GC preload writes (gcstats.ts). */
  readonly gcFile?: string;
  /**
   * A fan-out that counts nothing itself (a peer program): its output is what
   * the receivers got (and their kernels dropped), its input what the
   * generator sent less its input socket's kernel drops.
   */
  readonly countsFromReceivers?: boolean;
  stop(): Promise<void>;
}

export interface TargetOptions {
  readonly cpu: string | undefined;
  /** udprepeater: --send-queue, --recv-buffer and anything else to pass. */
  readonly repeaterArgs: readonly string[];
  readonly recvBuffer: number;
  /** udprepeater: the listener (default 127.0.0.1:0; cluster scenarios add channel=ssl, which cluster mode needs). */
  readonly listen?: string;
  /** udprepeater: count its GC pauses into this file (gc-preload.ts). */
  readonly gcFile?: string;
  /** ... and run a full collection on SIGUSR2 (the memory check, state.ts). */
  readonly gcOnSignal?: boolean;
}

export async function startFloor(tools: NativeTools, mode: BenchMode, portsFile: string, opts: TargetOptions): Promise<FanOut> {
  const argv = ['--listen', '127.0.0.1:0', '--to-file', portsFile, '--rcvbuf', String(opts.recvBuffer), ...mode.floorArgs()];
  const child = Child.spawn('floor', tools.floor, argv, { cpu: opts.cpu, stdin: true });
  const ready = await child.nextLine((l) => l.startsWith('READY '), 15_000, 'READY from the floor');
  const inputPort = Number(ready.split(' ')[1]);
  return {
    kind: 'floor',
    child,
    inputPort,
    warnings: [],
    command: displayCommand({}, [tools.floor.replace(/-[0-9a-f]{12}$/, ''), ...argv], []).replace(/--to-file \S+/, '--to-file {receiver ports}'),
    async counters() {
      const c = await child.ask<{ received: number; sent: number; errors: number; rxq_drops: number; unopened: number; badenv: number }>('DUMP');
      // unopened / badenv: secure mode, frames that did not open or held no valid Envelope.
      return { received: c.received, sent: c.sent, drops: { send_error: c.errors, input_rcvbuf: c.rxq_drops, unopened: c.unopened, badenv: c.badenv } };
    },
    stop: () => child.stop(),
  };
}

export function httpGet(port: number, path: string, ms = 5000): Promise<string> {
  return within(
    new Promise<string>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, method: 'GET' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        // A connection reset while the body streams errors the response, not the request: never uncaught.
        res.on('error', reject);
        res.on('data', (d: string) => (body += d));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new BenchError(`GET ${path}: HTTP ${res.statusCode}`))));
      });
      req.on('error', reject);
      req.end();
    }),
    ms,
    `GET http://127.0.0.1:${port}${path}`,
  );
}

/** httpGet, tried a second time after 200 ms when the first fails: a loaded machine may reset or time out one request. */
export function httpGetRetry(port: number, path: string, ms = 5000): Promise<string> {
  return httpGet(port, path, ms).catch(() => sleep(200).then(() => httpGet(port, path, ms)));
}

/** Sums a Prometheus text exposition by metric name and, optionally, one label. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m === null) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    const name = m[1]!;
    out.set(name, (out.get(name) ?? 0) + v);
    // One label per metric is kept apart: the drop reason, or the kind (cluster bus messages).
    const reason = /(?:reason|kind)="([^"]*)"/.exec(m[2] ?? '');
    if (reason !== null) out.set(`${name}{${reason[1]}}`, (out.get(`${name}{${reason[1]}}`) ?? 0) + v);
  }
  return out;
}

export interface RepeaterFanOut extends FanOut {
  readonly metricsPort: number;
  metrics(): Promise<Map<string, number>>;
}

/**
 * Starts `udprepeater serve` on 127.0.0.1:0. Logs at info, because the
 * lines that say which ports it bound ("listening", "status server
 * listening") and that it is ready ("udprepeater started") are info lines.
 */
export async function startRepeater(
  mode: BenchMode,
  staticPorts: readonly number[],
  opts: TargetOptions,
  kind: RepeaterKind | ClusterKind = 'udprepeater',
): Promise<RepeaterFanOut> {
  const variant = isRepeater(kind) ? REPEATER_VARIANTS[kind] : REPEATER_VARIANTS.udprepeater;
  const args = [
    REPEATER_CLI,
    'serve',
    ...mode.repeaterArgs(opts.listen ?? '127.0.0.1:0', staticPorts),
    '--metrics',
    '127.0.0.1:0',
    '--log-level',
    'info',
    '--log-format',
    'json',
    '--recv-buffer',
    String(opts.recvBuffer),
    ...variant.args,
    ...opts.repeaterArgs,
  ];
  const added = variant.env ?? {};
  const base = { ...process.env, ...added };
  const env = opts.gcFile === undefined ? base : gcEnv(base, opts.gcFile, opts.gcOnSignal === true);
  const child = Child.spawn(kind, process.execPath, args, { cpu: opts.cpu, env });
  const command = displayCommand(added, ['node', ...args], staticPorts);
  const warnings: string[] = [];
  let inputPort = 0;
  let metricsPort = 0;
  let started = false;
  child.onStderrLine = (line) => {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      if (line.trim() !== '') warnings.push(line);
      return;
    }
    if (r['msg'] === 'listening') inputPort = Number(String(r['bound']).split(':').pop());
    else if (r['msg'] === 'status server listening') metricsPort = Number(r['port']);
    else if (r['msg'] === 'udprepeater started') started = true;
    else if (r['level'] === 'warn' || r['level'] === 'error') {
      if (warnings.length < 50) warnings.push(line);
    }
  };
  const deadline = Date.now() + 20_000;
  while (!started) {
    if (!child.running) throw new BenchError(`udprepeater exited before it started:\n${child.stderrTail}`);
    if (Date.now() > deadline) {
      child.proc.kill('SIGKILL');
      throw new BenchError(`udprepeater did not log "udprepeater started" within 20 s:\n${child.stderrTail}`);
    }
    await sleep(20);
  }
  if (inputPort === 0 || metricsPort === 0) throw new BenchError('udprepeater started without logging its listener and metrics ports');
  // A loaded machine may reset or time out one scrape: the second try decides.
  const metrics = async () => parseMetrics(await httpGetRetry(metricsPort, '/metrics'));
  return {
    kind,
    child,
    inputPort,
    metricsPort,
    warnings,
    command,
    ...(opts.gcFile !== undefined && env !== base ? { gcFile: opts.gcFile } : {}),
    metrics,
    async counters() {
      const m = await metrics();
      const drops: Record<string, number> = {};
      for (const [k, v] of m) {
        const r = /^udprepeater_datagrams_dropped_total\{(.+)\}$/.exec(k);
        if (r !== null && v > 0) drops[r[1]!] = v;
      }
      // Kernel drops at the listening socket, where this build of udprepeater reports them.
      const kernel = m.get('udprepeater_listener_kernel_drops_total');
      if (kernel !== undefined && kernel > 0) drops['input_rcvbuf'] = kernel;
      return {
        received: m.get('udprepeater_datagrams_received_total') ?? 0,
        sent: m.get('udprepeater_datagrams_forwarded_total') ?? 0,
        drops,
        state: {
          entries: m.get('udprepeater_live_state_entries') ?? 0,
          bytes: m.get('udprepeater_live_state_bytes') ?? 0,
          evictions: m.get('udprepeater_live_state_evictions_total') ?? 0,
          expired: m.get('udprepeater_live_state_expired_total') ?? 0,
        },
      };
    },
    stop: () => child.stop(5000),
  };
}

/**
 * Subscribes every port to the repeater the way uWSGI nodes do (one 224/0
 * announce each) and waits until its /metrics count them all. Announces are
 * re-sent when the count stalls (UDP may drop a few under a burst).
 */
export async function subscribeAll(rep: RepeaterFanOut, mode: BenchMode, ports: readonly number[], key: string, onProgress: (n: number) => void): Promise<void> {
  const sock = createSocket('udp4');
  // Sends report their errors to their callbacks; a socket error besides must not end the run uncaught.
  sock.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      sock.off('error', reject);
      resolve();
    });
  });
  const sendAll = async () => {
    for (let i = 0; i < ports.length; i++) {
      const buf = mode.subscribeDatagram(key, ports[i]!);
      await new Promise<void>((resolve, reject) => sock.send(buf, rep.inputPort, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
      if (i % 200 === 199) await sleep(5);
    }
  };
  try {
    const deadline = Date.now() + 60_000;
    let last = -1;
    let lastChange = Date.now();
    await sendAll();
    for (;;) {
      const n = (await rep.metrics()).get('udprepeater_subscribers') ?? 0;
      onProgress(n);
      if (n >= ports.length) return;
      if (n !== last) {
        last = n;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > 2000) {
        await sendAll();
        lastChange = Date.now();
      }
      if (Date.now() > deadline) throw new BenchError(`only ${n} of ${ports.length} dynamic subscriptions registered within 60 s`);
      await sleep(200);
    }
  } finally {
    sock.close();
  }
}

// `npm run bench -- warm`: what a warm join costs and what it buys, in one
// run (bench/README.md, "Warm join"). A real repeater (build/src/cli.js
// serve) holds --sessions live sessions of --value-size bytes; a steady live
// stream goes to --live-subscribers existing subscribers; then a new
// subscriber joins. Measured: the time until the newcomer holds every one of
// the sessions, and the live stream's latency and loss before the join,
// during it (from the subscribe to the moment the newcomer holds all) and
// after it.
//
// Invariants of the measurement:
// - Latency is receive time minus the send time the live datagram carries
//   (process.hrtime.bigint(), monotonic, one clock for every thread of this
//   process); a datagram belongs to the window its send time falls in.
// - Loss per window = 1 - copies received / (datagrams sent x live
//   subscribers), counted after the stream stopped and a drain period, so a
//   late copy is not counted lost.
// - The newcomer's socket is read in a worker thread of its own, so the
//   20,000 datagrams/s of the warm join do not delay the event loop that
//   reads (and times) the live stream: what moves is the repeater, not us.
// - The newcomer holds a session when it received its set, from the warm
//   join or the live path; the live stream uses keys of its own, so "all
//   sessions" means the ones that were live before it came.

import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { createServer } from 'node:net';
import { loadavg } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { LogTap } from '../../test/helpers/logtap.js';
import { REPEATER_CLI } from './paths.js';
import { BenchError } from './procs.js';
import { httpGetRetry, parseMetrics } from './targets.js';

export interface WarmOptions {
  sessions: number;
  valueSize: number;
  keySize: number;
  liveRate: number;
  liveSubscribers: number;
  beforeS: number;
  afterS: number;
  warmRate: number | null;
  recvBuffer: number;
  timeoutS: number;
}

const DEFAULTS: WarmOptions = {
  sessions: 20_000,
  valueSize: 300,
  keySize: 32,
  liveRate: 5_000,
  liveSubscribers: 4,
  beforeS: 3,
  afterS: 2,
  warmRate: null,
  recvBuffer: 4 << 20,
  timeoutS: 60,
};

export const WARM_HELP = `warm options (npm run bench -- warm ...):
  --sessions N            live sessions in the repeater before the join (default 20000)
  --value-size BYTES      size of each session's value (default 300)
  --live-rate R           live-stream sets per second, to every existing subscriber (default 5000)
  --live-subscribers N    existing subscribers of the live stream (default 4)
  --before S / --after S  seconds of live stream measured before the join and after it is warm (default 3, 2)
  --warm-rate R           passed to the repeater (default: its own, 20000)
  --recv-buffer BYTES     SO_RCVBUF of every receiving socket, the newcomer's too (default 4194304)
`;

/** Parses `--name value` / `--name=value` pairs into WarmOptions. */
export function warmOptions(argv: readonly string[]): WarmOptions {
  const o = { ...DEFAULTS };
  const names: Record<string, keyof WarmOptions> = {
    '--sessions': 'sessions',
    '--value-size': 'valueSize',
    '--key-size': 'keySize',
    '--live-rate': 'liveRate',
    '--live-subscribers': 'liveSubscribers',
    '--before': 'beforeS',
    '--after': 'afterS',
    '--warm-rate': 'warmRate',
    '--recv-buffer': 'recvBuffer',
    '--timeout': 'timeoutS',
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    let v: string | undefined;
    const eq = a.indexOf('=');
    if (eq > 0) [a, v] = [a.slice(0, eq), a.slice(eq + 1)];
    const k = names[a];
    if (k === undefined) throw new BenchError(`warm: unknown option ${a}\n\n${WARM_HELP}`);
    v ??= argv[++i];
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < 0) throw new BenchError(`warm: ${a} "${v}": want a number >= 0`);
    (o as Record<string, number | null>)[k] = n;
  }
  if (o.valueSize < 16) throw new BenchError('warm: --value-size must be at least 16 (the live stamp)');
  if (o.keySize < 12) throw new BenchError('warm: --key-size must be at least 12');
  if (o.liveSubscribers < 1 || o.sessions < 1 || o.liveRate < 1) throw new BenchError('warm: --sessions, --live-rate and --live-subscribers must be at least 1');
  return o;
}

const now = () => process.hrtime.bigint();
/** How far the live stream may fall behind its schedule before the rest is skipped (see the stream loop). */
const MAX_BACKLOG_MS = 20;
const ms = (ns: bigint) => Number(ns) / 1e6;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** Errors of this process's UDP sockets after they were bound (none expected; a run with some says so). */
let socketErrors = 0;

function udp(recvBuffer: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createSocket({ type: 'udp4', recvBufferSize: recvBuffer });
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      s.off('error', reject);
      // A send that fails later (no callback: ENOBUFS under a stall, say) emits 'error': counted, never uncaught.
      s.on('error', () => socketErrors++);
      resolve(s);
    });
  });
}

function send(s: Socket, buf: Buffer, port: number): Promise<void> {
  return new Promise((resolve, reject) => s.send(buf, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
}

/** A metric summed over its labels; the scrape bounded (5 s) and retried once. */
async function metric(port: number, name: string): Promise<number> {
  return parseMetrics(await httpGetRetry(port, '/metrics')).get(name) ?? 0;
}

/** Polls `check` every 50 ms until it returns a value, or fails after `limitMs`. */
async function until<T>(what: string, limitMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new BenchError(`warm: timed out after ${limitMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A session key of exactly keySize bytes: "warm-<i>" padded. */
function sessionKey(i: number, keySize: number): Buffer {
  return Buffer.from(`warm-${i}`.padEnd(keySize, '.'), 'latin1');
}

/** The repeater under test, its JSON log lines read by the tests' LogTap as they come. */
class Repeater {
  readonly log = new LogTap();
  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
    readonly metricsPort: number,
  ) {
    const feed = (d: Buffer) => this.log.feed(d.toString('utf8'));
    child.stdout!.on('data', feed);
    child.stderr!.on('data', feed);
  }

  static async start(o: WarmOptions): Promise<Repeater> {
    const port = await freePort();
    const metricsPort = await freePort();
    const args = [REPEATER_CLI, 'serve', '--listen', `127.0.0.1:${port},channel=ssl`, '--metrics', `127.0.0.1:${metricsPort}`, '--log-format', 'json', '--log-level', 'info', '--recv-buffer', String(o.recvBuffer)];
    if (o.warmRate !== null) args.push('--warm-rate', String(o.warmRate));
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    process.once('exit', () => child.kill('SIGKILL'));
    const r = new Repeater(child, port, metricsPort);
    await r.waitFor('udprepeater started', {}, 15_000);
    return r;
  }

  /** The first log line with this msg and fields, from line `from` on; fails at once if the repeater exits. */
  waitFor(msg: string, fields: Record<string, unknown>, limitMs: number, from = 0): Promise<Record<string, unknown>> {
    const exited = new Promise<never>((_, reject) => this.child.once('exit', (code) => reject(new BenchError(`warm: the repeater exited (${code}) before "${msg}"`))));
    exited.catch(() => undefined);
    return Promise.race([this.log.waitFor(msg, fields, { from, ms: limitMs }), exited]);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }
}

// ---- the newcomer, in a worker thread ----

interface JoinerData {
  sessions: number;
  recvBuffer: number;
}

type JoinerMsg = { type: 'address'; address: string } | { type: 'warm'; at: string; datagrams: number } | { type: 'final'; datagrams: number; sessions: number; duplicates: number };

function joinerMain(): void {
  const d = workerData as JoinerData;
  const held = new Uint8Array(d.sessions);
  let count = 0;
  let datagrams = 0;
  let duplicates = 0;
  const s = createSocket({ type: 'udp4', recvBufferSize: d.recvBuffer });
  // The newcomer only reads; an error of its socket must not end the run (the sessions it missed show as missing).
  s.on('error', () => undefined);
  s.on('message', (m) => {
    datagrams++;
    if (m.length < 6 || m[0] !== 111 || m[3] !== 10) return;
    const klen = m.readUInt16LE(4);
    const key = m.toString('latin1', 6, 6 + klen);
    if (!key.startsWith('warm-')) return;
    const i = Number.parseInt(key.slice(5), 10);
    if (!(i >= 0 && i < d.sessions)) return;
    if (held[i] === 1) {
      duplicates++;
      return;
    }
    held[i] = 1;
    if (++count === d.sessions) parentPort!.postMessage({ type: 'warm', at: now().toString(), datagrams } satisfies JoinerMsg);
  });
  parentPort!.on('message', (m: string) => {
    if (m === 'final') {
      parentPort!.postMessage({ type: 'final', datagrams, sessions: count, duplicates } satisfies JoinerMsg);
      s.close();
    }
  });
  s.bind(0, '127.0.0.1', () => {
    const a = s.address();
    parentPort!.postMessage({ type: 'address', address: `${a.address}:${a.port}` } satisfies JoinerMsg);
  });
}

if (!isMainThread && (workerData as { warmJoiner?: boolean } | null)?.warmJoiner === true) joinerMain();

// ---- the live stream ----

interface Window {
  readonly name: string;
  from: bigint;
  to: bigint;
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export interface WarmResult {
  options: WarmOptions;
  warmMs: number;
  warmCompletedLogMs: number | null;
  joinerDatagrams: number;
  joinerSessions: number;
  joinerDuplicates: number;
  warmDatagramsSent: number;
  liveSentPerS: number;
  /** Live datagrams never sent because this process fell behind its schedule (a stall of the bench itself). */
  liveSkipped: number;
  /** The machine's 1-minute load average when the stream started and when it stopped. */
  load: [number, number];
  windows: Array<{ name: string; seconds: number; sent: number; copies: number; received: number; loss: number; p50Ms: number; p99Ms: number; maxMs: number }>;
}

export async function runWarmBench(o: WarmOptions, log: (s: string) => void): Promise<WarmResult> {
  const rep = await Repeater.start(o);
  const workers: Worker[] = [];
  const sockets: Socket[] = [];
  try {
    const tx = await udp(1 << 20);
    sockets.push(tx);
    // The existing subscribers, before the sessions exist: their own warm joins are empty.
    const live: Socket[] = [];
    for (let i = 0; i < o.liveSubscribers; i++) live.push(await udp(o.recvBuffer));
    sockets.push(...live);
    const subscribeAll = async () => {
      for (const s of live) await send(tx, encodeSubscription({ key: 'ssl', address: `127.0.0.1:${s.address().port}` }), rep.port);
    };
    await subscribeAll();
    await until('the live subscribers', 10_000, async () => ((await metric(rep.metricsPort, 'udprepeater_subscribers')) === o.liveSubscribers ? true : undefined));

    // The sessions, paced (a burst would only be lost in socket buffers), resent until all are live.
    log(`warm: loading ${o.sessions} sessions of ${o.valueSize} bytes`);
    const expires = Math.floor(Date.now() / 1000) + 3600;
    const value = Buffer.alloc(o.valueSize, 0x61);
    for (let pass = 0; pass < 3; pass++) {
      for (let i = 0; i < o.sessions; i++) {
        await send(tx, encodeCacheSet(sessionKey(i, o.keySize), value, expires), rep.port);
        if (i % 500 === 499) await new Promise((r) => setTimeout(r, 5));
      }
      const got = await until('the sessions to settle', 10_000, async () => {
        const a = await metric(rep.metricsPort, 'udprepeater_live_state_entries');
        await new Promise((r) => setTimeout(r, 200));
        return (await metric(rep.metricsPort, 'udprepeater_live_state_entries')) === a ? a : undefined;
      });
      if (got >= o.sessions) break;
      if (pass === 2) throw new BenchError(`warm: the repeater holds ${got} of ${o.sessions} sessions after three passes`);
    }

    // Receivers of the live stream: every copy timed against the send stamp in its value.
    const windows: Window[] = ['before', 'during', 'after'].map((name) => ({ name, from: 0n, to: 0n }));
    const sendTimes: bigint[] = [];
    // Every copy received: its send time and latency; sorted into windows at the end, once their bounds are known.
    const copies: Array<[bigint, number]> = [];
    for (const s of live) {
      s.on('message', (m) => {
        const at = now();
        if (m.length < 6 || m[0] !== 111 || m[3] !== 10) return;
        const klen = m.readUInt16LE(4);
        if (m.toString('latin1', 6, 11) !== 'live-') return;
        const v = 6 + klen + 2;
        const seq = m.readUInt32LE(v);
        const sentAt = sendTimes[seq];
        if (sentAt === undefined || m.readBigUInt64LE(v + 8) !== sentAt) return;
        copies.push([sentAt, ms(at - sentAt)]);
      });
    }

    // The newcomer, in its own thread.
    const joiner = new Worker(__filename, { workerData: { warmJoiner: true, sessions: o.sessions, recvBuffer: o.recvBuffer } satisfies JoinerData & { warmJoiner: true } });
    workers.push(joiner);
    let warmAt: bigint | null = null;
    let final: Extract<JoinerMsg, { type: 'final' }> | null = null;
    let wake: () => void = () => undefined;
    const joinerAddress = new Promise<string>((resolve) => {
      joiner.on('message', (m: JoinerMsg) => {
        if (m.type === 'address') resolve(m.address);
        else if (m.type === 'warm') warmAt = BigInt(m.at);
        else final = m;
        wake();
      });
    });
    const address = await joinerAddress;

    // The live stream: liveRate sets per second, paced by a 1 ms timer, each stamped (seq, send time).
    const liveValue = Buffer.alloc(o.valueSize, 0x62);
    let seq = 0;
    let stop = false;
    const t0 = now();
    const loadStart = loadavg()[0]!;
    // A steady stream, not a catch-up burst: when this process was not scheduled for a while, what fell
    // more than MAX_BACKLOG_MS behind is not sent at all, and counted (a burst would measure our stall).
    let behind = 0;
    const stream = (async () => {
      const start = now();
      while (!stop) {
        let due = Math.floor((ms(now() - start) / 1000) * o.liveRate) - behind;
        const cap = Math.max(1, Math.ceil((o.liveRate * MAX_BACKLOG_MS) / 1000));
        if (due - seq > cap) {
          behind += due - seq - cap;
          due = seq + cap;
        }
        while (seq < due && !stop) {
          const t = now();
          liveValue.writeUInt32LE(seq, 0);
          liveValue.writeBigUInt64LE(t, 8);
          sendTimes[seq] = t;
          const key = Buffer.from(`live-${seq % 5000}`.padEnd(o.keySize, '.'), 'latin1');
          seq++;
          tx.send(encodeCacheSet(key, liveValue, expires), rep.port, '127.0.0.1');
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    })();

    // Before: a first second to settle, then beforeS seconds.
    windows[0]!.from = t0 + 1_000_000_000n;
    windows[0]!.to = windows[0]!.from + BigInt(Math.round(o.beforeS * 1e9));
    await new Promise((r) => setTimeout(r, Math.ceil(ms(windows[0]!.to - now()))));
    // The join: during runs from the subscribe until the newcomer holds every session.
    const from = rep.log.length;
    const joinAt = now();
    windows[1]!.from = windows[0]!.to;
    windows[1]!.to = 1n << 62n;
    log(`warm: a new subscriber joins (${address})`);
    await send(tx, encodeSubscription({ key: 'ssl', address }), rep.port);
    const refresh = setInterval(() => void subscribeAll().then(() => send(tx, encodeSubscription({ key: 'ssl', address }), rep.port)), 10_000);
    const deadline = Date.now() + o.timeoutS * 1000;
    while (warmAt === null) {
      if (Date.now() > deadline) throw new BenchError(`warm: the newcomer did not hold all ${o.sessions} sessions within ${o.timeoutS} s`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
    const warm: bigint = warmAt;
    windows[1]!.to = warm;
    windows[2]!.from = warm;
    windows[2]!.to = warm + BigInt(Math.round(o.afterS * 1e9));
    await new Promise((r) => setTimeout(r, Math.ceil(ms(windows[2]!.to - now()))));
    stop = true;
    await stream;
    clearInterval(refresh);
    // Drain: a copy still in a socket buffer is late, not lost.
    await new Promise((r) => setTimeout(r, 500));
    const completed = await rep.waitFor('warm join completed', { address }, 5000, from).catch(() => null);
    const warmDatagramsSent = await metric(rep.metricsPort, 'udprepeater_warm_datagrams_total');
    joiner.postMessage('final');
    while (final === null) await new Promise<void>((r) => (wake = r));
    const f = final as Extract<JoinerMsg, { type: 'final' }>;

    return {
      options: o,
      warmMs: ms(warm - joinAt),
      warmCompletedLogMs: completed === null ? null : (completed['ms'] as number),
      joinerDatagrams: f.datagrams,
      joinerSessions: f.sessions,
      joinerDuplicates: f.duplicates,
      warmDatagramsSent,
      liveSentPerS: seq / (ms(now() - t0) / 1000),
      liveSkipped: behind,
      load: [loadStart, loadavg()[0]!],
      windows: windows.map((w) => {
        const inside = (t: bigint) => t >= w.from && t < w.to;
        const sent = sendTimes.filter(inside).length;
        const sorted = copies.filter(([t]) => inside(t)).map(([, l]) => l).sort((a, b) => a - b);
        const expected = sent * o.liveSubscribers;
        return {
          name: w.name,
          seconds: ms(w.to - w.from) / 1000,
          sent,
          copies: expected,
          received: sorted.length,
          loss: expected === 0 ? 0 : 1 - sorted.length / expected,
          p50Ms: quantile(sorted, 0.5),
          p99Ms: quantile(sorted, 0.99),
          maxMs: sorted.at(-1) ?? NaN,
        };
      }),
    };
  } finally {
    for (const w of workers) await w.terminate();
    for (const s of sockets) s.close();
    await rep.stop();
  }
}

/** The figures as text, with the command that produced them. */
export function formatWarm(r: WarmResult, command: string): string {
  const o = r.options;
  const pct = (x: number) => `${(x * 100).toFixed(3)}%`;
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-');
  const lines = [
    `command: ${command}`,
    `setup: ${o.sessions} sessions of ${o.valueSize} B (keys ${o.keySize} B) in the repeater; live stream ${o.liveRate}/s to ${o.liveSubscribers} subscribers; warm rate ${o.warmRate ?? 'default (20000)'}/s; SO_RCVBUF ${o.recvBuffer}`,
    `time to warm: ${r.warmMs.toFixed(0)} ms from the subscribe until the newcomer held all ${o.sessions} sessions (repeater's own count: ${r.warmCompletedLogMs ?? '-'} ms, 100 ms start delay included in both)`,
    `machine: load average ${r.load[0].toFixed(2)} at the start of the stream, ${r.load[1].toFixed(2)} at its end; live datagrams skipped because the bench fell behind its schedule: ${r.liveSkipped}${socketErrors > 0 ? `; UDP socket errors in the bench: ${socketErrors}` : ''}`,
    `newcomer: ${r.joinerSessions}/${o.sessions} sessions, ${r.joinerDatagrams} datagrams received (${r.joinerDuplicates} duplicate sessions); warm-join datagrams sent: ${r.warmDatagramsSent}`,
    '',
    '| live stream | seconds | sent | copies expected | received | loss | p50 ms | p99 ms | max ms |',
    '|---|---|---|---|---|---|---|---|---|',
    ...r.windows.map((w) => `| ${w.name} | ${w.seconds.toFixed(2)} | ${w.sent} | ${w.copies} | ${w.received} | ${pct(w.loss)} | ${f(w.p50Ms)} | ${f(w.p99Ms)} | ${f(w.maxMs)} |`),
  ];
  return `${lines.join('\n')}\n`;
}

/** The `warm` command of bench/run.ts. */
export async function warmCommand(argv: readonly string[], command: string): Promise<void> {
  if (argv.includes('--help')) {
    process.stdout.write(WARM_HELP);
    return;
  }
  const o = warmOptions(argv);
  const r = await runWarmBench(o, (s) => process.stderr.write(`${s}\n`));
  process.stdout.write(formatWarm(r, command));
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

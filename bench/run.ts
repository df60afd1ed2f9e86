// `npm run bench -- [options]`: the load-replay suite. See bench/README.md.
//
//   npm run bench                 full run, plain, secure and cluster (about 25 minutes on 2 cores)
//   npm run bench -- --quick      the same questions, smaller (about 3 minutes)
//   npm run bench -- --mode secure  only the secure scenarios and their plain twins
//   npm run bench -- --mode cluster only the cluster scenarios (two repeaters over NATS)
//   npm run bench -- --mode identity only the identity scenarios, their plain twins and the revocation latency
//   npm run bench -- --mode figures only what the figures table needs (bench/README.md "The figures")
//   npm run bench -- --peer-cmd 'samplicator=/path/samplicate -s 127.0.0.1 -p {port} 127.0.0.1/{rport}'
//   npm run bench -- replay --capture FILE --to 127.0.0.1:PORT [--speed 10]
//   npm run bench -- pcap-info FILE
//   npm run bench -- capacity     only the generator/receiver self-check
//   npm run bench -- selftest     checks the bench's own parts

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { type CapacityResult, capacityCases, runCapacity } from './lib/capacity.js';
import { machineFacts } from './lib/machine.js';
import { type Context, fmtRate, poolFor, runGen, runGroup, type Scenario, type ScenarioResult } from './lib/measure.js';
import { type BenchMode, type ModeName, PLAIN, secureMode } from './lib/modes.js';
import { buildNative, requireSodium, SODIUM_HINT } from './lib/native.js';
import { BUILD_DIR, DEFAULT_CAPTURE, REPEATER_CLI, RESULTS_DIR, ROOT } from './lib/paths.js';
import { describeCapture, readPcap } from './lib/pcap.js';
import { findNatsServer, natsVersion } from './lib/cluster.js';
import { parsePeerCmd, type PeerSpec } from './lib/peer.js';
import { buildPlan, type ClusterVariant, type ModeSelection, parseClusterVariants, parsePoints } from './lib/plan.js';
import { BenchError, installCleanup, setLauncher } from './lib/procs.js';
import { Progress } from './lib/progress.js';
import { clusterNotes, type RunInfo, summarize, targetList, writeReports } from './lib/report.js';
import { checkSecure, type KeyInfo, keygen, keyIdOfFile } from './lib/secure-check.js';
import { identityMode, makeIdentities } from './lib/identity-mode.js';
import { checkIdentity } from './lib/identity-check.js';
import { measureRevocation, type RevocationResult } from './lib/revocation.js';
import { selftest, selftestCluster } from './lib/selftest.js';
import { selftestFigures } from './lib/selftest-figures.js';
import { parseSize, type SyntheticSpec } from './lib/synthetic.js';
import { type MemoryResult, memoryLine, runStateMemory } from './lib/state.js';
import { DEFAULT_TARGETS, repeaterPath, TARGETS, type TargetKind } from './lib/targets.js';
import { warmCommand } from './lib/warm.js';

const HELP = `usage: npm run bench -- [command] [options]

commands:
  (none)       run the suite and write bench/results/<name>.{md,svg,json}
  capacity     only measure the generator and receivers on their own
  replay       replay a capture at a running repeater on 127.0.0.1
  pcap-info    describe a capture file
  selftest     check the pcap reader, generator and receivers
  warm         time to warm a joining node, and the join's effect on live traffic (bench/README.md)
  report FILE  re-render the .md and .svg of a results .json

suite options:
  --quick                 smaller matrix, 3 repeats of 1.5 s (about 4 minutes, 1.5 of them cluster mode)
  --repeats N             measurements per fan-out per scenario (default 5; quick 3)
  --duration S            seconds per measurement (default 4; quick 1.5)
  --warmup S              warm-up traffic per fan-out before measuring (default 0.5; quick 0.3)
  --subscribers LIST      subscriber counts of the chart series (default 1,8,64,256)
  --series LIST           offered output rates, datagrams/s (default 160000,480000; quick 160000)
  --big N                 subscribers of the one-channel dynamic run (default 10000; quick 1000; 0 = skip)
  --targets LIST          floor,udprepeater,udprepeater-dgram (default floor,udprepeater; udprepeater-dgram
                          is udprepeater with UDPREPEATER_NATIVE=0, its pure node:dgram path)
  --mode plain|secure|identity|cluster|figures|both
                          plain: the plain matrix and the figures' plain scenarios; secure: only the secure points and
                          their plain twins; identity: only the identity points, their plain twins and the revocation
                          latency; cluster: only the cluster scenarios; figures: only what the figures table
                          needs (1 and 8 subscribers at 20k/s, 8 at 60k/s, a full live state, its memory, secure mode and
                          secure with identities at 1 and 8 subscribers, the revocation latency, the cluster at 5k/s);
                          both (default): all of it
  --peer-cmd 'NAME=CMD'   another fan-out program measured beside udprepeater in the figures' plain scenarios
                          (repeatable). CMD is run without a shell, pinned like every fan-out; placeholders: {port}
                          (where it must listen, on 127.0.0.1), {to} / {rport} (a word repeated for each receiver, with
                          127.0.0.1:PORT / PORT), {tolist} / {rports} (all receivers in one comma-separated word),
                          {rcvbuf}; the words between a lone [ and ] are repeated together for each receiver
                          ([ --to {to} ]). E.g. 'samplicator=/opt/samplicate -s 127.0.0.1 -p {port} -b {rcvbuf} 127.0.0.1/{rport}'
  --state-memory LIST     the memory checks: a live state of each size (MiB: 8 or 64) filled, then re-set with values
                          of the same size (default 8,64; quick 8; none); ids memory-8m, memory-64m (--only applies)
  --no-gc-stats           do not load the GC-pause counter into udprepeater (NODE_OPTIONS=--require gc-preload.js)
  --secure POINTS         secure points, SUBSCRIBERSxRATE (input datagrams/s), comma-separated, or none
                          (default 1x20000,1x160000,8x20000,64x2500,8x60000; quick 8x20000)
  --identity POINTS       identity points (secure with identities: link frames, udprepeater --identity --peers),
                          SUBSCRIBERSxRATE, comma-separated, or none (default 1x20000,8x20000; quick 8x20000)
  --revocations N         repetitions of the revocation latency (id revocation; default 5; quick 3; 0 = skip)
  --cluster VARIANTS      cluster scenarios (two repeaters A and B over a nats-server, each serving about half of the
                          same static subscribers, next to the floor and a standalone udprepeater): one (input to A,
                          bus in clear), sealed (the same with the bus sealed, --cluster-key-file), split (input split
                          between A and B); comma-separated, or none (default one,sealed,split)
  --cluster-points POINTS cluster points, SUBSCRIBERSxRATE (input datagrams/s), comma-separated
                          (default 8x20000,8x5000; quick 8x5000)
  --cluster-pin fanout|spread|none
                          where the cluster runs: fanout (default): A, B and nats-server all on the fan-out CPU,
                          the budget the standalone repeater gets; spread: A on the fan-out CPU, B and nats-server
                          on the others (with the generator and receivers); none: not pinned
  --nats-server PATH      the nats-server binary (default: nats-server on PATH)
  --key-file FILE         secure mode: use this key (32 raw bytes, mode 0600) instead of a new one from
                          "udprepeater keygen" in the scratch directory
  --open-every            secure mode: receivers open every frame (by default a byte-identical copy of a frame
                          that opened is not opened again)
  --only REGEX            run only scenarios whose id matches (ids are listed in the report)
  --value-size DIST       value sizes: N, MIN-MAX or tls (default 200)
  --key-size DIST         key sizes (default 32, a TLS session id)
  --deletes FRACTION      share of deletes, 0..1 (default 0)
  --lifetime S            expiry of each set, sent as absolute unix time (default 300)
  --capture FILE          capture to replay (default bench/captures/uwsgi-sessions.pcap)
  --replay-speeds LIST    speeds for the capture, 0 = as fast as possible (default 1,10,0; quick 10)
  --replay-port P         replay only datagrams sent to port P in the capture
  --no-replay             skip the capture replays
  --no-capacity           skip the generator/receiver self-check
  --send-queue N          passed to udprepeater
  --repeater-arg ARG      any other udprepeater serve flag (repeatable, e.g. --repeater-arg=--send-buffer=1048576)
  --recv-buffer BYTES     SO_RCVBUF of the fan-out input and every receiver (default 4194304)
  --no-pin                do not pin the fan-out and the load tools to separate CPUs
  --quiet-threshold CPUS  before each measurement, wait until the rest of the machine uses less than this (default 0.25)
  --quiet-budget S        total seconds the run may spend waiting for that (default 120, at most 10 per measurement;
                          quick 6, at most 2 per measurement)
  --name NAME             output base name under bench/results (default latest; quick runs: quick)

replay options:
  --capture FILE --to 127.0.0.1:PORT [--speed X (default 1; 0 = as fast as possible)] [--loop]
  [--duration S (default: once through)] [--replay-port P] [--replay-all (also subscriptions)]
  [--no-stamp (send the payloads byte for byte; by default the first 24 bytes of each value,
  or of each delete's key, carry the bench's sequence number and send time)]
  [--mode secure --key-file FILE (seal every datagram for a sealed listener, under the repeater's key)]
`;

type Opts = Map<string, string[]>;

function parseArgs(argv: string[]): { command: string; opts: Opts } {
  const opts: Opts = new Map();
  let command = 'suite';
  const flags = new Set(['--quick', '--no-replay', '--no-capacity', '--no-pin', '--no-gc-stats', '--loop', '--replay-all', '--no-stamp', '--open-every', '--help', '-h']);
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    if (i === 0 && !a.startsWith('-')) {
      command = a;
      continue;
    }
    if (!a.startsWith('-')) {
      opts.set('_', [...(opts.get('_') ?? []), a]);
      continue;
    }
    let v: string | undefined;
    const eq = a.indexOf('=');
    if (eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (flags.has(a)) {
      opts.set(a, ['1']);
      continue;
    }
    if (v === undefined) {
      v = argv[++i];
      if (v === undefined) throw new BenchError(`${a} needs a value`);
    }
    opts.set(a, [...(opts.get(a) ?? []), v]);
  }
  return { command, opts };
}

const one = (o: Opts, k: string) => o.get(k)?.at(-1);
function num(o: Opts, k: string, dflt: number, min = 0): number {
  const v = one(o, k);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new BenchError(`${k} "${v}": want a number >= ${min}`);
  return n;
}
function list(o: Opts, k: string, dflt: number[]): number[] {
  const v = one(o, k);
  if (v === undefined) return dflt;
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.some((x) => !Number.isFinite(x) || x < 0)) throw new BenchError(`${k} "${v}": want comma-separated numbers`);
  return xs;
}

/** Removes scratch directories left by bench processes that no longer exist (e.g. killed with SIGKILL). */
function removeStaleScratch(): void {
  if (!existsSync(BUILD_DIR)) return;
  for (const d of readdirSync(BUILD_DIR)) {
    const m = /^(?:run|replay|selftest)-(\d+)$/.exec(d);
    if (m === null || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      rmSync(join(BUILD_DIR, d), { recursive: true, force: true });
    }
  }
}

function gitHead(): string | null {
  try {
    const head = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${head} with uncommitted changes in src/` : head;
  } catch {
    return null;
  }
}

function commandLine(argv: string[]): string {
  const q = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const args = argv.map(q).join(' ');
  return process.env['npm_lifecycle_event'] === 'bench' ? `npm run bench${args ? ` -- ${args}` : ''}` : `node ${relative(ROOT, process.argv[1]!)} ${args}`.trim();
}

function fdLimit(): number {
  try {
    const l = readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+)/m.exec(l);
    return m ? Number(m[1]) : Infinity;
  } catch {
    return Infinity;
  }
}

function pinning(noPin: boolean, nproc: number): { fan: string | undefined; load: string | undefined; text: string } {
  if (noPin || nproc < 2) return { fan: undefined, load: undefined, text: 'no CPU pinning' };
  const load = Array.from({ length: nproc }, (_, i) => i).filter((i) => i !== 1).join(',');
  return { fan: '1', load, text: `fan-out under test pinned to CPU 1, generator and receivers to CPU ${load}` };
}

/** Which scenarios --mode asks for. */
function modeSelection(opts: Opts, dflt: ModeSelection): ModeSelection {
  const m = one(opts, '--mode') ?? dflt;
  if (m !== 'plain' && m !== 'secure' && m !== 'identity' && m !== 'both' && m !== 'cluster' && m !== 'figures') throw new BenchError(`--mode ${m}: want plain, secure, identity, cluster, figures or both`);
  return m;
}

type ClusterPin = 'fanout' | 'spread' | 'none';

/** Where A, B and nats-server run (--cluster-pin), given the fan-out's and the load tools' CPUs. */
function clusterPinning(opts: Opts, pin: { fan: string | undefined; load: string | undefined }): { mode: ClusterPin; a: string | undefined; b: string | undefined; nats: string | undefined; text: string } {
  const mode = (one(opts, '--cluster-pin') ?? 'fanout') as ClusterPin;
  if (!['fanout', 'spread', 'none'].includes(mode)) throw new BenchError(`--cluster-pin ${mode}: want fanout, spread or none`);
  if (mode === 'none' || pin.fan === undefined) return { mode, a: undefined, b: undefined, nats: undefined, text: 'cluster: A, B and nats-server not pinned' };
  if (mode === 'fanout') return { mode, a: pin.fan, b: pin.fan, nats: pin.fan, text: `cluster: A, B and nats-server all on CPU ${pin.fan} (the fan-out CPU)` };
  return { mode, a: pin.fan, b: pin.load, nats: pin.load, text: `cluster: A on CPU ${pin.fan} (the fan-out CPU), B and nats-server on CPU ${pin.load} (with the generator and receivers)` };
}

/**
 * Secure mode for this run: the key (a new one from the real `udprepeater
 * keygen` in the scratch directory, or --key-file) and the mode built on it.
 */
async function prepareSecure(opts: Opts, scratch: string, tools: ReturnType<typeof buildNative>): Promise<{ key: KeyInfo; mode: BenchMode }> {
  requireSodium(tools);
  const given = one(opts, '--key-file');
  let key: KeyInfo;
  if (given !== undefined) {
    if (!existsSync(given)) throw new BenchError(`--key-file ${given}: no such file`);
    try {
      key = { file: resolve(given), id: keyIdOfFile(given) };
    } catch (err) {
      throw new BenchError(`--key-file ${given}: ${err instanceof Error ? err.message : String(err)}`);
    }
  } else key = keygen(join(scratch, 'bench.key'));
  const mode = await secureMode({ keyFile: key.file, openEvery: opts.has('--open-every') });
  return { key, mode };
}

function makeContext(
  opts: Opts,
  progress: Progress,
  scratch: string,
  tools: ReturnType<typeof buildNative>,
  quick: boolean,
  secure: BenchMode | null,
  natsServer: string | null = null,
  peers: readonly PeerSpec[] = [],
  identity: BenchMode | null = null,
): Context {
  const modes: Partial<Record<ModeName, BenchMode>> = { plain: PLAIN };
  if (secure !== null) modes.secure = secure;
  if (identity !== null) modes.identity = identity;
  const pin = pinning(opts.has('--no-pin'), machineFacts(tools.compiler).nproc);
  const repeaterArgs = [...(opts.get('--repeater-arg') ?? [])];
  const sq = one(opts, '--send-queue');
  if (sq !== undefined) repeaterArgs.push('--send-queue', sq);
  const cp = clusterPinning(opts, pin);
  return {
    tools,
    modes,
    scratch,
    cpuFanout: pin.fan,
    cpuLoad: pin.load,
    ...(natsServer === null ? {} : { cluster: { natsServer, cpuA: cp.a, cpuB: cp.b, cpuNats: cp.nats, keyFile: null } }),
    recvBuffer: num(opts, '--recv-buffer', 4 << 20, 1024),
    repeaterArgs,
    peers: new Map(peers.map((p) => [p.kind, p])),
    gcStats: !opts.has('--no-gc-stats'),
    warmup: num(opts, '--warmup', quick ? 0.3 : 0.5),
    progress,
    quiet: {
      threshold: num(opts, '--quiet-threshold', 0.25),
      budget: num(opts, '--quiet-budget', quick ? 6 : 120),
      perMeasurement: quick ? 2 : 10,
      spent: 0,
    },
  };
}

function syntheticSpec(opts: Opts): SyntheticSpec {
  const deletes = num(opts, '--deletes', 0);
  if (deletes > 1) throw new BenchError('--deletes is a fraction between 0 and 1');
  return {
    keySize: parseSize('key-size', one(opts, '--key-size') ?? '32'),
    valueSize: parseSize('value-size', one(opts, '--value-size') ?? '200'),
    deletes,
    lifetime: num(opts, '--lifetime', 300),
    poolSize: 4096,
    seed: 1,
  };
}

async function suite(argv: string[], opts: Opts, capacityOnly: boolean): Promise<void> {
  const started = new Date();
  const quick = opts.has('--quick');
  if (!existsSync(REPEATER_CLI)) throw new BenchError(`${relative(ROOT, REPEATER_CLI)} is missing: run "npm run build:dev" (npm run bench does it)`);
  const progress = new Progress(1);
  const tools = buildNative((s) => progress.note(s));
  setLauncher(tools.launch);
  const scratch = join(BUILD_DIR, `run-${process.pid}`);
  mkdirSync(scratch, { recursive: true });
  process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));
  const modeSel = modeSelection(opts, 'both');
  let securePoints: Array<[number, number]>;
  try {
    securePoints = parsePoints(one(opts, '--secure') ?? (quick ? '8x20000' : '1x20000,1x160000,8x20000,64x2500,8x60000'));
  } catch (err) {
    throw new BenchError(`--secure ${(err as Error).message}`);
  }
  let identityPoints: Array<[number, number]>;
  try {
    identityPoints = parsePoints(one(opts, '--identity') ?? (quick ? '8x20000' : '1x20000,8x20000'));
  } catch (err) {
    throw new BenchError(`--identity ${(err as Error).message}`);
  }
  let clusterVariants: ClusterVariant[];
  let clusterPoints: Array<[number, number]>;
  try {
    clusterVariants = parseClusterVariants(one(opts, '--cluster') ?? 'one,sealed,split');
    clusterPoints = parsePoints(one(opts, '--cluster-points') ?? (quick ? '8x5000' : '8x20000,8x5000'));
  } catch (err) {
    throw new BenchError(`--cluster / --cluster-points ${(err as Error).message}`);
  }
  const machine = machineFacts(tools.compiler);

  const targets = (one(opts, '--targets') ?? DEFAULT_TARGETS.join(',')).split(',') as TargetKind[];
  for (const t of targets) if (!TARGETS.includes(t)) throw new BenchError(`--targets: unknown "${t}" (known: ${TARGETS.join(', ')})`);
  const repeats = num(opts, '--repeats', quick ? 3 : 5, 1);
  const duration = num(opts, '--duration', quick ? 1.5 : 4, 0.2);
  const spec = syntheticSpec(opts);
  const capture = opts.has('--no-replay') || capacityOnly ? null : resolve(one(opts, '--capture') ?? DEFAULT_CAPTURE);
  if (capture !== null && !existsSync(capture)) throw new BenchError(`capture ${capture} not found (record one with bench/capture/record.sh, or pass --no-replay)`);
  const big = num(opts, '--big', quick ? 1000 : 10000);
  if (big + 64 > fdLimit()) throw new BenchError(`--big ${big} needs more open files than the limit of ${fdLimit()}: raise ulimit -n or lower --big`);
  const only = one(opts, '--only');
  const series = list(opts, '--series', quick ? [160000] : [160000, 480000]);
  const peers = (opts.get('--peer-cmd') ?? []).map(parsePeerCmd);
  for (const [i, p] of peers.entries()) if (peers.findIndex((q) => q.name === p.name) !== i) throw new BenchError(`--peer-cmd: two programs named "${p.name}": name them (NAME=COMMAND)`);
  // The memory checks: with the figures (unless --only picks scenarios), or when asked for.
  const memText = one(opts, '--state-memory') ?? (quick ? '8' : '8,64');
  const memSizes = memText === 'none' ? [] : memText.split(',').map((x) => Number(x.trim()));
  if (memSizes.some((x) => x !== 8 && x !== 64)) throw new BenchError(`--state-memory ${memText}: want 8, 64, 8,64 or none`);
  let plan = capacityOnly
    ? []
    : buildPlan({
        quick,
        subscribers: list(opts, '--subscribers', [1, 8, 64, 256]),
        series,
        extra: quick ? [[8, 60000]] : [],
        big,
        bigSeries: series[0] ?? 160000,
        repeats,
        duration,
        spec,
        tlsSpec: quick ? null : { ...spec, valueSize: parseSize('value-size', 'tls'), deletes: 0.1 },
        capture,
        replaySpeeds: list(opts, '--replay-speeds', quick ? [10] : [1, 10, 0]),
        replaySubscribers: 8,
        replayPort: one(opts, '--replay-port') === undefined ? undefined : num(opts, '--replay-port', 0, 1),
        targets,
        secure: securePoints,
        identity: identityPoints,
        mode: modeSel,
        cluster: { points: clusterPoints, variants: clusterVariants },
        peers: peers.map((p) => p.kind),
        stateTargets: quick ? ['udprepeater-state8m'] : ['udprepeater-state8m', 'udprepeater-state64m'],
      });
  if (only !== undefined) plan = plan.filter((s) => new RegExp(only).test(s.id));
  const withFigures = modeSel === 'plain' || modeSel === 'both' || modeSel === 'figures';
  const memChecks = capacityOnly || !withFigures ? [] : memSizes.map((mb) => ({ id: `memory-${mb}m`, bytes: mb << 20 })).filter((m) => only === undefined || new RegExp(only).test(m.id));
  // The revocation latency: with the identity scenarios (unless --only picks scenarios), or when asked for.
  const revocations = capacityOnly || !['identity', 'figures', 'both'].includes(modeSel) ? 0 : num(opts, '--revocations', quick ? 3 : 5, 0);
  const wantRevocation = revocations > 0 && (only === undefined || new RegExp(only).test('revocation'));
  // nats-server is looked for only when a cluster scenario will run.
  const natsServer = plan.some((s) => s.cluster !== undefined) ? findNatsServer(one(opts, '--nats-server')) : null;
  // Secure mode is prepared (key, libsodium, interoperability check) only when something will run in it.
  const wantSecure = plan.some((s) => s.mode === 'secure') || (capacityOnly && (modeSel === 'secure' || modeSel === 'both') && !opts.has('--no-capacity') && securePoints.length > 0);
  if (wantSecure && tools.sodium === null) {
    throw new BenchError(
      `${SODIUM_HINT}.\n(${tools.sodiumProblem ?? 'libsodium not found'})\n` +
        `This run has secure scenarios: ${plan.filter((s) => s.mode === 'secure').map((s) => s.id).join(', ') || 'the secure capacity check'}.`,
    );
  }
  const secure = wantSecure ? await prepareSecure(opts, scratch, tools) : null;
  // Identity mode: every identity made by the real CLI, the repeater's peers file listing the nodes.
  const identityScenarios = plan.filter((s) => s.mode === 'identity');
  const wantIdentity = identityScenarios.length > 0 || wantRevocation;
  if (wantIdentity && tools.sodium === null) throw new BenchError(`${SODIUM_HINT}.\n(${tools.sodiumProblem ?? 'libsodium not found'})\nThis run has identity scenarios.`);
  const identity = wantIdentity
    ? await makeIdentities(scratch, Math.max(1, ...identityScenarios.map((s) => s.subscribers)), wantRevocation ? revocations : 0)
    : null;
  const identityModeOf = identity === null ? null : identityMode(identity);
  const ctx = makeContext(opts, progress, scratch, tools, quick, secure?.mode ?? null, natsServer, peers, identityModeOf);
  // --mode figures needs no capacity check (ask with capacity).
  const caps = capacityOnly || (!opts.has('--no-capacity') && modeSel !== 'figures') ? capacityCases(quick, wantSecure) : [];
  const capRepeats = quick ? 1 : 3;
  const capDuration = quick ? 1 : 2;
  progress.setTotal(caps.length * capRepeats + plan.reduce((n, s) => n + s.repeats * s.targets.length, 0) + (wantSecure ? 1 : 0) + memChecks.length + (wantRevocation ? 1 : 0));
  progress.note(`udprepeater datagram path: ${repeaterPath()}`);
  const secureCheck: string[] = [];
  const identityCheck: string[] = [];
  if (identity !== null && identityScenarios.length > 0) {
    progress.note('identity mode: checking interoperability (link frames, C helpers against the project\'s LinkCipher)');
    await checkIdentity(ctx, identity, (l) => {
      identityCheck.push(l);
      progress.note(`  ${l}`);
    }, { thorough: false });
  }
  if (secure !== null) {
    progress.note(`secure mode: key ${relative(ROOT, secure.key.file)} (key id ${secure.key.id}), libsodium ${tools.sodium}; checking interoperability`);
    progress.next('secure mode interoperability check');
    await checkSecure(ctx, secure.key, (l) => {
      secureCheck.push(l);
      progress.note(`  ${l}`);
    }, { thorough: false });
  }
  progress.note(
    `bench: ${quick ? 'quick' : 'full'} run, ${plan.length} scenarios x ${targets.join(' + ')}, ${repeats} x ${duration} s each; ` +
      `${machine.nproc} CPUs (${machine.cpuModel}), ${ctx.cpuFanout === undefined ? 'no pinning' : `fan-out on CPU ${ctx.cpuFanout}, load on CPU ${ctx.cpuLoad}`}`,
  );

  const capResults: CapacityResult[] = [];
  for (const c of caps) {
    const r = await runCapacity(ctx, c, spec, capRepeats, capDuration);
    capResults.push(r);
    const m = r.median;
    progress.note(
      `  ${c.title}: sent ${fmtRate(m.copiesRate)}/s, delivered ${fmtRate(m.deliveredRate)}/s, loss ${(m.loss * 100).toFixed(2)}%, ` +
        `p50 ${m.latency.p50.toFixed(0)} µs p99 ${m.latency.p99.toFixed(0)} µs; gen ${m.genCpuPerCopyUs.toFixed(2)} µs/copy, recv ${m.recvCpuPerDatagramUs.toFixed(2)} µs/datagram`,
    );
  }
  const results: ScenarioResult[] = [];
  const memory: MemoryResult[] = [];
  let revocation: RevocationResult | null = null;
  // A quick run does not overwrite the full run's results.
  const name = one(opts, '--name') ?? (quick ? 'quick' : 'latest');
  mkdirSync(RESULTS_DIR, { recursive: true });
  const write = () => {
    const info: RunInfo = {
      command: commandLine(argv),
      mode: modeSel,
      secure:
        secure === null
          ? null
          : {
              keyId: secure.key.id,
              keyFile: one(opts, '--key-file') === undefined ? 'new, from udprepeater keygen' : secure.key.file,
              libsodium: tools.sodium ?? '?',
              openEvery: opts.has('--open-every'),
              check: secureCheck,
            },
      quick,
      started: started.toISOString(),
      seconds: (Date.now() - started.getTime()) / 1000,
      pinning: pinning(opts.has('--no-pin'), machine.nproc).text,
      repeats,
      duration,
      warmup: ctx.warmup,
      machine,
      repeaterArgs: ctx.repeaterArgs,
      recvBuffer: ctx.recvBuffer,
      gitHead: gitHead(),
      quiet: ctx.quiet,
      repeaterPath: repeaterPath(),
      targets,
      peers: peers.map((p) => ({ name: p.name, command: p.template })),
      loadEnd: loadavg().map((x) => Math.round(x * 100) / 100),
      gcStats: ctx.gcStats,
      ...(identity === null ? {} : { identity: { revocation, check: identityCheck } }),
      cluster:
        natsServer === null
          ? null
          : {
              natsServer: natsVersion(natsServer),
              pinning: clusterPinning(opts, pinning(opts.has('--no-pin'), machine.nproc)).text,
              variants: clusterVariants,
              points: clusterPoints.map(([n, r]) => `${n}x${r}`),
            },
    };
    return writeReports(join(RESULTS_DIR, name), info, results, capResults, memory);
  };
  // A secure scenario is measured together with its plain twin right before it (their measurements alternate).
  const groups: Scenario[][] = [];
  for (const sc of plan) {
    const last = groups.at(-1);
    if (sc.twin !== undefined && last?.[0]?.id === sc.twin) last.push(sc);
    else groups.push([sc]);
  }
  for (const group of groups) {
    for (const r of await runGroup(ctx, group)) {
      results.push(r);
      const s = summarize(r);
      const parts = targetList(s.targets).map(
        (t) => `${t.target} ${fmtRate(t.deliveredRate)}/s out, loss ${(t.loss * 100).toFixed(2)}%, ${t.cpuPerOutUs.toFixed(2)} µs CPU/out, p99 ${t.p99.toFixed(0)} µs`,
      );
      progress.note(`  ${r.scenario.title}: ${parts.join(' | ')}`);
      for (const line of clusterNotes(s)) progress.note(`    ${line}`);
    }
    write(); // keep partial results if a later scenario fails
  }
  if (wantRevocation && identity !== null && identityModeOf !== null) {
    progress.next('revocation latency');
    revocation = await measureRevocation(identity, identityModeOf, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer }, (x) => progress.tick(x));
    progress.note(`  revocation latency: reload to first refused frame ${revocation.medianMs.toFixed(1)} ms (median of ${revocation.reps.length})`);
    write();
  }
  for (const m of memChecks) {
    progress.next(`memory check ${m.id}`);
    const r = await runStateMemory(ctx, m.bytes, spec, quick ? 3 : 4, 30000, (x) => progress.tick(x));
    memory.push(r);
    progress.note(`  ${memoryLine(r)}`);
    write();
  }
  progress.finish();
  const paths = write();
  process.stdout.write(`wrote ${relative(ROOT, paths.md)}, ${relative(ROOT, paths.svg)}, ${relative(ROOT, paths.json)}\n`);
}

async function replay(opts: Opts): Promise<void> {
  const capture = resolve(one(opts, '--capture') ?? opts.get('_')?.[0] ?? DEFAULT_CAPTURE);
  const to = one(opts, '--to');
  if (to === undefined || !/^127\.0\.0\.1:\d+$/.test(to)) throw new BenchError('replay needs --to 127.0.0.1:PORT (the bench only sends to 127.0.0.1)');
  const speed = num(opts, '--speed', 1);
  const progress = new Progress(1);
  const tools = buildNative((s) => progress.note(s));
  setLauncher(tools.launch);
  const scratch = join(BUILD_DIR, `replay-${process.pid}`);
  mkdirSync(scratch, { recursive: true });
  process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));
  const modeSel = modeSelection(opts, 'plain');
  if (modeSel === 'both' || modeSel === 'cluster') throw new BenchError('replay: --mode plain or --mode secure');
  let secure: BenchMode | null = null;
  if (modeSel === 'secure') {
    // Frames must be sealed under the running repeater's key: a new key would be refused (unknown_key).
    if (one(opts, '--key-file') === undefined) throw new BenchError('replay --mode secure needs --key-file FILE: the key the repeater opens with');
    secure = (await prepareSecure(opts, scratch, tools)).mode;
  }
  const ctx = makeContext(opts, progress, scratch, tools, false, secure);
  const src = { kind: 'replay', speed, capture, dport: one(opts, '--replay-port') === undefined ? undefined : num(opts, '--replay-port', 0, 1), all: opts.has('--replay-all') } as const;
  const pool = poolFor(ctx, src);
  const loop = opts.has('--loop');
  const once = speed > 0 ? pool.spanNs / 1e9 / speed + 1 : 3600;
  const duration = num(opts, '--duration', loop ? 10 : once, 0.1);
  progress.note(`replaying ${pool.text} to ${to}${loop ? ', looping' : ''} for at most ${duration.toFixed(1)} s`);
  const args = ['--timeline', '--speed', String(speed), ...(loop ? ['--loop'] : []), ...(opts.has('--no-stamp') ? ['--no-stamp'] : [])];
  progress.next('replay');
  const r = await runGen(ctx, pool.path, [Number(to.split(':')[1])], args, duration, 2 ** 40, 1, undefined, (s) => progress.tick(`${s.toFixed(1)} s`), secure ?? PLAIN);
  progress.finish();
  process.stdout.write(
    `sent ${r.sent} ${secure === null ? 'datagrams' : `sealed frames (key id ${r.key_id})`} (${opts.has('--no-stamp') ? 'byte for byte' : `${r.stamped} stamped with run 1`}) in ${r.elapsed_s.toFixed(2)} s = ${fmtRate(r.rate)}/s; send errors ${r.errors}${r.errors ? ` (${r.last_error})` : ''}\n`,
  );
}

async function selftestCmd(opts: Opts): Promise<void> {
  const progress = new Progress(1);
  const tools = buildNative((s) => progress.note(s));
  setLauncher(tools.launch);
  const scratch = join(BUILD_DIR, `selftest-${process.pid}`);
  mkdirSync(scratch, { recursive: true });
  process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));
  const modeSel = modeSelection(opts, 'both');
  const withSecure = modeSel === 'secure' || modeSel === 'both';
  const secure = withSecure && tools.sodium !== null ? await prepareSecure(opts, scratch, tools) : null;
  if (modeSel === 'secure' || modeSel === 'identity') requireSodium(tools);
  const withIdentity = modeSel === 'identity' || modeSel === 'both';
  const identity = withIdentity && tools.sodium !== null ? await makeIdentities(scratch, 2, 1) : null;
  // The cluster check needs nats-server: required with --mode cluster, skipped (and said so) without one otherwise.
  let nats: string | null = null;
  let natsProblem = '';
  if (modeSel === 'cluster' || modeSel === 'both') {
    try {
      nats = findNatsServer(one(opts, '--nats-server'));
    } catch (err) {
      if (modeSel === 'cluster') throw err;
      natsProblem = err instanceof Error ? err.message.split('\n')[0]! : String(err);
    }
  }
  const ctx = makeContext(opts, progress, scratch, tools, true, secure?.mode ?? null, nats, [], identity === null ? null : identityMode(identity));
  const capture = opts.has('--no-replay') ? null : resolve(one(opts, '--capture') ?? DEFAULT_CAPTURE);
  const log = (s: string) => process.stdout.write(`${s}\n`);
  if (modeSel === 'plain' || modeSel === 'both' || modeSel === 'figures') {
    if (modeSel !== 'figures') await selftest(ctx, capture !== null && existsSync(capture) ? capture : null, log);
    await selftestFigures(ctx, log);
  }
  if (secure !== null) {
    log(`secure mode: key id ${secure.key.id}, libsodium ${tools.sodium}`);
    await checkSecure(ctx, secure.key, log, { thorough: true });
  } else if (withSecure) {
    log(`secure mode NOT checked: ${SODIUM_HINT} (${tools.sodiumProblem ?? 'libsodium not found'})`);
  }
  if (identity !== null) {
    log(`identity mode: identities from udprepeater keygen --identity, libsodium ${tools.sodium}`);
    await checkIdentity(ctx, identity, log, { thorough: true });
  } else if (withIdentity) {
    log(`identity mode NOT checked: ${SODIUM_HINT} (${tools.sodiumProblem ?? 'libsodium not found'})`);
  }
  if (nats !== null) {
    log(`cluster mode: ${natsVersion(nats)}; ${clusterPinning(opts, pinning(opts.has('--no-pin'), machineFacts(tools.compiler).nproc)).text}`);
    await selftestCluster(ctx, log);
  } else if (modeSel === 'both') {
    log(`cluster mode NOT checked: ${natsProblem}`);
  }
  process.stdout.write('selftest passed\n');
}

/** Re-renders <name>.md and <name>.svg from a results JSON (after a change to the report format). */
function rerender(opts: Opts): void {
  for (const f of opts.get('_') ?? [join(RESULTS_DIR, 'latest.json')]) {
    const d = JSON.parse(readFileSync(f, 'utf8')) as { info: RunInfo; scenarios: ScenarioResult[]; capacity: CapacityResult[]; memory?: MemoryResult[] };
    const paths = writeReports(f.replace(/\.json$/, ''), d.info, d.scenarios, d.capacity, d.memory ?? []);
    process.stdout.write(`wrote ${relative(ROOT, paths.md)}, ${relative(ROOT, paths.svg)}\n`);
  }
}

function pcapInfo(opts: Opts): void {
  const files = opts.get('_') ?? [DEFAULT_CAPTURE];
  for (const f of files) {
    const c = readPcap(readFileSync(f), f);
    process.stdout.write(`${f}:\n${describeCapture(c).map((l) => `  ${l}`).join('\n')}\n`);
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { command, opts } = parseArgs(argv);
  if (opts.has('--help') || opts.has('-h') || command === 'help') {
    process.stdout.write(HELP);
    return;
  }
  installCleanup();
  removeStaleScratch();
  if (command === 'suite') await suite(argv, opts, false);
  else if (command === 'capacity') await suite(argv, opts, true);
  else if (command === 'replay') await replay(opts);
  else if (command === 'pcap-info') pcapInfo(opts);
  else if (command === 'selftest') await selftestCmd(opts);
  else if (command === 'report') rerender(opts);
  else if (command === 'warm') await warmCommand(argv.slice(1), commandLine(argv));
  else throw new BenchError(`unknown command "${command}"\n\n${HELP}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`\nbench: ${err instanceof BenchError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});

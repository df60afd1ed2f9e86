// Installs like a Node.js tool: what README "Install" says, done for real.
// - `npm pack` in a clean copy of the checkout (the files git knows, no dist/,
//   no build, the checkout's node_modules for the compiler only) builds dist/
//   itself (prepack) and packs what an install needs, and nothing of the tests;
// - `npm install -g --prefix TMP` of that tarball (no network needed once the
//   npm cache holds the dependencies) gives a `udprepeater` that answers
//   --version, serves (a datagram sent to it is forwarded) and says on its
//   start line which socket backend runs and why; a project that installs
//   the tarball imports `udprepeater/tls` and joins that repeater's channel;
// - without the install script (--ignore-scripts, or npm 12 not allowing it)
//   the addon is missing, the start line says node:dgram and how to build
//   it, and that advice works;
// - the shipped units, as the installed package holds them, pass
//   `systemd-analyze verify` after a plain `npm install -g` (the default
//   prefix, `npm prefix -g`), run in a mount namespace whose overlays keep
//   the host untouched: the units name the binary where npm puts it.
// Slow (packs, compiles, installs three times): a system suite.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { LogTap } from '../helpers/logtap.js';
import { Receiver, Sender } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { repoRoot } from '../helpers/uwsgi.js';

const REPO = repoRoot();
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
/** The checkout's own addon: where it was built, an install on this machine builds it too. */
const ADDON_BUILDS_HERE = existsSync(join(REPO, 'src', 'native', 'build', 'Release', 'udpfast.node'));

/** The environment of every npm and udprepeater run: no npm_* settings inherited from an `npm test` around us. */
const ENV: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_')));
ENV['PATH'] = `${dirname(process.execPath)}:${process.env['PATH'] ?? '/usr/bin:/bin'}`;

function tool(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { env: ENV, encoding: 'utf8' }).status === 0;
}
const haveGit = tool('git', ['-C', REPO, 'rev-parse', '--git-dir']);
const haveNpm = tool('npm', ['--version']);
const { skip } = requirement(
  'npm and a git checkout',
  'the install suite (test/system/install.test.ts)',
  'npm pack and npm install -g of the package are NOT being tested.',
  !haveNpm ? { ok: false, reason: 'npm not found' } : !haveGit ? { ok: false, reason: `${REPO} is not a git checkout (the clean copy is made from git ls-files)` } : { ok: true },
  'run it from a git checkout with npm on PATH',
);
const isRoot = process.geteuid?.() === 0;
const { skip: skipUnits } = requirement(
  'root, unshare, overlayfs and systemd-analyze',
  'the install suite: units after npm install -g',
  'The shipped units are NOT being checked against where npm install -g puts the binary.',
  !isRoot ? { ok: false, reason: 'not root (a mount namespace with overlays)' } : !tool('systemd-analyze', ['--version']) || !tool('unshare', ['--version']) ? { ok: false, reason: 'systemd-analyze or unshare not found' } : { ok: true },
  'install with: apt-get install systemd util-linux, and run as root',
);

const work = mkdtempSync(join(tmpdir(), 'udprepeater-install-'));
const live = new Set<ChildProcess>();
const closers: Array<() => unknown> = [];
after(() => {
  for (const c of live) c.kill('SIGKILL');
  for (const c of closers.reverse()) c();
  rmSync(work, { recursive: true, force: true });
});

/** Runs a command to completion; its stdout, or a failure with everything it said. */
function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}, ms = 180_000): string {
  const r = spawnSync(cmd, args, { env: ENV, encoding: 'utf8', timeout: ms, maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}:\n${String(r.stdout)}\n${String(r.stderr)}`);
  return String(r.stdout);
}

/** `npm install -g --prefix PREFIX tarball`; returns the installed package's directory. */
function installInto(prefix: string, tarball: string, extra: string[] = []): string {
  run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', ...extra, tarball]);
  return join(prefix, 'lib', 'node_modules', 'udprepeater');
}

interface Served {
  readonly log: LogTap;
  readonly started: Record<string, unknown>;
  readonly port: number;
  stop(): Promise<void>;
}

/** `BIN serve` (the installed executable itself: its #! line finds node), once it started. */
async function serveWith(bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--metrics', 'off', '--log-format', 'json', '--log-level', 'debug', ...args], {
    env: { ...ENV, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  const log = new LogTap();
  child.stderr!.setEncoding('utf8').on('data', (d: string) => log.feed(d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const early = exited.then(() => {
    throw new Error(`serve exited before it started:\n${log.records.map((r) => JSON.stringify(r)).join('\n')}`);
  });
  early.catch(() => undefined);
  const started = await Promise.race([log.waitFor('udprepeater started', {}, { ms: 15_000 }), early]);
  const listening = await log.waitFor('listening', { address: '127.0.0.1:0' });
  return {
    log,
    started,
    port: Number(String(listening['bound']).split(':').pop()),
    async stop() {
      child.kill('SIGTERM');
      await exited;
      live.delete(child);
    },
  };
}

/** A cache update sent to the repeater arrives at its static subscriber `rx`. */
async function forwards(s: Served, rx: Receiver, sender: Sender, key: string): Promise<void> {
  const update = encodeCacheSet(Buffer.from(key), Buffer.from('v'), 0);
  const n = rx.received.length;
  await sender.send(update, s.port);
  assert.deepEqual((await rx.waitFor(n + 1))[n], update);
}

let tarball = '';
let packed: string[] = [];

describe('npm pack and npm install -g', { skip, timeout: 600_000 }, () => {
  let rx: Receiver;
  let sender: Sender;
  before(async () => {
    rx = await Receiver.open();
    sender = Sender.open();
    closers.push(() => rx.close(), () => sender.close());
  });

  test('npm pack in a clean copy builds dist/ and packs what an install needs, no tests and no build', () => {
    const copy = join(work, 'checkout');
    // As a fresh clone would have it: the files git knows (tracked, or new and not ignored), as they are now.
    const files = run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO }).split('\0').filter((f) => f !== '');
    for (const f of files) {
      // Deleted since the last commit, or not a file (a node_modules link in a worktree).
      if (!existsSync(join(REPO, f)) || !lstatSync(join(REPO, f)).isFile()) continue;
      mkdirSync(dirname(join(copy, f)), { recursive: true });
      copyFileSync(join(REPO, f), join(copy, f));
    }
    assert.ok(!existsSync(join(copy, 'dist')), 'the copy has no dist/');
    // The compiler and types, as `npm ci` would install them.
    symlinkSync(join(REPO, 'node_modules'), join(copy, 'node_modules'));
    const out = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', work], { cwd: copy })) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = join(work, out[0]!.filename);
    packed = out[0]!.files.map((f) => f.path);
    for (const want of [
      'package.json',
      'dist/cli.js',
      'dist/tls/index.js',
      'dist/tls/index.d.ts',
      'proto/udprepeater.proto',
      'src/native/udpfast.c',
      'src/native/binding.gyp',
      'systemd/udprepeater.service',
      'systemd/udprepeater-agent.service',
      'systemd/udprepeater.sysusers',
      'README.md',
      'SECURITY.md',
    ]) {
      assert.ok(packed.includes(want), `the tarball lacks ${want}`);
    }
    for (const f of packed) assert.doesNotMatch(f, /^(test|build|bench|node_modules)\/|^src\/.*\.ts$|^src\/native\/build\//, `the tarball holds ${f}`);
  });

  test('npm install -g --prefix: --version, serve forwards a datagram, the start line names the backend and why', async () => {
    const prefix = join(work, 'prefix');
    const pkg = installInto(prefix, tarball);
    const bin = join(prefix, 'bin', 'udprepeater');
    assert.equal(run(bin, ['--version']).trim(), VERSION);
    const addon = join(pkg, 'src', 'native', 'build', 'Release', 'udpfast.node');
    const s = await serveWith(bin, ['--to', rx.address]);
    try {
      if (ADDON_BUILDS_HERE) assert.deepEqual([s.started['backend'], s.started['native']], ['native', `loaded ${addon}`]);
      else assert.equal(s.started['backend'], 'node:dgram');
      await forwards(s, rx, sender, 'installed');
    } finally {
      await s.stop();
    }
    const off = await serveWith(bin, ['--to', rx.address], { UDPREPEATER_NATIVE: '0' });
    try {
      assert.deepEqual([off.started['backend'], off.started['native']], ['node:dgram', 'disabled by UDPREPEATER_NATIVE=0']);
      await forwards(off, rx, sender, 'installed-dgram');
    } finally {
      await off.stop();
    }

    // udprepeater/tls in a project that installs the same tarball, as the README says.
    const project = join(work, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'tls-server', version: '1.0.0', private: true }));
    run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: project });
    const rep = await serveWith(bin, []);
    try {
      const script = [
        "const { SessionCache, sessionIdContext } = await import('udprepeater/tls');",
        `const cache = await SessionCache.start({ repeater: '127.0.0.1:${rep.port}', channelKey: 'ssl' });`,
        'await cache.close();',
        "console.log(JSON.stringify({ context: sessionIdContext('ssl'), announces: cache.stats.announces }));",
      ].join('\n');
      const got = JSON.parse(run(process.execPath, ['--input-type=module', '-e', script], { cwd: project }, 30_000)) as { context: string; announces: number };
      assert.ok(got.announces >= 1, 'the session cache announced itself');
      await rep.log.waitFor('subscribed', { key: 'ssl' });
    } finally {
      await rep.stop();
    }
  });

  test('without the install script the start line says node:dgram and how to build the addon, and that works', async () => {
    const prefix = join(work, 'prefix-noscripts');
    const pkg = installInto(prefix, tarball, ['--ignore-scripts']);
    const bin = join(prefix, 'bin', 'udprepeater');
    const s = await serveWith(bin, ['--to', rx.address]);
    try {
      assert.equal(s.started['backend'], 'node:dgram');
      assert.match(String(s.started['native']), new RegExp(`^not built \\(.*\\); build it with npm run build:native in ${pkg.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(needs python3, make and a C compiler\\)$`));
      await forwards(s, rx, sender, 'no-addon');
    } finally {
      await s.stop();
    }
    if (!ADDON_BUILDS_HERE) return;
    run('npm', ['run', 'build:native'], { cwd: pkg });
    const built = await serveWith(bin, ['--to', rx.address]);
    try {
      assert.equal(built.started['backend'], 'native');
      await forwards(built, rx, sender, 'rebuilt');
    } finally {
      await built.stop();
    }
  });

  test('after a plain npm install -g, the shipped units pass systemd-analyze verify as installed', { skip: skipUnits }, () => {
    // The host's global prefix gets overlays in a mount namespace of its own:
    // npm writes into them, the host never sees it. --ignore-scripts: where the
    // binary lands is the question here, not the addon.
    const script = `
      set -e
      G=$(npm prefix -g)
      for d in bin lib; do
        mkdir -p "$W/upper-$d" "$W/work-$d"
        mount -t overlay overlay -o "lowerdir=$G/$d,upperdir=$W/upper-$d,workdir=$W/work-$d" "$G/$d"
      done
      npm install -g --prefer-offline --no-audit --no-fund --ignore-scripts "$TARBALL" >&2
      echo "prefix=$G"
      echo "found=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin command -v udprepeater)"
      echo "version=$(udprepeater --version)"
      cd "$(npm root -g)/udprepeater/systemd"
      v=$(systemd-analyze verify *.service *.path 2>&1) || { echo "$v" >&2; exit 1; }
      echo "verify=$v" | tr '\n' ' '
    `;
    const hostCopy = () => existsSync(join(run('npm', ['root', '-g']).trim(), 'udprepeater'));
    const before = hostCopy();
    const out = run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { env: { ...ENV, W: join(work, 'overlay'), TARBALL: tarball } });
    const facts = Object.fromEntries(out.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    assert.equal(facts['found'], `${facts['prefix']}/bin/udprepeater`, 'systemd finds the binary npm installed');
    assert.equal(facts['version'], VERSION);
    assert.equal(String(facts['verify']).trim(), '', 'systemd-analyze verify warns');
    assert.equal(hostCopy(), before, 'the host prefix was left alone');
  });
});

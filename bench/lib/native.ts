// Builds the C helpers (generator, receivers, floor, launcher) with the
// machine's own compiler at run time. Binaries go to build/bench/native/,
// named by a hash of their source and flags, so an edit rebuilds them and
// an unchanged tree reuses them.
//
// Secure mode needs libsodium in the C helpers. When its headers and
// library are installed, the helpers are built with it (-DBENCH_SODIUM
// -lsodium); without it they are built for plain mode only, and a run that
// needs secure mode stops with what to install (requireSodium).

import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchError } from './procs.js';
import { BENCH_DIR, BUILD_DIR } from './paths.js';

export interface NativeTools {
  readonly gen: string;
  readonly recv: string;
  readonly floor: string;
  readonly launch: string;
  readonly compiler: string;
  /** libsodium's version when the helpers were built with it (secure mode available), else null. */
  readonly sodium: string | null;
  /** Why there is no libsodium (the compiler's complaint), when there is none. */
  readonly sodiumProblem: string | null;
}

export const SODIUM_HINT =
  'secure mode needs libsodium (headers and library) for the bench\'s C generator, receivers and floor: ' +
  'install it (Debian/Ubuntu: apt-get install -y libsodium-dev; Fedora: dnf install libsodium-devel; ' +
  'Alpine: apk add libsodium-dev) and run again, or run plain mode only with --mode plain';

/** Throws a BenchError that says what to install when the helpers have no libsodium. */
export function requireSodium(tools: NativeTools): void {
  if (tools.sodium === null) throw new BenchError(`${SODIUM_HINT}.\n(${tools.sodiumProblem ?? 'libsodium not found'})`);
}

/** Compiles and runs a tiny program against libsodium; its version, or the reason it failed. */
function probeSodium(cc: string, out: string): { version: string | null; problem: string | null } {
  const src = join(out, `sodium-probe-${process.pid}.c`);
  const bin = join(out, `sodium-probe-${process.pid}`);
  writeFileSync(src, '#include <sodium.h>\n#include <stdio.h>\nint main(void) { if (sodium_init() < 0) return 1; puts(sodium_version_string()); return 0; }\n');
  try {
    execFileSync(cc, ['-o', bin, src, '-lsodium'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const version = execFileSync(bin, [], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return { version, problem: null };
  } catch (err) {
    const e = err as { stderr?: Buffer | string };
    const msg = (e.stderr?.toString() ?? String(err)).split('\n').find((l) => /error|cannot find|not found/i.test(l)) ?? String(err);
    return { version: null, problem: msg.trim() };
  } finally {
    rmSync(src, { force: true });
    rmSync(bin, { force: true });
  }
}

const FLAGS = ['-O2', '-Wall', '-Wextra', '-std=gnu11'];

function compilerVersion(cc: string): string | null {
  const r = spawnSync(cc, ['--version'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) return null;
  return (r.stdout.split('\n')[0] ?? cc).trim();
}

/** Compiles what changed; throws a BenchError that says what to install when there is no compiler. */
export function buildNative(log: (s: string) => void = () => undefined): NativeTools {
  const cc = process.env['CC'] ?? 'cc';
  const version = compilerVersion(cc);
  if (version === null) {
    throw new BenchError(
      `no C compiler: "${cc} --version" failed.\n` +
        'The bench builds its load generator, receivers and the C floor from bench/native/*.c at run time,\n' +
        'because Node itself is too slow to load a fan-out without becoming the bottleneck.\n' +
        'Install one (Debian/Ubuntu: apt-get install gcc; or set CC=/path/to/compiler) and run again.',
    );
  }
  const src = join(BENCH_DIR, 'native');
  const out = join(BUILD_DIR, 'native');
  mkdirSync(out, { recursive: true });
  const headers = readdirSync(src)
    .filter((f) => f.endsWith('.h'))
    .sort()
    .map((f) => readFileSync(join(src, f)));
  const sodium = probeSodium(cc, out);
  const built: Record<string, string> = {};
  for (const name of ['gen', 'recv', 'floor', 'launch']) {
    const file = join(src, `${name}.c`);
    const withSodium = sodium.version !== null && name !== 'launch';
    const flags = withSodium ? [...FLAGS, '-DBENCH_SODIUM'] : FLAGS;
    const libs = withSodium ? ['-lsodium'] : [];
    const h = createHash('sha256').update(readFileSync(file));
    for (const x of headers) h.update(x);
    const hash = h.update(flags.join(' ')).update(libs.join(' ')).update(version).update(sodium.version ?? '').digest('hex').slice(0, 12);
    const bin = join(out, `${name}-${hash}`);
    if (!existsSync(bin)) {
      log(`compiling bench/native/${name}.c${withSodium ? ` (with libsodium ${sodium.version})` : ''}`);
      const tmp = `${bin}.tmp${process.pid}`;
      try {
        execFileSync(cc, [...flags, '-o', tmp, file, ...libs], { stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (err) {
        const e = err as { stderr?: Buffer };
        throw new BenchError(`${cc} failed on bench/native/${name}.c:\n${e.stderr?.toString() ?? String(err)}`);
      }
      renameSync(tmp, bin);
    }
    built[name] = bin;
  }
  return {
    gen: built['gen']!,
    recv: built['recv']!,
    floor: built['floor']!,
    launch: built['launch']!,
    compiler: version,
    sodium: sodium.version,
    sodiumProblem: sodium.problem,
  };
}

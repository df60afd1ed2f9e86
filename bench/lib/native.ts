// Builds the C helpers (generator, receivers, floor, launcher) with the
// machine's own compiler at run time. Binaries go to build/bench/native/,
// named by a hash of their source and flags, so an edit rebuilds them and
// an unchanged tree reuses them.

import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { BenchError } from './procs.js';
import { BENCH_DIR, BUILD_DIR } from './paths.js';

export interface NativeTools {
  readonly gen: string;
  readonly recv: string;
  readonly floor: string;
  readonly launch: string;
  readonly compiler: string;
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
  const common = readFileSync(join(src, 'common.h'));
  const built: Record<string, string> = {};
  for (const name of ['gen', 'recv', 'floor', 'launch']) {
    const file = join(src, `${name}.c`);
    const hash = createHash('sha256').update(readFileSync(file)).update(common).update(FLAGS.join(' ')).update(version).digest('hex').slice(0, 12);
    const bin = join(out, `${name}-${hash}`);
    if (!existsSync(bin)) {
      log(`compiling bench/native/${name}.c`);
      const tmp = `${bin}.tmp${process.pid}`;
      try {
        execFileSync(cc, [...FLAGS, '-o', tmp, file], { stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (err) {
        const e = err as { stderr?: Buffer };
        throw new BenchError(`${cc} failed on bench/native/${name}.c:\n${e.stderr?.toString() ?? String(err)}`);
      }
      renameSync(tmp, bin);
    }
    built[name] = bin;
  }
  return { gen: built['gen']!, recv: built['recv']!, floor: built['floor']!, launch: built['launch']!, compiler: version };
}

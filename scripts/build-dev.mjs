// `npm run build:dev`: compiles src, test and bench into a fresh sibling
// directory (build.<time>-<pid>) and then points the `build` symlink at it
// with one rename. A bench or test run already going keeps the files it
// started with (its modules resolve to the old directory), so `npm test`
// and `npm run bench` can run side by side in one checkout; a stale compiled
// file of a deleted source never survives a build. Old builds are removed
// once they are an hour old, the one `build` points at never.

import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const KEEP_MS = 60 * 60_000;
const name = `build.${Date.now()}-${process.pid}`;
const out = join(root, name);
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');

try {
  execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.dev.json'), '--outDir', out], { stdio: 'inherit', cwd: root });
} catch {
  rmSync(out, { recursive: true, force: true });
  process.exit(1);
}

const link = join(root, 'build');
// The layout before this script: a real directory. Moved aside, not deleted under a running suite.
if (existsSync(link) && !lstatSync(link).isSymbolicLink()) renameSync(link, join(root, `build.${Date.now()}-old`));
const tmp = join(root, `.build-link-${process.pid}`);
rmSync(tmp, { force: true });
symlinkSync(name, tmp);
renameSync(tmp, link);

const current = readlinkSync(link);
for (const d of readdirSync(root)) {
  if (!d.startsWith('build.') || d === current) continue;
  const p = join(root, d);
  try {
    if (Date.now() - statSync(p).mtimeMs > KEEP_MS) rmSync(p, { recursive: true, force: true });
  } catch {
    // removed by a build running beside this one
  }
}

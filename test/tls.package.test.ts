// `udprepeater/tls` as a user gets it: the package built with its own
// tsconfig into a temporary copy (package.json, proto/, dist/), installed as
// node_modules/udprepeater of a temporary app, then required (CommonJS),
// imported (ESM) and type-checked (a TypeScript file compiled against the
// exported declarations) through package.json "exports", and a path the
// package does not export is refused. Then the README's example
// (examples/https-cluster/server.mjs, importing `udprepeater/tls` from that
// package) runs three times behind a real repeater and real s_client
// sessions resume across them.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { keygen, serve } from './helpers/attack.js';
import { LogTap } from './helpers/logtap.js';
import { eventually, freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';
import { makeCert, OPENSSL_HINT, opensslAvailability, sClient } from './helpers/tls.js';
import { repoRoot } from './helpers/uwsgi.js';

const ROOT = repoRoot();
const TSC = join(realpathSync(join(ROOT, 'node_modules')), 'typescript', 'bin', 'tsc');

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const tmp = mkdtempSync(join(tmpdir(), 'udprepeater-pkg-'));
const pkg = join(tmp, 'pkg');

before(() => {
  mkdirSync(pkg);
  cpSync(join(ROOT, 'package.json'), join(pkg, 'package.json'));
  cpSync(join(ROOT, 'proto'), join(pkg, 'proto'), { recursive: true });
  cpSync(join(ROOT, 'examples'), join(pkg, 'examples'), { recursive: true });
  symlinkSync(realpathSync(join(ROOT, 'node_modules')), join(pkg, 'node_modules'));
  // The package's own build (declarations included), as `npm run build` makes it.
  run(process.execPath, [TSC, '-p', join(ROOT, 'tsconfig.json'), '--outDir', join(pkg, 'dist')], ROOT);
});

test('udprepeater/tls resolves through package.json exports, for require, import and TypeScript', { timeout: 180_000 }, () => {
  const app = join(tmp, 'app');
  mkdirSync(join(app, 'node_modules', '@types'), { recursive: true });
  symlinkSync(pkg, join(app, 'node_modules', 'udprepeater'));
  symlinkSync(join(realpathSync(join(ROOT, 'node_modules')), '@types', 'node'), join(app, 'node_modules', '@types', 'node'));

  writeFileSync(join(app, 'cjs.cjs'), "const t = require('udprepeater/tls');\nconsole.log(typeof t.SessionCache.start, t.sessionIdContext('ssl').length, typeof t.registerSessionCacheMetrics);\n");
  assert.equal(run(process.execPath, ['cjs.cjs'], app).trim(), 'function 32 function');
  writeFileSync(join(app, 'esm.mjs'), "import { SessionCache, sessionIdContext } from 'udprepeater/tls';\nconsole.log(typeof SessionCache.start, sessionIdContext('ssl').length);\n");
  assert.equal(run(process.execPath, ['esm.mjs'], app).trim(), 'function 32');

  // Only what is exported: the CLI's internals are not.
  writeFileSync(join(app, 'hidden.cjs'), "try { require('udprepeater/dist/tls/store.js'); console.log('resolved'); } catch (e) { console.log(e.code); }\n");
  assert.equal(run(process.execPath, ['hidden.cjs'], app).trim(), 'ERR_PACKAGE_PATH_NOT_EXPORTED');

  // The declarations: a user's TypeScript compiles against them, and a wrong option type does not.
  writeFileSync(
    join(app, 'use.ts'),
    [
      "import { createServer } from 'node:https';",
      "import { SessionCache, type SessionCacheOptions, sessionIdContext } from 'udprepeater/tls';",
      "const opts: SessionCacheOptions = { repeater: '127.0.0.1:7272', keyFiles: ['/etc/k'], sessionTimeout: 300 };",
      'export async function main(): Promise<void> {',
      '  const cache = await SessionCache.start(opts);',
      "  const server = createServer({ sessionIdContext: sessionIdContext('ssl') });",
      '  const detach: () => void = cache.attach(server, { sessions: true, tickets: true });',
      '  const hits: number = cache.stats.hits;',
      '  void hits;',
      '  detach();',
      '  await cache.close();',
      '}',
      '',
    ].join('\n'),
  );
  // One compiler run for both files (each costs seconds): exactly one error, the wrong type in bad.ts.
  writeFileSync(join(app, 'bad.ts'), "import type { SessionCacheOptions } from 'udprepeater/tls';\nexport const o: SessionCacheOptions = { repeater: 7272 };\n");
  const r = spawnSync(process.execPath, [TSC, '--noEmit', '--strict', '--skipLibCheck', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--types', 'node', 'use.ts', 'bad.ts'], { cwd: app, encoding: 'utf8', timeout: 120_000 });
  const errors = r.stdout.split('\n').filter((l) => /error TS/.test(l));
  assert.deepEqual(errors.map((l) => l.replace(/:.*/, '')), ['bad.ts(2,41)'], r.stdout);
  assert.match(errors[0]!, /TS2322: Type 'number' is not assignable to type 'string'/);
});

const { skip, require: requireOpenssl } = requirement('openssl', 'the example of test/tls.package.test.ts', 'The README example (examples/https-cluster) is NOT being run.', opensslAvailability(), OPENSSL_HINT);
const scope = new Scope();

/** examples/https-cluster/server.mjs from the built package; resolves once it listens and loaded the fleet's ticket key. */
async function example(args: string[]): Promise<{ port: number }> {
  const child = spawn(process.execPath, [join(pkg, 'examples', 'https-cluster', 'server.mjs'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  scope.track({ close: () => new Promise<void>((r) => (child.exitCode !== null ? r() : (child.once('exit', () => r()), child.kill('SIGTERM')))) });
  const tap = new LogTap();
  child.stderr.setEncoding('utf8').on('data', (d: string) => tap.feed(d));
  const listening = await tap.waitFor('listening', {}, { ms: 10_000 });
  await tap.waitFor('ticket key loaded', {}, { ms: 10_000 });
  return { port: (listening['address'] as { port: number }).port };
}

test('the README example: HTTPS servers resume each other’s sessions through a sealed repeater', { skip, timeout: 60_000 }, async () => {
  requireOpenssl();
  const cert = makeCert();
  const key = await keygen();
  const rport = await freePort();
  const r = await serve(['--listen-sealed', `127.0.0.1:${rport},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', join(tmp, 'state')]);
  scope.track({ close: () => r.stop() });
  const common = ['--cert', cert.cert, '--key', cert.key, '--repeater', `127.0.0.1:${rport}`, '--key-file', key];
  const servers = [];
  for (let i = 0; i < 3; i++) servers.push(await example(['--listen', `127.0.0.1:${await freePort()}`, ...common]));
  const [a, b, c] = servers as [{ port: number }, { port: number }, { port: number }];
  const t13 = join(tmp, 'ex13');
  assert.equal((await sClient(a.port, { version: '1.3', sessOut: t13 })).reused, false);
  const again = await sClient(b.port, { version: '1.3', sessIn: t13 });
  assert.equal(again.reused, true, again.output);
  assert.match(again.output, /resumed/);
  const s12 = join(tmp, 'ex12');
  const first = await sClient(b.port, { version: '1.2', noTicket: true, sessOut: s12 });
  await r.d.log.waitFor('subscribed', {}, { count: 3 });
  await eventually('the session id to reach the third server', async () => ((await sClient(c.port, { version: '1.2', noTicket: true, sessIn: s12 })).reused ? true : undefined));
  assert.equal(first.reused, false);

  const bad = spawnSync(process.execPath, [join(pkg, 'examples', 'https-cluster', 'server.mjs'), '--listen', '127.0.0.1:1', ...common.slice(0, -1), '/nonexistent.key'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(bad.status, 78, bad.stderr);
  assert.match(bad.stderr, /nonexistent\.key/);
});

// The layering of src/ (docs/ARCHITECTURE.md): folders import downward only,
// folders on the same level never import each other, no file-level import
// cycle exists, net/io.ts is the only socket surface above net/, nothing
// outside net/ touches a socket implementation (node:dgram, the addon), and
// wire/ is pure (it imports nothing that does I/O), and no file is over
// MAX_LINES lines (one file, one job). Read from the TypeScript
// sources, so a broken import fails here before anyone has to notice it in
// review. The checks are also run on a small synthetic tree with known
// faults, so they can be seen to fail.

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { repoRoot } from './helpers/uwsgi.js';

/** Lower number = lower layer. Same number: siblings that must not import each other. */
export const LAYERS: Readonly<Record<string, number>> = {
  base: 0,
  wire: 1,
  judge: 2,
  crypto: 3,
  net: 3,
  config: 4,
  member: 4,
  path: 5,
  repeater: 6,
  agent: 6,
  tools: 6,
  tls: 6,
  cluster: 7,
  daemon: 8,
  '.': 9, // src/cli.ts
};

/** What code above net/ may import from it: the socket surface, and host facts that open no socket of their own for anyone. */
export const NET_SURFACE: ReadonlySet<string> = new Set(['io.ts', 'local.ts', 'kernel.ts', 'udp-owners.ts']);

/** UDP socket implementations: only net/ may import them (node:net, TCP, is the bus's and HAProxy's business). */
const SOCKET_MODULES = /^(node:)?dgram$|udpfast|\.node$/;

/** What wire/ may import besides wire/ itself: the counters' indexes and the protobuf runtime (no I/O). */
const WIRE_MAY_IMPORT: ReadonlySet<string> = new Set(['base/stats.ts', 'protobufjs']);

const SRC = join(repoRoot(), 'src');

function sources(dir: string, out: string[] = []): string[] {
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) {
      if (f !== 'native') sources(p, out);
    } else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** A module specifier in single or double quotes: group 2 is the path. */
const SPEC = String.raw`(['"])(\.[^'"]+)\1`;
/** `import ... from 'x'`, `export ... from 'x'`, side-effect `import 'x'`, and `import('x')` / `require('x')`. */
const IMPORT_FORMS = [
  new RegExp(String.raw`(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s+` + SPEC, 'g'),
  new RegExp(String.raw`(?:^|\n)\s*import\s+` + SPEC, 'g'),
  new RegExp(String.raw`\b(?:import|require)\(\s*` + SPEC + String.raw`\s*\)`, 'g'),
];

/** Any module specifier in single or double quotes: group 2. */
const ANY_SPEC = String.raw`(['"])([^'"]+)\1`;
const ALL_IMPORT_FORMS = [
  new RegExp(String.raw`(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s+` + ANY_SPEC, 'g'),
  new RegExp(String.raw`(?:^|\n)\s*import\s+` + ANY_SPEC, 'g'),
  new RegExp(String.raw`\b(?:import|require)\(\s*` + ANY_SPEC + String.raw`\s*\)`, 'g'),
];

/** Every import of a file, relative ones resolved to paths, the others (node:fs, packages) as written. */
export function specifiersOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out = new Set<string>();
  for (const form of ALL_IMPORT_FORMS) {
    for (const m of text.matchAll(form)) {
      const spec = m[2]!;
      out.add(spec.startsWith('.') ? resolve(dirname(file), spec.replace(/\.js$/, '.ts')) : spec);
    }
  }
  return [...out];
}

/** Relative imports of a file (type-only ones included: they couple layers too). */
export function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out = new Set<string>();
  for (const form of IMPORT_FORMS) {
    for (const m of text.matchAll(form)) out.add(resolve(dirname(file), m[2]!.replace(/\.js$/, '.ts')));
  }
  return [...out];
}

function folderOf(root: string, file: string): string {
  const rel = relative(root, file);
  return rel.includes('/') ? rel.slice(0, rel.indexOf('/')) : '.';
}

export function layeringViolations(root: string): string[] {
  const bad: string[] = [];
  for (const file of sources(root)) {
    const from = folderOf(root, file);
    const rank = LAYERS[from];
    if (rank === undefined) {
      bad.push(`${relative(root, file)}: folder "${from}" has no place in LAYERS`);
      continue;
    }
    for (const target of importsOf(file)) {
      const to = folderOf(root, target);
      if (to === from) continue;
      const r = LAYERS[to];
      if (r === undefined || r >= rank) bad.push(`${relative(root, file)} (${from}, level ${rank}) imports ${relative(root, target)} (${to}, level ${r})`);
    }
  }
  return bad;
}

export function importCycles(root: string): string[][] {
  const files = sources(root);
  const graph = new Map(files.map((f) => [f, importsOf(f).filter((t) => files.includes(t))]));
  const cycles: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 'open');
    stack.push(f);
    for (const t of graph.get(f) ?? []) {
      if (state.get(t) === 'open') cycles.push([...stack.slice(stack.indexOf(t)), t].map((p) => relative(root, p)));
      else if (state.get(t) === undefined) visit(t);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of files) if (state.get(f) === undefined) visit(f);
  return cycles;
}

/** Files above net/ that import a net/ module other than the socket surface and host facts. */
export function socketSurfaceViolations(root: string): string[] {
  const bad: string[] = [];
  for (const file of sources(root)) {
    if (folderOf(root, file) === 'net') continue;
    for (const target of importsOf(file)) {
      if (folderOf(root, target) === 'net' && !NET_SURFACE.has(relative(join(root, 'net'), target))) bad.push(`${relative(root, file)} imports ${relative(root, target)}: only net/io.ts is the socket surface`);
    }
  }
  return bad;
}

/** Files outside net/ that import a UDP socket implementation (node:dgram, the addon). */
export function socketImplViolations(root: string): string[] {
  const bad: string[] = [];
  for (const file of sources(root)) {
    if (folderOf(root, file) === 'net') continue;
    for (const spec of specifiersOf(file)) if (SOCKET_MODULES.test(spec)) bad.push(`${relative(root, file)} imports ${spec.startsWith('/') ? relative(root, spec) : spec}`);
  }
  return bad;
}

/** wire/ files that import anything but wire/, base/stats.ts and protobufjs (node:fs, node:path, base/package.ts...). */
export function impureWire(root: string): string[] {
  const bad: string[] = [];
  for (const file of sources(root)) {
    if (folderOf(root, file) !== 'wire') continue;
    for (const spec of specifiersOf(file)) {
      const rel = spec.startsWith('/') ? relative(root, spec) : spec;
      if (rel.startsWith('wire/') || WIRE_MAY_IMPORT.has(rel)) continue;
      bad.push(`${relative(root, file)} imports ${rel}: wire/ is pure`);
    }
  }
  return bad;
}

/** No TypeScript file in src/ longer than this: past it a file has more than one job. */
export const MAX_LINES = 450;

/** Files of src/ longer than MAX_LINES lines. */
export function oversized(root: string): string[] {
  const bad: string[] = [];
  for (const file of sources(root)) {
    const lines = readFileSync(file, 'utf8').split('\n').length - 1;
    if (lines > MAX_LINES) bad.push(`${relative(root, file)}: ${lines} lines (at most ${MAX_LINES})`);
  }
  return bad;
}

test('every folder imports only from folders below it', () => {
  assert.deepEqual(layeringViolations(SRC), []);
});

test('no file-level import cycle', () => {
  assert.deepEqual(importCycles(SRC), []);
});

test('above net/, net/io.ts is the only socket surface', () => {
  assert.deepEqual(socketSurfaceViolations(SRC), []);
});

test('no file outside net/ imports node:dgram or the native addon', () => {
  assert.deepEqual(socketImplViolations(SRC), []);
});

test('wire/ is pure: it imports nothing that reads files or opens sockets', () => {
  assert.deepEqual(impureWire(SRC), []);
});

test(`no file in src/ is over ${MAX_LINES} lines`, () => {
  assert.deepEqual(oversized(SRC), []);
});

test('the checks find an upward import, a sideways import, an unplaced folder and a cycle', () => {
  const root = mkdtempSync(join(tmpdir(), 'udprepeater-layers-'));
  const put = (path: string, text: string) => {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  put('wire/a.ts', "import { b } from './b.js';\nimport type { R } from '../repeater/r.js';\nexport const a = 1;\n");
  put('wire/b.ts', "import { a } from './a.js';\nexport const b = a;\n");
  put('repeater/r.ts', "import { x } from '../agent/x.js';\nexport type R = 1;\n");
  put('agent/x.ts', 'export const x = 1;\n');
  // Forms a reviewer might miss: a side-effect import, double quotes, a dynamic import, a multi-line import.
  put('base/side.ts', "import '../net/n.js';\n");
  put('base/dq.ts', 'import { n } from "../net/n.js";\nexport const dq = n;\n');
  put('base/dyn.ts', "export const load = () => import('../net/n.js');\n");
  put('base/multi.ts', "import {\n  n,\n} from '../net/n.js';\nexport const multi = n;\n");
  put('net/n.ts', 'export const n = 1;\n');
  put('misc/m.ts', 'export const m = 1;\n');
  const bad = layeringViolations(root);
  assert.ok(bad.some((b) => b.startsWith('wire/a.ts (wire, level 1) imports repeater/r.ts')), bad.join('\n'));
  assert.ok(bad.some((b) => b.startsWith('repeater/r.ts (repeater, level 6) imports agent/x.ts')), bad.join('\n'));
  assert.ok(bad.some((b) => b.includes('folder "misc" has no place')), bad.join('\n'));
  for (const f of ['side', 'dq', 'dyn', 'multi']) {
    assert.ok(bad.some((b) => b.startsWith(`base/${f}.ts (base, level 0) imports net/n.ts`)), `base/${f}.ts not caught:\n${bad.join('\n')}`);
  }
  assert.deepEqual(importCycles(root), [['wire/a.ts', 'wire/b.ts', 'wire/a.ts']]);
  put('base/long.ts', 'export const x = 1;\n'.repeat(MAX_LINES + 1));
  put('base/just.ts', 'export const y = 1;\n'.repeat(MAX_LINES));
  assert.deepEqual(oversized(root), [`base/long.ts: ${MAX_LINES + 1} lines (at most ${MAX_LINES})`]);
});

test('the checks find a socket reached around net/io.ts, node:dgram outside net/, and an impure wire/', () => {
  const root = mkdtempSync(join(tmpdir(), 'udprepeater-sockets-'));
  const put = (path: string, text: string) => {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  put('net/io.ts', 'export const io = 1;\n');
  put('net/dgram-listener.ts', "import { createSocket } from 'node:dgram';\nexport const l = createSocket;\n");
  put('net/local.ts', 'export const local = 1;\n');
  put('agent/a.ts', "import type { Socket } from 'node:dgram';\nimport { l } from '../net/dgram-listener.js';\nimport { io } from '../net/io.js';\nexport const a = [l, io];\n");
  put('tls/t.ts', "import { createSocket } from \"dgram\";\nimport { local } from '../net/local.js';\nexport const t = [createSocket, local];\n");
  put('tools/u.ts', "const addon = require('../native/build/Release/udpfast.node');\nexport const u = addon;\n");
  put('base/stats.ts', 'export const s = 1;\n');
  put('base/package.ts', 'export const p = 1;\n');
  put('wire/ok.ts', "import protobuf from 'protobufjs';\nimport { s } from '../base/stats.js';\nimport { w } from './w.js';\nexport const ok = [protobuf, s, w];\n");
  put('wire/w.ts', 'export const w = 1;\n');
  put('wire/fs.ts', "import { readFileSync } from 'node:fs';\nexport const f = readFileSync;\n");
  put('wire/pkg.ts', "import { p } from '../base/package.js';\nexport const q = p;\n");
  assert.deepEqual(socketSurfaceViolations(root), ['agent/a.ts imports net/dgram-listener.ts: only net/io.ts is the socket surface']);
  assert.deepEqual(socketImplViolations(root).sort(), ['agent/a.ts imports node:dgram', 'tls/t.ts imports dgram', 'tools/u.ts imports native/build/Release/udpfast.node'].sort());
  assert.deepEqual(impureWire(root).sort(), ['wire/fs.ts imports node:fs: wire/ is pure', 'wire/pkg.ts imports base/package.ts: wire/ is pure'].sort());
});

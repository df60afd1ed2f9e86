// The layering of src/ (docs/ARCHITECTURE.md): folders import downward only,
// folders on the same level never import each other, and no file-level
// import cycle exists. Read from the TypeScript sources, so a broken import
// fails here before anyone has to notice it in review. The checks are also
// run on a small synthetic tree with known faults, so they can be seen to fail.

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
  repeater: 5,
  agent: 5,
  tools: 5,
  tls: 5,
  cluster: 6,
  daemon: 7,
  '.': 8, // src/cli.ts
};

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

test('every folder imports only from folders below it', () => {
  assert.deepEqual(layeringViolations(SRC), []);
});

test('no file-level import cycle', () => {
  assert.deepEqual(importCycles(SRC), []);
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
  assert.ok(bad.some((b) => b.startsWith('repeater/r.ts (repeater, level 5) imports agent/x.ts')), bad.join('\n'));
  assert.ok(bad.some((b) => b.includes('folder "misc" has no place')), bad.join('\n'));
  for (const f of ['side', 'dq', 'dyn', 'multi']) {
    assert.ok(bad.some((b) => b.startsWith(`base/${f}.ts (base, level 0) imports net/n.ts`)), `base/${f}.ts not caught:\n${bad.join('\n')}`);
  }
  assert.deepEqual(importCycles(root), [['wire/a.ts', 'wire/b.ts', 'wire/a.ts']]);
});

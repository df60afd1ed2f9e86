// The documents say what the code does: the README's option tables hold every
// flag of serve and agent and nothing else, its drop-reason list is the one
// /metrics exports, its metric names exist, and every section of a document
// that a source comment points to exists.

import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DROP_REASONS } from '../src/base/stats.js';
import { AGENT_OPTIONS, type OptionSpec, SERVE_OPTIONS } from '../src/config/options.js';
import { repoRoot } from './helpers/uwsgi.js';

const ROOT = repoRoot();
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

function between(text: string, marker: string): string {
  const begin = text.indexOf(`<!-- ${marker}:begin -->`);
  const end = text.indexOf(`<!-- ${marker}:end -->`);
  assert.ok(begin >= 0 && end > begin, `README.md has no ${marker} markers`);
  return text.slice(begin, end);
}

/** Flag names in the first column of a markdown table. */
function flagsOfTable(table: string): string[] {
  const names = new Set<string>();
  for (const row of table.split('\n').filter((l) => l.startsWith('| `'))) {
    const first = row.split('|')[1]!;
    for (const m of first.matchAll(/--([a-z][a-z-]*)/g)) names.add(m[1]!);
  }
  return [...names].sort();
}

const flagNames = (specs: readonly OptionSpec[]) => specs.map((s) => (s.negatable ? `no-${s.name}` : s.name)).sort();

test("the README's serve table lists every serve flag, and only those", () => {
  assert.deepEqual(flagsOfTable(between(README, 'serve-options')), flagNames(SERVE_OPTIONS));
});

test("the README's agent table lists every agent flag, and only those", () => {
  assert.deepEqual(flagsOfTable(between(README, 'agent-options')), flagNames(AGENT_OPTIONS));
});

test("the README's drop reasons are exactly the ones /metrics exports", () => {
  const listed = [...between(README, 'drop-reasons').matchAll(/`([a-z_]+)`/g)].map((m) => m[1]!).sort();
  assert.deepEqual(listed, [...DROP_REASONS].sort());
});

function sources(dir: string, out: string[] = []): string[] {
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) sources(p, out);
    else if (/\.(ts|c|proto)$/.test(p)) out.push(p);
  }
  return out;
}

/**
 * TypeScript or C source without its comments (strings kept), so a name that
 * only a comment mentions does not count as code.
 */
export function withoutComments(text: string): string {
  return text.replace(/('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`(?:[^`\\]|\\.)*`)|\/\/[^\n]*|\/\*[\s\S]*?\*\//g, (_m, str: string | undefined) => str ?? '');
}

test('withoutComments keeps strings and drops comments', () => {
  assert.equal(withoutComments("a('x // y'); // z\n/* w */ b(\"q\")"), "a('x // y'); \n b(\"q\")");
  assert.ok(!withoutComments("// 'udprepeater_gone_total'\nconst k = 1;").includes('udprepeater_gone_total'));
});

test('every metric the README names is registered by the code', () => {
  const code = sources(join(ROOT, 'src')).map((f) => withoutComments(readFileSync(f, 'utf8'))).join('\n');
  const named = new Set([...README.matchAll(/`(udprepeater_[a-z_]+)`/g)].map((m) => m[1]!).filter((n) => !n.endsWith('_')));
  assert.ok(named.size > 10);
  for (const name of named) {
    // Agent metrics are registered with a prefix variable; the repeater's by name or prefix.
    const base = name.replace(/^udprepeater_(agent_)?/, '');
    assert.ok(code.includes(`'${name}'`) || code.includes(`\`\${prefix}_${base}\``), `${name} is in the README but no code registers it`);
  }
});

test('every document section a source comment points to exists', () => {
  const headings = new Map<string, Set<string>>();
  const headingsOf = (doc: string) => {
    if (!headings.has(doc)) {
      const text = readFileSync(join(ROOT, doc), 'utf8');
      headings.set(doc, new Set([...text.matchAll(/^#+ (.+)$/gm)].map((m) => m[1]!.trim())));
    }
    return headings.get(doc)!;
  };
  const refs: string[] = [];
  for (const file of [...sources(join(ROOT, 'src')), ...sources(join(ROOT, 'proto'))]) {
    // A comment may break a section name over two lines: read it as one.
    const text = readFileSync(file, 'utf8').replace(/\n\s*(?:\/\/|\*)\s*/g, ' ');
    for (const m of text.matchAll(/\b((?:docs\/)?[A-Z]+\.md), "([^"]+)"/g)) {
      refs.push(`${m[1]} "${m[2]}"`);
      assert.ok(headingsOf(m[1]!).has(m[2]!), `${file.slice(ROOT.length + 1)} points to ${m[1]} "${m[2]}", which has no such heading`);
    }
    // Every document a source names exists where it says.
    for (const m of text.matchAll(/(?<![\w/.-])((?:docs\/)?[A-Z][A-Z_]*\.md)\b/g)) {
      assert.ok(existsSync(join(ROOT, m[1]!)), `${file.slice(ROOT.length + 1)} cites ${m[1]}, which does not exist`);
    }
  }
  assert.ok(refs.length >= 5, `only ${refs.length} references found: the pattern no longer matches the comments`);
  // No comment points to a document outside the repository.
  for (const file of sources(join(ROOT, 'src'))) {
    assert.doesNotMatch(readFileSync(file, 'utf8'), /See PROTOCOL\.md|\.\.\/shared\//, `${file} cites a document that is not in the repository`);
  }
});

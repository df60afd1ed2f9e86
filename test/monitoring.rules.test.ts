// The Prometheus mixin in monitoring/, offline: promtool accepts the rule
// files and passes their unit tests, every rule is covered by those tests,
// and the files keep the conventions the README promises.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { type AlertRule, installed, loadPromtoolTests, loadRules, MONITORING, parseYaml, type RecordRule, run } from './helpers/prometheus.js';
import { requirement } from './helpers/requirement.js';

const ALERTS = join(MONITORING, 'alerts.yml');
const RULES = join(MONITORING, 'rules.yml');
const TESTS = join(MONITORING, 'tests');
const testFiles = readdirSync(TESTS)
  .filter((f) => f.endsWith('.test.yml'))
  .map((f) => join(TESTS, f));

// Read on first use, so a file our parser rejects fails the tests that need
// it while promtool still gets to say what is wrong.
let parsed: { alerts: AlertRule[]; records: RecordRule[] } | undefined;
const rules = () => (parsed ??= { alerts: loadRules(ALERTS).alerts, records: loadRules(RULES).records });

const promtool = requirement(
  'promtool',
  'monitoring rule checks (promtool check/test rules)',
  'The alerting and recording rules are not validated nor unit-tested.',
  installed('promtool'),
  'install the Debian package "prometheus" (it ships promtool)',
);

describe('promtool', { skip: promtool.skip }, () => {
  test('check rules accepts both files and counts the rules we parsed', async () => {
    promtool.require();
    const r = await run('promtool', ['check', 'rules', ALERTS, RULES]);
    assert.equal(r.code, 0, r.output);
    // Cross-checks the hand parser: promtool and it must see the same rules.
    const counts = [...r.output.matchAll(/SUCCESS: (\d+) rules found/g)].map((m) => Number(m[1]));
    assert.deepEqual(counts, [rules().alerts.length, rules().records.length], r.output);
  });

  test('the unit tests in monitoring/tests pass', async () => {
    promtool.require();
    assert.ok(testFiles.length >= 2, `test files: ${testFiles.join(' ')}`);
    const r = await run('promtool', ['test', 'rules', ...testFiles], { cwd: TESTS });
    assert.equal(r.code, 0, r.output);
    assert.equal(r.output.match(/SUCCESS/g)?.length, testFiles.length, r.output);
  });
});

describe('coverage of the promtool tests', () => {
  const checked = () => {
    const tests = testFiles.map((f) => loadPromtoolTests(f));
    return {
      firing: new Set(tests.flatMap((t) => [...t.firing])),
      quiet: new Set(tests.flatMap((t) => [...t.quiet])),
      samples: tests.flatMap((t) => t.samples),
    };
  };

  test('every alert fires in some test, and has a case where it must not', () => {
    const { firing, quiet } = checked();
    const names = rules().alerts.map((a) => a.name);
    assert.deepEqual(names.filter((n) => !firing.has(n)), [], 'alerts never seen firing');
    assert.deepEqual(names.filter((n) => !quiet.has(n)), [], 'alerts never checked to stay quiet');
    assert.deepEqual([...firing, ...quiet].filter((n) => !names.includes(n)), [], 'tests name alerts that do not exist');
  });

  test('every recording rule (name and static labels) has an expected sample', () => {
    const { samples } = checked();
    const uncovered = rules().records.filter(
      (r) => !samples.some((s) => s.startsWith(`${r.name}{`) && Object.entries(r.labels).every(([k, v]) => s.includes(`${k}="${v}"`))),
    );
    assert.deepEqual(uncovered.map((r) => `${r.name}${JSON.stringify(r.labels)}`), []);
  });
});

describe('conventions', () => {
  const readme = readFileSync(join(MONITORING, 'README.md'), 'utf8');
  const anchors = new Set([...readme.matchAll(/^#+ (.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-')));

  test('alerts carry severity, summary, description, a `for`, and a runbook section that exists', () => {
    const { alerts } = rules();
    for (const a of alerts) {
      assert.match(a.labels['severity'] ?? '', /^(critical|warning|info)$/, `${a.name} severity`);
      for (const k of ['summary', 'description', 'runbook_url']) assert.ok((a.annotations[k] ?? '') !== '', `${a.name} lacks ${k}`);
      assert.match(a.for, /^\d+m$/, `${a.name}: for`);
      const anchor = /^monitoring\/README\.md#(.+)$/.exec(a.annotations['runbook_url']!)?.[1];
      assert.equal(anchor, a.name.toLowerCase(), `${a.name} runbook_url`);
      assert.ok(anchors.has(anchor!), `README.md has no section "${a.name}"`);
    }
    assert.equal(new Set(alerts.map((a) => a.name)).size, alerts.length, 'alert names are unique');
  });

  test('recording rules are named level:metric:operations', () => {
    for (const r of rules().records) assert.match(r.name, /^[a-z_]+:udprepeater_[a-z_]+:[a-z0-9_]+$/, r.name);
  });

  // README.md promises that one sed retargets the files: that holds only if
  // every selector of a raw metric starts with the job matcher.
  test('every raw metric selector starts with {job="udprepeater" or {job="udprepeater-agent"', () => {
    const metric = /(?<![\w:])(up|udprepeater_[a-z_]+)(?![\w:])(\s*\{[^}]*\})?/g;
    for (const r of [...rules().alerts, ...rules().records]) {
      let seen = 0;
      for (const m of r.expr.matchAll(metric)) {
        seen++;
        const sel = m[2]?.trim() ?? '';
        const job = sel.startsWith('{job="udprepeater-agent"') ? 'agent' : sel.startsWith('{job="udprepeater"') ? 'repeater' : null;
        assert.ok(job !== null, `${r.name}: "${m[0]}" lacks the job selector`);
        assert.equal(job === 'agent', m[1]!.startsWith('udprepeater_agent_') || (m[1] === 'up' && r.name.includes('Agent')), `${r.name}: "${m[0]}" names the other daemon's job`);
      }
      assert.ok(seen > 0, `${r.name}: no metric found in ${r.expr}`);
    }
  });

  // The live test proves the same against real scrapes; this runs without
  // prometheus or nats-server, so a typo shows up everywhere.
  test('the dashboard: unique ids, the datasource variable, no overlapping panels, and only metrics the daemons register', () => {
    interface Panel {
      id: number;
      type: string;
      title: string;
      gridPos: { x: number; y: number; w: number; h: number };
      datasource?: { uid?: string };
      targets?: Array<{ expr: string; datasource?: { uid?: string } }>;
    }
    const dashboard = JSON.parse(readFileSync(join(MONITORING, 'dashboards', 'udprepeater.json'), 'utf8')) as { panels: Panel[] };
    const panels = dashboard.panels;
    assert.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique');
    for (const p of panels.filter((x) => x.type !== 'row')) {
      assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: panel datasource`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, '${datasource}', `${p.title}: target datasource`);
    }
    for (const [i, a] of panels.entries()) {
      assert.ok(a.gridPos.x >= 0 && a.gridPos.x + a.gridPos.w <= 24, `${a.title}: gridPos ${JSON.stringify(a.gridPos)}`);
      for (const b of panels.slice(i + 1)) {
        const apart = a.gridPos.x + a.gridPos.w <= b.gridPos.x || b.gridPos.x + b.gridPos.w <= a.gridPos.x || a.gridPos.y + a.gridPos.h <= b.gridPos.y || b.gridPos.y + b.gridPos.h <= a.gridPos.y;
        assert.ok(apart, `"${a.title}" and "${b.title}" overlap`);
      }
    }

    // Names as src/ registers them: literal 'udprepeater_...' strings, and
    // `${prefix}_...` for the metrics the repeater and the agent share.
    const src = join(MONITORING, '..', 'src');
    const files = (readdirSync(src, { recursive: true }) as string[]).map((f) => join(src, f)).filter((f) => f.endsWith('.ts') && statSync(f).isFile());
    const registered = new Set<string>();
    for (const f of files) {
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/['"`](udprepeater_[a-z_]+)['"`]/g)) registered.add(m[1]!);
      for (const m of text.matchAll(/`\$\{prefix\}(_[a-z_]+)`/g)) for (const prefix of ['udprepeater', 'udprepeater_agent']) registered.add(prefix + m[1]!);
    }
    assert.ok(registered.has('udprepeater_subscribers') && registered.has('udprepeater_datagrams_received_total'), `registered: ${[...registered].join(' ')}`);
    const exprs = [...rules().alerts.map((a) => a.expr), ...rules().records.map((r) => r.expr), ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr))];
    const used = new Set(exprs.flatMap((e) => [...e.matchAll(/(?<![\w:])udprepeater_[a-z_]+(?![\w:])/g)].map((m) => m[0])));
    const unknown = [...used].filter((n) => !registered.has(n) && !registered.has(n.replace(/_(bucket|count|sum)$/, '')));
    assert.deepEqual(unknown, [], 'metrics named in monitoring/ that src/ does not register');
  });

  test('the YAML reader refuses what it does not understand instead of guessing', () => {
    assert.deepEqual(parseYaml('a:\n  - b: |\n      x\n      y\n    c: [1, 2]\n  - "q"\n'), { a: [{ b: 'x\ny\n', c: ['1', '2'] }, 'q'] });
    assert.throws(() => parseYaml('a: >\n  folded\n'), /yaml:1: unsupported/);
    assert.throws(() => parseYaml('a: plain\n  continued\n'), /multi-line plain/);
    assert.throws(() => parseYaml('a: &x 1\n'), /unsupported/);
    assert.throws(() => parseYaml('a: |+\n  kept\n'), /unsupported/);
  });
});

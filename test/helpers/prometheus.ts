// For the monitoring tests: reading the rule files, running promtool, and a
// real Prometheus server on loopback. No npm dependency: the rule and test
// files are read by a small parser for the YAML subset they are written in,
// which refuses anything else rather than guess.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually, freePort } from './net.js';
import type { Availability } from './requirement.js';

/** monitoring/ at the repository root (tests run from build/test/). */
export const MONITORING = join(__dirname, '..', '..', '..', 'monitoring');

// ---------------------------------------------------------------- YAML subset

export type Yaml = string | Yaml[] | { [key: string]: Yaml };

interface Line {
  readonly no: number;
  readonly indent: number;
  /** Content without indentation and without a trailing comment. */
  readonly text: string;
  /** The untouched line, for block scalars. */
  readonly raw: string;
}

/** Index of a `#` that starts a comment (outside quotes, after a blank), or -1. */
function commentAt(s: string): number {
  let quote: string | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quote !== null) {
      if (c === quote && quote === "'" && s[i + 1] === "'") i++; // '' inside '...'
      else if (c === quote) quote = null;
    } else if (c === "'" || c === '"') {
      if (i === 0 || /[\s:[{,-]/.test(s[i - 1]!)) quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]!))) return i;
  }
  return -1;
}

/**
 * Parses block mappings, block sequences, `|`/`|-` block scalars, quoted and
 * plain scalars, and one-line flow collections of scalars. Every scalar is a
 * string. Throws, naming the line, on anything else (anchors, `>`, multi-line
 * plain scalars, tabs).
 */
export function parseYaml(source: string, name = 'yaml'): Yaml {
  const lines: Line[] = source.split('\n').map((raw, i) => {
    if (/^\t/.test(raw)) throw new Error(`${name}:${i + 1}: tab indentation is not supported`);
    const c = commentAt(raw);
    const text = (c < 0 ? raw : raw.slice(0, c)).trimEnd();
    return { no: i + 1, indent: text.length - text.trimStart().length, text: text.trimStart(), raw };
  });
  let at = 0;
  const fail = (l: Line | undefined, why: string): never => {
    throw new Error(`${name}:${l?.no ?? 'end'}: ${why}`);
  };
  const skipBlank = () => {
    while (at < lines.length && lines[at]!.text === '') at++;
  };
  const peek = (): Line | undefined => {
    skipBlank();
    return lines[at];
  };

  function scalar(v: string, l: Line): Yaml {
    if (v.startsWith("'")) {
      if (!v.endsWith("'") || v.length < 2) fail(l, 'unterminated single-quoted string');
      return v.slice(1, -1).replace(/''/g, "'");
    }
    if (v.startsWith('"')) {
      try {
        return JSON.parse(v) as string;
      } catch {
        return fail(l, `unsupported double-quoted string ${v}`);
      }
    }
    if (v.startsWith('[')) {
      if (!v.endsWith(']')) fail(l, 'multi-line flow sequences are not supported');
      const inner = v.slice(1, -1).trim();
      return inner === '' ? [] : inner.split(',').map((s) => scalar(s.trim(), l));
    }
    if (v.startsWith('{')) {
      if (!v.endsWith('}')) fail(l, 'multi-line flow mappings are not supported');
      const inner = v.slice(1, -1).trim();
      const out: { [key: string]: Yaml } = {};
      if (inner === '') return out;
      for (const part of inner.split(',')) {
        const m = /^([^:]+):\s+(.*)$/.exec(part.trim()) ?? fail(l, `cannot read flow entry "${part}"`);
        out[m[1]!.trim()] = scalar(m[2]!.trim(), l);
      }
      return out;
    }
    if (/^[&*!>|%@`]/.test(v)) fail(l, `unsupported YAML feature at "${v}"`);
    return v;
  }

  /** Lines more indented than `parent`, dedented: a `|` block scalar. */
  function blockScalar(parent: number, chomp: string): string {
    const body: string[] = [];
    let indent = -1;
    while (at < lines.length) {
      const l = lines[at]!;
      if (l.raw.trim() !== '') {
        const n = l.raw.length - l.raw.trimStart().length;
        if (n <= parent) break;
        if (indent < 0) indent = n;
        if (n < indent) fail(l, 'block scalar line less indented than its first line');
        body.push(l.raw.slice(indent));
      } else body.push('');
      at++;
    }
    while (body.length > 0 && body[body.length - 1] === '') body.pop();
    return body.join('\n') + (chomp === '-' ? '' : '\n');
  }

  /** The value after `key:` (or an empty `-`): nested block, block scalar or scalar. */
  function value(rest: string, indent: number, l: Line, seqAllowedAtSameIndent: boolean): Yaml {
    const m = /^\|(-?)$/.exec(rest);
    if (m) return blockScalar(indent, m[1]!);
    if (rest !== '') {
      const v = scalar(rest, l);
      const next = peek();
      if (next !== undefined && next.indent > indent) fail(next, 'multi-line plain scalars are not supported');
      return v;
    }
    const next = peek();
    if (next !== undefined && next.indent > indent) return block(next.indent);
    if (seqAllowedAtSameIndent && next !== undefined && next.indent === indent && isItem(next.text)) return block(indent);
    return '';
  }

  const isItem = (t: string) => t === '-' || t.startsWith('- ');

  function block(indent: number): Yaml {
    const first = peek() ?? fail(undefined, 'expected a value');
    if (first.indent !== indent) fail(first, `expected indentation ${indent}`);
    return isItem(first.text) ? sequence(indent) : mapping(indent);
  }

  function sequence(indent: number): Yaml[] {
    const out: Yaml[] = [];
    for (let l = peek(); l !== undefined && l.indent === indent && isItem(l.text); l = peek()) {
      const rest = l.text.slice(1).trimStart();
      if (rest === '') {
        at++;
        out.push(value('', indent, l, false));
      } else if (/^[^'"[{][^:]*:(\s|$)/.test(rest)) {
        // "- key: v": a mapping whose keys line up with "key".
        const inner = indent + (l.text.length - rest.length);
        lines[at] = { ...l, indent: inner, text: rest };
        out.push(mapping(inner));
      } else {
        at++;
        out.push(value(rest, indent, l, false));
      }
    }
    return out;
  }

  function mapping(indent: number): { [key: string]: Yaml } {
    const out: { [key: string]: Yaml } = {};
    for (let l = peek(); l !== undefined && l.indent === indent && !isItem(l.text); l = peek()) {
      const m = /^([^'"[{][^:]*):(?:\s+(.*))?$/.exec(l.text) ?? fail(l, `expected "key: value", got "${l.text}"`);
      const key = m[1]!.trim();
      if (key in out) fail(l, `duplicate key ${key}`);
      at++;
      out[key] = value((m[2] ?? '').trim(), indent, l, true);
    }
    const l = peek();
    if (l !== undefined && l.indent > indent) fail(l, 'unexpected indentation');
    return out;
  }

  const first = peek();
  if (first === undefined) return {};
  const doc = block(first.indent);
  const rest = peek();
  if (rest !== undefined) fail(rest, 'unexpected content after the document');
  return doc;
}

// ------------------------------------------------------------------ rules

export interface AlertRule {
  readonly name: string;
  readonly expr: string;
  readonly for: string;
  readonly labels: Record<string, string>;
  readonly annotations: Record<string, string>;
}

export interface RecordRule {
  readonly name: string;
  readonly expr: string;
  readonly labels: Record<string, string>;
}

const asMap = (y: Yaml | undefined, what: string): { [key: string]: Yaml } => {
  if (y === undefined || typeof y === 'string' || Array.isArray(y)) throw new Error(`${what} is not a mapping`);
  return y;
};
const asList = (y: Yaml | undefined, what: string): Yaml[] => {
  if (y === undefined || y === '') return [];
  if (!Array.isArray(y)) throw new Error(`${what} is not a sequence`);
  return y;
};
const asText = (y: Yaml | undefined, what: string): string => {
  if (typeof y !== 'string') throw new Error(`${what} is not a string`);
  return y;
};
const strings = (y: Yaml | undefined, what: string): Record<string, string> =>
  Object.fromEntries(Object.entries(y === undefined ? {} : asMap(y, what)).map(([k, v]) => [k, asText(v, `${what}.${k}`)]));

export function readYaml(path: string): Yaml {
  return parseYaml(readFileSync(path, 'utf8'), path);
}

/** The alerting and recording rules of a Prometheus rule file. */
export function loadRules(path: string): { alerts: AlertRule[]; records: RecordRule[] } {
  const alerts: AlertRule[] = [];
  const records: RecordRule[] = [];
  for (const g of asList(asMap(readYaml(path), path)['groups'], `${path} groups`)) {
    const group = asMap(g, `${path} group`);
    for (const r of asList(group['rules'], `${path} rules`)) {
      const rule = asMap(r, `${path} rule`);
      const expr = asText(rule['expr'], `${path} expr`).trim();
      if (rule['alert'] !== undefined) {
        const name = asText(rule['alert'], 'alert');
        alerts.push({
          name,
          expr,
          for: rule['for'] === undefined ? '0s' : asText(rule['for'], `${name}.for`),
          labels: strings(rule['labels'], `${name}.labels`),
          annotations: strings(rule['annotations'], `${name}.annotations`),
        });
      } else records.push({ name: asText(rule['record'], 'record'), expr, labels: strings(rule['labels'], 'labels') });
    }
  }
  return { alerts, records };
}

/** What a promtool test file checks: alerts expected to fire, and sample label sets expected. */
export function loadPromtoolTests(path: string): { firing: Set<string>; quiet: Set<string>; samples: string[] } {
  const firing = new Set<string>();
  const quiet = new Set<string>();
  const samples: string[] = [];
  for (const t of asList(asMap(readYaml(path), path)['tests'], `${path} tests`)) {
    const test = asMap(t, `${path} test`);
    for (const a of asList(test['alert_rule_test'], 'alert_rule_test')) {
      const c = asMap(a, 'alert test');
      const name = asText(c['alertname'], 'alertname');
      (asList(c['exp_alerts'], 'exp_alerts').length > 0 ? firing : quiet).add(name);
    }
    for (const e of asList(test['promql_expr_test'], 'promql_expr_test')) {
      for (const s of asList(asMap(e, 'promql test')['exp_samples'], 'exp_samples')) samples.push(asText(asMap(s, 'sample')['labels'], 'labels'));
    }
  }
  return { firing, quiet, samples };
}

// ---------------------------------------------------------------- processes

/** Whether `bin --version` runs. */
export function installed(bin: string): Availability {
  const r = spawnSync(bin, ['--version'], { timeout: 10_000, stdio: 'ignore' });
  if (r.error !== undefined) return { ok: false, reason: `${bin} is not installed (${r.error.message})` };
  return r.status === 0 ? { ok: true } : { ok: false, reason: `${bin} --version exited with ${r.status}` };
}

/** Runs a command to completion (killed after `ms`). */
export function run(cmd: string, args: string[], opts: { cwd?: string; ms?: number } = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} did not finish within ${opts.ms ?? 30_000} ms:\n${output}`));
    }, opts.ms ?? 30_000);
    child.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, output });
    });
  });
}

/** Children still running; killed if the test process exits first. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export interface Sample {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

export interface ActiveAlert {
  readonly labels: Record<string, string>;
  readonly state: 'pending' | 'firing';
}

/** A Prometheus server on a free loopback port, storing in `dir`. */
export class Prometheus {
  private log = '';
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
  ) {
    live.add(child);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        live.delete(child);
        resolve();
      }),
    );
  }

  /** Starts `prometheus` with `configFile` and waits until /-/ready answers. */
  static async start(configFile: string, dir: string, ms = 15_000): Promise<Prometheus> {
    const port = await freePort();
    const child = spawn(
      'prometheus',
      [`--config.file=${configFile}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const p = new Prometheus(child, port);
    try {
      await eventually(
        'prometheus /-/ready',
        async () => {
          if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${p.log}`);
          const res = await fetch(`http://127.0.0.1:${port}/-/ready`, { signal: AbortSignal.timeout(1000) }).catch(() => null);
          return res?.status === 200 ? true : undefined;
        },
        ms,
      );
    } catch (err) {
      await p.stop();
      throw err;
    }
    return p;
  }

  /** The server's own log so far, for failure messages. */
  get output(): string {
    return this.log;
  }

  async api<T>(path: string): Promise<T> {
    const res = await fetch(`http://127.0.0.1:${this.port}${path}`, { signal: AbortSignal.timeout(5000) });
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? res.status}`);
    return body.data;
  }

  /** An instant query; throws with Prometheus's error on a bad expression. */
  async query(expr: string): Promise<Sample[]> {
    const data = await this.api<{ resultType: string; result: Sample[] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
    if (data.resultType !== 'vector') throw new Error(`${expr}: result type ${data.resultType}, want vector`);
    return data.result;
  }

  alerts(): Promise<ActiveAlert[]> {
    return this.api<{ alerts: ActiveAlert[] }>('/api/v1/alerts').then((d) => d.alerts);
  }

  /** SIGTERM, SIGKILL after 5 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

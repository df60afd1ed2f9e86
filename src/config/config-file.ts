// Config files: `name = value` lines whose names are the long flag names.
// `#` and `;` start comments; a repeated name adds to a list option; an
// optional `[udprepeater]` section header is accepted for uWSGI-style files.

import { readFileSync } from 'node:fs';
import { ConfigError, describe } from '../base/errors.js';
import { AGENT_OPTIONS, type OptionSpec, type RawOptions, type RawValue, SERVE_OPTIONS } from './options.js';
import { closest } from './suggest.js';

const TRUE = new Set(['true', 'yes', 'on', '1']);
const FALSE = new Set(['false', 'no', 'off', '0']);

/** Converts one textual value to the option's kind; throws a plain message. */
export function coerce(spec: OptionSpec, text: string): RawValue {
  switch (spec.kind) {
    case 'bool': {
      const t = text.toLowerCase();
      if (TRUE.has(t)) return true;
      if (FALSE.has(t)) return false;
      throw new Error(`expects true or false, got "${text}"`);
    }
    case 'int': {
      if (!/^[0-9]+$/.test(text)) throw new Error(`expects a whole number, got "${text}"`);
      const n = Number(text);
      if (!Number.isSafeInteger(n)) throw new Error(`"${text}" is too large`);
      return n;
    }
    case 'number': {
      if (!/^[0-9]+(\.[0-9]+)?$/.test(text)) throw new Error(`expects a number, got "${text}"`);
      return Number(text);
    }
    case 'list':
      return [text];
    case 'string':
      return text;
  }
}

/** Options read from a file, and the line each one was set on (the last, for lists). */
export interface FileOptions {
  readonly values: RawOptions;
  readonly lines: ReadonlyMap<string, number>;
}

/**
 * Parses a config file. Every long flag name works, `no-NAME = true` (or
 * false) included for the options spelled `--no-NAME` on the command line.
 */
export function parseConfigText(text: string, file: string, specs: readonly OptionSpec[]): FileOptions {
  const byName = new Map(specs.filter((s) => !s.cliOnly).map((s) => [s.name, s]));
  const out: RawOptions = {};
  const at = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const where = `${file}:${i + 1}`;
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.startsWith('[')) {
      if (line !== '[udprepeater]') throw new ConfigError(`${where}: unknown section ${line} (only [udprepeater] is allowed)`);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0) throw new ConfigError(`${where}: expected "name = value", got "${line}"`);
    let name = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    let spec = byName.get(name);
    let negated = false;
    if (spec === undefined && name.startsWith('no-') && byName.get(name.slice(3))?.negatable === true) {
      spec = byName.get(name.slice(3))!;
      negated = true;
    }
    if (spec === undefined) throw new ConfigError(`${where}: ${unknownOption(name, specs)}`);
    let v: RawValue;
    try {
      v = coerce(spec, value);
    } catch (err) {
      throw new ConfigError(`${where}: ${name} ${describe(err)}`);
    }
    if (negated) {
      if (out[spec.name] !== undefined) throw new ConfigError(`${where}: ${name} contradicts ${spec.name}, set earlier`);
      name = spec.name;
      v = !v;
    }
    at.set(name, i + 1);
    const prev = out[name];
    if (spec.kind === 'list') out[name] = [...((prev as string[] | undefined) ?? []), ...(v as string[])];
    else if (prev !== undefined) throw new ConfigError(`${where}: ${name} is set twice`);
    else out[name] = v;
  }
  return { values: out, lines: at };
}

/** Why `name` is no option in this file, with the option the operator most likely meant. */
function unknownOption(name: string, specs: readonly OptionSpec[]): string {
  if (specs.some((s) => s.name === name && s.cliOnly === true)) return `unknown option "${name}" in a config file: it is given on the command line only (--${name})`;
  const [other, otherSpecs] = specs === SERVE_OPTIONS ? ['agent', AGENT_OPTIONS] : specs === AGENT_OPTIONS ? ['serve', SERVE_OPTIONS] : ['', []];
  if (otherSpecs.some((s) => s.name === name && s.cliOnly !== true)) {
    return `"${name}" is an option of \`udprepeater ${other}\`, not of \`udprepeater ${other === 'agent' ? 'serve' : 'agent'}\``;
  }
  const names = specs.filter((s) => s.cliOnly !== true).flatMap((s) => (s.negatable === true ? [s.name, `no-${s.name}`] : [s.name]));
  const guess = closest(name, names);
  return guess === null ? `unknown option "${name}"` : `unknown option "${name}"; did you mean "${guess}"?`;
}

export function readConfigFile(file: string, specs: readonly OptionSpec[]): FileOptions {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config file ${file}: ${describe(err)}`);
  }
  return parseConfigText(text, file, specs);
}

/**
 * Layers option values: defaults, then the config file, then the command
 * line. A list given on the command line replaces the file's list.
 */
export function layerOptions(defaults: RawOptions, file: RawOptions, cli: RawOptions): RawOptions {
  return { ...defaults, ...file, ...cli };
}

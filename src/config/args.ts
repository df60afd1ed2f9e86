// The command line of `serve` and `agent`, parsed with commander from the
// same option table as the config file (options.ts), so a flag and its
// config-file key can never drift apart. The CLI and the tests both parse
// through here.

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ConfigError, describe } from '../base/errors.js';
import { coerce } from './config-file.js';
import type { Invocation } from './load.js';
import type { OptionSpec, RawOptions } from './options.js';

const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

function formatDefault(s: OptionSpec): string {
  if (s.default === undefined || s.kind === 'bool') return '';
  if (Array.isArray(s.default)) return s.default.length === 0 ? '' : ` (default: ${s.default.join(' ')})`;
  return ` (default: ${String(s.default)})`;
}

/** Adds the spec table to a command: the same names as the config file. */
export function addOptions(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const s of specs) {
    const name = s.negatable ? `--no-${s.name}` : `--${s.name}`;
    const flags = `${s.short ? `-${s.short}, ` : ''}${name}${s.kind === 'bool' ? '' : ` <${s.arg ?? 'VALUE'}>`}`;
    const o = new Option(flags, s.help + formatDefault(s));
    if (s.kind === 'list') o.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    else if (s.kind === 'int' || s.kind === 'number') {
      o.argParser((v: string) => {
        try {
          return coerce(s, v);
        } catch (err) {
          throw new InvalidArgumentError(describe(err));
        }
      });
    }
    cmd.addOption(o);
  }
  return cmd;
}

/** The option values the operator typed (not commander's implicit defaults). */
export function invocationOf(cmd: Command, specs: readonly OptionSpec[]): Invocation {
  const values = cmd.opts<Record<string, RawOptions[string]>>();
  const cli: RawOptions = {};
  let configFile: string | null = null;
  for (const s of specs) {
    const key = camel(s.name);
    if (cmd.getOptionValueSource(key) !== 'cli') continue;
    if (s.name === 'config') configFile = String(values[key]);
    else cli[s.name] = values[key]!;
  }
  return { cli, configFile };
}

/**
 * Parses `args` (no program or command name) as the `name` command would:
 * what the CLI does, for tests and tools. Errors are ConfigErrors.
 */
export function parseInvocation(name: string, specs: readonly OptionSpec[], args: readonly string[]): Invocation {
  const cmd = addOptions(new Command(name), specs)
    .exitOverride()
    .configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  try {
    cmd.parse([...args], { from: 'user' });
  } catch (err) {
    throw new ConfigError(err instanceof CommanderError ? err.message.replace(/^error: /, '') : describe(err));
  }
  return invocationOf(cmd, specs);
}

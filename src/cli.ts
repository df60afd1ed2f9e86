#!/usr/bin/env node
// Command-line wiring only: every command hands its parsed options to the
// module that does the work.

import { Command, InvalidArgumentError, Option } from 'commander';
import { coerce } from './config/config-file.js';
import { ConfigError, describe } from './base/errors.js';
import { runAgent } from './daemon/agent.js';
import { generateKeyFile } from './crypto/keyring.js';
import { AGENT_OPTIONS, SERVE_OPTIONS, type OptionSpec, type RawOptions } from './config/options.js';
import { VERSION } from './base/package.js';
import { endpointOption } from './config/serve-config.js';
import { runServe } from './daemon/serve.js';
import { sendCommand } from './tools/send.js';
import { readSignSpec, subscribeCommand } from './tools/subscribe.js';

const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

function formatDefault(s: OptionSpec): string {
  if (s.default === undefined || s.kind === 'bool') return '';
  if (Array.isArray(s.default)) return s.default.length === 0 ? '' : ` (default: ${s.default.join(' ')})`;
  return ` (default: ${String(s.default)})`;
}

/** Adds the spec table to a command: the same names as the config file. */
function addOptions(cmd: Command, specs: readonly OptionSpec[]): void {
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
}

/** The option values the operator typed (not commander's implicit defaults). */
function typed(cmd: Command, specs: readonly OptionSpec[]): { cli: RawOptions; configFile: string | null } {
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

async function guarded(run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    process.stderr.write(`udprepeater: ${describe(err)}\n`);
    process.exitCode = err instanceof ConfigError ? 78 : 1; // 78: EX_CONFIG
  }
}

const program = new Command('udprepeater')
  .description('UDP repeater gateway for uWSGI cache sync, with a sealed secure mode')
  .version(VERSION)
  .showHelpAfterError();

const serve = program.command('serve').description('run the repeater daemon');
addOptions(serve, SERVE_OPTIONS);
serve.action(async (_opts: unknown, cmd: Command) => guarded(() => runServe(typed(cmd, SERVE_OPTIONS))));

const agent = program
  .command('agent')
  .description("run beside a uWSGI node: seal its cache updates to the repeater, deliver the repeater's frames to it");
addOptions(agent, AGENT_OPTIONS);
agent.action(async (_opts: unknown, cmd: Command) => guarded(() => runAgent(typed(cmd, AGENT_OPTIONS))));

program
  .command('keygen')
  .description('write a new random 32-byte secretbox key to FILE (mode 0600; never overwrites)')
  .argument('<FILE>')
  .action(async (file: string) =>
    guarded(async () => {
      const { id } = generateKeyFile(file);
      process.stdout.write(`wrote a new key to ${file} (key id ${id})\n`);
    }),
  );

program
  .command('send')
  .description('send one cache update exactly as uWSGI would, and print it')
  .argument('<ADDR>', 'where to send (the repeater)')
  .argument('<op>', 'set or del')
  .argument('<KEY>')
  .argument('[VALUE]', 'value for set')
  .option('--expires <SECONDS>', 'lifetime of a set; sent as absolute unix time (0 = never)', (v) => Number(v), 0)
  .option('--padded', 'send a delete in the padded form uWSGI applies (uWSGI itself sends it unpadded)')
  .action(async (addr: string, op: string, key: string, value: string | undefined, opts: { expires: number; padded?: boolean }) =>
    guarded(async () => {
      if (op !== 'set' && op !== 'del') throw new ConfigError(`unknown operation "${op}": use set or del`);
      if (op === 'set' && value === undefined) throw new ConfigError('set needs a VALUE');
      if (!Number.isInteger(opts.expires) || opts.expires < 0) throw new ConfigError('--expires wants whole seconds');
      await sendCommand(endpointOption('send', addr), op, key, value, opts);
    }),
  );

program
  .command('subscribe')
  .description('send one uWSGI subscription (subscribe2) announce, and print it')
  .argument('<ADDR>', 'where to send (the repeater)')
  .requiredOption('--key <KEY>', 'subscription key (the channel key, e.g. the cache name)')
  .requiredOption('--address <ADDR>', "the subscriber's address: where the repeater should send")
  .option('--unsubscribe', 'send the unsubscribe a node sends when it stops')
  .option('--sign <DIGEST:PEM>', 'sign as uWSGI does with sign=DIGEST:private.pem')
  .action(async (addr: string, opts: { key: string; address: string; unsubscribe?: boolean; sign?: string }) =>
    guarded(async () => {
      const to = endpointOption('subscribe', addr);
      const sign = opts.sign === undefined ? undefined : readSignSpec(opts.sign);
      await subscribeCommand(to, { key: opts.key, address: opts.address, unsubscribe: opts.unsubscribe === true }, sign);
    }),
  );

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`udprepeater: ${describe(err)}\n`);
  process.exitCode = 1;
});

#!/usr/bin/env node
// Command-line wiring only: every command hands its parsed options to the
// module that does the work.

import { Command, CommanderError } from 'commander';
import { ConfigError, describe } from './base/errors.js';
import { VERSION } from './base/package.js';
import { addOptions, invocationOf } from './config/args.js';
import { AGENT_OPTIONS, DEFAULT_METRICS, KEYGEN_OPTIONS, SERVE_OPTIONS } from './config/options.js';
import { endpointOption } from './config/checks.js';
import { keygen, keygenIdentity } from './tools/keygen.js';
import { pubkey } from './tools/pubkey.js';
import { runAgent } from './daemon/agent.js';
import { runServe } from './daemon/serve.js';
import { sendCommand } from './tools/send.js';
import { readSignSpec, subscribeCommand } from './tools/subscribe.js';
import { parseTarget, peersCommand, StatusError, statusCommand, type StatusOptions, type StatusTarget, subscribersCommand } from './tools/status.js';

/** sysexits.h: a usage error (tools), a configuration error (daemons: systemd does not restart them). */
const EX_USAGE = 64;
const EX_CONFIG = 78;

/** Runs a command; a refusal (ConfigError) exits with `refused`, anything else with 1. */
async function guarded(run: () => Promise<void>, refused = EX_CONFIG): Promise<void> {
  try {
    await run();
  } catch (err) {
    process.stderr.write(`udprepeater: ${describe(err)}\n`);
    process.exitCode = err instanceof ConfigError ? refused : err instanceof StatusError ? err.exitCode : 1;
  }
}

const program = new Command('udprepeater')
  .description('UDP repeater gateway for uWSGI cache sync, with a sealed secure mode')
  .version(VERSION)
  .exitOverride()
  .configureOutput({ outputError: (text, write) => write(`udprepeater: ${text.replace(/^error: /, '')}`) });

const serve = program.command('serve').description('run the repeater daemon');
addOptions(serve, SERVE_OPTIONS);
serve.action(async (_opts: unknown, cmd: Command) => guarded(() => runServe(invocationOf(cmd, SERVE_OPTIONS))));

const agent = program
  .command('agent')
  .description("run beside a uWSGI node: seal its cache updates to the repeater, deliver the repeater's frames to it");
addOptions(agent, AGENT_OPTIONS);
agent.action(async (_opts: unknown, cmd: Command) => guarded(() => runAgent(invocationOf(cmd, AGENT_OPTIONS))));

const keygenCommand = program
  .command('keygen')
  .description("write a new random 32-byte secretbox key to FILE, or with --identity a new identity (mode 0600; never overwrites; the folder must exist)")
  .argument('[FILE]');
addOptions(keygenCommand, KEYGEN_OPTIONS);
keygenCommand.action(async (file: string | undefined, opts: { identity?: string }) => {
  if ((file === undefined) === (opts.identity === undefined)) {
    process.stderr.write('udprepeater: keygen FILE writes a secretbox key, keygen --identity FILE an identity: give one of them\n');
    process.exitCode = EX_USAGE;
    return;
  }
  await guarded(async () => void process.stdout.write(opts.identity !== undefined ? await keygenIdentity(opts.identity) : keygen(file!)));
});

program
  .command('pubkey')
  .description("print the public key of an identity file, as one line (what the peers files of the hosts it talks to list)")
  .argument('<FILE>')
  .action(async (file: string) => guarded(async () => void process.stdout.write(await pubkey(file))));

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
    }, EX_USAGE),
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
    }, EX_USAGE),
  );

const statusCommands: Array<[string, string, (t: StatusTarget, o: StatusOptions) => Promise<void>]> = [
  ['status', 'a short summary of a running repeater or agent: listeners, subscribers per channel, cluster, key ids, top drop reasons', statusCommand],
  ['subscribers', "a running repeater's subscribers, one row each", subscribersCommand],
  ['peers', "a repeater's cluster peers, or an agent's repeaters", peersCommand],
];
for (const [name, description, run] of statusCommands) {
  program
    .command(name)
    .description(description)
    .option('--metrics <HOST:PORT>', "the repeater's or agent's status address (its --metrics)", DEFAULT_METRICS)
    .option('--json', 'print the JSON the daemon answered, for scripts')
    .option('--timeout <SECONDS>', 'give up after this long', (v) => Number(v), 5)
    .action(async (opts: { metrics: string; json?: boolean; timeout: number }) =>
      guarded(async () => {
        if (!(opts.timeout > 0 && opts.timeout <= 600)) throw new ConfigError('--timeout wants seconds, more than 0 and at most 600');
        await run(parseTarget(opts.metrics), { json: opts.json === true, timeoutMs: Math.round(opts.timeout * 1000) });
      }, EX_USAGE),
    );
}

// Every subcommand exits through the program's override (commander would call process.exit).
for (const c of program.commands) c.exitOverride();

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof CommanderError) {
    // --help and --version end here too, with exit code 0.
    if (err.exitCode === 0) return;
    // Commander has printed the reason; a daemon's bad flag is a configuration error.
    const daemon = process.argv[2] === 'serve' || process.argv[2] === 'agent';
    if (daemon) process.stderr.write(`udprepeater: see udprepeater ${process.argv[2]} --help\n`);
    process.exitCode = daemon ? EX_CONFIG : EX_USAGE;
    return;
  }
  process.stderr.write(`udprepeater: ${describe(err)}\n`);
  process.exitCode = 1;
});

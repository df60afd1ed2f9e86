// Starts a repeater in-process from CLI-style arguments, with its logs in a
// LogTap, so tests read the bound ports and await its events.

import { type AgentHandle, startAgent } from '../../src/daemon/agent.js';
import type { SecureSession } from '../../src/crypto/session.js';
import { buildAgentConfig } from '../../src/config/agent-config.js';
import { coerce } from '../../src/config/config-file.js';
import { AGENT_OPTIONS, defaultsOf, type OptionSpec, SERVE_OPTIONS, type RawOptions } from '../../src/config/options.js';
import { buildServeConfig, type ServeConfig } from '../../src/config/serve-config.js';
import { type ServeHandle, startServe } from '../../src/daemon/serve.js';
import { LogTap } from './logtap.js';
import type { Backend } from '../../src/net/io.js';

/** Parses `--name value` / `--flag` / `--no-flag` pairs with the real option table. */
export function parseArgs(args: readonly string[], specs: readonly OptionSpec[] = SERVE_OPTIONS): { raw: RawOptions; explicit: Set<string> } {
  const raw: RawOptions = defaultsOf(specs);
  const explicit = new Set<string>();
  const lists = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    let name = a.slice(2);
    const negated = name.startsWith('no-') && specs.some((s) => s.negatable && s.name === name.slice(3));
    if (negated) name = name.slice(3);
    const spec = specs.find((s) => s.name === name);
    if (spec === undefined) throw new Error(`unknown option ${a}`);
    explicit.add(name);
    if (spec.kind === 'bool') {
      raw[name] = !negated;
      continue;
    }
    const v = coerce(spec, args[++i]!);
    if (spec.kind === 'list') {
      raw[name] = lists.has(name) ? [...(raw[name] as string[]), ...(v as string[])] : (v as string[]);
      lists.add(name);
    } else raw[name] = v;
  }
  return { raw, explicit };
}

export function configOf(args: readonly string[]): ServeConfig {
  const { raw, explicit } = parseArgs(args);
  return buildServeConfig(raw, explicit);
}

export interface TestRepeater {
  readonly handle: ServeHandle;
  readonly tap: LogTap;
  /** Bound port of the listener configured as `address` (default the first one). */
  port(address?: string): number;
  reload(args: readonly string[]): Promise<boolean>;
  close(): Promise<void>;
}

/** Starts a repeater with `--metrics off` unless the args set it; `backend` picks the socket layer. */
export async function startRepeater(args: readonly string[], backend?: Backend): Promise<TestRepeater> {
  const tap = new LogTap();
  const all = args.includes('--metrics') ? args : [...args, '--metrics', 'off'];
  const config = configOf(all);
  const handle = await startServe(config, tap.logger(), undefined, backend);
  return {
    handle,
    tap,
    port: (address) => handle.repeater.portOf(address ?? config.listeners[0]!.endpoint.text),
    reload: (next) => handle.reload(() => configOf(next.includes('--metrics') ? next : [...next, '--metrics', 'off'])),
    close: () => handle.close(),
  };
}

export interface TestAgent {
  readonly handle: AgentHandle;
  readonly tap: LogTap;
  reload(args: readonly string[]): Promise<boolean>;
  close(): Promise<void>;
}

/** Starts an agent in-process from CLI-style arguments. */
export async function startTestAgent(args: readonly string[], session?: SecureSession): Promise<TestAgent> {
  const tap = new LogTap();
  const handle = await startAgent(buildAgentConfig(parseArgs(args, AGENT_OPTIONS).raw), tap.logger(), session);
  return {
    handle,
    tap,
    reload: (next) => handle.reload(() => buildAgentConfig(parseArgs(next, AGENT_OPTIONS).raw)),
    close: () => handle.close(),
  };
}

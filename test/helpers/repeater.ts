// Starts a repeater in-process from CLI-style arguments, with its logs in a
// LogTap, so tests read the bound ports and await its events.

import { type AgentHandle, startAgent } from '../../src/daemon/agent.js';
import type { SecureSession } from '../../src/crypto/session.js';
import { type AgentConfig, buildAgentConfig } from '../../src/config/agent-config.js';
import { parseInvocation } from '../../src/config/args.js';
import { loadConfig } from '../../src/config/load.js';
import { AGENT_OPTIONS, SERVE_OPTIONS } from '../../src/config/options.js';
import { buildServeConfig, type ServeConfig } from '../../src/config/serve-config.js';
import { type ServeHandle, startServe } from '../../src/daemon/serve.js';
import { LogTap } from './logtap.js';
import type { Backend } from '../../src/net/io.js';

/** `serve ARGS` parsed and validated exactly as the CLI does it. */
export function configOf(args: readonly string[]): ServeConfig {
  return loadConfig(parseInvocation('serve', SERVE_OPTIONS, args), SERVE_OPTIONS, buildServeConfig);
}

/** `agent ARGS` parsed and validated exactly as the CLI does it. */
export function agentConfigOf(args: readonly string[]): AgentConfig {
  return loadConfig(parseInvocation('agent', AGENT_OPTIONS, args), AGENT_OPTIONS, buildAgentConfig);
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
  const handle = await startAgent(agentConfigOf(args), tap.logger(), session);
  return {
    handle,
    tap,
    reload: (next) => handle.reload(() => agentConfigOf(next)),
    close: () => handle.close(),
  };
}

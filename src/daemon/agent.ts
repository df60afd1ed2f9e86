// `udprepeater agent`: wires config, the agent, metrics and signals together.

import type { Registry } from 'prom-client';
import { sodiumReady } from '../crypto/secretbox.js';
import { SecureSession } from '../crypto/session.js';
import { buildAgentConfig, type AgentConfig } from '../config/agent-config.js';
import { type StatusServer, startStatus } from './http.js';
import { Reloads, runDaemon } from './lifecycle.js';
import { type Invocation, loadConfig } from '../config/load.js';
import type { Logger } from '../base/log.js';
import { counterFrom, gaugeFrom, newRegistry, OpsMetrics, registerChannelMetrics, registerKeyMetrics } from './metrics.js';
import { AGENT_OPTIONS } from '../config/options.js';
import { VERSION } from '../base/package.js';
import { Agent } from '../agent/agent.js';
import type { Backend } from '../net/io.js';
import { Role } from '../wire/envelope.js';
import { registerHaproxyMetrics } from './haproxy-metrics.js';
import { IdentityFiles } from './identity-files.js';
import { identityHealth, registerPeerMetrics } from './peer-metrics.js';
import { MemberLinks } from '../member/member-links.js';

export interface AgentHandle {
  readonly agent: Agent;
  readonly backend: Backend;
  readonly register: Registry;
  readonly status: StatusServer | null;
  readonly ops: OpsMetrics;
  reload(config: () => AgentConfig): Promise<boolean>;
  close(): Promise<void>;
}

/** The ring as the repeater logs it: the ring holds the files in config order, the sealing one first. */
function logKeyRing(log: Logger, agent: Agent, config: AgentConfig): void {
  const ids = agent.keyIds;
  log.info('key ring loaded', { keys: config.keyFiles.map((file, i) => ({ id: ids[i], file, seals: i === 0 })) });
}

/** Starts an agent with its status server; used by the CLI and by tests. */
export async function startAgent(config: AgentConfig, log: Logger, session?: SecureSession, backend?: Backend): Promise<AgentHandle> {
  await sodiumReady();
  const s = session ?? new SecureSession(Role.Agent);
  const files = new IdentityFiles(log);
  const table = files.read(config);
  const links = table === null ? null : new MemberLinks(files.identity!, table.list());
  let fingerprint = table?.fingerprint ?? '';
  const agent = await Agent.start(config, log, s, backend, links);
  logKeyRing(log, agent, config);
  const register = newRegistry();
  registerChannelMetrics(
    register,
    'udprepeater_agent',
    () => [
      { name: 'to_repeater', stats: agent.toRepeater, subscribers: agent.current.repeaters.length },
      { name: 'to_node', stats: agent.toNode, subscribers: 1 },
    ],
    agent.fanoutTime,
  );
  counterFrom(register, 'udprepeater_agent_announces_total', 'Sealed subscription announces sent to the repeaters', [], () => [[{}, agent.announcesSent]]);
  gaugeFrom(register, 'udprepeater_agent_repeater_last_frame_timestamp_seconds', 'When the last authentic frame from each repeater arrived (0: never)', ['repeater'], () =>
    agent.repeaterLinks().map((l) => [{ repeater: l.repeater }, l.lastFrameAt === null ? 0 : Date.parse(l.lastFrameAt) / 1000] as const),
  );
  registerKeyMetrics(register, 'udprepeater_agent_keys', () => agent.keyIds);
  registerPeerMetrics(register, 'udprepeater_agent', () => links?.peerView() ?? []);
  gaugeFrom(register, 'udprepeater_agent_ticket_keys', 'TLS ticket keys held for the ticket key files', [], () => [[{}, agent.ticketFiles?.keys.size ?? 0]]);
  counterFrom(register, 'udprepeater_agent_ticket_key_writes_total', 'Rewrites of the ticket key files (--ticket-key-dir, haproxy.keys included), by result', ['result'], () => [
    [{ result: 'ok' }, (agent.ticketFiles?.writes ?? 0) + (agent.ticketFiles?.haproxy.writes ?? 0)],
    [{ result: 'error' }, (agent.ticketFiles?.writeErrors ?? 0) + (agent.ticketFiles?.haproxy.writeErrors ?? 0)],
  ]);
  registerHaproxyMetrics(register, () => agent.ticketFiles?.haproxy ?? null);
  counterFrom(register, 'udprepeater_agent_ticket_reloads_total', 'Runs of --ticket-reload-command, by result (ok, failed, timeout)', ['result'], () => {
    const r = agent.ticketFiles?.reloads ?? { ok: 0, failed: 0, timeout: 0 };
    return [
      [{ result: 'ok' }, r.ok],
      [{ result: 'failed' }, r.failed],
      [{ result: 'timeout' }, r.timeout],
    ];
  });
  const ops = new OpsMetrics(register, 'udprepeater_agent', VERSION);
  const status = await startStatus(
    config.metrics,
    register,
    {
      '/healthz': () => ({
        status: agent.hints.silent().length > 0 ? 'degraded' : 'ok',
        hints: [...agent.hints.silent(), ...agent.hints.view()],
        version: VERSION,
        channelKey: agent.current.channelKey,
        origin: s.origin.toString(16),
        keys: agent.keyIds,
        links: agent.repeaterLinks(),
        ...(files.identity === null || links === null ? {} : { identity: identityHealth(files.identity.publicText, fingerprint, () => links.peerView()) }),
        ...(agent.ticketFiles === null ? {} : { ticketKeys: agent.ticketFiles.keys.describe(Date.now()) }),
        ...(agent.ticketFiles === null || agent.ticketFiles.haproxy.sockets.length === 0 ? {} : { haproxy: agent.ticketFiles.haproxy.sockets.map((s) => s.status()) }),
      }),
    },
    log,
    () => agent.stop(),
  );
  const reloads = new Reloads(log, (ok) => ops.reloaded(ok));
  return {
    agent,
    backend: agent.backend,
    register,
    status,
    ops,
    reload: (next) =>
      reloads.run(async () => {
        const cfg = next();
        const peers = files.read(cfg);
        await agent.apply(cfg);
        if (peers !== null) {
          links?.setPeers(peers.list());
          fingerprint = peers.fingerprint;
        }
        logKeyRing(log, agent, cfg);
        log.configure(cfg.logLevel, cfg.logFormat);
      }),
    async close() {
      await agent.stop();
      if (status !== null) await status.close();
    },
  };
}

/** The CLI entry: runs until SIGTERM/SIGINT; SIGHUP reloads; SIGUSR1 announces as new (the node restarted: warm it again). */
export function runAgent(inv: Invocation): Promise<void> {
  return runDaemon(
    'udprepeater agent',
    'running',
    inv.configFile,
    () => loadConfig(inv, AGENT_OPTIONS, buildAgentConfig),
    (c, log) => startAgent(c, log),
    (h) => h.agent.rejoin(),
  );
}

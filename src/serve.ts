// `udprepeater serve`: wires config, repeater, metrics and signals together.

import type { Registry } from 'prom-client';
import { describe } from './ops/errors.js';
import { StatusServer } from './ops/http.js';
import { type Invocation, loadConfig } from './ops/load.js';
import { Logger } from './ops/log.js';
import { newRegistry, OpsMetrics, registerChannelMetrics, registerSubscriptionMetrics } from './ops/metrics.js';
import { SERVE_OPTIONS } from './ops/options.js';
import { VERSION } from './ops/package.js';
import { buildServeConfig, type ServeConfig } from './ops/serve-config.js';
import { Repeater, type RepeaterHooks } from './repeater/repeater.js';

export interface ServeHandle {
  readonly repeater: Repeater;
  readonly register: Registry;
  readonly status: StatusServer | null;
  readonly ops: OpsMetrics;
  /** Re-applies `config`; on failure logs why and keeps the running one. */
  reload(config: () => ServeConfig): Promise<boolean>;
  close(): Promise<void>;
}

export function subscribersView(r: Repeater): unknown {
  const iso = (ms: number) => (Number.isFinite(ms) ? new Date(ms).toISOString() : null);
  const out: unknown[] = [];
  for (const ch of r.channels.values()) {
    for (const e of ch.registry.values()) {
      out.push({
        channel: ch.name,
        address: e.endpoint.text,
        key: e.key,
        form: e.form,
        static: e.isStatic,
        source: e.source,
        firstSeen: iso(e.firstSeen),
        lastSeen: iso(e.lastSeen),
        expires: iso(e.deadline),
        datagrams: e.outlet.sent,
        bytes: e.outlet.bytes,
        dropped: e.outlet.dropped,
        errors: e.outlet.errors,
        lastError: e.outlet.lastError,
      });
    }
  }
  return out;
}

/** Starts a repeater with its status server; used by the CLI and by tests. */
export async function startServe(config: ServeConfig, log: Logger, hooks: RepeaterHooks = {}): Promise<ServeHandle> {
  const repeater = await Repeater.start(config, log, hooks);
  const register = newRegistry();
  const channels = () =>
    [...repeater.channels.values()].map((ch) => ({ name: ch.name, stats: ch.stats, subscribers: ch.registry.size }));
  registerChannelMetrics(register, 'udprepeater', channels, repeater.fanout);
  registerSubscriptionMetrics(register, channels);
  const ops = new OpsMetrics(register, 'udprepeater', VERSION);
  const started = Date.now();
  let status: StatusServer | null = null;
  if (config.metrics !== null) {
    try {
      status = await StatusServer.listen(
        config.metrics,
        register,
        {
          '/healthz': () => ({
            status: 'ok',
            version: VERSION,
            uptimeSeconds: Math.round((Date.now() - started) / 1000),
            listeners: repeater.listeners(),
            channels: repeater.channels.size,
          }),
          '/subscribers': () => subscribersView(repeater),
        },
        log,
      );
      log.info('status server listening', { address: config.metrics.text, port: status.port });
    } catch (err) {
      repeater.close();
      throw err;
    }
  }

  let chain: Promise<unknown> = Promise.resolve();
  const handle: ServeHandle = {
    repeater,
    register,
    status,
    ops,
    reload(next) {
      const run = chain.then(async () => {
        try {
          const cfg = next();
          await repeater.apply(cfg);
          log.configure(cfg.logLevel, cfg.logFormat);
          ops.reloaded(true);
          return true;
        } catch (err) {
          ops.reloaded(false);
          log.error('reload refused; keeping the running config', { error: describe(err) });
          return false;
        }
      });
      chain = run;
      return run;
    },
    async close() {
      repeater.close();
      if (status !== null) await status.close();
    },
  };
  return handle;
}

/** The CLI entry: runs until SIGTERM/SIGINT; SIGHUP reloads. */
export async function runServe(inv: Invocation, hooks: RepeaterHooks = {}): Promise<void> {
  const load = () => loadConfig(inv, SERVE_OPTIONS, buildServeConfig);
  const config = load();
  const log = new Logger(config.logLevel, config.logFormat);
  installCrashLog(log);
  const handle = await startServe(config, log, hooks);
  // Handlers go in before "started" is announced: a supervisor may signal
  // the moment it reads that line.
  process.on('SIGHUP', () => {
    log.info('SIGHUP: reloading', { config: inv.configFile });
    void handle.reload(load);
  });
  const stopped = untilSignal(log);
  log.info('udprepeater started', { version: VERSION, pid: process.pid, config: inv.configFile });
  await stopped;
  await handle.close();
  log.info('udprepeater stopped');
}

/** Resolves on the first SIGTERM or SIGINT. */
export function untilSignal(log: Logger): Promise<void> {
  return new Promise((resolve) => {
    const stop = (sig: NodeJS.Signals) => {
      log.info('shutting down', { signal: sig });
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

/** A bug must still leave one structured line before the process dies. */
export function installCrashLog(log: Logger): void {
  const fatal = (err: unknown) => {
    log.error('fatal error, exiting', { error: describe(err), stack: err instanceof Error ? err.stack : undefined });
    process.exit(70);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}

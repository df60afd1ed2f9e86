// Process lifecycle shared by the daemons: signals and last-resort logging.

import { describe } from '../base/errors.js';
import { Logger } from '../base/log.js';
import { VERSION } from '../base/package.js';
import type { LogFormat, LogLevel } from '../config/serve-config.js';
import { describeBackend } from '../net/io.js';
import type { Backend } from '../net/io.js';

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

/**
 * Serialises reloads: each runs after the previous one settled. A failed
 * reload is logged with its reason and leaves the running config in place.
 */
export class Reloads {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly log: Logger,
    private readonly onResult: (ok: boolean) => void,
  ) {}

  run(apply: () => Promise<void>): Promise<boolean> {
    const next = this.chain.then(async () => {
      try {
        await apply();
        this.onResult(true);
        this.log.info('config reloaded');
        return true;
      } catch (err) {
        this.onResult(false);
        this.log.error('reload refused; keeping the running config', { error: describe(err) });
        return false;
      }
    });
    this.chain = next;
    return next;
  }
}

export interface Running<C> {
  /** The socket backend, named with its reason on the started line. */
  readonly backend: Backend;
  reload(config: () => C): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * Runs a daemon until SIGTERM/SIGINT; SIGHUP reloads its config through
 * `load`; SIGUSR1 calls `usr1` (the agent: announce as new) or is ignored.
 * Signal handlers go in before `<name> <startedWord>` is logged: a
 * supervisor may signal the moment it reads that line.
 */
export async function runDaemon<C extends { logLevel: LogLevel; logFormat: LogFormat }, R extends Running<C> = Running<C>>(
  name: string,
  startedWord: string,
  configFile: string | null,
  load: () => C,
  start: (config: C, log: Logger) => Promise<R>,
  usr1?: (handle: R, log: Logger) => void,
): Promise<void> {
  // First of all: a SIGUSR1 nobody listens for makes Node open its inspector
  // (a debugger on 127.0.0.1:9229, code execution for any local user).
  let onUsr1: () => void = () => undefined;
  process.on('SIGUSR1', () => onUsr1());
  const config = load();
  const log = new Logger(config.logLevel, config.logFormat);
  installCrashLog(log);
  const handle = await start(config, log);
  process.on('SIGHUP', () => {
    log.info('SIGHUP: reloading', { config: configFile });
    void handle.reload(load);
  });
  onUsr1 = () => {
    log.info(usr1 === undefined ? 'SIGUSR1: ignored' : 'SIGUSR1');
    usr1?.(handle, log);
  };
  const stopped = untilSignal(log);
  log.info(`${name} ${startedWord}`, { version: VERSION, pid: process.pid, config: configFile, ...describeBackend(handle.backend) });
  await stopped;
  await handle.close();
  log.info(`${name} stopped`);
}

// Runs the real CLI as a child process and follows its JSON logs.

import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { LogTap } from './logtap.js';
import { WAIT_MS } from './net.js';

/** build/src/cli.js, compiled next to the tests. */
export const CLI = join(__dirname, '..', '..', 'src', 'cli.js');
/**
 * The CLI the daemons run: CLI, or $UDPREPEATER_CLI (to run the black-box
 * suites against another build, e.g. an older release, and watch them fail).
 */
export const CLI_UNDER_TEST = process.env['UDPREPEATER_CLI'] ?? CLI;

/** Children still running; killed if the test process exits first. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class Daemon {
  readonly log = new LogTap();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout = '';

  private constructor(readonly child: ChildProcess) {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => this.log.feed(d));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    live.add(child);
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
      }),
    );
  }

  /** Spawns `udprepeater ...args` (JSON logs at debug unless args say otherwise), as `as.uid`/`as.gid` when given. */
  static spawn(args: string[], env: NodeJS.ProcessEnv = {}, as: RunAs = {}): Daemon {
    const child = spawn(process.execPath, [CLI_UNDER_TEST, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, ...as });
    return new Daemon(child);
  }

  /** Starts `serve` and waits until it reports it has started. */
  static async serve(args: string[], ms = WAIT_MS): Promise<Daemon> {
    const d = Daemon.spawn(['serve', '--log-level', 'debug', '--log-format', 'json', ...args]);
    let started = false;
    const early = d.exited.then(({ code }) => {
      if (!started) throw new Error(`serve exited with ${code} before starting:\n${d.log.records.map((r) => JSON.stringify(r)).join('\n')}`);
    });
    early.catch(() => undefined);
    try {
      await Promise.race([d.log.waitFor('udprepeater started', {}, { ms }).then(() => (started = true)), early]);
    } catch (err) {
      d.child.kill('SIGKILL');
      throw err;
    }
    return d;
  }

  /** Port a listener bound, from its "listening" log line. */
  async portOf(address: string): Promise<number> {
    const r = await this.log.waitFor('listening', { address });
    return Number(String(r['bound']).split(':').pop());
  }

  async metricsPort(): Promise<number> {
    const r = await this.log.waitFor('status server listening');
    return Number(r['port']);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** SIGTERM, then waits for the exit (SIGKILL if it does not come). */
  async stop(ms = WAIT_MS): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), ms);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

/** Another user for a child process (the test runs as root): node's spawn options. */
export interface RunAs {
  readonly uid?: number;
  readonly gid?: number;
}

/** Runs the CLI to completion (as `as.uid`/`as.gid` when given) and returns its exit code and output. */
export function runCli(args: string[], ms = WAIT_MS, as: RunAs = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_UNDER_TEST, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...as });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`udprepeater ${args.join(' ')} did not finish within ${ms} ms`));
    }, ms);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Spawns `udprepeater agent ...` and waits for its "running" line, failing fast (with its log) if it exits first. */
export async function spawnAgent(args: string[], ms = 10_000): Promise<Daemon> {
  const d = Daemon.spawn(['agent', '--log-format', 'json', ...args]);
  let running = false;
  const early = d.exited.then(({ code, signal }) => {
    if (!running) throw new Error(`agent exited (${code ?? signal}) before running:\n${d.log.records.map((r) => JSON.stringify(r)).join('\n')}`);
  });
  early.catch(() => undefined);
  try {
    await Promise.race([d.log.waitFor('udprepeater agent running', {}, { ms }).then(() => (running = true)), early]);
  } catch (err) {
    d.child.kill('SIGKILL');
    throw err;
  }
  return d;
}

// Every process the bench starts goes through here, so that each one is
// killed when the bench exits, fails or is interrupted, and every wait on a
// child is bounded. Children are started through the `launch` helper, which
// sets PR_SET_PDEATHSIG: even a SIGKILLed bench leaves nothing running.

import { type ChildProcess, spawn } from 'node:child_process';

export class BenchError extends Error {}

const alive = new Set<ChildProcess>();
let launcher: string | null = null;
let installed = false;

/** The compiled `launch` wrapper; set once the native helpers are built. */
export function setLauncher(path: string): void {
  launcher = path;
}

function killAll(): void {
  for (const c of alive) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  alive.clear();
}

/** Kills every child on exit, on SIGINT/SIGTERM/SIGHUP and on a crash. */
export function installCleanup(onInterrupt: () => void = () => undefined): void {
  if (installed) return;
  installed = true;
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      onInterrupt();
      process.stderr.write(`\nbench: ${sig}: stopping every child process\n`);
      killAll();
      process.exit(130);
    });
  }
  process.on('uncaughtException', (err) => {
    killAll();
    process.stderr.write(`bench: ${err instanceof BenchError ? err.message : (err.stack ?? String(err))}\n`);
    process.exit(1);
  });
}

/** Rejects with `what` when `p` does not settle within `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new BenchError(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface SpawnOptions {
  /** CPU list for sched_setaffinity ("1", "0,1"); undefined = not pinned. */
  cpu?: string | undefined;
  /** Keep stdin open as a pipe for line commands. */
  stdin?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** A child process whose stdout and stderr are read as lines. */
export class Child {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly lines: string[] = [];
  private readonly errTail: string[] = [];
  private waiters: Array<() => void> = [];
  private outPartial = '';
  private errPartial = '';
  /** Called with every stderr line (e.g. to follow a daemon's JSON logs). */
  onStderrLine: ((line: string) => void) | null = null;

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      const parts = (this.outPartial + d).split('\n');
      this.outPartial = parts.pop() ?? '';
      this.lines.push(...parts);
      this.wake();
    });
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
      const parts = (this.errPartial + d).split('\n');
      this.errPartial = parts.pop() ?? '';
      for (const l of parts) {
        this.errTail.push(l);
        if (this.errTail.length > 40) this.errTail.shift();
        this.onStderrLine?.(l);
      }
      this.wake();
    });
    // A child that dies while a command is on its way makes the write fail (EPIPE) as an 'error' event on
    // stdin: never uncaught. The death itself is seen by the next bounded wait on the child.
    proc.stdin?.on('error', (err) => {
      this.errTail.push(`stdin: ${err.message}`);
    });
    let resolveExit!: (r: { code: number | null; signal: NodeJS.Signals | null }) => void;
    this.exited = new Promise((resolve) => (resolveExit = resolve));
    proc.once('exit', (code, signal) => {
      alive.delete(proc);
      this.wake();
      resolveExit({ code, signal });
    });
    // A spawn that fails (ENOENT, EACCES) emits 'error' and may never emit 'exit': settle `exited` anyway.
    proc.on('error', (err) => {
      this.errTail.push(`spawn failed: ${err.message}`);
      alive.delete(proc);
      this.wake();
      resolveExit({ code: null, signal: null });
    });
  }

  static spawn(name: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): Child {
    if (launcher === null) throw new BenchError('internal: native helpers not built before spawning');
    const pre = opts.cpu !== undefined ? ['--cpu', opts.cpu] : [];
    const proc = spawn(launcher, [...pre, '--', cmd, ...args], {
      stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    alive.add(proc);
    return new Child(name, proc);
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get stderrTail(): string {
    return this.errTail.join('\n');
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Writes one command line to the child's stdin. */
  send(line: string): void {
    if (!this.running) throw new BenchError(`${this.name} is not running (cannot send "${line}"):\n${this.stderrTail}`);
    this.proc.stdin!.write(line + '\n');
  }

  /** Takes the first stdout line that satisfies `match`, waiting at most `ms`. */
  async nextLine(match: (line: string) => boolean, ms: number, what: string): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.lines.findIndex(match);
      if (i >= 0) return this.lines.splice(0, i + 1).pop()!;
      if (!this.running) throw new BenchError(`${this.name} exited while waiting for ${what}:\n${this.stderrTail}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new BenchError(`${this.name}: no ${what} within ${ms} ms:\n${this.stderrTail}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Sends a command and returns the next JSON line it prints. */
  async ask<T>(cmd: string, ms = 10_000): Promise<T> {
    this.send(cmd);
    const line = await this.nextLine((l) => l.startsWith('{'), ms, `an answer to ${cmd}`);
    return JSON.parse(line) as T;
  }

  /** Waits for the exit; SIGKILL when it does not come within `ms`. */
  async wait(ms: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const t = setTimeout(() => this.proc.kill('SIGKILL'), ms);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  /** SIGTERM (or closing stdin), then SIGKILL after `ms`. */
  async stop(ms = 3000): Promise<void> {
    if (!this.running) return;
    if (this.proc.stdin) this.proc.stdin.end();
    this.proc.kill('SIGTERM');
    await this.wait(ms);
  }

  /** The child's whole stdout so far, as lines (consumed). */
  drainLines(): string[] {
    return this.lines.splice(0);
  }
}

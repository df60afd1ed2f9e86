// A real systemd as PID 1 of its own PID and mount namespaces (the network
// namespace is the host's), to run the shipped units as systemd runs them:
// their users, sandboxes, StateDirectory= and path units. Nothing it does
// reaches the host's files or services:
// - /etc/systemd/system is a test directory (the units under test, drop-ins,
//   a target that wants them): only what it pulls in starts;
// - /etc/passwd and /etc/group are copies with the units' user added;
// - /run, /var/lib, /tmp and /var/tmp are fresh tmpfs (StateDirectory= and
//   PrivateTmp= land there); `stage/run` is copied into /run first;
// - SIGKILL to PID 1 (close(), or `unshare --kill-child` when this process
//   dies) ends the whole namespace.
// Units log to files (StandardOutput=append:) read here through
// /proc/PID/root: there is no journald.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LogTap } from './logtap.js';

export const SYSTEMD_BIN = '/lib/systemd/systemd';
const BOOT_MS = 15_000;

export function systemdNsAvailability(): { ok: true } | { ok: false; reason: string } {
  if (process.geteuid?.() !== 0) return { ok: false, reason: 'not root (systemd needs to be PID 1 of a new PID namespace)' };
  if (!existsSync(SYSTEMD_BIN)) return { ok: false, reason: `${SYSTEMD_BIN} not found` };
  for (const tool of ['unshare', 'nsenter']) {
    if (spawnSync(tool, ['--version'], { timeout: 5000 }).status !== 0) return { ok: false, reason: `${tool} not found` };
  }
  return { ok: true };
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class SystemdNs {
  private constructor(
    private readonly child: ChildProcess,
    /** PID 1 of the namespace, as the host sees it. */
    readonly pid: number,
  ) {}

  /**
   * Boots systemd with `stage/units` as /etc/systemd/system, `stage/passwd`
   * and `stage/group`, `stage/run` copied into /run, and `target` as its
   * default unit; resolves once `target` is active.
   */
  static async boot(stage: string, target: string): Promise<SystemdNs> {
    const script = join(stage, 'boot.sh');
    writeFileSync(
      script,
      [
        'set -e',
        `mount --bind ${join(stage, 'units')} /etc/systemd/system`,
        `mount --bind ${join(stage, 'passwd')} /etc/passwd`,
        `mount --bind ${join(stage, 'group')} /etc/group`,
        'mount -t tmpfs -o mode=0755 tmpfs /run',
        `cp -a ${join(stage, 'run')}/. /run/`,
        'mount -t tmpfs -o mode=0755 tmpfs /var/lib',
        'mount -t tmpfs -o mode=1777 tmpfs /tmp',
        'mount -t tmpfs -o mode=1777 tmpfs /var/tmp',
        `exec ${SYSTEMD_BIN} --system --unit=${target}`,
        '',
      ].join('\n'),
    );
    const child = spawn('unshare', ['--pid', '--fork', '--mount', '--propagation', 'private', '--mount-proc', '--kill-child', 'sh', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.once('exit', () => live.delete(child));
    const deadline = Date.now() + BOOT_MS;
    let pid = 0;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`systemd in a namespace exited (${child.exitCode}):\n${out}`);
      if (pid === 0) {
        const kids = childrenOf(child.pid!);
        if (kids.length > 0 && readComm(kids[0]!) === 'systemd') pid = kids[0]!;
      }
      if (pid !== 0) {
        const r = spawnSync('nsenter', ['-t', String(pid), '-m', '-p', 'systemctl', 'is-active', target], { encoding: 'utf8', timeout: 5000 });
        if (r.stdout.trim() === 'active') return new SystemdNs(child, pid);
      }
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`systemd did not bring up ${target} within ${BOOT_MS} ms:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** A path inside the namespace's mounts, reachable from the host. */
  path(p: string): string {
    return `/proc/${this.pid}/root${p}`;
  }

  /** Runs systemctl against the namespace's systemd. */
  systemctl(...args: string[]): { status: number | null; output: string } {
    const r = spawnSync('nsenter', ['-t', String(this.pid), '-m', '-p', 'systemctl', ...args], { encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  }

  /** Ends the namespace: SIGKILL to its PID 1 takes every process in it. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    this.child.kill('SIGKILL');
    await exited;
  }
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function readComm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'latin1').trim();
  } catch {
    return '';
  }
}

/** Follows a log file a unit appends to (there is no journald), into a LogTap: polled, as nginx's error log is. */
export class FileLog {
  readonly log = new LogTap();
  private offset = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly file: string) {
    this.timer = setInterval(() => this.poll(), 20);
  }

  private poll(): void {
    let buf: Buffer;
    try {
      buf = readFileSync(this.file);
    } catch {
      return;
    }
    if (buf.length > this.offset) {
      this.log.feed(buf.subarray(this.offset).toString('utf8'));
      this.offset = buf.length;
    }
  }

  /** Everything read so far. */
  get text(): string {
    return this.log.records.map((r) => JSON.stringify(r)).join('\n');
  }

  close(): void {
    clearInterval(this.timer);
  }
}

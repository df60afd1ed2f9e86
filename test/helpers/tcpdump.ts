// tcpdump captures on lo for the no-plaintext tests: a capture starts, is
// known to hold everything sent before a sentinel, and stops cleanly.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { eventually } from './net.js';

/** How long tcpdump may take to start or stop. */
const PROCESS_MS = 10_000;

export const TCPDUMP_BIN = process.env['UDPREPEATER_TCPDUMP'] ?? 'tcpdump';
export const TCPDUMP_HINT = 'install with: apt-get install tcpdump (and run as root or with CAP_NET_RAW)';

/** Whether tcpdump exists and may capture on lo: `-d` opens the device without capturing. */
export function tcpdumpAvailability(): { ok: true } | { ok: false; reason: string } {
  const r = spawnSync(TCPDUMP_BIN, ['-i', 'lo', '-d', 'udp'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    return { ok: false, reason: code === 'ENOENT' ? `"${TCPDUMP_BIN}" not found on PATH` : `cannot run "${TCPDUMP_BIN}": ${r.error.message}` };
  }
  if (r.status !== 0) return { ok: false, reason: `"${TCPDUMP_BIN}" cannot capture on lo (${(r.stderr ?? '').trim().split('\n')[0] || `exit ${r.status}`})` };
  return { ok: true };
}

const liveDumps = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of liveDumps) c.kill('SIGKILL');
});

export class Capture {
  private stderr = '';
  private readonly exited: Promise<number | null>;

  private constructor(
    readonly file: string,
    private readonly child: ChildProcess,
  ) {
    liveDumps.add(child);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        liveDumps.delete(child);
        resolve(code);
      }),
    );
  }

  /**
   * Starts tcpdump on lo with `filter`, writing every packet as it comes
   * (-U, --immediate-mode), and resolves once it is capturing.
   */
  static async start(file: string, filter: string): Promise<Capture> {
    // As root, -Z root keeps tcpdump from switching to its own user before it writes the file.
    const asRoot = process.getuid?.() === 0 ? ['-Z', 'root'] : [];
    // In immediate mode each packet tends to take a ring block of its own; with
    // the default 2 MiB ring (8 blocks at the maximum snaplen) a busy machine
    // drops packets. A 64 KiB snaplen (datagrams here are under 5 KiB; a cut one
    // fails readPcap) and a 32 MiB ring give hundreds of blocks.
    const ring = ['-B', '32768', '-s', '65535'];
    const child = spawn(TCPDUMP_BIN, ['-i', 'lo', '-n', '-U', '--immediate-mode', ...ring, ...asRoot, '-w', file, filter], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const cap = new Capture(file, child);
    const deadline = Date.now() + PROCESS_MS;
    try {
      await eventually(
        'tcpdump to print "listening on lo"',
        () => {
          if (/listening on lo\b/.test(cap.stderr)) return true;
          if (child.exitCode !== null || child.signalCode !== null) throw new Error(`tcpdump exited: ${cap.stderr.trim()}`);
          return undefined;
        },
        deadline - Date.now(),
      );
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    return cap;
  }

  /** Resolves once `bytes` (a sentinel sent last) is in the file: everything before it is too. */
  async contains(bytes: Buffer): Promise<void> {
    await eventually(`the capture ${this.file} to hold the sentinel`, () => (readFileSync(this.file).includes(bytes) ? true : undefined), PROCESS_MS);
  }

  /** SIGINT (tcpdump flushes and prints its counts), then waits for the exit; returns stderr. */
  async stop(): Promise<string> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGINT');
      const t = setTimeout(() => this.child.kill('SIGKILL'), PROCESS_MS);
      const code = await this.exited;
      clearTimeout(t);
      assert.equal(code, 0, `tcpdump did not exit cleanly: ${this.stderr}`);
    }
    return this.stderr;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

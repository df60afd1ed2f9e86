// Real HAProxy (Debian's haproxy 2.6) for the ticket-key suites: one process
// in the foreground (-db) per instance, with its config in a temp directory,
// a TLS frontend on a loopback port that answers every request itself, its
// ticket keys read from a `tls-ticket-keys` file, and a runtime API socket.
// `tune.ssl.cachesize 0` turns off HAProxy's session cache, so only tickets
// resume. Readiness is awaited on the runtime API, never by sleeping.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import type { Cert } from './tls.js';
import { freePort } from './net.js';

export const HAPROXY_BIN = process.env['UDPREPEATER_HAPROXY'] ?? '/usr/sbin/haproxy';
export const HAPROXY_HINT = 'install with: apt-get install haproxy';
const START_MS = 10_000;

export function haproxyAvailability(): { ok: true } | { ok: false; reason: string } {
  const r = spawnSync(HAPROXY_BIN, ['-vv'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) return { ok: false, reason: `"${HAPROXY_BIN}" not found` };
  const text = `${r.stdout}${r.stderr}`;
  if (!/USE_OPENSSL=1/.test(text)) return { ok: false, reason: `"${HAPROXY_BIN}" is built without OpenSSL` };
  return { ok: true };
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** One command on a runtime API socket; the answer as text. */
export function haproxyCli(socket: string, command: string, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const s = createConnection({ path: socket });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`${socket}: no answer to "${command}" within ${ms} ms`));
    }, ms);
    s.once('connect', () => s.write(`${command}\n`));
    s.setEncoding('utf8').on('data', (d: string) => (out += d));
    s.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
    s.once('close', () => {
      clearTimeout(t);
      resolve(out);
    });
  });
}

export interface HaproxyOptions {
  /** The runtime API level of the stats socket [admin]. */
  readonly level?: 'admin' | 'operator' | 'user';
}

export class Haproxy {
  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly socket: string,
    readonly keysFile: string,
    private readonly child: ChildProcess,
    private readonly output: () => string,
  ) {}

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts HAProxy reading its ticket keys from `keysFile`, its runtime API on DIR/admin.sock. */
  static async start(dir: string, cert: Cert, keysFile: string, o: HaproxyOptions = {}): Promise<Haproxy> {
    mkdirSync(dir, { recursive: true });
    const port = await freePort();
    const socket = join(dir, 'admin.sock');
    const pem = join(dir, 'server.pem');
    writeFileSync(pem, readFileSync(cert.cert, 'utf8') + readFileSync(cert.key, 'utf8'), { mode: 0o600 });
    writeFileSync(
      join(dir, 'haproxy.cfg'),
      `global
  stats socket ${socket} mode 600 level ${o.level ?? 'admin'}
  tune.ssl.cachesize 0
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 5s
  timeout server 5s
frontend tls
  bind 127.0.0.1:${port} ssl crt ${pem} tls-ticket-keys ${keysFile} ssl-min-ver TLSv1.2
  http-request return status 200 content-type text/plain string ok
`,
    );
    const child = spawn(HAPROXY_BIN, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.once('exit', () => live.delete(child));
    const h = new Haproxy(dir, port, socket, keysFile, child, () => out);
    // Ready once its runtime API answers (it binds the frontend before).
    const deadline = Date.now() + START_MS;
    for (;;) {
      if (!h.running) throw new Error(`haproxy in ${dir} exited at start:\n${out}`);
      try {
        if ((await haproxyCli(socket, 'show info')).includes('Pid:')) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`haproxy in ${dir}: no runtime API within ${START_MS} ms:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return h;
  }

  /** The Pid HAProxy reports on its runtime API. */
  async reportedPid(): Promise<number> {
    return Number(/^Pid: (\d+)$/m.exec(await haproxyCli(this.socket, 'show info'))?.[1]);
  }

  /** The ring of ticket keys it holds (base64, in `show tls-keys` order: previous, encrypting, next). */
  async ring(): Promise<string[]> {
    const text = await haproxyCli(this.socket, `show tls-keys ${this.keysFile}`);
    return [...text.matchAll(/^\d+\.\d+ (\S+)$/gm)].map((m) => m[1]!);
  }

  get log(): string {
    return this.output();
  }

  async close(): Promise<void> {
    if (!this.running) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}

// Real nginx (Debian nginx-light 1.22, with the ssl module) for the ticket-key
// suites: one master in the foreground per instance, with its own prefix,
// config, pid file and error log in a temp directory, serving HTTPS on a
// loopback port with `ssl_session_cache off` so that only tickets resume.
// Reloads are awaited on nginx's own log lines, never by sleeping.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Cert } from './tls.js';
import { freePort } from './net.js';

export const NGINX_BIN = process.env['UDPREPEATER_NGINX'] ?? '/usr/sbin/nginx';
export const NGINX_HINT = 'install with: apt-get install nginx-light';
const START_MS = 10_000;

export function nginxAvailability(): { ok: true } | { ok: false; reason: string } {
  const r = spawnSync(NGINX_BIN, ['-V'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) return { ok: false, reason: `"${NGINX_BIN}" not found` };
  const text = `${r.stdout}${r.stderr}`;
  if (!/--with-http_ssl_module/.test(text)) return { ok: false, reason: `"${NGINX_BIN}" has no ssl module` };
  return { ok: true };
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/**
 * Writes DIR/nginx.conf: one HTTPS server on 127.0.0.1:`port` with one
 * `ssl_session_ticket_key` line per file (the first encrypts), everything
 * nginx writes kept in DIR, which nginx knows as `seenAs` (another mount
 * namespace may show it elsewhere).
 */
export function writeNginxConfig(dir: string, port: number, cert: Cert, ticketKeyFiles: readonly string[], seenAs = dir): void {
  const temp = ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t === 'body' ? 'client_body' : t}_temp_path ${join(seenAs, t)};`).join('\n');
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
error_log ${join(seenAs, 'error.log')} notice;
pid ${join(seenAs, 'nginx.pid')};
events { worker_connections 64; }
http {
  access_log off;
${temp}
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${cert.cert};
    ssl_certificate_key ${cert.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets on;
${ticketKeyFiles.map((f) => `    ssl_session_ticket_key ${f};`).join('\n')}
    location / { return 200 "ok\\n"; }
  }
}
`,
  );
}

export class Nginx {
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  get conf(): string {
    return join(this.dir, 'nginx.conf');
  }

  /** The command an agent runs to reload this instance (what an operator would give). */
  get reloadCommand(): string {
    return `${NGINX_BIN} -p ${this.dir} -c ${this.conf} -s reload`;
  }

  get errorLog(): string {
    try {
      return readFileSync(join(this.dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** Starts nginx with one `ssl_session_ticket_key` line per file (the first encrypts). */
  static async start(dir: string, cert: Cert, ticketKeyFiles: readonly string[]): Promise<Nginx> {
    mkdirSync(dir, { recursive: true });
    const port = await freePort();
    writeNginxConfig(dir, port, cert, ticketKeyFiles);
    const child = spawn(NGINX_BIN, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.once('exit', () => live.delete(child));
    const n = new Nginx(dir, port, child);
    try {
      await n.until(/start worker process \d+/, 1, START_MS);
    } catch (err) {
      child.kill('SIGKILL');
      throw new Error(`${(err as Error).message}\n${out}`);
    }
    return n;
  }

  private count(re: RegExp): number {
    return (this.errorLog.match(new RegExp(re.source, 'g')) ?? []).length;
  }

  /** Waits until the error log has `n` lines matching `re` (polled: nginx writes a file). */
  async until(re: RegExp, n: number, ms = START_MS): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.count(re) < n) {
      if (this.child.exitCode !== null) throw new Error(`nginx in ${this.dir} exited:\n${this.errorLog}`);
      if (Date.now() > deadline) throw new Error(`nginx in ${this.dir}: fewer than ${n} lines matching ${re} within ${ms} ms:\n${this.errorLog}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** How many reloads have completed: the old worker of each has exited. */
  get reloads(): number {
    return this.count(/worker process \d+ exited with code 0/);
  }

  /** Resolves once reload number `n` has completed (its new worker runs, the old one is gone). */
  async reloaded(n: number, ms = START_MS): Promise<void> {
    await this.until(/worker process \d+ exited with code 0/, n, ms);
    await this.until(/start worker process \d+/, n + 1, ms);
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGQUIT');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}

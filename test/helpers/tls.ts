// Real TLS clients and servers for the session-resumption suites: a
// throw-away certificate made by the openssl CLI and `openssl s_client` runs that save (-sess_out) or present
// (-sess_in) a session and report whether it was resumed.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const OPENSSL_BIN = process.env['UDPREPEATER_OPENSSL'] ?? 'openssl';
export const OPENSSL_HINT = 'install with: apt-get install openssl';
/** One s_client run (handshake, one HTTP request, its answer). */
export const S_CLIENT_MS = 10_000;

export function opensslAvailability(): { ok: true } | { ok: false; reason: string } {
  const r = spawnSync(OPENSSL_BIN, ['version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) return { ok: false, reason: `"${OPENSSL_BIN}" not found on PATH` };
  if (r.status !== 0 || !/^OpenSSL [3-9]\./.test(r.stdout)) return { ok: false, reason: `"${OPENSSL_BIN} version" says ${r.stdout.trim() || `exit ${r.status}`}; OpenSSL 3 is needed` };
  return { ok: true };
}

export interface Cert {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
}

/** A self-signed P-256 certificate for localhost, in a fresh directory. */
export function makeCert(): Cert {
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const r = spawnSync(OPENSSL_BIN, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost'], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
  return { dir, cert, key };
}

export interface Handshake {
  /** "Reused" or "New". */
  readonly reused: boolean;
  /** TLSv1.2, TLSv1.3 */
  readonly protocol: string;
  /** Hex, upper case as s_client prints it ('' when none). */
  readonly sessionId: string;
  /** The HTTP answer arrived (the session file then holds any TLS 1.3 ticket). */
  readonly answered: boolean;
  readonly output: string;
}

export interface ClientOptions {
  readonly version: '1.2' | '1.3';
  /** Save the session here (-sess_out). */
  readonly sessOut?: string;
  /** Offer the session saved here (-sess_in). */
  readonly sessIn?: string;
  /** TLS 1.2 session ids only: no ticket (-no_ticket). */
  readonly noTicket?: boolean;
}

/**
 * One `openssl s_client` connection: handshake, `GET /`, the answer, close.
 * Waiting for the answer (-ign_eof keeps s_client until the server closes)
 * means a TLS 1.3 NewSessionTicket has arrived before the session is saved.
 */
export function sClient(port: number, o: ClientOptions): Promise<Handshake> {
  const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', o.version === '1.2' ? '-tls1_2' : '-tls1_3', '-ign_eof'];
  if (o.noTicket) args.push('-no_ticket');
  if (o.sessOut !== undefined) args.push('-sess_out', o.sessOut);
  if (o.sessIn !== undefined) args.push('-sess_in', o.sessIn);
  return new Promise((resolve, reject) => {
    const child = spawn(OPENSSL_BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`s_client to ${port} did not finish within ${S_CLIENT_MS} ms:\n${out}`));
    }, S_CLIENT_MS);
    child.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
    child.once('close', () => {
      clearTimeout(t);
      const m = /^(New|Reused), (TLSv1\.[0-3]|\(NONE\))/m.exec(out);
      if (m === null) {
        reject(new Error(`s_client to ${port}: no handshake line:\n${out}`));
        return;
      }
      resolve({ reused: m[1] === 'Reused', protocol: m[2]!, sessionId: /Session-ID: ([0-9A-F]*)/.exec(out)?.[1] ?? '', answered: /HTTP\/1\.[01] 200/.test(out), output: out });
    });
    child.stdin.end('GET / HTTP/1.0\r\nHost: localhost\r\n\r\n');
  });
}

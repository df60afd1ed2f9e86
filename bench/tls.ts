// `npm run bench:tls`: what sharing sessions and ticket keys buys, measured in
// one run. Three HTTPS servers (each its own process) and clients that go
// round-robin over them, each client offering the session it got last time
// (wherever that was), as a browser behind a round-robin balancer would.
// Every scenario runs twice: lone servers (each with its own session cache
// and ticket key) and servers sharing through a real repeater (the CLI, a
// sealed listener with `tickets`: session ids through udprepeater/tls, the
// fleet's ticket key by setTicketKeys).
//
// Reported per scenario: the share of handshakes resumed, handshakes per
// second per server core (handshakes served / CPU seconds the servers used),
// and the median and p90 handshake time seen by the client (TCP connect to
// secureConnect). The clients run in this process on the same machine, so
// compare the two columns of one run, not figures across machines.
//
//   npm run bench:tls [-- --handshakes 3000 --clients 100 --concurrency 8 --cert rsa|ec]

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import { BUILD_DIR, REPEATER_CLI } from './lib/paths.js';

const { values } = parseArgs({
  options: {
    handshakes: { type: 'string', default: '3000' },
    clients: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '8' },
    cert: { type: 'string', default: 'rsa' },
  },
});
const HANDSHAKES = Number(values.handshakes);
const CLIENTS = Number(values.clients);
const CONCURRENCY = Number(values.concurrency);
/** rsa: RSA-2048, what most sites still serve (a full handshake signs with it); ec: ECDSA P-256. */
const CERT = values.cert === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'] : ['-newkey', 'rsa:2048'];
const SERVER = join(BUILD_DIR, 'lib', 'tls-server.js');
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-bench-tls-'));
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** A child that prints JSON lines; `next()` resolves with the next one. */
function jsonChild(cmd: string, args: string[]): { child: ChildProcess; next(): Promise<Record<string, unknown>> } {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<() => void> = [];
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    for (const p of parts) if (p.trim() !== '') lines.push(JSON.parse(p) as Record<string, unknown>);
    waiters.splice(0).forEach((w) => w());
  });
  return {
    child,
    next: async () => {
      const deadline = Date.now() + 20_000;
      while (lines.length === 0) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${args[0]}: no answer`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 500);
        });
      }
      return lines.shift()!;
    },
  };
}

interface Result {
  handshakes: number;
  resumed: number;
  cpuMs: number;
  times: number[];
}

/** One handshake (and one request) with `session` offered; the new session, whether it resumed, and the time. */
function handshake(port: number, version: 'TLSv1.2' | 'TLSv1.3', session: Buffer | undefined): Promise<{ session: Buffer | undefined; reused: boolean; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let ms = 0;
    let latest: Buffer | undefined;
    let reused = false;
    const s: TLSSocket = connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false, minVersion: version, maxVersion: version, ...(session === undefined ? {} : { session }) }, () => {
      ms = performance.now() - t0;
      reused = s.isSessionReused();
      s.write('GET / HTTP/1.0\r\n\r\n');
    });
    s.on('session', (b: Buffer) => (latest = b));
    s.on('data', () => undefined);
    s.setTimeout(10_000, () => s.destroy(new Error('handshake timed out')));
    s.on('error', reject);
    // The answer and the close come after any TLS 1.3 ticket: the session saved is the newest.
    s.on('close', () => resolve({ session: latest ?? session, reused, ms }));
  });
}

async function scenario(version: 'TLSv1.2' | 'TLSv1.3', shared: boolean, repeater: string, key: string, cert: string, certKey: string): Promise<Result> {
  const servers: Array<ReturnType<typeof jsonChild> & { port: number }> = [];
  for (let i = 0; i < 3; i++) {
    const args = [SERVER, '--cert', cert, '--key', certKey, ...(version === 'TLSv1.2' ? ['--no-ticket'] : []), ...(shared ? ['--repeater', repeater, '--key-file', key] : [])];
    const s = jsonChild(process.execPath, args);
    servers.push({ ...s, port: Number((await s.next())['port']) });
  }
  const sessions: Array<Buffer | undefined> = Array.from({ length: CLIENTS }, () => undefined);
  const turn = Array.from({ length: CLIENTS }, (_, i) => i % 3);
  // Warm-up: every client's first (full) handshake, then counters from zero.
  const warm = async (c: number) => {
    const r = await handshake(servers[turn[c]!]!.port, version, undefined);
    sessions[c] = r.session;
    turn[c] = (turn[c]! + 1) % 3;
  };
  for (let c = 0; c < CLIENTS; c += CONCURRENCY) await Promise.all(Array.from({ length: Math.min(CONCURRENCY, CLIENTS - c) }, (_, i) => warm(c + i)));
  for (const s of servers) s.child.stdin!.write('reset\n');
  for (const s of servers) await s.next();
  const times: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < HANDSHAKES) {
      const c = next++ % CLIENTS;
      const r = await handshake(servers[turn[c]!]!.port, version, sessions[c]);
      sessions[c] = r.session;
      turn[c] = (turn[c]! + 1) % 3;
      times.push(r.ms);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const out: Result = { handshakes: 0, resumed: 0, cpuMs: 0, times };
  for (const s of servers) {
    s.child.stdin!.write('report\n');
    const r = await s.next();
    out.handshakes += Number(r['handshakes']);
    out.resumed += Number(r['resumed']);
    out.cpuMs += Number(r['cpuMs']);
    s.child.stdin!.end();
  }
  return out;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main(): Promise<void> {
  const cert = join(dir, 'cert.pem');
  const certKey = join(dir, 'key.pem');
  sh('openssl', ['req', '-x509', ...CERT, '-nodes', '-keyout', certKey, '-out', cert, '-days', '2', '-subj', '/CN=localhost']);
  const key = join(dir, 'cluster.key');
  sh(process.execPath, [REPEATER_CLI, 'keygen', key]);
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const repeater = spawn(process.execPath, [REPEATER_CLI, 'serve', '--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', join(dir, 'state'), '--metrics', 'off'], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(repeater);
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    const t = setTimeout(() => reject(new Error(`the repeater did not start:\n${seen}`)), 15_000);
    repeater.stderr!.setEncoding('utf8').on('data', (d: string) => {
      seen += d;
      if (seen.includes('"msg":"udprepeater started"')) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  const rows: string[] = [];
  const broken: string[] = [];
  for (const [version, what] of [['TLSv1.3', 'TLS 1.3, tickets'], ['TLSv1.2', 'TLS 1.2, session ids']] as const) {
    const lone = await scenario(version, false, `127.0.0.1:${port}`, key, cert, certKey);
    const shared = await scenario(version, true, `127.0.0.1:${port}`, key, cert, certKey);
    const cell = (r: Result) => ({
      share: `${((100 * r.resumed) / r.handshakes).toFixed(1)}%`,
      rate: `${((r.handshakes / r.cpuMs) * 1000).toFixed(0)}/s`,
      p50: `${pct(r.times, 50).toFixed(2)} ms`,
      p90: `${pct(r.times, 90).toFixed(2)} ms`,
    });
    const [a, b] = [cell(lone), cell(shared)];
    rows.push(`| ${what} | ${a.share} / **${b.share}** | ${a.rate} / **${b.rate}** | ${a.p50} / **${b.p50}** | ${a.p90} / **${b.p90}** |`);
    process.stderr.write(`${what}: lone ${JSON.stringify(a)} shared ${JSON.stringify(b)}\n`);
    // A smoke check for CI: sharing that resumes almost nothing is broken, whatever the machine's speed.
    if (shared.resumed < 0.5 * shared.handshakes) broken.push(`${what}: only ${shared.resumed} of ${shared.handshakes} handshakes resumed with sharing`);
  }
  repeater.kill('SIGTERM');
  const cmd = `npm run bench:tls -- --handshakes ${HANDSHAKES} --clients ${CLIENTS} --concurrency ${CONCURRENCY} --cert ${values.cert}`;
  process.stdout.write(
    [
      `\`${cmd}\` (${HANDSHAKES} handshakes per cell after one warm-up handshake per client; ${CLIENTS} clients going round-robin over 3 Node ${process.version} HTTPS servers, ${CONCURRENCY} at a time; ${values.cert === 'ec' ? 'ECDSA P-256' : 'RSA-2048'} certificate)`,
      '',
      '| scenario | resumed, lone / **shared** | handshakes per server CPU-second | median handshake | p90 handshake |',
      '|---|---|---|---|---|',
      ...rows,
      '',
    ].join('\n'),
  );
  if (broken.length > 0) throw new Error(broken.join('; '));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench:tls: ${String((err as Error).stack ?? err)}\n`);
    process.exit(1);
  },
);

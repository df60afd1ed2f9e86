// Black-box tools for the safety suites (test/safety.*.test.ts): real daemons
// run through the CLI (UDPREPEATER_CLI may point at another build), real UDP
// sockets, and their /metrics read back. Nothing here imports the code under
// test beyond the byte encoders, so the same suites run against an older
// release and show what it let through.

import { createSocket, type Socket } from 'node:dgram';
import { mkdtempSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Daemon, runCli } from './daemon.js';
import { freePort, WAIT_MS } from './net.js';

/** Parsed Prometheus text: sums of the samples matching a name and labels. */
export class Metrics {
  constructor(readonly text: string) {}

  value(name: string, labels: Record<string, string> = {}): number {
    let sum = 0;
    for (const line of this.text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
      if (m === null || m[1] !== name) continue;
      const have = new Map<string, string>();
      for (const kv of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(kv[1]!, kv[2]!);
      if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[4]);
    }
    return sum;
  }

  dropped(reason: string): number {
    return this.value('udprepeater_datagrams_dropped_total', { reason });
  }
}

export function httpGet(port: number, path: string, ms = WAIT_MS): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.setTimeout(ms, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** A repeater or agent daemon with its metrics port. */
export interface Running {
  readonly d: Daemon;
  readonly metricsPort: number;
  metrics(): Promise<Metrics>;
  stop(): Promise<unknown>;
}

async function withMetrics(d: Daemon): Promise<Running> {
  const metricsPort = await d.metricsPort();
  return {
    d,
    metricsPort,
    metrics: async () => new Metrics((await httpGet(metricsPort, '/metrics')).body),
    stop: () => d.stop(),
  };
}

/** `serve` with metrics on a free loopback port; resolves once it started. */
export async function serve(args: string[]): Promise<Running> {
  return withMetrics(await Daemon.serve([...args, '--metrics', '127.0.0.1:0']));
}

/** `agent` with metrics on a free loopback port; resolves once it runs. */
export async function agent(args: string[]): Promise<Running> {
  const d = Daemon.spawn(['agent', '--log-format', 'json', '--log-level', 'debug', '--metrics', '127.0.0.1:0', ...args]);
  try {
    await d.log.waitFor('udprepeater agent running');
  } catch (err) {
    d.child.kill('SIGKILL');
    throw err;
  }
  return withMetrics(d);
}

const keyDir = mkdtempSync(join(tmpdir(), 'udprepeater-attack-keys-'));
let keys = 0;

/** A fresh key file written by the CLI's own keygen. */
export async function keygen(): Promise<string> {
  const file = join(keyDir, `k${keys++}`);
  const r = await runCli(['keygen', file]);
  if (r.code !== 0) throw new Error(`keygen failed: ${r.stderr}`);
  return file;
}

/** A free loopback port, as `127.0.0.1:P`. */
export async function freeAddress(host = '127.0.0.1'): Promise<string> {
  return `${host}:${await freePort(host)}`;
}

/**
 * A man in the middle: a UDP socket that forwards whatever reaches it to
 * `target` from its own socket and keeps a copy of every datagram.
 */
export class Tap {
  readonly captured: Buffer[] = [];
  private constructor(
    private readonly socket: Socket,
    private readonly target: number,
  ) {
    socket.on('message', (m) => {
      this.captured.push(m);
      socket.send(m, target, '127.0.0.1');
    });
  }

  static open(targetPort: number): Promise<Tap> {
    return new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => resolve(new Tap(s, targetPort)));
    });
  }

  get port(): number {
    return this.socket.address().port;
  }

  /** Sends a captured datagram again, to the target or anywhere, from this socket. */
  replay(m: Buffer, port = this.target): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(m, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.socket.close();
  }
}

/** Frames of a sealed capture (magic "ur"), in order. */
export function frames(captured: readonly Buffer[]): Buffer[] {
  return captured.filter((b) => b.length > 2 && b[0] === 0x75 && b[1] === 0x72);
}

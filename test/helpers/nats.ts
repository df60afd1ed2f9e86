// Real nats-server processes for the cluster suites: a cluster of servers
// joined by routes, on loopback ports, each killable and restartable on the
// same ports. Skipped loudly without nats-server; under CI it is required.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { freePort, WAIT_MS } from './net.js';

export const NATS_BIN = process.env['UDPREPEATER_NATS'] ?? 'nats-server';
export const NATS_HINT = 'install with: apt-get install nats-server';

export type Availability = { ok: true } | { ok: false; reason: string };

export function natsAvailability(): Availability {
  const r = spawnSync(NATS_BIN, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error !== undefined) return { ok: false, reason: `"${NATS_BIN}" not found on PATH` };
  if (r.status !== 0) return { ok: false, reason: `"${NATS_BIN} --version" exited ${r.status}` };
  return { ok: true };
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** One server of a NATS cluster. */
export class NatsServer {
  private child: ChildProcess | null = null;
  output = '';

  constructor(
    readonly name: string,
    readonly port: number,
    readonly routePort: number,
    private readonly routes: () => number[],
    private readonly clusterName: string,
    private readonly extra: readonly string[] = [],
  ) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts the server and resolves once it accepts clients. */
  async start(ms = WAIT_MS): Promise<void> {
    const routes = this.routes()
      .filter((p) => p !== this.routePort)
      .map((p) => `nats://127.0.0.1:${p}`)
      .join(',');
    const args = ['-a', '127.0.0.1', '-p', String(this.port), '-n', this.name, '--cluster_name', this.clusterName, '--cluster', `nats://127.0.0.1:${this.routePort}`, ...(routes === '' ? [] : ['--routes', routes]), ...this.extra];
    const child = spawn(NATS_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    live.add(child);
    child.once('exit', () => live.delete(child));
    this.output = '';
    let wake: () => void = () => undefined;
    const feed = (d: Buffer) => {
      this.output += d.toString();
      wake();
    };
    child.stdout!.on('data', feed);
    child.stderr!.on('data', feed);
    const deadline = Date.now() + ms;
    while (!/Server is ready/.test(this.output)) {
      if (!this.running) throw new Error(`nats-server ${this.name} exited: ${this.output.slice(-500)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`nats-server ${this.name} not ready within ${ms} ms: ${this.output.slice(-500)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** SIGHUP: the server reloads its configuration file (-c); resolves once it says it did. */
  async reload(ms = WAIT_MS): Promise<void> {
    const before = (this.output.match(/Reloaded server configuration/g) ?? []).length;
    this.child?.kill('SIGHUP');
    const deadline = Date.now() + ms;
    while ((this.output.match(/Reloaded server configuration/g) ?? []).length <= before) {
      if (Date.now() > deadline) throw new Error(`nats-server ${this.name} did not reload within ${ms} ms: ${this.output.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGKILL, and wait for the exit. */
  async kill(): Promise<void> {
    const c = this.child;
    if (c === null || !this.running) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    await this.kill();
  }
}

/** A NATS cluster of `n` servers with full-mesh routes. */
export class NatsCluster {
  private constructor(readonly servers: NatsServer[]) {}

  /** `extra`: more nats-server flags for every server (authentication, TLS). */
  static async start(n: number, name = 'urtest', extra: readonly string[] = []): Promise<NatsCluster> {
    const ports: Array<[number, number]> = [];
    for (let i = 0; i < n; i++) ports.push([await freePort(), await freePort()]);
    const routePorts = () => ports.map(([, r]) => r);
    const cluster = new NatsCluster(ports.map(([p, r], i) => new NatsServer(`${name}-${i + 1}`, p, r, routePorts, name, extra)));
    await Promise.all(cluster.servers.map((s) => s.start()));
    // Routes form within a moment; wait until every server reports one to each other.
    await cluster.routed();
    return cluster;
  }

  /** Resolves once each running server has a route to every other running server. */
  async routed(ms = WAIT_MS): Promise<void> {
    const deadline = Date.now() + ms;
    for (;;) {
      const up = this.servers.filter((s) => s.running);
      const ok = up.every((s) => (s.output.match(/Route connection created/g) ?? []).length >= up.length - 1);
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`NATS routes did not form within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }
}

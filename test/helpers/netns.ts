// Test hosts as network namespaces joined by veth pairs: real interfaces,
// real routing and multicast, and no traffic outside the namespaces.
// Needs root and iproute2; callers skip (loudly) when they are missing.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { WAIT_MS } from './net.js';

const PEER = join(__dirname, 'netns-peer.js');

export function netnsAvailability(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'network namespaces need root' };
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return { ok: false, reason: 'iproute2 (ip) is not installed' };
  }
  return { ok: true };
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export class Netns {
  private readonly children: ChildProcess[] = [];

  private constructor(readonly name: string) {}

  static create(name: string): Netns {
    try {
      ip('netns', 'del', name);
    } catch {
      // not left over from an earlier run
    }
    ip('netns', 'add', name);
    ip('-n', name, 'link', 'set', 'lo', 'up');
    return new Netns(name);
  }

  run(...args: string[]): void {
    ip('-n', this.name, ...args);
  }

  /** Spawns a command inside the namespace. */
  spawn(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.name, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.children.push(child);
    return child;
  }

  /** A UDP peer inside the namespace (see netns-peer.ts). */
  async peer(): Promise<Peer> {
    return new Peer(this.spawn(process.execPath, [PEER]));
  }

  destroy(): void {
    for (const c of this.children) c.kill('SIGKILL');
    try {
      ip('netns', 'del', this.name);
    } catch {
      // already gone
    }
  }
}

/** Joins two namespaces with a veth pair and addresses (CIDR) on each end. */
export function link(a: Netns, aIf: string, aAddr: string, b: Netns, bIf: string, bAddr: string): void {
  ip('link', 'add', aIf, 'netns', a.name, 'type', 'veth', 'peer', 'name', bIf, 'netns', b.name);
  a.run('addr', 'add', aAddr, 'dev', aIf);
  b.run('addr', 'add', bAddr, 'dev', bIf);
  a.run('link', 'set', aIf, 'up');
  b.run('link', 'set', bIf, 'up');
}

type Message = { op: string; id?: string; port?: number; from?: string; hex?: string; message?: string };

export class Peer {
  private readonly messages: Message[] = [];
  private waiters: Array<() => void> = [];

  constructor(private readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.messages.push(JSON.parse(line) as Message);
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  private async next(pred: (m: Message) => boolean, what: string, ms = WAIT_MS): Promise<Message> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.messages.findIndex(pred);
      if (i >= 0) return this.messages.splice(i, 1)[0]!;
      const err = this.messages.find((m) => m.op === 'error');
      if (err !== undefined) throw new Error(`peer error: ${err.message}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`peer: no ${what} within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private command(c: object): void {
    this.child.stdin!.write(JSON.stringify(c) + '\n');
  }

  /** Binds socket `id`; with `group`, binds the group and joins it on `iface`. */
  async bind(id: string, opts: { host?: string; port?: number; group?: string; iface?: string; ttl?: number }): Promise<number> {
    this.command({ op: 'bind', id, ...opts });
    return (await this.next((m) => m.op === 'bound' && m.id === id, `bind of ${id}`)).port!;
  }

  async send(id: string, to: string, port: number, data: Buffer): Promise<void> {
    this.command({ op: 'send', id, to, port, hex: data.toString('hex') });
    await this.next((m) => m.op === 'sent' && m.id === id, `send from ${id}`);
  }

  /** The next datagram received on socket `id`. */
  async recv(id: string, ms = WAIT_MS): Promise<{ from: string; data: Buffer }> {
    const m = await this.next((x) => x.op === 'recv' && x.id === id, `datagram on ${id}`, ms);
    return { from: m.from!, data: Buffer.from(m.hex!, 'hex') };
  }

  /** Datagrams received on `id` so far and not yet taken. */
  pending(id: string): number {
    return this.messages.filter((m) => m.op === 'recv' && m.id === id).length;
  }
}

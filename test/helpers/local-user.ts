// Another local user's UDP socket, for the suites about local users on a node
// host (the tests run as root): a child process spawned with that uid/gid
// opens one unbound UDP socket, as uWSGI does, and sends what the test hands
// it on stdin (one datagram per line, in hex) to a loopback port. The socket
// stays open until close(), like a node's: the agent identifies a sender by
// the socket it sent from, which must still exist when it looks.

import { type ChildProcess, spawn } from 'node:child_process';
import { WAIT_MS } from './net.js';

const CHILD = `
const dgram = require('node:dgram');
const bindTo = process.argv[1];
const s = dgram.createSocket({ type: 'udp4', reuseAddr: Boolean(bindTo) });
s.on('error', (err) => process.stdout.write('error ' + err.message + '\\n'));
if (bindTo) {
  const at = bindTo.lastIndexOf(':');
  s.bind(Number(bindTo.slice(at + 1)), bindTo.slice(0, at), () => process.stdout.write('bound ' + s.address().port + '\\n'));
}
let buf = '';
process.stdin.setEncoding('utf8').on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const [port, hex] = buf.slice(0, i).split(' ');
    buf = buf.slice(i + 1);
    s.send(Buffer.from(hex, 'hex'), Number(port), '127.0.0.1', (err) => process.stdout.write(err ? 'error ' + err.message + '\\n' : 'sent ' + s.address().port + '\\n'));
  }
});
process.stdin.on('end', () => s.close());
`;

export class LocalUser {
  private out = '';
  private waiters: Array<() => void> = [];

  private constructor(
    readonly uid: number,
    private readonly child: ChildProcess,
  ) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.out += d;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.out += d));
  }

  /** A sending process of user `uid` (group `gid`), its socket unbound until it sends (as uWSGI's). */
  static open(uid: number, gid = uid): LocalUser {
    const child = spawn(process.execPath, ['-e', CHILD], { uid, gid, stdio: ['pipe', 'pipe', 'pipe'] });
    return new LocalUser(uid, child);
  }

  /**
   * A sending process whose socket is bound to `address` (`host:port`) with
   * SO_REUSEADDR: it can share a port another socket bound with it, as
   * uWSGI's cache-udp-server is.
   */
  static async sharing(uid: number, address: string, ms = WAIT_MS): Promise<LocalUser> {
    const child = spawn(process.execPath, ['-e', CHILD, address], { uid, gid: uid, stdio: ['pipe', 'pipe', 'pipe'] });
    const u = new LocalUser(uid, child);
    await u.line(/^(bound|error) /, 0, ms).then((line) => {
      if (line.startsWith('error')) throw new Error(`uid ${uid} cannot bind ${address}: ${line}`);
    });
    return u;
  }

  /** The `n`-th (from 0) output line matching `re`, waiting for it. */
  private async line(re: RegExp, n: number, ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const lines = this.out.split('\n').filter((l) => re.test(l));
      if (lines.length > n) return lines[n]!;
      const left = deadline - Date.now();
      if (left <= 0 || this.child.exitCode !== null) throw new Error(`uid ${this.uid}: no line matching ${re} within ${ms} ms:\n${this.out}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Sends `datagram` to 127.0.0.1:`port` from this user's socket; resolves with the socket's port once it was sent. */
  async send(datagram: Buffer, port: number, ms = WAIT_MS): Promise<number> {
    const re = /^(sent|error) /;
    const before = this.out.split('\n').filter((l) => re.test(l)).length;
    this.child.stdin!.write(`${port} ${datagram.toString('hex')}\n`);
    const line = await this.line(re, before, ms);
    if (line.startsWith('error')) throw new Error(`uid ${this.uid}: ${line}`);
    return Number(line.slice(5));
  }

  close(): void {
    this.child.stdin!.end();
    this.child.kill('SIGKILL');
  }
}

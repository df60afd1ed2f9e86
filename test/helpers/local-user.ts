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
const s = dgram.createSocket('udp4');
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

  /** A sending process of user `uid` (group `gid`). */
  static open(uid: number, gid = uid): LocalUser {
    const child = spawn(process.execPath, ['-e', CHILD], { uid, gid, stdio: ['pipe', 'pipe', 'pipe'] });
    return new LocalUser(uid, child);
  }

  /** Sends `datagram` to 127.0.0.1:`port` from this user's socket; resolves with the socket's port once it was sent. */
  async send(datagram: Buffer, port: number, ms = WAIT_MS): Promise<number> {
    const before = (this.out.match(/^(sent|error) /gm) ?? []).length;
    this.child.stdin!.write(`${port} ${datagram.toString('hex')}\n`);
    const deadline = Date.now() + ms;
    for (;;) {
      const lines = this.out.split('\n').filter((l) => /^(sent|error) /.test(l));
      if (lines.length > before) {
        const line = lines[before]!;
        if (line.startsWith('error')) throw new Error(`uid ${this.uid}: ${line}`);
        return Number(line.slice(5));
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.child.exitCode !== null) throw new Error(`uid ${this.uid}: nothing sent within ${ms} ms:\n${this.out}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.child.stdin!.end();
    this.child.kill('SIGKILL');
  }
}

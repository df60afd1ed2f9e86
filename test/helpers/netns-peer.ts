// A UDP peer that runs inside a network namespace (started with
// `ip netns exec NS node netns-peer.js`) and is driven over stdin/stdout with
// one JSON object per line:
//   {"op":"bind","id":"a","host":"10.77.0.2","port":0,"group":"239.1.1.1","iface":"10.77.0.2"}
//        -> {"op":"bound","id":"a","port":N}
//   {"op":"send","id":"a","to":"10.77.0.1","port":7171,"hex":"6f..."}  -> {"op":"sent","id":"a"}
//   datagrams received -> {"op":"recv","id":"a","from":"10.77.0.1","hex":"..."}
// Errors -> {"op":"error","id":...,"message":...}.

import { createSocket, type Socket } from 'node:dgram';
import { createInterface } from 'node:readline';

interface Command {
  op: 'bind' | 'send';
  id: string;
  host?: string;
  port?: number;
  group?: string;
  iface?: string;
  ttl?: number;
  to?: string;
  hex?: string;
}

const sockets = new Map<string, Socket>();
const out = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');

function bind(c: Command): void {
  const s = createSocket({ type: 'udp4', reuseAddr: c.group !== undefined });
  s.on('error', (err) => out({ op: 'error', id: c.id, message: err.message }));
  s.on('message', (m, r) => out({ op: 'recv', id: c.id, from: r.address, hex: m.toString('hex') }));
  s.bind(c.port ?? 0, c.group ?? c.host, () => {
    try {
      if (c.group !== undefined) s.addMembership(c.group, c.iface);
      if (c.iface !== undefined) s.setMulticastInterface(c.iface);
      if (c.ttl !== undefined) s.setMulticastTTL(c.ttl);
    } catch (err) {
      out({ op: 'error', id: c.id, message: (err as Error).message });
      return;
    }
    sockets.set(c.id, s);
    out({ op: 'bound', id: c.id, port: s.address().port });
  });
}

function send(c: Command): void {
  const s = sockets.get(c.id);
  if (s === undefined) {
    out({ op: 'error', id: c.id, message: 'no such socket' });
    return;
  }
  s.send(Buffer.from(c.hex ?? '', 'hex'), c.port!, c.to!, (err) => out(err ? { op: 'error', id: c.id, message: err.message } : { op: 'sent', id: c.id }));
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const c = JSON.parse(line) as Command;
  if (c.op === 'bind') bind(c);
  else send(c);
});
process.stdin.on('end', () => process.exit(0));

// The agent's judge of --local sources (agent/local-senders.ts) and the
// kernel's socket tables it reads (net/udp-owners.ts): the table against real
// sockets of this process, and the policy's bounds (fail closed, rate-limited
// readings, bounded memory, expiry) against tables a local attacker could
// make the kernel show.

import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { describe, test } from 'node:test';
import { LocalSenders, READ_BURST, VERDICT_MS } from '../src/agent/local-senders.js';
import { parseUdpTable, readUdpSockets, socketsAt, type UdpSocketEntry, type UdpSocketTable } from '../src/net/udp-owners.js';
import { parseEndpoint, type Endpoint } from '../src/wire/address.js';
import { LogTap } from './helpers/logtap.js';

const me = process.geteuid!();

function bound(type: 'udp4' | 'udp6', host: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createSocket(type);
    s.once('error', reject);
    s.bind(0, host, () => resolve(s));
  });
}

const ep = (text: string) => parseEndpoint(text) as Endpoint;
const src = (port: number, address = '127.0.0.1') => ({ address, port, family: 4 as const });

/** A table holding exactly `entries`. */
function table(...entries: UdpSocketEntry[]): UdpSocketTable {
  const t = new Map<number, UdpSocketEntry[]>();
  for (const e of entries) t.set(e.port, [...(t.get(e.port) ?? []), e]);
  return t;
}

const DELIVER = ep('127.0.0.1:4141');
const NODE_UID = 33;
const nodeSocket = { address: '127.0.0.1', port: 4141, uid: NODE_UID };

describe('the socket tables (/proc/self/net/udp, udp6)', () => {
  test('list real sockets of this process with their address, port and owner', async () => {
    const v4 = await bound('udp4', '127.0.0.1');
    const v6 = await bound('udp6', '::1');
    const unbound = createSocket('udp4');
    try {
      await new Promise<void>((resolve, reject) => unbound.send(Buffer.from('x'), v4.address().port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
      const t = readUdpSockets();
      // Other processes of this host may hold the same port numbers in the other family: look at ours.
      const at = (port: number, address: string) => (t.get(port) ?? []).filter((e) => e.address === address);
      assert.deepEqual(at(v4.address().port, '127.0.0.1'), [{ address: '127.0.0.1', port: v4.address().port, uid: me }]);
      assert.deepEqual(at(v6.address().port, '::1'), [{ address: '::1', port: v6.address().port, uid: me }]);
      // An unbound socket that sent is bound to the wildcard address, as uWSGI's cache-udp-node socket is.
      assert.deepEqual(
        socketsAt(t, '127.0.0.1', unbound.address().port).filter((e) => e.address !== '::'),
        [{ address: '0.0.0.0', port: unbound.address().port, uid: me }],
      );
      assert.deepEqual(
        socketsAt(t, '127.0.0.2', v4.address().port).filter((e) => e.address !== '::'),
        [],
        'bound to another address: could not have sent it',
      );
    } finally {
      for (const s of [v4, v6, unbound]) s.close();
    }
  });

  test('lines that do not parse are skipped, v4-mapped IPv6 addresses read as IPv4', () => {
    const text = [
      '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
      '  1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 1 2 0 0',
      '  2: garbage',
      '  3: 0100007F:ZZZZ 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0',
    ].join('\n');
    assert.deepEqual([...parseUdpTable(text).values()].flat(), [{ address: '127.0.0.1', port: 0x1f90, uid: 1000 }]);
  });
});

describe('which datagrams on --local are the node\'s', () => {
  test('the owner of the socket at --deliver is the node: its sockets are heard, another user\'s are not, a closed socket is not', () => {
    let t = table(nodeSocket, { address: '0.0.0.0', port: 40000, uid: NODE_UID }, { address: '0.0.0.0', port: 40001, uid: 65534 });
    const s = new LocalSenders({ uids: null, deliver: DELIVER }, new LogTap().logger(), () => t, false);
    assert.equal(s.judge(src(40000), 0), true);
    assert.equal(s.judge(src(40001), 0), false);
    assert.equal(s.judge(src(40002), 0), false, 'no such socket (any more): refused');
    t = table(nodeSocket);
    assert.equal(s.judge(src(40000), VERDICT_MS - 1), true, 'a verdict lasts');
    assert.equal(s.judge(src(40000), VERDICT_MS), false, 'then the socket is looked up again');
  });

  test('a port another user shares with the node (SO_REUSEADDR) is refused; the node port is judged by its address too', () => {
    const t = table(nodeSocket, { address: '127.0.0.1', port: 40000, uid: NODE_UID }, { address: '127.0.0.1', port: 40000, uid: 65534 }, { address: '127.0.0.2', port: 40003, uid: 65534 }, { address: '0.0.0.0', port: 40003, uid: NODE_UID });
    const s = new LocalSenders({ uids: null, deliver: DELIVER }, new LogTap().logger(), () => t, false);
    assert.equal(s.judge(src(40000), 0), false);
    assert.equal(s.judge(src(40003), 0), true, 'a socket bound to another address could not have sent from 127.0.0.1');
  });

  test('fail closed: no node at --deliver, several owners there, the overflow uid in a user namespace, an unreadable table', () => {
    const tap = new LogTap();
    const sender = { address: '0.0.0.0', port: 40000, uid: NODE_UID };
    const cases: Array<[string, UdpSocketTable | null, boolean]> = [
      ['no socket is bound at --deliver', table(sender), false],
      ['sockets of several users', table(nodeSocket, { ...nodeSocket, uid: 0 }, sender), false],
      ['uid 65534 stands for every user', table({ ...nodeSocket, uid: 65534 }, { ...sender, uid: 65534 }), true],
      ['cannot read the socket tables', null, false],
    ];
    for (const [why, t, userNs] of cases) {
      const s = new LocalSenders({ uids: null, deliver: DELIVER }, tap.logger(), () => {
        if (t === null) throw new Error('EACCES');
        return t;
      }, userNs);
      assert.equal(s.judge(src(40000), 0), false, why);
      assert.ok(tap.records.some((r) => JSON.stringify(r).includes(why)), `logged: ${why}`);
    }
  });

  test('--node-user replaces the owner at --deliver', () => {
    const t = table(nodeSocket, { address: '0.0.0.0', port: 40000, uid: NODE_UID }, { address: '0.0.0.0', port: 40001, uid: 1000 });
    const s = new LocalSenders({ uids: [1000], deliver: DELIVER }, new LogTap().logger(), () => t, false);
    assert.equal(s.judge(src(40000), 0), false);
    assert.equal(s.judge(src(40001), 0), true);
  });

  test('a flood from many ports costs a bounded number of readings and memory, and never starves the node', () => {
    const attacker = Array.from({ length: 5000 }, (_, i) => ({ address: '0.0.0.0', port: 20000 + i, uid: 65534 }));
    let reads = 0;
    const t = table(nodeSocket, { address: '0.0.0.0', port: 40000, uid: NODE_UID }, ...attacker);
    const s = new LocalSenders({ uids: null, deliver: DELIVER }, new LogTap().logger(), () => {
      reads++;
      return t;
    }, false);
    assert.equal(s.judge(src(40000), 0), true);
    // Ten seconds of flood, 5000 ports every 10 ms; the node sends in between.
    let nodeDropped = 0;
    for (let now = 0; now < 10_000; now += 10) {
      for (let i = 0; i < 50; i++) assert.equal(s.judge(src(20000 + ((now / 10) * 50 + i) % 5000), now), false);
      if (!s.judge(src(40000), now)) nodeDropped++;
    }
    assert.equal(nodeDropped, 0, 'the node was starved of readings');
    assert.ok(reads <= READ_BURST + 10 * 10 + 1, `${reads} readings in 10 s`);
    assert.ok(s.cached <= 1024 + 64, `${s.cached} verdicts held`);
    assert.ok(s.limited > 0);
  });
});

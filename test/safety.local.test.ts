// A local user on a node host cannot inject into the fleet through the
// agent's --local port (SECURITY.md, "Local users on a node host"), black
// box: real uWSGI nodes behind real agents (the CLI; UDPREPEATER_CLI may point
// at another build) through a real sealed repeater, and the attacker's
// datagram (a uWSGI cache set) sent from a socket of a process of another
// user (test/helpers/local-user.ts: the suite runs as root).
//
// The attack: as `nobody`, one datagram to --local made every other
// node hold `planted-session = attacker-chosen-master-secret`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { agent, keygen, type Running, serve } from './helpers/attack.js';
import { LocalUser } from './helpers/local-user.js';
import { freePort, Receiver } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { INSTALL_HINT, killAllUwsgi, PROPAGATE_MS, untilValue, UwsgiNode, uwsgiAvailability } from './helpers/uwsgi.js';

const isRoot = process.geteuid?.() === 0;
const avail = uwsgiAvailability();
const { skip, require: requireAll } = requirement(
  'real uWSGI and root',
  'the local-user suite (test/safety.local.test.ts)',
  'That a local user cannot inject through an agent is NOT being tested.',
  !avail.ok ? avail : isRoot ? { ok: true } : { ok: false, reason: 'not running as root (the attacker is spawned as another user)' },
  INSTALL_HINT,
);

/** What the attacker sent. */
const PLANTED_KEY = 'planted-session';
const PLANTED_VALUE = 'attacker-chosen-master-secret';

const nobody = LocalUser.open(65534);
const root = LocalUser.open(0);

/** Sends one uWSGI cache set to `port` from `user`'s socket. */
async function sendAs(user: LocalUser, port: number, key: string, value: string): Promise<void> {
  await user.send(encodeCacheSet(Buffer.from(key), Buffer.from(value)), port);
}

/** The owners of the UDP sockets bound to `port` on loopback, from the kernel's table. */
function socketOwners(port: number): number[] {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const uids = new Set<number>();
  for (const line of readFileSync('/proc/net/udp', 'latin1').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.endsWith(`:${hex}`)) uids.add(Number(f[7]));
  }
  return [...uids];
}

interface Site {
  node: UwsgiNode | null;
  agent: Running;
  local: number;
}

describe('a local user cannot inject through the agent', { skip, timeout: 120_000 }, () => {
  let key: string;
  let rep: Running;
  let repPort: number;
  const sites: Site[] = [];
  let spy: Receiver;

  async function site(name: string, nodeArgs: readonly string[] | null, extra: string[] = [], deliver?: string): Promise<Site> {
    const local = await freePort();
    const node = nodeArgs === null ? null : await UwsgiNode.start({ name, cacheNode: `127.0.0.1:${local}`, subscribeTo: [], extraArgs: nodeArgs });
    const a = await agent([
      '--repeater', `127.0.0.1:${repPort}`,
      '--key-file', key,
      '--local', `127.0.0.1:${local}`,
      '--deliver', node?.udpAddress ?? deliver!,
      '--channel-key', 'ssl',
      '--subscribe-interval', '1',
      ...extra,
    ]);
    const s = { node, agent: a, local };
    sites.push(s);
    await rep.d.log.waitFor('subscribed', { form: 'sealed', key: 'ssl' }, { count: sites.length, ms: PROPAGATE_MS });
    return s;
  }

  const notNode = async (s: Site) => (await s.agent.metrics()).value('udprepeater_agent_datagrams_dropped_total', { channel: 'to_repeater', reason: 'not_node' });

  let a: Site;
  let b: Site;

  before(async () => {
    requireAll();
    key = await keygen();
    const port = await freePort();
    rep = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl`, '--key-file', key]);
    repPort = port;
    a = await site('node-a', []);
    b = await site('node-b', []);
    // A third agent whose "node" is this test's socket: everything the fleet delivers, byte for byte.
    spy = await Receiver.open();
    await site('spy', null, [], spy.address);
  });

  after(async () => {
    await Promise.all(sites.map((s) => s.node?.kill()));
    killAllUwsgi();
    await Promise.all(sites.map((s) => s.agent.stop()));
    await rep?.stop();
    spy?.close();
    nobody.close();
    root.close();
  });

  /** Proves the path is open (a value set on `from`'s node reaches node b), so an absence after it means something. */
  async function flows(from: Site, tag: string): Promise<void> {
    const v = Buffer.from(`${tag}-${Date.now()}`);
    await from.node!.set(tag, v);
    await untilValue(b.node!, tag, v);
  }

  const delivered = () => spy.received.map((d) => d.toString('latin1'));

  test("the issue's attack: a datagram from nobody's socket is dropped and counted, reaches neither the repeater nor any node, and the node still syncs", async () => {
    // The node's sockets are root's here (uWSGI started by root, no uid=), as is the test.
    assert.deepEqual(socketOwners(Number(a.node!.udpAddress.split(':')[1])), [0]);
    await flows(a, 'before');
    const dropped = await notNode(a);
    await sendAs(nobody, a.local, PLANTED_KEY, PLANTED_VALUE);
    // Datagrams on --local are handled in order: once a later one of the node's went through, the attacker's was judged.
    await flows(a, 'after');
    assert.equal(await b.node!.get(PLANTED_KEY), null, 'node-b holds the planted session');
    assert.ok(!delivered().some((d) => d.includes(PLANTED_KEY)), 'the planted set reached a node through the fleet');
    assert.equal(await notNode(a), dropped + 1, 'dropped as not_node');
    await a.agent.d.log.waitFor('datagram on --local from a socket the node does not own; dropped');
    // The control: the same datagram from a socket of the node's user goes through.
    await sendAs(root, a.local, 'control-session', 'control-value');
    await untilValue(b.node!, 'control-session', Buffer.from('control-value'));
  });

  test('a node started by root that drops to nobody (uid=, gid=) still syncs: its sockets are nobody\'s, so a root socket is the stranger now', async () => {
    const n = await site('node-n', ['--uid', '65534', '--gid', '65534']);
    // uWSGI creates the cache's sockets after it dropped privileges: both are nobody's.
    assert.deepEqual(socketOwners(Number(n.node!.udpAddress.split(':')[1])), [65534]);
    await flows(n, 'dropped-before');
    const dropped = await notNode(n);
    await sendAs(root, n.local, 'root-session', 'root-value');
    await flows(n, 'dropped-after');
    assert.equal(await b.node!.get('root-session'), null, 'a root socket injected for a nobody node');
    assert.equal(await notNode(n), dropped + 1);
  });

  test("a local user sharing the node's cache-udp-server port (uWSGI binds it with SO_REUSEADDR) cannot send as the node; without --node-user the agent then hears nobody", async () => {
    const pinned = await site('node-s', [], ['--node-user', '0']);
    const open = await site('node-z', []);
    const squatters = await Promise.all([pinned, open].map((x) => LocalUser.sharing(65534, x.node!.udpAddress)));
    try {
      assert.deepEqual(socketOwners(Number(pinned.node!.udpAddress.split(':')[1])).sort(), [0, 65534], 'nobody shares the port');
      const dropped = await notNode(pinned);
      // From the very address and port the node's own socket is bound to.
      await squatters[0]!.send(encodeCacheSet(Buffer.from('squatter-session'), Buffer.from('squatter-value')), pinned.local);
      await flows(pinned, 'squatted-after');
      assert.equal(await b.node!.get('squatter-session'), null, 'sent as the node from a shared port');
      assert.equal(await notNode(pinned), dropped + 1);
      // Without --node-user two users own the socket at --deliver: the agent cannot tell which is the node and drops all.
      await open.node!.set('unheard', 'x');
      await open.agent.d.log.waitFor('cannot tell the node from other local users: nothing on --local is accepted');
      assert.ok((await notNode(open)) >= 1);
    } finally {
      for (const q of squatters) q.close();
    }
  });

  test('--node-user pins the node user explicitly: its sockets are heard, nobody else\'s', async () => {
    // No node at --deliver: without --node-user nothing would be accepted.
    const pinned = await site('pinned', null, ['--node-user', 'nobody'], `127.0.0.1:${await freePort()}`);
    await sendAs(nobody, pinned.local, 'pinned-nobody', 'heard');
    await untilValue(b.node!, 'pinned-nobody', Buffer.from('heard'));
    const dropped = await notNode(pinned);
    await sendAs(root, pinned.local, 'pinned-root', 'not-heard');
    await sendAs(nobody, pinned.local, 'pinned-nobody-2', 'heard');
    await untilValue(b.node!, 'pinned-nobody-2', Buffer.from('heard'));
    assert.equal(await b.node!.get('pinned-root'), null);
    assert.equal(await notNode(pinned), dropped + 1);
  });
});

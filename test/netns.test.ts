// Across real interfaces: three namespaces as hosts. R runs the repeater on
// 10.77.1.1 (and joins a multicast group there); N is a node host on the same
// link; X is a host on another link, outside the allow-list.
//
//   N 10.77.1.2 --veth-- 10.77.1.1 R 10.77.2.1 --veth-- 10.77.2.2 X
//
// Skipped loudly without root or iproute2; under CI (root) it runs.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { CLI } from './helpers/daemon.js';
import { LogTap } from './helpers/logtap.js';
import { untraced, WAIT_MS } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { link, Netns, netnsAvailability, type Peer } from './helpers/netns.js';

const { avail, skip } = requirement(
  'network namespaces',
  'test/netns.test.ts (multicast and the allow-list across real interfaces)',
  'Multicast bridging and cross-host access control are NOT being tested.',
  netnsAvailability(),
  'run as root with iproute2 (apt-get install iproute2)',
);

const tag = `urt${process.pid % 100000}`;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);

describe('across network namespaces', { skip }, () => {
  let R: Netns, N: Netns, X: Netns;
  let node: Peer, outsider: Peer;
  const tap = new LogTap();
  let metrics: () => Promise<string>;

  before(async () => {
    if (!avail.ok) throw new Error(`required under CI: ${avail.reason}`);
    R = Netns.create(`${tag}r`);
    N = Netns.create(`${tag}n`);
    X = Netns.create(`${tag}x`);
    link(R, 'r1', '10.77.1.1/24', N, 'n1', '10.77.1.2/24');
    link(R, 'r2', '10.77.2.1/24', X, 'x1', '10.77.2.2/24');
    X.run('route', 'add', '10.77.1.0/24', 'via', '10.77.2.1');
    N.run('route', 'add', '224.0.0.0/4', 'dev', 'n1');
    R.run('route', 'add', '224.0.0.0/4', 'dev', 'r1');

    const rep = R.spawn(process.execPath, [
      CLI, 'serve',
      '--listen', '10.77.1.1:7171,channel=ssl',
      '--listen', '239.1.2.3:7171,channel=ssl',
      '--allow', '10.77.1.0/24',
      '--multicast-interface', '10.77.1.1',
      '--to', '239.4.5.6:7272,ttl=1',
      '--metrics', '127.0.0.1:9171',
      '--log-level', 'debug',
    ]);
    rep.stderr!.setEncoding('utf8').on('data', (d: string) => tap.feed(d));
    await tap.waitFor('udprepeater started');
    metrics = () =>
      new Promise((resolve, reject) => {
        const c = R.spawn(process.execPath, ['-e', "fetch('http://127.0.0.1:9171/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
        let body = '';
        c.stdout!.setEncoding('utf8').on('data', (d: string) => (body += d));
        const t = setTimeout(() => reject(new Error('metrics fetch timed out')), WAIT_MS);
        c.once('exit', () => {
          clearTimeout(t);
          resolve(body);
        });
      });
    node = await N.peer();
    outsider = await X.peer();
    // The group member joins before anything is sent: the static output carries
    // every datagram of the channel, and a copy still queued in a busy kernel's
    // backlog when a later member joins would reach that member out of turn.
    await node.bind('member', { group: '239.4.5.6', port: 7272, iface: '10.77.1.2' });
  });

  after(() => {
    for (const ns of [R, N, X]) ns?.destroy();
  });

  test('a node on another host subscribes with a uWSGI announce and receives what a multicast sender publishes', async () => {
    const port = await node.bind('cache', { host: '10.77.1.2', port: 0 });
    await node.send('cache', '10.77.1.1', 7171, encodeSubscription({ key: 'ssl', address: `10.77.1.2:${port}` }));
    await tap.waitFor('subscribed', { address: `10.77.1.2:${port}`, source: '10.77.1.2' });
    // The old multicast setup: a publisher sends to the group; the repeater bridges it to the unicast node.
    await node.bind('publisher', { host: '10.77.1.2', port: 0, iface: '10.77.1.2' });
    await node.send('publisher', '239.1.2.3', 7171, set('via-multicast'));
    const got = await node.recv('cache');
    assert.deepEqual(untraced(got.data), set('via-multicast'));
    assert.equal(got.from, '10.77.1.1');
  });

  test('a static multicast output reaches group members on the other host', async () => {
    await node.bind('unicast-sender', { host: '10.77.1.2', port: 0 });
    await node.send('unicast-sender', '10.77.1.1', 7171, set('to-the-group'));
    // The group got the first test's datagram too, then this one, in order.
    assert.deepEqual(untraced((await node.recv('member')).data), set('via-multicast'));
    assert.deepEqual(untraced((await node.recv('member')).data), set('to-the-group'));
    assert.deepEqual(untraced((await node.recv('cache')).data), set('to-the-group'), 'the unicast subscriber gets it too');
  });

  test('a host outside the allow-list can neither inject nor subscribe', async () => {
    const port = await outsider.bind('x', { host: '10.77.2.2', port: 0 });
    await outsider.send('x', '10.77.1.1', 7171, encodeSubscription({ key: 'ssl', address: `10.77.2.2:${port}` }));
    await outsider.send('x', '10.77.1.1', 7171, set('injected'));
    // The counters move when the repeater reads the datagrams; poll them (bounded).
    const deadline = Date.now() + WAIT_MS;
    let text = '';
    while (!/udprepeater_datagrams_dropped_total\{channel="ssl",reason="not_allowed"\} 2\b/.test(text)) {
      assert.ok(Date.now() < deadline, `not_allowed never reached 2:\n${text.split('\n').filter((l) => l.includes('not_allowed')).join('\n')}`);
      text = await metrics();
    }
    assert.equal(tap.matching('subscribed', { source: '10.77.2.2' }).length, 0);
    // Nothing reached the node from the outsider: the next datagram it gets is a later legitimate one.
    await node.send('unicast-sender', '10.77.1.1', 7171, set('legit'));
    assert.deepEqual(untraced((await node.recv('cache')).data), set('legit'));
  });
});

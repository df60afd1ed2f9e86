// The cluster bus's own key (--cluster-key-file): never a data key. A
// cluster key equal to any --key-file refuses the start (exit 78, naming both
// files, whatever the files' encodings) and a reload (the running ring
// stays); the cluster ring is reloaded like --key-file, so it can be rotated
// without a restart. Real nats-server, real repeaters through the CLI.

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen } from '../helpers/attack.js';
import { Daemon, runCli } from '../helpers/daemon.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster key suite (test/system/cluster.keys.test.ts)', 'The cluster bus key is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const WAIT = 10_000;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);

/** The same key as `file`, written as hex text (mode 0600) to a file of its own. */
function asHex(file: string): string {
  const hex = `${file}.hex`;
  writeFileSync(hex, `${readFileSync(file).toString('hex')}\n`, { mode: 0o600 });
  return hex;
}

describe('the cluster bus key', { skip, timeout: 120_000 }, () => {
  let nats: NatsCluster;

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(1, 'urkeys');
    scope.track(nats);
  });

  test('a cluster key equal to a data key refuses the start with exit 78, naming both files', async () => {
    const [data, other, cluster] = [await keygen(), await keygen(), await keygen()];
    const port = await freePort();
    const base = ['serve', '--listen', `127.0.0.1:${port},channel=ssl`, '--cluster', nats.urls[0]!, '--metrics', 'off'];
    // The same key in another encoding, listed second on both sides.
    const same = asHex(data);
    const r = await runCli([...base, '--key-file', other, '--key-file', data, '--cluster-key-file', cluster, '--cluster-key-file', same]);
    console.log(JSON.stringify({ code: r.code, stderr: r.stderr.trim().split('\n').pop() }));
    assert.equal(r.code, 78, r.stderr);
    assert.ok(r.stderr.includes(same) && r.stderr.includes(data), `the refusal does not name both files: ${r.stderr}`);
    // The control: distinct keys start.
    const ok = await Daemon.serve([...base.slice(1), '--key-file', data, '--cluster-key-file', cluster]);
    await ok.stop();
  });

  test('a reload that makes a data key the cluster key is refused and the bus goes on; a cluster key rotated by reload is taken', async () => {
    const [data, k1, k2] = [await keygen(), await keygen(), await keygen()];
    const nodes: Array<{ d: Daemon; metricsPort: number; port: number; write: (keyFiles: string[], clusterKeys: string[]) => void }> = [];
    for (const name of ['a', 'b']) {
      const port = await freePort();
      const conf = join(dirname(data), `${name}-${port}.conf`);
      const write = (keyFiles: string[], clusterKeys: string[]) =>
        writeFileSync(
          conf,
          [`listen = 127.0.0.1:${port},channel=ssl`, `cluster = ${nats.urls[0]}`, 'cluster-name = keys', 'cluster-peer-timeout = 1.5', 'metrics = 127.0.0.1:0', ...keyFiles.map((k) => `key-file = ${k}`), ...clusterKeys.map((k) => `cluster-key-file = ${k}`), ''].join('\n'),
        );
      write([data], [k1]);
      const d = await Daemon.serve(['-c', conf]);
      scope.track({ close: () => d.stop() });
      nodes.push({ d, metricsPort: await d.metricsPort(), port, write });
    }
    const [a, b] = nodes as [(typeof nodes)[0], (typeof nodes)[0]];
    for (const n of nodes) await n.d.log.waitFor('cluster peer joined', {}, { ms: WAIT });
    const rx = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), b.port);
    await b.d.log.waitFor('subscribed', { address: rx.address }, { ms: WAIT });
    /** A set into A reaches B's subscriber over the bus. */
    const crosses = async (k: string) => {
      await sender.send(set(k), a.port);
      await eventually(`${k} at B's subscriber`, () => (rx.received.some((d) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1') === k) ? true : undefined), WAIT);
    };
    const keysOf = async (n: typeof a) => (JSON.parse((await httpGet(n.metricsPort, '/healthz')).body) as { cluster: { keys: string[] } }).cluster.keys;
    await crosses('before');
    const running = await keysOf(a);

    // A's data key becomes its cluster key: refused, naming both files.
    a.write([k1], [k1]);
    let from = a.d.log.length;
    a.d.signal('SIGHUP');
    const refused = await a.d.log.waitFor('reload refused; keeping the running config', {}, { from, ms: WAIT });
    console.log(JSON.stringify({ refused: refused['error'] }));
    assert.match(String(refused['error']), new RegExp(`--cluster-key-file ${k1}.*--key-file ${k1}`));
    assert.deepEqual(await keysOf(a), running);
    await crosses('after-the-refusal');

    // Rotation: k2 added second everywhere, then first on A; B opens it, so the bus goes on.
    for (const n of [a, b]) {
      n.write([data], [k1, k2]);
      from = n.d.log.length;
      n.d.signal('SIGHUP');
      await n.d.log.waitFor('config applied', {}, { from, ms: WAIT });
    }
    a.write([data], [k2, k1]);
    from = a.d.log.length;
    a.d.signal('SIGHUP');
    await a.d.log.waitFor('config applied', {}, { from, ms: WAIT });
    const rotated = await keysOf(a);
    assert.equal(rotated.length, 2);
    assert.equal(rotated[1], running[0], 'the old key is no longer second');
    assert.notEqual(rotated[0], running[0], 'A still seals with the old key');
    await crosses('sealed-with-the-new-key');
  });
});

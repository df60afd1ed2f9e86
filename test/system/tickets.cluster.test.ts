// One ticket-key schedule per cluster: real repeaters (the CLI) on a real
// NATS bus, each with its own --state-dir. A repeater that joins with no
// state (and so first makes keys of its own) adopts the cluster's, whose keys
// are older; across rotations the repeaters keep one schedule, and session
// caches on different repeaters load the same key. Skipped loudly without
// nats-server (required under CI).

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { Logger } from '../../src/base/log.js';
import { SessionCache } from '../../src/tls/session-cache.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';
import { untilTicketKey } from '../helpers/tls-cache.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster ticket-key suite (test/system/tickets.cluster.test.ts)', 'One ticket-key schedule per cluster is NOT being tested.', natsAvailability(), NATS_HINT);
const scope = new Scope();
const root = mkdtempSync(join(tmpdir(), 'udprepeater-tickets-cluster-'));
const quiet = new Logger('error', 'json', { write: () => undefined });

type Keys = Array<{ id: string; notBefore: string; encrypting: boolean }>;

describe('one ticket-key schedule per cluster', { skip, timeout: 60_000 }, () => {
  let nats: NatsCluster;
  let key: string;
  let clusterKey: string;

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(1, 'urtickets');
    scope.track(nats);
    key = await keygen();
    clusterKey = await keygen();
  });

  async function repeater(name: string): Promise<{ r: Running; port: number; keys(): Promise<Keys> }> {
    const port = await freePort();
    const r = await serve([
      '--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`,
      '--key-file', key,
      '--state-dir', join(root, name),
      '--cluster', nats.urls[0]!,
      '--cluster-name', 'tk',
      '--cluster-key-file', clusterKey,
      '--cluster-peer-timeout', '1.5',
      '--ticket-rotate', '3',
      '--ticket-lifetime', '2',
    ]);
    scope.track({ close: () => r.stop() });
    return { r, port, keys: async () => (JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { ticketKeys: Keys }).ticketKeys };
  }

  test('a repeater that joins with no state adopts the cluster’s keys; the repeaters stay on one schedule across rotations', async () => {
    const r1 = await repeater('r1');
    const before1 = await r1.keys();
    assert.equal(before1.length, 2);
    // r2 starts empty: it makes keys of its own before it hears r1, then adopts r1's (generated first).
    const r2 = await repeater('r2');
    await r2.r.d.log.waitFor('ticket keys changed', { why: 'merged' }, { ms: 10_000 });
    const same = async () => {
      const [a, b] = [await r1.keys(), await r2.keys()];
      return JSON.stringify(a.map((k) => k.id)) === JSON.stringify(b.map((k) => k.id)) ? a : undefined;
    };
    const agreed = await eventually('one schedule on both repeaters', same, 5000);
    assert.ok(before1.every((k) => agreed.some((a) => a.id === k.id) || Date.parse(k.notBefore) < Date.now() - 5000), 'r1 kept its keys');

    // Caches on different repeaters load the same key.
    const c1 = scope.track(await SessionCache.start({ repeater: `127.0.0.1:${r1.port}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
    const c2 = scope.track(await SessionCache.start({ repeater: `127.0.0.1:${r2.port}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
    const want = (await same())!.find((k) => k.encrypting)!.id;
    assert.equal(await untilTicketKey(c1, (id) => id === want), want);
    assert.equal(await untilTicketKey(c2, (id) => id === want), want);

    // Two rotations: each period's key is made once, by one repeater (the rendezvous owner), and both hold it.
    const generated = async () => (await Promise.all([r1.r.metrics(), r2.r.metrics()])).reduce((n, m) => n + m.value('udprepeater_ticket_keys_generated_total'), 0);
    const gen0 = await generated();
    const ids0 = new Set((await r1.keys()).map((k) => k.id));
    for (let i = 0; i < 2; i++) {
      const seen = new Set((await r1.keys()).map((k) => k.id));
      await eventually('a new key on r1', async () => ((await r1.keys()).some((k) => !seen.has(k.id)) ? true : undefined), 5000);
      await eventually('the same schedule on r2', same, 3000);
    }
    // Keys live rotation + lifetime past their start (8 s from generation): all made in the loop are still held.
    await eventually('as many keys generated as new keys held', async () => {
      const g = await generated();
      const fresh = (await r1.keys()).filter((k) => !ids0.has(k.id)).length;
      return g - gen0 === fresh && g === (await generated()) ? true : undefined;
    }, 3000);
  });
});

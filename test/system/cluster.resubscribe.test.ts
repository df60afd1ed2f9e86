// The bus must keep its subscriptions (issue 16, item 4), on a real
// nats-server with users in its configuration file, changed and reloaded
// (SIGHUP) as an operator rotates a password. Repeater A's password is
// rotated: the server drops A and refuses it, the NATS client gives up on
// that connection for good after two authorization errors, A's password
// file is updated and A connects again by itself, on a new connection. A
// must then hear the bus again: subscribers only A serves get every update
// entering through B, once, and what enters through A reaches B's once; and
// /healthz says degraded while A cannot hear the bus, ok after. A user
// allowed to publish but not to subscribe leaves a repeater connected and
// deaf: that is degraded too, until the server allows it.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsServer, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the bus subscription suite (test/system/cluster.resubscribe.test.ts)', 'Bus subscriptions across reconnections are NOT being tested.', natsAvailability(), NATS_HINT);

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-nats-users-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text, { mode: 0o600 });
  return p;
};
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');
const N = 10;

interface Health {
  status: string;
  cluster: { connected: boolean; subscribed: boolean; degradedBecause: string[] };
}

describe('cluster mode: the bus keeps its subscriptions', { skip, timeout: 120_000 }, () => {
  const scope = new Scope();
  const { sender } = scope;
  const running: Running[] = [];
  const servers: NatsServer[] = [];
  let key: string;

  before(async () => {
    requireNats();
    key = await keygen();
  });
  after(async () => {
    for (const r of running) await r.stop();
    for (const s of servers) await s.stop();
  });

  /** A nats-server whose `authorization` block is `users` (rewritten and reloaded by the returned function). */
  async function natsWithUsers(users: string): Promise<{ server: NatsServer; rewrite: (users: string) => Promise<void> }> {
    const conf = join(dir, `nats-${servers.length}.conf`);
    const name = `urusers-${servers.length}`;
    const [port, routePort] = [await freePort(), await freePort()];
    // What the command line also says, in the file too: a reload takes the file alone, and refuses a changed name.
    const write = (u: string) =>
      writeFileSync(conf, `server_name: ${name}\nlisten: 127.0.0.1:${port}\ncluster {\n  name: urusers\n  listen: 127.0.0.1:${routePort}\n}\nauthorization {\n  users: [\n${u}\n  ]\n}\n`);
    write(users);
    const server = new NatsServer(name, port, routePort, () => [routePort], 'urusers', ['-c', conf]);
    await server.start();
    servers.push(server);
    return {
      server,
      rewrite: async (u) => {
        write(u);
        await server.reload();
      },
    };
  }

  async function repeater(url: string, user: string, passwordFile: string): Promise<{ r: Running; port: number }> {
    const port = await freePort();
    const r = await serve([
      '--listen', `127.0.0.1:${port},channel=ssl`,
      '--cluster', url,
      '--cluster-name', 'users',
      '--cluster-key-file', key,
      '--cluster-user', user,
      '--cluster-password-file', passwordFile,
      '--cluster-peer-timeout', '1.5',
      '--log-level', 'info',
    ]);
    running.push(r);
    return { r, port };
  }

  const health = async (r: Running) => JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as Health;

  async function subscribers(r: { r: Running; port: number }, n: number): Promise<Receiver[]> {
    const rxs = await Promise.all(Array.from({ length: n }, () => scope.receiver()));
    for (const rx of rxs) {
      const from = r.r.d.log.length;
      await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), r.port);
      await r.r.d.log.waitFor('subscribed', { address: rx.address }, { from });
    }
    return rxs;
  }

  /** Sends N updates and a sentinel through `via`; every receiver must get each update exactly once. */
  async function deliversOnce(prefix: string, via: { port: number }, rxs: Receiver[]): Promise<void> {
    const from = rxs.map((rx) => rx.received.length);
    for (let i = 0; i < N; i++) await sender.send(encodeCacheSet(Buffer.from(`${prefix}-${i}`), Buffer.from('v'), 0), via.port);
    const sentinel = `${prefix}-end`;
    await sender.send(encodeCacheSet(Buffer.from(sentinel), Buffer.from('v'), 0), via.port);
    const got = await eventually(`${prefix}: the sentinel at every subscriber`, () => {
      const lists = rxs.map((rx, i) => rx.received.slice(from[i]).map(keyOf));
      return lists.every((l) => l.includes(sentinel)) ? lists : undefined;
    }, 10_000).catch(() => rxs.map((rx, i) => rx.received.slice(from[i]).map(keyOf)));
    const counts = got.map((l) => l.filter((k) => k.startsWith(`${prefix}-`) && k !== sentinel).length);
    assert.deepEqual(counts, rxs.map(() => N), `${prefix}: updates per subscriber (each must get all ${N}, once)`);
    for (const l of got) assert.equal(new Set(l).size, l.length, `${prefix}: an update reached a subscriber twice`);
  }

  test("A's password rotated and reloaded: A is refused, then reconnects by itself on a new connection and hears the bus again", async () => {
    const users = (aPass: string) => `    { user: ra, password: "${aPass}" }\n    { user: rb, password: "pw-b" }`;
    const { server, rewrite } = await natsWithUsers(users('pw-a-1'));
    const aPassword = file('a.password', 'pw-a-1\n');
    const a = await repeater(server.url, 'ra', aPassword);
    const b = await repeater(server.url, 'rb', file('b.password', 'pw-b\n'));
    for (const n of [a, b]) await n.r.d.log.waitFor('cluster peer joined', {}, { ms: 10_000 });
    const onA = await subscribers(a, 3);
    const onB = await subscribers(b, 3);
    await eventually('A healthy', async () => ((await health(a.r)).status === 'ok' ? true : undefined), 10_000);
    await deliversOnce('before', b, onA);

    // The operator rotates A's password on the server first.
    const from = a.r.d.log.length;
    await rewrite(users('pw-a-2'));
    await a.r.d.log.waitFor('cluster bus disconnected: serving our own listeners to the subscribers we heard', {}, { from, ms: 10_000 });
    // The client gives up on that connection (two authorization errors): our own loop now connects anew, and is refused.
    await a.r.d.log.waitFor('cluster bus: cannot connect; retrying', {}, { from, ms: 15_000 });
    const refused = await health(a.r);
    assert.equal(refused.status, 'degraded', 'A cannot hear the bus, yet /healthz says ok');
    assert.equal(refused.cluster.connected, false);

    // Then A's password file; A reconnects by itself.
    writeFileSync(aPassword, 'pw-a-2\n');
    await a.r.d.log.waitFor('cluster bus connected', {}, { from, ms: 10_000 });
    const back = await eventually('A healthy again', async () => {
      const h = await health(a.r);
      return h.status === 'ok' ? h : undefined;
    }, 10_000);
    await deliversOnce('via-b', b, onA);
    await deliversOnce('via-a', a, [...onA, ...onB]);
    assert.equal(back.cluster.subscribed, true);
  });

  test('a user that may publish but not subscribe: connected and deaf is degraded, and subscribed again once the server allows it', async () => {
    const users = (deny: boolean) =>
      `    { user: ra, password: "pw-a", permissions: { publish: "users.>", subscribe: ${deny ? '{ deny: "users.ctl" }' : '"users.>"'} } }\n    { user: rb, password: "pw-b" }`;
    const { server, rewrite } = await natsWithUsers(users(true));
    const a = await repeater(server.url, 'ra', file('deaf-a.password', 'pw-a\n'));
    const b = await repeater(server.url, 'rb', file('deaf-b.password', 'pw-b\n'));
    // Both connected before the server's configuration changes (a connection arriving during a reload is another test).
    for (const n of [a, b]) await n.r.d.log.waitFor('cluster bus connected', {}, { ms: 10_000 });
    // The server says so in its log; then A has had the refusal (it came on the same connection).
    await eventually("the server's refusal of A's subscription", () => (/Subscription Violation - User "ra", Subject "users\.ctl"/.test(server.output) ? true : undefined), 10_000);
    // The refusal reaches A on the same connection a moment later.
    const deaf = await eventually('A to report itself degraded', async () => {
      const h = await health(a.r);
      return h.status === 'degraded' ? h : undefined;
    }, 3_000).catch(() => health(a.r));
    console.log(JSON.stringify({ deaf: deaf.cluster.degradedBecause }));
    assert.equal(deaf.cluster.connected, true);
    assert.equal(deaf.status, 'degraded', 'connected but deaf to the control subject, yet /healthz says ok');
    assert.ok(deaf.cluster.degradedBecause.some((r) => r.startsWith('not subscribed to users.ctl')));

    await rewrite(users(false));
    await eventually('A subscribed and healthy', async () => ((await health(a.r)).status === 'ok' ? true : undefined), 15_000);
    await b.r.d.log.waitFor('cluster peer joined', {}, { ms: 10_000 });
    const onA = await subscribers(a, 2);
    await eventually('A to hear B', async () => ((await health(a.r)).cluster.degradedBecause.length === 0 ? true : undefined), 10_000);
    await deliversOnce('allowed', b, onA);
  });
  test('a repeater that connects while the server reloads its users is connected within seconds of the last reload, not the client\'s 20 s', async () => {
    const { server, rewrite } = await natsWithUsers('    { user: ra, password: "pw-a" }');
    const a = await repeater(server.url, 'ra', file('reload-a.password', 'pw-a\n'));
    // nats-server 2.9 leaves some connections that arrive during a reload unanswered: keep it reloading while A starts.
    const until = Date.now() + 2_000;
    while (Date.now() < until && a.r.d.log.matching('cluster bus connected').length === 0) await rewrite('    { user: ra, password: "pw-a" }');
    const last = Date.now();
    await a.r.d.log.waitFor('cluster bus connected', {}, { ms: 8_000 });
    assert.ok(Date.now() - last < 8_000);
  });
});

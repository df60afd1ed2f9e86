// The bus connection speaks what a production NATS deployment asks for, and
// fails closed: token, user and password, and TLS verified against a CA. A
// repeater with the wrong secret or an untrusted server certificate never
// joins the bus (and still serves its own listeners, degraded); with a
// tls:// server it refuses a server that does not offer TLS rather than
// talking in clear. The README's NATS users keep everyone but the repeaters
// off the cluster's subjects. Real nats-server processes; certificates made
// by openssl.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the cluster authentication suite (test/system/cluster.auth.test.ts)', 'Cluster bus authentication and TLS are NOT being tested.', natsAvailability(), NATS_HINT);

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-nats-auth-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text, { mode: 0o600 });
  return p;
};
const CONNECT_MS = 10_000;

/** The `authorization { ... }` block of the README's nats-server.conf, as written there. */
function readmeAuthorization(): string {
  const readme = readFileSync(join(__dirname, '..', '..', '..', 'README.md'), 'utf8');
  const conf = readme.indexOf('# /etc/nats/nats-server.conf');
  const start = readme.indexOf('authorization {', conf);
  if (conf < 0 || start < 0) throw new Error("the README's nats-server.conf has no authorization block");
  let depth = 0;
  for (let i = start; i < readme.length; i++) {
    if (readme[i] === '{') depth++;
    else if (readme[i] === '}' && --depth === 0) return readme.slice(start, i + 1);
  }
  throw new Error("the README's authorization block does not close");
}

/** A CA and a server certificate for 127.0.0.1 signed by it, and an unrelated CA. */
function certificates(): { ca: string; otherCa: string; cert: string; key: string } {
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=udprepeater test CA');
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=someone else');
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  ossl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf');
  return { ca: join(dir, 'ca.pem'), otherCa: join(dir, 'other.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

describe('cluster bus authentication and TLS', { skip, timeout: 120_000 }, () => {
  const scope = new Scope();
  const buses: NatsCluster[] = [];
  const running: Running[] = [];
  let key: string;

  before(async () => {
    requireNats();
    key = await keygen();
  });
  after(async () => {
    for (const r of running) await r.stop();
    for (const b of buses) await b.close();
  });

  async function bus(extra: string[]): Promise<NatsCluster> {
    const b = await NatsCluster.start(1, 'urauth', extra);
    buses.push(b);
    return b;
  }

  async function repeater(url: string, extra: string[]): Promise<{ r: Running; port: number }> {
    const port = await freePort();
    const r = await serve(['--listen', `127.0.0.1:${port},channel=ssl`, '--cluster', url, '--cluster-name', 'auth', '--cluster-key-file', key, ...extra]);
    running.push(r);
    return { r, port };
  }

  async function connects(url: string, extra: string[]): Promise<void> {
    const { r } = await repeater(url, extra);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: CONNECT_MS });
    const health = JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { status: string; cluster: { connected: boolean } };
    assert.equal(health.cluster.connected, true);
    assert.equal(health.status, 'ok');
  }

  /** Never joins the bus, says why, and still forwards between its own subscribers (degraded). */
  async function refused(url: string, extra: string[], why: RegExp): Promise<void> {
    const { r, port } = await repeater(url, extra);
    const line = await r.d.log.waitFor('cluster bus: cannot connect; retrying', {}, { ms: CONNECT_MS });
    assert.match(JSON.stringify(line), why);
    const rx = await scope.receiver();
    const tx = scope.sender;
    await tx.send(encodeSubscription({ key: 'ssl', address: `127.0.0.1:${rx.port}` }), port);
    await r.d.log.waitFor('subscribed', {}, { ms: CONNECT_MS });
    await tx.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), port);
    await rx.next();
    const health = JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { status: string; cluster: { connected: boolean } };
    assert.equal(health.cluster.connected, false);
    assert.equal(health.status, 'degraded');
    assert.equal(r.d.log.matching('cluster bus connected').length, 0);
  }

  test('token: the right token joins, a wrong one never does', async () => {
    const b = await bus(['--auth', 's3cret-token']);
    await connects(b.urls[0]!, ['--cluster-token-file', file('token', 's3cret-token\n')]);
    await refused(b.urls[0]!, ['--cluster-token-file', file('bad-token', 'guess\n')], /[Aa]uthorization/);
  });

  test('user and password: the right password joins, a wrong one never does', async () => {
    const b = await bus(['--user', 'repeater', '--pass', 'pw-1']);
    await connects(b.urls[0]!, ['--cluster-user', 'repeater', '--cluster-password-file', file('pw', 'pw-1\n')]);
    await refused(b.urls[0]!, ['--cluster-user', 'repeater', '--cluster-password-file', file('bad-pw', 'pw-2\n')], /[Aa]uthorization/);
  });

  test('TLS: a server certificate from the configured CA joins; one the CA did not sign never does', async () => {
    const c = certificates();
    const b = await bus(['--tls', '--tlscert', c.cert, '--tlskey', c.key]);
    const url = b.urls[0]!.replace('nats://', 'tls://');
    await connects(url, ['--cluster-tls-ca', c.ca]);
    await refused(url, ['--cluster-tls-ca', c.otherCa], /certificate|self.signed|verify/i);
  });

  test("the README's NATS users: the repeaters' user joins; another user can neither publish nor subscribe on the cluster's subjects", async () => {
    // As the README deploys it: the passwords in the server's environment, the cluster named prod-ssl.
    process.env['REPEATER_PASSWORD'] = 'pw-repeaters';
    process.env['APPS_PASSWORD'] = 'pw-apps';
    let b: NatsCluster;
    try {
      b = await bus(['-c', file('nats-users.conf', `${readmeAuthorization()}\n`)]);
    } finally {
      delete process.env['REPEATER_PASSWORD'];
      delete process.env['APPS_PASSWORD'];
    }
    const url = b.urls[0]!;
    const pw = file('repeater-pw', 'pw-repeaters\n');
    const rs: Running[] = [];
    for (let i = 0; i < 2; i++) {
      const port = await freePort();
      const r = await serve(['--listen', `127.0.0.1:${port},channel=ssl`, '--cluster', url, '--cluster-name', 'prod-ssl', '--cluster-key-file', key, '--cluster-user', 'repeater', '--cluster-password-file', pw, '--cluster-peer-timeout', '1.5']);
      running.push(r);
      rs.push(r);
    }
    for (const r of rs) await r.d.log.waitFor('cluster peer joined', {}, { ms: CONNECT_MS });
    const unsealed = async (r: Running) => (await r.metrics()).value('udprepeater_cluster_messages_dropped_total', { reason: 'unsealed' });

    const apps = await connect({ servers: url, user: 'apps', pass: 'pw-apps', name: 'apps' });
    const violations: string[] = [];
    void (async () => {
      for await (const st of apps.status()) if (st.type === 'error') violations.push(String((st as { error: Error }).error.message));
    })();
    let watched = 0;
    apps.subscribe('prod-ssl.>', {
      callback: (err) => {
        if (err === null) watched++;
      },
    });
    const garbage = Buffer.from('not sealed: published by another user');
    apps.publish('prod-ssl.ctl', garbage);
    apps.publish('prod-ssl.dg.ssl', garbage);
    await apps.flush();
    await eventually('the server to refuse the other user', () => (violations.length >= 3 ? true : undefined), CONNECT_MS);
    // The control: the same bytes from the repeaters' user reach both repeaters (and are refused there, unsealed).
    const insider = await connect({ servers: url, user: 'repeater', pass: 'pw-repeaters', name: 'control' });
    insider.publish('prod-ssl.ctl', garbage);
    await insider.flush();
    for (const r of rs) await eventually('the control to reach a repeater', async () => ((await unsealed(r)) >= 1 ? true : undefined), CONNECT_MS);
    const counts = await Promise.all(rs.map(unsealed));
    console.log(JSON.stringify({ violations, watched, unsealedAtRepeaters: counts }));
    await insider.close();
    await apps.close();
    assert.deepEqual(counts, [1, 1], 'a message of the other user reached the repeaters');
    assert.equal(watched, 0, 'the other user received bus traffic');
    assert.ok(violations.some((v) => /Publish to "prod-ssl\.ctl"/.test(v)), 'no violation for the publish on prod-ssl.ctl');
    assert.ok(violations.some((v) => /Publish to "prod-ssl\.dg\.ssl"/.test(v)), 'no violation for the publish on prod-ssl.dg.ssl');
    assert.ok(violations.some((v) => /Subscription to "prod-ssl\.>"/.test(v)), 'no violation for the subscription');
  });

  test('tls:// against a server without TLS is refused, never spoken in clear', async () => {
    const b = await bus([]);
    await refused(b.urls[0]!.replace('nats://', 'tls://'), [], /tls/i);
  });
});

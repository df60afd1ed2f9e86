// The bus connection speaks what a production NATS deployment asks for, and
// fails closed: token, user and password, and TLS verified against a CA. A
// repeater with the wrong secret or an untrusted server certificate never
// joins the bus (and still serves its own listeners, degraded); with a
// tls:// server it refuses a server that does not offer TLS rather than
// talking in clear. Real nats-server processes; certificates made by openssl.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { freePort } from '../helpers/net.js';
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
    const r = await serve(['--listen', `127.0.0.1:${port},channel=ssl`, '--cluster', url, '--cluster-name', 'auth', '--key-file', key, ...extra]);
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

  test('tls:// against a server without TLS is refused, never spoken in clear', async () => {
    const b = await bus([]);
    await refused(b.urls[0]!.replace('nats://', 'tls://'), [], /tls/i);
  });
});

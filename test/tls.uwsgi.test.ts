// A Node.js HTTPS server and a real uWSGI 2.0 node share one cache through a
// real repeater: the session a client made on the Node server is in the
// node's cache under its session id, and what the node sets is in the Node
// server's. Plain (both join the repeater's plain listener) and sealed (the
// node behind an agent, the Node server sealed directly with the key).
// Skipped loudly without uWSGI or openssl (required under CI).

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { Logger } from '../src/base/log.js';
import { SessionCache } from '../src/tls/session-cache.js';
import { agent, keygen, type Running, serve } from './helpers/attack.js';
import { freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';
import { makeCert, opensslAvailability, sClient, type Cert } from './helpers/tls.js';
import { httpsServer, untilApplied } from './helpers/tls-cache.js';
import { INSTALL_HINT, sessionBytes, sessionId, UwsgiNode, untilSynced, uwsgiAvailability } from './helpers/uwsgi.js';

const uwsgi = uwsgiAvailability();
const openssl = opensslAvailability();
const { skip, require: requireTools } = requirement(
  'uWSGI and openssl',
  'the Node.js + uWSGI shared-cache suite (test/tls.uwsgi.test.ts)',
  'That Node.js servers and uWSGI nodes see each other’s sessions is NOT being tested.',
  uwsgi.ok ? openssl : uwsgi,
  INSTALL_HINT,
);

const scope = new Scope();
const quiet = new Logger('error', 'json', { write: () => undefined });

describe('a Node.js server and a uWSGI node share one cache', { skip, timeout: 60_000 }, () => {
  let cert: Cert;
  let key: string;
  let repeater: Running;
  let plainPort: number;
  let sealedPort: number;

  before(async () => {
    requireTools();
    cert = makeCert();
    key = await keygen();
    [plainPort, sealedPort] = [await freePort(), await freePort()];
    repeater = await serve([
      '--listen', `127.0.0.1:${plainPort},channel=ssl,key=ssl`,
      '--listen-sealed', `127.0.0.1:${sealedPort},channel=ssl,key=ssl,tickets`,
      '--key-file', key,
      '--state-dir', mkdtempSync(join(tmpdir(), 'udprepeater-tls-uwsgi-')),
    ]);
    scope.track({ close: () => repeater.stop() });
  });

  async function exchange(cache: SessionCache, node: UwsgiNode): Promise<void> {
    const https = scope.track(await httpsServer(cert, cache, { tickets: false }));
    // Node server -> uWSGI node: the session a real client made, under its id.
    const hs = await sClient(https.port, { version: '1.2', noTicket: true });
    const id = Buffer.from(hs.sessionId, 'hex');
    const data = cache.get(id);
    assert.ok(data !== undefined && data.length > 50, 'the server stored its session');
    await untilSynced(node, id, data);
    // uWSGI node -> Node server.
    const k = sessionId();
    const v = sessionBytes(1200);
    await node.set(k, v, 300);
    await untilApplied(cache, k);
    assert.ok(cache.get(k)!.equals(v));
  }

  test('plain: both on the plain listener', async () => {
    const node = await UwsgiNode.start({ repeater: `127.0.0.1:${plainPort}` });
    scope.track({ close: () => node.stop() });
    const cache = scope.track(await SessionCache.start({ repeater: `127.0.0.1:${plainPort}`, bind: '127.0.0.1:0', logger: quiet }));
    await Promise.all([repeater.d.log.waitFor('subscribed', { address: node.udpAddress }), repeater.d.log.waitFor('subscribed', { address: cache.address })]);
    await exchange(cache, node);
  });

  test('sealed: the node behind an agent, the Node server sealed with the key', async () => {
    const local = `127.0.0.1:${await freePort()}`;
    const node = await UwsgiNode.start({ cacheNode: local, subscribeTo: [] });
    scope.track({ close: () => node.stop() });
    const a = await agent(['--repeater', `127.0.0.1:${sealedPort}`, '--key-file', key, '--local', local, '--deliver', node.udpAddress, '--channel-key', 'ssl']);
    scope.track({ close: () => a.stop() });
    const cache = scope.track(await SessionCache.start({ repeater: `127.0.0.1:${sealedPort}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
    await Promise.all([repeater.d.log.waitFor('subscribed', { address: cache.address, form: 'sealed' }), repeater.d.log.waitFor('subscribed', { form: 'sealed', source: '127.0.0.1' })]);
    await exchange(cache, node);
  });
});

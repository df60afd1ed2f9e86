// `udprepeater/tls` by identity (issue 18): two real Node HTTPS servers, each
// with a session cache that links to a real repeater (the CLI) by its own
// identity and peers file, no shared key, and real `openssl s_client` clients
// that save a session on one server (-sess_out) and offer it to the other
// (-sess_in). Sessions and ticket keys come only from a repeater identity;
// revoking a cache's identity at the repeater stops its sync.
// Skipped loudly without openssl (required under CI).

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { ConfigError } from '../src/base/errors.js';
import { Logger } from '../src/base/log.js';
import { SessionCache } from '../src/tls/session-cache.js';
import { keygen, type Running, serve } from './helpers/attack.js';
import { eventually, freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';
import { type Cert, makeCert, OPENSSL_HINT, opensslAvailability, sClient } from './helpers/tls.js';
import { httpsServer, untilApplied, untilTicketKey } from './helpers/tls-cache.js';
import { makeIdentity, writePeers } from './helpers/identities.js';

const { skip, require: requireOpenssl } = requirement('openssl', 'the TLS session cache by identity (test/tls.identity.test.ts)', 'TLS session sharing by identity is NOT being tested.', opensslAvailability(), OPENSSL_HINT);

const quiet = new Logger('error', 'json', { write: () => undefined });
const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-tls-identity-'));
let files = 0;
const fresh = (name: string) => join(dir, `${name}-${files++}`);

async function identity(): Promise<{ file: string; pub: string }> {
  const file = fresh('id');
  return makeIdentity(file);
}

function peersFile(lines: string[], file = fresh('peers')): string {
  return writePeers(file, lines);
}

describe('Node.js servers share TLS sessions through a repeater by identity', { skip, timeout: 90_000 }, () => {
  let cert: Cert;
  let repeater: Running;
  let port: number;
  let repeaterPub: string;
  let repeaterPeers: string;
  const caches: Array<{ name: string; id: { file: string; pub: string } }> = [];

  before(async () => {
    requireOpenssl();
    cert = makeCert();
    const rid = await identity();
    repeaterPub = rid.pub;
    // One identity per cache: two caches of one identity would take each other's link.
    for (const name of ['t12-a', 't12-b', 'witness', 'as-node', 'rev-a', 'rev-b', 'rev-c', 'reload', 'reload-witness']) caches.push({ name, id: await identity() });
    repeaterPeers = peersFile(caches.map((c) => `${c.id.pub} ${c.name}`));
    port = await freePort();
    repeater = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--identity', rid.file, '--peers', repeaterPeers, '--state-dir', fresh('state'), '--no-warm-join']);
    track({ close: () => repeater.stop() });
  });

  const trusting = (role: 'repeater' | 'node') => peersFile([`${repeaterPub} repeater-a role=${role}`]);
  const cacheOf = async (name: string, peers = trusting('repeater')) =>
    track(await SessionCache.start({ repeater: `127.0.0.1:${port}`, bind: '127.0.0.1:0', identity: caches.find((c) => c.name === name)!.id.file, peers, subscribeInterval: 0.5, logger: quiet }));
  const subscribed = (c: SessionCache) => repeater.d.log.waitFor('subscribed', { address: c.address });

  test('identity and peers go together, and exclude keyFiles', async () => {
    const id = caches[0]!.id.file;
    await assert.rejects(SessionCache.start({ repeater: `127.0.0.1:${port}`, identity: id, logger: quiet }), (e) => e instanceof ConfigError && /identity and peers go together/.test(e.message));
    await assert.rejects(SessionCache.start({ repeater: `127.0.0.1:${port}`, identity: id, peers: trusting('repeater'), keyFiles: [await keygen()], logger: quiet }), (e) => e instanceof ConfigError && /exclude each other/.test(e.message));
    await assert.rejects(SessionCache.start({ repeater: `127.0.0.1:${port}`, identity: fresh('missing'), peers: trusting('repeater'), logger: quiet }), (e) => e instanceof ConfigError && /identity .*no such file/.test(e.message));
  });

  test('TLS 1.2 session ids resume on the other server; TLS 1.3 and 1.2 tickets too, under the fleet key; the controls do not', async () => {
    const [ca, cb] = [await cacheOf('t12-a'), await cacheOf('t12-b')];
    await Promise.all([subscribed(ca), subscribed(cb)]);
    const [ka, kb] = await Promise.all([untilTicketKey(ca), untilTicketKey(cb)]);
    assert.equal(ka, kb, 'both servers encrypt with the same fleet key');
    const outsider = track(await httpsServer(cert, null));
    // Sessions come only from an authenticated repeater: a server asking for client certificates may share them.
    ca.attach(createTlsServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key), requestCert: true, rejectUnauthorized: false }))();

    // Session ids: stored on A, published over A's link, delivered over B's.
    const a = track(await httpsServer(cert, ca, { tickets: false }));
    const b = track(await httpsServer(cert, cb, { tickets: false }));
    const file = fresh('s12');
    const first = await sClient(a.port, { version: '1.2', noTicket: true, sessOut: file });
    assert.equal(first.reused, false);
    await untilApplied(cb, Buffer.from(first.sessionId, 'hex'));
    const again = await sClient(b.port, { version: '1.2', noTicket: true, sessIn: file });
    assert.equal(again.reused, true, again.output);
    assert.equal(again.sessionId, first.sessionId);
    assert.equal((await sClient(outsider.port, { version: '1.2', noTicket: true, sessIn: file })).reused, false);

    // Tickets only: the session-id path cannot be what resumes.
    const ta = track(await httpsServer(cert, ca, { sessions: false }));
    const tb = track(await httpsServer(cert, cb, { sessions: false }));
    for (const version of ['1.3', '1.2'] as const) {
      const t = fresh(`t${version}`);
      const made = await sClient(ta.port, { version, sessOut: t });
      assert.equal(made.reused, false);
      assert.ok(made.answered, made.output);
      const resumed = await sClient(tb.port, { version, sessIn: t });
      assert.equal(resumed.reused, true, resumed.output);
      assert.equal(resumed.protocol, `TLSv${version}`);
      assert.equal((await sClient(outsider.port, { version, sessIn: t })).reused, false, 'a server with its own ticket key resumed it');
    }
  });

  test('a cache whose peers file lists the repeater\'s key as role=node never links: no sessions, no ticket keys', async () => {
    const witness = await cacheOf('witness');
    await untilTicketKey(witness);
    const asNode = await cacheOf('as-node', trusting('node'));
    // The witness was sent the schedule again at two refreshes since: the other one would have been too, had it linked.
    const sent = (await repeater.metrics()).value('udprepeater_ticket_key_frames_sent_total');
    await eventually('two more ticket-key frames', async () => ((await repeater.metrics()).value('udprepeater_ticket_key_frames_sent_total') >= sent + 2 ? true : undefined));
    assert.deepEqual(asNode.ticketKeys(), []);
    assert.equal(asNode.stats.applied, 0);
    assert.equal(repeater.d.log.matching('subscribed', { address: asNode.address }).length, 0, 'it subscribed: it linked to a key listed as role=node');
  });

  test('reloadPeers: a bad file is refused (file and line) and the link kept; the repeater\'s line removed, its link drops and nothing more is taken', async () => {
    const peers = trusting('repeater');
    const c = await cacheOf('reload', peers);
    const witness = await cacheOf('reload-witness');
    await Promise.all([subscribed(c), untilTicketKey(c), untilTicketKey(witness)]);
    const s = track(await httpsServer(cert, c, { tickets: false }));
    const w = track(await httpsServer(cert, witness, { tickets: false }));
    writeFileSync(peers, `${repeaterPub} repeater-a role=king\n`);
    assert.throws(() => c.reloadPeers(), (e) => e instanceof ConfigError && e.message.includes(`${peers}:1`));
    const s0 = await sClient(w.port, { version: '1.2', noTicket: true });
    await untilApplied(c, Buffer.from(s0.sessionId, 'hex'));

    writeFileSync(peers, '# no repeater\n');
    c.reloadPeers();
    const before = (await repeater.metrics()).value('udprepeater_datagrams_forwarded_total');
    const s1 = await sClient(w.port, { version: '1.2', noTicket: true });
    // The repeater still sends to the subscriber (until its tolerance); the cache no longer opens it.
    await eventually('the copy to the cache sent', async () => ((await repeater.metrics()).value('udprepeater_datagrams_forwarded_total') > before ? true : undefined));
    // A group frame under a key dropped with the link (unknown_key), or a frame under the dropped link (unknown_link).
    await eventually('the frame refused', () => ((c.stats.dropped['unknown_link'] ?? 0) + (c.stats.dropped['unknown_key'] ?? 0) > 0 ? true : undefined));
    assert.equal(c.get(Buffer.from(s1.sessionId, 'hex')), undefined, 'a session came through after the repeater\'s line was removed');
    // What its own server makes now goes nowhere: no link to seal it under.
    const failed = c.stats.publishFailed;
    await sClient(s.port, { version: '1.2', noTicket: true });
    assert.equal(c.stats.publishFailed, failed + 1, 'the cache published without a link to a repeater');
  });

  test('revoking a cache\'s identity (its line removed, SIGHUP) stops its sync both ways; the others go on', async () => {
    const [ca, cb, cc] = [await cacheOf('rev-a'), await cacheOf('rev-b'), await cacheOf('rev-c')];
    await Promise.all([subscribed(ca), subscribed(cb), subscribed(cc)]);
    const [a, b, c] = [track(await httpsServer(cert, ca, { tickets: false })), track(await httpsServer(cert, cb, { tickets: false })), track(await httpsServer(cert, cc, { tickets: false }))];
    const s0 = await sClient(a.port, { version: '1.2', noTicket: true });
    await Promise.all([untilApplied(cb, Buffer.from(s0.sessionId, 'hex')), untilApplied(cc, Buffer.from(s0.sessionId, 'hex'))]);

    peersFile(
      caches.filter((x) => x.name !== 'rev-b').map((x) => `${x.id.pub} ${x.name}`),
      repeaterPeers,
    );
    repeater.d.signal('SIGHUP');
    const revoked = await repeater.d.log.waitFor('identities revoked: links dropped');
    assert.deepEqual(revoked['peers'], ['rev-b']);

    // From the others: C gets A's new session, B does not.
    const s1 = await sClient(a.port, { version: '1.2', noTicket: true });
    await untilApplied(cc, Buffer.from(s1.sessionId, 'hex'));
    // From B: its frames are refused (revoked), and what it made reaches nobody.
    const refused = (await repeater.metrics()).dropped('revoked');
    const s2 = await sClient(b.port, { version: '1.2', noTicket: true });
    await eventually('B\'s publication refused', async () => ((await repeater.metrics()).dropped('revoked') > refused ? true : undefined));
    const s3 = await sClient(c.port, { version: '1.2', noTicket: true });
    await untilApplied(ca, Buffer.from(s3.sessionId, 'hex'));
    assert.equal(cb.get(Buffer.from(s1.sessionId, 'hex')), undefined, 'the revoked cache got a session made after the reload');
    assert.equal(cb.get(Buffer.from(s3.sessionId, 'hex')), undefined, 'the revoked cache got a session made after the reload');
    assert.equal(ca.get(Buffer.from(s2.sessionId, 'hex')), undefined, 'the revoked cache\'s session reached another');
    assert.equal(cc.get(Buffer.from(s2.sessionId, 'hex')), undefined, 'the revoked cache\'s session reached another');
  });
});

// TLS session resumption across Node.js servers through a real repeater (the
// CLI, on loopback): `udprepeater/tls` attached to real HTTPS servers, and
// real `openssl s_client` clients that save a session on one server
// (-sess_out) and offer it to another (-sess_in).
//
// - TLS 1.2 session ids travel as uWSGI cache sets, plain and sealed;
// - TLS 1.3 and TLS 1.2 tickets resume across servers once both hold the
//   fleet's ticket key, which only arrives sealed;
// - each has a control: a server outside the cache (or with its own ticket
//   key) does not resume the same session, so the check can fail.
// Skipped loudly without openssl (required under CI).

import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { before, describe, test } from 'node:test';
import { Logger } from '../src/base/log.js';
import { SessionCache } from '../src/tls/session-cache.js';
import { encodeCacheSet, encodeCacheDelete } from '../src/wire/cache.js';
import { keygen, type Running, serve } from './helpers/attack.js';
import { eventually, freePort } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { Scope } from './helpers/scope.js';
import { type Cert, makeCert, OPENSSL_HINT, opensslAvailability, sClient } from './helpers/tls.js';
import { httpsServer, untilApplied, untilTicketKey } from './helpers/tls-cache.js';

const { skip, require: requireOpenssl } = requirement('openssl', 'the Node.js TLS resumption suite (test/tls.node.test.ts)', 'TLS session sharing between Node.js servers is NOT being tested.', opensslAvailability(), OPENSSL_HINT);

const quiet = new Logger('error', 'json', { write: () => undefined });
const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);

describe('Node.js servers share TLS sessions through a repeater', { skip, timeout: 60_000 }, () => {
  let cert: Cert;
  let key: string;
  let plainPort: number;
  let sealedPort: number;
  let repeater: Running;
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-tls-node-'));

  before(async () => {
    requireOpenssl();
    cert = makeCert();
    key = await keygen();
    plainPort = await freePort();
    sealedPort = await freePort();
    repeater = await serve([
        '--listen', `127.0.0.1:${plainPort},channel=ssl,key=ssl`,
        '--listen-sealed', `127.0.0.1:${sealedPort},channel=ssl,key=ssl,tickets`,
        '--key-file', key,
        '--state-dir', join(dir, 'state'),
        // Each cache here counts exactly what it is sent; a warm join would add the sessions
        // earlier tests left in the live state (warm joins: test/warm.*.test.ts).
        '--no-warm-join',
      ]);
    track({ close: () => repeater.stop() });
  });

  const plainCache = async (o: Partial<Parameters<typeof SessionCache.start>[0]> = {}) =>
    track(await SessionCache.start({ repeater: `127.0.0.1:${plainPort}`, bind: '127.0.0.1:0', logger: quiet, ...o }));
  const sealedCache = async () => track(await SessionCache.start({ repeater: `127.0.0.1:${sealedPort}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
  const subscribed = (c: SessionCache) => repeater.d.log.waitFor('subscribed', { address: c.address });

  test('a plain cache refuses to serve session ids to a server that asks for client certificates', async () => {
    const [plain, sealed] = [await plainCache(), await sealedCache()];
    const opts = { cert: readFileSync(cert.cert), key: readFileSync(cert.key), requestCert: true, rejectUnauthorized: false };
    assert.throws(() => plain.attach(createTlsServer(opts)), /asks for client certificates.*plain channel/);
    // Nothing is attached by the refusal: the same server can still be attached as the operator decides.
    const s = createTlsServer(opts);
    assert.throws(() => plain.attach(s));
    plain.attach(s, { plainWithClientCertificates: true })();
    plain.attach(createTlsServer(opts), { sessions: false })();
    plain.attach(createTlsServer({ ...opts, requestCert: false }))();
    sealed.attach(createTlsServer(opts))();
  });

  test('a cache that starts after the sessions were made is warmed by the repeater: they resume on its server at once (sealed)', async () => {
    // A repeater of its own, with warm joins (the default) and an empty live state.
    const port = await freePort();
    const warm = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl`, '--key-file', key]);
    track({ close: () => warm.stop() });
    const start = async () => track(await SessionCache.start({ repeater: `127.0.0.1:${port}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
    const ca = await start();
    await warm.d.log.waitFor('subscribed', { address: ca.address });
    const a = track(await httpsServer(cert, ca, { tickets: false }));
    const files = [0, 1, 2].map((i) => join(dir, `warm-${i}`));
    const ids: string[] = [];
    for (const f of files) ids.push((await sClient(a.port, { version: '1.2', noTicket: true, sessOut: f })).sessionId);
    await eventually('the repeater to hold the three sessions', async () => ((await warm.metrics()).value('udprepeater_live_state_entries', { channel: 'ssl' }) === 3 ? true : undefined));

    // Nothing is published after this cache joins: all it holds came by the warm join.
    const cb = await start();
    await warm.d.log.waitFor('warm join completed', { address: cb.address });
    for (const id of ids) await untilApplied(cb, Buffer.from(id, 'hex'));
    const b = track(await httpsServer(cert, cb, { tickets: false }));
    for (const [i, f] of files.entries()) {
      const again = await sClient(b.port, { version: '1.2', noTicket: true, sessIn: f });
      assert.equal(again.reused, true, again.output);
      assert.equal(again.sessionId, ids[i]);
    }
    assert.equal(cb.stats.stored, 0);
  });

  for (const form of ['plain', 'sealed'] as const) {
    test(`TLS 1.2 session ids resume on another server (${form})`, async () => {
      const [ca, cb] = form === 'plain' ? [await plainCache(), await plainCache()] : [await sealedCache(), await sealedCache()];
      await Promise.all([subscribed(ca), subscribed(cb)]);
      const a = track(await httpsServer(cert, ca, { tickets: false }));
      const b = track(await httpsServer(cert, cb, { tickets: false }));
      const outsider = track(await httpsServer(cert, null));
      const file = join(dir, `s12-${form}`);
      const first = await sClient(a.port, { version: '1.2', noTicket: true, sessOut: file });
      assert.equal(first.reused, false);
      assert.equal(first.protocol, 'TLSv1.2');
      await untilApplied(cb, Buffer.from(first.sessionId, 'hex'));
      const again = await sClient(b.port, { version: '1.2', noTicket: true, sessIn: file });
      assert.equal(again.reused, true, again.output);
      assert.equal(again.sessionId, first.sessionId);
      assert.ok(cb.stats.hits >= 1);
      // Control: a server outside the cache cannot resume it.
      assert.equal((await sClient(outsider.port, { version: '1.2', noTicket: true, sessIn: file })).reused, false);
    });
  }

  for (const version of ['1.3', '1.2'] as const) {
    test(`TLS ${version} tickets resume on another server once both hold the fleet's key (sealed)`, async () => {
      const [ca, cb] = [await sealedCache(), await sealedCache()];
      const [ka, kb] = await Promise.all([untilTicketKey(ca), untilTicketKey(cb)]);
      assert.equal(ka, kb, 'both servers encrypt with the same fleet key');
      // Tickets only: the session-id path cannot be what resumes.
      const a = track(await httpsServer(cert, ca, { sessions: false }));
      const b = track(await httpsServer(cert, cb, { sessions: false }));
      const own = track(await httpsServer(cert, null));
      const file = join(dir, `t${version}`);
      const first = await sClient(a.port, { version, sessOut: file });
      assert.equal(first.reused, false);
      assert.ok(first.answered, first.output);
      const again = await sClient(b.port, { version, sessIn: file });
      assert.equal(again.reused, true, again.output);
      assert.equal(again.protocol, `TLSv${version}`);
      // Control: a server with its own ticket key does not resume it.
      assert.equal((await sClient(own.port, { version, sessIn: file })).reused, false);
    });
  }

  test('TLS 1.3 sessions are neither stored nor published (they resume with tickets only)', async () => {
    const c = await plainCache();
    const s = track(await httpsServer(cert, c));
    await sClient(s.port, { version: '1.3' });
    await eventually('the TLS 1.3 sessions to be counted', () => (c.stats.skippedTls13 > 0 ? true : undefined));
    assert.equal(c.stats.stored, 0);
    assert.equal(c.size, 0);
  });

  test('a plain subscriber never receives ticket keys', async () => {
    const c = await plainCache();
    await subscribed(c);
    const s = await sealedCache();
    await untilTicketKey(s);
    assert.deepEqual(c.ticketKeys(), []);
  });

  test('a burst of sets right after subscribing (a warm join) is all taken, within the bounds', async () => {
    const c = await plainCache();
    const small = await plainCache({ maxEntries: 500 });
    const sock = createSocket('udp4');
    track({ close: () => sock.close() });
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const expires = Math.floor(Date.now() / 1000) + 300;
    const N = 3000;
    const sets = Array.from({ length: N }, (_, i) => encodeCacheSet(Buffer.from(`warm-${i}`), Buffer.alloc(200, i % 251), expires));
    for (const target of [c, small]) {
      const [host, port] = [target.address!.split(':')[0]!, Number(target.address!.split(':')[1])];
      assert.equal(host, '127.0.0.1');
      // As fast as the socket takes them: no pacing.
      await Promise.all(sets.map((d) => new Promise<void>((r, j) => sock.send(d, port, host, (e) => (e ? j(e) : r())))));
    }
    await eventually(`${N} sets applied`, () => (c.stats.applied === N && small.stats.applied === N ? true : undefined));
    assert.equal(c.size, N);
    assert.ok(c.get(Buffer.from(`warm-${N - 1}`))?.equals(Buffer.alloc(200, (N - 1) % 251)));
    assert.equal(small.size, 500);
    assert.equal(small.evictions, N - 500);
    // The newest are the ones kept; a delete removes one.
    assert.ok(small.get(Buffer.from(`warm-${N - 1}`)) !== undefined);
    assert.equal(small.get(Buffer.from('warm-0')), undefined);
    await new Promise<void>((r) => sock.send(encodeCacheDelete(Buffer.from(`warm-${N - 1}`), true), Number(small.address!.split(':')[1]), '127.0.0.1', () => r()));
    await eventually('the delete', () => (small.get(Buffer.from(`warm-${N - 1}`)) === undefined ? true : undefined));
  });

  test('an entry is never answered past its expiry, nor past the session timeout', async () => {
    const c = await plainCache({ sessionTimeout: 1 });
    const sock = createSocket('udp4');
    track({ close: () => sock.close() });
    const port = Number(c.address!.split(':')[1]);
    const send = (d: Buffer) => new Promise<void>((r) => sock.send(d, port, '127.0.0.1', () => r()));
    const past = Math.floor(Date.now() / 1000) - 10;
    await send(encodeCacheSet(Buffer.from('expired'), Buffer.from('x'), past));
    await send(encodeCacheSet(Buffer.from('never'), Buffer.from('y'), 0));
    await send(encodeCacheSet(Buffer.from('in an hour'), Buffer.from('z'), past + 3610));
    await eventually('all handled', () => ((c.stats.dropped['expired'] ?? 0) === 1 && c.stats.applied === 2 ? true : undefined));
    assert.equal(c.get(Buffer.from('expired')), undefined);
    assert.ok(c.get(Buffer.from('never')) !== undefined);
    // "0" (never) and an hour ahead are still bounded by our own 1 s timeout.
    await eventually('the session timeout', () => (c.get(Buffer.from('never')) === undefined ? true : undefined), 3000);
    assert.equal(c.get(Buffer.from('in an hour')), undefined);
  });

  test('what does not come from the repeater, or does not authenticate, is refused and changes nothing', async () => {
    const plain = await plainCache();
    const sealed = await sealedCache();
    await untilTicketKey(sealed);
    const before = sealed.ticketKeys();
    const stranger = createSocket('udp4');
    const local = createSocket('udp4');
    track({ close: () => stranger.close() });
    track({ close: () => local.close() });
    await new Promise<void>((r) => stranger.bind(0, '127.0.0.2', () => r()));
    await new Promise<void>((r) => local.bind(0, '127.0.0.1', () => r()));
    const to = (c: SessionCache, sock: typeof local, d: Buffer) => new Promise<void>((r) => sock.send(d, Number(c.address!.split(':')[1]), '127.0.0.1', () => r()));
    const set = encodeCacheSet(Buffer.from('injected'), Buffer.from('evil'), 0);
    // Another IP: not even parsed.
    await to(plain, stranger, set);
    // Garbage and truncated datagrams from the repeater's IP.
    for (const junk of [Buffer.alloc(0), Buffer.from([0x6f]), Buffer.from('not a uwsgi packet at all'), set.subarray(0, set.length - 3)]) await to(plain, local, junk);
    // A plain set at a sealed cache; a frame sealed with a key it lacks; a TICKET_KEYS frame sealed by an agent.
    await to(sealed, local, set);
    const { KeyRing } = await import('../src/crypto/keyring.js');
    const { SecureSession } = await import('../src/crypto/session.js');
    const { EnvelopeKind, Role } = await import('../src/wire/envelope.js');
    const { newTicketKey } = await import('../src/crypto/ticket-schedule.js');
    const other = KeyRing.load([await keygen()]);
    const ours = KeyRing.load([key]);
    const fake = [newTicketKey(Date.now() - 1000, Date.now() + 3_600_000, 1)];
    await to(sealed, local, new SecureSession(Role.Repeater).seal(other, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set, address: null })!);
    await to(sealed, local, new SecureSession(Role.Agent).seal(ours, { kind: EnvelopeKind.TicketKeys, channelKey: 'ssl', datagram: null, address: null, tickets: fake })!);
    await to(sealed, local, new SecureSession(Role.Repeater).seal(ours, { kind: EnvelopeKind.CacheDatagram, channelKey: 'other', datagram: set, address: null })!);
    const dropped = (c: SessionCache) => Object.values(c.stats.dropped).reduce((a, b) => a + b, 0);
    await eventually('every one counted', () => (dropped(plain) === 5 && dropped(sealed) === 4 ? true : undefined));
    assert.deepEqual(plain.stats.dropped, { not_allowed: 1, too_short: 2, size_mismatch: 2 });
    assert.deepEqual(sealed.stats.dropped, { unsealed: 1, unknown_key: 1, bad_payload: 1, key_mismatch: 1 });
    assert.equal(plain.get(Buffer.from('injected')), undefined);
    assert.equal(sealed.get(Buffer.from('injected')), undefined);
    assert.deepEqual(sealed.ticketKeys(), before, 'the forged schedule changed nothing');
    assert.equal(plain.stats.applied + sealed.stats.applied, 0);
  });
});


// The fleet's ticket keys in real HAProxy (Debian's haproxy 2.6): a real
// repeater (the CLI) generates the schedule, a real agent (the CLI, without
// --deliver: no node on the host) writes DIR/haproxy.keys and pushes every
// change over each HAProxy's runtime API, and real `openssl s_client`
// clients resume on one HAProxy a ticket the other issued: before a
// rotation, after it, with tickets made after the push, and the HAProxy
// processes are never restarted nor reloaded.
//
// The byte layout is proven, not assumed: HAProxy's own tickets are
// decrypted here with the fleet key read as documented (HAProxy's 80-byte
// keys are name, AES, HMAC; nginx's are name, HMAC, AES).
// Skipped loudly without haproxy or openssl (required under CI).

import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { haproxyTicketKey } from '../../src/agent/haproxy-keys.js';
import { nginxTicketKey, TicketKeys } from '../../src/crypto/ticket-schedule.js';
import { decodeTicketSchedule, type TicketKey } from '../../src/wire/ticket-codec.js';
import { agent, httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { freePort } from '../helpers/net.js';
import { Haproxy, HAPROXY_HINT, haproxyAvailability, haproxyCli } from '../helpers/haproxy.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';
import { fetchTicket, opensTicket } from '../helpers/tickets.js';
import { type Cert, makeCert, opensslAvailability, sClient } from '../helpers/tls.js';

const openssl = opensslAvailability();
const tools = openssl.ok ? haproxyAvailability() : openssl;
const { skip, require: requireTools } = requirement('haproxy and openssl', 'the HAProxy ticket-key suite (test/system/tls.haproxy.test.ts)', 'Ticket keys in HAProxy (file, layout, runtime API pushes, rotation) are NOT being tested.', tools, HAPROXY_HINT);

const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);

const root = mkdtempSync(join(tmpdir(), 'udprepeater-haproxy-'));
let n = 0;
const fresh = (name: string) => join(root, `${name}-${++n}`);

/** A repeater distributing ticket keys on a sealed listener. */
async function ticketRepeater(key: string, extra: string[] = []): Promise<{ r: Running; port: number; state: string }> {
  const port = await freePort();
  const state = fresh('state');
  const r = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', state, ...extra]);
  track({ close: () => r.stop() });
  return { r, port, state };
}

/** A ticket-keys-only agent (no --deliver: no node here) writing DIR/haproxy.keys and pushing to `sockets`. */
async function ticketAgent(key: string, repeaterPort: number, dir: string, size: 48 | 80, sockets: string[]): Promise<Running> {
  const a = await agent([
    '--repeater', `127.0.0.1:${repeaterPort}`,
    '--key-file', key,
    '--local', `127.0.0.1:${await freePort()}`,
    '--channel-key', 'ssl',
    '--ticket-key-dir', dir,
    '--ticket-key-size', String(size),
    '--haproxy-check-interval', '1',
    '--haproxy-timeout', '2',
    ...sockets.flatMap((s) => ['--haproxy-socket', s]),
  ]);
  track({ close: () => a.stop() });
  return a;
}

const keysFile = (dir: string) => join(dir, 'haproxy.keys');
const fileLines = (dir: string) => readFileSync(keysFile(dir), 'utf8').split('\n').filter((l) => l !== '');

/** The key that encrypts now in the schedule the repeater saved. */
function fleetEncrypting(state: string): TicketKey {
  const keys = decodeTicketSchedule(readFileSync(join(state, 'tickets.pb')));
  assert.ok(typeof keys !== 'string');
  const held = new TicketKeys();
  held.merge(keys, Date.now());
  return held.view(Date.now()).encrypting!;
}

describe('ticket keys in HAProxy, written and pushed by an agent', { skip, timeout: 120_000 }, () => {
  let cert: Cert;
  let key: string;

  before(async () => {
    requireTools();
    cert = makeCert();
    key = await keygen();
  });

  test('haproxy.keys is the ring HAProxy 2.6 reads (80 and 48 bytes), in its layout, the middle key encrypting', async () => {
    const { port, state } = await ticketRepeater(key);
    const [d80, d48] = [fresh('keys80'), fresh('keys48')];
    const [a80, a48] = [await ticketAgent(key, port, d80, 80, []), await ticketAgent(key, port, d48, 48, [])];
    await Promise.all([a80.d.log.waitFor('haproxy ticket key file written'), a48.d.log.waitFor('haproxy ticket key file written')]);
    for (const d of [d80, d48]) {
      assert.equal(statSync(keysFile(d)).mode & 0o777, 0o600);
      assert.equal(fileLines(d).length, 3, 'previous, encrypting, next');
    }
    const enc = fleetEncrypting(state);
    const f80 = Buffer.from(fileLines(d80)[1]!, 'base64');
    const f48 = Buffer.from(fileLines(d48)[1]!, 'base64');
    assert.ok(f80.equals(haproxyTicketKey(enc, 80)), 'the middle line is the fleet key that encrypts');
    assert.ok(f48.equals(haproxyTicketKey(enc, 48)));

    const h80 = track(await Haproxy.start(fresh('haproxy80'), cert, keysFile(d80)));
    const h48 = track(await Haproxy.start(fresh('haproxy48'), cert, keysFile(d48)));
    const secret = nginxTicketKey(enc, 80); // name, HMAC, AES
    const n48 = nginxTicketKey(enc, 48); // name, AES, HMAC
    for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
      const t80 = await fetchTicket(h80.port, v);
      assert.ok(opensTicket(t80, secret.subarray(0, 16), secret.subarray(16, 48), secret.subarray(48, 80)), `HAProxy encrypts with the fleet key (${v})`);
      // The control: HAProxy's line read in nginx's 80-byte order does not open it.
      assert.equal(opensTicket(t80, f80.subarray(0, 16), f80.subarray(16, 48), f80.subarray(48, 80)), false);
      const t48 = await fetchTicket(h48.port, v);
      assert.ok(opensTicket(t48, n48.subarray(0, 16), n48.subarray(32, 48), n48.subarray(16, 32)), `48 bytes: name, AES, HMAC as nginx (${v})`);
    }
  });

  test('tickets resume across two HAProxy, across a rotation pushed at run time; the processes never restart', async () => {
    // A key encrypts for 6 s and decrypts 6 s more: HAProxy's previous key.
    const { port, state } = await ticketRepeater(key, ['--ticket-rotate', '6', '--ticket-lifetime', '6']);
    const dir = fresh('keys');
    const hdirs = [fresh('haproxyA'), fresh('haproxyB')];
    const sockets = hdirs.map((d) => join(d, 'admin.sock'));
    // Started first: the sockets do not exist yet, which is not fatal.
    const a = await ticketAgent(key, port, dir, 80, sockets);
    await a.d.log.waitFor('haproxy ticket key file written');
    const hs = [track(await Haproxy.start(hdirs[0]!, cert, keysFile(dir))), track(await Haproxy.start(hdirs[1]!, cert, keysFile(dir)))];
    const pids = hs.map((h) => h.pid);
    assert.deepEqual(await Promise.all(hs.map((h) => h.reportedPid())), pids);
    const outsiderKeys = join(root, 'outsider.keys');
    writeFileSync(outsiderKeys, [0, 1, 2].map(() => randomBytes(80).toString('base64')).join('\n') + '\n', { mode: 0o600 });
    const outsider = track(await Haproxy.start(fresh('haproxyC'), cert, outsiderKeys));

    /** Both HAProxy hold the ring in the file now; waits on the agent's push lines, never by sleeping. */
    const settled = async (why: string) => {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const want = fileLines(dir);
        const rings = await Promise.all(hs.map((h) => h.ring()));
        if (rings.every((r) => JSON.stringify(r) === JSON.stringify(want))) return want;
        assert.ok(Date.now() < deadline, `${why}: HAProxy holds ${JSON.stringify(rings)}, the file ${JSON.stringify(want)}`);
        const seen = a.d.log.length;
        await a.d.log.until('another push or check', () => (a.d.log.records.slice(seen).some((r) => r.msg === 'haproxy ticket keys pushed' || r.msg === 'haproxy holds the ticket keys' || r.msg === 'haproxy ticket key file written') ? true : undefined), 5000).catch(() => undefined);
      }
    };
    const lastWrite = () => a.d.log.matching('haproxy ticket key file written').at(-1)!;

    // The first checks need the key to stay current: with less than 4 s left
    // of this period (keys start on a 6 s grid since 1970), start after the rotation.
    const e0 = String(lastWrite()['encrypting']);
    if (6000 - (Date.now() % 6000) < 4000) await a.d.log.until('the rotation', () => (lastWrite()['encrypting'] !== e0 ? true : undefined), 10_000);
    for (const s of sockets) await a.d.log.until(`${s} in sync`, () => (a.d.log.records.some((r) => (r.msg === 'haproxy holds the ticket keys' || r.msg === 'haproxy ticket keys pushed') && r['socket'] === s) ? true : undefined), 10_000);
    await settled('at start');
    const k1 = String(lastWrite()['encrypting']);

    const files = { '1.3': join(root, 'h13'), '1.2': join(root, 'h12') };
    for (const v of ['1.3', '1.2'] as const) {
      const first = await sClient(hs[0]!.port, { version: v, sessOut: files[v] });
      assert.equal(first.reused, false);
      const other = await sClient(hs[1]!.port, { version: v, sessIn: files[v] });
      assert.equal(other.reused, true, `TLS ${v} ticket from HAProxy A resumes on HAProxy B:\n${other.output}`);
      assert.equal((await sClient(outsider.port, { version: v, sessIn: files[v] })).reused, false, 'control: another key');
    }

    // The next rotation, pushed over the runtime API: a new key encrypts, the old one still decrypts.
    const pushedBefore = a.d.log.matching('haproxy ticket keys pushed').length;
    await a.d.log.until('the rotation', () => (lastWrite()['encrypting'] !== k1 ? true : undefined), 10_000);
    await a.d.log.waitFor('haproxy ticket keys pushed', {}, { count: pushedBefore + 1, ms: 10_000 });
    const ring = await settled('after the rotation');
    const k2 = String(lastWrite()['encrypting']);
    assert.ok((lastWrite()['ring'] as string[])[0] === k1, 'the old key is the previous one');
    for (const v of ['1.3', '1.2'] as const) {
      const r = await sClient(hs[1]!.port, { version: v, sessIn: files[v] });
      assert.equal(r.reused, true, `TLS ${v} ticket from before the rotation still resumes:\n${r.output}`);
      // A ticket made after the push, by the other one.
      const after = join(root, `after-${v}`);
      assert.equal((await sClient(hs[1]!.port, { version: v, sessOut: after })).reused, false);
      const back = await sClient(hs[0]!.port, { version: v, sessIn: after });
      assert.equal(back.reused, true, `TLS ${v} ticket made by B after the push resumes on A:\n${back.output}`);
    }
    // After the push HAProxy encrypts with the fleet's key, not the previous one.
    const enc = fleetEncrypting(state);
    assert.equal(lastWrite()['encrypting'], k2);
    assert.equal(Buffer.from(ring[1]!, 'base64').subarray(0, 16).toString('hex'), enc.secret.subarray(0, 16).toString('hex'));
    for (const h of hs) {
      const t = await fetchTicket(h.port, 'TLSv1.3');
      assert.equal(t.subarray(0, 16).toString('hex'), enc.secret.subarray(0, 16).toString('hex'), 'the ticket names the key that encrypts in the fleet');
    }

    // Someone changes a ring by hand: the periodic check puts the fleet's back.
    const pushes = a.d.log.matching('haproxy ticket keys pushed', { socket: sockets[0] }).length;
    assert.match(await haproxyCli(sockets[0]!, `set ssl tls-key ${keysFile(dir)} ${randomBytes(80).toString('base64')}`), /TLS ticket key updated!/);
    await a.d.log.waitFor('haproxy ticket keys pushed', { socket: sockets[0] }, { count: pushes + 1, ms: 10_000 });
    await settled('after a change by hand');

    // The key of the first tickets expires: gone from HAProxy, and they no longer resume.
    await a.d.log.until('the expiry of the first key', () => (!(lastWrite()['ring'] as string[]).includes(k1) ? true : undefined), 15_000);
    await settled('after the expiry');
    for (const v of ['1.3', '1.2'] as const) {
      for (const h of hs) assert.equal((await sClient(h.port, { version: v, sessIn: files[v] })).reused, false, `TLS ${v} ticket after its key expired`);
    }

    // Never restarted, never reloaded: the same processes throughout.
    for (const [i, h] of hs.entries()) {
      assert.ok(h.running);
      assert.equal(await h.reportedPid(), pids[i]);
    }
    const m = await a.metrics();
    for (const s of sockets) {
      assert.equal(m.value('udprepeater_agent_haproxy_in_sync', { socket: s }), 1);
      assert.ok(m.value('udprepeater_agent_haproxy_pushes_total', { socket: s, result: 'ok' }) >= 1);
      // The agent started before HAProxy: its first check found no socket, and it carried on.
      assert.ok(m.value('udprepeater_agent_haproxy_checks_total', { socket: s, result: 'refused' }) >= 1);
      assert.equal(m.value('udprepeater_agent_haproxy_pushes_total', { socket: s, result: 'rejected' }), 0);
    }
  });

  test('a key HAProxy rejects, a file it does not know and a missing socket are counted, logged and shown', async () => {
    const { port } = await ticketRepeater(key);
    const dir = fresh('keys');
    // HAProxy H loads 48-byte keys, then the agent is restarted with 80-byte ones.
    const first = await ticketAgent(key, port, dir, 48, []);
    await first.d.log.waitFor('haproxy ticket key file written');
    const h = track(await Haproxy.start(fresh('haproxyH'), cert, keysFile(dir)));
    await first.stop();
    // G reads a copy elsewhere: the agent's file is unknown to it.
    const copyDir = fresh('copy');
    mkdirSync(copyDir);
    const copy = join(copyDir, 'haproxy.keys');
    copyFileSync(keysFile(dir), copy);
    const g = track(await Haproxy.start(fresh('haproxyG'), cert, copy));
    const missing = join(fresh('nowhere'), 'admin.sock');
    const udir = fresh('haproxyU');
    const usock = join(udir, 'admin.sock');
    const a = await ticketAgent(key, port, dir, 80, [h.socket, g.socket, missing, usock]);
    await a.d.log.waitFor('haproxy refused the ticket keys', { socket: h.socket }, { ms: 10_000 });
    await a.d.log.waitFor('haproxy refused the ticket keys', { socket: g.socket }, { ms: 10_000 });
    await a.d.log.waitFor('cannot reach haproxy to hand it the ticket keys', { socket: missing }, { ms: 10_000 });
    const m = await a.metrics();
    assert.ok(m.value('udprepeater_agent_haproxy_pushes_total', { socket: h.socket, result: 'rejected' }) >= 1, 'a key of the wrong size');
    assert.ok(m.value('udprepeater_agent_haproxy_checks_total', { socket: g.socket, result: 'rejected' }) >= 1, 'an unknown file');
    assert.ok(m.value('udprepeater_agent_haproxy_checks_total', { socket: missing, result: 'refused' }) >= 1, 'no socket');
    for (const s of [h.socket, g.socket, missing]) assert.equal(m.value('udprepeater_agent_haproxy_in_sync', { socket: s }), 0);
    const health = JSON.parse((await httpGet(a.metricsPort, '/healthz')).body) as { haproxy: Array<{ socket: string; inSync: boolean; lastError: string }> };
    const bySocket = new Map(health.haproxy.map((e) => [e.socket, e]));
    assert.match(bySocket.get(h.socket)!.lastError, /push rejected: .*wrong size/);
    assert.match(bySocket.get(g.socket)!.lastError, /check rejected: .*unable to locate/);
    assert.match(bySocket.get(missing)!.lastError, /check refused: ENOENT/);
    // No key ever reaches a log line.
    const secretLine = fileLines(dir)[1]!;
    assert.ok(!a.d.log.records.some((r) => JSON.stringify(r).includes(secretLine.slice(0, 24))));
    assert.ok(h.running && g.running);

    // HAProxy 2.6 hands the keys out and takes new ones at every level of its
    // socket, `user` included: only the socket's mode guards them.
    await a.d.log.waitFor('haproxy ticket key file written');
    const u = track(await Haproxy.start(udir, cert, keysFile(dir), { level: 'user' }));
    assert.match(await haproxyCli(usock, 'show cli level'), /^user/);
    await a.d.log.waitFor('haproxy holds the ticket keys', { socket: usock }, { ms: 10_000 });
    assert.deepEqual(await u.ring(), fileLines(dir), 'read at level user');
    assert.match(await haproxyCli(usock, `set ssl tls-key ${keysFile(dir)} ${randomBytes(80).toString('base64')}`), /TLS ticket key updated!/);
    await a.d.log.waitFor('haproxy ticket keys pushed', { socket: usock }, { ms: 10_000 });
    assert.deepEqual(await u.ring(), fileLines(dir), 'set at level user');
  });
});

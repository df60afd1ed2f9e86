// Safety: nothing that can fail is left to fail after "started" or after a
// reload was applied, nothing in a file we wrote (or someone crafted) can
// crash the daemon or keep a subscriber forever, and a failing status view
// answers 500 and leaves the daemon running (issue 8, "crashes after
// started"). Also: uWSGI signatures apply to plain subscriptions only
// ("wrong refusals"), and hostile subscriptions cost a bounded amount.

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Logger } from '../src/base/log.js';
import { StatusServer } from '../src/daemon/http.js';
import { newRegistry } from '../src/daemon/metrics.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeRegistry } from '../src/wire/registry-file.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { encodePacket } from '../src/wire/uwsgi.js';
import { agent, httpGet, keygen, serve } from './helpers/attack.js';
import { Daemon } from './helpers/daemon.js';
import { eventually, freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import { endpointOf } from '../src/wire/address.js';

const scope = new Scope();
const { sender } = scope;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);

function track<T extends { stop(): Promise<unknown> }>(r: T): T {
  scope.track({ close: () => r.stop() });
  return r;
}

/** Resolves with the exit, or null if the process still runs after `ms`. */
function exitWithin(d: Daemon, ms: number): Promise<{ code: number | null } | null> {
  return Promise.race([d.exited, new Promise<null>((r) => setTimeout(() => r(null), ms))]);
}

describe('no crash after start', () => {
  test('a --multicast-interface that is not ours is refused before start (exit 78), never after', async () => {
    const d = Daemon.spawn(['serve', '--listen', '127.0.0.1:0', '--multicast-interface', '192.0.2.77', '--to', '239.9.9.9:7000', '--metrics', 'off']);
    scope.track({ close: () => d.stop() });
    const exit = await exitWithin(d, 5000);
    const started = d.log.matching('udprepeater started').length > 0;
    console.log(JSON.stringify({ started, exit }));
    assert.equal(started, false, 'the daemon said "started" with a configuration it cannot run');
    assert.equal(exit?.code, 78);
  });

  test('the same on reload: refused with the reason, and the running config keeps forwarding', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-crash-'));
    const port = await freePort();
    const conf = join(dir, 'udprepeater.conf');
    writeFileSync(conf, `listen = 127.0.0.1:${port}\nmetrics = 127.0.0.1:0\n`);
    const d = await Daemon.serve(['-c', conf]);
    scope.track({ close: () => d.stop() });
    writeFileSync(conf, `listen = 127.0.0.1:${port}\nmetrics = 127.0.0.1:0\nmulticast-interface = 192.0.2.77\nto = 239.9.9.9:7000\n`);
    d.signal('SIGHUP');
    await d.log.waitFor('reload refused; keeping the running config');
    const rx = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), port);
    await sender.send(set('still'), port);
    assert.deepEqual((await rx.waitFor(1)).map(String), [String(set('still'))]);
    assert.equal(await exitWithin(d, 300), null, 'the daemon died after the refused reload');
  });

  test('a crafted state file (dates out of range, a far-future deadline, our own listener) is checked field by field', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-crash-state-'));
    const port = await freePort();
    const channel = `127.0.0.1:${port}`;
    const rx = await scope.receiver();
    const now = Date.now();
    const entry = (address: string, o: Partial<{ firstSeenMs: number; lastSeenMs: number; deadlineMs: number }> = {}) => ({
      channel, address, key: 'ssl', sealed: false, firstSeenMs: now - 5000, lastSeenMs: now - 1000, deadlineMs: now + 20_000, source: '127.0.0.1', origin: 0n, ...o,
    });
    writeFileSync(
      join(dir, 'registry.pb'),
      encodeRegistry({
        savedAtMs: 9e15, // beyond what a Date can hold
        subscribers: [
          entry(rx.address, { deadlineMs: now + 10 * 365 * 86400_000 }), // would never expire
          entry('127.0.0.1:9', { firstSeenMs: 9e15, lastSeenMs: 9e15 }), // dates out of range
          entry(channel), // our own listener
          entry(`[::ffff:127.0.0.1]:${port}`), // the same, mapped
        ],
      }),
    );
    const r = track(await serve(['--listen', channel, '--state-dir', dir, '--tolerance', '30']));
    const view = await httpGet(r.metricsPort, '/subscribers');
    assert.equal(view.status, 200);
    const subs = JSON.parse(view.body) as Array<{ address: string; expires: string }>;
    console.log(JSON.stringify({ restored: subs.map((s) => [s.address, s.expires]) }));
    assert.deepEqual(subs.map((s) => s.address), [rx.address], 'an entry that should have been skipped was restored');
    assert.ok(Date.parse(subs[0]!.expires) <= Date.now() + 31_000, `a restored subscriber expires at ${subs[0]!.expires}, beyond one tolerance`);
    await sender.send(set('k'), port);
    assert.equal((await rx.waitFor(1)).length, 1);
    const m = await r.metrics();
    assert.equal(m.value('udprepeater_datagrams_received_total', { kind: 'set' }), 1, 'the own-listener entry made the repeater send to itself');
  });

  test('a status view that throws answers 500 and the server goes on', async () => {
    const log = new Logger('error', 'json', { write: () => undefined });
    const status = await StatusServer.listen(endpointOf('127.0.0.1', 0, 4), newRegistry(), { '/bad': () => ({ big: 1n }), '/good': () => ({ ok: true }) }, log);
    scope.track({ close: () => status.close() });
    assert.equal((await httpGet(status.port, '/bad')).status, 500);
    assert.deepEqual(await httpGet(status.port, '/good'), { status: 200, body: '{\n "ok": true\n}\n' });
  });
});

describe('subscriptions: right refusals, bounded cost', () => {
  test('--subscriptions-sign-check applies to plain subscriptions only: an agent still subscribes sealed', async () => {
    const key = await keygen();
    const pubDir = mkdtempSync(join(tmpdir(), 'udprepeater-pubkeys-'));
    writeFileSync(join(pubDir, 'ssl.pem'), generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } }).publicKey);
    const [pp, sp, local] = [await freePort(), await freePort(), await freePort()];
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key, '--subscriptions-sign-check', `SHA256:${pubDir}`]));
    const node = await scope.receiver();
    track(await agent(['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl']));
    await eventually('the agent to be judged', async () => {
      const m = await r.metrics();
      return m.value('udprepeater_subscription_events_total', { event: 'subscribe' }) + m.value('udprepeater_subscription_events_total', { event: 'reject' }) >= 1 ? true : undefined;
    });
    const m = await r.metrics();
    console.log(JSON.stringify({ sealedSubscribed: m.value('udprepeater_subscription_events_total', { event: 'subscribe' }), badSignature: m.dropped('bad_signature') }));
    assert.equal(m.dropped('bad_signature'), 0, 'a sealed subscription was refused for lacking a uWSGI signature');
    // An unsigned plain subscription is still refused.
    const rx = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), pp);
    await eventually('the unsigned plain subscription to be refused', async () => ((await r.metrics()).dropped('bad_signature') === 1 ? true : undefined));
    await sender.send(set('k'), pp);
    assert.equal((await node.waitFor(1)).length, 1);
  });

  test('a subscription with thousands of vars is refused after the first few, without parsing the rest', async () => {
    const port = await freePort();
    const r = track(await serve(['--listen', `127.0.0.1:${port}`]));
    // 16,000 empty vars (4 bytes each) before the real ones.
    const body = Buffer.concat([Buffer.alloc(16_000 * 4), encodeSubscription({ key: 'ssl', address: '127.0.0.1:9' }).subarray(4)]);
    await sender.send(encodePacket(224, 0, body), port);
    await eventually('the subscription to be refused', async () => ((await r.metrics()).value('udprepeater_subscription_events_total', { event: 'reject' }) + (await r.metrics()).value('udprepeater_datagrams_dropped_total') >= 1 ? true : undefined));
    const m = await r.metrics();
    assert.equal(m.dropped('too_many_vars'), 1, 'not refused as too_many_vars');
    assert.equal(m.value('udprepeater_subscribers'), 0);
  });
});

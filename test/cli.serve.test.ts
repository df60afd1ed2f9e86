// The real CLI: config validation at start, config file + SIGHUP reload,
// signals, metrics and status endpoints, and the operator tools.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { Daemon, runCli } from './helpers/daemon.js';
import { freePort, Receiver, Sender } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-cli-'));
const sender = Sender.open();
const daemons: Daemon[] = [];
const receivers: Receiver[] = [];
after(async () => {
  sender.close();
  for (const r of receivers) r.close();
  for (const d of daemons) await d.stop();
});

async function serve(args: string[]): Promise<Daemon> {
  const d = await Daemon.serve(args);
  daemons.push(d);
  return d;
}
async function receiver(): Promise<Receiver> {
  const r = await Receiver.open();
  receivers.push(r);
  return r;
}
async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text() };
}

describe('refusals at start', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['a non-loopback listener without --allow', ['--listen', '0.0.0.0:0'], /refusing to listen on 0\.0\.0\.0:0 .*--allow/],
    ['--allow together with --allow-any', ['--allow', '10.0.0.0/8', '--allow-any'], /contradict/],
    ['a bad CIDR', ['--allow', '10.0.0.0/33'], /--allow "10\.0\.0\.0\/33"/],
    ['a host name', ['--listen', 'localhost:7171'], /"localhost" is not an IP address/],
    ['a --to that loops onto a listener', ['--listen', '127.0.0.1:7999', '--to', '127.0.0.1:7999'], /would loop/],
    ['a sealed listener without keys', ['--listen-sealed', '127.0.0.1:0'], /--key-file/],
    ['an unknown channel on --to', ['--to', '127.0.0.1:9,channel=nope'], /no channel named "nope"/],
    ['a non-numeric tolerance', ['--tolerance', 'soon'], /tolerance.*expects a number/],
  ];
  for (const [name, args, why] of cases) {
    test(`refuses ${name} (exit 78: systemd does not restart it)`, async () => {
      const r = await runCli(['serve', '--metrics', 'off', ...args]);
      assert.equal(r.code, 78, r.stderr);
      assert.match(r.stderr, why);
      assert.doesNotMatch(r.stderr, /Options:/, 'the whole help was printed');
    });
  }

  test('a bad flag value is refused like a bad config value: exit 78, the reason in one line', async () => {
    const r = await runCli(['serve', '--max-subscribers', 'many']);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /max-subscribers.*expects a whole number, got "many"/);
    assert.ok(r.stderr.trim().split('\n').length <= 2, r.stderr);
    const unknown = await runCli(['serve', '--listne', '127.0.0.1:0']);
    assert.equal(unknown.code, 78);
    assert.match(unknown.stderr, /unknown option '--listne'/);
  });

  test('a config value refused by the validation names the file and its line', async () => {
    const file = join(dir, 'exposed.conf');
    writeFileSync(file, '# a node-facing listener\n\nlisten = 0.0.0.0:0\n');
    const r = await runCli(['serve', '-c', file, '--metrics', 'off']);
    assert.equal(r.code, 78);
    assert.match(r.stderr, new RegExp(`${file}:3: refusing to listen on 0\\.0\\.0\\.0:0`));
  });

  test('a bad config file is refused with its name and line', async () => {
    const file = join(dir, 'bad.conf');
    writeFileSync(file, '# comment\nlisten = 127.0.0.1:0\ntolerance = soon\n');
    const r = await runCli(['serve', '-c', file]);
    assert.equal(r.code, 78);
    assert.match(r.stderr, new RegExp(`${file}:3: tolerance expects a number`));
    const unknown = join(dir, 'unknown.conf');
    writeFileSync(unknown, 'listne = 127.0.0.1:0\n');
    assert.match((await runCli(['serve', '-c', unknown])).stderr, new RegExp(`${unknown}:1: unknown option "listne"`));
    const missing = join(dir, 'missing.conf');
    assert.match((await runCli(['serve', '-c', missing])).stderr, new RegExp(`config file ${missing}: ENOENT`));
  });

  test('a port already in use is refused with the address', async () => {
    const rx = await receiver();
    const r = await runCli(['serve', '--metrics', 'off', '--listen', rx.address]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`cannot listen on ${rx.address}`));
  });
});

describe('running daemon', () => {
  test('config file, SIGHUP reload (good and bad), metrics, subscribers, SIGTERM', async () => {
    const port = await freePort();
    const a = await receiver();
    const b = await receiver();
    const file = join(dir, 'repeater.conf');
    writeFileSync(file, `[udprepeater]\nlisten = 127.0.0.1:${port}\nto = ${a.address}\ntolerance = 60\n`);
    const d = await serve(['-c', file, '--metrics', '127.0.0.1:0']);
    const mport = await d.metricsPort();

    const live = await receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: live.address }), port);
    await d.log.waitFor('subscribed', { address: live.address });
    await sender.send(encodeCacheSet(Buffer.from('k1'), Buffer.from('v1'), 0), port);
    await a.waitFor(1);
    await live.waitFor(1);

    // Good reload: a second static output appears, the live subscription stays.
    writeFileSync(file, `listen = 127.0.0.1:${port}\nto = ${a.address}\nto = ${b.address}\ntolerance = 60\n`);
    let from = d.log.length;
    d.signal('SIGHUP');
    await d.log.waitFor('config applied', {}, { from });
    await sender.send(encodeCacheDelete(Buffer.from('k1'), false), port);
    const padded = encodeCacheDelete(Buffer.from('k1'), true);
    assert.deepEqual(await b.next(), padded);
    assert.deepEqual(await live.next(), padded);

    // Bad reload: refused with the file and reason; the old config runs on.
    writeFileSync(file, `listen = 127.0.0.1:${port}\nmax-subscribers = lots\n`);
    from = d.log.length;
    d.signal('SIGHUP');
    const refused = await d.log.waitFor('reload refused; keeping the running config', {}, { from });
    assert.match(String(refused['error']), new RegExp(`${file}:2: max-subscribers`));
    await sender.send(encodeCacheSet(Buffer.from('k2'), Buffer.from('v2'), 0), port);
    await b.waitFor(2);
    await live.waitFor(3);

    const metrics = await get(mport, '/metrics');
    assert.equal(metrics.status, 200);
    for (const name of [
      `udprepeater_datagrams_received_total{channel="127.0.0.1:${port}",kind="set"} 2`,
      `udprepeater_datagrams_received_total{channel="127.0.0.1:${port}",kind="delete"} 1`,
      `udprepeater_datagrams_forwarded_total{channel="127.0.0.1:${port}"} 8`,
      `udprepeater_subscribers{channel="127.0.0.1:${port}"} 3`,
      `udprepeater_subscription_events_total{channel="127.0.0.1:${port}",event="subscribe"} 1`,
      'udprepeater_config_reloads_total{result="ok"} 1',
      'udprepeater_config_reloads_total{result="error"} 1',
      'udprepeater_fanout_seconds_count 3',
      'udprepeater_bytes_forwarded_total',
      'udprepeater_datagrams_dropped_total{',
      'process_cpu_seconds_total',
    ]) {
      assert.ok(metrics.body.includes(name), `metrics lack ${name}`);
    }
    const subs = JSON.parse((await get(mport, '/subscribers')).body) as Array<Record<string, unknown>>;
    const mine = subs.find((s) => s['address'] === live.address)!;
    assert.equal(mine['key'], 'ssl');
    assert.equal(mine['static'], false);
    assert.equal(mine['datagrams'], 3);
    assert.equal(subs.filter((s) => s['static'] === true).length, 2);
    await sender.send(encodeSubscription({ key: 'ssl', address: '10.9.9.9:4141' }), port);
    await d.log.waitFor('subscription refused', { reason: 'address_not_allowed' });
    const refusals = JSON.parse((await get(mport, '/refusals')).body) as Array<Record<string, unknown>>;
    assert.deepEqual(refusals.map((r) => [r['reason'], r['address'], r['key']]), [['address_not_allowed', '10.9.9.9:4141', 'ssl']]);
    const health = JSON.parse((await get(mport, '/healthz')).body) as Record<string, unknown>;
    assert.equal(health['status'], 'ok');
    assert.equal((await get(mport, '/nope')).status, 404);

    const exit = await d.stop();
    assert.equal(exit.code, 0);
    await d.log.waitFor('udprepeater stopped');
  });

  test('text logs when asked', async () => {
    const d = Daemon.spawn(['serve', '--metrics', 'off', '--listen', '127.0.0.1:0', '--log-format', 'text']);
    daemons.push(d);
    const line = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no log line')), 5000);
      d.child.stderr!.on('data', (s: string) => {
        if (s.includes('udprepeater started')) {
          clearTimeout(t);
          resolve(s);
        }
      });
    });
    assert.match(line, /INFO +udprepeater started version=/);
    assert.equal((await d.stop()).code, 0);
  });
});

describe('operator tools', () => {
  test('send set/del emit exactly what uWSGI sends and print it', async () => {
    const rx = await receiver();
    const before = Math.floor(Date.now() / 1000) + 300;
    const r = await runCli(['send', rx.address, 'set', 'sess1', 'hello', '--expires', '300']);
    const after = Math.floor(Date.now() / 1000) + 300;
    assert.equal(r.code, 0, r.stderr);
    const got = await rx.next();
    // What uWSGI sends (docs/PROTOCOL.md), written out independently of the encoder, for each second the command may have read.
    const uwsgi = (e: number) => Buffer.concat([Buffer.from('6f1a000a0500', 'hex'), Buffer.from('sess1'), Buffer.from('0500', 'hex'), Buffer.from('hello'), Buffer.from('0a00', 'hex'), Buffer.from(String(e))]);
    const candidates = Array.from({ length: after - before + 1 }, (_, i) => uwsgi(before + i));
    assert.ok(candidates.some((c) => c.equals(got)), `got ${got.toString('hex')}`);
    assert.match(r.stdout, /sent 30 bytes to 127\.0\.0\.1:\d+: cache set key="sess1"/);
    assert.match(r.stdout, /0000 {2}6f 1a 00 0a 05 00 73 65 73 73 31/);

    const del = await runCli(['send', rx.address, 'del', 'sess1']);
    assert.equal(del.code, 0);
    assert.deepEqual(await rx.next(), Buffer.from('6f07000b05007365737331', 'hex'));
    await runCli(['send', rx.address, 'del', 'sess1', '--padded']);
    assert.deepEqual(await rx.next(), Buffer.from('6f09000b050073657373310000', 'hex'));
  });

  test('subscribe emits the announce uWSGI sends (PROTOCOL.md) and the unsubscribe', async () => {
    const rx = await receiver();
    const r = await runCli(['subscribe', rx.address, '--key', 'ssl', '--address', '127.0.0.1:4141']);
    assert.equal(r.code, 0, r.stderr);
    const observed = Buffer.concat([
      Buffer.from('e05d0000', 'hex'),
      ...[
        ['key', 'ssl'],
        ['address', '127.0.0.1:4141'],
        ['modifier1', '0'],
        ['modifier2', '0'],
        ['cores', '1'],
        ['load', '0'],
        ['weight', '0'],
      ].flatMap(([k, v]) => [Buffer.from([k!.length, 0]), Buffer.from(k!), Buffer.from([v!.length, 0]), Buffer.from(v!)]),
    ]);
    assert.deepEqual(await rx.next(), observed);
    await runCli(['subscribe', rx.address, '--key', 'ssl', '--address', '127.0.0.1:4141', '--unsubscribe']);
    const unsub = await rx.next();
    assert.equal(unsub[3], 1);
    assert.deepEqual(unsub.subarray(4), observed.subarray(4));
  });

  test('bad tool arguments are refused', async () => {
    assert.match((await runCli(['send', '127.0.0.1:9', 'put', 'k'])).stderr, /unknown operation "put"/);
    assert.match((await runCli(['send', '127.0.0.1:9', 'set', 'k'])).stderr, /set needs a VALUE/);
    assert.match((await runCli(['subscribe', '127.0.0.1:9', '--key', 'k'])).stderr, /--address/);
  });
});

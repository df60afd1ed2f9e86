// Safety: the status port can never cost the daemon its data path. Idle or
// half-sent HTTP connections are cut off within seconds and their number is
// capped, so they cannot take the file descriptors that listeners and
// subscribers need (issue 8, "held connections").

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { httpGet } from './helpers/attack.js';
import { CLI_UNDER_TEST } from './helpers/daemon.js';
import { LogTap } from './helpers/logtap.js';
import { freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`value of ${k}`), 0);

function open(port: number): Promise<Socket> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.once('connect', () => resolve(s));
    s.once('close', () => resolve(s));
  });
}

describe('held connections', () => {
  test('300 idle connections to the status port under a 160-descriptor limit: new subscribers are still served', async () => {
    const port = await freePort();
    // node:dgram backend: there every subscriber needs a descriptor of its own.
    const child = spawn('bash', ['-c', 'ulimit -n 160 && exec "$0" "$@"', process.execPath, CLI_UNDER_TEST, 'serve', '--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', '--log-level', 'debug'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, UDPREPEATER_NATIVE: '0' },
    });
    scope.track({ close: () => child.kill('SIGKILL') });
    const tap = new LogTap();
    child.stderr.setEncoding('utf8').on('data', (d: string) => tap.feed(d));
    await tap.waitFor('udprepeater started');
    const mport = Number((await tap.waitFor('status server listening'))['port']);
    const held: Socket[] = [];
    for (let i = 0; i < 300; i++) held.push(await open(mport));
    scope.track({ close: () => held.forEach((s) => s.destroy()) });
    const alive = held.filter((s) => !s.destroyed && s.readyState === 'open').length;
    const rxs = await Promise.all(Array.from({ length: 30 }, () => scope.receiver()));
    for (const rx of rxs) await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), port);
    await tap.until('30 subscriptions judged', () => (tap.matching('subscribed').length + tap.matching('subscription refused').length + tap.matching('subscriber removed: its outlet cannot send').length >= 30 ? true : undefined));
    await sender.send(set('k'), port);
    const served = await Promise.all(rxs.map((rx) => rx.waitFor(1, 3000).then(() => true, () => false)));
    const refused = tap.records.filter((r) => /no_socket|EMFILE/.test(JSON.stringify(r))).length;
    console.log(JSON.stringify({ idleConnections: 300, stillOpenAfterAccept: alive, subscribersServed: served.filter(Boolean).length, of: rxs.length, socketRefusals: refused }));
    assert.equal(served.filter(Boolean).length, rxs.length, 'idle HTTP connections took the descriptors subscribers need');
  });

  test('an idle connection and a half-sent request are cut off within seconds', async () => {
    const { STATUS_LIMITS } = await import('../src/daemon/http.js');
    const port = await freePort();
    const child = spawn(process.execPath, [CLI_UNDER_TEST, 'serve', '--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    scope.track({ close: () => child.kill('SIGKILL') });
    const tap = new LogTap();
    child.stderr.setEncoding('utf8').on('data', (d: string) => tap.feed(d));
    const mport = Number((await tap.waitFor('status server listening'))['port']);
    const t0 = Date.now();
    const closedAt = (s: Socket) => new Promise<number>((resolve) => (s.destroyed ? resolve(Date.now()) : s.once('close', () => resolve(Date.now()))));
    const idle = await open(mport);
    const half = await open(mport);
    half.write('GET /metrics HTTP/1.1\r\nHost: x\r\n');
    const bound = STATUS_LIMITS.idleTimeoutMs + 3000;
    const times = await Promise.race([Promise.all([closedAt(idle), closedAt(half)]), new Promise<null>((r) => setTimeout(() => r(null), bound))]);
    console.log(JSON.stringify({ closedAfterMs: times?.map((t) => t - t0) ?? 'still open' }));
    assert.notEqual(times, null, `connections still open after ${bound} ms`);
    assert.equal((await httpGet(mport, '/healthz')).status, 200);
  });
});

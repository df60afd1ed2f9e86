// Load: strangers cannot starve known subscribers (issue 8, "lockout").
// 66,000 spoofed sources (127.1.0.1 up, sent from a raw socket) keep the
// rate limiter's table of strangers (65,536) full while a known node
// re-announces from its own address every 6 s: slowly enough that its bucket
// idles out between announces. It must never expire, and it must receive what
// is forwarded. The flood is paced below the repeater's capacity: this tests
// the tables, not raw throughput. Black box: the real CLI (UDPREPEATER_CLI
// may point at another build).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, serve } from '../helpers/attack.js';
import { eventually, freePort, Sender } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';
import { repoRoot } from '../helpers/uwsgi.js';

const scope = new Scope();
// A stranger's bucket idles out after BURST / RATE_PER_SOURCE = 5 s; the node
// announces every 6 s, so its own bucket idles out between announces too.
const RATE_PER_SOURCE = 2;
const BURST = 10;
const TOLERANCE_S = 7;
const ANNOUNCE_MS = 6000;
const RUN_MS = 20_000;
/** Strangers, and datagrams per second: each comes back every 4.4 s, before it could idle out, so the table of 65,536 stays full. */
const SOURCES = 66_000;
const RATE = 15_000;

/** Floods `port` from spoofed sources (test/fixtures/spoof-flood.py, a raw socket: root). */
function flood(port: number, ms: number, rate: number): Promise<{ sent: number; rounds: number }> {
  const datagram = encodeSubscription({ key: 'ssl', address: '127.250.0.1:9' }).toString('hex');
  return new Promise((resolve, reject) => {
    execFile('python3', [join(repoRoot(), 'test', 'fixtures', 'spoof-flood.py'), String(port), String(ms / 1000), String(rate), String(SOURCES), datagram], { timeout: ms + 30_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`flood failed: ${err.message} ${stderr}`)) : resolve(JSON.parse(stdout) as { sent: number; rounds: number }),
    );
  });
}

const { skip } = requirement(
  'root',
  'test/load/lockout.test.ts (spoofed-source floods)',
  'Lockout by a flood of spoofed sources is NOT being tested.',
  process.getuid?.() === 0 ? { ok: true } : { ok: false, reason: 'not root: spoofing sources needs a raw socket' },
  'run as root, as CI does',
);

describe('lockout', { skip }, () => {
  test(`strangers from ${SOURCES} spoofed addresses at ${RATE / 1000}k/s for ${RUN_MS / 1000} s: a known node re-announcing every ${ANNOUNCE_MS / 1000} s is never refused and never expires`, async () => {
    const port = await freePort();
    const r = await serve(['--listen', `127.0.0.1:${port}`, '--tolerance', String(TOLERANCE_S), '--subscribe-rate', String(RATE_PER_SOURCE), '--subscribe-burst', String(BURST), '--allow', '127.0.0.0/8', '--log-level', 'info']);
    scope.track({ close: () => r.stop() });
    const node = await scope.receiver();
    const announce = async () => {
      const s = await Sender.bound('127.0.0.1');
      await s.send(encodeSubscription({ key: 'ssl', address: node.address }), port);
      s.close();
    };
    await announce();
    await r.d.log.waitFor('subscribed', { address: node.address });
    const flooding = flood(port, RUN_MS, RATE);
    const timer = setInterval(() => void announce(), ANNOUNCE_MS);
    const result = await flooding;
    clearInterval(timer);
    // Let the repeater work through the backlog (or the kernel drop it) before the last announce.
    await eventually('the flood to be read or dropped', async () => {
      const m = await r.metrics();
      return m.value('udprepeater_datagrams_received_total') + m.value('udprepeater_listener_kernel_drops_total') >= result.sent ? true : undefined;
    }, 30_000);
    await announce();
    await scope.sender.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), port);
    const got = await node.waitFor(1).then(
      () => true,
      () => false,
    );
    const m = await r.metrics();
    const expired = r.d.log.matching('subscriber expired', { address: node.address }).length;
    const refusals = (JSON.parse((await httpGet(r.metricsPort, '/refusals')).body) as Array<{ source: string }>).filter((x) => x.source === '127.0.0.1').length;
    const drops = Object.fromEntries(
      m.text.split('\n').flatMap((l) => {
        const x = /^udprepeater_datagrams_dropped_total\{.*reason="([a-z_]+)"\} (\d+)/.exec(l);
        return x !== null && x[2] !== '0' ? [[x[1]!, Number(x[2])]] : [];
      }),
    );
    console.log(JSON.stringify({ strangers: result, nodeRefusalsInTheLast100: refusals, nodeExpired: expired, nodeServed: got, drops, kernelDrops: m.value('udprepeater_listener_kernel_drops_total'), received: m.value('udprepeater_datagrams_received_total') }));
    assert.ok(m.dropped('rate_limited') + m.dropped('registry_full') > 0, 'the flood was not refused at all: it did not test the limiter');
    assert.equal(expired, 0, 'the known node expired under the flood');
    assert.ok(got, 'the known node did not receive what was forwarded after the flood');
  });
});

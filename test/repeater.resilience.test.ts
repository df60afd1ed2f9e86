// Dead subscribers are suspended; the registry survives restarts.

import assert from 'node:assert/strict';
import { nativeStatus } from '../src/net/native.js';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { REGISTRY_FILE } from '../src/daemon/registry-store.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { decodeRegistry, encodeRegistry } from '../src/wire/registry-file.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { eventually, freePort, Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import { startRepeater } from './helpers/repeater.js';

const scope = new Scope();
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);
const sub = (address: string) => encodeSubscription({ key: 'ssl', address });

describe('dead subscribers', () => {
  test('a subscriber answering with ICMP port unreachable is suspended, then resumed by its next announce', async () => {
    const port = await freePort();
    const r = await repeater(['--listen', '127.0.0.1:0', '--dead-after', '3', '--dead-retry', '600']);
    const live = await receiver();
    for (const a of [`127.0.0.1:${port}`, live.address]) {
      const from = r.tap.length;
      await sender.send(sub(a), r.port());
      await r.tap.waitFor('subscribed', { address: a }, { from });
    }
    const ch = [...r.handle.repeater.channels.values()][0]!;
    const dead = ch.find(`127.0.0.1:${port}`)!;
    // Keep sending, one datagram per delivery to the live one, until the suspension.
    let n = 0;
    while (dead.suspendedUntil === 0) {
      assert.ok(n < 500, 'never suspended');
      await sender.send(set(`k${n++}`), r.port());
      await live.waitFor(n);
    }
    await r.tap.waitFor('subscriber suspended: unreachable', { address: `127.0.0.1:${port}` });
    const sentWhenSuspended = dead.outlet.sent;
    for (let i = 0; i < 50; i++) await sender.send(set(`after${i}`), r.port());
    await live.waitFor(n + 50);
    assert.equal(dead.outlet.sent, sentWhenSuspended, 'a suspended subscriber must cost no sends');
    assert.equal(ch.stats.events[6], 1, 'one suspend event');
    // The node comes back: a receiver on that port, and an announce.
    const back = await Receiver.open('127.0.0.1', port);
    scope.track(back);
    await sender.send(sub(`127.0.0.1:${port}`), r.port());
    await r.tap.waitFor('refreshed', { address: `127.0.0.1:${port}` });
    assert.equal(dead.suspendedUntil, 0);
    await sender.send(set('resumed'), r.port());
    assert.deepEqual(await back.next(), set('resumed'));
  });

  test('a suspension without an announce ends after --dead-retry (static outputs come back)', async () => {
    const port = await freePort();
    const r = await repeater(['--listen', '127.0.0.1:0', '--to', `127.0.0.1:${port}`, '--dead-after', '1', '--dead-retry', '0.2']);
    const e = [...r.handle.repeater.channels.values()][0]!.find(`127.0.0.1:${port}`)!;
    for (let i = 0; i < 5 && e.suspendedUntil === 0; i++) {
      await sender.send(set(`k${i}`), r.port());
      await r.tap.waitFor('subscriber unreachable', {}, { ms: 2000 }).catch(() => undefined);
    }
    await r.tap.waitFor('subscriber suspended: unreachable', { address: `127.0.0.1:${port}` });
    await r.tap.waitFor('subscriber resumed', { address: `127.0.0.1:${port}` });
    const back = await Receiver.open('127.0.0.1', port);
    scope.track(back);
    await sender.send(set('again'), r.port());
    assert.deepEqual(await back.next(), set('again'));
  });
});

describe('state across restarts', () => {
  test('a restarted repeater forwards to known subscribers before they announce again, with their original deadlines', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-state-'));
    const port = await freePort();
    const args = ['--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--tolerance', '60'];
    const first = await startRepeater(args);
    const rx = await receiver();
    await sender.send(sub(rx.address), port);
    await first.tap.waitFor('subscribed', { address: rx.address });
    const deadline = [...first.handle.repeater.channels.values()][0]!.find(rx.address)!.deadline;
    await first.close();
    const saved = decodeRegistry(readFileSync(join(dir, REGISTRY_FILE)))!;
    assert.deepEqual(saved.subscribers.map((s) => [s.address, s.key, s.deadlineMs]), [[rx.address, 'ssl', deadline]]);

    const second = await repeater(args);
    await second.tap.waitFor('restored subscribers from saved state', { restored: 1 });
    const e = [...second.handle.repeater.channels.values()][0]!.find(rx.address)!;
    assert.equal(e.deadline, deadline, 'the original deadline, not a fresh one');
    await sender.send(set('after-restart'), port);
    assert.deepEqual(await rx.next(), set('after-restart'));
  });

  test('entries past their deadline, outside the allow-list, or of unknown channels are not restored', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-state-'));
    const port = await freePort();
    const channel = `127.0.0.1:${port}`;
    const rx = await receiver();
    const now = Date.now();
    const entry = (address: string, deadlineMs: number, ch = channel) => ({
      channel: ch, address, key: 'ssl', sealed: false, firstSeenMs: now - 5000, lastSeenMs: now - 1000, deadlineMs, source: '127.0.0.1', origin: 0n,
    });
    writeFileSync(
      join(dir, REGISTRY_FILE),
      encodeRegistry({
        savedAtMs: now,
        subscribers: [
          entry(rx.address, now + 60_000),
          entry('127.0.0.1:9', now - 1),
          entry('10.1.2.3:4141', now + 60_000),
          entry('127.0.0.1:10', now + 60_000, 'gone-channel'),
        ],
      }),
    );
    const r = await repeater(['--listen', channel, '--state-dir', dir]);
    await r.tap.waitFor('restored subscribers from saved state', { saved: 4, restored: 1 });
    await sender.send(set('restored'), port);
    assert.deepEqual(await rx.next(), set('restored'));
  });

  test('a corrupt state file is reported and the repeater starts empty', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-state-'));
    writeFileSync(join(dir, REGISTRY_FILE), Buffer.from([0x12, 0xff, 0xff, 0x01]));
    const r = await repeater(['--listen', '127.0.0.1:0', '--state-dir', dir]);
    await r.tap.waitFor('saved state is corrupt; starting empty');
  });

  test('an unwritable state directory refuses the start, naming it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-state-'));
    const ro = join(dir, 'ro');
    writeFileSync(ro, 'a file, not a directory');
    await assert.rejects(startRepeater(['--listen', '127.0.0.1:0', '--state-dir', join(ro, 'sub')]), new RegExp(`--state-dir ${ro}/sub: not a writable directory`));
  });

  test('a state directory that becomes unwritable is reported and forwarding continues', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'udprepeater-state-'));
    const r = await repeater(['--listen', '127.0.0.1:0', '--state-dir', dir]);
    const rx = await receiver();
    // Root ignores directory modes; a directory standing where the temp file goes fails for everyone.
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, `${REGISTRY_FILE}.tmp`));
    chmodSync(dir, 0o500);
    await sender.send(sub(rx.address), r.port());
    await r.tap.waitFor('cannot save state; forwarding continues');
    await sender.send(set('still'), r.port());
    assert.deepEqual(await rx.next(), set('still'));
    chmodSync(dir, 0o700);
  });
});

describe('running out of sockets', () => {
  // On the node:dgram path each subscriber needs a socket (and an ephemeral
  // port). When the process runs out, a subscriber must be refused or removed
  // visibly, never kept as one that silently receives nothing. On the native
  // path subscribers share a few sending sockets: a subscription costs no
  // descriptor at all, so the same flood is served whole.
  async function underFdLimit(nativePath: boolean, body: (port: number, tap: import('./helpers/logtap.js').LogTap) => Promise<void>): Promise<void> {
    const { spawn } = await import('node:child_process');
    const { LogTap } = await import('./helpers/logtap.js');
    const { CLI } = await import('./helpers/daemon.js');
    const port = await freePort();
    const child = spawn('bash', ['-c', 'ulimit -n 48 && exec "$0" "$@"', process.execPath, CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--metrics', 'off', '--log-level', 'debug', '--subscribe-burst', '1000'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, UDPREPEATER_NATIVE: nativePath ? '1' : '0' },
    });
    const tap = new LogTap();
    child.stderr.setEncoding('utf8').on('data', (d: string) => tap.feed(d));
    try {
      await tap.waitFor('udprepeater started');
      await body(port, tap);
    } finally {
      child.kill('SIGKILL');
    }
  }

  test('subscribers beyond the open-file limit cost no descriptor on the native path: all are served', { skip: nativeStatus === 'loaded' ? false : `native path ${nativeStatus}` }, async () => {
    await underFdLimit(true, async (port, tap) => {
      const rxs = await Promise.all(Array.from({ length: 60 }, () => receiver()));
      for (const rx of rxs) await sender.send(sub(rx.address), port);
      await tap.waitFor('subscribed', { address: rxs[rxs.length - 1]!.address });
      await sender.send(set('k'), port);
      for (const rx of rxs) assert.deepEqual(await rx.waitFor(1), [set('k')], `${rx.address} was not served`);
      assert.equal(tap.matching('subscription refused').length, 0);
    });
  });

  test('subscribers beyond the open-file limit are removed and counted on the node:dgram path', async () => {
    await underFdLimit(false, async (port, tap) => {
      const rxs = await Promise.all(Array.from({ length: 40 }, () => receiver()));
      for (const rx of rxs) await sender.send(sub(rx.address), port);
      await sender.send(set('k'), port);
      await tap.waitFor('subscriber removed: its outlet cannot send');
      const subscribed = tap.matching('subscribed').map((r) => r['address']);
      assert.ok(subscribed.length >= 5, `only ${subscribed.length} subscribed`);
      // Those that kept a socket get every datagram; the others get none.
      // (A socket fails asynchronously, so removals may still be arriving:
      // wait until each receiver is served or removed.)
      await sender.send(set('after'), port);
      const removed = () => new Set(tap.matching('subscriber removed: its outlet cannot send').map((r) => r['address']));
      const served = (rx: Receiver) => rx.received.some((b) => b.equals(set('after')));
      await eventually('every receiver served, refused or removed', () =>
        rxs.every((rx) => served(rx) || !subscribed.includes(rx.address) || removed().has(rx.address)) ? true : undefined,
      );
      const kept = rxs.filter((rx) => subscribed.includes(rx.address) && !removed().has(rx.address));
      const lost = rxs.filter((rx) => !kept.includes(rx));
      assert.ok(lost.length > 0 && kept.length > 0);
      for (const rx of kept) assert.deepEqual(await rx.waitFor(2), [set('k'), set('after')], `${rx.address} kept its socket`);
      for (const rx of lost) {
        const probe = Buffer.from('probe');
        await sender.send(probe, rx.port);
        assert.deepEqual(await rx.waitFor(1), [probe], `${rx.address} has no socket yet received data`);
      }
    });
  });
});

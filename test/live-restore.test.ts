// A saved live state restored in slices with the listeners open
// (src/daemon/live-restore.ts, src/daemon/live-store.ts), over real loopback
// sockets with an in-process repeater: what the live path does meanwhile wins
// over the file, a subscriber new meanwhile is warmed from the whole state
// once the last slice is in, and a stop meanwhile saves the whole state.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CHANGED } from '../src/daemon/live-restore.js';
import { LIVE_STATE_FILE } from '../src/daemon/live-store.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { decodeLiveState, encodeLiveState } from '../src/wire/live-state-file.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;

const N = 20_000;
const name = (i: number) => `session-${String(i).padStart(8, '0')}`;
const set = (k: string, v: string) => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);

/** A state dir holding a saved state of N sets (`saved-I`) for the channel of `port`. */
function savedState(port: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-restore-'));
  const sets = Array.from({ length: N }, (_, i) => set(name(i), `saved-${i}`));
  writeFileSync(join(dir, LIVE_STATE_FILE), encodeLiveState({ savedAtMs: Date.now(), channels: [{ channel: `127.0.0.1:${port}`, sets }] }), { mode: 0o600 });
  return dir;
}

function cacheOf(datagrams: Buffer[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const d of datagrams) {
    const klen = d.readUInt16LE(4);
    const vlen = d.readUInt16LE(6 + klen);
    out.set(d.toString('latin1', 6, 6 + klen), d.toString('latin1', 8 + klen, 8 + klen + vlen));
  }
  return out;
}

describe('restoring a saved live state with the listeners open', () => {
  test('a key set live meanwhile keeps its live value; a subscriber new meanwhile is warmed from the whole state once the restore ends', async () => {
    const port = await freePort();
    const dir = savedState(port);
    const r = await scope.repeater(['--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--save-live-state']);
    await r.tap.waitFor('restoring the live state', { saved: N });
    // The newest saved key (restored last) is set live, and a subscriber arrives, while the slices run.
    const last = name(N - 1);
    await sender.send(set(last, 'live'), port);
    const rx = await scope.receiver();
    rx.socket.setRecvBufferSize(8 << 20); // the join sends at --warm-rate (20,000/s)
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address, unsubscribe: false }), port);
    await r.tap.waitFor('subscribed', { address: rx.address });
    const done = await r.tap.waitFor('restored the live state');
    // Its join waits for the last slice (a join that reached the end of a half-restored state would miss the rest).
    const started = await r.tap.waitFor('warm join started', { address: rx.address });
    assert.ok(r.tap.records.indexOf(started) > r.tap.records.indexOf(done), 'the join began before the restore ended');
    assert.equal(started['entries'], N);
    assert.ok((done['slices'] as number) > 1, 'restored in one go: nothing was interleaved');
    assert.deepEqual(done['skipped'], { [CHANGED]: 1 });
    assert.equal(done['restored'], N - 1);
    const state = r.handle.repeater.warm.state(`127.0.0.1:${port}`)!;
    assert.equal(state.size, N);
    assert.equal(cacheOf([state.get(last)!.content]).get(last), 'live', 'the file brought back an older value');
    // The subscriber holds every key, the live one live
    // (the live path sent it the live set before its join began, and the join does not send it again).
    await rx.waitFor(N, 20_000);
    const cache = cacheOf(rx.received);
    assert.equal(cache.size, N);
    assert.equal(cache.get(last), 'live');
    assert.equal(cache.get(name(0)), 'saved-0');
  });

  test('a stop during the restore applies the rest first, and saves the whole state', async () => {
    const port = await freePort();
    const dir = savedState(port);
    const r = await scope.repeater(['--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--save-live-state']);
    await r.tap.waitFor('restoring the live state', { saved: N });
    await r.close();
    const done = r.tap.matching('restored the live state')[0]!;
    assert.equal(done['restored'], N);
    const saved = decodeLiveState(readFileSync(join(dir, LIVE_STATE_FILE)))!;
    assert.equal(saved.channels[0]!.sets.length, N, 'the sets not restored yet at the stop were lost');
    assert.deepEqual(cacheOf([...saved.channels[0]!.sets]).get(name(N - 1)), `saved-${N - 1}`);
  });
});

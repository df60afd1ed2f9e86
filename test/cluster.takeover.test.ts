// What a repeater that takes over subscribers sends them (src/cluster/takeover.ts,
// README.md "Cluster mode"), without sockets: how far back a repair reaches
// when the subscribers of a repeater that died move (on the peer timer, or on
// a peer's announcement a moment before it), when nobody died, and when this
// repeater itself did not run; and the bus codec's `warmed` flag, which tells
// the others a warm join completed.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { REPAIR_MARGIN_MS, Takeovers } from '../src/cluster/takeover.js';
import { Logger } from '../src/base/log.js';
import type { Channel, Subscriber } from '../src/path/channel.js';
import { decodeBus, encodeBus } from '../src/wire/bus.js';

const TIMEOUT = 1500;
const registered = new Map<string, Subscriber>();
const ch = { name: 'ssl', registry: () => ({ get: (address: string) => registered.get(address) }) } as unknown as Channel;
/** A registry entry this repeater serves. */
function sub(n: number): Subscriber {
  const e = { n, owned: true, form: 'plain', endpoint: { text: `127.0.0.1:${4000 + n}` } } as unknown as Subscriber;
  registered.set(e.endpoint.text, e);
  return e;
}

function setup(lastHeard: Map<bigint, number>) {
  const calls: Array<{ e: Subscriber; ageMs: number }> = [];
  const t = new Takeovers({ takeover: (_c, e, ageMs) => calls.push({ e, ageMs }), onCompleted: null }, (p) => lastHeard.get(p), TIMEOUT, new Logger('error', 'json'), () => undefined);
  return { t, calls };
}

describe('cluster/takeover.ts: how far back a takeover repairs', () => {
  test('a peer that died: its subscribers are repaired back to its last heartbeat, less the margin, whether they move on the peer timer or on an announcement a moment before', () => {
    const heard = new Map([[2n, 10_000], [3n, 10_400]]);
    const { t, calls } = setup(heard);
    t.moved(new Map(), new Set([1n, 2n, 3n]), 10_500);
    // Peer 2 last heard at 10,000; timed out at 11,500; an announcement at 11,600 moves one of its subscribers before the timer runs.
    t.one(ch, sub(1), new Set([1n, 3n]), 11_600);
    assert.equal(calls[0]!.ageMs, 11_600 - 10_000 + REPAIR_MARGIN_MS, 'the repair must reach back to the dead peer\'s last heartbeat');
    // The timer, 400 ms later, moves its other subscribers: the death was noticed already, and still counts.
    t.moved(new Map([[sub(2), ch]]), new Set([1n, 3n]), 12_000);
    assert.equal(calls[1]!.ageMs, 12_000 - 10_000 + REPAIR_MARGIN_MS);
  });

  test('nobody died (a goodbye, an expired announcement): the margin alone; a death long past no longer counts', () => {
    const heard = new Map([[2n, 10_000]]);
    const { t, calls } = setup(heard);
    t.moved(new Map(), new Set([1n, 2n]), 10_000);
    t.moved(new Map(), new Set([1n]), 11_600);
    for (let now = 12_000; now <= 20_000; now += 500) t.moved(new Map(), new Set([1n]), now);
    t.one(ch, sub(1), new Set([1n]), 20_100);
    assert.equal(calls[0]!.ageMs, REPAIR_MARGIN_MS);
  });

  test('this repeater did not run for a peer timeout (SIGSTOP): nothing is repaired from its lagging state at once; at the next turn, only what is still its own', async () => {
    const heard = new Map([[2n, 10_000]]);
    const { t, calls } = setup(heard);
    const [s1, s2, s3] = [sub(1), sub(2), sub(3)];
    t.moved(new Map(), new Set([1n, 2n]), 10_000);
    // Stopped from 10,000 to 15,000: the first thing it does may be a message or the timer.
    t.one(ch, s1, new Set([1n]), 15_000);
    t.moved(new Map([[s2, ch]]), new Set([1n]), 15_001);
    assert.equal(calls.length, 0, 'repaired before it could read what queued while it was stopped');
    // The next turn: peer 2 was really gone; s2 went back to it meanwhile (say), s1 and a newly gained s3 are its own.
    (s2 as { owned: boolean }).owned = false;
    t.moved(new Map([[s3, ch]]), new Set([1n]), 15_500);
    assert.deepEqual(calls.map((c) => c.e).sort((x, y) => (x as unknown as { n: number }).n - (y as unknown as { n: number }).n), [s1, s3]);
    assert.equal(calls[0]!.ageMs, 15_500 - 10_000 + REPAIR_MARGIN_MS);
  });
});

describe('wire/bus.ts: warmed', () => {
  test('a subscriber announcement carries warmed both ways; absent reads as false', () => {
    const body = { type: 'subscriber' as const, channel: 'ssl', sealed: false, address: '127.0.0.1:4141', key: 'ssl', origin: 0n, deadlineMs: 5, isStatic: false };
    const warm = decodeBus(encodeBus({ sender: 7n, sentAtMs: 1, body: { ...body, warmed: true } }));
    const cold = decodeBus(encodeBus({ sender: 7n, sentAtMs: 1, body }));
    assert.ok(typeof warm !== 'string' && typeof cold !== 'string');
    assert.equal((warm.body as { warmed?: boolean }).warmed, true);
    assert.equal((cold.body as { warmed?: boolean }).warmed, undefined);
  });
});

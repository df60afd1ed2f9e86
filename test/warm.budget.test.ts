// The pure parts of the warm-join bound, over simulated clocks: a pacer that
// charges bytes (a large datagram leaves a debt), the table of destinations
// (one window per channel and IP, bounded, refusing when full), and what a
// join sends again after a loss (the last spans, a bounded number of times),
// and the marks that turn "changed since T" into a version (cluster takeover).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Destinations, MAX_DESTINATIONS, Pacer, REDO_BYTES } from '../src/repeater/warm-budget.js';
import { MAX_REWINDS, Redo, RUN_MS } from '../src/repeater/warm-redo.js';
import { MARK_MS, MAX_MARKS, VersionMarks } from '../src/repeater/warm-repair.js';

describe('the byte pacer', () => {
  test('a datagram larger than what is saved up is sent, and nothing more until the debt is repaid: any window gets the rate plus one burst and one datagram', () => {
    const rate = 1_000_000; // bytes per second; a burst is 5,000
    const p = new Pacer(rate);
    p.reset(0);
    const size = 60_000;
    let sent = 0;
    const at: number[] = [];
    for (let t = 1; t <= 2000; t++) {
      while (p.available(t) > 0) {
        p.take(size);
        sent += size;
        at.push(t);
      }
    }
    // 2 s at 1 MB/s: 2 MB, within one datagram.
    assert.ok(Math.abs(sent - 2 * rate) <= size, `${sent} bytes in 2 s`);
    for (let i = 1; i < at.length; i++) assert.ok(at[i]! - at[i - 1]! >= 59, 'a 60 KB datagram every 60 ms at 1 MB/s');
    assert.ok(p.msUntilOne() > 0, 'in debt right after a send');
  });
});

describe('destinations', () => {
  test('one window per channel and IP: within the cooldown a join resumes from the mark, after it starts from zero; channels are apart', () => {
    const d = new Destinations(300_000);
    const a = d.open('ssl', '10.0.0.5', 0)!;
    assert.equal(a.resumed, false);
    a.dest.through = 42;
    a.dest.redoLeft = 10;
    const again = d.open('ssl', '10.0.0.5', 299_999)!;
    assert.deepEqual([again.resumed, again.dest, again.dest.through], [true, a.dest, 42], 'the same record: every port of the address shares it');
    assert.equal(d.open('other', '10.0.0.5', 1)!.resumed, false, 'another channel, another state');
    const later = d.open('ssl', '10.0.0.5', 300_000)!;
    assert.deepEqual([later.resumed, later.dest.through, later.dest.redoLeft, later.dest.since], [false, 0, REDO_BYTES, 300_000]);
    assert.equal(later.dest, a.dest, 'a new window in place: a join of the old one still running shares it');
    d.dropChannel('other');
    assert.equal(d.size, 1);
  });

  test(`bounded: at most ${MAX_DESTINATIONS} by default; when full of live windows a new destination is refused, never one evicted`, () => {
    const d = new Destinations(1000, 3);
    for (const ip of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) assert.ok(d.open('ssl', ip, 0) !== null);
    assert.equal(d.open('ssl', '10.0.0.4', 500), null, 'full: refused');
    assert.equal(d.open('ssl', '10.0.0.1', 500)!.resumed, true, 'the ones in the table keep their window');
    // Windows that passed, with no join on them, make room; one a join still uses stays.
    const busy = d.open('ssl', '10.0.0.2', 500)!.dest;
    busy.joins = 1;
    assert.ok(d.open('ssl', '10.0.0.4', 1000) !== null);
    assert.equal(d.size, 2);
    d.prune(5000);
    assert.equal(d.size, 1, 'only the record a join still uses is kept');
  });
});

describe('what a join sends again after a loss', () => {
  test('the versions sent and delivered in the last one or two spans, widened by further losses, at most MAX_REWINDS times', () => {
    const r = new Redo(0, 100);
    r.sent(3);
    r.sent(4);
    r.tick(RUN_MS, 105); // a new span: the first one is kept as the previous
    r.sent(5);
    r.tick(2 * RUN_MS, 110); // the first span is forgotten now
    r.sent(6);
    assert.equal(r.lost(2 * RUN_MS + 10, 112), true);
    assert.deepEqual([3, 4, 5, 6, 106, 112, 105, 113].map((v) => r.again(v)), [false, false, true, true, true, true, false, false]);
    let n = 1;
    for (let i = 0; i < 10; i++) {
      r.sent(7 + i);
      if (r.lost(1000 * (i + 1), 120 + i)) n++;
    }
    assert.equal(n, MAX_REWINDS);
    assert.equal(r.again(8), true);
    assert.equal(r.again(7 + MAX_REWINDS), false, 'past the last rewind nothing more is added');
  });

  test('a loss with nothing sent or delivered in its spans sends nothing again', () => {
    const r = new Redo(0, 100);
    assert.equal(r.lost(10, 100), false);
    assert.equal(r.rewinds, 0);
  });
});

describe('version marks (what a takeover repairs)', () => {
  test('the floor for "changed since T" is below every change made after T, exact when the state has been quiet since, and never above a later change whatever the pace', () => {
    const m = new VersionMarks();
    // Changes at random times (ms), each leaving the state one version higher.
    const changes: Array<[number, number]> = [];
    let t = 1_000;
    let v = 0;
    for (let i = 0; i < 20_000; i++) {
      t += Math.floor(Math.random() * 40);
      v++;
      m.note(t, v);
      changes.push([t, v]);
    }
    for (let q = 0; q < 2000; q++) {
      const T = 1_000 + Math.floor(Math.random() * (t - 1_000));
      const floor = m.versionAt(T);
      const firstAfter = changes.find(([at]) => at > T);
      if (firstAfter !== undefined) assert.ok(floor < firstAfter[1], `floor ${floor} for ${T} hides version ${firstAfter[1]} set at ${firstAfter[0]}`);
      // Never more than MARK_MS of changes below T are repaired again.
      const lastBefore = [...changes].reverse().find(([at]) => at <= T - MARK_MS);
      if (lastBefore !== undefined) assert.ok(floor >= lastBefore[1], `floor ${floor} for ${T}: more than ${MARK_MS} ms repaired`);
    }
    // Quiet since the last change: the floor is exact.
    assert.equal(m.versionAt(t + 5_000), v);
  });

  test('a history that does not reach back to T gives 0: everything, never too little', () => {
    const m = new VersionMarks();
    for (let i = 1; i <= MAX_MARKS + 10; i++) m.note(i * MARK_MS, i);
    assert.equal(m.versionAt(5 * MARK_MS), 0, 'the oldest marks are gone');
    assert.equal(m.versionAt((MAX_MARKS + 10) * MARK_MS), MAX_MARKS + 10);
  });
});

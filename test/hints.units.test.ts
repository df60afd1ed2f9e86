// The hint tables (src/base/hints.ts) under a flood of distinct sources: the
// lines, the memory and /healthz stay bounded. The black-box tests of the
// hints themselves are in operator.test.ts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HINT_FORGET_MS, HINT_SOURCES, HintTable } from '../src/base/hints.js';
import { closest, editDistance } from '../src/config/suggest.js';
import { LogTap } from './helpers/logtap.js';

const kind = { name: 'test_kind', level: 'warn' as const, intervalMs: 60_000, whereName: 'listener', message: () => 'a test mistake' };

test('a flood of distinct sources: at most HINT_SOURCES + 1 lines per interval, the rest counted together', () => {
  const tap = new LogTap();
  const t = new HintTable(kind, tap.logger());
  const now = 1_000_000;
  for (let i = 0; i < 10_000; i++) t.note(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, '127.0.0.1:7171', now + (i % 1000));
  assert.equal(tap.matching('a test mistake').length, HINT_SOURCES + 1);
  const view = t.view(now + 1000);
  assert.equal(view.length, HINT_SOURCES + 1);
  const others = view.find((v) => v.source === null);
  assert.equal(others?.count, 10_000 - HINT_SOURCES);
  // A minute later the same flood logs one line per remembered source again, and the others once.
  for (let i = 0; i < 10_000; i++) t.note(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, '127.0.0.1:7171', now + 61_000);
  assert.equal(tap.matching('a test mistake').length, 2 * (HINT_SOURCES + 1));
  const again = tap.matching('a test mistake').at(-1)!;
  assert.equal(again['suppressed'], 10_000 - HINT_SOURCES - 1);
});

test('sources unseen for HINT_FORGET_MS leave the view and make room for new ones', () => {
  const tap = new LogTap();
  const t = new HintTable(kind, tap.logger());
  for (let i = 0; i < HINT_SOURCES; i++) t.note(`10.0.0.${i}`, 'L', 0);
  t.note('192.0.2.1', 'L', 1);
  assert.equal(t.view(1).find((v) => v.source === '192.0.2.1'), undefined, 'a full table took a new source');
  const later = HINT_FORGET_MS + 10;
  t.note('192.0.2.2', 'L', later);
  const view = t.view(later);
  assert.deepEqual(
    view.filter((v) => v.source !== null).map((v) => v.source),
    ['192.0.2.2'],
  );
});

test('did you mean: typos, swaps, underscores and pasted flags find the option; far names find nothing', () => {
  const names = ['listen', 'listen-sealed', 'metrics', 'recv-buffer', 'allow', 'allow-any', 'key-file'];
  assert.equal(editDistance('listne', 'listen'), 1);
  assert.equal(closest('listne', names), 'listen');
  assert.equal(closest('metric', names), 'metrics');
  assert.equal(closest('recv_buffer', names), 'recv-buffer');
  assert.equal(closest('--allow', names), 'allow');
  assert.equal(closest('Key-File', names), 'key-file');
  assert.equal(closest('frobnicate', names), null);
  assert.equal(closest('ab', names), null);
});

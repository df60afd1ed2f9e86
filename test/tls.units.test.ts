// The session cache's pure parts: the bounded store resumeSession answers
// from, and the peek at a session's TLS version.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SessionStore } from '../src/tls/store.js';
import { sessionProtocol, TLS1_2, TLS1_3 } from '../src/wire/tls-session.js';

test('the TLS version of a serialized session', () => {
  assert.equal(sessionProtocol(Buffer.from('307e020101020203030402c0', 'hex')), TLS1_2);
  assert.equal(sessionProtocol(Buffer.from('308182020101020203040402', 'hex')), TLS1_3);
  for (const junk of ['', '30', '3003020101', '307e020102020203030402', 'ff7e020101020203030402c0', '3083ffffff020101020203']) {
    assert.equal(sessionProtocol(Buffer.from(junk, 'hex')), null, junk);
  }
});

test('the store: bounded by entries and bytes, least recently used out first, nothing past its deadline', () => {
  const s = new SessionStore({ maxEntries: 3, maxBytes: 100 });
  const b = (t: string) => Buffer.from(t);
  for (const k of ['a', 'b', 'c']) assert.ok(s.set(b(k), b('0123456789'), 1000, 0));
  assert.ok(s.get(b('a'), 1)); // a is now the most recently used
  s.set(b('d'), b('x'), 1000, 1);
  assert.equal(s.get(b('b'), 2), undefined, 'b was the least recently used');
  assert.equal(s.size, 3);
  assert.equal(s.evictions, 1);
  assert.equal(s.set(b('huge'), Buffer.alloc(200), 1000, 2), false, 'larger than the byte bound alone');
  s.set(b('e'), Buffer.alloc(90), 1000, 2);
  assert.ok(s.byteSize <= 100);
  assert.equal(s.set(b('late'), b('v'), 5, 5), false, 'already expired');
  s.set(b('soon'), b('v'), 10, 5);
  assert.ok(s.get(b('soon'), 9));
  assert.equal(s.get(b('soon'), 10), undefined);
  const held = s.size;
  assert.equal(s.sweep(2000), held);
  assert.equal(s.size, 0);
});

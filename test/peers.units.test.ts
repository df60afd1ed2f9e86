// The per-identity table behind /healthz, the peer metrics and `udprepeater
// peers` (base/peer-stats.ts, tools/status-format.ts): bounded by the peers
// file, a removed identity kept for its revoked window and then gone, and
// what the network said printed safely.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { peerJson, PeerStats } from '../src/base/peer-stats.js';
import { formatIdentities, formatStatus, peersJson } from '../src/tools/status-format.js';

const a = { name: 'node-a', role: 'node', key: 'urid1aaaa', allow: [] };
const b = { name: 'node-b', role: 'node', key: 'urid1bbbb', allow: ['10.0.0.0/24'] };

test('rows: only listed names count; a removed name stays revoked for its window, then goes; a key replaced under a name starts a new row', () => {
  const s = new PeerStats(600_000);
  s.list([a, b], 0);
  s.seen('node-a', 1000);
  s.refused('node-a', 'replay');
  s.refused('stranger', 'auth_failed');
  s.seen('stranger', 1000);
  assert.deepEqual(s.view(1000).map((r) => r.name), ['node-a', 'node-b']);
  // node-b removed at t=2000: kept, marked, until 2000 + the window.
  s.list([a], 2000);
  s.refused('node-b', 'revoked');
  const kept = s.view(600_000).find((r) => r.name === 'node-b');
  assert.equal(kept?.revokedUntilMs, 602_000);
  assert.equal(kept?.refused.get('revoked'), 1);
  // A reload meanwhile does not extend the window.
  s.list([a], 300_000);
  assert.deepEqual(s.view(602_000).map((r) => r.name), ['node-a']);
  // Listed again within the window: trusted again, the row no longer revoked.
  s.list([a, b], 0);
  s.list([a], 10);
  s.list([a, b], 20);
  assert.equal(s.view(30).find((r) => r.name === 'node-b')?.revokedUntilMs, 0);
  // node-a's key replaced: a new row (its counters start again).
  s.list([{ ...a, key: 'urid1cccc' }, b], 40);
  const row = s.view(40).find((r) => r.name === 'node-a')!;
  assert.deepEqual([row.key, row.lastSeenMs, row.refused.size], ['urid1cccc', 0, 0]);
  assert.deepEqual(peerJson(row, false), { name: 'node-a', role: 'node', key: 'urid1cccc', allow: [], linked: false, lastSeen: null, refused: {} });
});

test('the identity table: one row per identity, revoked ones marked, strings from the network escaped; --json keeps the old list when there are no identities', () => {
  const health = {
    identity: {
      publicKey: 'urid1self',
      peersFingerprint: 'ab'.repeat(32),
      links: 1,
      peers: [
        { name: 'node-a', role: 'node', key: 'urid1rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5od37nz6u', allow: ['10.0.0.11/32'], linked: true, lastSeen: '2026-11-02T13:20:01.123Z', refused: { replay: 2, stale: 1 } },
        { name: 'node-\u001b[31mb', role: 'node', key: 'urid1b', allow: [], linked: false, lastSeen: null, refused: {}, revokedUntil: '2026-11-02T13:30:00.000Z' },
      ],
    },
  };
  const out = formatIdentities('repeater', health);
  assert.equal(
    out,
    [
      'identities: this repeater is urid1self, peers file abababababababa… (2 listed, 1 linked)',
      'NAME            ROLE  KEY                ALLOW         STATE                                 LAST SEEN             REFUSED',
      'node-a          node  urid1rkeohxlubhy…  10.0.0.11/32  linked                                2026-11-02 13:20:01Z  replay 2, stale 1',
      'node-\\x1b[31mb  node  urid1b…            any           revoked (until 2026-11-02 13:30:00Z)  never                 -',
      '',
      '',
    ].join('\n'),
  );
  assert.equal(formatIdentities('repeater', {}), '');
  assert.deepEqual(peersJson('repeater', {}), []);
  assert.deepEqual(peersJson('agent', { links: [{ repeater: 'x' }], ...health }), { identity: health.identity, repeaters: [{ repeater: 'x' }] });
});

test('status: a listener agents link to by identity says so', () => {
  const health = {
    version: '0',
    status: 'ok',
    listeners: [
      { address: '10.0.0.1:7272', bound: '10.0.0.1:7272', channel: 'ssl', sealed: true },
      { address: '10.0.0.1:7273', bound: '10.0.0.1:7273', channel: 'ssl', sealed: true, identity: true },
    ],
  };
  const out = formatStatus({ address: 'x', kind: 'repeater', health, subscribers: [], metrics: null });
  assert.match(formatStatus({ address: 'x', kind: 'agent', health: { version: '0', status: 'ok', links: [], identity: { peersFingerprint: 'ab'.repeat(32), links: 1, peers: [{}, {}] } }, subscribers: null, metrics: null }), /\nidentities: 2 listed, 1 linked \(peers file abababababababa…; udprepeater peers for each\)\n/);
  assert.match(out, /\n {2}10\.0\.0\.1:7272 {2}sealed {2}channel ssl\n {2}10\.0\.0\.1:7273 {2}sealed {2}channel ssl, by identity\n/);
});

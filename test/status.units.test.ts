// What the status page and `udprepeater status` read and print, without
// sockets: the Prometheus text reader (also as the page embeds it), text made
// safe for a terminal, the tables and the summaries, and hostile shapes of
// JSON that must print something, never throw.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { STATUS_JS } from '../src/daemon/status-script.js';
import { clean, dropsByReason, duration, formatPeers, formatStatus, formatSubscribers, identify, type Snapshot, table } from '../src/tools/status-format.js';
import { promSamples } from '../src/wire/prom-text.js';

const METRICS = [
  '# HELP udprepeater_datagrams_dropped_total Datagrams not forwarded',
  '# TYPE udprepeater_datagrams_dropped_total counter',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="not_allowed"} 12',
  'udprepeater_datagrams_dropped_total{channel="a \\"quoted\\" \\\\ name\\n",reason="not_allowed"} 3',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="rate_limited"} 3',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="loop"} 0',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="stale",} 1 1700000000000',
  'udprepeater_datagrams_dropped_totalx{channel="ssl",reason="x"} 99',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason=unquoted} 99',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="nan"} NaN',
  'udprepeater_datagrams_dropped_total{channel="ssl",reason="word"} many',
  'udprepeater_datagrams_dropped_total{__proto__="x",reason="proto"} 2',
  'udprepeater_subscribers{channel="ssl"} 2',
  '',
].join('\n');

test('promSamples reads the named metrics, unescapes label values, and skips what it cannot read', () => {
  const s = promSamples(METRICS, ['udprepeater_datagrams_dropped_total']);
  assert.deepEqual(
    s.map((x) => [x.labels['channel'], x.labels['reason'], x.value]),
    [
      ['ssl', 'not_allowed', 12],
      ['a "quoted" \\ name\n', 'not_allowed', 3],
      ['ssl', 'rate_limited', 3],
      ['ssl', 'loop', 0],
      ['ssl', 'stale', 1],
      ['ssl', 'nan', NaN],
      [undefined, 'proto', 2],
    ],
  );
  assert.equal(Object.getPrototypeOf(s.at(-1)!.labels), Object.prototype, 'a __proto__ label replaced the prototype');
  assert.deepEqual(promSamples(METRICS, ['udprepeater_subscribers']), [{ name: 'udprepeater_subscribers', labels: { channel: 'ssl' }, value: 2 }]);
});

test('promSamples never throws and returns only samples of the names asked', () => {
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.string(), fc.constantFrom('m{a="', 'm{a="x"', 'm 1', 'm{} 2', 'm{a="\\"} 3', '# m 1', 'm{a="1",b="2"} +Inf'))), (lines) => {
      for (const s of promSamples(lines.join('\n'), ['m'])) assert.equal(s.name, 'm');
    }),
  );
});

test('the page embeds the same reader, and it runs on its own (no outside names)', () => {
  assert.ok(STATUS_JS.includes(promSamples.toString()));
  const standalone = runInNewContext(`(${promSamples.toString()})`, {}) as typeof promSamples;
  assert.deepEqual(JSON.stringify(standalone(METRICS, ['udprepeater_datagrams_dropped_total'])), JSON.stringify(promSamples(METRICS, ['udprepeater_datagrams_dropped_total'])));
  // String.raw kept the script's backslashes (a regular expression without them would not match).
  assert.ok(STATUS_JS.includes(String.raw`/\.\d+Z$/`));
});

test('clean escapes control characters and bidirectional overrides, and cuts long text', () => {
  assert.equal(clean('a\u001b[31mb\u0007\u009b2J\u007f'), 'a\\x1b[31mb\\x07\\x9b2J\\x7f');
  assert.equal(clean('abc\u202eevil\u2066'), 'abc\\u202eevil\\u2066');
  assert.equal(clean('line\nbreak\ttab'), 'line\\x0abreak\\x09tab');
  assert.equal(clean('x'.repeat(100), 10), `${'x'.repeat(9)}…`);
  assert.equal(clean(null), '');
  assert.equal(clean({ a: 1 }), '{"a":1}');
  assert.equal(duration(3 * 86_400 + 2 * 3_600 + 61), '3d 2h 1m 1s');
  assert.equal(duration(59), '59s');
});

test('table aligns columns, right-aligns numbers and drops trailing spaces', () => {
  const t = table(
    [
      { title: 'NAME', get: (r) => r['n'] },
      { title: 'COUNT', get: (r) => r['c'], right: true },
      { title: 'NOTE', get: (r) => r['x'] },
    ],
    [{ n: 'a', c: 5, x: '' }, { n: 'longer', c: 12345, x: 'y' }, 'not an object'],
  );
  assert.equal(t, 'NAME    COUNT  NOTE\na' + ' '.repeat(11) + '5\nlonger  12345  y\n\n');
});

test('identify tells a repeater from an agent by what its /healthz lists, and refuses anything else', () => {
  assert.equal(identify({ status: 'ok', version: '1', listeners: [] }), 'repeater');
  assert.equal(identify({ status: 'ok', version: '1', links: [] }), 'agent');
  for (const h of [null, [], 'ok', { status: 'ok', listeners: [] }, { version: '1', links: [] }, { status: 'ok', version: 1, links: [] }, { status: 'ok', version: '1' }]) {
    assert.equal(identify(h), null, JSON.stringify(h));
  }
});

const repeater = (over: Partial<Snapshot> = {}, health: Record<string, unknown> = {}): Snapshot => ({
  address: '127.0.0.1:9171',
  kind: 'repeater',
  health: {
    status: 'ok',
    version: '0.1.0',
    uptimeSeconds: 125,
    listeners: [
      { address: '0.0.0.0:7171', bound: '0.0.0.0:7171', channel: 'ssl', sealed: false },
      { address: '0.0.0.0:7272', bound: '0.0.0.0:7272', channel: 'ssl', sealed: true },
      { address: '127.0.0.1:0', bound: '127.0.0.1:40000', channel: 'quiet', sealed: false },
    ],
    keys: ['ab12cd34', 'ef56ab78'],
    ticketKeys: [
      { id: '01', notBefore: '2026-01-01T00:00:00.000Z', notAfter: '2026-01-01T02:00:00.000Z', encrypting: false },
      { id: '02', notBefore: '2026-01-01T01:00:00.000Z', notAfter: '2026-01-01T03:00:00.000Z', encrypting: true },
    ],
    ...health,
  },
  subscribers: [
    { channel: 'ssl', address: '10.0.0.2:7000', key: 'ssl', form: 'plain', lastSeen: '2026-01-01T00:00:01.234Z', datagrams: 10, dropped: 0, errors: 0, suspended: false, warmJoin: null },
    { channel: 'ssl', address: '10.0.0.3:7000', key: 'ssl', form: 'sealed', datagrams: 0, suspended: true, suspendedUntil: '2026-01-01T00:01:00.000Z', warmJoin: null },
    { channel: 'ssl', address: '10.0.0.4:7000', key: 'ssl', form: 'sealed', static: true, warmJoin: { sent: 3, skipped: 1, total: 9 } },
  ],
  metrics: METRICS,
  ...over,
});

test('the repeater summary: listeners, subscribers per channel, cluster, keys, ticket keys, top drops', () => {
  assert.equal(
    formatStatus(repeater()),
    [
      'udprepeater repeater 0.1.0 at 127.0.0.1:9171: ok, up 2m 5s',
      'listeners:',
      '  0.0.0.0:7171  plain   channel ssl',
      '  0.0.0.0:7272  sealed  channel ssl',
      '  127.0.0.1:0  plain   channel quiet (bound 127.0.0.1:40000)',
      'subscribers: 3 on 2 channels',
      '  ssl    3 (1 plain, 2 sealed; 1 suspended; 1 warm join)',
      '  quiet  0',
      'cluster: no (a standalone repeater)',
      'keys: ab12cd34, ef56ab78',
      'ticket keys: 2, encrypting 02 until 2026-01-01 03:00:00Z',
      'drops: not_allowed 15, rate_limited 3, proto 2, stale 1',
      '',
    ].join('\n'),
  );
  const cluster = { name: 'prod', node: 'a', id: 'f00', connected: false, server: null, peers: [{ name: 'b' }, { name: 'c' }], ownedSubscribers: 2 };
  assert.match(formatStatus(repeater({}, { cluster })), /\ncluster: prod \(this repeater: a, id f00\), bus DOWN, 2 live peers \(b, c\); serves 2 of 3 subscribers\n/);
  const many = Array.from({ length: 7 }, (_, i) => `udprepeater_datagrams_dropped_total{channel="c",reason="r${i}"} ${i + 1}`).join('\n');
  assert.match(formatStatus(repeater({ metrics: many })), /\ndrops: r6 7, r5 6, r4 5, r3 4, r2 3 \(and 2 more reasons\)\n$/);
  assert.match(formatStatus(repeater({ metrics: '' }, { keys: [] })), /\nkeys: none \(secure mode off\)\n(.|\n)*drops: none\n$/);
});

test('the agent summary: channel key, repeaters, keys, drops', () => {
  const s: Snapshot = {
    address: '127.0.0.1:9172',
    kind: 'agent',
    health: { status: 'ok', version: '0.1.0', channelKey: 'ssl', origin: 'abc', keys: ['k1'], links: [{ repeater: '10.0.0.1:7272', sent: 4, received: 5, lastFrameAt: null }] },
    subscribers: null,
    metrics: 'udprepeater_agent_datagrams_dropped_total{channel="to_node",reason="auth_failed"} 2\nudprepeater_datagrams_dropped_total{channel="x",reason="loop"} 9\n',
  };
  assert.equal(
    formatStatus(s),
    'udprepeater agent 0.1.0 at 127.0.0.1:9172: ok\nchannel key: ssl, origin abc\nrepeaters:\n  10.0.0.1:7272  sent 4, received 5, no frame yet\nkeys: k1\ndrops: auth_failed 2\n',
  );
  assert.deepEqual(dropsByReason(s.metrics, 'agent'), [{ reason: 'auth_failed', count: 2 }]);
});

test('the subscriber table shows identity and served by only when the JSON carries them', () => {
  const subs = repeater().subscribers!;
  const plain = formatSubscribers(subs);
  assert.match(plain, /^CHANNEL +ADDRESS +KEY +FORM +LAST SEEN +DATAGRAMS +DROPPED +ERRORS +STATE\n/);
  assert.match(plain, /\nssl +10\.0\.0\.2:7000 +ssl +plain +2026-01-01 00:00:01Z +10 +0 +0 +live\n/);
  assert.match(plain, /\nssl +10\.0\.0\.3:7000 .* suspended until 2026-01-01 00:01:00Z\n/);
  assert.match(plain, /\nssl +10\.0\.0\.4:7000 +ssl +sealed static .* warm join 4\/9\n/);
  const withMore = formatSubscribers(subs.map((s, i) => ({ ...(s as object), ...(i === 0 ? { identity: 'node-a\u001b]0;x\u0007' } : {}), servedBy: i === 1 ? null : 'a (this repeater)' })));
  assert.match(withMore, /^CHANNEL +ADDRESS +KEY +FORM +IDENTITY +LAST SEEN .* STATE +SERVED BY\n/);
  assert.match(withMore, /node-a\\x1b\]0;x\\x07/);
  assert.match(withMore, / nobody\n/);
  assert.equal(formatSubscribers([]), 'no subscribers\n');
});

test('peers: cluster peers (identity when present), none outside cluster mode, an agent\'s repeaters', () => {
  const cluster = { name: 'prod', node: 'a', id: 'f00', connected: true, server: 'nats://10.0.0.1:4222', peers: [{ id: 'b0', name: 'b', lastHeardMs: 1234, subscribers: 7 }] };
  assert.equal(
    formatPeers('repeater', { cluster }),
    'cluster prod: this repeater is a (id f00), bus connected to nats://10.0.0.1:4222\nNAME  ID  LAST HEARD  SUBSCRIBERS\nb     b0   1.2 s ago            7\n',
  );
  assert.match(formatPeers('repeater', { cluster: { ...cluster, peers: [{ ...cluster.peers[0], identity: 'spiffe://b' }] } }), /\nNAME +ID +IDENTITY +LAST HEARD +SUBSCRIBERS\nb +b0 +spiffe:\/\/b /);
  assert.match(formatPeers('repeater', { cluster: { ...cluster, peers: [] } }), /\nno live peers\n$/);
  assert.equal(formatPeers('repeater', {}), 'not in cluster mode: this repeater has no peers\n');
  assert.equal(
    formatPeers('agent', { links: [{ repeater: '10.0.0.1:7272', advertise: '10.0.0.9:5000', sent: 1, received: 2, lastFrameAt: '2026-01-01T00:00:00.000Z' }] }),
    'REPEATER       ADVERTISED AS  SENT  RECEIVED  LAST FRAME\n10.0.0.1:7272  10.0.0.9:5000     1         2  2026-01-01 00:00:00Z\n',
  );
});

test('whatever JSON a status port answers, the summaries and tables print without throwing and without control characters', () => {
  const json = fc.jsonValue({ maxDepth: 3 });
  const nasty = fc.string({ unit: fc.constantFrom('a', ' ', '<', '\u0000', '\n', '\u001b', '\u007f', '\u0085', '\u009b', '\u202e', '\u2066') });
  const field = fc.oneof(json, fc.string({ unit: 'binary' }), nasty);
  const row = fc.dictionary(fc.constantFrom('channel', 'address', 'key', 'form', 'identity', 'servedBy', 'warmJoin', 'suspended', 'lastSeen', 'datagrams', 'name', 'peers', 'repeater'), field);
  const health = fc.record({ status: nasty, version: nasty, listeners: fc.array(row), links: fc.array(row), keys: field, ticketKeys: field, cluster: fc.oneof(row, json), channelKey: field, uptimeSeconds: field });
  fc.assert(
    fc.property(health, fc.array(fc.oneof(row, json)), fc.string(), (h, subs, metrics) => {
      const outs = [
        formatStatus({ address: 'x', kind: 'repeater', health: h, subscribers: subs, metrics }),
        formatStatus({ address: 'x', kind: 'agent', health: h, subscribers: null, metrics }),
        formatSubscribers(subs),
        formatPeers('repeater', h),
        formatPeers('agent', h),
      ];
      for (const o of outs) assert.doesNotMatch(o, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
    }),
    { numRuns: 300 },
  );
});

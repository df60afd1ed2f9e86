// Option layering and validation, without sockets.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { layerOptions, parseConfigText } from '../src/config/config-file.js';
import { defaultsOf, SERVE_OPTIONS } from '../src/config/options.js';
import { agentConfigOf, configOf } from './helpers/repeater.js';

describe('serve config', () => {
  test('the embedded default: one plain loopback listener, loopback allow-list, metrics on 9171', () => {
    const c = configOf([]);
    assert.deepEqual(c.listeners.map((l) => [l.endpoint.text, l.sealed, l.channel]), [['127.0.0.1:7171', false, '127.0.0.1:7171']]);
    assert.deepEqual(c.allow, ['127.0.0.0/8', '::1/128']);
    assert.equal(c.metrics?.text, '127.0.0.1:9171');
    assert.equal(c.toleranceMs, 30_000);
    assert.equal(c.repairDeletes, true);
  });

  test('--listen-sealed alone does not also open the default plain listener', () => {
    const c = configOf(['--listen-sealed', '127.0.0.1:7272', '--key-file', '/k']);
    assert.deepEqual(c.listeners.map((l) => [l.endpoint.text, l.sealed]), [['127.0.0.1:7272', true]]);
  });

  test('listener and output parameters', () => {
    const c = configOf([
      '--listen', '127.0.0.1:7171,channel=ssl,key=ssl',
      '--listen', '[::1]:7171,channel=ssl,key=ssl',
      '--to', '239.1.2.3:4000,ttl=4',
      '--to', '127.0.0.1:9000,channel=ssl,sealed,key=ssl',
      '--key-file', '/k',
    ]);
    assert.deepEqual(c.listeners.map((l) => [l.endpoint.text, l.channel, l.key]), [['127.0.0.1:7171', 'ssl', 'ssl'], ['[::1]:7171', 'ssl', 'ssl']]);
    assert.deepEqual(c.statics.map((s) => [s.endpoint.text, s.channel, s.ttl, s.sealed, s.key]), [
      ['239.1.2.3:4000', null, 4, false, null],
      ['127.0.0.1:9000', 'ssl', 1, true, 'ssl'],
    ]);
  });

  test('identities beside the shared key (a fleet migrating): each sealed listener in one mode', () => {
    const ids = ['--identity', '/id', '--peers', '/peers'];
    const mixed = configOf(['--listen-sealed', '127.0.0.1:1,channel=c', '--listen-sealed', '127.0.0.1:2,channel=c,identity', '--key-file', '/k', ...ids]);
    assert.deepEqual(mixed.listeners.map((l) => [l.endpoint.text, l.linked]), [['127.0.0.1:1', false], ['127.0.0.1:2', true]]);
    // Identities alone: every sealed listener links; the shared key alone: none.
    assert.deepEqual(configOf(['--listen-sealed', '127.0.0.1:1', '--listen', '127.0.0.1:3', ...ids]).listeners.map((l) => l.linked), [false, true]);
    assert.deepEqual(configOf(['--listen-sealed', '127.0.0.1:1', '--key-file', '/k']).listeners.map((l) => l.linked), [false]);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1', '--key-file', '/k', ...ids]), /--identity and --key-file\/--key-dir: give one; or, to move a fleet/);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1,identity', '--key-file', '/k']), /127\.0\.0\.1:1,identity needs --identity and --peers/);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1,identity=yes', ...ids]), /"identity" takes no value/);
    // An agent speaks one or the other.
    assert.throws(() => agentConfigOf(['--repeater', '127.0.0.1:1', '--key-file', '/k', ...ids]), /--identity and --key-file\/--key-dir: give one/);
  });

  const refusals: Array<[string, string[], RegExp]> = [
    ['multicast listener without --allow', ['--listen', '239.1.1.1:7171'], /refusing to listen on 239\.1\.1\.1:7171/],
    ['channel keys that disagree', ['--listen', '127.0.0.1:1,channel=c,key=a', '--listen', '127.0.0.1:2,channel=c,key=b'], /disagree on key/],
    ['a duplicate listener', ['--listen', '127.0.0.1:1', '--listen', '127.0.0.1:1'], /given twice/],
    ['ttl on a unicast output', ['--to', '127.0.0.1:9,ttl=3'], /multicast outputs only/],
    ['an unknown parameter', ['--listen', '127.0.0.1:1,kye=x'], /unknown parameter "kye"/],
    ['a zero port for an output', ['--to', '127.0.0.1:0'], /port must be 1-65535/],
    ['a bad sign-check spec', ['--subscriptions-sign-check', 'SHA256'], /not DIGEST:DIR/],
    ['a zero tolerance', ['--tolerance', '0'], /tolerance must be above 0/],
    ['a bad log level', ['--log-level', 'loud'], /log-level "loud"/],
    ['key= on a plain output', ['--to', '127.0.0.1:9,key=x'], /sealed outputs only/],
    ['a cluster listener without channel=', ['--listen', '127.0.0.1:1', '--cluster', 'nats://127.0.0.1:4222', '--cluster-insecure'], /channel=/],
    ['a cluster without keys or --cluster-insecure', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://127.0.0.1:4222'], /--cluster-key-file.*--cluster-insecure/],
    ['a cluster with data keys only', ['--listen', '127.0.0.1:1,channel=c', '--key-file', '/k', '--cluster', 'nats://127.0.0.1:4222'], /--cluster-key-file.*never a --key-file/],
    ['a cluster key and --cluster-insecure', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://127.0.0.1:4222', '--cluster-key-file', '/c', '--cluster-insecure'], /contradict/],
    ['a cluster server that is not a NATS URL', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'http://x:1', '--cluster-insecure'], /not nats:\/\/HOST:PORT/],
    ['a cluster name that is not a subject token', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://h:1', '--cluster-insecure', '--cluster-name', 'a.b'], /cluster-name "a\.b"/],
    ['a cluster channel that is not a subject token', ['--listen', '127.0.0.1:1,channel=a*', '--cluster', 'nats://h:1', '--cluster-insecure'], /a\*/],
    ['a password file without a user', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://h:1', '--cluster-insecure', '--cluster-password-file', '/etc/hostname'], /needs --cluster-user/],
    ['a cluster TLS certificate without its key', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://h:1', '--cluster-insecure', '--cluster-tls-cert', '/etc/hostname'], /go together/],
    ['--identity with --cluster-key-file (the identity bus needs no shared key)', ['--listen-sealed', '127.0.0.1:1,channel=c,key=c', '--identity', '/i', '--peers', '/p', '--cluster', 'nats://h:1', '--cluster-key-file', '/c'], /--cluster-key-file with --identity: the bus is sealed by identity/],
    ['--identity with --cluster-insecure', ['--listen-sealed', '127.0.0.1:1,channel=c,key=c', '--identity', '/i', '--peers', '/p', '--cluster', 'nats://h:1', '--cluster-insecure'], /--cluster-insecure with --identity/],
    ['an unreadable cluster token file', ['--listen', '127.0.0.1:1,channel=c', '--cluster', 'nats://h:1', '--cluster-insecure', '--cluster-token-file', '/nonexistent/token'], /cluster-token-file \/nonexistent\/token/],
  ];
  for (const [name, args, why] of refusals) {
    test(`refuses ${name}`, () => assert.throws(() => configOf(args), why));
  }

  test('cluster mode by identity: no cluster key, the bus sealed by the peers file', () => {
    const c = configOf(['--listen-sealed', '127.0.0.1:1,channel=ssl,key=ssl', '--identity', '/i', '--peers', '/p', '--cluster', 'nats://h:1']).cluster;
    assert.ok(c !== null);
    assert.equal(c.byIdentity, true);
    assert.deepEqual(c.keyFiles, []);
    assert.equal(c.insecure, false);
  });

  test('cluster mode: servers, name, timeouts; standalone without --cluster', () => {
    assert.equal(configOf([]).cluster, null);
    const c = configOf(['--listen', '127.0.0.1:1,channel=ssl', '--key-file', '/k', '--cluster-key-file', '/c', '--cluster', '10.0.0.1:4222', '--cluster', 'tls://nats.example:4443', '--cluster-name', 'prod-ssl', '--cluster-peer-timeout', '1.5']).cluster;
    assert.ok(c !== null);
    assert.deepEqual(c.servers.map((s) => s.text), ['nats://10.0.0.1:4222', 'tls://nats.example:4443']);
    assert.equal(c.name, 'prod-ssl');
    assert.equal(c.peerTimeoutMs, 1500);
    assert.equal(c.dedupWindowMs, 1000);
    assert.equal(c.insecure, false);
  });

  test('a non-loopback listener is accepted with an explicit allow-list or --allow-any', () => {
    assert.deepEqual(configOf(['--listen', '0.0.0.0:7171', '--allow', '10.0.0.0/8']).allow, ['10.0.0.0/8']);
    assert.equal(configOf(['--listen', '0.0.0.0:7171', '--allow-any']).allow, null);
  });
});

describe('config file', () => {
  test('parses name = value lines with comments, lists and booleans', () => {
    const raw = parseConfigText(
      '# udprepeater\n[udprepeater]\nlisten = 127.0.0.1:1\nlisten = 127.0.0.1:2\n; note\nforward-unknown = yes\nrepair-deletes = false\ntolerance = 2.5\n',
      'f.conf',
      SERVE_OPTIONS,
    );
    assert.deepEqual(raw.values, { listen: ['127.0.0.1:1', '127.0.0.1:2'], 'forward-unknown': true, 'repair-deletes': false, tolerance: 2.5 });
    assert.equal(raw.lines.get('tolerance'), 8);
  });

  test('every long flag name works, no-NAME for the options spelled --no-NAME included', () => {
    assert.deepEqual(parseConfigText('no-repair-deletes = true\n', 'f', SERVE_OPTIONS).values, { 'repair-deletes': false });
    assert.deepEqual(parseConfigText('no-repair-deletes = false\n', 'f', SERVE_OPTIONS).values, { 'repair-deletes': true });
    assert.throws(() => parseConfigText('repair-deletes = true\nno-repair-deletes = true\n', 'f', SERVE_OPTIONS), /f:2: no-repair-deletes contradicts repair-deletes/);
    assert.throws(() => parseConfigText('no-tolerance = true\n', 'f', SERVE_OPTIONS), /unknown option "no-tolerance"/);
  });

  const bad: Array<[string, RegExp]> = [
    ['listen 127.0.0.1:1', /f\.conf:1: expected "name = value"/],
    ['nope = 1', /f\.conf:1: unknown option "nope"/],
    ['\ntolerance = x', /f\.conf:2: tolerance expects a number/],
    ['tolerance = 1\ntolerance = 2', /f\.conf:2: tolerance is set twice/],
    ['[serve]', /unknown section \[serve\]/],
    ['config = other.conf', /unknown option "config"/],
    ['allow-any = maybe', /allow-any expects true or false/],
  ];
  for (const [text, why] of bad) {
    test(`refuses ${JSON.stringify(text)}`, () => assert.throws(() => parseConfigText(text, 'f.conf', SERVE_OPTIONS), why));
  }

  test('command-line values override the file, lists included', () => {
    const file = parseConfigText('listen = 127.0.0.1:1\ntolerance = 5\n', 'f', SERVE_OPTIONS);
    const merged = layerOptions(defaultsOf(SERVE_OPTIONS), file.values, { listen: ['127.0.0.1:9'] });
    assert.deepEqual(merged['listen'], ['127.0.0.1:9']);
    assert.equal(merged['tolerance'], 5);
  });
});

describe('agent config', () => {
  const base = ['--repeater', '10.0.0.1:7272', '--deliver', '127.0.0.1:4141', '--channel-key', 'ssl', '--key-file', '/k'];
  const agent = (args: string[]) => agentConfigOf(args);

  test('defaults', () => {
    const c = agent(base);
    assert.equal(c.local.text, '127.0.0.1:7170', 'the agent and a repeater on its defaults can share a host');
    assert.equal(c.bind.text, '0.0.0.0:0');
    assert.equal(c.subscribeIntervalMs, 10_000);
    assert.equal(c.advertise, null);
  });

  test('identities beside the shared key (a fleet migrating): each sealed listener in one mode', () => {
    const ids = ['--identity', '/id', '--peers', '/peers'];
    const mixed = configOf(['--listen-sealed', '127.0.0.1:1,channel=c', '--listen-sealed', '127.0.0.1:2,channel=c,identity', '--key-file', '/k', ...ids]);
    assert.deepEqual(mixed.listeners.map((l) => [l.endpoint.text, l.linked]), [['127.0.0.1:1', false], ['127.0.0.1:2', true]]);
    // Identities alone: every sealed listener links; the shared key alone: none.
    assert.deepEqual(configOf(['--listen-sealed', '127.0.0.1:1', '--listen', '127.0.0.1:3', ...ids]).listeners.map((l) => l.linked), [false, true]);
    assert.deepEqual(configOf(['--listen-sealed', '127.0.0.1:1', '--key-file', '/k']).listeners.map((l) => l.linked), [false]);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1', '--key-file', '/k', ...ids]), /--identity and --key-file\/--key-dir: give one; or, to move a fleet/);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1,identity', '--key-file', '/k']), /127\.0\.0\.1:1,identity needs --identity and --peers/);
    assert.throws(() => configOf(['--listen-sealed', '127.0.0.1:1,identity=yes', ...ids]), /"identity" takes no value/);
    // An agent speaks one or the other.
    assert.throws(() => agentConfigOf(['--repeater', '127.0.0.1:1', '--key-file', '/k', ...ids]), /--identity and --key-file\/--key-dir: give one/);
  });

  const refusals: Array<[string, string[], RegExp]> = [
    ['no repeater', base.slice(2), /at least one --repeater/],
    ['a non-loopback --local', [...base, '--local', '10.0.0.5:7171'], /--local 10\.0\.0\.5:7171 must be a loopback address/],
    ['a non-loopback --deliver', [...base.slice(0, 2), '--deliver', '10.0.0.5:4141', ...base.slice(4)], /--deliver .* must be a loopback address/],
    ['no key', base.slice(0, 6), /at least one --key-file/],
    ['no channel key', [...base.slice(0, 4), ...base.slice(6)], /needs --channel-key/],
    ['mixed families', [...base, '--repeater', '[::1]:7272'], /all be IPv4 or all IPv6/],
    ['a bind of the other family', [...base, '--bind', '[::]:0'], /not IPv4 like the repeaters/],
  ];
  for (const [name, args, why] of refusals) {
    test(`refuses ${name}`, () => assert.throws(() => agent(args), why));
  }
});

// `udprepeater status`, `subscribers` and `peers`, run as real processes
// against real daemons, against a closed port, and against servers that are
// not udprepeater (an HTTP server, a non-HTTP one, a silent one): the right
// summary and tables, network strings made safe for a terminal, and exit
// codes and messages a script and an operator can act on, within a bound.

import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, freeAddress, keygen, type Running, serve } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
/** A key with terminal escapes: ESC [ (red text) and the 8-bit CSI (clear screen). Keys travel as latin1. */
const ESCAPE_KEY = 'ssl\u001b[31mred\u009b2J';

async function up(started: Promise<Running>): Promise<Running> {
  const r = await started;
  scope.track({ close: () => r.stop() });
  return r;
}

/** Listens on a free loopback port; closed, with every connection it accepted, after the file's tests. */
async function listening(srv: Server): Promise<number> {
  const conns = new Set<Socket>();
  srv.on('connection', (c: Socket) => conns.add(c));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  scope.track({
    close: () => {
      for (const c of conns) c.destroy();
      return new Promise((resolve) => srv.close(resolve));
    },
  });
  return (srv.address() as AddressInfo).port;
}

test('against a repeater: the summary, the subscriber table and --json; a key with terminal escapes is printed escaped', async () => {
  const listen = await freePort();
  const r = await up(serve(['--listen', `127.0.0.1:${listen},channel=ssl`]));
  const a = await scope.receiver();
  const b = await scope.receiver();
  await sender.send(encodeSubscription({ key: 'ssl', address: a.address }), listen);
  await r.d.log.waitFor('subscribed', { address: a.address });
  await sender.send(encodeSubscription({ key: ESCAPE_KEY, address: b.address }), listen);
  await r.d.log.waitFor('subscribed', { address: b.address });
  await sender.send(encodeSubscription({ key: 'ssl', address: 'not an address' }), listen);
  await r.d.log.waitFor('subscription refused', { reason: 'bad_address' });
  await sender.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), listen);
  await a.waitFor(1);
  const metrics = `127.0.0.1:${r.metricsPort}`;

  const status = await runCli(['status', '--metrics', metrics]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, new RegExp(`^udprepeater repeater \\S+ at ${metrics}: ok, up `));
  assert.match(status.stdout, new RegExp(`\\n  127\\.0\\.0\\.1:${listen}  plain   channel ssl\\n`));
  assert.match(status.stdout, /\nsubscribers: 2 on 1 channel\n  ssl  2 \(2 plain\)\n/);
  assert.match(status.stdout, /\ncluster: no \(a standalone repeater\)\n/);
  assert.match(status.stdout, /\nkeys: none \(secure mode off\)\n/);
  assert.match(status.stdout, /\ndrops: bad_address 1\n/);

  const subs = await runCli(['subscribers', '--metrics', metrics]);
  assert.equal(subs.code, 0, subs.stderr);
  const rows = subs.stdout.trimEnd().split('\n');
  assert.match(rows[0]!, /^CHANNEL +ADDRESS +KEY +FORM +LAST SEEN +DATAGRAMS +DROPPED +ERRORS +STATE$/);
  assert.equal(rows.length, 3);
  assert.match(subs.stdout, new RegExp(`\\nssl +${a.address.replace(/\./g, '\\.')} +ssl +plain +\\S+ \\S+ +1 +0 +0 +live\\n`));
  assert.ok(subs.stdout.includes('ssl\\x1b[31mred\\x9b2J'), `the key is not shown escaped:\n${subs.stdout}`);
  assert.doesNotMatch(subs.stdout, /[\u001b\u009b]/, 'a terminal escape from the network reached the terminal');

  const json = await runCli(['subscribers', '--metrics', metrics, '--json']);
  assert.equal(json.code, 0);
  const list = JSON.parse(json.stdout) as Array<{ address: string; key: string }>;
  assert.deepEqual(list.map((s) => s.key).sort(), ['ssl', ESCAPE_KEY].sort());
  const sj = JSON.parse((await runCli(['status', '--metrics', metrics, '--json'])).stdout) as { daemon: string; subscribers: { total: number }; drops: unknown };
  assert.equal(sj.daemon, 'repeater');
  assert.equal(sj.subscribers.total, 2);
  assert.deepEqual(sj.drops, [{ reason: 'bad_address', count: 1 }]);

  const peers = await runCli(['peers', '--metrics', metrics]);
  assert.equal(peers.code, 0);
  assert.equal(peers.stdout, 'not in cluster mode: this repeater has no peers\n');
  assert.equal((await runCli(['peers', '--metrics', metrics, '--json'])).stdout, '[]\n');
});

test('against an agent: the summary and its repeaters; subscribers says an agent has none', async () => {
  const key = await keygen();
  const rep = await up(serve(['--listen-sealed', `${await freeAddress()},key=ssl`, '--key-file', key]));
  const sealed = String((await rep.d.log.waitFor('listening', { sealed: true }))['bound']);
  const a = await up(agent(['--repeater', sealed, '--key-file', key, '--local', await freeAddress(), '--deliver', await freeAddress(), '--channel-key', 'ssl']));
  const metrics = `127.0.0.1:${a.metricsPort}`;
  const status = await runCli(['status', '--metrics', metrics]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, new RegExp(`^udprepeater agent \\S+ at ${metrics}: ok\\nchannel key: ssl, origin [0-9a-f]+\\nrepeaters:\\n  ${sealed}  sent \\d+, received \\d+, `));
  assert.match(status.stdout, /\nkeys: [0-9a-f]{8}\n/);
  const peers = await runCli(['peers', '--metrics', metrics]);
  assert.equal(peers.code, 0, peers.stderr);
  assert.match(peers.stdout, new RegExp(`^REPEATER +ADVERTISED AS +SENT +RECEIVED +LAST FRAME\\n${sealed} `));
  const subs = await runCli(['subscribers', '--metrics', metrics]);
  assert.equal(subs.code, 64);
  assert.equal(subs.stdout, '');
  assert.match(subs.stderr, new RegExp(`${metrics} is an agent \\(channel key ssl\\): agents keep no subscriber list`));
});

test('nothing answers: exit 69, naming the address and suggesting --metrics', async () => {
  const closed = `127.0.0.1:${await freePort()}`;
  for (const cmd of ['status', 'subscribers', 'peers']) {
    const r = await runCli([cmd, '--metrics', closed]);
    assert.equal(r.code, 69, `${cmd}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, new RegExp(`^udprepeater: ${closed} does not answer \\(ECONNREFUSED\\); .*--metrics HOST:PORT\\n$`));
  }
});

test('a server that accepts and never answers: exit 69 within --timeout', async () => {
  const port = await listening(createTcpServer(() => undefined));
  const t0 = Date.now();
  const r = await runCli(['status', '--metrics', `127.0.0.1:${port}`, '--timeout', '1']);
  const ms = Date.now() - t0;
  assert.equal(r.code, 69, r.stderr);
  assert.match(r.stderr, /did not answer GET \/healthz within 1 s \(--timeout\)/);
  assert.ok(ms < 3000, `took ${ms} ms`);
});

test('something else answers: exit 76 for an HTTP server that is not udprepeater, JSON that is not ours, and a server that does not speak HTTP', async () => {
  const web = await listening(createHttpServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>')));
  const notFound = await listening(createHttpServer((_req, res) => res.writeHead(404, { 'content-type': 'text/plain' }).end('no\n')));
  const otherJson = await listening(createHttpServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok","version":"1.0"}')));
  const ssh = await listening(createTcpServer((s) => s.end('SSH-2.0-OpenSSH_9.2\r\n')));
  const cases: Array<[number, RegExp]> = [
    [web, /GET \/healthz: content type "text\/html", not JSON/],
    [notFound, /GET \/healthz: HTTP 404/],
    [otherJson, /GET \/healthz: JSON that is not a repeater's or an agent's health/],
    [ssh, /answers, but not in HTTP/],
  ];
  for (const [port, why] of cases) {
    const r = await runCli(['subscribers', '--metrics', `127.0.0.1:${port}`]);
    assert.equal(r.code, 76, `port ${port}: ${r.code} ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^udprepeater: 127\\.0\\.0\\.1:${port} answers, but not`));
    assert.match(r.stderr, why);
  }
});

test('a bad --metrics or --timeout is a usage error (64); the default address is the daemons\' default', async () => {
  const bad = await runCli(['status', '--metrics', 'nowhere']);
  assert.equal(bad.code, 64);
  assert.match(bad.stderr, /--metrics "nowhere" has no port/);
  assert.equal((await runCli(['peers', '--timeout', '0'])).code, 64);
  const help = await runCli(['status', '--help']);
  assert.match(help.stdout, /--metrics <HOST:PORT>[^"]*default:\s+"127\.0\.0\.1:9171"/);
});

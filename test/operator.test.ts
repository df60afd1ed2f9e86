// What a new operator trips over, through the real CLI and real sockets:
// misconfigurations said in a log line and in /healthz instead of only
// counted (an agent pointed at a plain listener, a node sending plain to a
// sealed listener, an --allow that misses a source), a mistyped config-file
// option, keygen into a missing folder, a metrics port already in use.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { Daemon, runCli, spawnAgent } from './helpers/daemon.js';
import { newKeyFile } from './helpers/keys.js';
import type { Record as LogRecord } from './helpers/logtap.js';
import { eventually, freePort, Receiver, Sender } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'udprepeater-operator-'));
const daemons: Daemon[] = [];
const closers: Array<{ close(): void }> = [];
after(async () => {
  for (const c of closers) c.close();
  for (const d of daemons) await d.stop();
});

type Json = { [k: string]: unknown };
type Hint = Json & { hint: string; source: string | null; count: number; message: string };

async function getJson(port: number, path: string): Promise<unknown> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200, path);
  return res.json();
}
const healthOf = async (port: number) => (await getJson(port, '/healthz')) as Json & { hints?: Hint[]; status: string };
const hintsOf = async (port: number, kind: string) => ((await healthOf(port)).hints ?? []).filter((h) => h.hint === kind);
const hintLines = (d: Daemon, kind: string, fields: Json = {}) =>
  d.log.records.filter((r: LogRecord) => r['hint'] === kind && Object.entries(fields).every(([k, v]) => r[k] === v));
const waitHintLine = (d: Daemon, kind: string, fields: Json = {}) => d.log.until(`a "${kind}" hint line`, () => hintLines(d, kind, fields)[0]);

describe('config files', () => {
  test('a mistyped option is refused with the closest known name, the file and the line (exit 78)', async () => {
    const file = join(dir, 'typo.conf');
    writeFileSync(file, '# the repeater\nlisten = 127.0.0.1:0\nmetric = off\n');
    const r = await runCli(['serve', '-c', file]);
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, new RegExp(`${file}:3: unknown option "metric"; did you mean "metrics"\\?`));

    writeFileSync(file, 'recv_buffer = 1048576\n');
    const underscore = await runCli(['serve', '-c', file]);
    assert.equal(underscore.code, 78);
    assert.match(underscore.stderr, new RegExp(`${file}:1: unknown option "recv_buffer"; did you mean "recv-buffer"\\?`));

    // An agent's option in a repeater's file: said as such, not guessed at.
    writeFileSync(file, 'listen = 127.0.0.1:0\nrepeater = 127.0.0.1:7272\n');
    const other = await runCli(['serve', '-c', file]);
    assert.equal(other.code, 78);
    assert.match(other.stderr, new RegExp(`${file}:2: "repeater" is an option of \`udprepeater agent\`, not of \`udprepeater serve\``));

    // Nothing close: no guess.
    writeFileSync(file, 'frobnicate = 1\n');
    const far = await runCli(['serve', '-c', file]);
    assert.equal(far.code, 78);
    assert.match(far.stderr, new RegExp(`${file}:1: unknown option "frobnicate"\\n`));
  });
});

describe('keygen', () => {
  test('into a folder that does not exist: refused, naming the folder and how to make it; nothing is created', async () => {
    const keys = join(dir, 'etc', 'keys');
    const file = join(keys, '2026-11.key');
    const r = await runCli(['keygen', file]);
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, new RegExp(`the folder ${keys} does not exist`));
    assert.match(r.stderr, new RegExp(`install -d -m 0750 -g udprepeater ${keys}`));
    assert.equal(existsSync(join(dir, 'etc')), false, 'keygen created a folder');

    mkdirSync(keys, { recursive: true });
    const ok = await runCli(['keygen', file]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(file).size, 32);
  });
});

describe('a metrics port already in use', () => {
  let blocker: Server;
  let port: number;
  before(async () => {
    port = await freePort();
    blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
    closers.push(blocker);
  });

  test('serve exits naming the address and suggesting --metrics', async () => {
    const r = await runCli(['serve', '--listen', '127.0.0.1:0', '--metrics', `127.0.0.1:${port}`]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${port}: the address is in use .*--metrics .*--metrics off`));
  });

  test('agent exits naming the address and suggesting --metrics', async () => {
    const node = await Receiver.open();
    closers.push(node);
    const r = await runCli([
      'agent',
      '--repeater', '127.0.0.1:7272',
      '--key-file', newKeyFile(),
      '--local', `127.0.0.1:${await freePort()}`,
      '--deliver', node.address,
      '--channel-key', 'ssl',
      '--metrics', `127.0.0.1:${port}`,
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${port}: the address is in use .*--metrics .*--metrics off`));
  });
});

describe('misconfigurations said, not only counted', () => {
  const key = newKeyFile();
  let repeater: Daemon;
  let plain: string;
  let sealed: string;
  let mport: number;
  let agent: Daemon;
  before(async () => {
    plain = `127.0.0.1:${await freePort()}`;
    sealed = `127.0.0.1:${await freePort()}`;
    repeater = await Daemon.serve(['--listen', plain, '--listen-sealed', sealed, '--key-file', key, '--allow', '127.0.0.1/32', '--metrics', '127.0.0.1:0']);
    daemons.push(repeater);
    mport = await repeater.metricsPort();
  });

  test('an agent pointed at a plain listener: the repeater names the mistake; the agent is degraded with the likely causes', async () => {
    const node = await Receiver.open();
    closers.push(node);
    agent = await spawnAgent([
      '--repeater', plain,
      '--key-file', key,
      '--local', `127.0.0.1:${await freePort()}`,
      '--deliver', node.address,
      '--channel-key', 'ssl',
      '--subscribe-interval', '0.1',
      '--metrics', '127.0.0.1:0',
    ]);
    daemons.push(agent);
    const line = await waitHintLine(repeater, 'sealed_on_plain', { listener: plain });
    assert.equal(line.level, 'warn');
    assert.match(line.msg, /sealed frame reached a plain listener.*--listen-sealed/);
    const [h] = await eventually('the hint in /healthz', async () => {
      const hs = await hintsOf(mport, 'sealed_on_plain');
      return hs.length > 0 && hs[0]!.count >= 3 ? hs : undefined;
    });
    assert.equal(h!.source, '127.0.0.1');
    assert.equal(h!['listener'], plain);
    assert.equal(hintLines(repeater, 'sealed_on_plain').length, 1, 'one line per source per minute');

    // The agent: announces go out, nothing ever comes back.
    const aport = await agent.metricsPort();
    const health = await eventually('the agent degraded', async () => {
      const hz = await healthOf(aport);
      return hz.status === 'degraded' ? hz : undefined;
    });
    const silent = health.hints!.find((x) => x.hint === 'no_frames_from_repeater');
    assert.ok(silent !== undefined, JSON.stringify(health.hints));
    assert.equal(silent['repeater'], plain);
    assert.match(silent.message, /--listen-sealed.*--key-file.*--advertise/);
    const logged = await waitHintLine(agent, 'no_frames_from_repeater', { repeater: plain });
    assert.equal(logged.level, 'warn');
  });

  test('a frame from an address that is no --repeater (a repeater answering from another of its addresses): the agent says so', async () => {
    const started = await agent.log.waitFor('agent started');
    const socketPort = Number(String((started['advertised'] as string[])[0]).split(':').pop());
    const elsewhere = await Sender.bound('127.0.0.5');
    closers.push(elsewhere);
    await elsewhere.send(Buffer.concat([Buffer.from('ur'), Buffer.alloc(62)]), socketPort);
    const line = await waitHintLine(agent, 'not_a_repeater', { source: '127.0.0.5' });
    assert.match(line.msg, /no --repeater.*name that address in --repeater/);
    const aport = await agent.metricsPort();
    const h = (await hintsOf(aport, 'not_a_repeater'))[0];
    assert.equal(h?.source, '127.0.0.5');
    assert.equal(h.count, 1);
  });

  test('a node sending plain uWSGI datagrams straight to a sealed listener: named in a log line and /healthz', async () => {
    const node = Sender.open();
    closers.push(node);
    const port = Number(sealed.split(':')[1]);
    for (let i = 0; i < 3; i++) await node.send(encodeCacheSet(Buffer.from(`k${i}`), Buffer.from('v'), 0), port);
    const line = await waitHintLine(repeater, 'plain_on_sealed', { listener: sealed });
    assert.match(line.msg, /plain uWSGI datagram reached a sealed listener.*--local/);
    const [h] = await eventually('three sightings', async () => {
      const hs = await hintsOf(mport, 'plain_on_sealed');
      return hs[0]?.count === 3 ? hs : undefined;
    });
    assert.equal(h!.source, '127.0.0.1');
  });

  test('an agent reaching a sealed listener through a port forward without public=: the repeater names the fix', async () => {
    // The forward: what the agent sends to 127.0.0.1:FWD goes on to the sealed listener, as NAT would carry it.
    const forward = createSocket('udp4');
    closers.push(forward);
    await new Promise<void>((r) => forward.bind(0, '127.0.0.1', r));
    const fwd = `127.0.0.1:${forward.address().port}`;
    const [host, port] = sealed.split(':');
    forward.on('message', (m) => forward.send(m, Number(port), host));
    const node = await Receiver.open();
    closers.push(node);
    const a = await spawnAgent(['--repeater', fwd, '--key-file', key, '--local', `127.0.0.1:${await freePort()}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.2']);
    daemons.push(a);
    const line = await waitHintLine(repeater, 'other_receiver', { listener: sealed });
    assert.equal(line.level, 'warn');
    assert.match(line.msg, /names another receiver.*public=ADDR/);
    const [h] = await eventually('the hint in /healthz', async () => {
      const hs = await hintsOf(mport, 'other_receiver');
      return hs.length > 0 ? hs : undefined;
    });
    assert.equal(h!.source, '127.0.0.1');
  });

  test('a source outside --allow: one line per source per minute, counted in /healthz, listed in /refusals', async () => {
    const stranger = await Sender.bound('127.0.0.3');
    closers.push(stranger);
    const port = Number(plain.split(':')[1]);
    for (let i = 0; i < 10; i++) await stranger.send(encodeCacheSet(Buffer.from(`k${i}`), Buffer.from('v'), 0), port);
    const line = await waitHintLine(repeater, 'not_allowed', { source: '127.0.0.3' });
    assert.match(line.msg, /not in --allow \(127\.0\.0\.1\/32\).*add its network/);
    await eventually('ten refusals counted', async () => ((await hintsOf(mport, 'not_allowed')).find((h) => h.source === '127.0.0.3')?.count === 10 ? true : undefined));
    const refusals = (await getJson(mport, '/refusals')) as Json[];
    const r = refusals.find((x) => x['reason'] === 'not_allowed' && x['source'] === '127.0.0.3');
    assert.ok(r !== undefined, JSON.stringify(refusals));
    assert.equal(r['listener'], plain);
    assert.equal(r['count'], 10);
    assert.ok(Math.abs(Date.parse(String(r['at'])) - Date.now()) < 60_000, String(r['at']));
    // Every line written before a later one has been read: a fresh hint from
    // another source proves the nine other refusals logged nothing.
    const other = await Sender.bound('127.0.0.4');
    closers.push(other);
    await other.send(encodeCacheSet(Buffer.from('x'), Buffer.from('v'), 0), port);
    await waitHintLine(repeater, 'not_allowed', { source: '127.0.0.4' });
    assert.equal(hintLines(repeater, 'not_allowed', { source: '127.0.0.3' }).length, 1);
  });
});

describe('a receive buffer the kernel caps', () => {
  test('asking for more than net.core.rmem_max is said, with what the socket got; asking for less is not', async () => {
    const rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8'));
    // Linux reports twice what it grants: asked 1.5x the cap, it reports 2x the cap, more than was asked.
    const over = Math.floor(rmemMax * 1.5);
    const capped = await Daemon.serve(['--listen', '127.0.0.1:0', '--recv-buffer', String(over), '--metrics', 'off', '--log-level', 'debug']);
    daemons.push(capped);
    const warned = await capped.log.waitFor('receive buffer smaller than asked: raise net.core.rmem_max');
    assert.equal(warned['asked'], over);
    assert.equal(warned['got'], rmemMax);
    const under = Math.floor(rmemMax / 2);
    const fine = await Daemon.serve(['--listen', '127.0.0.1:0', '--recv-buffer', String(under), '--metrics', 'off', '--log-level', 'debug']);
    daemons.push(fine);
    await fine.log.waitFor('listening');
    assert.equal(fine.log.matching('receive buffer smaller than asked: raise net.core.rmem_max').length, 0);
  });
});

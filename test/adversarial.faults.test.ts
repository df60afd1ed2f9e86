// Faults: subscribers that close mid-stream or vanish without unsubscribing,
// and SIGHUP with a broken config file or a broken key file (mode 0644,
// garbage, missing) on a spawned repeater and a spawned agent: each keeps
// running on the old config and keys, says why in its log (naming the file),
// and traffic keeps flowing through the old keys. (Many dead subscribers at
// once: test/load/dead-subscribers.test.ts; an unwritable state directory:
// repeater.resilience.test.ts.)

import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { formatKeyId, KeyRing, keyIdOf } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { EnvelopeKind, Role } from '../src/wire/envelope.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { nativeStatus } from '../src/net/native.js';
import { EscapeTrap, ledgerFromMetrics, ledgerOf, nonZero, parseMetrics } from './helpers/adversarial.js';
import { Daemon } from './helpers/daemon.js';
import { newKeyFile } from './helpers/keys.js';
import { freePort, Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import type { TestRepeater } from './helpers/repeater.js';

const scope = new Scope(() => trap.dispose());
const { sender } = scope;
const receiver = (host?: string) => scope.receiver(host);
const repeater = (args: string[]) => scope.repeater(args);

const trap = new EscapeTrap();
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-faults-'));
before(() => sodiumReady());
const only = (r: TestRepeater) => [...r.handle.repeater.channels.values()][0]!;
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from('v'), 0);
const keyOf = (d: Buffer) => d.subarray(6, 6 + d.readUInt16LE(4)).toString('latin1');

/** A repeater under test, in-process or spawned, as the mid-stream scenario needs it. */
interface Target {
  readonly label: string;
  readonly port: number;
  subscribed(address: string, from: number): Promise<unknown>;
  logLength(): number;
  /** Per-subscriber counters: copies sent, send errors, copies dropped, suspended. */
  state(address: string): Promise<{ sent: number; errors: number; dropped: number; suspended: boolean }>;
  suspensions(address: string): number;
  stats(): Promise<{ dropped: Record<string, number>; events: Record<string, number> }>;
  escaped(): string[];
}

async function inProcess(args: string[]): Promise<Target> {
  const r = await repeater(args);
  const ch = () => only(r);
  return {
    label: `in-process (${nativeStatus === 'loaded' ? 'native path' : 'node:dgram path'})`,
    port: r.port(),
    subscribed: (address, from) => r.tap.waitFor('subscribed', { address }, { from }),
    logLength: () => r.tap.length,
    state: async (address) => {
      const e = ch().find(address)!;
      return { sent: e.outlet.sent, errors: e.outlet.errors, dropped: e.outlet.dropped, suspended: e.suspendedUntil !== 0 };
    },
    suspensions: (address) => r.tap.matching('subscriber suspended: unreachable', { address }).length,
    stats: async () => {
      const l = ledgerOf(ch().stats);
      return { dropped: l.dropped, events: l.events };
    },
    escaped: () => trap.errors,
  };
}

async function spawned(args: string[], env: NodeJS.ProcessEnv, label: string): Promise<Target> {
  const port = await freePort();
  const d = Daemon.spawn(['serve', '--log-level', 'debug', '--log-format', 'json', '--listen', `127.0.0.1:${port}`, '--metrics', '127.0.0.1:0', ...args], env);
  scope.track({ close: () => d.stop() });
  await d.log.waitFor('udprepeater started');
  const mport = await d.metricsPort();
  const get = async (path: string) => (await fetch(`http://127.0.0.1:${mport}${path}`, { signal: AbortSignal.timeout(5000) })).text();
  return {
    label,
    port,
    subscribed: (address, from) => d.log.waitFor('subscribed', { address }, { from }),
    logLength: () => d.log.length,
    state: async (address) => {
      const e = (JSON.parse(await get('/subscribers')) as Array<Record<string, unknown>>).find((x) => x['address'] === address)!;
      return { sent: e['datagrams'] as number, errors: e['errors'] as number, dropped: e['dropped'] as number, suspended: e['suspended'] as boolean };
    },
    suspensions: (address) => d.log.matching('subscriber suspended: unreachable', { address }).length,
    stats: async () => {
      const l = ledgerFromMetrics(parseMetrics(await get('/metrics')), `127.0.0.1:${port}`);
      return { dropped: l.dropped, events: l.events };
    },
    escaped: () => d.log.matching('fatal error, exiting').map((x) => String(x['error'])),
  };
}

/**
 * 16 subscribers; every 100 datagrams three of them close their sockets
 * without a word while traffic continues. The 4 that stay must get every
 * datagram in order; each dead one must be suspended after a handful of
 * sends (--dead-after 3), and cost nothing after that.
 */
async function midStream(t: Target): Promise<void> {
  const DEAD_AFTER = 3;
  const stayers = await Promise.all([1, 2, 3, 4].map(() => receiver()));
  const leavers = await Promise.all(Array.from({ length: 12 }, () => receiver()));
  for (const a of [...stayers, ...leavers].map((x) => x.address)) {
    const from = t.logLength();
    await sender.send(encodeSubscription({ key: 'ssl', address: a }), t.port);
    await t.subscribed(a, from);
  }
  const addressOf = new Map(leavers.map((l) => [l, l.address]));
  const closedAt = new Map<Receiver, number>();
  const TOTAL = 1200;
  for (let i = 0; i < TOTAL; i++) {
    await sender.send(set(`d${i}`), t.port);
    if (i % 20 === 19) for (const s of stayers) await s.waitFor(i + 1);
    if (i % 100 === 99 && closedAt.size < leavers.length) {
      for (const l of leavers.filter((x) => !closedAt.has(x)).slice(0, 3)) {
        await l.waitFor(i + 1);
        closedAt.set(l, i + 1);
        l.close();
      }
    }
  }
  for (const s of stayers) await s.waitFor(TOTAL);
  // ICMP errors come back asynchronously: give the last suspensions a moment (bounded).
  const states = async () => Promise.all(leavers.map((l) => t.state(addressOf.get(l)!)));
  const deadline = Date.now() + 2000;
  let after = await states();
  while (after.some((a) => !a.suspended) && Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 50));
    after = await states();
  }
  const attempts = after.map((a, i) => a.sent + a.errors + a.dropped - closedAt.get(leavers[i]!)!);
  const stats = await t.stats();
  console.log(`${t.label}: ${JSON.stringify({ datagrams: TOTAL, stayers: stayers.length, leavers: leavers.length, sendsAfterClose: attempts, dropped: nonZero(stats.dropped), events: nonZero(stats.events) })}`);
  assert.deepEqual(t.escaped(), []);
  for (const s of stayers) assert.deepEqual(s.received.map(keyOf), Array.from({ length: TOTAL }, (_, i) => `d${i}`), `${s.address} lost or reordered datagrams`);
  // Before closing, each leaver had received everything up to that point.
  for (const l of leavers) assert.deepEqual(l.received.slice(0, closedAt.get(l)!).map(keyOf), Array.from({ length: closedAt.get(l)! }, (_, i) => `d${i}`));
  for (const [i, a] of after.entries()) {
    // The native backend reads ICMP answers once per receive batch (up to 32 datagrams), not per datagram.
    const bound = 4 * DEAD_AFTER + (t.label.includes('native') ? 32 : 0);
    assert.ok(attempts[i]! <= bound, `${t.label}: dead subscriber ${addressOf.get(leavers[i]!)} cost ${attempts[i]} sends after it closed (suspended: ${a.suspended})`);
    assert.ok(a.suspended, `${t.label}: dead subscriber ${addressOf.get(leavers[i]!)} was not suspended`);
  }
  for (const l of leavers) assert.equal(t.suspensions(addressOf.get(l)!), 1);
  assert.equal(stats.events['suspend'], leavers.length);
}

const DEAD_ARGS = ['--dead-after', '3', '--dead-retry', '600', '--subscribe-burst', '1000'];

describe('subscribers that die', () => {
  test('receivers closing mid-stream, vanishing without unsubscribing (in-process): the others get every datagram in order, the dead are suspended and cost no sends', async () => {
    await midStream(await inProcess(['--listen', '127.0.0.1:0', ...DEAD_ARGS]));
    trap.check();
  });

  test('the same with the real binary on the node:dgram path (UDPREPEATER_NATIVE=0)', async () => {
    await midStream(await spawned(DEAD_ARGS, { UDPREPEATER_NATIVE: '0' }, 'real binary, node:dgram path'));
  });

});

// ---------------------------------------------------------------- SIGHUP with broken files

interface Breakage {
  what: string;
  apply(): void;
  /** What the refusal must say. */
  why: RegExp;
  undo(): void;
}

/** The ways a reload can find its files broken; `conf` is rewritten by `good()`. */
function breakages(conf: string, good: () => void, keyFile: string): Breakage[] {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return [
    {
      what: 'a config file with a syntax error',
      apply: () => writeFileSync(conf, 'this line has no equals sign\n'),
      why: new RegExp(`${esc(conf)}:1: expected "name = value"`),
      undo: good,
    },
    {
      what: 'a config file naming an unknown option',
      apply: () => writeFileSync(conf, 'no-such-option = 1\n'),
      why: new RegExp(`${esc(conf)}:1: unknown option "no-such-option"`),
      undo: good,
    },
    {
      what: 'a key file readable by others (0644)',
      apply: () => chmodSync(keyFile, 0o644),
      why: new RegExp(`key file ${esc(keyFile)}: group or others can access it`),
      undo: () => chmodSync(keyFile, 0o600),
    },
    {
      what: 'a key file with garbage in it',
      apply: () => {
        renameSync(keyFile, `${keyFile}.saved`);
        writeFileSync(keyFile, 'not a key at all\n', { mode: 0o600 });
      },
      why: new RegExp(`key file ${esc(keyFile)}: not a 32-byte key`),
      undo: () => renameSync(`${keyFile}.saved`, keyFile),
    },
    {
      what: 'a missing key file',
      apply: () => renameSync(keyFile, `${keyFile}.saved`),
      why: new RegExp(`key file ${esc(keyFile)}: ENOENT`),
      undo: () => renameSync(`${keyFile}.saved`, keyFile),
    },
  ];
}

describe('SIGHUP with broken files', () => {
  test('the real repeater keeps its config and keys, says why naming the file, and sealed traffic keeps flowing', async () => {
    const key = newKeyFile();
    const keyFile = join(dir, 'repeater.key');
    copyFileSync(key, keyFile);
    chmodSync(keyFile, 0o600);
    const ring = KeyRing.load([key]);
    const port = await freePort();
    const ref = await receiver();
    const conf = join(dir, 'repeater.conf');
    const good = () => writeFileSync(conf, `listen-sealed = 127.0.0.1:${port}\nkey-file = ${keyFile}\nto = ${ref.address},sealed\nmetrics = 127.0.0.1:0\n`);
    good();
    const d = await Daemon.serve(['-c', conf]);
    scope.track({ close: () => d.stop() });
    const mport = await d.metricsPort();
    const src = new SecureSession(Role.Agent);
    const opener = new SecureSession(Role.Agent);
    let n = 0;
    /** A frame sealed with the original key goes in; the copy out opens with the original key. */
    const flows = async (why: string) => {
      const datagram = set(`flow-${++n}`);
      await sender.send(src.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram, address: null })!, port);
      const out = await ref.next().catch((err: Error) => assert.fail(`${why}: ${err.message}`));
      const env = opener.open(ring, out, 30_000);
      assert.ok(typeof env !== 'string', `${why}: the output does not open with the original key (${String(env)})`);
      assert.deepEqual(env.datagram, datagram, why);
    };
    await flows('before any reload');
    const cases = breakages(conf, good, keyFile);
    for (const c of cases) {
      c.apply();
      const from = d.log.length;
      d.signal('SIGHUP');
      const refused = await d.log.waitFor('reload refused; keeping the running config', {}, { from });
      assert.match(String(refused['error']), c.why, `${c.what}: the refusal does not say why`);
      assert.equal(d.log.matching('config applied', {}, from).length, 0);
      await flows(`after a reload with ${c.what}`);
      c.undo();
    }
    // The same files, repaired: the reload goes through (so the refusals above were the files' doing).
    const from = d.log.length;
    d.signal('SIGHUP');
    await d.log.waitFor('config applied', {}, { from });
    await flows('after a good reload');
    const metrics = parseMetrics(await (await fetch(`http://127.0.0.1:${mport}/metrics`, { signal: AbortSignal.timeout(5000) })).text());
    const reloads = (result: string) => metrics.find((s) => s.name === 'udprepeater_config_reloads_total' && s.labels['result'] === result)?.value;
    console.log(`repeater reloads: refused ${reloads('error')}, applied ${reloads('ok')}; refusals: ${d.log.matching('reload refused; keeping the running config').map((x) => x['error']).join(' | ')}`);
    assert.equal(reloads('error'), cases.length);
    assert.equal(reloads('ok'), 1);
    assert.equal(d.child.exitCode, null);
    assert.equal((await d.stop()).code, 0);
    ring.destroy();
  });

  test('the real agent keeps its config and keys, says why naming the file, and traffic keeps flowing both ways', async () => {
    const key = newKeyFile();
    const ring = KeyRing.load([key]);
    // The repeater (in-process) and a sealed peer subscribed to it: the far side of the agent.
    const r = await repeater(['--listen-sealed', '127.0.0.1:0', '--key-file', key]);
    const peer = await receiver();
    const peerSession = new SecureSession(Role.Agent);
    await sender.send(peerSession.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: peer.address })!, r.port());
    await r.tap.waitFor('subscribed', { address: peer.address });

    const keyFile = join(dir, 'agent.key');
    copyFileSync(key, keyFile);
    chmodSync(keyFile, 0o600);
    const [local, bind] = [await freePort(), await freePort()];
    const node = await receiver();
    const conf = join(dir, 'agent.conf');
    const good = () =>
      writeFileSync(
        conf,
        `repeater = 127.0.0.1:${r.port()}\nlocal = 127.0.0.1:${local}\nbind = 127.0.0.1:${bind}\ndeliver = ${node.address}\nchannel-key = ssl\nkey-file = ${keyFile}\nlog-format = json\n`,
      );
    good();
    const a = Daemon.spawn(['agent', '-c', conf]);
    scope.track({ close: () => a.stop() });
    await a.log.waitFor('udprepeater agent running');
    await r.tap.waitFor('subscribed', { address: `127.0.0.1:${bind}` });
    let n = 0;
    const flows = async (why: string) => {
      // node -> agent (seals with its key) -> repeater -> peer
      const up = set(`up-${++n}`);
      await sender.send(up, local);
      const frame = await peer.next().catch((err: Error) => assert.fail(`${why} (node to repeater): ${err.message}`));
      const env = peerSession.open(ring, frame, 30_000);
      assert.ok(typeof env !== 'string', `${why}: ${String(env)}`);
      assert.deepEqual(env.datagram, up, why);
      // peer -> repeater -> agent (opens with its key) -> node
      const down = set(`down-${n}`);
      await sender.send(peerSession.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: down, address: null })!, r.port());
      const got = await node.next().catch((err: Error) => assert.fail(`${why} (repeater to node): ${err.message}`));
      assert.deepEqual(got, down, why);
    };
    await flows('before any reload');
    const cases = breakages(conf, good, keyFile);
    for (const c of cases) {
      c.apply();
      const from = a.log.length;
      a.signal('SIGHUP');
      const refused = await a.log.waitFor('reload refused; keeping the running config', {}, { from });
      assert.match(String(refused['error']), c.why, `${c.what}: the refusal does not say why`);
      await flows(`after a reload with ${c.what}`);
      c.undo();
    }
    const from = a.log.length;
    a.signal('SIGHUP');
    const applied = await a.log.waitFor('config applied', {}, { from });
    assert.deepEqual((applied['keys'] as Array<{ id: string }>).map((k) => k.id), [formatKeyId(keyIdOf(new Uint8Array(readFileSync(keyFile))))]);
    await flows('after a good reload');
    console.log(`agent refusals: ${a.log.matching('reload refused; keeping the running config').map((x) => x['error']).join(' | ')}`);
    assert.equal(a.child.exitCode, null);
    assert.equal((await a.stop()).code, 0);
    trap.check();
    ring.destroy();
  });
});

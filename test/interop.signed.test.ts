// Signed subscriptions with real uWSGI 2.0 nodes: a repeater (the real CLI)
// with --subscriptions-sign-check SHA256:DIR accepts on its plain listener
// only announces signed (`subscribe2 = ...,sign=SHA256:private.pem`) with the
// private key whose public half is DIR/<key>.pem, refuses the rest, and
// refuses a captured announce replayed later.
//
// Skipped loudly when uWSGI or its python3 plugin is missing, unless
// UDPREPEATER_REQUIRE_UWSGI=1 (CI), where a missing uWSGI fails the run.

import assert from 'node:assert/strict';
import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { Daemon, runCli } from './helpers/daemon.js';
import { eventually, Receiver, Sender } from './helpers/net.js';
import { requirement } from './helpers/requirement.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability, sessionBytes, sessionId, untilSynced, PROPAGATE_MS } from './helpers/uwsgi.js';

const TOLERANCE_S = 5;
const SUBSCRIBE_FREQ_S = 1;
const BLOCKSIZE = 4096;
/** Bound on any propagation over loopback (normally a few milliseconds). */
/** Bound on a repeater event that follows a uWSGI announce (one per second). */
const ANNOUNCE_MS = 10_000;

const { skip, require: requireUwsgi } = requirement(
  'real uWSGI interop',
  'the signed-subscription real-uWSGI suite (test/interop.signed.test.ts)',
  'Signed subscriptions with real uWSGI nodes are NOT being tested.',
  uwsgiAvailability(),
  INSTALL_HINT,
);
const opts = { skip, timeout: 30_000 };
const HOOK = { timeout: 45_000 };


/** An RSA key pair as PEM: what `openssl genrsa` + `openssl rsa -pubout` give an operator. */
function rsaPair(): { privateKey: string; publicKey: string } {
  return generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

/**
 * The vars of a subscription datagram with their offsets, read here rather
 * than with src/wire so the checks below do not trust the code under test.
 */
function subscriptionVars(m: Buffer): Array<{ key: string; value: Buffer; start: number }> {
  assert.equal(m[0], 224, 'modifier1 224 (subscription)');
  assert.equal(m.readUInt16LE(1), m.length - 4, 'datasize');
  const out: Array<{ key: string; value: Buffer; start: number }> = [];
  for (let i = 4; i < m.length; ) {
    const start = i;
    const kl = m.readUInt16LE(i);
    const key = m.toString('latin1', i + 2, i + 2 + kl);
    i += 2 + kl;
    const vl = m.readUInt16LE(i);
    out.push({ key, value: m.subarray(i + 2, i + 2 + vl), start });
    i += 2 + vl;
  }
  return out;
}

function varOf(m: Buffer, name: string): Buffer {
  const v = subscriptionVars(m).find((x) => x.key === name);
  assert.ok(v !== undefined, `no "${name}" var`);
  return v.value;
}

/** Checks a signed announce as PROTOCOL.md describes it; returns its `unix`. */
function checkSigned(m: Buffer, publicKey: string): number {
  const vars = subscriptionVars(m);
  const last = vars[vars.length - 1]!;
  assert.equal(last.key, 'sign', '`sign` is the last var');
  assert.equal(vars[vars.length - 2]!.key, 'unix', '`unix` precedes `sign`');
  assert.ok(verify('sha256', m.subarray(4, last.start), publicKey, last.value), 'RSA PKCS#1 v1.5 SHA-256 over the bytes after the header up to `sign`');
  return Number(vars[vars.length - 2]!.value.toString('latin1'));
}

describe('signed subscriptions with real uWSGI nodes', () => {
  let work: string;
  let pubDir: string;
  let privateKey: string;
  let otherKey: string;
  let publicKey: string;
  let rep: Daemon;
  let repAddress: string;
  let repPort: number;
  let metricsPort: number;
  /** Poses as a second subscription server of node A: records the exact datagrams uWSGI sends. */
  let capture: Receiver;
  const sender = Sender.open();
  const nodes: UwsgiNode[] = [];
  /** a, b sign with the right key (b reloads on SIGTERM); c signs with another key; d does not sign. */
  let a: UwsgiNode, b: UwsgiNode, c: UwsgiNode;
  const receivers: Receiver[] = [];

  async function scrape(): Promise<string> {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(3000) });
    assert.equal(res.status, 200);
    return res.text();
  }

  /** udprepeater_datagrams_dropped_total{reason}, summed over channels. */
  async function dropped(reason: string): Promise<number> {
    let n = 0;
    const re = new RegExp(`^udprepeater_datagrams_dropped_total\\{[^}]*reason="${reason}"[^}]*\\} (\\S+)$`, 'gm');
    for (const m of (await scrape()).matchAll(re)) n += Number(m[1]);
    return n;
  }

  async function subscribed(): Promise<string[]> {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/subscribers`, { signal: AbortSignal.timeout(3000) });
    assert.equal(res.status, 200);
    return ((await res.json()) as Array<{ address: string }>).map((s) => s.address).sort();
  }

  /** The first datagram at index >= `from` of `rx` that satisfies `pred`, as it arrives. */
  async function nextMatching(rx: Receiver, from: number, pred: (m: Buffer) => boolean, ms = ANNOUNCE_MS): Promise<Buffer> {
    const deadline = Date.now() + ms;
    for (let i = from; ; i++) {
      const all = await rx.waitFor(i + 1, Math.max(1, deadline - Date.now()));
      if (pred(all[i]!)) return all[i]!;
    }
  }

  /**
   * Proves `victim` got nothing through the repeater: a session written
   * through `via` reaches `witness`, which means the repeater's fan-out of it
   * is over; then a marker sent straight to the victim's cache-udp-server
   * queues behind anything the repeater sent it. Once the victim holds the
   * marker, it has applied everything sent before, and the session is absent.
   */
  async function assertReceivesNothing(victim: UwsgiNode, via: UwsgiNode, witness: UwsgiNode): Promise<void> {
    const key = sessionId();
    const value = sessionBytes(600);
    await via.set(key, value, 300);
    await untilSynced(witness, key, value);
    const marker = sessionId();
    const mv = sessionBytes(32);
    await sender.send(encodeCacheSet(marker, mv, 0), Number(victim.udpAddress.split(':')[1]));
    await untilSynced(victim, marker, mv);
    assert.equal(await victim.get(key), null, `${victim.name} received a session through the repeater`);
  }

  async function startNodes(list: Array<Parameters<typeof UwsgiNode.start>[0]>): Promise<UwsgiNode[]> {
    const started = await Promise.allSettled(list.map((o) => UwsgiNode.start({ blocksize: BLOCKSIZE, subscribeFreq: SUBSCRIBE_FREQ_S, ...o })));
    for (const r of started) if (r.status === 'fulfilled') nodes.push(r.value);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    return started.map((r) => (r as PromiseFulfilledResult<UwsgiNode>).value);
  }

  before(async () => {
    if (skip) return;
    requireUwsgi();
    work = mkdtempSync(join(tmpdir(), 'udprepeater-signed-'));
    pubDir = join(work, 'pub');
    mkdirSync(pubDir);
    const good = rsaPair();
    publicKey = good.publicKey;
    privateKey = join(work, 'private.pem');
    writeFileSync(privateKey, good.privateKey, { mode: 0o600 });
    // The subscription key is "ssl": the repeater verifies with DIR/ssl.pem.
    writeFileSync(join(pubDir, 'ssl.pem'), good.publicKey);
    otherKey = join(work, 'other.pem');
    writeFileSync(otherKey, rsaPair().privateKey, { mode: 0o600 });

    rep = await Daemon.serve([
      '--listen', '127.0.0.1:0',
      '--tolerance', String(TOLERANCE_S),
      '--metrics', '127.0.0.1:0',
      '--subscriptions-sign-check', `SHA256:${pubDir}`,
    ]);
    repPort = await rep.portOf('127.0.0.1:0');
    repAddress = `127.0.0.1:${repPort}`;
    metricsPort = await rep.metricsPort();
    capture = await Receiver.open();

    [a, b, c] = (await startNodes([
      { name: 'signed-a', repeater: repAddress, subscribeTo: [repAddress, capture.address], sign: `SHA256:${privateKey}` },
      { name: 'signed-b', repeater: repAddress, sign: `SHA256:${privateKey}`, dieOnTerm: false },
      { name: 'other-key-c', repeater: repAddress, sign: `SHA256:${otherKey}` },
    ])) as [UwsgiNode, UwsgiNode, UwsgiNode];
    await Promise.all([a, b].map((n) => rep.log.waitFor('subscribed', { address: n.udpAddress, key: 'ssl', form: 'plain' }, { ms: ANNOUNCE_MS })));
  }, HOOK);

  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    killAllUwsgi();
    if (rep !== undefined) await rep.stop();
    capture?.close();
    for (const r of receivers) r.close();
    sender.close();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }, HOOK);

  test('nodes signing with the key whose public half is DIR/ssl.pem are subscribed; the other key is not', opts, async () => {
    assert.deepEqual(await subscribed(), [a.udpAddress, b.udpAddress].sort());

    // What uWSGI sends: PROTOCOL.md's signed announce, checked independently.
    const announce = await nextMatching(capture, 0, (m) => m[3] === 0);
    const unix = checkSigned(announce, publicKey);
    assert.ok(Math.abs(unix - Date.now() / 1000) < 5, `unix ${unix} is the node's clock`);
    assert.equal(varOf(announce, 'address').toString(), a.udpAddress);

    // `udprepeater subscribe --sign` emits the same datagram, up to unix and sign.
    const tool = await Receiver.open();
    receivers.push(tool);
    const r = await runCli(['subscribe', tool.address, '--key', 'ssl', '--address', a.udpAddress, '--sign', `SHA256:${privateKey}`]);
    assert.equal(r.code, 0, r.stderr);
    const emitted = await tool.next();
    checkSigned(emitted, publicKey);
    const shape = (m: Buffer) => subscriptionVars(m).map((v) => (v.key === 'unix' || v.key === 'sign' ? v.key : `${v.key}=${v.value.toString('latin1')}`));
    assert.deepEqual(shape(emitted), shape(announce));
    assert.equal(emitted[3], announce[3]);
  });

  test('(1) a session set through one signed node is read through the other', opts, async () => {
    const k1 = sessionId();
    const v1 = sessionBytes(1200);
    await a.set(k1, v1, 300);
    await untilSynced(b, k1, v1);
    const k2 = sessionId();
    const v2 = sessionBytes(BLOCKSIZE);
    await b.set(k2, v2, 300);
    await untilSynced(a, k2, v2);
  });

  test('(2) a node signing with another private key is refused (bad_signature) and receives nothing', opts, async () => {
    await rep.log.waitFor('subscription refused', { reason: 'bad_signature', address: c.udpAddress }, { ms: ANNOUNCE_MS });
    assert.ok((await dropped('bad_signature')) >= 1);
    assert.deepEqual(rep.log.matching('subscribed', { address: c.udpAddress }), []);
    assert.deepEqual(await subscribed(), [a.udpAddress, b.udpAddress].sort());
    await assertReceivesNothing(c, a, b);
    // Stopped here so the next test can tell its node's refusals from c's.
    assert.deepEqual(await c.stop(), { code: 0, signal: null });
  });

  test('(3) an unsigned node is refused (bad_signature) and receives nothing', opts, async () => {
    // Refusals are logged once per reason per 10 s, so this one is told by the
    // counter: c is stopped; a signed subscription sent now (by the CLI tool)
    // queues behind anything c sent before it exited, so once it is accepted
    // the counter holds all of c's refusals.
    const witness = await Receiver.open();
    receivers.push(witness);
    const from = rep.log.length;
    const r = await runCli(['subscribe', repAddress, '--key', 'ssl', '--address', witness.address, '--sign', `SHA256:${privateKey}`]);
    assert.equal(r.code, 0, r.stderr);
    await rep.log.waitFor('subscribed', { address: witness.address }, { from });
    const before = await dropped('bad_signature');

    const [d] = (await startNodes([{ name: 'unsigned-d', repeater: repAddress }])) as [UwsgiNode];
    await eventually('the unsigned node\'s announces to be refused', async () => ((await dropped('bad_signature')) > before ? true : undefined), ANNOUNCE_MS);
    assert.deepEqual(rep.log.matching('subscribed', { address: d.udpAddress }), []);
    assert.ok(!(await subscribed()).includes(d.udpAddress));
    await assertReceivesNothing(d, b, a);

    const u = await runCli(['subscribe', repAddress, '--key', 'ssl', '--address', witness.address, '--unsubscribe', '--sign', `SHA256:${privateKey}`]);
    assert.equal(u.code, 0, u.stderr);
    await rep.log.waitFor('unsubscribed', { address: witness.address }, { from });
    await d.kill();
  });

  test('(4) a captured signed announce replayed later is refused as stale_signature', opts, async () => {
    // Node a announced this to the capture socket in the same breath as to the repeater.
    const announce = await nextMatching(capture, 0, (m) => m[3] === 0);
    const from = rep.log.length;
    // Two announces accepted after the capture: the second is from a later
    // cycle, so the repeater has seen a newer `unix` from this node.
    await rep.log.waitFor('refreshed', { address: a.udpAddress }, { from, count: 2, ms: ANNOUNCE_MS });
    const stale = await dropped('stale_signature');

    await sender.send(announce, repPort);
    await rep.log.waitFor('subscription refused', { reason: 'stale_signature', address: a.udpAddress }, { from });
    assert.equal(await dropped('stale_signature'), stale + 1);
    assert.deepEqual(await subscribed(), [a.udpAddress, b.udpAddress].sort());
  });

  test('(5) uWSGI\'s unsubscribe (unix = now + 1) is accepted; a replayed announce does not bring the node back', opts, async () => {
    const announce = await nextMatching(capture, 0, (m) => m[3] === 0);
    const seen = capture.received.length;
    const from = rep.log.length;
    const refusedBefore = (await dropped('stale_signature')) + (await dropped('bad_signature'));
    const t0 = Math.floor(Date.now() / 1000);

    assert.deepEqual(await a.stop(), { code: 0, signal: null });
    await rep.log.waitFor('unsubscribed', { address: a.udpAddress }, { from });
    assert.deepEqual(await subscribed(), [b.udpAddress]);
    // The unsubscribe as uWSGI sent it (to the capture socket too): signed, unix one second ahead.
    const bye = await nextMatching(capture, seen, (m) => m[3] === 1);
    const unix = checkSigned(bye, publicKey);
    assert.ok(unix >= t0 + 1 && unix <= Math.floor(Date.now() / 1000) + 1, `unsubscribe unix ${unix} is now + 1 (stopped at ${t0})`);
    assert.equal((await dropped('stale_signature')) + (await dropped('bad_signature')), refusedBefore, 'nothing of the stop was refused');

    // Replaying an announce of the stopped node must not subscribe it again.
    const stale = await dropped('stale_signature');
    await sender.send(announce, repPort);
    await eventually('the replay to be refused', async () => ((await dropped('stale_signature')) > stale ? true : undefined), PROPAGATE_MS);
    assert.deepEqual(rep.log.matching('subscribed', { address: a.udpAddress }, from), []);
    assert.deepEqual(await subscribed(), [b.udpAddress]);
  });

  test('(6) a node reloaded with SIGTERM (uWSGI\'s brutal reload) is subscribed again by its first announce', opts, async (t) => {
    // uWSGI unsubscribes (unix = now + 1), re-execs, and announces again about
    // a second later, usually within that same second: the goodbye's clock
    // must not make the new announce look like a replay.
    // `unix` is whole seconds: sent early in a second, the goodbye's unix
    // (now + 1) is the very second of the new announce (the reload takes about
    // 1.04 s here). This waits for the clock, not for an event: there is none.
    const phase = Date.now() % 1000;
    if (phase > 300) await new Promise((r) => setTimeout(r, 1050 - phase));
    const from = rep.log.length;
    const stale = await dropped('stale_signature');
    const t0 = Date.now();
    b.signal('SIGTERM');
    await rep.log.waitFor('unsubscribed', { address: b.udpAddress }, { from, ms: ANNOUNCE_MS });
    const again = await rep.log.waitFor('subscribed', { address: b.udpAddress }, { from, ms: ANNOUNCE_MS });
    assert.match(b.output, /binary reloading uWSGI/);
    t.diagnostic(`SIGTERM -> subscribed again: ${Date.parse(String(again['time'])) - t0} ms`);
    assert.equal(await dropped('stale_signature'), stale, 'announces of the reloaded node were refused as stale_signature');

    // And it is back in the fan-out.
    const key = sessionId();
    const value = sessionBytes(800);
    await sender.send(encodeCacheSet(key, value, 0), repPort);
    await untilSynced(b, key, value);
  });
});

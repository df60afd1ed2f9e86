// Moving a running fleet from the shared key to identities without losing an
// update (issue 18; README, "Moving a fleet from the shared key to
// identities"): real `serve` and `agent` daemons through the CLI, a writer
// sending about 40 sets a second the whole time, every step of the runbook
// done as an operator would (a config file and SIGHUP for the repeater, each
// agent restarted with its new flags), and every update counted at both
// nodes by the writer's sequence number.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { identityIdOf, parsePublicKey } from '../src/crypto/identity.js';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { EnvelopeKind, Role } from '../src/wire/envelope.js';
import { agent, httpGet, keygen, type Running, serve, Tap } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { eventually, freePort, type Receiver } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-migration-'));
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`session ${k};`), 0);
const keyOf = (b: Buffer) => /session ([^;]+);/.exec(b.toString('latin1'))?.[1] ?? null;
let files = 0;

function track<T extends { stop(): Promise<unknown> }>(r: T): T {
  scope.track({ close: () => r.stop() });
  return r;
}

async function identity(): Promise<{ file: string; pub: string }> {
  const file = join(dir, `id${files++}`);
  assert.equal((await runCli(['keygen', '--identity', file])).code, 0);
  const p = await runCli(['pubkey', file]);
  assert.equal(p.code, 0, p.stderr);
  return { file, pub: p.stdout.trim() };
}

function write(lines: string[], mode = 0o644): string {
  const file = join(dir, `f${files++}`);
  writeFileSync(file, lines.join('\n') + '\n', { mode });
  return file;
}

/** SIGHUP, then the repeater's verdict: true when the new config runs. */
async function reload(r: Running): Promise<true | string> {
  const from = r.d.log.length;
  r.d.signal('SIGHUP');
  return r.d.log.until('the reload judged', () => {
    if (r.d.log.matching('config applied', {}, from).length > 0) return true;
    const refused = r.d.log.matching('reload refused; keeping the running config', {}, from)[0];
    return refused === undefined ? undefined : String(refused['error']);
  });
}

describe('migration: shared key to identities under traffic', () => {
  test('a running fleet moves to identities (identity listener added by reload, each agent restarted by identity, the shared listener removed by reload) and both nodes end with every update', async () => {
    const key = await keygen();
    const [ir, ia, ib] = [await identity(), await identity(), await identity()];
    const [pp, sp, ip] = [await freePort(), await freePort(), await freePort()];
    const conf = join(dir, 'udprepeater.conf');
    const base = [`listen = 127.0.0.1:${pp},channel=ssl,key=ssl`, 'subscribe-rate = 1000', 'subscribe-burst = 1000'];
    const shared = [`listen-sealed = 127.0.0.1:${sp},channel=ssl,key=ssl`, `key-file = ${key}`];
    const repeaterPeers = write([`${ia.pub} node-a`, `${ib.pub} node-b`]);
    const withIds = [`identity = ${ir.file}`, `peers = ${repeaterPeers}`];
    writeFileSync(conf, [...base, ...shared].join('\n') + '\n', { mode: 0o600 });
    const r = track(await serve(['-c', conf]));

    const [na, nb] = [await scope.receiver(), await scope.receiver()];
    const sharedAgent = async (node: Receiver) => agent(['--local', `127.0.0.1:${await freePort()}`, '--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']);
    const agentPeers = write([`${ir.pub} repeater-a role=repeater`]);
    const linkedAgent = async (id: { file: string }, node: Receiver) =>
      agent(['--local', `127.0.0.1:${await freePort()}`, '--repeater', `127.0.0.1:${ip}`, '--identity', id.file, '--peers', agentPeers, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']);
    let a = await sharedAgent(na);
    let b = await sharedAgent(nb);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });

    // The writer: about 40 sets a second to the repeater's plain listener, each key its sequence number.
    let i = 0;
    const missing = (n: Receiver, upTo: number) => {
      const got = new Set(n.received.map(keyOf));
      const out: string[] = [];
      for (let k = 0; k < upTo; k++) if (!got.has(`m${k}`)) out.push(`m${k}`);
      return out;
    };
    // Between steps: both nodes hold everything sent so far, live (a warm join later must not be what hides a loss).
    const checkpoint = async (step: string) => {
      const upTo = i;
      await eventually(`both nodes have the ${upTo} updates sent before ${step}`, () => (missing(na, upTo).length === 0 && missing(nb, upTo).length === 0 ? true : undefined), 5000).catch(() => undefined);
      assert.deepEqual([missing(na, upTo), missing(nb, upTo)], [[], []], `updates lost before ${step}`);
    };
    const writer = setInterval(() => void sender.send(set(`m${i++}`), pp), 25);
    const pause = (ms: number) => new Promise((res) => setTimeout(res, ms));
    const windows: Array<{ node: string; stoppedAt: number; linkedAt: number; sentMeanwhile: number }> = [];
    try {
      await pause(1000);
      // 1. The repeater gets its identity, its peers file and an identity listener beside the shared one: a reload.
      writeFileSync(conf, [...base, ...shared, ...withIds, `listen-sealed = 127.0.0.1:${ip},channel=ssl,key=ssl,identity`].join('\n') + '\n', { mode: 0o600 });
      assert.equal(await reload(r), true, 'the repeater refused to serve the shared key and identities side by side');
      await pause(500);

      // 2. Each agent in turn: stopped (its goodbye frees its address), started again by identity toward the identity listener.
      await checkpoint('the first agent restarts');
      for (const [name, node] of [
        ['node-a', na],
        ['node-b', nb],
      ] as const) {
        const old = name === 'node-a' ? a : b;
        const stoppedAt = Date.now();
        const sentBefore = i;
        await old.stop();
        const next = track(await linkedAgent(name === 'node-a' ? ia : ib, node));
        await r.d.log.waitFor('link confirmed', { peer: name });
        windows.push({ node: name, stoppedAt, linkedAt: Date.now(), sentMeanwhile: i - sentBefore });
        // The new subscriber is warmed under its link: what it missed while no agent ran.
        const advertised = String((await next.d.log.waitFor('agent started'))['advertised']);
        await r.d.log.waitFor('warm join completed', { address: advertised });
        if (name === 'node-a') a = next;
        else b = next;
        await pause(500);
        await checkpoint(`the step after ${name}'s agent moved`);
      }

      // 3. The shared listener and the key leave the repeater: a reload.
      writeFileSync(conf, [...base, ...withIds, `listen-sealed = 127.0.0.1:${ip},channel=ssl,key=ssl,identity`].join('\n') + '\n', { mode: 0o600 });
      assert.equal(await reload(r), true, 'the reload that drops the shared key was refused');
      await pause(1000);
    } finally {
      clearInterval(writer);
    }
    const total = i;
    assert.ok(total > 150, `the writer sent only ${total} updates`);

    await eventually('both nodes have every update', () => (missing(na, total).length === 0 && missing(nb, total).length === 0 ? true : undefined), 10_000).catch(() => undefined);
    const m = await r.metrics();
    console.log(
      JSON.stringify({
        sent: total,
        nodeA: { received: na.received.length, distinct: new Set(na.received.map(keyOf)).size, missing: missing(na, total).length },
        nodeB: { received: nb.received.length, distinct: new Set(nb.received.map(keyOf)).size, missing: missing(nb, total).length },
        agentRestarts: windows.map((w) => ({ node: w.node, stopToLinkedMs: w.linkedAt - w.stoppedAt, sentMeanwhile: w.sentMeanwhile })),
        warmJoins: m.value('udprepeater_warm_joins_total', { event: 'completed' }),
        ownerConflicts: m.dropped('owner_conflict'),
      }),
    );
    assert.deepEqual(missing(na, total), [], 'node A lost updates');
    assert.deepEqual(missing(nb, total), [], 'node B lost updates');

    // Both nodes are served by identity now, and named; nothing sealed under the shared key is left.
    const subs = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as Array<{ form: string; identity?: string | null }>;
    assert.deepEqual(subs.filter((s) => s.form === 'sealed').map((s) => s.identity).sort(), ['node-a', 'node-b']);
    const health = JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { keys: string[]; listeners: Array<{ address: string; sealed: boolean; identity?: boolean }> };
    assert.deepEqual(health.keys, [], 'the shared key is still loaded');
    assert.deepEqual(health.listeners.filter((l) => l.sealed).map((l) => [l.address, l.identity]), [[`127.0.0.1:${ip}`, true]]);
  });
});

describe('migration: what the shared key cannot do beside identities', () => {
  test('a holder of the shared key can neither take an identity\'s subscriber nor pass for an identity (its origin), and an identity takes no live shared-key subscriber; both nodes keep their updates', async () => {
    await sodiumReady();
    const key = await keygen();
    const [ir, ia, ib] = [await identity(), await identity(), await identity()];
    const [pp, sp, ip] = [await freePort(), await freePort(), await freePort()];
    const agentPeers = write([`${ir.pub} repeater-a role=repeater`]);
    const r = track(
      await serve([
        '--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`,
        '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`,
        '--listen-sealed', `127.0.0.1:${ip},channel=ssl,key=ssl,identity`,
        '--key-file', key, '--identity', ir.file, '--peers', write([`${ia.pub} node-a`, `${ib.pub} node-b`]),
      ]),
    );
    const na = await scope.receiver();
    const a = track(
      await agent(['--local', `127.0.0.1:${await freePort()}`, '--repeater', `127.0.0.1:${ip}`, '--identity', ia.file, '--peers', agentPeers, '--deliver', na.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']),
    );
    await r.d.log.waitFor('subscribed', { form: 'sealed' });
    const address = String((await a.d.log.waitFor('agent started'))['advertised']);
    const ring = KeyRing.load([key]);
    const attacker = await Tap.open(sp);
    scope.track(attacker);
    const origin = Buffer.from(identityIdOf(parsePublicKey(ia.pub) as Uint8Array)).readBigUInt64LE(0);
    const before = await r.metrics();
    // Its own origin: a subscription naming node-a's address is refused (the entry is node-a's); node-a's origin: refused before anything is believed.
    for (const o of [undefined, origin]) {
      const s = new SecureSession(Role.Agent, o === undefined ? {} : { origin: o });
      await attacker.replay(s.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address, receiver: `127.0.0.1:${sp}` })!);
      await attacker.replay(s.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: 'ssl', datagram: set(o === undefined ? 'injected' : 'as-node-a'), address: null, receiver: '' })!);
    }
    await eventually('both refused', async () => {
      const m = await r.metrics();
      return m.dropped('owner_conflict') > before.dropped('owner_conflict') && m.dropped('wrong_role') >= before.dropped('wrong_role') + 2 ? m : undefined;
    });
    await sender.send(set('marker'), pp);
    await eventually('the marker reached node-a', () => (na.received.some((b) => keyOf(b) === 'marker') ? true : undefined));
    // What a key holder may still do, as without identities: inject its own update (node-a gets it, under its link).
    assert.ok(na.received.some((b) => keyOf(b) === 'injected'), 'the shared-key update did not reach the identity\'s node');
    assert.ok(!na.received.some((b) => keyOf(b) === 'as-node-a'), 'a frame passing for node-a was accepted');
    let subs = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as Array<{ form: string; address: string; identity?: string | null }>;
    assert.deepEqual(subs.filter((e) => e.form === 'sealed').map((e) => [e.address, e.identity]), [[address, 'node-a']]);

    // The other way: an identity announcing a live shared-key agent's address is refused too; that agent's node keeps its updates.
    const ns = await scope.receiver();
    const s = track(await agent(['--local', `127.0.0.1:${await freePort()}`, '--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--deliver', ns.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']));
    const sharedAddress = String((await s.d.log.waitFor('agent started'))['advertised']);
    await r.d.log.waitFor('subscribed', { form: 'sealed', address: sharedAddress });
    const conflicts = (await r.metrics()).dropped('owner_conflict');
    track(
      await agent(['--local', `127.0.0.1:${await freePort()}`, '--repeater', `127.0.0.1:${ip}`, '--identity', ib.file, '--peers', agentPeers, '--advertise', sharedAddress, '--channel-key', 'ssl', '--subscribe-interval', '0.5', '--deliver', (await scope.receiver()).address]),
    );
    await eventually('the identity\'s claim refused', async () => ((await r.metrics()).dropped('owner_conflict') > conflicts ? true : undefined));
    await sender.send(set('marker2'), pp);
    await eventually('the shared-key node got the marker', () => (ns.received.some((b) => keyOf(b) === 'marker2') ? true : undefined));
    subs = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as typeof subs;
    assert.deepEqual(subs.filter((e) => e.form === 'sealed').map((e) => [e.address, e.identity]).sort(), [[address, 'node-a'], [sharedAddress, null]].sort());
  });
});

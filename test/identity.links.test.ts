// Identity mode end to end (docs/PROTOCOL.md, "Identities and links"; issue
// 18): real `serve` and `agent` daemons started through the CLI, each with
// its own identity (`keygen --identity`) and peers file, no shared key; real
// UDP on loopback. Captures are taken on the wire by relays, never built by
// the test.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { identityIdOf, parsePublicKey } from '../src/crypto/identity.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { agent, httpGet, type Running, serve, Tap } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { eventually, freePort, type Receiver } from './helpers/net.js';
import { groupFrames, linkFrames, Relay } from './helpers/relay.js';
import { Scope } from './helpers/scope.js';
import { makeIdentity, writePeers } from './helpers/identities.js';

const scope = new Scope();
const { sender } = scope;
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-links-'));
const set = (k: string) => encodeCacheSet(Buffer.from(k), Buffer.from(`session ${k};`), 0);
const keyOf = (b: Buffer) => {
  const m = /session ([^;]+);/.exec(b.toString('latin1'));
  return m === null ? null : m[1]!;
};
let files = 0;

function track<T extends { stop(): Promise<unknown> } | { close(): unknown }>(r: T): T {
  scope.track({ close: () => ('stop' in r ? r.stop() : r.close()) });
  return r;
}

/** A new identity written by the CLI, and its public key as `pubkey` prints it. */
async function identity(): Promise<{ file: string; pub: string }> {
  const file = join(dir, `id${files++}`);
  return makeIdentity(file);
}

function peersFile(lines: string[], file = join(dir, `peers${files++}`)): string {
  return writePeers(file, lines);
}

interface Fleet {
  repeaterId: { file: string; pub: string };
  sp: number;
  repeaterArgs: string[];
  repeaterPeers: string;
}

async function fleet(nodes: Array<{ name: string; pub: string }>, extra: string[] = []): Promise<Fleet> {
  const repeaterId = await identity();
  const sp = await freePort();
  const repeaterPeers = peersFile(nodes.map((n) => `${n.pub} ${n.name}`));
  const repeaterArgs = ['--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--identity', repeaterId.file, '--peers', repeaterPeers, ...extra];
  return { repeaterId, sp, repeaterArgs, repeaterPeers };
}

/** An agent by identity, trusting the fleet's repeater only, delivering to `node`. */
async function linkedAgent(f: Fleet, id: { file: string }, node: Receiver, more: string[] = [], repeaterPort = f.sp): Promise<Running & { local: number; peers: string }> {
  const local = await freePort();
  const peers = peersFile([`${f.repeaterId.pub} repeater-a role=repeater`]);
  const a = track(await agent(['--repeater', `127.0.0.1:${repeaterPort}`, '--identity', id.file, '--peers', peers, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5', ...more]));
  return Object.assign(a, { local, peers });
}


const agentDropped = async (a: Running, reason: string) => (await a.metrics()).value('udprepeater_agent_datagrams_dropped_total', { reason });

describe('identity mode: agents and a repeater by identity, no shared key', () => {
  test('a datagram from agent A reaches agent B; a frame captured on A\'s link is refused by the repeater from another source and by B\'s agent; an unknown identity is refused and counted', async () => {
    const [ia, ib, ic, id] = [await identity(), await identity(), await identity(), await identity()];
    const f = await fleet([
      { name: 'node-a', pub: ia.pub },
      { name: 'node-b', pub: ib.pub },
      { name: 'node-d', pub: id.pub },
    ]);
    const r = track(await serve(f.repeaterArgs));
    const relay = track(await Relay.open(f.sp));
    const [na, nb, nc] = [await scope.receiver(), await scope.receiver(), await scope.receiver()];
    const a = await linkedAgent(f, ia, na, [], relay.port);
    const b = await linkedAgent(f, ib, nb);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    await sender.send(set('one'), a.local);
    const got = await nb.waitFor(1);
    assert.equal(keyOf(got[0]!), 'one');
    assert.equal(na.received.length, 0, 'the repeater sent A its own update back');
    assert.ok((await r.metrics()).value('udprepeater_sealed_frames_total') >= 1, 'link seals are not counted');

    // Replays: A's frames to the repeater (its SUBSCRIBE and the set) from another socket, and the repeater's frames for A to B's agent.
    const fromA = linkFrames(relay.toRepeater);
    const forA = linkFrames(relay.toAgent);
    assert.ok(fromA.length >= 2 && forA.length >= 1, `captured ${fromA.length} frames from A and ${forA.length} for A`);
    const before = { replay: (await r.metrics()).dropped('replay'), bUnknown: await agentDropped(b, 'unknown_link') };
    const attacker = track(await Tap.open(f.sp));
    for (const m of fromA) await attacker.replay(m);
    const bPort = Number(String((await b.d.log.waitFor('agent started'))['advertised']).split(':').pop());
    for (const m of forA) await attacker.replay(m, bPort);
    await eventually('the replays counted', async () => ((await r.metrics()).dropped('replay') >= before.replay + fromA.length && (await agentDropped(b, 'unknown_link')) >= before.bUnknown + forA.length ? true : undefined));
    // A marker after the replays: nothing replayed reached B's node before it.
    await sender.send(set('marker'), a.local);
    const after = await nb.waitFor(2);
    assert.deepEqual(after.map(keyOf), ['one', 'marker'], 'a replayed frame was delivered');

    // An identity the repeater does not list: refused before any DH, counted, never linked.
    const c = await linkedAgent(f, ic, nc);
    await eventually('unknown_peer counted', async () => ((await r.metrics()).dropped('unknown_peer') > 0 ? true : undefined));
    await sender.send(set('from-c'), c.local);
    await sender.send(set('marker2'), a.local);
    const third = await nb.waitFor(3);
    assert.equal(keyOf(third[2]!), 'marker2', 'the unknown identity got an update through');
    assert.equal(nc.received.length, 0, 'the unknown identity was sent updates');
    assert.equal(c.d.log.matching('link confirmed').length, 0, 'the unknown identity made a link');
    // Counted on the way out (to_repeater), not as something the repeaters sent (to_node).
    const cm = await c.metrics();
    assert.ok(cm.value('udprepeater_agent_datagrams_dropped_total', { reason: 'no_link', channel: 'to_repeater' }) >= 1, 'the unlinked agent did not count its update as no_link to_repeater');
    assert.equal(cm.value('udprepeater_agent_datagrams_dropped_total', { reason: 'no_link', channel: 'to_node' }), 0, 'no_link counted as something from the repeaters');

    // A listed node that joins now is warmed under its own link: the live state, without what the unknown identity sent.
    const nd = await scope.receiver();
    await linkedAgent(f, id, nd);
    const warmed = await nd.waitFor(3);
    assert.deepEqual(warmed.map(keyOf).sort(), ['marker', 'marker2', 'one']);
  });
});

describe('identity mode: revocation and restarts', () => {
  test('removing a node\'s line and reloading: its link drops, it gets nothing sent more than 1 s later, its frames are refused (revoked), nothing sealed for the others opens with its keys; the remaining agent loses no update', async () => {
    const [ib, ir] = [await identity(), await identity()];
    const pp = await freePort();
    const f = await fleet(
      [
        { name: 'node-b', pub: ib.pub },
        { name: 'node-r', pub: ir.pub },
      ],
      ['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`],
    );
    const r = track(await serve(f.repeaterArgs));
    const [nb, nr] = [await scope.receiver(), await scope.receiver()];
    // B's copies pass a tap (its advertise) that keeps them; R binds a known port (the replay target).
    const bBind = await freePort();
    const tapB = track(await Tap.open(bBind));
    const rBind = await freePort();
    await linkedAgent(f, ib, nb, ['--bind', `127.0.0.1:${bBind}`, '--advertise', `127.0.0.1:${tapB.port}`]);
    const rev = await linkedAgent(f, ir, nr, ['--bind', `127.0.0.1:${rBind}`]);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    const rTimes: Array<{ key: string; at: number }> = [];
    nr.socket.on('message', (m: Buffer) => rTimes.push({ key: keyOf(m) ?? '?', at: Date.now() }));

    // ~30 sets a second through the plain listener, for 2 s before the reload and 3 s after.
    const sentAt = new Map<string, number>();
    let i = 0;
    const stream = setInterval(() => {
      const k = `k${i++}`;
      sentAt.set(k, Date.now());
      void sender.send(set(k), pp);
    }, 33);
    await new Promise((res) => setTimeout(res, 2000));
    assert.ok(rTimes.length > 20, `the node to be revoked got ${rTimes.length} updates before the reload`);
    peersFile([`${ib.pub} node-b`], f.repeaterPeers);
    const capturedBefore = tapB.captured.length;
    const reloadAt = Date.now();
    r.d.signal('SIGHUP');
    await r.d.log.waitFor('identities revoked: links dropped');
    // Reload to first refused frame of the revoked agent (it announces every 0.5 s).
    const refusedAt = await eventually('a revoked frame refused', async () => ((await r.metrics()).dropped('revoked') > 0 ? Date.now() : undefined), 5000);
    await new Promise((res) => setTimeout(res, 3000));
    clearInterval(stream);
    const total = i;
    const bKeys = await eventually('B got every update', () => {
      const keys = new Set(nb.received.map(keyOf));
      return keys.size >= total ? keys : undefined;
    });
    for (let n = 0; n < total; n++) assert.ok(bKeys.has(`k${n}`), `the remaining node lost k${n}`);
    const late = rTimes.filter((t) => (sentAt.get(t.key) ?? 0) > reloadAt + 1000);
    const lastR = rTimes.length === 0 ? null : rTimes[rTimes.length - 1]!;
    console.log(JSON.stringify({ sent: total, remainingGot: bKeys.size, revokedGot: rTimes.length, revokedLastAfterReloadMs: lastR === null ? null : lastR.at - reloadAt, reloadToFirstRefusedMs: refusedAt - reloadAt, revokedRefused: (await r.metrics()).dropped('revoked') }));
    assert.deepEqual(late, [], 'the revoked node got updates sent more than 1 s after the reload');

    // What the repeater sealed for B after the reload (under B's link until B took the new group key, then
    // under that key), given to the revoked agent, which still holds its own link keys and the old group key: nothing opens.
    const after = tapB.captured.slice(capturedBefore);
    const forB = [...linkFrames(after), ...groupFrames(after)];
    assert.ok(groupFrames(after).length > 20, `captured ${groupFrames(after).length} group frames for B after the reload`);
    const seen = nr.received.length;
    // (`replay`: a group frame sealed under the old key just before the reload, captured just after, which the revoked agent had.)
    const refusedNow = async () => (await agentDropped(rev, 'unknown_link')) + (await agentDropped(rev, 'unknown_key')) + (await agentDropped(rev, 'replay'));
    const refusedBefore = await refusedNow();
    const attacker = track(await Tap.open(rBind));
    for (const m of forB) await attacker.replay(m);
    await eventually('the revoked agent refused them', async () => ((await refusedNow()) >= refusedBefore + forB.length ? true : undefined));
    assert.equal(nr.received.length, seen, 'a frame sealed for B after the reload opened with the revoked node\'s keys');
    // Its re-subscription stays refused: no sealed subscriber but B, named by its identity.
    const subs = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as Array<{ form: string; address: string; identity?: string }>;
    assert.deepEqual(
      subs.filter((s) => s.form === 'sealed').map((s) => [s.address, s.identity]),
      [[`127.0.0.1:${tapB.port}`, 'node-b']],
    );
  });

  test('after a repeater restart both agents link again and sync resumes; frames from before a restart of either side are refused; a bad peers file is refused at start (exit 78, file and line) and at reload (the running links kept)', async () => {
    const [ia, ib] = [await identity(), await identity()];
    const f = await fleet([
      { name: 'node-a', pub: ia.pub },
      { name: 'node-b', pub: ib.pub },
    ]);
    let r = await serve(f.repeaterArgs);
    const relay = track(await Relay.open(f.sp));
    const [na, nb] = [await scope.receiver(), await scope.receiver()];
    const aBind = await freePort();
    const a = await linkedAgent(f, ia, na, ['--bind', `127.0.0.1:${aBind}`], relay.port);
    await linkedAgent(f, ib, nb);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    await sender.send(set('before-restart'), a.local);
    assert.equal(keyOf((await nb.waitFor(1))[0]!), 'before-restart');
    const fromA = linkFrames(relay.toRepeater);
    await r.stop();
    r = track(await serve(f.repeaterArgs));
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    // A's frames from before the restart (its subscription, the set), replayed to the new process: no link of this start opens them.
    const attacker = track(await Tap.open(f.sp));
    for (const m of fromA) await attacker.replay(m);
    await eventually('the old link\'s frames refused', async () => ((await r.metrics()).dropped('unknown_link') >= fromA.length ? true : undefined));
    await sender.send(set('after-restart'), a.local);
    assert.deepEqual((await nb.waitFor(2)).map(keyOf), ['before-restart', 'after-restart'], 'a frame from before the restart was delivered');

    // The agent restarts (same port): what the repeater sealed for its previous process does not open in the new one.
    const forA = linkFrames(relay.toAgent);
    assert.ok(forA.length >= 1, 'no frame for A captured');
    await a.stop();
    const a2 = await linkedAgent(f, ia, na, ['--bind', `127.0.0.1:${aBind}`], relay.port);
    await a2.d.log.waitFor('link confirmed');
    const before = await agentDropped(a2, 'unknown_link');
    for (const m of forA) await attacker.replay(m, aBind);
    await eventually('the new agent refused them', async () => ((await agentDropped(a2, 'unknown_link')) >= before + forA.length ? true : undefined));
    assert.equal(na.received.length, 0, 'a frame sealed for the agent\'s previous process opened in the new one');

    // A bad line at reload: refused, naming file and line; the links stay.
    peersFile([`${ia.pub} node-a`, `${ib.pub} node-b role=admin`], f.repeaterPeers);
    r.d.signal('SIGHUP');
    const refused = await r.d.log.waitFor('reload refused; keeping the running config');
    assert.match(String(refused['error']), new RegExp(`${f.repeaterPeers}:2`));
    await sender.send(set('after-bad-reload'), a2.local);
    assert.equal(keyOf((await nb.waitFor(3))[2]!), 'after-bad-reload');

    // The same file at start: exit 78 naming it and the line.
    // (The peers file is read before any listener opens: the running repeater's port is no obstacle.)
    const bad = await runCli(['serve', ...f.repeaterArgs]);
    assert.equal(bad.code, 78, bad.stderr);
    assert.match(bad.stderr, new RegExp(`${f.repeaterPeers}:2`));
    // Identities and the shared key on one repeater: refused, saying why.
    const key = join(dir, 'shared.key');
    assert.equal((await runCli(['keygen', key])).code, 0);
    // (In a config file: its keys are the flags' names.)
    const conf = join(dir, 'both.conf');
    writeFileSync(conf, `listen-sealed = 127.0.0.1:0\nidentity = ${f.repeaterId.file}\npeers = ${peersFile([])}\nkey-file = ${key}\n`, { mode: 0o600 });
    const both = await runCli(['serve', '-c', conf]);
    assert.equal(both.code, 78, both.stderr);
    assert.match(both.stderr, /--identity and --key-file\/--key-dir: give one/);
  });
});

describe('identity mode: hostile HELLOs', () => {
  test('a flood of forged HELLOs naming a listed identity, and of its own captured HELLO replayed, costs no link and does not keep that node from linking', async () => {
    const ia = await identity();
    const f = await fleet([{ name: 'node-a', pub: ia.pub }]);
    const r = track(await serve(f.repeaterArgs));
    // Its real HELLO, captured on the wire, then the agent stopped.
    const relay = track(await Relay.open(f.sp));
    const na = await scope.receiver();
    const first = await linkedAgent(f, ia, na, [], relay.port);
    await r.d.log.waitFor('link confirmed', { peer: 'node-a' });
    await first.stop();
    const hello = relay.toRepeater.find((b) => b[0] === 0x75 && b[1] === 0x72 && b[2] === 3 && b[3] === 1);
    assert.ok(hello !== undefined, 'no HELLO captured');
    // Forged ones: the listed identity's id, random ephemeral and payload, so a wrong mac.
    const id = identityIdOf(parsePublicKey(ia.pub) as Uint8Array);
    const forged = () => {
      const b = Buffer.alloc(128);
      for (let i = 4; i < 128; i++) b[i] = (Math.random() * 256) | 0;
      b.set([0x75, 0x72, 3, 1], 0);
      b.set(id, 8);
      b.writeBigUInt64LE(BigInt(Date.now()), 48);
      return b;
    };
    const attacker = track(await Tap.open(f.sp));
    let flooding = true;
    let sent = 0;
    const flood = (async () => {
      while (flooding) {
        for (let i = 0; i < 50; i++) {
          await attacker.replay(i % 2 === 0 ? forged() : hello);
          sent++;
        }
        await new Promise((res) => setImmediate(res));
      }
    })();
    const from = r.d.log.matching('link confirmed', { peer: 'node-a' }).length;
    const nb = await scope.receiver();
    const again = await linkedAgent(f, ia, nb);
    await r.d.log.waitFor('link confirmed', { peer: 'node-a' }, { count: from + 1 });
    flooding = false;
    await flood;
    const m = await r.metrics();
    console.log(JSON.stringify({ hostileHellos: sent, authFailed: m.dropped('auth_failed'), replay: m.dropped('replay'), rateLimited: m.dropped('rate_limited') }));
    assert.ok(m.dropped('auth_failed') >= sent / 4 && m.dropped('replay') >= sent / 4, 'the hostile HELLOs were not refused as forged and replayed');
    // The new link carried its subscription (the first agent's ended with its unsubscribe).
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    assert.equal(again.d.log.matching('link confirmed').length >= 1, true);
  });
});

describe('identity mode: the agent\'s peers file', () => {
  test('removing the repeater\'s line from an agent\'s peers file and reloading drops its link: nothing from that repeater is delivered any more; a bad file is refused and the link kept', async () => {
    const [ia, ib] = [await identity(), await identity()];
    const f = await fleet([
      { name: 'node-a', pub: ia.pub },
      { name: 'node-b', pub: ib.pub },
    ]);
    const r = track(await serve(f.repeaterArgs));
    const [na, nb] = [await scope.receiver(), await scope.receiver()];
    const a = await linkedAgent(f, ia, na);
    const b = await linkedAgent(f, ib, nb);
    await r.d.log.waitFor('subscribed', { form: 'sealed' }, { count: 2 });
    // A bad line: refused, naming the file and line; the link stays.
    peersFile([`${f.repeaterId.pub} repeater-a role=repeater`, 'not-a-key x'], b.peers);
    b.d.signal('SIGHUP');
    const refused = await b.d.log.waitFor('reload refused; keeping the running config');
    assert.match(String(refused['error']), new RegExp(`${b.peers}:2`));
    await sender.send(set('kept'), a.local);
    assert.equal(keyOf((await nb.waitFor(1))[0]!), 'kept');
    // The repeater no longer trusted: its frames do not open any more.
    peersFile(['# nobody'], b.peers);
    b.d.signal('SIGHUP');
    await b.d.log.waitFor('config reloaded');
    // Its live datagrams come as group frames under a key the agent dropped with the link (unknown_key), or under the dropped link (unknown_link).
    const refusedFrames = async () => (await agentDropped(b, 'unknown_link')) + (await agentDropped(b, 'unknown_key'));
    const before = await refusedFrames();
    await sender.send(set('after'), a.local);
    await eventually('its frames refused', async () => ((await refusedFrames()) > before ? true : undefined));
    await sender.send(set('after2'), a.local);
    await eventually('its frames refused', async () => ((await refusedFrames()) > before + 1 ? true : undefined));
    assert.deepEqual(nb.received.map(keyOf), ['kept'], 'an update from the repeater no longer trusted was delivered');
  });
});

describe('identity mode: a subscriber belongs to the identity that subscribed it', () => {
  test('node A announcing node B\'s address is refused (owner_conflict) and changes nothing: B gets every update under its own link; revoking A leaves B subscribed and receiving', async () => {
    const [ia, ib] = [await identity(), await identity()];
    const pp = await freePort();
    const f = await fleet(
      [
        { name: 'node-a', pub: ia.pub },
        { name: 'node-b', pub: ib.pub },
      ],
      ['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`],
    );
    const r = track(await serve(f.repeaterArgs));
    const [na, nb] = [await scope.receiver(), await scope.receiver()];
    const bBind = await freePort();
    await linkedAgent(f, ib, nb, ['--bind', `127.0.0.1:${bBind}`]);
    await r.d.log.waitFor('subscribed', { form: 'sealed' });
    // A's agent announces B's address as where it should be sent to: a SUBSCRIBE under A's link naming B's address.
    const a = await linkedAgent(f, ia, na, ['--advertise', `127.0.0.1:${bBind}`]);
    await r.d.log.waitFor('link confirmed', { peer: 'node-a' });
    await eventually('A\'s claim refused', async () => ((await r.metrics()).dropped('owner_conflict') >= 1 ? true : undefined));

    // ~30 sets a second for 2 s while A keeps announcing (every 0.5 s): B opens every copy.
    let i = 0;
    const stream = setInterval(() => void sender.send(set(`k${i++}`), pp), 33);
    await new Promise((res) => setTimeout(res, 2000));
    clearInterval(stream);
    const total = i;
    const bKeys = await eventually('B got every update', () => {
      const keys = new Set(nb.received.map(keyOf));
      return keys.size >= total ? keys : undefined;
    }).catch(() => new Set(nb.received.map(keyOf)));
    const missing = Array.from({ length: total }, (_, n) => `k${n}`).filter((k) => !bKeys.has(k));
    assert.deepEqual(missing, [], `B lost ${missing.length} of ${total} updates to A's claim`);
    assert.ok((await r.metrics()).dropped('owner_conflict') >= 3, 'A\'s repeated claims were not all refused');
    assert.equal(na.received.length, 0, 'A\'s node got an update');

    // A's agent leaving sends an UNSUBSCRIBE naming B's address under A's link: refused, B's entry stays.
    const conflicts = (await r.metrics()).dropped('owner_conflict');
    await a.stop();
    await eventually('A\'s unsubscribe refused', async () => ((await r.metrics()).dropped('owner_conflict') > conflicts ? true : undefined));
    assert.deepEqual(r.d.log.matching('unsubscribed', { address: `127.0.0.1:${bBind}` }), [], 'A\'s unsubscribe removed B\'s entry');
    // A again (still listed), claiming B's address, for the revocation.
    const linkedA = r.d.log.matching('link confirmed', { peer: 'node-a' }).length;
    await linkedAgent(f, ia, na, ['--advertise', `127.0.0.1:${bBind}`]);
    await r.d.log.waitFor('link confirmed', { peer: 'node-a' }, { count: linkedA + 1 });

    // A revoked: B's entry is B's, so it stays, and B keeps receiving.
    peersFile([`${ib.pub} node-b`], f.repeaterPeers);
    r.d.signal('SIGHUP');
    const revoked = await r.d.log.waitFor('identities revoked: links dropped');
    const subs = JSON.parse((await httpGet(r.metricsPort, '/subscribers')).body) as Array<{ form: string; address: string; identity?: string }>;
    assert.deepEqual(
      subs.filter((s) => s.form === 'sealed').map((s) => [s.address, s.identity]),
      [[`127.0.0.1:${bBind}`, 'node-b']],
      `after the revocation (${JSON.stringify(revoked)})`,
    );
    await sender.send(set('after-revoke'), pp);
    await eventually('B got the update after the revocation', () => (nb.received.some((m) => keyOf(m) === 'after-revoke') ? true : undefined));
  });
});

describe('identity mode: several repeaters on one host', () => {
  test('one agent with two repeaters on 127.0.0.1 (two ports, each its own identity) links with both and gets what each forwards', async () => {
    const ia = await identity();
    const [r1, r2] = [await identity(), await identity()];
    const start = async (id: { file: string }) => {
      const sp = await freePort();
      const pp = await freePort();
      const peers = peersFile([`${ia.pub} node-a`]);
      const d = track(await serve(['--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--identity', id.file, '--peers', peers]));
      return { d, sp, pp };
    };
    const [one, two] = [await start(r1), await start(r2)];
    const na = await scope.receiver();
    const peers = peersFile([`${r1.pub} repeater-1 role=repeater`, `${r2.pub} repeater-2 role=repeater`]);
    const local = await freePort();
    track(await agent(['--repeater', `127.0.0.1:${one.sp}`, '--repeater', `127.0.0.1:${two.sp}`, '--identity', ia.file, '--peers', peers, '--local', `127.0.0.1:${local}`, '--deliver', na.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5']));
    await one.d.d.log.waitFor('subscribed', { form: 'sealed' });
    await two.d.d.log.waitFor('subscribed', { form: 'sealed' });
    await sender.send(set('via-1'), one.pp);
    await sender.send(set('via-2'), two.pp);
    const got = await na.waitFor(2);
    assert.deepEqual(got.map(keyOf).sort(), ['via-1', 'via-2']);
  });
});

// The cluster bus by identity (serve --identity --peers --cluster, no
// --cluster-key-file): a key's role decides who speaks on the bus. Real
// nats-server, real repeaters through the CLI, each with its own identity and
// a peers file listing its fellow repeaters role=repeater and a node's key
// role=node. The node's key, driven through the project's own bus code
// (test/helpers/bus-intruder.ts), tries every repeater's job on the bus:
// joining it, announcing subscribers, answering a state fetch, issuing
// ticket keys; each is refused and counted. Then a repeater is revoked by a
// reload of the others' peers files.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { identityIdOf, parsePublicKey } from '../../src/crypto/identity.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { encodeSubscription } from '../../src/wire/subscription.js';
import { httpGet, type Running, serve } from '../helpers/attack.js';
import { BusIntruder } from '../helpers/bus-intruder.js';
import { runCli } from '../helpers/daemon.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort, type Receiver, untraced } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the identity bus suite (test/system/cluster.identity.test.ts)', 'The cluster bus by identity is NOT being tested.', natsAvailability(), NATS_HINT);

const scope = new Scope();
const { sender } = scope;
const WAIT = 10_000;
const CLUSTER = 'idb';
const FETCH_OVER = 'cluster: live state fetch over; warm joins start';
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-idbus-'));
const set = (k: string, v = `value of ${k}`) => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);
const keyOf = (d: Buffer) => {
  const u = untraced(d);
  return u.toString('latin1', 6, 6 + u.readUInt16LE(4));
};
const got = (rx: Receiver, k: string) => rx.received.some((d) => keyOf(d) === k);

let ids = 0;
async function identity(name: string): Promise<{ name: string; file: string; pub: string }> {
  const file = join(dir, `${name}-${ids++}.id`);
  const k = await runCli(['keygen', '--identity', file]);
  assert.equal(k.code, 0, k.stderr);
  const p = await runCli(['pubkey', file]);
  return { name, file, pub: p.stdout.trim() };
}

function peersFile(file: string, lines: string[]): string {
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o644 });
  return file;
}

interface Rep {
  readonly name: string;
  readonly r: Running;
  readonly port: number;
  readonly peers: string;
}

describe('the cluster bus by identity: only role=repeater keys speak', { skip, timeout: 180_000 }, () => {
  let nats: NatsCluster;
  let ids3: Array<{ name: string; file: string; pub: string }>;
  let node: { name: string; file: string; pub: string };
  let spare: { name: string; file: string; pub: string };
  /** What every repeater lists: the three repeaters and a spare repeater key, and the node's key as role=node. */
  let fleet: string[];
  /** An agent's peers file: the repeaters (what the node's key is given to try the bus with). */
  let agentPeers: string;
  const reps: Rep[] = [];

  before(async () => {
    requireNats();
    nats = await NatsCluster.start(1, 'uridbus');
    scope.track(nats);
    ids3 = [await identity('r1'), await identity('r2'), await identity('r3')];
    node = await identity('node-1');
    spare = await identity('spare');
    fleet = [...ids3.map((i) => `${i.pub} ${i.name} role=repeater`), `${spare.pub} spare role=repeater`, `${node.pub} ${node.name}`];
    agentPeers = peersFile(join(dir, 'agent-peers'), [...ids3.map((i) => `${i.pub} ${i.name} role=repeater`), `${spare.pub} spare role=repeater`]);
  });
  after(async () => {
    for (const r of reps) await r.r.stop();
  });

  async function start(i: number, waitFetch = true): Promise<Rep> {
    const id = ids3[i]!;
    const [port, sp] = [await freePort(), await freePort()];
    const peers = peersFile(join(dir, `${id.name}-peers`), fleet);
    const r = await serve([
      '--listen', `127.0.0.1:${port},channel=ssl,key=ssl`,
      '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`,
      '--identity', id.file, '--peers', peers,
      '--cluster', nats.urls[0]!, '--cluster-name', CLUSTER, '--cluster-peer-timeout', '1.5',
      '--log-level', 'info',
    ]);
    const rep = { name: id.name, r, port, peers };
    reps.push(rep);
    // Held until its fetch at start is over: a peer still fetching is not ready to be asked.
    if (waitFetch) await r.d.log.waitFor(FETCH_OVER, {}, { ms: WAIT });
    return rep;
  }

  async function subscribe(n: Rep, rx: Receiver): Promise<void> {
    const from = n.r.d.log.length;
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), n.port);
    await n.r.d.log.waitFor('subscribed', { address: rx.address }, { from });
  }

  const dropped = async (n: Rep, reason: string) => (await n.r.metrics()).value('udprepeater_cluster_messages_dropped_total', { reason }) ?? 0;
  const received = async (n: Rep, kind: string) => (await n.r.metrics()).value('udprepeater_cluster_messages_received_total', { kind }) ?? 0;
  const health = async (n: Rep) => JSON.parse((await httpGet(n.r.metricsPort, '/healthz')).body) as { cluster: { id: string; sealed: boolean; keys: string[]; peers: Array<{ id: string; name: string }> } };
  /** Resolves once `n` counted `reason` more than `above` times. */
  const counted = (n: Rep, reason: string, above: number) => eventually(`${n.name} to count ${reason} above ${above}`, async () => ((await dropped(n, reason)) > above ? true : undefined), WAIT);

  test('three repeaters by identity, no cluster key: a datagram into one reaches the subscribers of the others; a repeater started later fetches the warm state from a peer', async () => {
    const [r1, r2] = [await start(0), await start(1)];
    for (const r of [r1, r2]) await r.r.d.log.waitFor('cluster peer joined', {}, { ms: WAIT });
    const [rx1, rx2] = [await scope.receiver(), await scope.receiver()];
    await subscribe(r1, rx1);
    await subscribe(r2, rx2);
    await sender.send(set('into-r1'), r1.port);
    await sender.send(set('into-r2'), r2.port);
    await eventually('into-r1 at r2\'s subscriber', () => (got(rx2, 'into-r1') ? true : undefined), WAIT);
    await eventually('into-r2 at r1\'s subscriber', () => (got(rx1, 'into-r2') ? true : undefined), WAIT);
    const h = await health(r1);
    assert.equal(h.cluster.sealed, true);
    assert.ok(h.cluster.keys.some((k) => k.startsWith('r2:')), `r1 holds no key of r2: ${JSON.stringify(h.cluster.keys)}`);

    // r3 starts later: it learns the others' keys from their answers to its announcement, and fetches their state.
    const r3 = await start(2);
    const over = await r3.r.d.log.waitFor(FETCH_OVER, {}, { ms: WAIT });
    assert.equal(over['result'], 'complete', JSON.stringify(over));
    const m3 = await r3.r.metrics();
    assert.equal(m3.value('udprepeater_cluster_state_entries_received_total', { outcome: 'set' }), 2, 'the peer sent both live entries');
    const rx3 = await scope.receiver();
    await subscribe(r3, rx3);
    await eventually('the warm join of r3\'s subscriber', () => (got(rx3, 'into-r1') && got(rx3, 'into-r2') ? true : undefined), WAIT);
    await sender.send(set('into-r3'), r3.port);
    for (const rx of [rx1, rx2]) await eventually('into-r3 at the others\' subscribers', () => (got(rx, 'into-r3') ? true : undefined), WAIT);
  });

  test('a node identity that joins the bus is refused (not_repeater, then unknown_key for its heartbeats) and never becomes a peer; the same helper with a repeater key does', async () => {
    const [r1] = reps as [Rep];
    const [notRepeater, unknownKey] = [await dropped(r1, 'not_repeater'), await dropped(r1, 'unknown_key')];
    const intruder = await BusIntruder.join(nats.urls[0]!, CLUSTER, node.file, agentPeers);
    await intruder.announce();
    intruder.heartbeat('intruder');
    await counted(r1, 'not_repeater', notRepeater);
    await counted(r1, 'unknown_key', unknownKey);
    const peers = (await health(r1)).cluster.peers;
    assert.ok(!peers.some((p) => p.name === 'intruder'), `the node's key became a peer: ${JSON.stringify(peers)}`);
    await intruder.close();
    console.log(JSON.stringify({ not_repeater: (await dropped(r1, 'not_repeater')) - notRepeater, unknown_key: (await dropped(r1, 'unknown_key')) - unknownKey }));

    // The control: the same helper and code with a key listed role=repeater is heard as a peer.
    const control = await BusIntruder.join(nats.urls[0]!, CLUSTER, spare.file, agentPeers);
    await control.announce();
    control.heartbeat('spare-peer');
    await eventually('the spare repeater key heard as a peer', async () => ((await health(r1)).cluster.peers.some((p) => p.name === 'spare-peer') ? true : undefined), WAIT);
    await control.close();
  });

  test('a node identity that announces a subscriber is refused: the plain subscriber it claims to serve sealed keeps its stream', async () => {
    const [r1, r2] = reps as [Rep, Rep];
    const rx = await scope.receiver();
    await subscribe(r1, rx);
    const unknownKey = await dropped(r1, 'unknown_key');
    const intruder = await BusIntruder.join(nats.urls[0]!, CLUSTER, node.file, agentPeers);
    await intruder.announce();
    intruder.heartbeat('intruder');
    // Heard sealed elsewhere, an address loses its plain entries cluster-wide (the no-downgrade rule): a takedown, if believed.
    const claim = { type: 'subscriber' as const, channel: 'ssl', sealed: true, address: rx.address, key: 'ssl', origin: 0n, deadlineMs: Date.now() + 600_000, isStatic: false, warmed: true };
    await intruder.publish(claim);
    await counted(r1, 'unknown_key', unknownKey + 1);
    await intruder.close();
    await sender.send(set('after-the-claim'), r2.port);
    await eventually('after-the-claim at the subscriber the node claimed', () => (got(rx, 'after-the-claim') ? true : undefined), WAIT);
    const subs = JSON.parse((await httpGet(r1.r.metricsPort, '/subscribers')).body) as Array<{ address: string; form: string; heardBy: string[] }>;
    const entry = subs.find((s) => s.address === rx.address);
    assert.equal(entry?.form, 'plain');
    assert.ok(!entry.heardBy.some((h) => h.includes('intruder')), JSON.stringify(entry));
  });

  test('a node identity that issues ticket keys is refused: no ticket message is ever opened', async () => {
    const [r1, r2] = reps as [Rep, Rep];
    const unknownKey = await Promise.all([r1, r2].map((r) => dropped(r, 'unknown_key')));
    const intruder = await BusIntruder.join(nats.urls[0]!, CLUSTER, node.file, agentPeers);
    await intruder.announce();
    intruder.heartbeat('intruder');
    const now = Date.now();
    await intruder.publish({ type: 'tickets', keys: [{ id: 0x4141n, notBeforeMs: now - 60_000, notAfterMs: now + 3_600_000, createdMs: 1, secret: Buffer.alloc(80, 0x41) }] });
    for (const [i, r] of [r1, r2].entries()) await counted(r, 'unknown_key', unknownKey[i]! + 1);
    await intruder.close();
    for (const r of [r1, r2]) {
      assert.equal(await received(r, 'tickets'), 0, `${r.name} opened a ticket message`);
      assert.equal(await dropped(r, 'not_deliverable'), 0, `${r.name} took a ticket message as a peer's`);
    }
  });

  test('a node identity that answers a state fetch is refused: the repeater that starts asks a real one and warms with its state, not the node\'s', async () => {
    const [r1] = reps as [Rep];
    // r3 leaves; the node's key waits for it to come back, claiming to be the steadiest ready peer, and answers its fetch.
    const r3 = reps.pop()!;
    await r3.r.stop();
    await sender.send(set('real'), r1.port);
    const intruder = await BusIntruder.join(nats.urls[0]!, CLUSTER, node.file, agentPeers);
    intruder.heartbeat('intruder');
    // Its key, announced again and again so the newcomer hears it too.
    const spam = setInterval(() => void intruder.announce().catch(() => undefined), 200);
    // Chunks for the first request of the newcomer's fetch, every 50 ms from its key announcement (its bus origin) on.
    const r3IdHex = Buffer.from(identityIdOf(parsePublicKey(ids3[2]!.pub) as Uint8Array)).toString('hex');
    intruder.origins.delete(r3IdHex);
    const chunks = setInterval(() => {
      const to = intruder.origins.get(r3IdHex);
      if (to === undefined) return;
      const entries = [{ type: 'datagram' as const, channel: 'ssl', datagram: set('poison', 'from the node'), trace: null, origin: 0n, opaque: false }];
      void intruder.publish({ type: 'state_chunk', request: 1, seq: 0, entries, last: true, total: 1, declined: false }, `${CLUSTER}.st.${to.toString(16)}`).catch(() => undefined);
    }, 50);
    const again = await start(2, false);
    const over = await again.r.d.log.waitFor(FETCH_OVER, {}, { ms: WAIT });
    clearInterval(chunks);
    clearInterval(spam);
    await intruder.close();
    assert.equal(over['result'], 'complete', JSON.stringify(over));
    const rx = await scope.receiver();
    await subscribe(again, rx);
    await eventually('the real entry in the warm join', () => (got(rx, 'real') ? true : undefined), WAIT);
    assert.ok(!got(rx, 'poison'), 'the node\'s state answer was applied');
    assert.ok((await dropped(again, 'not_repeater')) > 0, 'the node\'s announcement was not refused as not_repeater');
    assert.ok((await dropped(again, 'unknown_key')) > 0, 'the node\'s frames were not refused as unknown_key');
  });

  test('a bad peers file at reload is refused and the bus goes on under the running table and keys', async () => {
    const [r1, r2] = reps as [Rep, Rep];
    const keys = (await health(r1)).cluster.keys;
    const rx = await scope.receiver();
    await subscribe(r1, rx);
    peersFile(r1.peers, [...fleet, 'not a peers line']);
    const from = r1.r.d.log.length;
    r1.r.d.signal('SIGHUP');
    const refused = await r1.r.d.log.waitFor('reload refused; keeping the running config', {}, { from, ms: WAIT });
    assert.match(String(refused['error']), /peers/);
    assert.deepEqual((await health(r1)).cluster.keys, keys, 'the refused reload changed the bus keys');
    await sender.send(set('after-a-bad-reload'), r2.port);
    await eventually('after-a-bad-reload at r1\'s subscriber', () => (got(rx, 'after-a-bad-reload') ? true : undefined), WAIT);
    peersFile(r1.peers, fleet);
  });

  test('a repeater removed from the others\' peers files (SIGHUP) is revoked: its frames are refused as revoked, it is forgotten as a peer, and it cannot read what follows', async () => {
    const [r1, r2, r3] = reps as [Rep, Rep, Rep];
    const r3id = (await health(r3)).cluster.id;
    await eventually('r1 to count r3 live', async () => ((await health(r1)).cluster.peers.some((p) => p.id === r3id) ? true : undefined), WAIT);
    const [rx1, rx3] = [await scope.receiver(), await scope.receiver()];
    await subscribe(r1, rx1);
    await subscribe(r3, rx3);
    const revoked = await dropped(r1, 'revoked');
    const notForUs = await dropped(r3, 'not_for_us');
    const without = fleet.filter((l) => !l.startsWith(ids3[2]!.pub));
    for (const r of [r1, r2]) {
      peersFile(r.peers, without);
      const from = r.r.d.log.length;
      r.r.d.signal('SIGHUP');
      await r.r.d.log.waitFor('config applied', {}, { from, ms: WAIT });
      await r.r.d.log.waitFor('cluster bus: a repeater revoked; its key dropped', { peer: 'r3' }, { from, ms: WAIT });
    }
    // r3 heartbeats on under its key: refused as revoked, and it is no peer any more.
    await counted(r1, 'revoked', revoked);
    assert.ok(!(await health(r1)).cluster.peers.some((p) => p.id === r3id), 'r1 still counts r3 as a peer');
    // r1 and r2 drew new keys, handed to each other only: r3 gets announcements with nothing for it.
    await counted(r3, 'not_for_us', notForUs);
    await sender.send(set('after-revocation'), r2.port);
    await eventually('after-revocation at r1\'s subscriber', () => (got(rx1, 'after-revocation') ? true : undefined), WAIT);
    await sender.send(set('from-revoked'), r3.port);
    await eventually('from-revoked at r3\'s own subscriber', () => (got(rx3, 'from-revoked') ? true : undefined), WAIT);
    // What r1 and r2 send now reaches r3's bus connection and does not open there; r3's own datagram stays with r3.
    await sender.send(set('marker'), r3.port);
    await eventually('marker at r3', () => (got(rx3, 'marker') ? true : undefined), WAIT);
    assert.ok(!got(rx3, 'after-revocation'), 'the revoked repeater delivered what was sent after the reload');
    assert.ok(!got(rx1, 'from-revoked'), 'r1 delivered a datagram the revoked repeater published');
    console.log(JSON.stringify({ revoked: (await dropped(r1, 'revoked')) - revoked, r3_unknown_key: await dropped(r3, 'unknown_key') }));
  });
});

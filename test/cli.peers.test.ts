// `udprepeater peers` and the per-identity metrics (issue 18: operators see
// who is who), run as real processes against a repeater and an agent linked
// by identity: each listed identity's row (role, key, allow, linked, last
// seen, refusals pinned on it by reason), the same in /metrics with label
// values from the peers file only, and a revoked identity kept, marked, for
// its revoked window.

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { identityIdOf, parsePublicKey } from '../src/crypto/identity.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { agent, frames, httpGet, type Running, serve, Tap } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { eventually, freePort } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import { writePeers } from './helpers/identities.js';

const scope = new Scope();
const { sender } = scope;
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-peers-'));
let files = 0;

function track<T extends { stop(): Promise<unknown> } | { close(): unknown }>(r: T): T {
  scope.track({ close: () => ('stop' in r ? r.stop() : r.close()) });
  return r;
}

async function identity(): Promise<{ file: string; pub: string }> {
  const file = join(dir, `id${files++}`);
  assert.equal((await runCli(['keygen', '--identity', file])).code, 0);
  const p = await runCli(['pubkey', file]);
  assert.equal(p.code, 0, p.stderr);
  return { file, pub: p.stdout.trim() };
}

function peersFile(lines: string[], file = join(dir, `peers${files++}`)): string {
  return writePeers(file, lines);
}

/** A HELLO naming `pub`'s identity with a mac nobody could verify. */
function forgedHello(pub: string): Buffer {
  const b = Buffer.alloc(128);
  for (let i = 4; i < 128; i++) b[i] = (Math.random() * 256) | 0;
  b.set([0x75, 0x72, 3, 1], 0);
  b.set(identityIdOf(parsePublicKey(pub) as Uint8Array), 8);
  b.writeBigUInt64LE(BigInt(Date.now()), 48);
  return b;
}

const refused = async (d: Running, prefix: string, peer: string, reason: string) => (await d.metrics()).value(`${prefix}_peer_frames_refused_total`, { peer, reason });

test('peers and the per-identity metrics of a repeater and an agent: linked, last seen, refusals pinned on the identity they name; an unlisted identity makes no series; a revoked one stays marked', async () => {
  const [ir, ia, ib, ic] = [await identity(), await identity(), await identity(), await identity()];
  const [sp, pp, aBind] = [await freePort(), await freePort(), await freePort()];
  const repeaterPeers = peersFile([`${ia.pub} node-a allow=127.0.0.0/8`, `${ib.pub} node-b`]);
  const r = track(await serve(['--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--identity', ir.file, '--peers', repeaterPeers]));
  const agentPeers = peersFile([`${ir.pub} repeater-a role=repeater`]);
  const node = await scope.receiver();
  // A's copies pass a tap (its advertised address), which keeps them.
  const tapA = track(await Tap.open(aBind));
  const linked = (id: { file: string }, more: string[]) =>
    agent(['--repeater', `127.0.0.1:${sp}`, '--identity', id.file, '--peers', agentPeers, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '0.5', ...more]);
  const a = track(await linked(ia, ['--local', `127.0.0.1:${await freePort()}`, '--bind', `127.0.0.1:${aBind}`, '--advertise', `127.0.0.1:${tapA.port}`]));
  await r.d.log.waitFor('subscribed', { form: 'sealed' });
  await sender.send(encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0), pp);
  await node.waitFor(1);

  // B announces A's address: refused, pinned on node-b.
  const b = track(await linked(ib, ['--local', `127.0.0.1:${await freePort()}`, '--advertise', `127.0.0.1:${tapA.port}`]));
  await eventually('owner_conflict pinned on node-b', async () => ((await refused(r, 'udprepeater', 'node-b', 'owner_conflict')) > 0 ? true : undefined));
  // A forged HELLO naming node-a: refused after the lookup, pinned on node-a; one naming an unlisted identity: counted on the channel only.
  const attacker = track(await Tap.open(sp));
  await attacker.replay(forgedHello(ia.pub));
  await attacker.replay(forgedHello(ic.pub));
  await eventually('auth_failed pinned on node-a', async () => ((await refused(r, 'udprepeater', 'node-a', 'auth_failed')) > 0 ? true : undefined));
  await eventually('unknown_peer counted', async () => ((await r.metrics()).dropped('unknown_peer') > 0 ? true : undefined));
  // Frames the repeater sealed for A, replayed to A from the repeater's host: refused as replays, pinned on repeater-a.
  const forA = frames(tapA.captured);
  assert.ok(forA.length > 0, 'nothing captured for A');
  for (const m of forA) await attacker.replay(m, aBind);
  await eventually('replay pinned on repeater-a', async () => ((await refused(a, 'udprepeater_agent', 'repeater-a', 'replay')) >= forA.length ? true : undefined));

  // The metrics: label values are peers-file names only.
  const m = await r.metrics();
  const peerLabels = new Set([...m.text.matchAll(/^udprepeater_peer_\w+\{[^}]*peer="([^"]*)"/gm)].map((x) => x[1]));
  assert.deepEqual([...peerLabels].sort(), ['node-a', 'node-b']);
  assert.equal(m.value('udprepeater_peer_linked', { peer: 'node-a' }), 1);
  assert.equal(m.value('udprepeater_peer_linked', { peer: 'node-b' }), 1);
  const seenA = m.value('udprepeater_peer_last_seen_seconds', { peer: 'node-a' });
  assert.ok(Math.abs(seenA - Date.now() / 1000) < 5, `node-a last seen ${seenA}`);
  const am = await a.metrics();
  assert.equal(am.value('udprepeater_agent_peer_linked', { peer: 'repeater-a' }), 1);
  assert.ok(am.value('udprepeater_agent_peer_last_seen_seconds', { peer: 'repeater-a' }) > 0);

  // `peers` against the repeater: the identity table, then the cluster line.
  const metrics = `127.0.0.1:${r.metricsPort}`;
  const out = await runCli(['peers', '--metrics', metrics]);
  assert.equal(out.code, 0, out.stderr);
  const lines = out.stdout.split('\n');
  assert.match(lines[0]!, /^identities: this repeater is urid1\S+, peers file [0-9a-f]+… \(2 listed, 2 linked\)$/);
  assert.match(lines[1]!, /^NAME +ROLE +KEY +ALLOW +STATE +LAST SEEN +REFUSED$/);
  assert.match(lines[2]!, new RegExp(`^node-a +node +${ia.pub.slice(0, 16)}… +127\\.0\\.0\\.0/8 +linked +\\d{4}-\\d\\d-\\d\\d [\\d:]+Z +auth_failed 1$`));
  assert.match(lines[3]!, new RegExp(`^node-b +node +${ib.pub.slice(0, 16)}… +any +linked +\\S+ \\S+ +owner_conflict \\d+$`));
  assert.match(out.stdout, /\nnot in cluster mode: this repeater has no peers\n$/);
  const json = JSON.parse((await runCli(['peers', '--metrics', metrics, '--json'])).stdout) as { identity: { peers: Array<{ name: string; linked: boolean; refused: Record<string, number> }> }; cluster: unknown[] };
  assert.deepEqual(json.cluster, []);
  assert.deepEqual(json.identity.peers.map((p) => [p.name, p.linked, p.refused['auth_failed'] ?? 0]), [
    ['node-a', true, 1],
    ['node-b', true, 0],
  ]);

  // `peers` against the agent: its repeater identity, then its repeaters.
  const ao = await runCli(['peers', '--metrics', `127.0.0.1:${a.metricsPort}`]);
  assert.equal(ao.code, 0, ao.stderr);
  assert.match(ao.stdout, /^identities: this agent is urid1\S+, peers file [0-9a-f]+… \(1 listed, 1 linked\)\n/);
  assert.match(ao.stdout, new RegExp(`\\nrepeater-a +repeater +${ir.pub.slice(0, 16)}… +any +linked +\\S+ \\S+ +replay ${forA.length}\\n`));
  assert.match(ao.stdout, /\n\nREPEATER +ADVERTISED AS +IDENTITY +SENT +RECEIVED +LAST FRAME\n/);

  // Revoking node-b: its row stays, marked, and what its agent still sends is pinned on it as revoked.
  peersFile([`${ia.pub} node-a allow=127.0.0.0/8`], repeaterPeers);
  r.d.signal('SIGHUP');
  await r.d.log.waitFor('identities revoked: links dropped');
  await eventually('revoked pinned on node-b', async () => ((await refused(r, 'udprepeater', 'node-b', 'revoked')) > 0 ? true : undefined));
  const after = await r.metrics();
  assert.equal(after.value('udprepeater_peer_linked', { peer: 'node-b' }), 0);
  assert.match(after.text, /^udprepeater_peer_linked\{peer="node-b"\} 0$/m, 'the revoked identity\'s series went before its window');
  const health = JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { identity: { links: number; peers: Array<{ name: string; revokedUntil?: string }> } };
  assert.equal(health.identity.links, 1);
  assert.ok(health.identity.peers.find((p) => p.name === 'node-b')?.revokedUntil !== undefined, 'node-b not marked revoked');
  assert.match((await runCli(['peers', '--metrics', metrics])).stdout, /\nnode-b +node +\S+ +any +revoked \(until [^)]+\) /);
  void b;
});

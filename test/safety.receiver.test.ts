// Safety: a sealed frame is for the receiver it was sealed for (issue 15,
// item 5). With one shared key every agent can open every frame, so a frame
// captured at one receiver and re-sent to another would be new there (its
// sequence unseen, its send time within --max-skew): a frame sealed for one
// receiver names it and is refused anywhere else (`wrong_receiver`), and a
// group frame (one seal for every subscriber of a channel key) sealed while
// an agent was not a member is refused by that agent once the repeater told
// it when it joined (`before_join`). Black box like test/safety.replay.test.ts:
// real daemons through the CLI (UDPREPEATER_CLI runs the same attacks against
// another build), captures taken on the wire by a relay or a socket the agent
// sends to, never built by the test.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { decodeCacheUpdate, encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { agent, frames, keygen, type Running, serve, Tap } from './helpers/attack.js';
import { eventually, freePort, type Receiver, Sender } from './helpers/net.js';
import { Scope } from './helpers/scope.js';

const scope = new Scope();
const { sender } = scope;
const secret = (k: string, v: string) => encodeCacheSet(Buffer.from(k), Buffer.from(v), 0);
const del = (k: string) => encodeCacheDelete(Buffer.from(k), false);
/** What a node was sent, as "set key" / "delete key". */
const updates = (got: readonly Buffer[]) =>
  got.map((d) => {
    const u = decodeCacheUpdate(d);
    return typeof u === 'string' ? `? ${u}` : `${u.op} ${u.key.toString()}`;
  });

function track<T extends { stop(): Promise<unknown> } | { close(): unknown }>(r: T): T {
  scope.track({ close: () => ('stop' in r ? r.stop() : r.close()) });
  return r;
}

async function ports(n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await freePort());
  return out;
}

/**
 * Sends a marker through the repeater's plain `port` and returns what `rx`
 * got after its first `seen` datagrams and before the marker: anything the
 * attack got through.
 */
async function beforeMarker(rx: Receiver, seen: number, port: number): Promise<Buffer[]> {
  const marker = secret('marker', 'm');
  await sender.send(marker, port);
  for (let n = seen + 1; ; n++) {
    const got = await rx.waitFor(n);
    if (updates([got[n - 1]!])[0] === 'set marker') return got.slice(seen, n - 1);
  }
}

const agentCounter = async (a: Running, name: 'received' | 'dropped', reason?: string) =>
  (await a.metrics()).value(`udprepeater_agent_datagrams_${name}_total`, reason === undefined ? { channel: 'to_node' } : { channel: 'to_node', reason });

/** Re-sends `captured` to an agent's socket from the repeater's IP (the agent takes any port of it), and waits until the agent read them. */
async function replayToAgent(a: Running, captured: readonly Buffer[], port: number): Promise<void> {
  const replayer = await Sender.bound('127.0.0.1');
  scope.track(replayer);
  const before = await agentCounter(a, 'received');
  for (const f of captured) await replayer.send(f, port);
  await eventually('the agent to read the replayed frames', async () => ((await agentCounter(a, 'received')) >= before + captured.length ? true : undefined));
}

describe('frames sealed for one agent, re-sent to another agent', () => {
  test("warm-join frames sealed for n3, re-sent to n2's agent from the repeater's address, are refused: n2's node never gets the deleted session back", async () => {
    const key = await keygen();
    const [pp, sp, bind2, bind3, local2, local3] = await ports(6);
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key]));
    const [node2, node3] = [await scope.receiver(), await scope.receiver()];
    const common = ['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--channel-key', 'ssl', '--subscribe-interval', '30'];
    const n2 = track(await agent([...common, '--bind', `127.0.0.1:${bind2}`, '--local', `127.0.0.1:${local2}`, '--deliver', node2.address]));
    await r.d.log.waitFor('subscribed', { address: `127.0.0.1:${bind2}` });
    // A node sets a session: n2's node gets it live, and the repeater keeps it in its live state.
    await sender.send(secret('sess1', 'SECRET-v1'), pp);
    assert.deepEqual(updates(await node2.waitFor(1)), ['set sess1']);
    // n3 joins through a relay that keeps a copy of what the repeater sends it: its warm join.
    const relay = track(await Tap.open(bind3));
    track(await agent([...common, '--bind', `127.0.0.1:${bind3}`, '--advertise', `127.0.0.1:${relay.port}`, '--local', `127.0.0.1:${local3}`, '--deliver', node3.address]));
    assert.deepEqual(updates(await node3.waitFor(1)), ['set sess1'], 'n3 was not warmed');
    const captured = frames(relay.captured);
    assert.ok(captured.length >= 1);
    // The session is deleted everywhere.
    await sender.send(del('sess1'), pp);
    assert.deepEqual(updates(await node2.waitFor(2)), ['set sess1', 'delete sess1']);
    await node3.waitFor(2);
    // The attacker re-sends what n3 was sent to n2's agent, from the repeater's IP.
    await replayToAgent(n2, captured, bind2);
    const got = await beforeMarker(node2, 2, pp);
    const wrongReceiver = await agentCounter(n2, 'dropped', 'wrong_receiver');
    console.log(JSON.stringify({ replayed: captured.length, deliveredToN2: updates(got), wrong_receiver: wrongReceiver }));
    assert.deepEqual(updates(got), [], "n2's node got frames sealed for n3: the deleted session is back");
    assert.equal(wrongReceiver, captured.length, 'every frame sealed for n3 is refused as wrong_receiver');
  });

  test('a group frame sealed while an agent was not a member, re-sent to it once it joined again, is refused: the deleted session does not come back', async () => {
    const key = await keygen();
    const [pp, sp, bind2, bind3, local2, local3] = await ports(6);
    const args = ['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key];
    let r = await serve(args);
    const [node2, node3] = [await scope.receiver(), await scope.receiver()];
    const common = ['--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--channel-key', 'ssl'];
    // n2 announces every 30 s, n3 (behind a relay that keeps copies) every 0.2 s.
    const n2 = track(await agent([...common, '--subscribe-interval', '30', '--bind', `127.0.0.1:${bind2}`, '--local', `127.0.0.1:${local2}`, '--deliver', node2.address]));
    const relay = track(await Tap.open(bind3));
    const n3Address = `127.0.0.1:${relay.port}`;
    track(await agent([...common, '--subscribe-interval', '0.2', '--bind', `127.0.0.1:${bind3}`, '--advertise', n3Address, '--local', `127.0.0.1:${local3}`, '--deliver', node3.address]));
    await r.d.log.waitFor('subscribed', { address: `127.0.0.1:${bind2}` });
    // The repeater restarts without --state-dir: n3 is back at once, n2 only at its next announce.
    await r.stop();
    r = track(await serve(args));
    await r.d.log.waitFor('subscribed', { address: n3Address });
    // A session is set, then deleted, while n2 is no member: one frame sealed for the group, n3 alone.
    const from = relay.captured.length;
    await sender.send(secret('sess1', 'SECRET-v1 '.repeat(60)), pp);
    assert.deepEqual(updates(await node3.waitFor(1)), ['set sess1']);
    // Its frame is the one large enough to carry the 600-byte value (the others are control frames).
    const captured = frames(relay.captured.slice(from)).filter((f) => f.length > 600);
    assert.equal(captured.length, 1);
    await sender.send(del('sess1'), pp);
    await node3.waitFor(2);
    // n2's node restarts: its agent announces as new (SIGUSR1); a live update reaches it.
    const seen = r.d.log.length;
    n2.d.signal('SIGUSR1');
    await r.d.log.waitFor('subscribed', { address: `127.0.0.1:${bind2}` }, { from: seen });
    await sender.send(secret('live', 'v'), pp);
    assert.deepEqual(updates(await node2.waitFor(1)), ['set live']);
    // The attacker re-sends the group frame n3 got to n2's agent, from the repeater's IP.
    await replayToAgent(n2, captured, bind2);
    const got = await beforeMarker(node2, 1, pp);
    const beforeJoin = await agentCounter(n2, 'dropped', 'before_join');
    console.log(JSON.stringify({ replayed: captured.length, deliveredToN2: updates(got), before_join: beforeJoin }));
    assert.deepEqual(updates(got), [], "n2's node got a frame sealed before its agent was a member: the deleted session is back");
    assert.equal(beforeJoin, captured.length, 'the group frame is refused as before_join');
  });
});

describe('frames an agent sealed for one repeater, re-sent to another', () => {
  test('a subscription sealed for another repeater subscribes nobody', async () => {
    const key = await keygen();
    const [pp, sp, bind, local] = await ports(4);
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key]));
    // The agent's repeater is a socket that keeps what reaches it.
    const elsewhere = await scope.receiver();
    const node = await scope.receiver();
    track(await agent(['--repeater', elsewhere.address, '--key-file', key, '--bind', `127.0.0.1:${bind}`, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '30']));
    const [subscription] = frames(await elsewhere.waitFor(1));
    await sender.send(subscription!, sp);
    await eventually('the repeater to read it', async () => ((await r.metrics()).value('udprepeater_datagrams_received_total', { kind: 'sealed' }) >= 1 ? true : undefined));
    // A later log line: anything the replay made the repeater log is in by then.
    const sink = await scope.receiver();
    await sender.send(encodeSubscription({ key: 'ssl', address: sink.address }), pp);
    await r.d.log.waitFor('subscribed', { address: sink.address });
    const sealed = r.d.log.matching('subscribed', { form: 'sealed' });
    const m = await r.metrics();
    console.log(JSON.stringify({ sealedSubscribers: sealed.map((x) => x['address']), wrong_receiver: m.dropped('wrong_receiver') }));
    assert.deepEqual(sealed, [], 'a subscription the agent sealed for another repeater subscribed it here');
    assert.equal(m.dropped('wrong_receiver'), 1);
  });

  test('an unsubscribe sealed for one repeater, replayed to another, is refused: the agent stays subscribed there', async () => {
    const key = await keygen();
    const [pp, sp, bind, local] = await ports(4);
    const r = track(await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key]));
    // The agent's other repeater is a socket that keeps what reaches it (on another IP: the agent keeps one link per repeater IP).
    const other = await scope.receiver('127.0.0.2');
    const node = await scope.receiver();
    const address = `127.0.0.1:${bind}`;
    const a = track(await agent(['--repeater', other.address, '--repeater', `127.0.0.1:${sp}`, '--key-file', key, '--bind', address, '--local', `127.0.0.1:${local}`, '--deliver', node.address, '--channel-key', 'ssl', '--subscribe-interval', '30']));
    await r.d.log.waitFor('subscribed', { address });
    // Its node restarts: the agent says goodbye and hello to both repeaters.
    a.d.signal('SIGUSR1');
    await r.d.log.waitFor('subscribed', { address }, { count: 2 });
    const [, bye] = frames(await other.waitFor(3));
    // The attacker replays here the goodbye the agent sealed for the other repeater.
    const sealedIn = async () => (await r.metrics()).value('udprepeater_datagrams_received_total', { kind: 'sealed' });
    const before = await sealedIn();
    await sender.send(bye!, sp);
    await eventually('the repeater to read it', async () => ((await sealedIn()) > before ? true : undefined));
    await sender.send(secret('after', 'v'), pp);
    const got = await node.waitFor(1).catch((err: Error) => err);
    const m = await r.metrics();
    console.log(JSON.stringify({ unsubscribed: r.d.log.matching('unsubscribed', { address }).length, wrong_receiver: m.dropped('wrong_receiver'), node: got instanceof Error ? got.message : updates(got) }));
    assert.ok(!(got instanceof Error), `the agent no longer gets the repeater's updates: ${String(got)}`);
    assert.deepEqual(updates(got), ['set after']);
    assert.equal(r.d.log.matching('unsubscribed', { address }).length, 1, 'the replayed goodbye unsubscribed the agent');
    assert.equal(m.dropped('wrong_receiver'), 1);
  });
});

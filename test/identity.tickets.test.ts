// Ticket keys in identity mode (issue 18; docs/PROTOCOL.md, "Ticket keys over
// links"): real `serve` and `agent` daemons through the CLI, each with its own
// identity and peers file, no shared key, real UDP on loopback. Only a
// role=repeater identity issues ticket keys: an agent writes the repeater's
// schedule; a node key posing as a repeater, a node's frames sent straight to
// the agent, and a node's TICKET_KEYS sent to the repeater are each refused
// and counted, and change no ticket file.

import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { loadIdentity, peerKeyFromText, type PeerKey } from '../src/crypto/identity.js';
import { LinkInitiator } from '../src/crypto/link-initiator.js';
import type { LinkCipher } from '../src/crypto/link-keys.js';
import { newTicketKey, nginxTicketKey, TicketKeys, ticketKeyId } from '../src/crypto/ticket-schedule.js';
import { MemberLinks } from '../src/member/member-links.js';
import { parseEndpoint, type Endpoint } from '../src/wire/address.js';
import { bigintToLong, encodeEnvelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { decodeTicketSchedule, type TicketKey } from '../src/wire/ticket-codec.js';
import { agent, type Running, serve } from './helpers/attack.js';
import { eventually, freePort } from './helpers/net.js';
import { Relay } from './helpers/relay.js';
import { Scope } from './helpers/scope.js';
import { makeIdentity, writePeers } from './helpers/identities.js';

const scope = new Scope();
const dir = mkdtempSync(join(tmpdir(), 'udprepeater-id-tickets-'));
let files = 0;
const fresh = (name: string) => join(dir, `${name}-${files++}`);

function track<T extends { stop(): Promise<unknown> } | { close(): unknown }>(r: T): T {
  scope.track({ close: () => ('stop' in r ? r.stop() : r.close()) });
  return r;
}

/** A new identity written by the CLI, and its public key as `pubkey` prints it. */
async function identity(): Promise<{ file: string; pub: string }> {
  const file = fresh('id');
  return makeIdentity(file);
}

function peersFile(lines: string[]): string {
  const file = fresh('peers');
  return writePeers(file, lines);
}

/** A repeater by identity with a `tickets` channel and a state dir; `nodes` are the peers it links. */
async function ticketRepeater(id: { file: string }, nodes: Array<{ pub: string; name: string }>): Promise<{ r: Running; port: number; state: string }> {
  const port = await freePort();
  const state = fresh('state');
  const r = track(await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--identity', id.file, '--peers', peersFile(nodes.map((n) => `${n.pub} ${n.name}`)), '--state-dir', state]));
  return { r, port, state };
}

/** The schedule a repeater saved (tickets.pb) and the key in it that encrypts now. */
function saved(state: string): { keys: readonly TicketKey[]; encrypting: TicketKey } {
  const keys = decodeTicketSchedule(readFileSync(join(state, 'tickets.pb')));
  assert.ok(typeof keys !== 'string', 'tickets.pb does not decode');
  const held = new TicketKeys();
  held.merge(keys, Date.now());
  const enc = held.view(Date.now()).encrypting;
  assert.ok(enc !== null);
  return { keys, encrypting: enc };
}

/**
 * A rogue process holding a node's identity: it links to the repeater as
 * that node (it is listed there) with the real handshake, and so holds the
 * only link keys a node can hold.
 */
class NodeLink {
  private constructor(
    private readonly s: Socket,
    readonly cipher: LinkCipher,
  ) {}

  static async open(idFile: string, repeaterPub: string, repeaterPort: number): Promise<NodeLink> {
    await sodiumReady();
    const key = peerKeyFromText(repeaterPub) as PeerKey;
    const init = new LinkInitiator(loadIdentity(idFile), key);
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    const welcome = new Promise<Buffer>((resolve) => s.once('message', (m) => resolve(m)));
    s.send(Buffer.from(init.hello(Date.now(), { channelKey: 'ssl', address: `127.0.0.1:${s.address().port}` })), repeaterPort, '127.0.0.1');
    const done = init.welcome(await welcome, Date.now());
    assert.ok(typeof done !== 'string', `the node's own handshake failed: ${String(done)}`);
    return new NodeLink(s, done.cipher);
  }

  /** A TICKET_KEYS envelope sealed under this node's own link (as `role`). */
  ticketFrame(keys: readonly TicketKey[], role: Role): Buffer {
    const plain = encodeEnvelope({ kind: EnvelopeKind.TicketKeys, channelKey: 'ssl', sequence: 1, sentAtMs: Date.now(), role, datagram: null, trace: null, address: null, receiver: '', tickets: keys }, bigintToLong(7n));
    return Buffer.from(this.cipher.seal(plain));
  }

  send(frame: Buffer, port: number): Promise<void> {
    return new Promise((r) => this.s.send(frame, port, '127.0.0.1', () => r()));
  }

  close(): void {
    this.s.close();
  }
}

/** A schedule that would win every merge (created at the epoch), as a forger would make it. */
function forgedKeys(): TicketKey[] {
  const now = Date.now();
  return [{ ...newTicketKey(now - 60_000, now + 7_200_000, now), createdMs: 1 }];
}

const agentDropped = async (a: Running, reason: string) => (await a.metrics()).value('udprepeater_agent_datagrams_dropped_total', { reason });

describe('identity mode: ticket keys only from repeater identities', { timeout: 90_000 }, () => {
  test('MemberLinks makes a HELLO for a role=repeater line only: a role=node key is never a candidate', async () => {
    await sodiumReady();
    const [me, other] = [await identity(), await identity()];
    const key = peerKeyFromText(other.pub) as PeerKey;
    const r = parseEndpoint('127.0.0.1:7272') as Endpoint;
    const asNode = new MemberLinks(loadIdentity(me.file), [{ name: 'n', key, allow: [], role: 'node' }]);
    assert.deepEqual(asNode.hellos(r, 'ssl', '127.0.0.1:1', 1000), []);
    const asRepeater = new MemberLinks(loadIdentity(me.file), [{ name: 'r', key, allow: [], role: 'repeater' }]);
    assert.equal(asRepeater.hellos(r, 'ssl', '127.0.0.1:1', 1000).length, 1);
    // A reload that turns the repeater's line into a node line drops its candidate too.
    asRepeater.setPeers([{ name: 'r', key, allow: [], role: 'node' }]);
    assert.deepEqual(asRepeater.hellos(r, 'ssl', '127.0.0.1:1', 1000, Date.now() + 5000), []);
    asNode.destroy();
    asRepeater.destroy();
  });

  test('an agent by identity, no shared key, writes the repeater\'s schedule: nginx files and haproxy.keys', async () => {
    const [ir, ia] = [await identity(), await identity()];
    const { r, port, state } = await ticketRepeater(ir, [{ pub: ia.pub, name: 'node-a' }]);
    const keys = fresh('keys');
    const a = track(
      await agent(['--repeater', `127.0.0.1:${port}`, '--identity', ia.file, '--peers', peersFile([`${ir.pub} repeater-a role=repeater`]), '--local', `127.0.0.1:${await freePort()}`, '--channel-key', 'ssl', '--ticket-key-dir', keys, '--subscribe-interval', '0.5']),
    );
    const written = await a.d.log.waitFor('ticket key files written');
    await a.d.log.waitFor('haproxy ticket key file written');
    const { encrypting } = saved(state);
    assert.equal(written['encrypting'], ticketKeyId(encrypting));
    assert.ok(readFileSync(join(keys, 'ticket.0.key')).equals(nginxTicketKey(encrypting, 80)), 'ticket.0.key is not the repeater\'s encrypting key');
    assert.ok(existsSync(join(keys, 'haproxy.keys')));
    assert.ok((await r.metrics()).value('udprepeater_ticket_key_frames_sent_total') >= 1);
  });

  test('a node key posing as a repeater, a node\'s frames sent straight to the agent, and a node\'s TICKET_KEYS sent to the repeater: all refused and counted; the ticket file is unchanged', async () => {
    const [ir, ia, inode] = [await identity(), await identity(), await identity()];
    // The rogue: a real repeater daemon run with the node's key, started first so its keys would win a merge.
    const rogue = await ticketRepeater(inode, [{ pub: ia.pub, name: 'node-a' }]);
    const rogueKeys = await rogue.r.d.log.waitFor('ticket keys changed');
    const { r, port, state } = await ticketRepeater(ir, [
      { pub: ia.pub, name: 'node-a' },
      { pub: inode.pub, name: 'node-n' },
    ]);
    const relay = track(await Relay.open(port));
    const keys = fresh('keys');
    // The agent lists the node explicitly, as role=node, and is given the rogue's address as a repeater.
    const peers = peersFile([`${ir.pub} repeater-a role=repeater`, `${inode.pub} node-n role=node`]);
    const a = track(
      await agent(['--repeater', `127.0.0.1:${relay.port}`, '--repeater', `127.0.0.1:${rogue.port}`, '--identity', ia.file, '--peers', peers, '--local', `127.0.0.1:${await freePort()}`, '--channel-key', 'ssl', '--ticket-key-dir', keys, '--subscribe-interval', '0.5']),
    );
    const written = await a.d.log.waitFor('ticket key files written');
    const { encrypting } = saved(state);
    assert.equal(written['encrypting'], ticketKeyId(encrypting));
    assert.notEqual(written['encrypting'], rogueKeys['encrypting'], 'the two schedules must differ for this test to mean anything');
    const file = readFileSync(join(keys, 'ticket.0.key'));
    assert.ok(file.equals(nginxTicketKey(encrypting, 80)));

    // 1. The rogue refuses every HELLO the agent sends it (made for the repeater's key: its mac fails) and never answers.
    await eventually('the rogue refused two rounds of HELLOs', async () => ((await rogue.r.metrics()).dropped('auth_failed') >= 2 ? true : undefined));
    assert.deepEqual(
      a.d.log.matching('link confirmed').map((l) => l['peer']),
      ['repeater-a'],
      'the agent linked to a key its peers file lists as role=node',
    );

    // 2. Frames the node can seal (under its own link with the repeater), sent straight to the agent's port.
    const node = track(await NodeLink.open(inode.file, ir.pub, port));
    const agentPort = Number(String((await a.d.log.waitFor('agent started'))['advertised']).split(',')[0]!.split(':').pop());
    const forged = forgedKeys();
    const asIs = node.ticketFrame(forged, Role.Repeater);
    // The same, its header naming the agent's own link (taken off the wire): the header is the nonce, so it no longer opens.
    const agentLink = relay.toAgent.filter((m) => m.length > 32 && m[2] === 3 && m[3] === 3).at(-1)!;
    const renamed = Buffer.from(asIs);
    agentLink.copy(renamed, 4, 4, 8);
    const before = { unknown: await agentDropped(a, 'unknown_link'), auth: await agentDropped(a, 'auth_failed') };
    await node.send(asIs, agentPort);
    await node.send(renamed, agentPort);
    await eventually('the agent refused both', async () => ((await agentDropped(a, 'unknown_link')) > before.unknown && (await agentDropped(a, 'auth_failed')) > before.auth ? true : undefined));

    // 3. The node's TICKET_KEYS to the repeater over its own link, as an agent and claiming to be a repeater.
    const rBefore = { bad: (await r.metrics()).dropped('bad_payload'), role: (await r.metrics()).dropped('wrong_role') };
    await node.send(node.ticketFrame(forged, Role.Agent), port);
    await node.send(node.ticketFrame(forged, Role.Repeater), port);
    await eventually('the repeater refused both', async () => {
      const m = await r.metrics();
      return m.dropped('bad_payload') > rBefore.bad && m.dropped('wrong_role') > rBefore.role ? true : undefined;
    });
    assert.deepEqual(saved(state).keys.map(ticketKeyId), r.d.log.matching('ticket keys changed').at(-1)!['keys'], 'the repeater\'s schedule changed');
    assert.ok(!saved(state).keys.some((k) => k.id === forged[0]!.id));

    // A full refresh round later (the repeater resends at each subscribe), the file is what it was.
    const refreshes = (await r.metrics()).value('udprepeater_ticket_key_frames_sent_total');
    await eventually('two more refreshes', async () => ((await r.metrics()).value('udprepeater_ticket_key_frames_sent_total') >= refreshes + 2 ? true : undefined));
    assert.ok(readFileSync(join(keys, 'ticket.0.key')).equals(file), 'the ticket file changed');
    assert.equal(a.d.log.matching('ticket key files written').length, 1);
  });
});

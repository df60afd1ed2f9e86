// The repeater's ticket-key schedule, black box (the real CLI on loopback):
// sent sealed to a sealed subscriber of a `tickets` channel on every
// subscribe and refresh, never to a plain subscriber; kept in
// --state-dir/tickets.pb (0600) so a restart keeps the same keys; and a
// config or schedule file it cannot trust refuses the start with exit 78,
// naming the problem.

import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { KeyRing } from '../src/crypto/keyring.js';
import { sodiumReady } from '../src/crypto/secretbox.js';
import { SecureSession } from '../src/crypto/session.js';
import { Membership } from '../src/judge/membership.js';
import { encodeCacheSet } from '../src/wire/cache.js';
import { type Envelope, EnvelopeKind, Role } from '../src/wire/envelope.js';
import { encodeSubscription } from '../src/wire/subscription.js';
import { decodeTicketSchedule } from '../src/wire/ticket-codec.js';
import { keygen, type Running, serve } from './helpers/attack.js';
import { runCli } from './helpers/daemon.js';
import { Scope } from './helpers/scope.js';
import { freePort, Receiver } from './helpers/net.js';

const root = mkdtempSync(join(tmpdir(), 'udprepeater-tickets-'));
const scope = new Scope();

describe('the repeater distributes ticket keys', { timeout: 60_000 }, () => {
  let key: string;
  let ring: KeyRing;
  const { sender } = scope;

  before(async () => {
    await sodiumReady();
    key = await keygen();
    ring = KeyRing.load([key]);
  });

  async function start(state: string, extra: string[] = []): Promise<{ r: Running; plain: number; sealed: number }> {
    const [plain, sealed] = [await freePort(), await freePort()];
    const r = await serve(['--listen', `127.0.0.1:${plain},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sealed},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', state, ...extra]);
    scope.track({ close: () => r.stop() });
    return { r, plain, sealed };
  }

  /** A sealed subscriber (as an agent seals): subscribes and returns the next TICKET_KEYS envelope it is sent. */
  async function sealedSubscriber(port: number): Promise<{ rx: Receiver; session: SecureSession; next(): Promise<Envelope> }> {
    const rx = await Receiver.open();
    scope.track(rx);
    const session = new SecureSession(Role.Agent);
    const subscribe = () => sender.send(session.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: rx.address })!, port);
    await subscribe();
    return {
      rx,
      session,
      async next() {
        // A subscriber is told its keys in a frame naming it (its subscription's address).
        const env = session.open(ring, await rx.next(), 30_000, Date.now(), new Membership(() => rx.address));
        assert.ok(typeof env !== 'string', `a frame that opens (${String(env)})`);
        return env;
      },
    };
  }

  test('a sealed subscriber gets the schedule at once and at every refresh; the file is 0600 and survives a restart', async () => {
    const state = join(root, 'restart');
    const { r, sealed } = await start(state);
    const sub = await sealedSubscriber(sealed);
    const first = await sub.next();
    assert.equal(first.kind, EnvelopeKind.TicketKeys);
    assert.equal(first.role, Role.Repeater);
    assert.equal(first.tickets!.length, 2, 'the current key and the next');
    const [cur, next] = first.tickets!;
    assert.equal(cur!.notBeforeMs % 3_600_000, 0, 'on the grid');
    assert.equal(next!.notBeforeMs - cur!.notBeforeMs, 3_600_000, 'one period ahead');
    assert.equal(cur!.notAfterMs - cur!.notBeforeMs, 7_200_000, 'rotation + lifetime');
    // A refresh brings it again (a lost frame is replaced within one interval).
    await sender.send(sub.session.seal(ring, { kind: EnvelopeKind.Subscribe, channelKey: 'ssl', datagram: null, address: sub.rx.address })!, sealed);
    assert.deepEqual((await sub.next()).tickets, first.tickets);

    const file = join(state, 'tickets.pb');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const saved = decodeTicketSchedule(readFileSync(file));
    assert.deepEqual(saved, first.tickets);
    await r.stop();
    const again = await start(state);
    const sub2 = await sealedSubscriber(again.sealed);
    assert.deepEqual((await sub2.next()).tickets, first.tickets, 'the same keys after a restart');
    assert.equal((await again.r.metrics()).value('udprepeater_ticket_keys_generated_total'), 0);
  });

  test('a plain subscriber never gets the keys', async () => {
    // A rotation every second: the schedule is sent to all sealed subscribers while the plain one listens.
    const { r, plain, sealed } = await start(join(root, 'plain'), ['--ticket-rotate', '1', '--ticket-lifetime', '1']);
    const rx = await Receiver.open();
    scope.track(rx);
    await sender.send(encodeSubscription({ key: 'ssl', address: rx.address }), plain);
    await r.d.log.waitFor('subscribed', { address: rx.address });
    const sub = await sealedSubscriber(sealed);
    const first = await sub.next();
    assert.equal(first.kind, EnvelopeKind.TicketKeys);
    const rotated = await sub.next();
    assert.notDeepEqual(rotated.tickets!.map((k) => k.id), first.tickets!.map((k) => k.id), 'sent to all on a rotation');
    // The first thing the plain subscriber receives is the next datagram: no key frame came before it.
    const set = encodeCacheSet(Buffer.from('k'), Buffer.from('v'), 0);
    await sender.send(set, plain);
    const got = await rx.next();
    assert.ok(got.equals(set));
    assert.equal(rx.raw.length, 1);
    const m = await r.metrics();
    assert.ok(m.value('udprepeater_ticket_key_frames_sent_total') >= 1);
    assert.ok(m.value('udprepeater_ticket_keys') >= 2);
  });

  test('what cannot be trusted refuses the start (exit 78), naming it', async () => {
    const port = await freePort();
    const base = ['serve', '--metrics', 'off', '--key-file', key];
    const noState = await runCli([...base, '--listen-sealed', `127.0.0.1:${port},tickets`]);
    assert.equal(noState.code, 78, noState.stderr);
    assert.match(noState.stderr, /tickets needs --state-dir/);
    const onPlain = await runCli([...base, '--listen', `127.0.0.1:${port},tickets`]);
    assert.equal(onPlain.code, 78);
    assert.match(onPlain.stderr, /unknown parameter "tickets"/);
    const tooMany = await runCli([...base, '--listen-sealed', `127.0.0.1:${port},tickets`, '--state-dir', join(root, 'x'), '--ticket-rotate', '60', '--ticket-lifetime', '3600']);
    assert.equal(tooMany.code, 78);
    assert.match(tooMany.stderr, /needs 62 keys at once; at most 16/);

    const dir = join(root, 'corrupt');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, 'tickets.pb'), 'not a schedule', { mode: 0o600 });
    const corrupt = await runCli([...base, '--listen-sealed', `127.0.0.1:${port},tickets`, '--state-dir', dir]);
    assert.equal(corrupt.code, 78, corrupt.stderr);
    assert.match(corrupt.stderr, /tickets\.pb: not a ticket-key schedule/);
    chmodSync(join(dir, 'tickets.pb'), 0o644);
    const open = await runCli([...base, '--listen-sealed', `127.0.0.1:${port},tickets`, '--state-dir', dir]);
    assert.equal(open.code, 78);
    assert.match(open.stderr, /tickets\.pb: group or others can access the ticket keys \(mode 0644\)/);
  });
});

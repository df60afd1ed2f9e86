// A repeater takes only ticket keys its own schedule could have made (one
// rotation ahead at most, living rotation + lifetime at most): from
// tickets.pb at start and from the cluster bus, where a holder of the cluster
// key (or a replay of an old schedule) could otherwise plant keys that live
// for 60 days. What it refuses it counts by source; a tickets.pb of 16 future
// keys still starts with a key that encrypts. Real repeaters through the CLI,
// a hand-driven peer on a real nats-server.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { BusSeal } from '../../src/cluster/bus-seal.js';
import { sodiumReady } from '../../src/crypto/secretbox.js';
import { type BusBody, encodeBus } from '../../src/wire/bus.js';
import { encodeTicketSchedule, type TicketKey } from '../../src/wire/ticket-codec.js';
import { httpGet, keygen, type Running, serve } from '../helpers/attack.js';
import { NATS_HINT, NatsCluster, natsAvailability } from '../helpers/nats.js';
import { eventually, freePort } from '../helpers/net.js';
import { requirement } from '../helpers/requirement.js';
import { Scope } from '../helpers/scope.js';

const { skip, require: requireNats } = requirement('nats-server', 'the ticket-key horizon suite (test/system/tickets.horizon.test.ts)', 'The ticket-key horizon is NOT being tested.', natsAvailability(), NATS_HINT);
const scope = new Scope();
const H = 3_600_000;
const WAIT = 10_000;

type Keys = Array<{ id: string; notBefore: string; encrypting: boolean }>;
const idText = (id: bigint) => id.toString(16).padStart(16, '0');
const ticketKey = (id: bigint, notBeforeMs: number, notAfterMs: number, createdMs: number): TicketKey => ({ id, notBeforeMs, notAfterMs, createdMs, secret: randomBytes(80) });

function stateDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'udprepeater-horizon-'));
  chmodSync(dir, 0o700);
  return dir;
}

describe('the ticket-key horizon', { skip, timeout: 60_000 }, () => {
  let nats: NatsCluster;
  let key: string;
  let clusterKey: string;

  before(async () => {
    requireNats();
    await sodiumReady();
    nats = await NatsCluster.start(1, 'urhorizon');
    scope.track(nats);
    [key, clusterKey] = [await keygen(), await keygen()];
  });

  async function repeater(state: string, extra: string[] = []): Promise<Running & { keys(): Promise<Keys>; refused(source: string): Promise<number> }> {
    const port = await freePort();
    const r = await serve(['--listen-sealed', `127.0.0.1:${port},channel=ssl,key=ssl,tickets`, '--key-file', key, '--state-dir', state, ...extra]);
    scope.track({ close: () => r.stop() });
    return {
      ...r,
      keys: async () => (JSON.parse((await httpGet(r.metricsPort, '/healthz')).body) as { ticketKeys: Keys }).ticketKeys,
      refused: async (source) => (await r.metrics()).value('udprepeater_ticket_keys_refused_total', { source }),
    };
  }

  test('a tickets.pb holding 16 future keys: the repeater starts with a key that encrypts, and refuses the 15 beyond one rotation', async () => {
    const state = stateDir();
    const now = Date.now();
    const cur = Math.floor(now / H) * H;
    // The next period's key, then 15 further ahead, each well clear of the horizon (one rotation + 60 s) whatever the minute.
    const planted = [ticketKey(1n, cur + H, cur + 3 * H, now - H), ...Array.from({ length: 15 }, (_, i) => ticketKey(BigInt(i + 2), now + (i + 1) * H + 10 * 60_000, now + (i + 3) * H, now - H))];
    writeFileSync(join(state, 'tickets.pb'), encodeTicketSchedule(planted), { mode: 0o600 });
    const r = await repeater(state);
    const keys = await r.keys();
    console.log(JSON.stringify({ planted: planted.length, held: keys, refusedFromFile: await r.refused('file') }));
    assert.ok(keys.some((k) => k.encrypting), 'started with no key that encrypts');
    assert.equal(await r.refused('file'), 15);
    // The one within the horizon is the next period's: kept (generated before ours, it wins).
    assert.ok(keys.some((k) => k.id === idText(1n)), 'the planted next key is not held');
    assert.ok(!keys.some((k) => k.id === idText(2n)), 'a key two rotations ahead is held');
  });

  test('schedules from the bus: keys beyond the horizon are refused and counted, one within it is merged', async () => {
    const r = await repeater(stateDir(), ['--cluster', nats.urls[0]!, '--cluster-name', 'horizon', '--cluster-key-file', clusterKey, '--cluster-peer-timeout', '1.5']);
    await r.d.log.waitFor('cluster bus connected', {}, { ms: WAIT });
    const held = await eventually('the repeater to hold its two keys', async () => {
      const k = await r.keys();
      return k.length === 2 ? k : undefined;
    }, WAIT);
    // A peer sealing the bus with the cluster key, as a repeater does: it beats, then sends a schedule.
    const peer = BusSeal.load([clusterKey], [], 30_000);
    const nc = await connect({ servers: nats.urls[0]!, noEcho: true });
    const send = async (body: BusBody) => {
      nc.publish('horizon.ctl', peer.seal(encodeBus({ sender: peer.origin, sentAtMs: Date.now(), body }))!);
      await nc.flush();
    };
    try {
      await send({ type: 'heartbeat', name: 'hand/1', startedAtMs: 1, intervalMs: 500, subscribers: 0 });
      await r.d.log.waitFor('cluster peer joined', {}, { ms: WAIT });
      const now = Date.now();
      const next = Date.parse(held.find((k) => !k.encrypting)!.notBefore);
      const farAhead = ticketKey(0xa1n, next + 4 * H, next + 6 * H, 1);
      const longLived = ticketKey(0xa2n, next - H, next - H + 59 * 86_400_000, 1);
      // Generated before the repeater's own next key, for its not_before, living rotation + lifetime: it wins.
      const fair = ticketKey(0xa3n, next, next + 2 * H, now - 60_000);
      await send({ type: 'tickets', keys: [farAhead, longLived, fair] });
      const keys = await eventually('the fair key to be merged', async () => {
        const k = await r.keys();
        return k.some((x) => x.id === idText(0xa3n)) ? k : undefined;
      }, WAIT);
      console.log(JSON.stringify({ held: keys.map((k) => k.id), refusedFromBus: await r.refused('bus') }));
      assert.equal(await r.refused('bus'), 2);
      assert.ok(!keys.some((k) => k.id === idText(0xa1n) || k.id === idText(0xa2n)), 'a key beyond the horizon is held');
    } finally {
      await nc.close();
      peer.dispose();
    }
  });
});

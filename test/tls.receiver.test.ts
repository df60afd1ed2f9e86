// The session cache (`udprepeater/tls`, sealed) is an agent in-process and
// passes the same gate: frames the repeater sealed for another cache, re-sent
// to this one from the repeater's address, are refused (`wrong_receiver`), so
// a deleted session never comes back (issue 15, item 5; the agents' version is
// test/safety.receiver.test.ts). A real repeater (the CLI) on loopback.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Logger } from '../src/base/log.js';
import { SessionCache } from '../src/tls/session-cache.js';
import { encodeCacheDelete, encodeCacheSet } from '../src/wire/cache.js';
import { frames, keygen, serve, Tap } from './helpers/attack.js';
import { eventually, freePort, Sender } from './helpers/net.js';
import { Scope } from './helpers/scope.js';
import { untilApplied } from './helpers/tls-cache.js';

const quiet = new Logger('error', 'json', { write: () => undefined });
const scope = new Scope();
const track = <T extends { close(): unknown }>(x: T): T => scope.track(x);

test("warm-join frames sealed for one session cache, re-sent to another from the repeater's address, are refused: a deleted session stays deleted", async () => {
  const key = await keygen();
  const [pp, sp, bind3] = [await freePort(), await freePort(), await freePort()];
  const r = await serve(['--listen', `127.0.0.1:${pp},channel=ssl,key=ssl`, '--listen-sealed', `127.0.0.1:${sp},channel=ssl,key=ssl`, '--key-file', key]);
  track({ close: () => r.stop() });
  const sess = Buffer.from('sess1');
  const c2 = track(await SessionCache.start({ repeater: `127.0.0.1:${sp}`, bind: '127.0.0.1:0', keyFiles: [key], logger: quiet }));
  await r.d.log.waitFor('subscribed', { address: c2.address });
  await scope.sender.send(encodeCacheSet(sess, Buffer.from('SECRET-v1'), 0), pp);
  await untilApplied(c2, sess);
  // c3 joins through a relay that keeps a copy of its warm join.
  const relay = track(await Tap.open(bind3));
  const c3 = track(await SessionCache.start({ repeater: `127.0.0.1:${sp}`, bind: `127.0.0.1:${bind3}`, advertise: `127.0.0.1:${relay.port}`, keyFiles: [key], logger: quiet }));
  await untilApplied(c3, sess);
  const captured = frames(relay.captured);
  assert.ok(captured.length >= 1);
  await scope.sender.send(encodeCacheDelete(sess, false), pp);
  await eventually('the delete at both caches', () => (c2.get(sess) === undefined && c3.get(sess) === undefined ? true : undefined));
  // The attacker re-sends c3's frames to c2, from the repeater's IP.
  const replayer = track(await Sender.bound('127.0.0.1'));
  const applied = c2.stats.applied;
  for (const f of captured) await replayer.send(f, Number(c2.address!.split(':')[1]));
  // Each replayed frame is either applied or refused.
  const refused = () => c2.stats.dropped['wrong_receiver'] ?? 0;
  await eventually('c2 to judge the replayed frames', () => (refused() + c2.stats.applied - applied >= captured.length ? true : undefined));
  console.log(JSON.stringify({ replayed: captured.length, dropped: c2.stats.dropped, applied: c2.stats.applied, sessionBack: c2.get(sess) !== undefined }));
  assert.equal(c2.get(sess), undefined, 'the deleted session is back at c2');
  assert.equal(refused(), captured.length);
});

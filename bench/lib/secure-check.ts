// Secure mode's interoperability check, run before any secure measurement
// (and by `selftest`): the bench's C codec (native/sealed.h) and udprepeater
// must understand each other byte for byte, or a "secure" figure would
// measure something else (a repeater dropping every frame is very fast).
//
//   1. the key: `udprepeater keygen` made it; the generator's key id must be
//      the one keygen printed (same SHA-256 derivation);
//   2. generator -> udprepeater (sealed listener, sealed --to) -> receivers:
//      the repeater takes every frame (its /metrics show no drop of any
//      reason: no auth_failed, bad_payload, replay, stale, ...), sends one
//      sealed copy per subscriber, and every copy opens in recv.c with the
//      stamp found inside;
//   3. the same through the floor (its own open + seal);
//   4. frames sealed by the project's own SecureSession (src/crypto/session.ts)
//      open in recv.c, and a frame with one byte flipped does not (counted);
//      frames under another key are refused by the repeater (unknown_key)
//      and counted as unopened by the receivers: the error counters work;
//   5. (selftest) receivers that open every frame agree with the caching
//      ones; dynamic sealed subscribers: SUBSCRIBE Envelopes sealed as
//      an agent seals them register, and the frames reach them.
// Any mismatch throws a BenchError that says what differed.

import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { formatKeyId, KeyRing, keyIdOf, readKeyFile } from '../../src/crypto/keyring.js';
import { SecureSession } from '../../src/crypto/session.js';
import { EnvelopeKind, Role } from '../../src/wire/envelope.js';
import { arm, type Context, drain, poolFor, runGen, startReceivers } from './measure.js';
import { type BenchMode, CHANNEL_KEY, secureMode } from './modes.js';
import { REPEATER_CLI } from './paths.js';
import { stampOffset } from './pool.js';
import { BenchError, type Child } from './procs.js';
import { parseSize, syntheticPool } from './synthetic.js';
import { type FanCounters, type FanOut, startFloor, startRepeater, subscribeAll } from './targets.js';

export interface KeyInfo {
  readonly file: string;
  /** Key id as `udprepeater keygen` printed it (8 hex digits). */
  readonly id: string;
}

/** Makes a key file with the real CLI (`udprepeater keygen FILE`). */
export function keygen(file: string): KeyInfo {
  let out: string;
  try {
    out = execFileSync(process.execPath, [REPEATER_CLI, 'keygen', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string };
    throw new BenchError(`udprepeater keygen ${file} failed: ${e.stderr ?? String(err)}`);
  }
  const m = /key id ([0-9a-f]{8})/.exec(out);
  if (m === null) throw new BenchError(`udprepeater keygen printed no key id: "${out.trim()}"`);
  return { file, id: m[1]! };
}

/** The key id of an existing key file, as the repeater computes it. */
export function keyIdOfFile(file: string): string {
  const key = readKeyFile(file);
  try {
    return formatKeyId(keyIdOf(key));
  } finally {
    key.fill(0);
  }
}

const fail = (what: string): never => {
  throw new BenchError(`secure mode interoperability check failed: ${what}`);
};

function delta(before: FanCounters, after: FanCounters): { received: number; sent: number; drops: Record<string, number> } {
  const drops: Record<string, number> = {};
  for (const [k, v] of Object.entries(after.drops)) if (v - (before.drops[k] ?? 0) > 0) drops[k] = v - (before.drops[k] ?? 0);
  return { received: after.received - before.received, sent: after.sent - before.sent, drops };
}

const dropText = (d: Record<string, number>) => Object.entries(d).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';

let nextRun = 0x7e000001;

/**
 * Sends `count` sealed datagrams through `fan` (or straight to the
 * receivers) and checks that every one arrived, opened, at every receiver.
 * Returns a line for the log.
 */
async function throughput(
  ctx: Context,
  mode: BenchMode,
  key: KeyInfo,
  recv: Child,
  ports: readonly number[],
  fan: FanOut | null,
  what: string,
  count = 2000,
): Promise<string> {
  const pool = poolFor(ctx, { kind: 'synthetic', rate: 20000, spec: checkSpec() });
  const id = nextRun++;
  await arm(recv, id, count + 1);
  const before = fan === null ? null : await fan.counters();
  const gen = await runGen(ctx, pool.path, fan === null ? ports : [fan.inputPort], ['--rate', '20000'], 5, count, id, ctx.cpuLoad, undefined, mode);
  const dump = await drain(recv, 3000);
  const t = dump.total;
  if (gen.key_id !== key.id) fail(`the generator seals under key id ${gen.key_id ?? '(none)'}, udprepeater keygen said ${key.id} (key id derivation differs)`);
  if (gen.sent !== count || gen.sealed !== count) fail(`${what}: the generator sent ${gen.sent} and sealed ${gen.sealed ?? 0} of ${count}`);
  const n = ports.length;
  if (fan !== null) {
    const d = delta(before!, await fan.counters());
    if (d.received !== count) fail(`${what}: ${fan.kind} read ${d.received} of ${count} frames`);
    if (Object.keys(d.drops).length > 0) fail(`${what}: ${fan.kind} dropped frames of the generator: ${dropText(d.drops)}`);
    if (d.sent !== count * n) fail(`${what}: ${fan.kind} sent ${d.sent} copies, expected ${count * n} (${count} x ${n} subscribers)`);
  }
  if (t.unopened || t.badenv || t.unsealed)
    fail(`${what}: at the receivers ${t.unopened} frames did not open, ${t.badenv} held no valid Envelope, ${t.unsealed} were not frames`);
  if (t.uniq !== gen.stamped * n || t.dup !== 0 || t.foreign !== 0)
    fail(`${what}: the receivers found ${t.uniq} of ${gen.stamped * n} stamps (${t.dup} duplicates, ${t.foreign} foreign)`);
  // Who sealed what arrived: the generator (straight to the receivers), or the fan-out itself (one origin of its own).
  if (dump.origin_changes !== 0 || dump.origin_first !== dump.origin_last) fail(`${what}: the frames at the receivers came from several origins (${dump.origin_first}, ${dump.origin_last}, ...)`);
  if (fan === null && dump.origin_first !== gen.origin) fail(`${what}: the receivers saw origin ${dump.origin_first}, the generator sealed as ${gen.origin}`);
  if (fan !== null && dump.origin_first === gen.origin) fail(`${what}: ${fan.kind} passed the generator's frames on instead of sealing its own`);
  const sealer = fan === null ? `generator origin ${gen.origin}` : `generator origin ${gen.origin}, resealed by ${fan.kind} as ${dump.origin_first}`;
  // The same frame to every subscriber shows as one open per datagram, the other copies matching it byte for byte.
  const once = fan !== null && n > 1 ? (dump.opens <= count ? '; one frame per datagram for all subscribers' : `; ${dump.opens} distinct frames for ${count} datagrams`) : '';
  return `${what}: ${count} frames (key id ${key.id}, ${sealer}), ${t.uniq} opened at ${n} receivers${once}, no drops: ok`;
}

function checkSpec() {
  return { keySize: parseSize('key-size', '32'), valueSize: parseSize('value-size', '200'), deletes: 0, lifetime: 300, poolSize: 256, seed: 7 };
}

/** Seals stamped datagrams with the project's own SecureSession and sends them straight to a receiver, once intact and once tampered. */
async function projectFrames(key: KeyInfo, recv: Child, port: number): Promise<string> {
  const ring = KeyRing.load([key.file]);
  const session = new SecureSession(Role.Agent);
  const sock = createSocket('udp4');
  // Sends report their errors to their callbacks; a socket error besides must not end the run uncaught.
  sock.on('error', () => undefined);
  try {
    const id = nextRun++;
    await arm(recv, id, 100);
    const recs = syntheticPool(checkSpec()).slice(0, 10);
    const frames = recs.map((r, seq) => {
      const d = Buffer.from(r.data);
      const at = stampOffset(d);
      d.writeUInt32LE(0x42504455, at);
      d.writeUInt32LE(id, at + 4);
      d.writeBigUInt64LE(BigInt(seq), at + 8);
      d.writeBigUInt64LE(process.hrtime.bigint(), at + 16);
      const f = session.seal(ring, { kind: EnvelopeKind.CacheDatagram, channelKey: CHANNEL_KEY, datagram: d, address: null });
      if (f === null) fail('SecureSession.seal refused a small datagram');
      return f!;
    });
    const tampered = Buffer.from(frames[0]!);
    tampered[tampered.length - 1]! ^= 1;
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, '127.0.0.1', () => {
        sock.off('error', reject);
        resolve();
      });
    });
    for (const f of [...frames, tampered]) await new Promise<void>((res, rej) => sock.send(f, port, '127.0.0.1', (e) => (e ? rej(e) : res())));
    const t = (await drain(recv, 2000)).total;
    if (t.uniq !== frames.length) fail(`frames sealed by src/crypto/session.ts: recv.c found ${t.uniq} of ${frames.length} stamps (${t.unopened} did not open, ${t.badenv} bad Envelopes)`);
    if (t.unopened !== 1) fail(`a frame with its last byte flipped: recv.c counted ${t.unopened} unopened frames, expected 1`);
    return `${frames.length} frames sealed by the project's SecureSession open in recv.c; a tampered one is counted as unopened: ok`;
  } finally {
    sock.close();
    ring.destroy();
  }
}

export async function checkSecure(ctx: Context, key: KeyInfo, log: (s: string) => void, opts: { thorough: boolean }): Promise<void> {
  const mode = ctx.modes.secure ?? fail('secure mode not prepared');
  if (keyIdOfFile(key.file) !== key.id) fail(`src/crypto/keyring.ts gives ${key.file} the key id ${keyIdOfFile(key.file)}, keygen said ${key.id}`);
  const other = keygen(join(ctx.scratch, `other-${Date.now()}.key`));
  const otherMode = await secureMode({ keyFile: other.file, openEvery: false });
  const { recv, ports, portsFile } = await startReceivers(ctx, 2, 'secure-check', mode);
  const fans: FanOut[] = [];
  const topts = { cpu: ctx.cpuFanout, repeaterArgs: ctx.repeaterArgs, recvBuffer: ctx.recvBuffer };
  try {
    log(await throughput(ctx, mode, key, recv, ports, null, 'generator -> receivers (sealed)'));
    const rep = await startRepeater(mode, ports, topts);
    fans.push(rep);
    log(await throughput(ctx, mode, key, recv, ports, rep, 'generator -> udprepeater (sealed listener, 2 sealed --to) -> receivers'));
    const floor = await startFloor(ctx.tools, mode, portsFile, topts);
    fans.push(floor);
    log(await throughput(ctx, mode, key, recv, ports, floor, 'generator -> floor (open, seal) -> receivers'));
    log(await projectFrames(key, recv, ports[0]!));

    // Another key: the repeater must refuse every frame (unknown_key), the receivers must count every one as unopened.
    const count = 500;
    const pool = poolFor(ctx, { kind: 'synthetic', rate: 20000, spec: checkSpec() });
    let id = nextRun++;
    await arm(recv, id, count + 1);
    const before = await rep.counters();
    await runGen(ctx, pool.path, [rep.inputPort], ['--rate', '20000'], 5, count, id, ctx.cpuLoad, undefined, otherMode);
    await drain(recv, 1000);
    const d = delta(before, await rep.counters());
    if (d.drops['unknown_key'] !== count || d.sent !== 0) fail(`frames under another key: udprepeater dropped ${dropText(d.drops)} and sent ${d.sent}, expected unknown_key ${count}`);
    id = nextRun++;
    await arm(recv, id, count + 1);
    await runGen(ctx, pool.path, ports, ['--rate', '20000'], 5, count, id, ctx.cpuLoad, undefined, otherMode);
    const t = (await drain(recv, 2000)).total;
    if (t.unopened !== count * ports.length || t.uniq !== 0) fail(`frames under another key sent to the receivers: ${t.unopened} counted unopened of ${count * ports.length}, ${t.uniq} accepted`);
    log(`frames under another key (${other.id}): udprepeater drops all as unknown_key, the receivers count all as unopened: ok`);

    if (opts.thorough) {
      // Receivers that open every frame find exactly what the caching ones find.
      const everyMode = await secureMode({ keyFile: key.file, openEvery: true });
      const every = await startReceivers(ctx, 3, 'secure-check-every', everyMode);
      try {
        log(await throughput(ctx, mode, key, every.recv, every.ports, null, 'generator -> receivers opening every frame (--open-every)'));
        const d = await every.recv.ask<{ opens: number; cache_hits: number }>('TOTAL');
        if (d.cache_hits !== 0) fail(`receivers with --open-every used their cache ${d.cache_hits} times`);
      } finally {
        await every.recv.stop();
      }

      await rep.stop();
      fans.splice(fans.indexOf(rep), 1);
      const dyn = await startRepeater(mode, [], {
        ...topts,
        repeaterArgs: ['--subscribe-rate', '1000000', '--subscribe-burst', '1000000', ...ctx.repeaterArgs],
      });
      fans.push(dyn);
      await subscribeAll(dyn, mode, ports, CHANNEL_KEY, () => undefined);
      log(await throughput(ctx, mode, key, recv, ports, dyn, 'sealed SUBSCRIBE (SecureSession) x 2, then generator -> udprepeater -> receivers'));
    }
  } finally {
    for (const f of fans) await f.stop();
    await recv.stop();
  }
}

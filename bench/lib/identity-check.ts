// Identity mode's interoperability check (run before identity measurements,
// and by `selftest`): the C helpers' link frames (native/sealed.h) against
// the project's own LinkCipher (src/crypto/link-keys.ts), both ways, then
// (selftest) generator -> udprepeater --identity -> receivers end to end and
// one revocation.
//
//   1. frames gen seals under a link key open with LinkCipher under that
//      key and link id, hold a CACHE_DATAGRAM Envelope (channel key, role
//      agent) with the stamped datagram, counters from --link-counter + 1;
//   2. frames LinkCipher seals open in recv.c (LINK command); a MEMBERSHIP
//      is counted as control (neither loss nor corruption), a tampered
//      frame and a frame of a link the socket does not hold as unopened;
//      group frames the project's GroupCipher seals open in recv.c (GROUP
//      command, counted as group data), one under a key id the socket does
//      not hold and a tampered one as unopened;
//   3. (thorough) the writer and two node identities linked by the harness,
//      each subscriber's group key taken and acknowledged: every stamped
//      datagram reaches both receivers, nearly all as group frames, nothing
//      refused at udprepeater;
//   4. (thorough) one revocation: from the first refused frame on, every
//      frame is counted `revoked` by udprepeater.

import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GroupCipher } from '../../src/crypto/group-cipher.js';
import { LinkCipher } from '../../src/crypto/link-keys.js';
import { bigintToLong, decodeEnvelope, encodeEnvelope, EnvelopeKind, Role } from '../../src/wire/envelope.js';
import { type IdentitySetup, linkRepeater } from './identity-mode.js';
import { arm, type Context, drain, poolFor, runGen, startReceivers } from './measure.js';
import { CHANNEL_KEY } from './modes.js';
import { stampOffset } from './pool.js';
import { BenchError, type Child } from './procs.js';
import { measureRevocation } from './revocation.js';
import { parseSize, syntheticPool } from './synthetic.js';
import { startRepeater } from './targets.js';

const fail = (what: string): never => {
  throw new BenchError(`identity mode interoperability check failed: ${what}`);
};

let nextRun = 0x7e000000;
const spec = () => ({ keySize: parseSize('key-size', '32'), valueSize: parseSize('value-size', '200'), deletes: 0, lifetime: 300, poolSize: 256, seed: 11 });

/** A LinkCipher over given keys and link ids (the handshake's output, drawn here). */
function cipher(s: IdentitySetup, send: Uint8Array, receive: Uint8Array, localLink: number, remoteLink: number): LinkCipher {
  return new LinkCipher({ peer: s.writer.identity.peer, send, receive, localLink, remoteLink, handshakeHash: new Uint8Array(32) });
}

const linkId = () => (randomBytes(4).readUInt32LE(0) | 1) >>> 0;

/** 1: gen's link frames open with the project's LinkCipher. */
async function genToProject(ctx: Context, s: IdentitySetup): Promise<string> {
  const key = randomBytes(32);
  const id = linkId();
  const file = join(s.dir, 'check-link.key');
  writeFileSync(file, key, { mode: 0o600 });
  const rx = cipher(s, randomBytes(32), key, id, 1);
  // A buffer for all of them: the bench's own loop may be busy while they arrive.
  const sock = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  sock.on('error', () => undefined);
  const frames: Buffer[] = [];
  sock.on('message', (m) => frames.push(m));
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  try {
    const count = 200;
    const start = 1_000_000;
    const pool = poolFor(ctx, { kind: 'synthetic', rate: 20000, spec: spec() });
    const run = nextRun++;
    const g = await runGen(ctx, pool.path, [sock.address().port], ['--rate', '5000', '--link-key', file, '--link-id', String(id), '--link-counter', String(start)], 5, count, run, ctx.cpuLoad);
    for (let i = 0; i < 300 && frames.length < count; i++) await new Promise((r) => setTimeout(r, 10));
    if (frames.length !== count || g.sent !== count) fail(`gen sent ${g.sent} link frames, ${frames.length} arrived, expected ${count}`);
    const counters: number[] = [];
    for (const f of frames) {
      const o = rx.open(f);
      if (typeof o === 'string') fail(`a link frame gen sealed does not open with LinkCipher: ${o}`);
      const o2 = o as Exclude<typeof o, string>;
      const env = decodeEnvelope(o2.plain);
      if (typeof env === 'string') fail(`a link frame gen sealed holds no valid Envelope: ${env}`);
      const e = env as Exclude<typeof env, string>;
      if (e.kind !== EnvelopeKind.CacheDatagram || e.channelKey !== CHANNEL_KEY || e.role !== Role.Agent || e.datagram === null) fail(`gen's Envelope: kind ${e.kind}, channel key "${e.channelKey}", role ${e.role}`);
      const at = stampOffset(e.datagram!);
      if (at < 0 || e.datagram!.readUInt32LE(at + 4) !== run) fail('the datagram in gen\'s link frame carries no stamp of its run');
      counters.push(o2.counter);
    }
    counters.sort((a, b) => a - b);
    if (counters[0] !== start + 1 || counters.at(-1) !== start + count) fail(`gen's counters run ${counters[0]}..${counters.at(-1)}, expected ${start + 1}..${start + count}`);
    const wrong = cipher(s, randomBytes(32), randomBytes(32), id, 1).open(frames[0]!);
    if (wrong !== 'auth_failed') fail(`a frame of gen opened under another key: ${String(wrong)}`);
    return `${count} link frames sealed by gen (link id ${id}, counters ${start + 1}..${start + count}) open with the project's LinkCipher to stamped CACHE_DATAGRAM Envelopes; under another key: auth_failed: ok`;
  } finally {
    sock.close();
    rx.destroy();
  }
}

/** 2: LinkCipher's link frames open in recv.c; a MEMBERSHIP counts as control, a tampered frame and another link's as unopened. */
async function projectToRecv(s: IdentitySetup, recv: Child, port: number): Promise<string> {
  const key = randomBytes(32);
  const id = linkId();
  const tx = cipher(s, key, randomBytes(32), 1, id);
  const other = cipher(s, randomBytes(32), randomBytes(32), 1, id ^ 0x10);
  recv.send(`LINK ${port} ${id} ${key.toString('hex')}`);
  await recv.nextLine((l) => l === `OK LINK ${port} ${id}`, 10_000, 'OK LINK from the receivers');
  const sock = createSocket('udp4');
  sock.on('error', () => undefined);
  try {
    const run = nextRun++;
    await arm(recv, run, 100);
    const originLong = bigintToLong(7n);
    const env = (kind: EnvelopeKind, datagram: Buffer | null, seq: number) =>
      encodeEnvelope({ kind, channelKey: CHANNEL_KEY, sequence: seq, sentAtMs: Date.now(), role: Role.Repeater, datagram, trace: null, address: null, receiver: '', ...(kind === EnvelopeKind.Membership ? { memberFrom: 1 } : {}) }, originLong);
    const frames = stamped(run, 10).map((d, seq) => Buffer.from(tx.seal(env(EnvelopeKind.CacheDatagram, d, seq + 1))));
    const membership = Buffer.from(tx.seal(env(EnvelopeKind.Membership, null, 100)));
    const tampered = Buffer.from(frames[0]!);
    tampered[tampered.length - 1]! ^= 1;
    const foreign = Buffer.from(other.seal(env(EnvelopeKind.CacheDatagram, frames[1]!, 101)));
    await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
    for (const f of [...frames, membership, tampered, foreign]) await new Promise<void>((res, rej) => sock.send(f, port, '127.0.0.1', (e) => (e ? rej(e) : res())));
    const t = (await drain(recv, 2000)).total as RecvCounts;
    if (t.uniq !== frames.length || t.link_data !== frames.length) fail(`link frames sealed by LinkCipher: recv.c found ${t.uniq} of ${frames.length} stamps, ${t.link_data} as link data (${t.unopened} did not open, ${t.badenv} bad Envelopes)`);
    if (t.control !== 1) fail(`a MEMBERSHIP under the link: recv.c counted ${t.control} control frames, expected 1`);
    if (t.unopened !== 2) fail(`a tampered frame and one of another link: recv.c counted ${t.unopened} unopened, expected 2`);

    // Group frames: the project's GroupCipher seals, recv.c opens under the key the GROUP command gave that socket.
    const gkey = randomBytes(32);
    const gid = linkId();
    const group = new GroupCipher(gid, Uint8Array.from(gkey));
    const otherGroup = new GroupCipher(gid ^ 0x20, randomBytes(32));
    try {
      recv.send(`GROUP ${port} ${gid} ${gkey.toString('hex')}`);
      await recv.nextLine((l) => l === `OK GROUP ${port} ${gid}`, 10_000, 'OK GROUP from the receivers');
      const run2 = nextRun++;
      await arm(recv, run2, 100);
      const gframes = stamped(run2, 10).map((d, seq) => group.seal(env(EnvelopeKind.CacheDatagram, d, seq + 1)));
      const gtampered = Buffer.from(gframes[0]!);
      gtampered[gtampered.length - 1]! ^= 1;
      const gforeign = otherGroup.seal(env(EnvelopeKind.CacheDatagram, stamped(run2, 11)[10]!, 50));
      for (const f of [...gframes, gtampered, gforeign]) await new Promise<void>((res, rej) => sock.send(f, port, '127.0.0.1', (e) => (e ? rej(e) : res())));
      const g = (await drain(recv, 2000)).total as RecvCounts;
      if (g.uniq !== gframes.length || g.group_data !== gframes.length) fail(`group frames sealed by GroupCipher: recv.c found ${g.uniq} of ${gframes.length} stamps, ${g.group_data} as group data (${g.unopened} did not open, ${g.badenv} bad Envelopes)`);
      if (g.unopened !== 2) fail(`a tampered group frame and one under key id ${gid ^ 0x20} the socket does not hold: recv.c counted ${g.unopened} unopened, expected 2`);
    } finally {
      group.destroy();
      otherGroup.destroy();
    }
    return (
      `${frames.length} link frames sealed by the project's LinkCipher open in recv.c; a MEMBERSHIP counts as control, a tampered frame and another link's as unopened; ` +
      `10 group frames sealed by GroupCipher (key id ${gid}) open in recv.c as group data, a tampered one and one under another key id as unopened: ok`
    );
  } finally {
    sock.close();
    tx.destroy();
    other.destroy();
  }
}

interface RecvCounts {
  uniq: number;
  unopened: number;
  badenv: number;
  unsealed: number;
  control?: number;
  link_data?: number;
  group_data?: number;
}

/** `n` datagrams of the synthetic pool carrying run `run`'s stamp (sequence numbers 0..n-1). */
function stamped(run: number, n: number): Buffer[] {
  return syntheticPool(spec())
    .slice(0, n)
    .map((r, seq) => {
      const d = Buffer.from(r.data);
      const at = stampOffset(d);
      d.writeUInt32LE(0x42504455, at);
      d.writeUInt32LE(run, at + 4);
      d.writeBigUInt64LE(BigInt(seq), at + 8);
      d.writeBigUInt64LE(process.hrtime.bigint(), at + 16);
      return d;
    });
}

/** 3: generator -> udprepeater --identity -> receivers, every stamp at every receiver, nothing refused. */
async function endToEnd(ctx: Context, s: IdentitySetup, recv: Child, ports: readonly number[]): Promise<string> {
  const mode = ctx.modes.identity ?? fail('identity mode not prepared');
  const rep = await startRepeater(mode, [], { cpu: ctx.cpuFanout, repeaterArgs: ctx.repeaterArgs, recvBuffer: ctx.recvBuffer });
  try {
    const linked = await linkRepeater(s, rep, ports, recv);
    try {
      const count = 2000;
      const pool = poolFor(ctx, { kind: 'synthetic', rate: 20000, spec: spec() });
      const before = await rep.counters();
      let groupData = 0;
      let linkData = 0;
      for (const lap of [0, 1]) {
        const run = nextRun++;
        await arm(recv, run, count + 1);
        const g = await runGen(ctx, pool.path, [rep.inputPort], ['--rate', '10000', ...linked.genArgs()], 5, count, run, ctx.cpuLoad);
        const t = (await drain(recv, 3000)).total as RecvCounts;
        if (t.uniq !== g.stamped * ports.length || t.unopened + t.badenv + t.unsealed !== 0)
          fail(`run ${lap + 1}: the receivers found ${t.uniq} of ${g.stamped * ports.length} stamps (${t.unopened} unopened, ${t.badenv} bad Envelopes, ${t.unsealed} not frames)`);
        // Every subscriber acknowledged the group key before the run: the repeater seals group frames for them.
        groupData += t.group_data ?? 0;
        linkData += t.link_data ?? 0;
        if ((t.group_data ?? 0) < 0.9 * t.uniq) fail(`run ${lap + 1}: of ${t.uniq} stamps only ${t.group_data} came as group frames (${t.link_data} as link frames)`);
      }
      const after = await rep.counters();
      const refused = Object.entries(after.drops).filter(([k, v]) => v > (before.drops[k] ?? 0));
      if (refused.length > 0) fail(`udprepeater refused frames: ${refused.map(([k, v]) => `${k} ${v - (before.drops[k] ?? 0)}`).join(', ')}`);
      return `generator -> udprepeater --identity (writer and ${ports.length} node identities linked by the harness) -> receivers: two runs of ${count}, every stamp at every receiver (${groupData} as group frames under the key the harness took and acknowledged, ${linkData} as link frames), nothing refused: ok`;
    } finally {
      linked.close();
    }
  } finally {
    await rep.stop();
  }
}

export async function checkIdentity(ctx: Context, s: IdentitySetup, log: (x: string) => void, opts: { thorough: boolean }): Promise<void> {
  const mode = ctx.modes.identity ?? fail('identity mode not prepared');
  log(await genToProject(ctx, s));
  const { recv, ports } = await startReceivers(ctx, 2, 'identity-check', mode);
  try {
    log(await projectToRecv(s, recv, ports[0]!));
    if (opts.thorough) {
      if (s.nodes.length < 2) fail('internal: the end-to-end check needs two node identities');
      log(await endToEnd(ctx, s, recv, ports));
    }
  } finally {
    await recv.stop();
  }
  if (opts.thorough && s.revocable.length > 0) {
    const r = await measureRevocation(s, mode, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer }, () => undefined);
    for (const x of r.reps) if (x.after !== x.revokedDrops) fail(`revocation: ${x.after} frames from the first refused one on, udprepeater counted ${x.revokedDrops} revoked`);
    log(`revocation: ${r.reps.length} writer(s) revoked by SIGHUP; from the first refused frame on (${r.reps.map((x) => `${x.latencyMs.toFixed(1)} ms`).join(', ')} after the SIGHUP) every frame counted revoked by udprepeater: ok`);
  }
}

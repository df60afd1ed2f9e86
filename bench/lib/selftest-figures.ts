// `npm run bench -- selftest`, the parts the figures table rests on:
// - the generator's --unique-keys and --expires-in write what they say
//   (read back byte for byte from a socket of this process);
// - the GC preload (gc-preload.ts) counts a real udprepeater's pauses,
//   writes fresh snapshots, and runs a full collection on SIGUSR2 when asked;
// - a --peer-cmd program (the floor itself, started from a command line with
//   placeholders) is measured like any fan-out: it listens where {port}
//   says, every stamped datagram reaches every receiver, and its input's
//   kernel drops are read from /proc/net/udp;
// - a live state fills (fillState) and then evicts on every new key.

import { strict as assert } from 'node:assert';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { freshGc } from './gcstats.js';
import { arm, type Context, drain, fillState, poolFor, runGen, startReceivers, syntheticArgs } from './measure.js';
import { PLAIN } from './modes.js';
import { expandPeer, parsePeerCmd, splitWords, startPeer } from './peer.js';
import { sleep } from './procs.js';
import { parseSize } from './synthetic.js';
import { startRepeater } from './targets.js';

const spec = () => ({ keySize: parseSize('key-size', '32'), valueSize: parseSize('value-size', '200'), deletes: 0, lifetime: 300, poolSize: 64, seed: 9 });

async function genFields(ctx: Context, log: (s: string) => void): Promise<void> {
  const sock = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  sock.on('error', () => undefined);
  const got: Buffer[] = [];
  sock.on('message', (m) => got.push(m));
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => resolve());
  });
  try {
    const src = { kind: 'synthetic', rate: 2000, spec: spec(), uniqueKeys: true } as const;
    const pool = poolFor(ctx, src);
    const run = 4242;
    const g = await runGen(ctx, pool.path, [sock.address().port], ['--rate', '2000', ...syntheticArgs(src)], 5, 200, run, ctx.cpuLoad);
    const deadline = Date.now() + 2000;
    while (got.length < g.sent && Date.now() < deadline) await sleep(20);
    assert.equal(got.length, 200, `gen --unique-keys: all 200 datagrams arrived (got ${got.length})`);
    const now = Math.floor(Date.now() / 1000);
    const keys = new Set<string>();
    for (const d of got) {
      const klen = d.readUInt16LE(4);
      assert.equal(d.readUInt32LE(6), run, 'gen --unique-keys: the key starts with the run id');
      keys.add(d.toString('hex', 6, 6 + klen));
      const vlen = d.readUInt16LE(6 + klen);
      const at = 8 + klen + vlen;
      const exp = Number(d.toString('latin1', at + 2, at + 2 + d.readUInt16LE(at)));
      assert.ok(Math.abs(exp - (now + 300)) <= 3, `gen --expires-in 300: expiry ${exp} is the send time + 300 (now ${now})`);
    }
    assert.equal(keys.size, 200, 'gen --unique-keys: 200 sends of a pool of 64, 200 different keys');
    log('generator --unique-keys and --expires-in: 200 sends of a pool of 64 sets, 200 keys never seen before, each expiring 300 s after it was sent: ok');
  } finally {
    sock.close();
  }
}

async function gcPreload(ctx: Context, log: (s: string) => void): Promise<void> {
  const { recv, ports } = await startReceivers(ctx, 1, 'selftest-gc');
  const file = join(ctx.scratch, 'gc-selftest.json');
  const rep = await startRepeater(PLAIN, ports, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer, repeaterArgs: ctx.repeaterArgs, gcFile: file, gcOnSignal: true });
  try {
    assert.ok(rep.gcFile !== undefined, 'the repeater was started with the GC preload');
    const first = await freshGc(file, 0, 3000);
    assert.ok(first !== null && first.pid === rep.child.pid, 'the preload wrote a snapshot of the repeater process');
    const src = { kind: 'synthetic', rate: 50000, spec: { ...spec(), poolSize: 4096 }, uniqueKeys: true } as const;
    const pool = poolFor(ctx, src);
    await runGen(ctx, pool.path, [rep.inputPort], ['--rate', '50000', ...syntheticArgs(src)], 5, 60000, 77, ctx.cpuLoad);
    const t = Date.now();
    const after = await freshGc(file, t, 3000);
    assert.ok(after !== null && after.at >= t, 'a fresh snapshot within 3 s');
    assert.ok(after.count > first.count, `60000 sets of new keys made the repeater collect garbage (pauses counted: ${after.count - first.count})`);
    process.kill(rep.child.pid, 'SIGUSR2');
    const deadline = Date.now() + 3000;
    let full = after.fullGcs;
    while (full === after.fullGcs && Date.now() < deadline) full = (await freshGc(file, Date.now(), 500))?.fullGcs ?? full;
    assert.equal(full, after.fullGcs + 1, 'SIGUSR2: one full collection, then a snapshot');
    assert.ok(rep.child.running, 'the repeater is still running after SIGUSR2');
    log(`GC preload: ${after.count - first.count} pauses counted over 60000 sets (largest ${after.maxMs.toFixed(2)} ms), a full collection on SIGUSR2: ok`);

    // The same repeater's state fills and then evicts on every new key.
    await rep.stop();
    const rep2 = await startRepeater(PLAIN, ports, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer, repeaterArgs: ['--state-max-bytes', String(1 << 20), ...ctx.repeaterArgs] });
    try {
      const note = await fillState(ctx, rep2, 1 << 20, { kind: 'synthetic', rate: 20000, spec: spec() }, () => undefined);
      const st = (await rep2.counters()).state!;
      assert.ok(st.evictions > 0 && st.bytes <= 1 << 20, `fillState: a 1 MiB state filled and evicting (${note})`);
      log(`fillState: ${note}: ok`);
    } finally {
      await rep2.stop();
    }
  } finally {
    await rep.stop();
    await recv.stop();
  }
}

async function peer(ctx: Context, log: (s: string) => void): Promise<void> {
  assert.deepEqual(splitWords(`a 'b c' "d \\"e\\"" f\\ g`), ['a', 'b c', 'd "e"', 'f g'], 'command lines split like a shell would');
  const floorAsPeer = parsePeerCmd(`floor-as-peer=${ctx.tools.floor} --listen 127.0.0.1:{port} [ --to {to} ] --rcvbuf {rcvbuf}`);
  assert.deepEqual(expandPeer(floorAsPeer, 9, [1, 2], 5).slice(1), ['--listen', '127.0.0.1:9', '--to', '127.0.0.1:1', '--to', '127.0.0.1:2', '--rcvbuf', '5'], '[ --to {to} ] repeats its words per receiver');
  assert.throws(() => parsePeerCmd('x=prog -p 1 127.0.0.1/{rport}'), /\{port\}/, 'a command without {port} is refused');
  const { recv, ports } = await startReceivers(ctx, 3, 'selftest-peer');
  const fan = await startPeer(floorAsPeer, ports, { cpu: ctx.cpuFanout, recvBuffer: ctx.recvBuffer });
  try {
    const pool = poolFor(ctx, { kind: 'synthetic', rate: 20000, spec: spec() });
    await arm(recv, 5150, 3001);
    const before = await fan.counters();
    const g = await runGen(ctx, pool.path, [fan.inputPort], ['--rate', '20000'], 5, 3000, 5150, ctx.cpuLoad);
    const t = (await drain(recv)).total;
    const after = await fan.counters();
    assert.equal(t.uniq, g.stamped * ports.length, `--peer-cmd: every stamped datagram reached every receiver through the peer (${t.uniq} of ${g.stamped * ports.length})`);
    assert.equal(after.drops['input_rcvbuf'], before.drops['input_rcvbuf'], 'no kernel drops at the peer\'s input (/proc/net/udp)');
    log(`--peer-cmd (the floor started as "FLOOR --listen 127.0.0.1:{port} [ --to {to} ] --rcvbuf {rcvbuf}"): ${t.uniq} datagrams at ${ports.length} receivers, input drops read from /proc/net/udp: ok`);
  } finally {
    await fan.stop();
    await recv.stop();
  }
}

export async function selftestFigures(ctx: Context, log: (s: string) => void): Promise<void> {
  await genFields(ctx, log);
  await gcPreload(ctx, log);
  await peer(ctx, log);
}

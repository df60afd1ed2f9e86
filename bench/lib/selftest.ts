// `npm run bench -- selftest`: checks the bench's own parts before trusting
// its figures. The pcap reader against hand-built captures of every link
// type it claims (with VLAN tags, IPv4 fragments out of order, both byte
// orders, µs and ns timestamps); then the generator and receivers end to
// end: every stamped datagram, sets and deletes, synthetic and replayed,
// must be found, once, by every receiver; the generator's --spread and the
// receivers' PART (what the cluster scenarios use) split and count as they
// say; and, with nats-server, a cluster of two delivers every datagram once
// over both paths (bus in clear and sealed, input to one and split).

import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { type ClusterSnapshot, startCluster } from './cluster.js';
import { arm, type Context, drain, poolFor, runGen, startReceivers } from './measure.js';
import { PLAIN } from './modes.js';
import { keygen } from './secure-check.js';
import { captureToPool, readPcap } from './pcap.js';
import { stampOffset } from './pool.js';
import { parseSize } from './synthetic.js';

interface Frame {
  t: number; // µs
  bytes: Buffer;
}

function ipv4(payload: Buffer, id: number, fragOff: number, more: boolean, src = [127, 0, 0, 1], dst = [127, 0, 0, 1]): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(id, 4);
  h.writeUInt16BE((more ? 0x2000 : 0) | (fragOff / 8), 6);
  h[8] = 64;
  h[9] = 17;
  Buffer.from(src).copy(h, 12);
  Buffer.from(dst).copy(h, 16);
  return Buffer.concat([h, payload]);
}

function udp(payload: Buffer, sport: number, dport: number): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([h, payload]);
}

function link(type: number, ip: Buffer, le: boolean): Buffer {
  switch (type) {
    case 1: {
      const eth = Buffer.alloc(18);
      eth.writeUInt16BE(0x8100, 12); // one VLAN tag
      eth.writeUInt16BE(0x0800, 16);
      return Buffer.concat([eth, ip]);
    }
    case 113: {
      const sll = Buffer.alloc(16);
      sll.writeUInt16BE(0x0800, 14);
      return Buffer.concat([sll, ip]);
    }
    case 276: {
      const sll2 = Buffer.alloc(20);
      sll2.writeUInt16BE(0x0800, 0);
      return Buffer.concat([sll2, ip]);
    }
    case 0: {
      const fam = Buffer.alloc(4);
      if (le) fam.writeUInt32LE(2, 0);
      else fam.writeUInt32BE(2, 0);
      return Buffer.concat([fam, ip]);
    }
    default:
      return ip;
  }
}

function pcapFile(linktype: number, frames: Frame[], le: boolean, nano: boolean): Buffer {
  const w32 = (b: Buffer, v: number, at: number) => (le ? b.writeUInt32LE(v >>> 0, at) : b.writeUInt32BE(v >>> 0, at));
  const g = Buffer.alloc(24);
  w32(g, nano ? 0xa1b23c4d : 0xa1b2c3d4, 0);
  if (le) {
    g.writeUInt16LE(2, 4);
    g.writeUInt16LE(4, 6);
  } else {
    g.writeUInt16BE(2, 4);
    g.writeUInt16BE(4, 6);
  }
  w32(g, 262144, 16);
  w32(g, linktype, 20);
  const parts: Buffer[] = [g];
  for (const f of frames) {
    const r = Buffer.alloc(16);
    w32(r, 1_700_000_000 + Math.floor(f.t / 1e6), 0);
    w32(r, nano ? (f.t % 1e6) * 1000 : f.t % 1e6, 4);
    w32(r, f.bytes.length, 8);
    w32(r, f.bytes.length, 12);
    parts.push(r, f.bytes);
  }
  return Buffer.concat(parts);
}

function checkPcap(log: (s: string) => void): void {
  const small = Buffer.concat([Buffer.from([111, 0, 0, 10]), Buffer.alloc(40, 7)]);
  small.writeUInt16LE(small.length - 4, 1);
  const big = Buffer.alloc(3000);
  for (let i = 0; i < big.length; i++) big[i] = i & 0xff;
  big[0] = 111;
  big.writeUInt16LE(big.length - 4, 1);
  big[3] = 10;
  const bigUdp = udp(big, 40000, 7171);
  // Three fragments (offsets multiple of 8), delivered last-first-middle.
  const f1 = bigUdp.subarray(0, 1480);
  const f2 = bigUdp.subarray(1480, 2960);
  const f3 = bigUdp.subarray(2960);
  for (const type of [1, 113, 276, 0, 101]) {
    for (const le of [true, false]) {
      for (const nano of [false, true]) {
        const frames: Frame[] = [
          { t: 0, bytes: link(type, ipv4(udp(small, 40000, 7171), 1, 0, false), le) },
          { t: 1500, bytes: link(type, ipv4(f3, 2, 2960, false), le) },
          { t: 1600, bytes: link(type, ipv4(f1, 2, 0, true), le) },
          { t: 1700, bytes: link(type, ipv4(f2, 2, 1480, true), le) },
          { t: 2500, bytes: link(type, ipv4(udp(small, 40001, 9999), 3, 0, false), le) },
        ];
        const c = readPcap(pcapFile(type, frames, le, nano), `selftest linktype ${type}`);
        assert.equal(c.datagrams.length, 3, `link type ${type}: 3 datagrams`);
        assert.deepEqual(c.datagrams[0]!.payload, small);
        assert.deepEqual(c.datagrams[1]!.payload, big, `link type ${type}: reassembled`);
        assert.equal(c.datagrams[1]!.t, 1_700_000, `link type ${type} (${nano ? 'ns' : 'µs'}): time of the last fragment`);
        assert.equal(c.datagrams[2]!.dport, 9999);
        const p = captureToPool(c, { dport: 7171 });
        assert.equal(p.records.length, 2);
      }
    }
  }
  assert.throws(() => readPcap(Buffer.from('0a0d0d0a1c0000004d3c2b1a', 'hex').subarray(0, 24)), /too short|pcapng/);
  const ng = Buffer.alloc(28);
  ng.writeUInt32LE(0x0a0d0d0a, 0);
  assert.throws(() => readPcap(ng), /pcapng/);
  log('pcap reader: Ethernet (VLAN), Linux cooked v1/v2, BSD loopback, raw IP; both byte orders; µs and ns; fragments: ok');
}

export async function selftest(ctx: Context, capture: string | null, log: (s: string) => void): Promise<void> {
  checkPcap(log);
  const key = parseSize('key-size', '32');
  const sources = [
    { kind: 'synthetic', rate: 50000, spec: { keySize: key, valueSize: parseSize('value-size', '24-4000'), deletes: 0.3, lifetime: 300, poolSize: 512, seed: 3 } } as const,
    ...(capture === null ? [] : [{ kind: 'replay', speed: 0, capture } as const]),
  ];
  const { recv, ports } = await startReceivers(ctx, 3, 'selftest');
  try {
    for (const [i, src] of sources.entries()) {
      const pool = poolFor(ctx, src);
      const count = 3000;
      await arm(recv, 1000 + i, count + 1);
      const pace = src.kind === 'synthetic' ? ['--rate', '50000'] : ['--timeline', '--loop', '--speed', '0', '--rate', '50000'];
      const g = await runGen(ctx, pool.path, ports, pace, 5, count, 1000 + i, ctx.cpuLoad);
      const t = (await drain(recv)).total;
      assert.equal(g.sent, count, 'generator sent the count');
      assert.ok(g.stamped > 0, 'some datagrams carry stamps');
      assert.equal(t.uniq, g.stamped * ports.length, `${pool.text}: every stamped datagram arrives at every receiver (got ${t.uniq} of ${g.stamped * ports.length})`);
      assert.equal(t.dup, 0, 'no duplicates');
      assert.equal(t.foreign, (g.sent - g.stamped) * ports.length, 'unstamped datagrams are counted as foreign');
      log(`generator -> receivers: ${pool.text}: ${g.stamped} stamped of ${g.sent}, all found by ${ports.length} receivers: ok`);
    }
    // --spread: datagram i to target i mod 2; PART counts by socket and by parity of the sequence number.
    const pool = poolFor(ctx, sources[0]!);
    await arm(recv, 1100, 3001);
    const g = await runGen(ctx, pool.path, [ports[0]!, ports[1]!], ['--rate', '50000', '--spread'], 5, 3000, 1100, ctx.cpuLoad);
    const t = (await drain(recv)).total;
    assert.equal(g.copies, g.sent, 'gen --spread: one copy per datagram');
    assert.equal(t.uniq, g.stamped, `gen --spread: every stamped datagram arrives once (got ${t.uniq} of ${g.stamped})`);
    type Part = { part: number; uniq: number; count: number };
    const part = (spec: string) => recv.ask<Part>(`PART ${spec}`);
    const both = await part(`${ports[0]},${ports[1]}`);
    const even0 = await part(`${ports[0]}:0`);
    const odd0 = await part(`${ports[0]}:1`);
    const odd1 = await part(`${ports[1]}:1`);
    const none = await part(`${ports[2]}`);
    assert.equal(both.part, 2, 'PART: both sockets matched');
    assert.equal(both.uniq, t.uniq, 'PART over the two sockets = the total');
    assert.equal(odd0.uniq, 0, 'gen --spread: nothing odd reached the first target');
    assert.equal(even0.uniq + odd1.uniq, t.uniq, 'gen --spread: even sequence numbers to the first target, odd to the second');
    assert.ok(Math.abs(even0.uniq - odd1.uniq) <= 1 + (g.sent - g.stamped), 'gen --spread: half each');
    assert.equal(none.uniq, 0, 'PART of the third socket (sent nothing) is empty');
    log(`generator --spread over 2 receivers: ${even0.uniq} even + ${odd1.uniq} odd of ${g.stamped}, receivers' PART by socket and parity: ok`);
  } finally {
    await recv.stop();
  }
  if (capture !== null) {
    const c = readPcap(readFileSync(capture), capture);
    const stampable = c.datagrams.filter((d) => d.payload[0] === 111).filter((d) => stampOffset(d.payload) >= 0).length;
    log(`${capture.split('/').pop()}: ${stampable} of ${c.datagrams.filter((d) => d.payload[0] === 111).length} cache datagrams can carry a stamp`);
  }
}

/**
 * A cluster of two (cluster.ts) end to end, for each variant the cluster
 * scenarios measure: every stamped datagram reaches every receiver exactly
 * once, the direct and the bus path together are the total, every datagram
 * was published once (by A with input to A, by whichever read it with a
 * split input) and taken off the bus once, in at most as many bus messages
 * as datagrams (the repeaters batch what one turn of their event loop
 * accepted, so under load a message carries several).
 */
export async function selftestCluster(ctx: Context, log: (s: string) => void): Promise<void> {
  const c = ctx.cluster;
  if (c === undefined) throw new Error('internal: no nats-server for the cluster selftest');
  const { recv, ports } = await startReceivers(ctx, 4, 'selftest-cluster');
  const pool = poolFor(ctx, { kind: 'synthetic', rate: 10000, spec: { keySize: parseSize('key-size', '32'), valueSize: parseSize('value-size', '200'), deletes: 0.1, lifetime: 300, poolSize: 512, seed: 5 } });
  try {
    const variants = [
      { kind: 'udprepeater-cluster', input: 'one', sealed: false },
      { kind: 'udprepeater-cluster-sealed', input: 'one', sealed: true },
      { kind: 'udprepeater-cluster', input: 'split', sealed: false },
    ] as const;
    for (const [i, v] of variants.entries()) {
      if (v.sealed) c.keyFile ??= keygen(`${ctx.scratch}/cluster.key`).file;
      const fan = await startCluster(v.kind, PLAIN, ports, {
        cpu: c.cpuA,
        cpuB: c.cpuB,
        natsCpu: c.cpuNats,
        natsServer: c.natsServer,
        repeaterArgs: ctx.repeaterArgs,
        recvBuffer: ctx.recvBuffer,
        listen: '127.0.0.1:0,channel=ssl',
        input: v.input,
        keyFile: v.sealed ? c.keyFile : null,
      });
      try {
        const count = 2000;
        const id = 1200 + i;
        await arm(recv, id, count + 1);
        const before: ClusterSnapshot = await fan.snapshot();
        const to = fan.inputPorts ?? [fan.inputPort];
        const g = await runGen(ctx, pool.path, to, ['--rate', '10000', ...(to.length > 1 ? ['--spread'] : [])], 5, count, id, ctx.cpuLoad);
        await fan.settle(10_000);
        const t = (await drain(recv)).total;
        const after = await fan.snapshot();
        const what = `cluster (${v.sealed ? 'sealed bus' : 'bus in clear'}, input ${v.input === 'one' ? 'to A' : 'split A/B'}; ${fan.note})`;
        assert.equal(t.uniq, g.stamped * ports.length, `${what}: every stamped datagram reaches every receiver (got ${t.uniq} of ${g.stamped * ports.length})`);
        assert.equal(t.dup, 0, `${what}: no receiver gets a datagram twice`);
        const specs = fan.pathSpecs();
        const part = async (spec: string) => (spec === '' ? 0 : (await recv.ask<{ uniq: number }>(`PART ${spec}`)).uniq);
        const direct = await part(specs.direct);
        const bus = await part(specs.bus);
        assert.equal(direct + bus, t.uniq, `${what}: direct + bus path = the total`);
        const delta = (f: (m: ClusterSnapshot['members'][number]) => number) => after.members.map((m, k) => f(m) - f(before.members[k]!));
        const published = delta((m) => m.published);
        const fromBus = delta((m) => m.fromBus);
        const messages = delta((m) => m.busPublished);
        const messagesIn = delta((m) => m.busReceived);
        const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
        assert.equal(sum(published), g.sent, `${what}: every datagram sent published once (${published.join(' + ')} of ${g.sent})`);
        assert.equal(sum(fromBus), g.sent, `${what}: every datagram taken off the bus once (${fromBus.join(' + ')} of ${g.sent})`);
        assert.ok(sum(messages) >= 1 && sum(messages) <= sum(published), `${what}: ${sum(messages)} bus messages for ${sum(published)} datagrams (at most one per datagram)`);
        assert.equal(sum(messagesIn), sum(messages), `${what}: every bus message taken off the bus (${messagesIn.join(' + ')} of ${sum(messages)})`);
        if (v.input === 'one') assert.equal(published[1], 0, `${what}: B publishes nothing when all input goes to A`);
        for (const m of after.members) assert.deepEqual(m.busDropped, {}, `${what}: no bus message dropped`);
        log(
          `${what}: ${g.stamped} stamped datagrams to ${ports.length} receivers, once each (direct ${direct}, bus ${bus}); ` +
            `${sum(published)} datagrams published in ${sum(messages)} bus messages (${(sum(published) / sum(messages)).toFixed(1)} per message): ok`,
        );
      } finally {
        await fan.stop();
      }
    }
  } finally {
    await recv.stop();
  }
}

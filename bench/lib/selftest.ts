// `npm run bench -- selftest`: checks the bench's own parts before trusting
// its figures. The pcap reader against hand-built captures of every link
// type it claims (with VLAN tags, IPv4 fragments out of order, both byte
// orders, µs and ns timestamps); then the generator and receivers end to
// end: every stamped datagram, sets and deletes, synthetic and replayed,
// must be found, once, by every receiver.

import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { arm, type Context, drain, poolFor, runGen, startReceivers } from './measure.js';
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
  } finally {
    await recv.stop();
  }
  if (capture !== null) {
    const c = readPcap(readFileSync(capture), capture);
    const stampable = c.datagrams.filter((d) => d.payload[0] === 111).filter((d) => stampOffset(d.payload) >= 0).length;
    log(`${capture.split('/').pop()}: ${stampable} of ${c.datagrams.filter((d) => d.payload[0] === 111).length} cache datagrams can carry a stamp`);
  }
}

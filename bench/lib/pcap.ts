// A reader for classic libpcap files (what `tcpdump -w` writes): the UDP
// datagrams inside, with their capture times. Link types: Ethernet (what
// `tcpdump -i lo` and `-i eth0` give on Linux), Linux cooked v1/v2
// (`tcpdump -i any`), BSD loopback/null and raw IP. IPv4 only (uWSGI nodes
// speak IPv4 here); fragmented datagrams are reassembled. pcapng is
// detected and refused with a conversion hint.

import { BenchError } from './procs.js';
import { type PoolRecord, stampOffset } from './pool.js';

export interface UdpDatagram {
  /** ns since the first packet of the file. */
  readonly t: number;
  readonly src: string;
  readonly sport: number;
  readonly dst: string;
  readonly dport: number;
  readonly payload: Buffer;
}

export interface PcapContents {
  readonly linktype: number;
  readonly linkName: string;
  readonly records: number;
  readonly datagrams: UdpDatagram[];
  /** Records that are not IPv4 UDP (or could not be used), by reason. */
  readonly skipped: Record<string, number>;
}

const LINK_NAMES: Record<number, string> = {
  0: 'BSD loopback (NULL)',
  1: 'Ethernet',
  12: 'raw IP',
  14: 'raw IP',
  101: 'raw IP',
  108: 'OpenBSD loopback',
  113: 'Linux cooked (SLL)',
  228: 'raw IPv4',
  276: 'Linux cooked v2 (SLL2)',
};

const ip4 = (b: Buffer, at: number) => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;

/** Offset of the IPv4 header inside a link-layer frame, or a skip reason. */
function ipv4Offset(linktype: number, f: Buffer, le: boolean): number | string {
  switch (linktype) {
    case 1: {
      if (f.length < 14) return 'truncated';
      let at = 12;
      let type = f.readUInt16BE(at);
      while (type === 0x8100 || type === 0x88a8) {
        at += 4;
        if (f.length < at + 2) return 'truncated';
        type = f.readUInt16BE(at);
      }
      return type === 0x0800 ? at + 2 : type === 0x86dd ? 'ipv6' : 'not IP';
    }
    case 113:
      if (f.length < 16) return 'truncated';
      return f.readUInt16BE(14) === 0x0800 ? 16 : f.readUInt16BE(14) === 0x86dd ? 'ipv6' : 'not IP';
    case 276:
      if (f.length < 20) return 'truncated';
      return f.readUInt16BE(0) === 0x0800 ? 20 : f.readUInt16BE(0) === 0x86dd ? 'ipv6' : 'not IP';
    case 0: {
      if (f.length < 4) return 'truncated';
      const fam = le ? f.readUInt32LE(0) : f.readUInt32BE(0);
      return fam === 2 ? 4 : 'not IPv4';
    }
    case 108:
      if (f.length < 4) return 'truncated';
      return f.readUInt32BE(0) === 2 ? 4 : 'not IPv4';
    case 12:
    case 14:
    case 101:
    case 228:
      return f.length > 0 && f[0]! >> 4 === 4 ? 0 : 'not IPv4';
    default:
      throw new BenchError(`pcap link type ${linktype} is not supported (supported: ${Object.keys(LINK_NAMES).join(', ')})`);
  }
}

interface Fragments {
  parts: Array<{ off: number; data: Buffer }>;
  total: number;
  t: number;
}

/** Parses a whole capture held in memory. */
export function readPcap(file: Buffer, name = 'capture'): PcapContents {
  if (file.length < 24) throw new BenchError(`${name}: too short to be a pcap file`);
  const m = file.readUInt32LE(0);
  if (m === 0x0a0d0d0a) {
    throw new BenchError(
      `${name} is pcapng, not classic pcap. Convert it: tcpdump -r ${name} -w out.pcap (or editcap -F pcap ${name} out.pcap)`,
    );
  }
  let le: boolean;
  let nano: boolean;
  if (m === 0xa1b2c3d4 || m === 0xa1b23c4d) {
    le = true;
    nano = m === 0xa1b23c4d;
  } else if (file.readUInt32BE(0) === 0xa1b2c3d4 || file.readUInt32BE(0) === 0xa1b23c4d) {
    le = false;
    nano = file.readUInt32BE(0) === 0xa1b23c4d;
  } else {
    throw new BenchError(`${name}: not a pcap file (magic ${m.toString(16)})`);
  }
  const u32 = (at: number) => (le ? file.readUInt32LE(at) : file.readUInt32BE(at));
  const linktype = u32(20) & 0x0fffffff;
  if (LINK_NAMES[linktype] === undefined) {
    throw new BenchError(`${name}: pcap link type ${linktype} is not supported (supported: Ethernet, Linux cooked, loopback, raw IP)`);
  }
  const skipped: Record<string, number> = {};
  const skip = (why: string) => (skipped[why] = (skipped[why] ?? 0) + 1);
  const datagrams: UdpDatagram[] = [];
  const pending = new Map<string, Fragments>();
  let first: { s: number; f: number } | null = null;
  let records = 0;
  let at = 24;
  while (at + 16 <= file.length) {
    const sec = u32(at);
    const frac = u32(at + 4);
    const incl = u32(at + 8);
    const orig = u32(at + 12);
    at += 16;
    if (at + incl > file.length) {
      skip('truncated file');
      break;
    }
    const frame = file.subarray(at, at + incl);
    at += incl;
    records++;
    const ns = nano ? frac : frac * 1000;
    if (first === null) first = { s: sec, f: ns };
    const t = (sec - first.s) * 1e9 + (ns - first.f);
    if (incl < orig) {
      skip('cut by snaplen (record with tcpdump -s 0)');
      continue;
    }
    const off = ipv4Offset(linktype, frame, le);
    if (typeof off === 'string') {
      skip(off);
      continue;
    }
    const ip = frame.subarray(off);
    if (ip.length < 20 || ip[0]! >> 4 !== 4) {
      skip('not IPv4');
      continue;
    }
    const ihl = (ip[0]! & 0x0f) * 4;
    const totalLen = ip.readUInt16BE(2);
    if (ihl < 20 || totalLen < ihl || totalLen > ip.length) {
      skip('bad IPv4 header');
      continue;
    }
    if (ip[9] !== 17) {
      skip('not UDP');
      continue;
    }
    const flags = ip.readUInt16BE(6);
    const fragOff = (flags & 0x1fff) * 8;
    const more = (flags & 0x2000) !== 0;
    let udp = ip.subarray(ihl, totalLen);
    if (more || fragOff > 0) {
      const key = `${ip4(ip, 12)}>${ip4(ip, 16)}#${ip.readUInt16BE(4)}`;
      let fr = pending.get(key);
      if (fr === undefined) {
        fr = { parts: [], total: -1, t };
        pending.set(key, fr);
      }
      fr.parts.push({ off: fragOff, data: Buffer.from(udp) });
      if (!more) fr.total = fragOff + udp.length;
      if (fr.total < 0) continue;
      const have = fr.parts.reduce((n, p) => n + p.data.length, 0);
      if (have < fr.total) continue;
      const whole = Buffer.alloc(fr.total);
      for (const p of fr.parts) p.data.copy(whole, p.off);
      pending.delete(key);
      udp = whole;
    }
    if (udp.length < 8) {
      skip('bad UDP header');
      continue;
    }
    const ulen = udp.readUInt16BE(4);
    if (ulen < 8 || ulen > udp.length) {
      skip('bad UDP length');
      continue;
    }
    datagrams.push({
      t,
      src: ip4(ip, 12),
      sport: udp.readUInt16BE(0),
      dst: ip4(ip, 16),
      dport: udp.readUInt16BE(2),
      payload: Buffer.from(udp.subarray(8, ulen)),
    });
  }
  if (pending.size > 0) skipped['incomplete fragments'] = pending.size;
  return { linktype, linkName: LINK_NAMES[linktype]!, records, datagrams, skipped };
}

/** What a datagram is, by its uwsgi header. */
export function uwsgiKind(p: Buffer): string {
  if (p.length < 4 || p.readUInt16LE(1) !== p.length - 4) return 'not uwsgi';
  if (p[0] === 111) return p[3] === 10 ? 'cache set' : p[3] === 11 ? 'cache delete' : 'cache other';
  if (p[0] === 224) return p[3] === 0 ? 'subscribe' : p[3] === 1 ? 'unsubscribe' : 'subscription other';
  return `uwsgi ${p[0]}/${p[3]}`;
}

export interface ReplayFilter {
  /** Keep only datagrams sent to this port (the repeater's, when recording). */
  readonly dport?: number | undefined;
  /** Keep everything, not only cache updates (subscriptions would make a repeater send to the capture's dead nodes). */
  readonly all?: boolean;
}

/** The datagrams to replay, as a pool on the capture's own timeline. */
export function captureToPool(c: PcapContents, f: ReplayFilter = {}): { records: PoolRecord[]; spanNs: number; kept: number; dropped: number } {
  const keep = c.datagrams.filter((d) => (f.dport === undefined || d.dport === f.dport) && (f.all === true || d.payload[0] === 111));
  if (keep.length === 0) throw new BenchError('the capture holds no uWSGI cache datagrams to replay (check --replay-port / --replay-all)');
  const t0 = keep[0]!.t;
  const records = keep.map((d) => ({ t: d.t - t0, data: d.payload, stamp: stampOffset(d.payload) }));
  const last = records[records.length - 1]!.t;
  // One lap lasts the capture plus one mean gap, so a loop keeps the average rate.
  const span = records.length > 1 ? last + last / (records.length - 1) : 1e9;
  return { records, spanNs: span, kept: keep.length, dropped: c.datagrams.length - keep.length };
}

/** A human summary of a capture, for `bench pcap-info` and the report. */
export function describeCapture(c: PcapContents): string[] {
  const kinds = new Map<string, number>();
  const sizes: number[] = [];
  const sources = new Set<string>();
  for (const d of c.datagrams) {
    const k = uwsgiKind(d.payload);
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
    if (d.payload[0] === 111 && d.payload[3] === 10) {
      const klen = d.payload.readUInt16LE(4);
      sizes.push(d.payload.readUInt16LE(6 + klen));
    }
    sources.add(`${d.src}:${d.sport}`);
  }
  sizes.sort((a, b) => a - b);
  const q = (p: number) => (sizes.length ? sizes[Math.min(sizes.length - 1, Math.floor(p * sizes.length))]! : 0);
  const dur = c.datagrams.length ? c.datagrams[c.datagrams.length - 1]!.t / 1e9 : 0;
  const dests = new Map<string, number>();
  for (const d of c.datagrams) dests.set(`${d.dst}:${d.dport}`, (dests.get(`${d.dst}:${d.dport}`) ?? 0) + 1);
  return [
    `link type ${c.linktype} (${c.linkName}), ${c.records} records, ${c.datagrams.length} IPv4 UDP datagrams over ${dur.toFixed(1)} s` +
      (dur > 0 ? ` (${(c.datagrams.length / dur).toFixed(0)}/s)` : ''),
    `kinds: ${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `destinations: ${[...dests].map(([k, n]) => `${k} (${n})`).join(', ')}; ${sources.size} source address:port pairs`,
    sizes.length ? `set value sizes: min ${sizes[0]} B, p50 ${q(0.5)} B, p90 ${q(0.9)} B, max ${sizes[sizes.length - 1]} B` : 'no cache sets',
    ...(Object.keys(c.skipped).length ? [`skipped: ${Object.entries(c.skipped).map(([k, n]) => `${k} ${n}`).join(', ')}`] : []),
  ];
}

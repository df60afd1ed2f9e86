// Secure mode with real uWSGI 2.0 nodes: three unmodified nodes, each behind
// its own agent (the real CLI), through one sealed repeater (the real CLI).
// A node's only cache-sync config is `node=` pointing at its agent's --local;
// it sends no subscriptions (the agent subscribes for it). Values are driven
// through each node's own cache API over HTTP.
//
// The agent<->repeater leg is captured with tcpdump on lo and searched for
// every key and value the tests wrote: nothing may travel in clear there. A
// second capture of the node<->agent leg is the control that the search finds
// these bytes when they are on the wire.
//
// Skipped loudly when uWSGI or its python3 plugin is missing (the capture
// test also when tcpdump cannot capture on lo), unless
// UDPREPEATER_REQUIRE_UWSGI=1 (CI), where anything missing fails the run.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeCacheSet } from '../src/wire/cache.js';
import { Daemon, runCli, spawnAgent } from './helpers/daemon.js';
import { eventually, freePort, Sender } from './helpers/net.js';
import { REQUIRED, requirement } from './helpers/requirement.js';
import { Capture, TCPDUMP_HINT, tcpdumpAvailability } from './helpers/tcpdump.js';
import { INSTALL_HINT, killAllUwsgi, UwsgiNode, uwsgiAvailability, sessionBytes, sessionId, untilAbsent, untilSynced, PROPAGATE_MS } from './helpers/uwsgi.js';

const TOLERANCE_S = 5;
const SUBSCRIBE_INTERVAL_S = 1;
/** Largest value the nodes' cache holds: uWSGI refuses a value above blocksize. */
const BLOCKSIZE = 4096;
/** Bound on any propagation over loopback (normally a few milliseconds). */
/** Bound on a process (agent, tcpdump) reaching its "ready" line or exiting. */
const PROCESS_MS = 10_000;
/** Window searched for in the capture: any 16 bytes of a secret in clear is a leak. */
const WINDOW = 16;

const { skip, require: requireUwsgi } = requirement(
  'real uWSGI interop',
  'the secure-mode real-uWSGI suite (test/interop.secure.test.ts)',
  'Secure mode with real uWSGI nodes is NOT being tested.',
  uwsgiAvailability(),
  INSTALL_HINT,
);

// ---- tcpdump (same skip/require policy as uWSGI) ----

const capture = requirement(
  'capture of the agent<->repeater leg',
  'the no-plaintext capture test of test/interop.secure.test.ts',
  'That no secret crosses the network in clear is NOT being tested.',
  tcpdumpAvailability(),
  TCPDUMP_HINT,
  !skip,
);
const dump = capture.avail;
const captureSkip: string | false = skip || capture.skip;
const requireTcpdump = capture.require;
const opts = { skip, timeout: 30_000 };
const HOOK = { timeout: 45_000 };

// ---- a tcpdump capture on lo ----


// ---- classic libpcap files ----

interface UdpPacket {
  src: number;
  dst: number;
  payload: Buffer;
}

/** The UDP datagrams of a classic pcap file (what `tcpdump -w` writes); link types of lo included. */
function readPcap(buf: Buffer): UdpPacket[] {
  assert.ok(buf.length >= 24, 'pcap file shorter than its header');
  const magicLE = buf.readUInt32LE(0);
  let le: boolean;
  if (magicLE === 0xa1b2c3d4 || magicLE === 0xa1b23c4d) le = true;
  else if (buf.readUInt32BE(0) === 0xa1b2c3d4 || buf.readUInt32BE(0) === 0xa1b23c4d) le = false;
  else throw new Error(`not a classic pcap file (magic 0x${magicLE.toString(16)}); pcapng is not expected from tcpdump -w`);
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linktype = u32(20) & 0x0fffffff;
  const out: UdpPacket[] = [];
  for (let off = 24; off < buf.length; ) {
    assert.ok(off + 16 <= buf.length, 'truncated pcap record header');
    const incl = u32(off + 8);
    const orig = u32(off + 12);
    const frame = buf.subarray(off + 16, off + 16 + incl);
    assert.equal(frame.length, incl, 'truncated pcap record');
    assert.equal(incl, orig, 'packet cut by the snapshot length: its payload would escape the search');
    off += 16 + incl;
    const l3 = network(linktype, frame);
    if (l3 === null) continue;
    const udp = udpOf(l3);
    if (udp !== null) out.push(udp);
  }
  return out;
}

/** The IP packet inside a link-layer frame, or null when it is no IP. */
function network(linktype: number, f: Buffer): Buffer | null {
  let proto: number;
  let at: number;
  switch (linktype) {
    case 1: // LINKTYPE_ETHERNET: what tcpdump -i lo writes on Linux
      at = 12;
      proto = f.readUInt16BE(at);
      while (proto === 0x8100 || proto === 0x88a8) {
        at += 4;
        proto = f.readUInt16BE(at);
      }
      at += 2;
      break;
    case 113: // LINKTYPE_LINUX_SLL
      proto = f.readUInt16BE(14);
      at = 16;
      break;
    case 276: // LINKTYPE_LINUX_SLL2
      proto = f.readUInt16BE(0);
      at = 20;
      break;
    case 0: // LINKTYPE_NULL (BSD loopback): host-order address family
      proto = f.readUInt32LE(0) === 2 || f.readUInt32BE(0) === 2 ? 0x0800 : 0x86dd;
      at = 4;
      break;
    case 101: // LINKTYPE_RAW
    case 228: // LINKTYPE_IPV4
    case 229: // LINKTYPE_IPV6
      proto = f[0]! >> 4 === 4 ? 0x0800 : 0x86dd;
      at = 0;
      break;
    default:
      throw new Error(`unexpected pcap link type ${linktype}`);
  }
  return proto === 0x0800 || proto === 0x86dd ? f.subarray(at) : null;
}

function udpOf(ip: Buffer): UdpPacket | null {
  let l4: Buffer;
  const version = ip[0]! >> 4;
  if (version === 4) {
    const ihl = (ip[0]! & 0x0f) * 4;
    // A fragment's payload would be split across packets and escape the search.
    assert.equal(ip.readUInt16BE(6) & 0x3fff, 0, 'fragmented IPv4 packet in the capture');
    if (ip[9] !== 17) return null;
    l4 = ip.subarray(ihl, ip.readUInt16BE(2));
  } else if (version === 6) {
    assert.notEqual(ip[6], 44, 'fragmented IPv6 packet in the capture');
    if (ip[6] !== 17) return null;
    l4 = ip.subarray(40, 40 + ip.readUInt16BE(4));
  } else return null;
  const len = l4.readUInt16BE(4);
  return { src: l4.readUInt16BE(0), dst: l4.readUInt16BE(2), payload: l4.subarray(8, len) };
}

/** Every secret (or any WINDOW bytes of one) found in the payloads, described. */
function findSecrets(payloads: Buffer[], secrets: Array<{ name: string; bytes: Buffer }>): string[] {
  const windows = new Set<string>();
  for (const p of payloads) for (let i = 0; i + WINDOW <= p.length; i++) windows.add(p.toString('latin1', i, i + WINDOW));
  const found: string[] = [];
  for (const s of secrets) {
    if (payloads.some((p) => p.includes(s.bytes))) {
      found.push(`${s.name} (whole)`);
      continue;
    }
    for (let i = 0; i + WINDOW <= s.bytes.length; i++) {
      if (windows.has(s.bytes.toString('latin1', i, i + WINDOW))) {
        found.push(`${s.name} (bytes ${i}..${i + WINDOW})`);
        break;
      }
    }
  }
  return found;
}

// ---- values, ports, processes ----


const taken = new Set<number>();
/** A free loopback port not handed out before in this file. */
async function uniquePort(): Promise<number> {
  for (;;) {
    const p = await freePort();
    if (!taken.has(p)) {
      taken.add(p);
      return p;
    }
  }
}


async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  return res.text();
}

/** udprepeater_datagrams_dropped_total{reason}, summed over channels. */
async function dropped(port: number, reason: string): Promise<number> {
  let n = 0;
  const re = new RegExp(`^udprepeater_datagrams_dropped_total\\{[^}]*reason="${reason}"[^}]*\\} (\\S+)$`, 'gm');
  for (const m of (await scrape(port)).matchAll(re)) n += Number(m[1]);
  return n;
}

async function subscribers(port: number): Promise<Array<{ address: string; key: string; form: string }>> {
  const res = await fetch(`http://127.0.0.1:${port}/subscribers`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  return (await res.json()) as Array<{ address: string; key: string; form: string }>;
}

interface Site {
  name: string;
  node: UwsgiNode;
  agent: Daemon;
  /** The agent's --local port: where the node sends its plain cache updates. */
  local: number;
  /** The agent's --bind port: its only socket towards the repeater. */
  bind: number;
}

const sorted = (xs: string[]) => [...xs].sort();

describe('real uWSGI nodes behind agents, through a sealed repeater', () => {
  let work: string;
  let rep: Daemon;
  let repPort: number;
  let metricsPort: number;
  let sealedCap: Capture | undefined;
  let plainCap: Capture | undefined;
  const sites: Site[] = [];
  /** a, b, c share the repeater's key; x's agent holds another key. */
  let a: Site, b: Site, c: Site, x: Site;
  const sender = Sender.open();
  /** Every key and value written through a node: none may cross the sealed leg in clear. */
  const secrets: Array<{ name: string; bytes: Buffer }> = [];
  const remember = (name: string, k: Buffer, v?: Buffer) => {
    secrets.push({ name: `key of ${name}`, bytes: k });
    if (v !== undefined) secrets.push({ name: `value of ${name}`, bytes: v });
  };

  /** A node whose cache-udp-node is its agent's --local, and the agent (real CLI) beside it. */
  async function startSite(name: string, keyFile: string, ports: { local: number; bind: number }): Promise<Site> {
    // No subscribe2: the agent subscribes on the node's behalf.
    const node = await UwsgiNode.start({ name, cacheNode: `127.0.0.1:${ports.local}`, subscribeTo: [], blocksize: BLOCKSIZE });
    try {
      const agent = await spawnAgent([
        '--repeater', `127.0.0.1:${repPort}`,
        '--key-file', keyFile,
        '--local', `127.0.0.1:${ports.local}`,
        '--deliver', node.udpAddress,
        '--channel-key', 'ssl',
        '--bind', `127.0.0.1:${ports.bind}`,
        '--subscribe-interval', String(SUBSCRIBE_INTERVAL_S),
      ]);
      const started = await agent.log.waitFor('agent started');
      assert.equal(started['local'], `127.0.0.1:${ports.local}`);
      assert.equal(started['deliver'], node.udpAddress);
      return { name, node, agent, ...ports };
    } catch (err) {
      await node.kill();
      throw err;
    }
  }

  before(async () => {
    if (skip) return;
    requireUwsgi();
    work = mkdtempSync(join(tmpdir(), 'udprepeater-secure-'));

    // Keys written by the real CLI, as an operator would.
    const key = join(work, 'cluster.key');
    const foreignKey = join(work, 'foreign.key');
    for (const f of [key, foreignKey]) {
      const r = await runCli(['keygen', f]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(statSync(f).mode & 0o777, 0o600);
    }

    rep = await Daemon.serve(['--listen-sealed', '127.0.0.1:0', '--key-file', key, '--tolerance', String(TOLERANCE_S), '--metrics', '127.0.0.1:0']);
    repPort = await rep.portOf('127.0.0.1:0');
    metricsPort = await rep.metricsPort();

    // Ports fixed up front: the capture filters name them, and the capture
    // starts before any agent exists so their subscriptions are on it too.
    const ports: Array<{ local: number; bind: number }> = [];
    for (let i = 0; i < 4; i++) ports.push({ local: await uniquePort(), bind: await uniquePort() });
    const good = ports.slice(0, 3);
    if (!captureSkip && dump.ok) {
      // Only agent<->repeater traffic: the repeater's port (frames in) and the
      // agents' --bind ports (frames out to them). Node<->agent traffic uses
      // the --local ports and the nodes' udp ports, so it is not selected.
      sealedCap = await Capture.start(join(work, 'sealed.pcap'), `udp and (port ${repPort} or ${good.map((p) => `port ${p.bind}`).join(' or ')})`);
      // The control: node -> agent, plain by design.
      plainCap = await Capture.start(join(work, 'plain.pcap'), `udp and (${good.map((p) => `port ${p.local}`).join(' or ')})`);
    }

    const started = await Promise.allSettled([
      startSite('node-a', key, ports[0]!),
      startSite('node-b', key, ports[1]!),
      startSite('node-c', key, ports[2]!),
      startSite('node-x', foreignKey, ports[3]!),
    ]);
    for (const r of started) if (r.status === 'fulfilled') sites.push(r.value);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    [a, b, c, x] = sites as [Site, Site, Site, Site];
    await Promise.all(
      [a, b, c].map((s) => rep.log.waitFor('subscribed', { form: 'sealed', key: 'ssl', address: `127.0.0.1:${s.bind}` }, { ms: PROCESS_MS })),
    );
  }, HOOK);

  after(async () => {
    sealedCap?.kill();
    plainCap?.kill();
    await Promise.all(sites.map((s) => s.node.kill()));
    killAllUwsgi();
    await Promise.all(sites.map((s) => s.agent.stop()));
    if (rep !== undefined) await rep.stop();
    sender.close();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }, HOOK);

  test('each agent subscribes for its node (sealed); the nodes announce nothing themselves', opts, async () => {
    const subs = await subscribers(metricsPort);
    assert.deepEqual(sorted(subs.map((s) => s.address)), sorted([a, b, c].map((s) => `127.0.0.1:${s.bind}`)));
    for (const s of subs) {
      assert.equal(s.key, 'ssl');
      assert.equal(s.form, 'sealed');
    }
    for (const s of sites) assert.doesNotMatch(s.node.output, /subscribing to/, `${s.name} has no subscribe2`);
  });

  test('(1) a session set through one node is read through every other node', opts, async () => {
    const writes = [
      { via: a, key: sessionId(), value: sessionBytes(300) },
      { via: b, key: sessionId(), value: sessionBytes(1500) },
      { via: c, key: sessionId(), value: sessionBytes(BLOCKSIZE) },
    ];
    writes.forEach((w, i) => remember(`write ${i} via ${w.via.name}`, w.key, w.value));
    for (const w of writes) await w.via.node.set(w.key, w.value, 300);
    for (const w of writes) {
      await Promise.all([a, b, c].filter((s) => s !== w.via).map((s) => untilSynced(s.node, w.key, w.value)));
    }

    // An update (session renegotiated) through another node replaces it everywhere.
    const renewed = sessionBytes(700);
    remember('the update via node-c', writes[0]!.key, renewed);
    await c.node.set(writes[0]!.key, renewed, 300);
    await Promise.all([a, b, c].map((s) => untilSynced(s.node, writes[0]!.key, renewed)));
  });

  test('(2) a delete through one node removes the session from every node', opts, async () => {
    const k = sessionId();
    const v = sessionBytes(512);
    remember('the deleted session', k, v);
    await a.node.set(k, v, 300);
    await Promise.all([b, c].map((s) => untilSynced(s.node, k, v)));

    // uWSGI sends the delete unpadded (its receivers ignore that form): the
    // agents must deliver it padded for this to propagate.
    assert.equal(await b.node.del(k), true);
    await Promise.all([a, b, c].map((s) => untilAbsent(s.node, k)));
  });

  test('(3) an agent holding another key is never subscribed, and its node receives nothing', opts, async () => {
    // The foreign agent announces every second; the repeater cannot open its frames.
    await eventually('the repeater to drop the foreign agent\'s frames as unknown_key', async () => ((await dropped(metricsPort, 'unknown_key')) > 0 ? true : undefined), PROPAGATE_MS);
    assert.deepEqual(rep.log.matching('subscribed', { address: `127.0.0.1:${x.bind}` }), []);
    assert.ok(!(await subscribers(metricsPort)).some((s) => s.address === `127.0.0.1:${x.bind}`));

    const k = sessionId();
    const v = sessionBytes(400);
    remember('the session x must not get', k, v);
    await a.node.set(k, v, 300);
    await Promise.all([b, c].map((s) => untilSynced(s.node, k, v)));
    // The repeater's fan-out of that update is over. A marker sent straight to
    // x's cache-udp-server now queues behind anything the repeater sent x:
    // once x holds the marker, it has applied everything sent before it.
    const marker = sessionId();
    const mv = sessionBytes(32);
    await sender.send(encodeCacheSet(marker, mv, 0), Number(x.node.udpAddress.split(':')[1]));
    await untilSynced(x.node, marker, mv);
    assert.equal(await x.node.get(k), null, 'node-x received a session through an agent with a foreign key');
  });

  test('(4) a capture of the agent<->repeater leg holds only sealed frames: no key or value in clear', { ...opts, skip: captureSkip }, async (t) => {
    if (REQUIRED) requireTcpdump();
    assert.ok(sealedCap !== undefined && plainCap !== undefined, 'the captures were started');
    assert.ok(secrets.length >= 10, `the earlier tests wrote the secrets to look for (${secrets.length})`);

    // A sentinel sent last on each leg: once a capture file holds it, it holds
    // everything that travelled before it.
    const sentinel = Buffer.from(`udprepeater-capture-end-${randomBytes(8).toString('hex')}`);
    await sender.send(sentinel, repPort);
    await sender.send(sentinel, a.local);
    await Promise.all([sealedCap.contains(sentinel), plainCap.contains(sentinel)]);
    for (const cap of [sealedCap, plainCap]) {
      const stats = await cap.stop();
      t.diagnostic(`tcpdump ${cap.file.split('/').pop()}: ${stats.replace(/^tcpdump: listening.*\n/, '').trim().replace(/\n/g, ', ')}`);
      // A dropped packet might be the one that leaked: the capture must be complete.
      assert.match(stats, /\b0 packets dropped by kernel/);
    }

    const sealed = readPcap(readFileSync(sealedCap.file)).filter((p) => !p.payload.equals(sentinel));
    const plain = readPcap(readFileSync(plainCap.file)).filter((p) => !p.payload.equals(sentinel));
    const good = [a, b, c];
    const legPorts = new Set([repPort, ...good.map((s) => s.bind)]);
    const localPorts = new Set(good.map((s) => s.local));
    t.diagnostic(`sealed leg: ${sealed.length} datagrams, ${sealed.reduce((n, p) => n + p.payload.length, 0)} bytes; plain leg: ${plain.length} datagrams`);

    // The filter selected only the agent<->repeater leg, and that leg is not empty.
    for (const p of sealed) assert.ok(legPorts.has(p.src) || legPorts.has(p.dst), `stray datagram ${p.src} -> ${p.dst}`);
    for (const p of sealed) assert.ok(!localPorts.has(p.src) && !localPorts.has(p.dst), 'node<->agent traffic in the sealed capture');
    for (const s of good) {
      const out = sealed.filter((p) => p.src === s.bind && p.dst === repPort);
      const back = sealed.filter((p) => p.dst === s.bind);
      assert.ok(out.length >= 2, `${s.name}'s agent sent ${out.length} frames to the repeater`);
      assert.ok(back.length >= 2, `the repeater sent ${back.length} frames to ${s.name}'s agent`);
    }
    const largest = Math.max(...sealed.map((p) => p.payload.length));
    assert.ok(largest > BLOCKSIZE, `the frame of the ${BLOCKSIZE}-byte value was captured whole (largest ${largest} bytes)`);

    // Every datagram on it is a sealed frame ("ur" magic)...
    const unsealed = sealed.filter((p) => !(p.payload.length >= 2 && p.payload[0] === 0x75 && p.payload[1] === 0x72));
    assert.deepEqual(
      unsealed.map((p) => `${p.src} -> ${p.dst}: ${p.payload.subarray(0, 8).toString('hex')}`),
      [],
      'datagrams on the agent<->repeater leg that are not sealed frames',
    );
    // ...and no key or value, nor any 16 bytes of one, appears in clear.
    assert.deepEqual(findSecrets(sealed.map((p) => p.payload), secrets), [], 'secrets in clear on the agent<->repeater leg');

    // Control: the same search finds every secret on the plain node -> agent leg.
    assert.ok(plain.length > 0 && plain.every((p) => p.payload[0] === 111), 'the plain leg carries uwsgi cache updates');
    assert.deepEqual(findSecrets(plain.map((p) => p.payload), secrets).map((f) => f.replace(/ \(.*\)$/, '')), secrets.map((s) => s.name));
  });
});

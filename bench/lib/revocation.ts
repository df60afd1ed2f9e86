// Revocation latency in identity mode (issue 18): how long after a reload
// that removes a node's line from the peers file (SIGHUP) the repeater
// refuses that node's frames.
//
// One repeater (--identity, --peers: a file of its own, the run's node
// identities); an observer node linked and subscribed at a socket of the
// bench, holding the channel's group key (taken and acknowledged by the
// harness as an agent does), so it opens group frames and, where the
// repeater sends them, link frames; per repetition a writer identity linked, sending a cache set
// under its link every millisecond (1000/s, each set's key names its
// sequence number). After 300 ms of steady traffic its line is removed from
// the peers file and the repeater gets SIGHUP; the writer goes on sending
// until the repeater logged the reload's revocation, and 300 ms more.
// The first refused frame is the first sequence number from which on the
// observer got no copy; its latency is its send time minus the SIGHUP's.
// The reload also replaces the group key (docs/PROTOCOL.md, "Group keys and
// revocation"): the observer is sent the new one at its socket, takes and
// acknowledges it, and is sent link frames until then; it opens both, so a
// missing copy is a refused frame, not a key change.
// The repeater's own count (udprepeater_datagrams_dropped_total, reason
// revoked) must equal the frames from there on, and its log line's time
// is given beside it. Median over the repetitions.

import { createSocket, type Socket } from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { EnvelopeKind } from '../../src/wire/envelope.js';
import { encodeCacheSet } from '../../src/wire/cache.js';
import { type IdentitySetup, LinkHarness, LogWatch, writePeers } from './identity-mode.js';
import { type BenchMode, CHANNEL_KEY } from './modes.js';
import { median } from './measure.js';
import { BenchError, sleep } from './procs.js';
import { startRepeater } from './targets.js';
import { join } from 'node:path';

export interface RevocationRep {
  /** Frames sent, the first refused one's sequence number, its send time after the SIGHUP (ms). */
  sent: number;
  firstRefused: number;
  latencyMs: number;
  /** The send time of the last frame that got through (the one before the first refused), after the SIGHUP (ms). */
  lastAcceptedMs: number;
  /** Frames from the first refused one on; the repeater's count of revoked drops meanwhile. */
  after: number;
  revokedDrops: number;
  /** The repeater's "identities revoked" log line, ms after the SIGHUP (its own clock, ms resolution). */
  logMs: number;
  /** The writer's frames the observer got as group frames and as link frames; the group keys it took (the reload's new one among them). */
  groupCopies: number;
  linkCopies: number;
  keysTaken: number;
}

export interface RevocationResult {
  reps: RevocationRep[];
  medianMs: number;
  command: string;
  note: string;
}

const RATE_PER_MS = 1;

async function udp(): Promise<Socket> {
  const s = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  s.on('error', () => undefined);
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  return s;
}

/** The revocation measurement: `s.revocable.length` repetitions against one repeater. */
export async function measureRevocation(s: IdentitySetup, mode: BenchMode, opts: { cpu: string | undefined; recvBuffer: number }, onTick: (x: string) => void): Promise<RevocationResult> {
  if (s.nodes.length < 1 || s.revocable.length < 1) throw new BenchError('internal: the revocation measurement needs an observer node and a writer to revoke');
  const peers = join(s.dir, 'peers-revocation');
  let listed = [s.nodes[0]!, ...s.revocable];
  writePeers(peers, listed);
  const own: BenchMode = { ...mode, repeaterArgs: (listen, ports) => mode.repeaterArgs(listen, ports).map((a) => (a === s.peersFile ? peers : a)) };
  const rep = await startRepeater(own, [], { cpu: opts.cpu, repeaterArgs: [], recvBuffer: opts.recvBuffer });
  const log = new LogWatch(rep.child);
  const h = await LinkHarness.open(rep.inputPort);
  const observer = await udp();
  const reps: RevocationRep[] = [];
  try {
    // The observer: a node linked and subscribed at a socket of its own; it opens every copy under its link.
    const obsAddress = `127.0.0.1:${observer.address().port}`;
    const obs = await h.link(s.nodes[0]!, s.repeater.key, obsAddress);
    await h.subscribe(obs, obsAddress);
    await h.groupAcked(obs, 5000, 'the observer');
    let got = new Set<number>();
    let tag = '';
    let copies = { group: 0, link: 0 };
    observer.on('message', (m) => {
      const o = h.openAt(obs, m);
      const d = o?.env.datagram;
      if (d == null) return;
      const k = /rev-(\w+)-(\d+)\b/.exec(d.toString('latin1'));
      if (k === null || k[1] !== tag) return;
      got.add(Number(k[2]));
      copies[o!.group ? 'group' : 'link']++;
    });
    for (const [i, w] of s.revocable.entries()) {
      onTick(`revocation ${i + 1}/${s.revocable.length}`);
      tag = `r${i}`;
      got = new Set();
      copies = { group: 0, link: 0 };
      const keys0 = h.groupKeys;
      const cipher = await h.link(w, s.repeater.key, `127.0.0.1:${h.port}`);
      const logsBefore = log.lines.length;
      const drops0 = (await rep.metrics()).get('udprepeater_datagrams_dropped_total{revoked}') ?? 0;
      const sentAt: number[] = [];
      let hupAt = Infinity;
      let revokedAt = Infinity;
      const t0 = performance.now();
      const send = (seq: number) => {
        const set = encodeCacheSet(Buffer.from(`rev-${tag}-${seq} `), Buffer.from('x'.repeat(64)), 0);
        h.send(h.seal(cipher, { kind: EnvelopeKind.CacheDatagram, datagram: set }));
        sentAt[seq] = performance.now();
      };
      // Paced by the clock, not the timer: every due frame is sent on each wake-up.
      for (let seq = 0; ; ) {
        const now = performance.now();
        while (seq < (now - t0) * RATE_PER_MS) send(seq++);
        if (hupAt === Infinity && now - t0 >= 300) {
          listed = listed.filter((n) => n !== w);
          writePeers(peers, listed);
          hupAt = performance.now();
          rep.child.proc.kill('SIGHUP');
        }
        if (revokedAt === Infinity && log.lines.slice(logsBefore).some((r) => String(r['msg']).startsWith('identities revoked'))) revokedAt = now;
        if (now - revokedAt > 300 || now - t0 > 5000) break;
        await sleep(1);
      }
      if (revokedAt === Infinity) throw new BenchError('revocation: udprepeater logged no "identities revoked" within 5 s of the SIGHUP');
      await sleep(200);
      const drops1 = (await rep.metrics()).get('udprepeater_datagrams_dropped_total{revoked}') ?? 0;
      const sent = sentAt.length;
      let first = sent;
      while (first > 0 && !got.has(first - 1)) first--;
      if (first === sent) throw new BenchError(`revocation: the observer got every frame of ${w.name} after the reload`);
      if (first === 0) throw new BenchError(`revocation: the observer got no frame of ${w.name} at all`);
      const line = log.lines.slice(logsBefore).find((r) => String(r['msg']).startsWith('identities revoked'));
      const logTime = typeof line?.['time'] === 'string' || typeof line?.['time'] === 'number' ? new Date(line['time']).getTime() : NaN;
      const hupWall = Date.now() - (performance.now() - hupAt);
      reps.push({ sent, firstRefused: first, latencyMs: sentAt[first]! - hupAt, lastAcceptedMs: sentAt[first - 1]! - hupAt, after: sent - first, revokedDrops: drops1 - drops0, logMs: logTime - hupWall, groupCopies: copies.group, linkCopies: copies.link, keysTaken: h.groupKeys - keys0 });
    }
  } finally {
    h.close();
    observer.close();
    await rep.stop();
  }
  return {
    reps,
    medianMs: median(reps.map((r) => r.latencyMs)),
    command: rep.command ?? '',
    note: `${reps.length} repetitions, a writer identity sending a cache set every ms under its link; its peers-file line removed and SIGHUP sent after 300 ms; the observer holding the channel's group key; channel key "${CHANNEL_KEY}"`,
  };
}

/** The report's lines. */
export function revocationLines(r: RevocationResult): string[] {
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
  return [
    `**revocation latency: reload to first refused frame = ${f(r.medianMs)} ms** (median of ${r.reps.length}; ${r.reps.map((x) => f(x.latencyMs)).join(', ')} ms)`,
    '',
    `${r.note}. The first refused frame is the first sequence number from which on the observer (a linked, subscribed node) got no copy; its latency is its send time minus the SIGHUP's. ` +
      'A frame still queued at the listener when the reload lands is refused too, so a repetition can come out slightly negative: the reload took effect between the last frame that got through and the first refused one. ' +
      'The reload also replaces the group key: the observer takes the new one (pushed to its socket) and acknowledges it; it opens group and link frames alike, so a missing copy is a refused frame. ' +
      'Per repetition: frames sent, first refused, the last that got through, frames from the first refused on / the repeater\'s count of `revoked` drops, its "identities revoked" log line after the SIGHUP (ms, its clock), the copies the observer got as group / link frames and the group keys it took:',
    '',
    ...r.reps.map((x, i) => `- ${i + 1}: ${x.sent} sent, first refused #${x.firstRefused} sent at ${f(x.latencyMs)} ms, the last through at ${f(x.lastAcceptedMs)} ms; ${x.after} from it on / ${x.revokedDrops} counted revoked; log line at ${f(x.logMs)} ms; ${x.groupCopies} group / ${x.linkCopies} link copies, ${x.keysTaken} key(s) taken`),
    '',
    `udprepeater: \`${r.command}\``,
    '',
  ];
}

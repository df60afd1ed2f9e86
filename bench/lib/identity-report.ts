// The report's "Secure with identities against plain mode" section: udprepeater
// in identity mode (group frames: each live datagram sealed once for every
// subscriber that acknowledged the channel's group key) over its plain twin, CPU per output datagram, same run; and the
// revocation latency (revocation.ts).

import { fmtRate, SEALED_GATE_DROPS } from './measure.js';
import type { RunInfo, ScenarioSummary, TargetSummary } from './report.js';
import { revocationLines } from './revocation.js';

/** Issue 18: with identities at 8 subscribers, CPU per output datagram at most this many times plain mode's. */
export const IDENTITY_TARGET = 1.3;

const cpuUs = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');
const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');
const pct = (x: number) => (!Number.isFinite(x) ? '-' : x === 0 ? '0' : `${(x * 100).toFixed(x < 0.01 ? 2 : 1)}%`);
const us = (x: number) => (!Number.isFinite(x) ? '-' : x >= 1000 ? `${(x / 1000).toFixed(1)} ms` : `${x.toFixed(x < 10 ? 1 : 0)} µs`);

export function identitySection(info: RunInfo, sums: readonly ScenarioSummary[]): string[] {
  const ids = sums.filter((s) => s.mode === 'identity');
  const rev = info.identity?.revocation ?? null;
  if (ids.length === 0 && rev === null) return [];
  const byId = new Map(sums.map((s) => [s.id, s]));
  const L: string[] = ['## Secure with identities against plain mode', ''];
  const rows = ids.map((s) => ({ s, p: s.twin === null ? undefined : byId.get(s.twin) }));
  const head = rows.find((x) => x.s.id === 's8-in20k-identity');
  const r8 = head === undefined ? NaN : (head.s.targets.udprepeater?.cpuPerOutUs ?? NaN) / (head.p?.targets.udprepeater?.cpuPerOutUs ?? NaN);
  L.push(
    `**secure with identities: CPU per output datagram = ${ratio(r8)} plain mode (8 subscribers, 200-byte values)**; target ≤ ${IDENTITY_TARGET}x: ` +
      `**${!Number.isFinite(r8) ? 'not measured' : r8 <= IDENTITY_TARGET ? 'met' : 'missed'}**.`,
    '',
    'Identity mode: `udprepeater serve --listen-sealed ...,key=ssl --identity FILE --peers FILE`, identities from `udprepeater keygen --identity`, a writer and one node identity per subscriber ' +
      'in its peers file. The bench makes every handshake with the project\'s own code (HELLO, WELCOME, a sealed SUBSCRIBE naming the receiver\'s socket, answered by a MEMBERSHIP; ' +
      'the SUBSCRIBE again every 10 s; the GROUP_KEY that comes with it taken and acknowledged under the link as an agent does) and hands the keys to the C helpers: ' +
      'the generator seals every datagram as a link frame under the writer\'s link, each receiver opens group frames under the group key and link frames under its own link. ' +
      'udprepeater opens each frame once and seals it once for every subscriber that acknowledged the group key (a group frame; under a link key only for one that does not hold it yet). ' +
      'Measured in the same group as the plain twin (and the secure twin when it ran), in turn; udprepeater only (the C floor speaks no links).',
    '',
    '| scenario | udprepeater CPU µs per output: identity / plain | ratio | target | delivered out/s: identity / plain | loss: identity / plain | p50: identity / plain | p99: identity / plain |',
    '|---|---|---|---|---|---|---|---|',
  );
  for (const { s, p } of rows) {
    const u = s.targets.udprepeater;
    const pu = p?.targets.udprepeater;
    const v = (t: TargetSummary | undefined, g: (t: TargetSummary) => string) => (t === undefined ? '-' : g(t));
    const r = (u?.cpuPerOutUs ?? NaN) / (pu?.cpuPerOutUs ?? NaN);
    const target = s.subscribers === 8 ? `≤ ${IDENTITY_TARGET}x: ${!Number.isFinite(r) ? '-' : r <= IDENTITY_TARGET ? 'yes' : '**no**'}` : '(reported)';
    L.push(
      `| ${s.title} | ${v(u, (t) => cpuUs(t.cpuPerOutUs))} / ${v(pu, (t) => cpuUs(t.cpuPerOutUs))} | ${ratio(r)} | ${target} | ` +
        `${v(u, (t) => fmtRate(t.deliveredRate))} / ${v(pu, (t) => fmtRate(t.deliveredRate))} | ${v(u, (t) => pct(t.loss))} / ${v(pu, (t) => pct(t.loss))} | ` +
        `${v(u, (t) => us(t.p50))} / ${v(pu, (t) => us(t.p50))} | ${v(u, (t) => us(t.p99))} / ${v(pu, (t) => us(t.p99))} |`,
    );
  }
  L.push('');
  const gate = new Set(SEALED_GATE_DROPS);
  const bugs: string[] = [];
  for (const s of ids) {
    for (const t of Object.values(s.targets)) {
      if (t === undefined) continue;
      const d = Object.entries(t.drops).filter(([k, v]) => gate.has(k) && v > 0);
      if (d.length > 0) bugs.push(`- ${s.title}, ${t.target}: refused frames: ${d.map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')} (mean per measurement)`);
      if (t.recvErrors > 0) bugs.push(`- ${s.title}, ${t.target}: the receivers could not open ${t.recvErrors.toFixed(0)} frames per measurement (mean)`);
    }
  }
  if (ids.length > 0) {
    L.push(
      ...(bugs.length
        ? ['**Frames refused on the identity path (a bench or repeater bug, not load):**', '', ...bugs]
        : ['Frames refused on the identity path: none (no unknown_link, auth_failed, replay, stale ... at udprepeater; every link frame the receivers got opened).']),
      '',
    );
  }
  const check = info.identity?.check ?? [];
  if (check.length > 0) L.push('Interoperability checked before measuring:', '', ...check.map((l) => `- ${l}`), '');
  if (rev !== null) L.push('### Revocation latency', '', ...revocationLines(rev));
  return L;
}

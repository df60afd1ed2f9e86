// What `udprepeater status`, `subscribers` and `peers` print, from what a
// daemon's status port said (tools/status.ts fetches it). Pure: no I/O.
//
// Invariants:
// - The answers came over the network, maybe from something that is not us:
//   every field is read through the guards below (a wrong type shows as
//   empty, never throws), and every string printed for a terminal goes
//   through `clean`, so a subscription key cannot carry terminal escapes or
//   bidirectional-text controls to the operator's screen (--json output is
//   escaped by JSON.stringify).
// - A column appears only when the data carries it (identity, served by).

import { promSamples } from '../wire/prom-text.js';

export type DaemonKind = 'repeater' | 'agent';
type Obj = Record<string, unknown>;

/** What one run of a command read from the status port. */
export interface Snapshot {
  /** The address asked, as the user gave it. */
  readonly address: string;
  readonly kind: DaemonKind;
  /** /healthz */
  readonly health: Obj;
  /** /subscribers (repeater), else null. */
  readonly subscribers: readonly unknown[] | null;
  /** /metrics text, when it was read. */
  readonly metrics: string | null;
}

const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const str = (v: unknown): string => (v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v));
const when = (v: unknown): string => (typeof v === 'string' ? v.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '');
const has = (rows: readonly unknown[], field: string): boolean => rows.some((r) => obj(r)[field] !== undefined);

/** A repeater's /healthz lists listeners, an agent's its links; anything else is not a udprepeater's. */
export function identify(health: unknown): DaemonKind | null {
  const h = obj(health);
  if (typeof h['version'] !== 'string' || typeof h['status'] !== 'string') return null;
  if (Array.isArray(h['listeners'])) return 'repeater';
  if (Array.isArray(h['links'])) return 'agent';
  return null;
}

/**
 * Text safe for a terminal: control characters (C0, DEL, C1) and the
 * bidirectional overrides are shown as escapes; longer than `max`
 * characters is cut with an ellipsis (--json has it all).
 */
export function clean(v: unknown, max = 64): string {
  const s = str(v).replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
  const chars = [...s];
  return chars.length <= max ? s : `${chars.slice(0, max - 1).join('')}…`;
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86_400);
  const h = Math.floor(s / 3_600) % 24;
  const m = Math.floor(s / 60) % 60;
  return `${d ? `${d}d ` : ''}${d || h ? `${h}h ` : ''}${d || h || m ? `${m}m ` : ''}${s % 60}s`;
}

export interface Column {
  readonly title: string;
  readonly get: (row: Obj) => unknown;
  /** Right-aligned (numbers). */
  readonly right?: boolean;
}

/** A plain text table, columns two spaces apart, every cell cleaned. */
export function table(columns: readonly Column[], rows: readonly unknown[]): string {
  const cells = rows.map((r) => columns.map((c) => clean(c.get(obj(r)))));
  const width = columns.map((c, i) => Math.max(c.title.length, ...cells.map((row) => [...row[i]!].length)));
  const line = (row: readonly string[]) =>
    row
      .map((cell, i) => {
        const pad = ' '.repeat(width[i]! - [...cell].length);
        return columns[i]!.right ? pad + cell : i === row.length - 1 ? cell : cell + pad;
      })
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.title)), ...cells.map(line)].join('\n') + '\n';
}

/** Datagram drops by reason, summed over channels, largest first. */
export function dropsByReason(metrics: string | null, kind: DaemonKind): Array<{ reason: string; count: number }> {
  if (metrics === null) return [];
  const name = kind === 'agent' ? 'udprepeater_agent_datagrams_dropped_total' : 'udprepeater_datagrams_dropped_total';
  const sums = new Map<string, number>();
  for (const s of promSamples(metrics, [name])) {
    const reason = s.labels['reason'] ?? '';
    if (s.value > 0) sums.set(reason, (sums.get(reason) ?? 0) + s.value);
  }
  return [...sums].map(([reason, count]) => ({ reason, count })).sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason));
}

interface ChannelCount {
  total: number;
  plain: number;
  sealed: number;
  suspended: number;
  warm: number;
}

/** Subscribers per channel; channels with a listener and nobody subscribed count 0. */
export function perChannel(s: Snapshot): Map<string, ChannelCount> {
  const out = new Map<string, ChannelCount>();
  const of = (ch: string) => out.get(ch) ?? out.set(ch, { total: 0, plain: 0, sealed: 0, suspended: 0, warm: 0 }).get(ch)!;
  for (const l of arr(s.health['listeners'])) of(str(obj(l)['channel']));
  for (const raw of s.subscribers ?? []) {
    const e = obj(raw);
    const c = of(str(e['channel']));
    c.total++;
    if (e['form'] === 'sealed') c.sealed++;
    else c.plain++;
    if (e['suspended'] === true) c.suspended++;
    if (e['warmJoin'] !== null && e['warmJoin'] !== undefined) c.warm++;
  }
  return out;
}

function keyLines(h: Obj): string[] {
  const keys = arr(h['keys']).map((k) => clean(k));
  const lines = [`keys: ${keys.length === 0 ? 'none (secure mode off)' : keys.join(', ')}`];
  if (h['ticketKeys'] !== undefined) {
    const t = arr(h['ticketKeys']).map(obj);
    const enc = t.find((k) => k['encrypting'] === true);
    lines.push(`ticket keys: ${t.length}${enc === undefined ? ', none encrypting' : `, encrypting ${clean(enc['id'])} until ${clean(when(enc['notAfter']))}`}`);
  }
  return lines;
}

function dropLine(s: Snapshot): string {
  const drops = dropsByReason(s.metrics, s.kind);
  if (drops.length === 0) return 'drops: none';
  const top = drops.slice(0, 5).map((d) => `${clean(d.reason)} ${d.count}`);
  return `drops: ${top.join(', ')}${drops.length > 5 ? ` (and ${drops.length - 5} more reasons)` : ''}`;
}

function clusterLine(c: Obj, subscribers: number): string {
  const peers = arr(c['peers']).map((p) => clean(obj(p)['name'], 32));
  const bus = c['connected'] === true ? `bus connected to ${clean(c['server'])}` : 'bus DOWN';
  return (
    `cluster: ${clean(c['name'])} (this repeater: ${clean(c['node'])}, id ${clean(c['id'])}), ${bus}, ` +
    `${peers.length} live peer${peers.length === 1 ? '' : 's'}${peers.length > 0 ? ` (${peers.join(', ')})` : ''}; ` +
    `serves ${num(c['ownedSubscribers'])} of ${subscribers} subscribers`
  );
}

/** The short summary `udprepeater status` prints. */
export function formatStatus(s: Snapshot): string {
  const h = s.health;
  const lines = [`udprepeater ${s.kind} ${clean(h['version'])} at ${clean(s.address)}: ${clean(h['status'])}${h['uptimeSeconds'] === undefined ? '' : `, up ${duration(num(h['uptimeSeconds']))}`}`];
  if (s.kind === 'repeater') {
    const listeners = arr(h['listeners']).map(obj);
    lines.push(`listeners: ${listeners.length === 0 ? 'none' : ''}`.trimEnd());
    for (const l of listeners) {
      const bound = str(l['bound']) !== str(l['address']) ? ` (bound ${clean(l['bound'])})` : '';
      const mode = l['identity'] === true ? ', by identity' : '';
      lines.push(`  ${clean(l['address'])}  ${l['sealed'] === true ? 'sealed' : 'plain '}  channel ${clean(l['channel'])}${mode}${bound}`);
    }
    const channels = perChannel(s);
    const total = (s.subscribers ?? []).length;
    lines.push(`subscribers: ${total} on ${channels.size} channel${channels.size === 1 ? '' : 's'}`);
    const width = Math.max(0, ...[...channels.keys()].map((c) => [...clean(c)].length));
    for (const [ch, c] of channels) {
      const forms = [c.plain ? `${c.plain} plain` : '', c.sealed ? `${c.sealed} sealed` : ''].filter(Boolean).join(', ');
      const more = [c.suspended ? `${c.suspended} suspended` : '', c.warm ? `${c.warm} warm join${c.warm === 1 ? '' : 's'}` : ''].filter(Boolean);
      const detail = [forms, ...more].filter(Boolean).join('; ');
      lines.push(`  ${clean(ch).padEnd(width)}  ${c.total}${detail === '' ? '' : ` (${detail})`}`);
    }
    lines.push(h['cluster'] === undefined ? 'cluster: no (a standalone repeater)' : clusterLine(obj(h['cluster']), total));
  } else {
    lines.push(`channel key: ${clean(h['channelKey'])}, origin ${clean(h['origin'])}`);
    const links = arr(h['links']).map(obj);
    lines.push(`repeaters: ${links.length === 0 ? 'none' : ''}`.trimEnd());
    for (const l of links) {
      const last = l['lastFrameAt'] === null ? 'no frame yet' : `last frame ${clean(when(l['lastFrameAt']))}`;
      lines.push(`  ${clean(l['repeater'])}  sent ${num(l['sent'])}, received ${num(l['received'])}, ${last}`);
    }
  }
  if (h['identity'] !== null && typeof h['identity'] === 'object') {
    const id = obj(h['identity']);
    lines.push(`identities: ${arr(id['peers']).length} listed, ${num(id['links'])} linked (peers file ${clean(id['peersFingerprint'], 16)}; udprepeater peers for each)`);
  }
  lines.push(...keyLines(h), dropLine(s));
  return lines.join('\n') + '\n';
}

/** `status --json`: the health view as the daemon said it, with the counts the summary derives. */
export function statusJson(s: Snapshot): unknown {
  const channels = s.kind === 'repeater' ? Object.fromEntries([...perChannel(s)].map(([ch, c]) => [ch, c])) : undefined;
  return {
    daemon: s.kind,
    address: s.address,
    healthz: s.health,
    ...(channels === undefined ? {} : { subscribers: { total: (s.subscribers ?? []).length, channels } }),
    drops: dropsByReason(s.metrics, s.kind),
  };
}

/** `udprepeater subscribers`: one row per subscriber. */
export function formatSubscribers(subs: readonly unknown[]): string {
  if (subs.length === 0) return 'no subscribers\n';
  const cols: Column[] = [
    { title: 'CHANNEL', get: (s) => s['channel'] },
    { title: 'ADDRESS', get: (s) => s['address'] },
    { title: 'KEY', get: (s) => s['key'] },
    { title: 'FORM', get: (s) => `${str(s['form'])}${s['static'] === true ? ' static' : ''}` },
  ];
  if (has(subs, 'identity')) cols.push({ title: 'IDENTITY', get: (s) => s['identity'] });
  cols.push(
    { title: 'LAST SEEN', get: (s) => when(s['lastSeen']) },
    { title: 'DATAGRAMS', get: (s) => num(s['datagrams']), right: true },
    { title: 'DROPPED', get: (s) => num(s['dropped']), right: true },
    { title: 'ERRORS', get: (s) => num(s['errors']), right: true },
    { title: 'STATE', get: state },
  );
  if (has(subs, 'servedBy')) cols.push({ title: 'SERVED BY', get: (s) => (s['servedBy'] === null ? 'nobody' : s['servedBy']) });
  return table(cols, subs);
}

function state(s: Obj): string {
  if (s['suspended'] === true) return `suspended until ${when(s['suspendedUntil'])}`;
  const w = s['warmJoin'];
  if (w === null || w === undefined) return 'live';
  const j = obj(w);
  return typeof j['waiting'] === 'string' ? `warm join (waiting for ${j['waiting']})` : `warm join ${num(j['sent']) + num(j['skipped'])}/${num(j['total'])}`;
}

/** `udprepeater peers`: a repeater's cluster peers, or an agent's repeaters. */
export function formatPeers(kind: DaemonKind, h: Obj): string {
  if (kind === 'agent') {
    const links = arr(h['links']);
    if (links.length === 0) return 'this agent has no repeaters\n';
    const cols: Column[] = [
      { title: 'REPEATER', get: (l) => l['repeater'] },
      { title: 'ADVERTISED AS', get: (l) => l['advertise'] },
    ];
    if (has(links, 'identity')) cols.push({ title: 'IDENTITY', get: (l) => l['identity'] });
    cols.push(
      { title: 'SENT', get: (l) => num(l['sent']), right: true },
      { title: 'RECEIVED', get: (l) => num(l['received']), right: true },
      { title: 'LAST FRAME', get: (l) => (l['lastFrameAt'] === null ? 'never' : when(l['lastFrameAt'])) },
    );
    return table(cols, links);
  }
  if (h['cluster'] === undefined) return 'not in cluster mode: this repeater has no peers\n';
  const c = obj(h['cluster']);
  const head = `cluster ${clean(c['name'])}: this repeater is ${clean(c['node'])} (id ${clean(c['id'])}), bus ${c['connected'] === true ? `connected to ${clean(c['server'])}` : 'DOWN'}\n`;
  const peers = arr(c['peers']);
  if (peers.length === 0) return `${head}no live peers\n`;
  const cols: Column[] = [
    { title: 'NAME', get: (p) => p['name'] },
    { title: 'ID', get: (p) => p['id'] },
  ];
  if (has(peers, 'identity')) cols.push({ title: 'IDENTITY', get: (p) => p['identity'] });
  cols.push(
    { title: 'LAST HEARD', get: (p) => `${(num(p['lastHeardMs']) / 1000).toFixed(1)} s ago`, right: true },
    { title: 'SUBSCRIBERS', get: (p) => num(p['subscribers']), right: true },
  );
  return head + table(cols, peers);
}

/** `peers --json`: the peers as the daemon listed them (cluster peers, or an agent's links); with identities, an object with its identity table too. */
export function peersJson(kind: DaemonKind, h: Obj): unknown {
  const list = kind === 'agent' ? arr(h['links']) : arr(obj(h['cluster'])['peers']);
  if (h['identity'] === undefined || typeof h['identity'] !== 'object') return list;
  return { identity: h['identity'], [kind === 'agent' ? 'repeaters' : 'cluster']: list };
}

/**
 * Identity mode: one row per identity the daemon's peers file lists (and
 * those removed within their revoked window), before what formatPeers
 * prints; '' without identities.
 */
export function formatIdentities(kind: DaemonKind, h: Obj): string {
  if (h['identity'] === undefined || typeof h['identity'] !== 'object' || h['identity'] === null) return '';
  const id = obj(h['identity']);
  const peers = arr(id['peers']);
  const head = `identities: this ${kind} is ${clean(id['publicKey'], 24)}, peers file ${clean(id['peersFingerprint'], 16)} (${peers.length} listed, ${num(id['links'])} linked)\n`;
  if (peers.length === 0) return `${head}\n`;
  const cols: Column[] = [
    { title: 'NAME', get: (p) => p['name'] },
    { title: 'ROLE', get: (p) => p['role'] },
    { title: 'KEY', get: (p) => `${[...str(p['key'])].slice(0, 16).join('')}…` },
    { title: 'ALLOW', get: (p) => (arr(p['allow']).length === 0 ? 'any' : arr(p['allow']).map(str).join(',')) },
    { title: 'STATE', get: (p) => (p['revokedUntil'] !== undefined ? `revoked (until ${when(p['revokedUntil'])})` : p['linked'] === true ? 'linked' : 'not linked') },
    { title: 'LAST SEEN', get: (p) => (p['lastSeen'] === null || p['lastSeen'] === undefined ? 'never' : when(p['lastSeen'])) },
    { title: 'REFUSED', get: refusedCell },
  ];
  return `${head}${table(cols, peers)}\n`;
}

function refusedCell(p: Obj): string {
  const r = Object.entries(obj(p['refused'])).filter(([, n]) => num(n) > 0);
  return r.length === 0 ? '-' : r.map(([reason, n]) => `${reason} ${num(n)}`).join(', ');
}

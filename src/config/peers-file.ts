// The peers file: who is trusted, and in which role (docs/PROTOCOL.md,
// "Identities and links"). One line per identity:
//
//   PUBLICKEY NAME [role=node|repeater] [allow=CIDR]...   # comment
//
// `#` starts a comment (a whole line, or after whitespace); blank lines are
// skipped. The role defaults to node; allow= is repeatable and narrows the
// source addresses the identity may use (none: any address, the key is the
// authentication). Names and keys are unique. Every error names file:line
// and the problem; a refused file changes nothing (the caller keeps the
// running table). The file is not secret, but is believed: it must pass the
// trusted-file checks (ours, not writable by group or others).
//
// A parsed file is an immutable PeerTable with a fingerprint (SHA-256 of its
// canonical form: comments, order and spelling do not count), and
// diffPeers(old, new) says what a reload changes: who was added, who was
// removed (revoked), and whose name, role or allow-list changed.

import { createHash } from 'node:crypto';
import { BlockList } from 'node:net';
import { ConfigError } from '../base/errors.js';
import { readTrusted } from '../base/trust.js';
import { type PeerKey, peerKeyFromText } from '../crypto/identity.js';
import { canonicalIp } from '../wire/address.js';

export type PeerRole = 'node' | 'repeater';

export interface Peer {
  readonly key: PeerKey;
  readonly name: string;
  readonly role: PeerRole;
  /** Canonical CIDRs; empty: any source address. */
  readonly allow: readonly string[];
  /** Where it was listed (1-based), for messages. */
  readonly line: number;
}

/** Bounds on what one file may hold, so a runaway file is refused rather than loaded. */
export const MAX_PEERS_BYTES = 4 << 20;
export const MAX_PEERS = 65536;
const MAX_ALLOW = 64;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class PeerTable {
  private readonly byKey = new Map<string, Peer>();
  private readonly byNameMap = new Map<string, Peer>();
  private readonly byIdMap = new Map<string, Peer>();
  /** Hex SHA-256 of the canonical form: equal tables, equal fingerprints. */
  readonly fingerprint: string;

  constructor(
    peers: readonly Peer[],
    /** Where it was read from ('' when built in memory). */
    readonly source = '',
  ) {
    for (const p of peers) {
      this.byKey.set(p.key.hex, p);
      this.byNameMap.set(p.name, p);
      this.byIdMap.set(p.key.idHex, p);
    }
    const canonical = [...this.byKey.values()].map(canonicalLine).sort().join('\n');
    this.fingerprint = createHash('sha256').update(canonical).digest('hex');
    Object.freeze(this);
  }

  get size(): number {
    return this.byKey.size;
  }

  /** By Ed25519 public key (bytes or hex). */
  get(key: Uint8Array | string): Peer | undefined {
    return this.byKey.get(typeof key === 'string' ? key : Buffer.from(key).toString('hex'));
  }

  byName(name: string): Peer | undefined {
    return this.byNameMap.get(name);
  }

  /** By the 8-byte identity id a HELLO names (hex). */
  byId(idHex: string): Peer | undefined {
    return this.byIdMap.get(idHex);
  }

  /** Peers in file order. */
  list(): Peer[] {
    return [...this.byKey.values()];
  }

  /** The peers of one role. */
  withRole(role: PeerRole): Peer[] {
    return this.list().filter((p) => p.role === role);
  }
}

function canonicalLine(p: Peer): string {
  return [p.key.text, p.name, `role=${p.role}`, ...[...p.allow].sort().map((a) => `allow=${a}`)].join(' ');
}

/** A CIDR in canonical form (a bare IP is one host; IPv4-mapped IPv6 is IPv4), or the problem. */
function cidrOf(text: string): string | { problem: string } {
  const [ipText, bits, extra] = text.split('/');
  const ip = canonicalIp(ipText ?? '');
  if (ip === null || extra !== undefined) return { problem: `allow=${text} is not an IP address or CIDR` };
  const written = (ipText ?? '').includes(':') ? 128 : 32;
  if (!/^[0-9]{1,3}$/.test(bits ?? String(written)) || Number(bits ?? written) > written) return { problem: `allow=${text}: the prefix must be 0-${written}` };
  let prefix = Number(bits ?? written);
  if (written === 128 && ip.family === 4) {
    if (prefix < 96) return { problem: `allow=${text}: an IPv4-mapped prefix must be /96 or longer` };
    prefix -= 96;
  }
  // BlockList throws on what it cannot hold: the check the repeater's ACL will make.
  try {
    new BlockList().addSubnet(ip.host, prefix, ip.family === 4 ? 'ipv4' : 'ipv6');
  } catch {
    return { problem: `allow=${text} is not an IP address or CIDR` };
  }
  return `${ip.host}/${prefix}`;
}

const printable = (s: string) => (/^[\x21-\x7e]*$/.test(s) ? s : JSON.stringify(s));

/**
 * Parses a peers file's text. `where` names it in messages (the path).
 * Needs sodiumReady() (keys are checked as points). Throws a ConfigError
 * naming where:line at the first problem.
 */
export function parsePeers(text: string, where: string): PeerTable {
  const peers: Peer[] = [];
  const keys = new Map<string, Peer>();
  const names = new Map<string, Peer>();
  const ids = new Map<string, Peer>();
  const lines = text.replace(/^\uFEFF/, '').split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = i + 1;
    const fail = (problem: string): never => {
      throw new ConfigError(`${where}:${line}: ${problem}`);
    };
    const body = raw.replace(/\r$/, '').replace(/(^|\s)#.*$/, '').trim();
    if (body === '') continue;
    const [keyText, name, ...opts] = body.split(/\s+/);
    const key = peerKeyFromText(keyText!);
    if (typeof key === 'string') fail(`the key ${printable(keyText!.slice(0, 80))} ${key}`);
    const peerKey = key as PeerKey;
    if (name === undefined) fail(`no name after the key: a line is PUBLICKEY NAME [role=node|repeater] [allow=CIDR]...`);
    if (!NAME.test(name!)) {
      fail(`the name ${printable(name!.slice(0, 80))} is not a name: 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    }
    let role: PeerRole | null = null;
    const allow: string[] = [];
    for (const opt of opts) {
      const eq = opt.indexOf('=');
      const k = eq < 0 ? opt : opt.slice(0, eq);
      const v = eq < 0 ? '' : opt.slice(eq + 1);
      if (k === 'role') {
        if (role !== null) fail('role= is given twice');
        if (v !== 'node' && v !== 'repeater') fail(`role=${printable(v)}: the role is node or repeater`);
        role = v as PeerRole;
      } else if (k === 'allow') {
        if (v === '') fail('allow= needs a CIDR, e.g. allow=10.0.0.0/24');
        const cidr = cidrOf(v);
        if (typeof cidr !== 'string') fail(cidr.problem);
        if (allow.length >= MAX_ALLOW) fail(`more than ${MAX_ALLOW} allow= on one line`);
        if (!allow.includes(cidr as string)) allow.push(cidr as string);
      } else {
        fail(`unknown option ${printable(opt.slice(0, 80))}: a line is PUBLICKEY NAME [role=node|repeater] [allow=CIDR]...`);
      }
    }
    const before = keys.get(peerKey.hex);
    if (before !== undefined) fail(`the key of ${name} is already listed at line ${before.line} (${before.name}): one line per identity`);
    const sameName = names.get(name!);
    if (sameName !== undefined) fail(`the name ${name} is already used at line ${sameName.line}: names are unique`);
    const sameId = ids.get(peerKey.idHex);
    if (sameId !== undefined) fail(`the key of ${name} has the same identity id as line ${sameId.line} (${sameId.name}); make a new identity for one of them`);
    if (peers.length >= MAX_PEERS) fail(`more than ${MAX_PEERS} peers`);
    const peer: Peer = Object.freeze({ key: peerKey, name: name!, role: role ?? 'node', allow: Object.freeze(allow), line });
    peers.push(peer);
    keys.set(peerKey.hex, peer);
    names.set(peer.name, peer);
    ids.set(peerKey.idHex, peer);
  }
  return new PeerTable(peers, where);
}

/**
 * Reads and parses a peers file through the trusted-file checks. Throws a
 * ConfigError naming `label` and the file (and the line, for its content).
 */
export function loadPeersFile(file: string, label = '--peers'): PeerTable {
  const bytes = readTrusted(file, label, { secret: false });
  if (bytes === null) throw new ConfigError(`${label} ${file}: no such file`);
  if (bytes.length > MAX_PEERS_BYTES) throw new ConfigError(`${label} ${file}: ${bytes.length} bytes, more than a peers file may hold (${MAX_PEERS_BYTES})`);
  const text = bytes.toString('utf8');
  if (text.includes('\uFFFD')) throw new ConfigError(`${label} ${file}: not UTF-8 text`);
  return parsePeers(text, file);
}

export interface PeerChange {
  readonly before: Peer;
  readonly after: Peer;
  readonly what: ReadonlyArray<'name' | 'role' | 'allow'>;
}

export interface PeersDiff {
  /** Keys new in `next`. */
  readonly added: readonly Peer[];
  /** Keys gone from `next`: revoked. A key replaced under the same name is one removed and one added. */
  readonly removed: readonly Peer[];
  /** Same key, another name, role or allow-list. */
  readonly changed: readonly PeerChange[];
  readonly unchanged: number;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && [...a].sort().every((v, i) => v === [...b].sort()[i]);

/** What a reload from `prev` to `next` changes. */
export function diffPeers(prev: PeerTable, next: PeerTable): PeersDiff {
  const added: Peer[] = [];
  const removed: Peer[] = [];
  const changed: PeerChange[] = [];
  let unchanged = 0;
  for (const after of next.list()) {
    const before = prev.get(after.key.hex);
    if (before === undefined) {
      added.push(after);
      continue;
    }
    const what: Array<'name' | 'role' | 'allow'> = [];
    if (before.name !== after.name) what.push('name');
    if (before.role !== after.role) what.push('role');
    if (!sameList(before.allow, after.allow)) what.push('allow');
    if (what.length === 0) unchanged++;
    else changed.push({ before, after, what });
  }
  for (const before of prev.list()) if (next.get(before.key.hex) === undefined) removed.push(before);
  return { added, removed, changed, unchanged };
}

/**
 * A reload: the new table and what it changes, or a ConfigError (the caller
 * keeps `running`; nothing was changed).
 */
export function reloadPeers(file: string, running: PeerTable, label = '--peers'): { table: PeerTable; diff: PeersDiff } {
  const table = loadPeersFile(file, label);
  return { table, diff: diffPeers(running, table) };
}

// Who owns each UDP socket of this network namespace, from the kernel's
// socket tables (Linux: /proc/self/net/udp and udp6). The agent uses it to
// tell the node's datagrams on loopback from another local user's
// (agent/local-senders.ts).
//
// - /proc/self/net, not /proc/net: systemd's ProcSubset=pid hides /proc/net
//   but keeps every /proc/PID, and both show the reader's network namespace.
// - The uid column is the socket's owner as the reader's user namespace maps
//   it: a uid it does not map shows as the overflow uid (65534), so inside a
//   user namespace (systemd's PrivateUsers=yes) unmapped users cannot be told
//   apart; inUserNamespace says whether that is the case.
// - Addresses come out in the canonical form of wire/address.ts (an
//   IPv4-mapped IPv6 address is the IPv4 address).

import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { formatIp } from '../wire/address.js';

export interface UdpSocketEntry {
  readonly address: string;
  readonly port: number;
  readonly uid: number;
}

/** Local port -> the sockets bound to it. */
export type UdpSocketTable = ReadonlyMap<number, readonly UdpSocketEntry[]>;

const LITTLE = endianness() === 'LE';

/** The kernel prints each 32-bit word of the address in host byte order. */
function addressOf(hex: string): string | null {
  if (hex.length !== 8 && hex.length !== 32) return null;
  const b = Buffer.alloc(hex.length / 2);
  for (let i = 0; i < hex.length; i += 8) {
    const w = parseInt(hex.slice(i, i + 8), 16);
    if (!Number.isInteger(w)) return null;
    if (LITTLE) b.writeUInt32LE(w, i / 2);
    else b.writeUInt32BE(w, i / 2);
  }
  return formatIp(b).host;
}

/** Adds the sockets listed in one /proc/net/udp{,6} text to `into`; lines that do not parse are skipped. */
export function parseUdpTable(text: string, into: Map<number, UdpSocketEntry[]> = new Map()): Map<number, UdpSocketEntry[]> {
  for (const line of text.split('\n')) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !f[0]!.endsWith(':')) continue;
    const local = f[1]!;
    const colon = local.indexOf(':');
    if (colon < 0) continue;
    const address = addressOf(local.slice(0, colon));
    const port = parseInt(local.slice(colon + 1), 16);
    const uid = Number(f[7]);
    if (address === null || !Number.isInteger(port) || !Number.isSafeInteger(uid)) continue;
    const list = into.get(port);
    const entry = { address, port, uid };
    if (list === undefined) into.set(port, [entry]);
    else list.push(entry);
  }
  return into;
}

/** Reads both tables (synchronously: a few lines per socket of the host). Throws when neither can be read. */
export function readUdpSockets(): UdpSocketTable {
  const table = new Map<number, UdpSocketEntry[]>();
  let read = 0;
  let error: unknown = null;
  for (const file of ['/proc/self/net/udp', '/proc/self/net/udp6']) {
    try {
      parseUdpTable(readFileSync(file, 'latin1'), table);
      read++;
    } catch (err) {
      // udp6 is absent when IPv6 is disabled.
      error = err;
    }
  }
  if (read === 0) throw error;
  return table;
}

/**
 * The sockets that could have sent a datagram from `address`:`port`: bound to
 * that port, and to that address or a wildcard one.
 */
export function socketsAt(table: UdpSocketTable, address: string, port: number): UdpSocketEntry[] {
  const v6 = address.includes(':');
  return (table.get(port) ?? []).filter((e) => e.address === address || e.address === '::' || (!v6 && e.address === '0.0.0.0'));
}

/** True when this process runs in a user namespace that maps only some uids (the others show as 65534). */
export function inUserNamespace(): boolean {
  try {
    const map = readFileSync('/proc/self/uid_map', 'latin1').trim().split(/\s+/);
    return !(map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295');
  } catch {
    return false;
  }
}

/** The uid an unmapped user shows as inside a user namespace (kernel.overflowuid's default). */
export const OVERFLOW_UID = 65534;

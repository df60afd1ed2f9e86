// This host's own addresses, canonical: what a listener owns, and where a
// subscription must never point (that would make the repeater send to
// itself: a loop).

import { createSocket } from 'node:dgram';
import { networkInterfaces } from 'node:os';
import { canonicalIp, type Endpoint, formatEndpoint, formatIp, ipBytes, isLimitedBroadcast, isLoopback, isMulticast, isReservedIpv4, isUnspecified } from '../wire/address.js';

/** Canonical addresses of every local interface (read now: interfaces change). */
export function localAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      const ip = canonicalIp(a.address.split('%')[0]!);
      if (ip !== null) out.add(ip.host);
    }
  }
  return out;
}

/** Directed broadcast addresses of the local IPv4 interfaces (a /31 or /32 has none). */
export function broadcastAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family !== 'IPv4') continue;
      const ip = ipBytes(a.address);
      const mask = ipBytes(a.netmask);
      if (ip === null || mask === null || mask[3] === 0xff || mask[3] === 0xfe) continue;
      const b = ip.map((v, i) => v | (~mask[i]! & 0xff));
      out.add(formatIp(b).host);
    }
  }
  return out;
}

/** Why an address can never be a destination: not unicast, or one of ours. */
export type AddressProblem = 'not_unicast' | 'own_listener';

/**
 * The endpoints this process listens on. A wildcard listener (0.0.0.0 or ::)
 * owns its port on every local address of both families, and every loopback
 * address (all of 127/8 reaches this host).
 */
export class OwnAddresses {
  private readonly exact = new Set<string>();
  private readonly wildcardPorts = new Set<number>();
  private readonly local: Set<string>;
  private readonly broadcast: Set<string>;

  constructor(listeners: readonly Endpoint[]) {
    for (const ep of listeners) {
      if (isUnspecified(ep.host)) this.wildcardPorts.add(ep.port);
      else this.exact.add(ep.text);
    }
    this.local = localAddresses();
    this.broadcast = broadcastAddresses();
  }

  /** True when sending to `ep` reaches one of our listeners. */
  owns(ep: Endpoint): boolean {
    if (this.exact.has(ep.text)) return true;
    if (!this.wildcardPorts.has(ep.port)) return false;
    return isLoopback(ep.host) || this.local.has(ep.host) || isUnspecified(ep.host);
  }

  /** Checks a would-be destination (canonical endpoint): null when it is fine. */
  problem(ep: Endpoint): AddressProblem | null {
    if (isMulticast(ep.host) || isUnspecified(ep.host) || isLimitedBroadcast(ep.host) || isReservedIpv4(ep.host) || this.broadcast.has(ep.host)) return 'not_unicast';
    if (this.owns(ep)) return 'own_listener';
    return null;
  }
}

/**
 * The local address this host sends from to reach `to` (a UDP socket is
 * connected, which only consults the routing table, and closed).
 */
export function routeSource(to: Endpoint): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket(to.family === 6 ? 'udp6' : 'udp4');
    s.once('error', (err) => {
      s.close();
      reject(err);
    });
    s.connect(to.port, to.host, () => {
      const a = s.address();
      s.close();
      resolve(canonicalIp(a.address)?.host ?? a.address);
    });
  });
}

/**
 * Where a peer at `to` should send to reach `socket`: `configured` when
 * given, else the socket's bound address, or for a wildcard socket this
 * host's address on the route to `to`, with the socket's port.
 */
export async function advertiseAddress(socket: { address(): { address: string; port: number } }, to: Endpoint, configured: string | null): Promise<string> {
  if (configured !== null) return configured;
  const a = socket.address();
  const bound = canonicalIp(a.address)?.host ?? a.address;
  const host = isUnspecified(bound) ? await routeSource(to) : bound;
  return formatEndpoint(host, a.port);
}

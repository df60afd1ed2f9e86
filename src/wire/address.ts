// Textual UDP endpoints: `1.2.3.4:5`, `[::1]:5`. Only IP literals: a name
// would need a DNS lookup, which has no place on a datagram path.

import { isIPv4, isIPv6 } from 'node:net';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** Canonical text, the registry's identity for a subscriber. */
  readonly text: string;
}

/** Canonical form of an IP literal (IPv6 compressed, lower case), or null. */
export function canonicalIp(host: string): { host: string; family: 4 | 6 } | null {
  if (isIPv4(host)) return { host, family: 4 };
  if (isIPv6(host) && !host.includes('%')) {
    // URL parsing applies the RFC 5952 canonical form.
    return { host: new URL(`udp://[${host}]/`).hostname.slice(1, -1), family: 6 };
  }
  return null;
}

export function formatEndpoint(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Parses `host:port` or `[v6]:port`. Returns an error message (a string)
 * instead of throwing, since subscriber addresses come from the network.
 * Port 0 (pick any) makes sense only for addresses we bind.
 */
export function parseEndpoint(text: string, allowPortZero = false): Endpoint | string {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return `"${text}" is not [IPv6]:port`;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return `"${text}" has no port (want HOST:PORT)`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return `"${text}": write IPv6 addresses as [ADDR]:PORT`;
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return `"${text}" has a bad port`;
  const port = Number(portText);
  if (port > 65535 || (port === 0 && !allowPortZero)) return `"${text}": port must be 1-65535`;
  const ip = canonicalIp(host);
  if (ip === null) return `"${text}": "${host}" is not an IP address`;
  return { host: ip.host, port, family: ip.family, text: formatEndpoint(ip.host, port) };
}

export function isMulticast(host: string): boolean {
  if (isIPv4(host)) {
    const first = Number(host.slice(0, host.indexOf('.')));
    return first >= 224 && first <= 239;
  }
  return /^ff[0-9a-f]{2}:/i.test(host);
}

export function isLoopback(host: string): boolean {
  if (isIPv4(host)) return host.startsWith('127.');
  const ip = canonicalIp(host);
  return ip !== null && (ip.host === '::1' || /^::ffff:127\./.test(ip.host) || /^::ffff:7f/.test(ip.host));
}

export function isUnspecified(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

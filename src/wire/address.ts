// IP addresses and UDP endpoints in one canonical form, used everywhere an
// address is compared, stored or printed (docs/PROTOCOL.md, "Addresses").
//
// Invariants:
// - An IPv4-mapped IPv6 address (::ffff:a.b.c.d, in any spelling) IS the IPv4
//   address: a dual-stack socket sends to both alike, so they must compare equal.
// - IPv6 text is RFC 5952: lower case, longest zero run compressed, no
//   leading zeros. Zone ids (fe80::1%eth0) and host names are refused: a name
//   would need a DNS lookup, which has no place on a datagram path.
// - One parser (text -> 16 bytes) and one formatter (bytes -> text) serve the
//   config, the wire, the native socket layer and the logs.

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** Canonical text, the registry's identity for a subscriber. */
  readonly text: string;
}

const V4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;

function v4Bytes(text: string): number[] | null {
  if (!V4.test(text)) return null;
  return text.split('.').map(Number);
}

/** Parses IPv6 text (with an optional dotted IPv4 tail) into 16 bytes; null if it is not one. */
export function parseIpv6(text: string): Uint8Array | null {
  if (text.length < 2 || text.length > 45 || !/^[0-9a-fA-F:.]+$/.test(text)) return null;
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const groups = (s: string): number[] | null => {
    if (s === '') return [];
    const out: number[] = [];
    const parts = s.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes('.')) {
        const b = v4Bytes(p);
        if (b === null) return null;
        out.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (head === null || tail === null) return null;
  // A dotted tail is only valid at the very end.
  if (halves.length === 2 && halves[0]!.includes('.')) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const words = [...head, ...Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    out[i * 2] = w >> 8;
    out[i * 2 + 1] = w & 0xff;
  });
  return out;
}

/** True for ::ffff:0:0/96. */
function isMapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * Formats 4 or 16 address bytes canonically: IPv4 dotted quad (also for an
 * IPv4-mapped IPv6 address), else RFC 5952 IPv6.
 */
export function formatIp(b: Uint8Array): { host: string; family: 4 | 6 } {
  if (b.length === 4) return { host: `${b[0]}.${b[1]}.${b[2]}.${b[3]}`, family: 4 };
  if (isMapped(b)) return { host: `${b[12]}.${b[13]}.${b[14]}.${b[15]}`, family: 4 };
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((b[i]! << 8) | b[i + 1]!);
  // The longest run of two or more zero words is compressed (the first one on a tie).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(':');
  const host = best < 0 ? hex(words) : `${hex(words.slice(0, best))}::${hex(words.slice(best + bestLen))}`;
  return { host, family: 6 };
}

/** Address bytes of an IP literal: 4 for IPv4 (mapped ones included), 16 for IPv6; null if not an IP. */
export function ipBytes(host: string): Uint8Array | null {
  const v4 = v4Bytes(host);
  if (v4 !== null) return Uint8Array.from(v4);
  const v6 = parseIpv6(host);
  if (v6 === null) return null;
  return isMapped(v6) ? v6.subarray(12) : v6;
}

/** Canonical form of an IP literal, or null when it is not one. */
export function canonicalIp(host: string): { host: string; family: 4 | 6 } | null {
  const b = ipBytes(host);
  return b === null ? null : formatIp(b);
}

export function formatEndpoint(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function endpointOf(host: string, port: number, family: 4 | 6): Endpoint {
  return { host, port, family, text: formatEndpoint(host, port) };
}

/**
 * Parses `host:port` or `[v6]:port` into its canonical endpoint. Returns an
 * error message (a string) instead of throwing, since subscriber addresses
 * come from the network. Port 0 (pick any) makes sense only for addresses we bind.
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
  return endpointOf(ip.host, port, ip.family);
}

// The predicates below take canonical hosts (as parseEndpoint and canonicalIp return).

export function isMulticast(host: string): boolean {
  if (!host.includes(':')) {
    const first = Number(host.slice(0, host.indexOf('.')));
    return first >= 224 && first <= 239;
  }
  return /^ff[0-9a-f]{2}:/.test(host);
}

export function isLoopback(host: string): boolean {
  return host.startsWith('127.') || host === '::1';
}

export function isUnspecified(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/** The limited broadcast address; directed broadcasts depend on the interfaces (see OwnAddresses). */
export function isLimitedBroadcast(host: string): boolean {
  return host === '255.255.255.255';
}

/** IPv4 "this network" (0/8) and the reserved 240/4: never a host to send to. */
export function isReservedIpv4(host: string): boolean {
  if (host.includes(':')) return false;
  const first = Number(host.slice(0, host.indexOf('.')));
  return first === 0 || first >= 240;
}

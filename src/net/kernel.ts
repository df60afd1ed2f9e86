// Kernel statistics of our own UDP sockets, read from /proc on scrape: the
// drops that happen before the daemon sees a datagram (a full receive
// buffer) are invisible to its own counters.

import { fstatSync, readFileSync } from 'node:fs';

export interface UdpSocketStats {
  /** Bytes waiting in the receive queue. */
  readonly rxQueue: number;
  /** Datagrams the kernel dropped for this socket (full buffer, bad checksum...). */
  readonly drops: number;
}

export function socketInode(fd: number): number | null {
  try {
    return fstatSync(fd).ino;
  } catch {
    return null;
  }
}

/** Stats of every UDP socket of this process's network namespace, by inode. */
export function udpSocketStats(): Map<number, UdpSocketStats> {
  const out = new Map<number, UdpSocketStats>();
  for (const file of ['/proc/self/net/udp', '/proc/self/net/udp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'latin1');
    } catch {
      continue;
    }
    const lines = text.split('\n');
    for (let i = 1; i < lines.length; i++) {
      const f = lines[i]!.trim().split(/\s+/);
      if (f.length < 13) continue;
      const queues = f[4]!.split(':');
      out.set(Number(f[9]), { rxQueue: parseInt(queues[1] ?? '0', 16), drops: Number(f[12]) });
    }
  }
  return out;
}

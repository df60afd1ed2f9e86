// The allow-list: which addresses may send to us, subscribe, and be named as
// a subscriber. Verdicts are cached per address string because BlockList
// costs about a microsecond per check and sources repeat.

import { BlockList, isIPv4 } from 'node:net';

const CACHE_LIMIT = 65536;

export class AccessList {
  private readonly list: BlockList | null;
  private readonly cache = new Map<string, boolean>();

  /** @param cidrs validated `ip/prefix` strings; null allows everyone. */
  constructor(readonly cidrs: readonly string[] | null) {
    if (cidrs === null) {
      this.list = null;
      return;
    }
    this.list = new BlockList();
    for (const c of cidrs) {
      const [ip, bits] = c.split('/');
      this.list.addSubnet(ip!, Number(bits), isIPv4(ip!) ? 'ipv4' : 'ipv6');
    }
  }

  get any(): boolean {
    return this.list === null;
  }

  /** `ip` is an address as Node reports it (IPv4-mapped IPv6 included). */
  allows(ip: string): boolean {
    if (this.list === null) return true;
    let v = this.cache.get(ip);
    if (v === undefined) {
      v = this.list.check(ip, isIPv4(ip) ? 'ipv4' : 'ipv6');
      // A flood of distinct spoofed sources must not grow memory.
      if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
      this.cache.set(ip, v);
    }
    return v;
  }
}

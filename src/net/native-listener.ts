// A listener on the native path: the kernel hands over up to 32 datagrams
// per recvmmsg() and JS is entered once per batch. Each datagram is passed to
// the handler as a view into the receive arena, valid only during the call.

import type { ListenerConfig } from '../config/serve-config.js';
import { formatEndpoint } from '../wire/address.js';
import type { DatagramHandler, DatagramListener, ListenerOptions } from './dgram-listener.js';
import { errnoName, ipBytes, type NativeListenerHandle, type UdpFast } from './native.js';

/** Remote address as the handler sees it; reused, so handlers must not keep it. */
interface Source {
  address: string;
  port: number;
  family: 'IPv4' | 'IPv6';
  size: number;
}

const V4_CACHE_LIMIT = 65536;

export class NativeListener implements DatagramListener {
  private readonly h: NativeListenerHandle;
  private readonly arena: Buffer;
  private readonly meta: Int32Array;
  private readonly metaU8: Uint8Array;
  private readonly v4 = new Map<number, string>();
  private readonly source: Source = { address: '', port: 0, family: 'IPv4', size: 0 };
  private errorHandler: ((err: Error) => void) | null = null;
  private closed = false;

  constructor(
    readonly config: ListenerConfig,
    private readonly api: UdpFast,
    opts: ListenerOptions,
    private readonly onMessage: DatagramHandler,
  ) {
    const ep = config.endpoint;
    try {
      this.h = api.listen(ep.family, ipBytes(ep.host, ep.family), ep.port, opts.recvBuffer, (n) => this.onBatch(n));
    } catch (err) {
      throw new Error(`cannot listen on ${ep.text}: ${(err as Error).message}`);
    }
    this.arena = Buffer.from(this.h.arena);
    this.meta = new Int32Array(this.h.meta);
    this.metaU8 = new Uint8Array(this.h.meta);
  }

  get port(): number {
    return this.h.port;
  }

  get fd(): number | null {
    return this.closed ? null : this.h.fd;
  }

  get bound(): string {
    return formatEndpoint(this.config.endpoint.host, this.h.port);
  }

  onError(handler: (err: Error) => void): void {
    this.errorHandler = handler;
  }

  private addressOf(slot: number, family: number): string {
    const base = slot * this.h.metaWords + 3;
    if (family === 4) {
      const word = this.meta[base]! >>> 0;
      let s = this.v4.get(word);
      if (s === undefined) {
        const b = this.metaU8.subarray(base * 4, base * 4 + 4);
        s = `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
        if (this.v4.size >= V4_CACHE_LIMIT) this.v4.clear();
        this.v4.set(word, s);
      }
      return s;
    }
    const b = this.metaU8.subarray(base * 4, base * 4 + 16);
    const words: string[] = [];
    for (let i = 0; i < 16; i += 2) words.push(((b[i]! << 8) | b[i + 1]!).toString(16));
    // Canonical enough for allow-list checks and logs; BlockList parses it.
    return words.join(':');
  }

  private onBatch(n: number): void {
    const { slotSize, metaWords } = this.h;
    const src = this.source;
    for (let i = 0; i < n; i++) {
      const m = i * metaWords;
      const len = this.meta[m]!;
      if (len < 0) continue; // truncated: cannot happen with 64 KiB slots
      const family = this.meta[m + 1]!;
      src.address = this.addressOf(i, family);
      src.port = this.meta[m + 2]!;
      src.family = family === 4 ? 'IPv4' : 'IPv6';
      src.size = len;
      this.onMessage(this.arena.subarray(i * slotSize, i * slotSize + len), src as never);
    }
    if (this.errorHandler !== null) {
      const [count, last] = this.api.listenerErrors(this.h.handle);
      if (count > this.reportedErrors) {
        this.reportedErrors = count;
        this.errorHandler(new Error(`receive error ${errnoName(last)}`));
      }
    }
  }

  private reportedErrors = 0;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.api.unlisten(this.h.handle);
  }
}

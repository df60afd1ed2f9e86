// A listener on the native backend: the kernel hands over up to 32 datagrams
// per recvmmsg() and JS is entered once per batch. Each datagram is passed to
// the handler as a view into the receive arena, valid until the batch's end
// handler has returned.

import { formatEndpoint, formatIp, ipBytes, type Endpoint } from '../wire/address.js';
import { checkBufferSize } from './dgram-listener.js';
import type { BatchEndHandler, DatagramHandler, DatagramListener, ListenOptions, Source } from './socket-api.js';
import { errnoName, type NativeListenerHandle, type UdpFast } from './native.js';

const V4_CACHE_LIMIT = 4096;
/** After a poll error the socket is polled again after this long (never a busy loop). */
const RESUME_MS = 1000;

export class NativeListener implements DatagramListener {
  readonly stable = false;
  private readonly h: NativeListenerHandle;
  private readonly arena: Buffer;
  private readonly meta: Int32Array;
  private readonly metaU8: Uint8Array;
  private readonly v4 = new Map<number, string>();
  private readonly source: Source = { address: '', port: 0, family: 4 };
  private errorHandler: ((err: Error) => void) | null = null;
  private closing: Promise<void> | null = null;
  private resumeTimer: NodeJS.Timeout | null = null;
  private reportedErrors = 0;

  constructor(
    readonly endpoint: Endpoint,
    private readonly api: UdpFast,
    private readonly opts: ListenOptions,
    private readonly onMessage: DatagramHandler,
    private readonly onBatchEnd: BatchEndHandler | null = null,
  ) {
    checkBufferSize('recv-buffer', opts.recvBuffer);
    try {
      this.h = api.listen(endpoint.family, Buffer.from(ipBytes(endpoint.host)!), endpoint.port, opts.recvBuffer, (n) => this.onBatch(n), (errno) => this.onPollError(errno));
    } catch (err) {
      throw new Error(`cannot listen on ${endpoint.text}: ${(err as Error).message}`);
    }
    this.arena = Buffer.from(this.h.arena);
    this.meta = new Int32Array(this.h.meta);
    this.metaU8 = new Uint8Array(this.h.meta);
  }

  get port(): number {
    return this.h.port;
  }

  get fd(): number | null {
    return this.closing !== null ? null : this.h.fd;
  }

  get bound(): string {
    return formatEndpoint(this.endpoint.host, this.h.port);
  }

  get recvBuffer(): number {
    return this.h.rcvbuf;
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
        s = formatIp(this.metaU8.subarray(base * 4, base * 4 + 4)).host;
        if (this.v4.size >= V4_CACHE_LIMIT) this.v4.clear();
        this.v4.set(word, s);
      }
      return s;
    }
    return formatIp(this.metaU8.subarray(base * 4, base * 4 + 16)).host;
  }

  private onBatch(n: number): void {
    const { slotSize, metaWords } = this.h;
    const src = this.source;
    for (let i = 0; i < n; i++) {
      const m = i * metaWords;
      const len = this.meta[m]!;
      src.address = this.addressOf(i, this.meta[m + 1]!);
      src.family = src.address.includes(':') ? 6 : 4;
      src.port = this.meta[m + 2]!;
      if (len < 0) {
        this.opts.onTruncated?.(src);
        continue;
      }
      this.onMessage(this.arena.subarray(i * slotSize, i * slotSize + len), src);
    }
    this.onBatchEnd?.();
    if (this.errorHandler !== null) {
      const [count, last] = this.api.listenerStats(this.h.handle);
      if (count > this.reportedErrors) {
        this.reportedErrors = count;
        this.errorHandler(new Error(`receive error ${errnoName(last)}`));
      }
    }
  }

  /** The addon stopped polling after an error: report it, then poll again a little later. */
  private onPollError(errno: number): void {
    this.errorHandler?.(new Error(`listener poll error ${errnoName(errno)}; polling again in ${RESUME_MS} ms`));
    if (this.closing !== null || this.resumeTimer !== null) return;
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = null;
      if (this.closing === null) this.api.resume(this.h.handle);
    }, RESUME_MS);
    this.resumeTimer.unref();
  }

  close(): Promise<void> {
    if (this.closing === null) {
      if (this.resumeTimer !== null) clearTimeout(this.resumeTimer);
      this.closing = new Promise((resolve) => this.api.unlisten(this.h.handle, resolve));
    }
    return this.closing;
  }
}

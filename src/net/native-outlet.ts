// A subscriber's connected socket owned by the native path: sends are one
// system call each, made from C, with no queue in memory (a full socket
// buffer drops, counted as queue_full). ICMP errors come back as the errno
// of a later send.

import type { Endpoint } from '../wire/address.js';
import { errnoName, FULL, ipBytes, type UdpFast } from './native.js';
import type { OutletErrorHandler, OutputSocket } from './dgram-outlet.js';

export const SENT = 0;
export const FULL_BUFFER = 1;
export const FAILED = 2;
export type Outcome = typeof SENT | typeof FULL_BUFFER | typeof FAILED;

export class NativeOutlet implements OutputSocket {
  sent = 0;
  bytes = 0;
  dropped = 0;
  errors = 0;
  lastError: string | null = null;
  lastErrorAt = 0;
  fd: number;
  private static readonly one = new Int32Array(1);
  private static readonly err = new Int32Array(1);

  constructor(
    readonly endpoint: Endpoint,
    private readonly api: UdpFast,
    sendBuffer: number,
    private readonly onError?: OutletErrorHandler,
  ) {
    this.fd = api.connect(endpoint.family, ipBytes(endpoint.host, endpoint.family), endpoint.port, sendBuffer);
  }

  /**
   * Records the outcome of one send attempt made by a batch call:
   * SENT, FULL (socket buffer full: dropped) or FAILED (an error, counted).
   */
  settle(errno: number, length: number): Outcome {
    if (errno === 0) {
      this.sent++;
      this.bytes += length;
      return SENT;
    }
    if (FULL.has(errno)) {
      this.dropped++;
      return FULL_BUFFER;
    }
    const code = errnoName(errno);
    this.errors++;
    this.lastError = code;
    this.lastErrorAt = Date.now();
    const err = Object.assign(new Error(`send to ${this.endpoint.text}: ${code}`), { code, errno }) as NodeJS.ErrnoException;
    this.onError?.(this, err);
    return FAILED;
  }

  send(buf: Buffer): boolean {
    if (this.fd < 0) {
      this.dropped++;
      return false;
    }
    NativeOutlet.one[0] = this.fd;
    this.api.sendEach(NativeOutlet.one, 1, buf, NativeOutlet.err);
    return this.settle(NativeOutlet.err[0]!, buf.length) === SENT;
  }

  close(): void {
    if (this.fd < 0) return;
    this.api.closeFd(this.fd);
    this.fd = -1;
  }
}

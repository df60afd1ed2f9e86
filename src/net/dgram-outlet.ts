// The node:dgram fan-out: one connected UDP socket per outlet with a bounded
// queue (node:dgram would otherwise queue without limit when the kernel buffer
// is full). A connected socket learns of ICMP errors (ECONNREFUSED...) on a
// later send, which loses that copy: the native backend retries it instead.
// Multicast outputs always use this backend (TTL and interface per outlet).
// Within a batch (begin/flush) group sends are queued and handed to the
// sockets at the flush, in order: the same semantics as the native batch
// (node:dgram has no call that sends many datagrams at once).

import { createSocket, type Socket } from 'node:dgram';
import type { Endpoint } from '../wire/address.js';
import type { Fanout, FanoutOptions, Outlet, OutletErrorHandler, OutletGroup, OutletOptions, SendSink, SendTally } from './socket-api.js';

/** Errors that say the destination does not take datagrams (ICMP answers). */
export const UNREACHABLE_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export class DgramOutlet implements Outlet {
  sent = 0;
  bytes = 0;
  dropped = 0;
  errors = 0;
  lastError: string | null = null;
  lastErrorAt = 0;

  private readonly socket: Socket;
  private ready = false;
  private closed = false;
  /** True once the socket could not be bound or connected: it will never send. */
  private broken = false;
  /** Sends that arrived while the socket was connecting; bounded by sendQueue. */
  private pending: Buffer[] | null = [];

  constructor(
    readonly endpoint: Endpoint,
    private readonly sendQueue: number,
    sendBuffer: number,
    private readonly onError: OutletErrorHandler,
    private readonly opts: OutletOptions = {},
  ) {
    // Throws synchronously when no socket can be had (EMFILE): the caller refuses the outlet.
    const socket = createSocket({ type: endpoint.family === 6 ? 'udp6' : 'udp4', ...(sendBuffer > 0 ? { sendBufferSize: sendBuffer } : {}) });
    this.socket = socket;
    socket.on('error', (err: NodeJS.ErrnoException) => this.onSocketError(err));
    // A connected socket only receives from its peer; we never read what it sends.
    socket.connect(endpoint.port, endpoint.host, (err?: Error) => (err ? this.fail(err as NodeJS.ErrnoException) : this.onConnect()));
  }

  private onSocketError(err: NodeJS.ErrnoException, lost = false): void {
    if (this.closed) return;
    // Before the connect completed, any error (EADDRINUSE from the implicit bind...) means it will never work.
    if (!this.ready) {
      this.fail(err);
      return;
    }
    const code = err.code ?? err.message;
    this.errors++;
    this.lastError = code;
    this.lastErrorAt = Date.now();
    this.onError(this, code, UNREACHABLE_CODES.has(code) ? 'unreachable' : 'send', lost);
  }

  /** A socket that cannot connect must not swallow datagrams silently: report it once as broken. */
  private fail(err: NodeJS.ErrnoException): void {
    if (this.broken || this.closed) return;
    this.broken = true;
    this.dropped += this.pending?.length ?? 0;
    this.pending = null;
    const code = err.code ?? err.message;
    this.errors++;
    this.lastError = code;
    this.lastErrorAt = Date.now();
    this.onError(this, code, 'broken', false);
  }

  private onConnect(): void {
    if (this.closed) return;
    try {
      if (this.opts.ttl !== undefined) {
        this.socket.setMulticastTTL(this.opts.ttl);
        if (this.opts.multicastInterface) this.socket.setMulticastInterface(this.opts.multicastInterface);
      }
    } catch (err) {
      // e.g. the interface address went away since the config was checked.
      this.fail(err as NodeJS.ErrnoException);
      return;
    }
    this.ready = true;
    const queued = this.pending ?? [];
    this.pending = null;
    for (const buf of queued) this.send(buf);
  }

  send(buf: Buffer): boolean {
    if (this.broken || this.closed) {
      this.dropped++;
      return false;
    }
    if (!this.ready) {
      const p = this.pending!;
      if (p.length >= this.sendQueue) {
        this.dropped++;
        return false;
      }
      p.push(buf);
      return true;
    }
    if (this.socket.getSendQueueCount() >= this.sendQueue) {
      this.dropped++;
      return false;
    }
    this.socket.send(buf, this.afterSend);
    this.sent++;
    this.bytes += buf.length;
    return true;
  }

  /** Without a callback node:dgram drops send errors silently; with one it reports them. */
  private readonly afterSend = (err: Error | null): void => {
    if (err === null) return;
    // Counted as sent when queued; the kernel refused it after all.
    this.sent--;
    this.dropped++;
    this.onSocketError(err as NodeJS.ErrnoException, true);
  };

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending = null;
    try {
      this.socket.close();
    } catch {
      // already closed by an error path: nothing left to release
    }
  }
}

/** One queued group send of a batch. */
interface Queued {
  readonly outlets: readonly Outlet[];
  readonly buf: Buffer;
  readonly sink: SendSink | null;
}

class DgramGroup implements OutletGroup {
  constructor(
    private readonly outlets: readonly Outlet[],
    private readonly owner: DgramFanout,
  ) {}

  get size(): number {
    return this.outlets.length;
  }

  send(buf: Buffer, stable: boolean, tally: SendTally, sink: SendSink | null = null): void {
    const outs = this.outlets;
    if (outs.length === 0) return;
    // Queued sends keep the buffer: a volatile one (a native receive arena view) is copied once.
    const b = stable ? buf : Buffer.from(buf);
    const batch = this.owner.batch;
    if (batch !== null) {
      batch.push({ outlets: outs, buf: b, sink });
      tally.sent += outs.length;
      return;
    }
    this.owner.sendCalls += outs.length;
    for (let i = 0; i < outs.length; i++) {
      if (outs[i]!.send(b)) tally.sent++;
      else tally.full++;
    }
  }
}

export class DgramFanout implements Fanout {
  readonly backend = 'dgram' as const;
  /** The batch in progress (begin/flush); null outside one. */
  batch: Queued[] | null = null;
  sendCalls = 0;

  constructor(private readonly opts: FanoutOptions) {}

  begin(): void {
    this.batch ??= [];
  }

  flush(): void {
    const queued = this.batch;
    this.batch = null;
    if (queued === null) return;
    for (const q of queued) {
      this.sendCalls += q.outlets.length;
      for (const o of q.outlets) if (!o.send(q.buf)) q.sink?.lateLoss(true, q.buf.length);
    }
  }

  open(ep: Endpoint, onError: OutletErrorHandler, opts?: OutletOptions): DgramOutlet {
    return new DgramOutlet(ep, this.opts.sendQueue, this.opts.sendBuffer, onError, opts);
  }

  group(outlets: readonly Outlet[]): OutletGroup {
    return new DgramGroup(outlets, this);
  }

  async close(): Promise<void> {
    // Outlets are closed by their owners.
    this.flush();
  }
}

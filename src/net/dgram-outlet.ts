// One subscriber's way out: a connected UDP socket (about 20% cheaper per
// send than addressing every datagram) with a bounded queue. ICMP errors
// (ECONNREFUSED and friends) arrive as socket errors, are counted here, and
// never reach the other outlets.

import { createSocket, type Socket } from 'node:dgram';
import type { Endpoint } from '../wire/address.js';

export interface OutletOptions {
  /** Datagrams Node may hold for this socket when the kernel buffer is full. */
  readonly sendQueue: number;
  /** SO_SNDBUF; 0 keeps the kernel default. */
  readonly sendBuffer: number;
  /** Multicast outputs only. */
  readonly ttl?: number;
  readonly multicastInterface?: string | null;
}

/** What the channel needs of a subscriber's socket, native or node:dgram. */
export interface OutputSocket {
  readonly endpoint: Endpoint;
  /** The native socket, or -1 for a node:dgram one. */
  readonly fd: number;
  sent: number;
  bytes: number;
  dropped: number;
  errors: number;
  lastError: string | null;
  lastErrorAt: number;
  /** Sends one copy; false when it was dropped. Never throws. */
  send(buf: Buffer): boolean;
  close(): void;
}

export type OutletErrorHandler = (outlet: OutputSocket, err: NodeJS.ErrnoException) => void;
/** Datagrams the peer sends back on a connected socket (only the agent listens to them). */
export type OutletMessageHandler = (msg: Buffer) => void;

export class Outlet implements OutputSocket {
  readonly fd = -1;
  sent = 0;
  bytes = 0;
  /** Copies dropped because the queue was full (or the socket not yet connected and full). */
  dropped = 0;
  errors = 0;
  lastError: string | null = null;
  lastErrorAt = 0;

  private readonly socket: Socket;
  private ready = false;
  private closed = false;
  /** Sends that arrived while the socket was connecting; bounded by sendQueue. */
  private pending: Buffer[] | null = [];

  constructor(
    readonly endpoint: Endpoint,
    private readonly opts: OutletOptions,
    onError?: OutletErrorHandler,
    onMessage?: OutletMessageHandler,
    /** Local address to bind before connecting (default: any). */
    bindHost?: string,
  ) {
    const socket = createSocket({
      type: endpoint.family === 6 ? 'udp6' : 'udp4',
      ...(opts.sendBuffer > 0 ? { sendBufferSize: opts.sendBuffer } : {}),
    });
    this.socket = socket;
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // Before the connect completed, any error (e.g. EADDRINUSE from the
      // implicit bind) means the socket will never work.
      if (!this.ready && !this.broken && !this.closed) {
        this.fail(err);
        return;
      }
      this.errors++;
      this.lastError = err.code ?? err.message;
      this.lastErrorAt = Date.now();
      onError?.(this, err);
    });
    // A connected socket only receives from its peer: the kernel filters
    // everyone else out before we see a byte.
    if (onMessage !== undefined) socket.on('message', onMessage);
    const connect = () => socket.connect(endpoint.port, endpoint.host, (err?: Error) => (err ? this.fail(err as NodeJS.ErrnoException) : this.onConnect()));
    if (bindHost !== undefined) socket.bind(0, bindHost, connect);
    else connect();
  }

  /** True once the socket could not be bound or connected: it will never send. */
  broken = false;

  /**
   * A socket that cannot connect (no free port, no route) must not swallow
   * datagrams silently: it drops everything from now on and reports the
   * error once with syscall 'connect', so its owner can remove it.
   */
  private fail(err: NodeJS.ErrnoException): void {
    if (this.broken || this.closed) return;
    this.broken = true;
    this.dropped += this.pending?.length ?? 0;
    this.pending = null;
    err.syscall = 'connect';
    this.socket.emit('error', err);
  }

  /** The local address this socket sends from (once connected). */
  get local(): string | null {
    if (!this.ready) return null;
    const a = this.socket.address();
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  private onConnect(): void {
    if (this.closed) return;
    if (this.opts.ttl !== undefined) {
      this.socket.setMulticastTTL(this.opts.ttl);
      if (this.opts.multicastInterface) this.socket.setMulticastInterface(this.opts.multicastInterface);
    }
    this.ready = true;
    const queued = this.pending ?? [];
    this.pending = null;
    for (const buf of queued) this.send(buf);
  }

  /** Sends one copy; false when it was dropped (queue full). Never throws. */
  send(buf: Buffer): boolean {
    if (this.broken) {
      this.dropped++;
      return false;
    }
    if (!this.ready) {
      const p = this.pending;
      if (p === null || p.length >= this.opts.sendQueue) {
        this.dropped++;
        return false;
      }
      p.push(buf);
      return true;
    }
    if (this.socket.getSendQueueCount() >= this.opts.sendQueue) {
      this.dropped++;
      return false;
    }
    this.socket.send(buf, this.afterSend);
    this.sent++;
    this.bytes += buf.length;
    return true;
  }

  /**
   * Without a callback node:dgram drops send errors silently; with one it
   * reports them (one callback per outlet, allocated once).
   */
  private readonly afterSend = (err: Error | null): void => {
    if (err !== null) this.socket.emit('error', err);
  };

  /** Sends one datagram and resolves once the kernel took it (for goodbyes). */
  sendAndWait(buf: Buffer, ms = 1000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error('outlet closed'));
        return;
      }
      const t = setTimeout(() => reject(new Error(`send to ${this.endpoint.text} timed out`)), ms);
      const go = () =>
        this.socket.send(buf, (err) => {
          clearTimeout(t);
          if (err) reject(err);
          else resolve();
        });
      if (this.ready) go();
      else this.socket.once('connect', go);
    });
  }

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

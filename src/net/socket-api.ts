// What every socket backend implements, in the spirit of wireguard-go's
// conn.Bind: listeners hand datagrams in, a Fanout sends one datagram to many
// outlets, a port talks to a few peers both ways. Two backends implement it
// (native: recvmmsg/sendmmsg through the udpfast addon; dgram: node:dgram),
// and nothing above this folder ever asks which one it has. Both report
// sources in canonical form (wire/address.ts) and count, drop and refuse
// alike. Code above net/ reaches all of it through io.ts only.

import type { Endpoint } from '../wire/address.js';

export type Backend = 'native' | 'dgram';

/** Where a datagram came from, canonical. Reused between calls: copy what you keep. */
export interface Source {
  address: string;
  port: number;
  family: 4 | 6;
}

/** Called once per datagram; `msg` is valid only during the call unless the listener is `stable`. */
export type DatagramHandler = (msg: Buffer, from: Source) => void;

/**
 * Called once after the last datagram of a receive batch, while every `msg`
 * of the batch is still valid: native, after each recvmmsg (up to 32
 * datagrams, one entry into JS); node:dgram, after each datagram (a
 * microtask: it hands datagrams over one callback each). What a batch's
 * datagrams produced is sent here (Fanout.flush), so a batch costs one
 * sendmmsg per sending socket.
 */
export type BatchEndHandler = () => void;

export interface ListenOptions {
  /** SO_RCVBUF to ask for (0 keeps the kernel default); at most MAX_SOCKET_BUFFER. */
  readonly recvBuffer: number;
  /** Joins `endpoint` as a multicast group on this local address (multicast listeners). */
  readonly multicastInterface: string | null;
  /** Called for a datagram the socket layer could not read whole (counted as too_large). */
  readonly onTruncated?: (from: Source) => void;
}

export interface DatagramListener {
  /** The address as configured. */
  readonly endpoint: Endpoint;
  /** The address actually bound (differs from the config when port 0 was asked). */
  readonly bound: string;
  readonly port: number;
  /** The socket's file descriptor, when known (for kernel statistics). */
  readonly fd: number | null;
  /** True when datagrams handed to the handler may be kept after it returns. */
  readonly stable: boolean;
  /** SO_RCVBUF as the kernel set it (Linux reports twice what was asked, capped by rmem_max). */
  readonly recvBuffer: number;
  /** Socket-level errors (never fatal); the listener keeps reading or restarts itself. */
  onError(handler: (err: Error) => void): void;
  /** Resolves once the socket is closed and its port can be bound again. */
  close(): Promise<void>;
}

/** Largest socket buffer size a socket option takes (a C int). */
export const MAX_SOCKET_BUFFER = 0x7fffffff;

/** What an outlet has done, for /subscribers. */
export interface OutletCounters {
  sent: number;
  bytes: number;
  /** Copies dropped: buffer or queue full, or the socket is broken. */
  dropped: number;
  errors: number;
  lastError: string | null;
  lastErrorAt: number;
}

/**
 * Why an outlet reports an error:
 * - unreachable: the destination answered with ICMP (port or host unreachable);
 * - send: a copy could not be handed to the kernel (it is lost);
 * - broken: the outlet can never send (no socket, no route): remove it.
 */
export type OutletFault = 'unreachable' | 'send' | 'broken';
/**
 * `lostLater`: a copy already counted as sent was lost after all (node:dgram
 * learns of send errors asynchronously); losses a group send saw at once are
 * in its SendTally instead, never both.
 */
export type OutletErrorHandler = (outlet: Outlet, code: string, fault: OutletFault, lostLater: boolean) => void;

/** One destination of a fan-out. */
export interface Outlet extends OutletCounters {
  readonly endpoint: Endpoint;
  /** Sends one copy on its own; false when it was dropped. Never throws. */
  send(buf: Buffer): boolean;
  close(): void;
}

export interface OutletOptions {
  /** Multicast outputs: TTL and the local interface to send from. */
  readonly ttl?: number;
  readonly multicastInterface?: string | null;
}

/** Counts of one group send, added to by OutletGroup.send. */
export interface SendTally {
  sent: number;
  /** Dropped because a buffer or queue was full. */
  full: number;
  /** Lost to a send error. */
  failed: number;
}

/**
 * Told of a copy that was counted as sent when it was queued in a batch
 * (Fanout.begin) and was lost when the batch went out: a full buffer, or a
 * send error (which the outlet's error handler hears of too).
 */
export interface SendSink {
  lateLoss(full: boolean, bytes: number): void;
}

/** A fixed list of outlets that receive the same datagrams; rebuilt when membership changes. */
export interface OutletGroup {
  readonly size: number;
  /**
   * Sends `buf` to every outlet of the group. `stable`: buf may be kept after
   * the call. Within a batch (Fanout.begin) the copies are queued and counted
   * in `tally` as sent; one lost at the flush is told to `sink`.
   */
  send(buf: Buffer, stable: boolean, tally: SendTally, sink?: SendSink | null): void;
}

/** The fan-out backend. */
export interface Fanout {
  readonly backend: Backend;
  /** Opens an outlet; throws when no socket can be had (too many open files, no free port). */
  open(ep: Endpoint, onError: OutletErrorHandler, opts?: OutletOptions): Outlet;
  group(outlets: readonly Outlet[]): OutletGroup;
  /**
   * The batch flag: from now until flush(), group sends are queued (the bytes
   * copied, so `buf` need not be stable) and go out together at the flush,
   * with one sendmmsg per sending socket for everything queued (native), in
   * the order queued per destination. Batches do not nest.
   */
  begin(): void;
  /** Sends what the batch queued and ends it; nothing queued: nothing done. */
  flush(): void;
  /** System calls that sent datagrams, for tests and the bench (native; node:dgram counts sends). */
  readonly sendCalls: number;
  close(): Promise<void>;
}

export interface FanoutOptions {
  /** SO_SNDBUF (0: kernel default). */
  readonly sendBuffer: number;
  /** Copies node:dgram may queue per outlet while its socket buffer is full. */
  readonly sendQueue: number;
}

export function newTally(): SendTally {
  return { sent: 0, full: 0, failed: 0 };
}

/**
 * A socket bound to one local address that talks to a few peers both ways
 * (an agent and its repeaters, a session cache and its repeater): it sends to
 * any destination and hands every datagram it receives to its handler.
 */
export interface DatagramPort {
  /** The address actually bound, canonical. */
  readonly bound: string;
  readonly port: number;
  /** The bound address as the socket reports it (for net/local.ts advertiseAddress). */
  address(): { address: string; port: number };
  /** Queues one datagram to `to`; false when it was dropped (the send queue is full). Never throws. */
  send(buf: Buffer, to: Endpoint): boolean;
  /** Sends one datagram and resolves once the kernel took it; rejects on an error or after `timeoutMs`. */
  sendAndWait(buf: Buffer, to: Endpoint, timeoutMs?: number): Promise<void>;
  /** Socket-level errors (never fatal). */
  onError(handler: (err: Error) => void): void;
  close(): Promise<void>;
}

export interface PortOptions {
  /** SO_RCVBUF (0: kernel default). */
  readonly recvBuffer: number;
  /** SO_SNDBUF (0: kernel default). */
  readonly sendBuffer: number;
  /** Datagrams that may wait in the socket's queue; more are dropped. */
  readonly sendQueue: number;
}

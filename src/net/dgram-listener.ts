// One bound UDP socket per configured address. Multicast addresses are
// joined; IPv6 sockets are v6-only so `[::]:P` and `0.0.0.0:P` can coexist.

import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import type { ListenerConfig } from '../config/serve-config.js';
import type { Endpoint } from '../wire/address.js';
import { native } from './native.js';
import { NativeListener } from './native-listener.js';

export interface ListenerOptions {
  readonly recvBuffer: number;
  readonly multicastInterface: string | null;
}

export type DatagramHandler = (msg: Buffer, rinfo: RemoteInfo) => void;

/** A bound listener socket, native or node:dgram. */
export interface DatagramListener {
  readonly config: ListenerConfig;
  /** The address actually bound (differs from the config when port 0 was asked). */
  readonly bound: string;
  readonly port: number;
  /** The socket's file descriptor, when known (for kernel statistics). */
  readonly fd: number | null;
  onError(handler: (err: Error) => void): void;
  close(): void;
}

/**
 * Opens a listener: on the native path when it is available (unicast only),
 * else with node:dgram. `stable` tells whether datagrams handed to the
 * handler may be kept after it returns.
 */
export async function openListener(
  config: ListenerConfig,
  opts: ListenerOptions,
  onMessage: DatagramHandler,
): Promise<{ listener: DatagramListener; stable: boolean }> {
  if (native !== null && !config.multicast) {
    return { listener: new NativeListener(config, native, opts, onMessage), stable: false };
  }
  return { listener: await Listener.open(config, opts, onMessage), stable: true };
}

/** Binds a UDP socket for `ep` and resolves once it is listening. */
export function bindUdp(
  ep: Endpoint,
  opts: { recvBuffer: number; multicast: boolean; multicastInterface: string | null },
  onMessage: DatagramHandler,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket({
      type: ep.family === 6 ? 'udp6' : 'udp4',
      reuseAddr: opts.multicast,
      ipv6Only: ep.family === 6,
    });
    const fail = (err: Error) => {
      socket.close();
      reject(new Error(`cannot listen on ${ep.text}: ${err.message}`));
    };
    socket.once('error', fail);
    socket.on('message', onMessage);
    const address = opts.multicast && ep.family === 6 ? '::' : ep.host;
    socket.bind({ port: ep.port, address, exclusive: true }, () => {
      socket.off('error', fail);
      try {
        if (opts.recvBuffer > 0) socket.setRecvBufferSize(opts.recvBuffer);
        if (opts.multicast) socket.addMembership(ep.host, opts.multicastInterface ?? undefined);
      } catch (err) {
        fail(err as Error);
        return;
      }
      resolve(socket);
    });
  });
}

export class Listener implements DatagramListener {
  private constructor(
    readonly config: ListenerConfig,
    private readonly socket: Socket,
  ) {}

  /** The address actually bound (differs from the config when port 0 was asked). */
  get bound(): string {
    const a = this.socket.address();
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  get port(): number {
    return this.socket.address().port;
  }

  get fd(): number | null {
    // node:dgram keeps its handle behind a symbol; the fd is for statistics only.
    const state = Object.getOwnPropertySymbols(this.socket).find((s) => s.description === 'state symbol');
    const handle = state === undefined ? undefined : (this.socket as unknown as Record<symbol, { handle?: { fd?: number } }>)[state]?.handle;
    return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : null;
  }

  static async open(config: ListenerConfig, opts: ListenerOptions, onMessage: DatagramHandler): Promise<Listener> {
    const socket = await bindUdp(
      config.endpoint,
      { recvBuffer: opts.recvBuffer, multicast: config.multicast, multicastInterface: opts.multicastInterface },
      onMessage,
    );
    // A socket error after bind (rare for UDP) must not crash the process;
    // the repeater's handler counts and logs it.
    return new Listener(config, socket);
  }

  onError(handler: (err: Error) => void): void {
    this.socket.on('error', handler);
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}

// Listeners on node:dgram: the backend without the native addon, and the one
// for multicast groups. IPv6 sockets are v6-only so `[::]:P` and `0.0.0.0:P`
// can coexist. Sources are canonicalised (an IPv4-mapped address is IPv4),
// exactly as the native listener reports them.

import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { canonicalIp, type Endpoint, formatEndpoint } from '../wire/address.js';
import { type BatchEndHandler, type DatagramHandler, type DatagramListener, type ListenOptions, MAX_SOCKET_BUFFER, type Source } from './socket-api.js';

const SOURCE_CACHE_LIMIT = 4096;

/** Canonical text of the IPv6 sources node:dgram reports, cached (sources repeat). */
class SourceNames {
  private readonly cache = new Map<string, string>();

  name(address: string): string {
    let s = this.cache.get(address);
    if (s === undefined) {
      s = canonicalIp(address)?.host ?? address;
      // Bounded: a flood of distinct sources must not grow memory.
      if (this.cache.size >= SOURCE_CACHE_LIMIT) this.cache.clear();
      this.cache.set(address, s);
    }
    return s;
  }
}

export function checkBufferSize(name: string, n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > MAX_SOCKET_BUFFER) throw new RangeError(`${name} ${n} is out of range (0-${MAX_SOCKET_BUFFER})`);
}

/**
 * Binds a UDP socket for `ep` and resolves once it is listening. The handler
 * gets canonical sources; `onBatchEnd`, when given, runs after each datagram,
 * as a microtask: node:dgram hands datagrams over one by one, each in a
 * callback of its own, so a batch is one datagram (and what its sends meet,
 * an ICMP answer reported on the next send, is heard before the next one).
 */
export function bindUdp(ep: Endpoint, opts: ListenOptions & { multicast: boolean }, onMessage: DatagramHandler, onBatchEnd: BatchEndHandler | null = null): Promise<Socket> {
  checkBufferSize('recv-buffer', opts.recvBuffer);
  const names = new SourceNames();
  const src: Source = { address: '', port: 0, family: 4 };
  let ending = false;
  const end = (): void => {
    ending = false;
    onBatchEnd!();
  };
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
    socket.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
      if (rinfo.family === 'IPv4') {
        src.address = rinfo.address;
        src.family = 4;
      } else {
        src.address = names.name(rinfo.address);
        src.family = src.address.includes(':') ? 6 : 4;
      }
      src.port = rinfo.port;
      onMessage(msg, src);
      if (onBatchEnd !== null && !ending) {
        ending = true;
        queueMicrotask(end);
      }
    });
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

export class DgramListener implements DatagramListener {
  readonly stable = true;

  private constructor(
    readonly endpoint: Endpoint,
    private readonly socket: Socket,
  ) {}

  get bound(): string {
    const a = this.socket.address();
    return formatEndpoint(canonicalIp(a.address)?.host ?? a.address, a.port);
  }

  get port(): number {
    return this.socket.address().port;
  }

  get recvBuffer(): number {
    return this.socket.getRecvBufferSize();
  }

  get fd(): number | null {
    // node:dgram keeps its handle behind a symbol; the fd is for statistics only.
    const state = Object.getOwnPropertySymbols(this.socket).find((s) => s.description === 'state symbol');
    const handle = state === undefined ? undefined : (this.socket as unknown as Record<symbol, { handle?: { fd?: number } }>)[state]?.handle;
    return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : null;
  }

  static async open(ep: Endpoint, multicast: boolean, opts: ListenOptions, onMessage: DatagramHandler, onBatchEnd: BatchEndHandler | null = null): Promise<DgramListener> {
    return new DgramListener(ep, await bindUdp(ep, { ...opts, multicast }, onMessage, onBatchEnd));
  }

  onError(handler: (err: Error) => void): void {
    // A socket error after bind (rare for UDP) is reported, never fatal.
    this.socket.on('error', handler);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve(); // already closed
      }
    });
  }
}

// Ports on node:dgram, whatever the backend: a port carries a few datagrams a
// second to a few peers (announces, sealed frames between an agent and its
// repeaters), where batching would buy nothing. Sources are canonical, as
// everywhere in net/.

import { createSocket, type Socket } from 'node:dgram';
import { canonicalIp, type Endpoint, formatEndpoint } from '../wire/address.js';
import { bindUdp } from './dgram-listener.js';
import type { DatagramHandler, DatagramPort, PortOptions } from './socket-api.js';

export class DgramPort implements DatagramPort {
  private constructor(
    private readonly socket: Socket,
    private readonly sendQueue: number,
  ) {}

  /** Binds `ep`; resolves once the socket listens. */
  static async open(ep: Endpoint, opts: PortOptions, onMessage: DatagramHandler): Promise<DgramPort> {
    const socket = await bindUdp(ep, { recvBuffer: opts.recvBuffer, multicast: false, multicastInterface: null }, onMessage);
    try {
      if (opts.sendBuffer > 0) socket.setSendBufferSize(opts.sendBuffer);
    } catch (err) {
      socket.close();
      throw err;
    }
    return new DgramPort(socket, opts.sendQueue);
  }

  address(): { address: string; port: number } {
    return this.socket.address();
  }

  get bound(): string {
    const a = this.socket.address();
    return formatEndpoint(canonicalIp(a.address)?.host ?? a.address, a.port);
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(buf: Buffer, to: Endpoint): boolean {
    if (this.socket.getSendQueueCount() >= this.sendQueue) return false;
    try {
      this.socket.send(buf, to.port, to.host);
    } catch {
      return false; // closed meanwhile
    }
    return true;
  }

  sendAndWait(buf: Buffer, to: Endpoint, timeoutMs = 1000): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`send to ${to.text} timed out`)), timeoutMs);
      try {
        this.socket.send(buf, to.port, to.host, (err) => {
          clearTimeout(t);
          if (err) reject(err);
          else resolve();
        });
      } catch (err) {
        clearTimeout(t);
        reject(err as Error);
      }
    });
  }

  onError(handler: (err: Error) => void): void {
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

/** Sends one datagram from a fresh unbound socket (as uWSGI sends its own), then closes it. */
export function sendOnce(to: Endpoint, buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createSocket(to.family === 6 ? 'udp6' : 'udp4');
    s.once('error', (err) => {
      s.close();
      reject(err);
    });
    s.send(buf, to.port, to.host, (err) => {
      s.close();
      if (err) reject(err);
      else resolve();
    });
  });
}

// The repeater's listeners: opened for a config before anything is swapped
// (a socket that cannot be bound refuses the config), kept across reloads
// while the config still names them, closed when it does not. Each hands its
// datagrams and batch ends to the datagram path's door for its address
// (path/datagram-path.ts listenerDoor); until the path is given a config
// naming it, what it receives is ignored.

import type { Logger } from '../base/log.js';
import type { ListenerConfig, ServeConfig } from '../config/serve-config.js';
import { type Backend, type DatagramListener, openListener } from '../net/io.js';
import type { Channel } from '../path/channel.js';
import type { DatagramPath } from '../path/datagram-path.js';
import { ListenerName } from '../path/listener-name.js';
import type { PathRoute } from '../path/path-config.js';

/** A listener's place in the config: its socket, and the config it was opened for (updated on reload). */
export interface Listening {
  config: ListenerConfig;
  readonly listener: DatagramListener;
}

export class Listeners {
  private readonly open = new Map<string, Listening>();

  constructor(
    private readonly backend: Backend,
    private readonly path: DatagramPath,
    private readonly log: Logger,
    /** A listener socket error (counted by the repeater). */
    private readonly onSocketError: () => void,
  ) {}

  /** Opens the listeners `next` adds; on a failure closes those it opened and throws. */
  async openNew(next: ServeConfig): Promise<Listening[]> {
    const opened: Listening[] = [];
    try {
      for (const lc of next.listeners) {
        if (this.open.has(lc.endpoint.text)) continue;
        const key = lc.endpoint.text;
        const door = this.path.listenerDoor(key);
        const opts = { recvBuffer: next.recvBuffer, multicastInterface: next.multicastInterface, onTruncated: () => this.path.truncated(key) };
        const listener = await openListener(this.backend, lc.endpoint, opts, door.datagram, door.batchEnd);
        listener.onError((err) => {
          this.onSocketError();
          this.log.throttle('warn', `listener:${key}`, 'listener socket error', { address: key, error: err.message });
        });
        opened.push({ config: lc, listener });
      }
    } catch (err) {
      for (const l of opened) await l.listener.close();
      throw err;
    }
    return opened;
  }

  /** Closes the listeners `next` dropped, keeps the others (with their new config), adds `opened`. */
  swap(next: ServeConfig, opened: readonly Listening[]): void {
    const kept = new Set(next.listeners.map((l) => l.endpoint.text));
    for (const [address, l] of this.open) {
      if (kept.has(address)) continue;
      void l.listener.close();
      this.open.delete(address);
      this.log.info('listener closed', { address });
    }
    for (const lc of next.listeners) {
      const existing = this.open.get(lc.endpoint.text);
      if (existing !== undefined) {
        existing.config = lc;
        continue;
      }
      const l = opened.find((o) => o.config === lc)!;
      this.open.set(lc.endpoint.text, l);
      const recvBuffer = l.listener.recvBuffer;
      this.log.info('listening', { address: lc.endpoint.text, bound: l.listener.bound, channel: lc.channel, sealed: lc.sealed, backend: this.backend, recvBuffer });
      // Linux reports twice the size it was asked for (its bookkeeping share);
      // less than twice means rmem_max capped it. `got` is what data can use.
      if (next.recvBuffer > 0 && recvBuffer < 2 * next.recvBuffer) {
        this.log.warn('receive buffer smaller than asked: raise net.core.rmem_max', { address: lc.endpoint.text, asked: next.recvBuffer, got: Math.floor(recvBuffer / 2) });
      }
    }
  }

  /** Where each listener's datagrams go in the path. */
  routes(channels: ReadonlyMap<string, Channel>): PathRoute[] {
    return [...this.open.values()].map((l) => ({
      key: l.config.endpoint.text,
      config: l.config,
      channel: channels.get(l.config.channel)!,
      names: l.config.sealed ? ListenerName.of(l.config, l.listener) : null,
      stable: l.listener.stable,
    }));
  }

  /** Each listener: configured and bound address, channel, form, receive buffer. */
  describe(): Array<{ address: string; bound: string; channel: string; sealed: boolean; identity?: true; recvBuffer: number }> {
    return [...this.open.values()].map((l) => ({
      address: l.config.endpoint.text,
      bound: l.listener.bound,
      channel: l.config.channel,
      sealed: l.config.sealed,
      // Identity mode: agents link to it by identity (config/sealed-modes.ts); absent under the shared key.
      ...(l.config.linked === true ? { identity: true as const } : {}),
      recvBuffer: l.listener.recvBuffer,
    }));
  }

  /** Each listener's address and socket, for kernel statistics. */
  sockets(): Array<{ address: string; fd: number | null }> {
    return [...this.open.values()].map((l) => ({ address: l.config.endpoint.text, fd: l.listener.fd }));
  }

  /** Port actually bound for a configured listener address. */
  portOf(address: string): number {
    const l = this.open.get(address);
    if (l === undefined) throw new Error(`no listener ${address}`);
    return l.listener.port;
  }

  /** Closes every listener; resolves once their ports can be bound again. */
  async close(): Promise<void> {
    const closing = [...this.open.values()].map((l) => l.listener.close());
    this.open.clear();
    await Promise.all(closing);
  }
}

// The names a sealed listener answers to, as an agent's frame carries them in
// Envelope.receiver (the agent's --repeater): the listener's bound address;
// for a wildcard listener, its port on any local address of either family and
// on all of 127/8 (net/local.ts); and its `public=` address, for agents that
// reach it through NAT, a port forward or a UDP proxy. A subscription sealed
// for another repeater, or another listener of this one, is refused
// (`wrong_receiver`) before it is believed.
//
// Local addresses are read once per listener config (a reload reads them
// again), like the loop check of net/local.ts. The repeater keeps no
// membership fence (fence() is 0): an agent seals each cache update once for
// all its --repeaters, and SECURITY.md, "Secure mode", states what that leaves.

import type { ListenerConfig } from '../config/serve-config.js';
import type { DatagramListener } from '../net/io.js';
import { OwnAddresses } from '../net/local.js';
import { formatEndpoint, parseEndpoint } from '../wire/address.js';

const names = new WeakMap<DatagramListener, ListenerName>();

export class ListenerName {
  private readonly own: OwnAddresses;
  private readonly alias: string | null;
  /** The last name found to be ours: agents name a listener one way, so this is the usual answer. */
  private last: string | null = null;

  private constructor(
    readonly config: ListenerConfig,
    port: number,
  ) {
    const bound = parseEndpoint(formatEndpoint(config.endpoint.host, port));
    this.own = new OwnAddresses(typeof bound === 'string' ? [config.endpoint] : [bound]);
    this.alias = config.publicAddress?.text ?? null;
  }

  /** The names of `listener`, opened for `config` (cached per listener, rebuilt when its config changes). */
  static of(config: ListenerConfig, listener: DatagramListener): ListenerName {
    let n = names.get(listener);
    if (n === undefined || n.config !== config) {
      n = new ListenerName(config, listener.port);
      names.set(listener, n);
    }
    return n;
  }

  /** True when an agent that named `name` meant this listener. */
  named(name: string): boolean {
    if (name === this.last) return true;
    const ep = parseEndpoint(name);
    if (typeof ep === 'string') return false;
    const ok = ep.text === this.alias || this.own.owns(ep);
    if (ok) this.last = name;
    return ok;
  }

  fence(): number {
    return 0;
  }
}

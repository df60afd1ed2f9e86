// The datagram path's configuration: one frozen snapshot, built by the
// repeater (repeater/repeater.ts) from a ServeConfig each time it applies one
// and handed to the path whole (DatagramPath.configure). The path reads only
// this: it never reaches back into the repeater for a setting, so a reload is
// one assignment, and a datagram is judged by one config from start to end.

import type { ListenerConfig } from '../config/serve-config.js';
import type { AccessList } from '../judge/access-list.js';
import type { Channel } from './channel.js';
import type { DataSeal } from './data-seal.js';
import type { LinkDoor } from './link-door.js';
import type { ListenerName } from './listener-name.js';

/** One listener's place in the path. */
export interface PathRoute {
  /** The listener's configured address: how its datagrams find this route. */
  readonly key: string;
  readonly config: ListenerConfig;
  readonly channel: Channel;
  /** Sealed listeners: the names a frame's receiver may give (listener-name.ts). */
  readonly names: ListenerName | null;
  /** Datagrams it hands over may be kept after the call (node:dgram), or not (native: a receive arena). */
  readonly stable: boolean;
}

export interface PathConfig {
  /** Larger datagrams are dropped (too_large). */
  readonly maxDatagram: number;
  /** No output may be larger than this (a trace or a repaired delete makes a datagram grow). */
  readonly outLimit: number;
  readonly forwardUnknown: boolean;
  readonly repairDeletes: boolean;
  /** Who may send to us (judge/access-list.ts). */
  readonly acl: AccessList;
  /** The data keys: opens frames on sealed listeners and seals for sealed subscribers; null without keys. */
  readonly seal: DataSeal | null;
  /** Identity mode: the links of the sealed listeners (link-door.ts); null in shared-key mode. */
  readonly links: LinkDoor | null;
  /** The content window's span (--dedup-window). */
  readonly dedupWindowMs: number;
  /** Every listener, by its configured address. */
  readonly routes: ReadonlyMap<string, PathRoute>;
  /** Every channel, by name. */
  readonly channels: ReadonlyMap<string, Channel>;
  /** The live states: kept when warm joins are on, bounded by maxBytes each. */
  readonly live: { readonly enabled: boolean; readonly maxBytes: number };
}

/** A Map that refuses every change once built. */
class FrozenMap<K, V> extends Map<K, V> {
  private readonly sealed: boolean;

  constructor(entries: Iterable<readonly [K, V]>) {
    super(entries);
    this.sealed = true;
  }

  override set(key: K, value: V): this {
    // Map's constructor calls set: allowed until the map is built.
    if (this.sealed === true) throw new TypeError('a path configuration is frozen');
    return super.set(key, value);
  }

  override delete(): boolean {
    throw new TypeError('a path configuration is frozen');
  }

  override clear(): void {
    throw new TypeError('a path configuration is frozen');
  }
}

/** Freezes a configuration: the object, its routes, its maps and the live settings. */
export function freezePathConfig(c: Omit<PathConfig, 'routes' | 'channels'> & { routes: Iterable<PathRoute>; channels: Iterable<Channel> }): PathConfig {
  const routes = new FrozenMap([...c.routes].map((r) => [r.key, Object.freeze({ ...r })] as const));
  const channels = new FrozenMap([...c.channels].map((ch) => [ch.name, ch] as const));
  Object.freeze(routes);
  Object.freeze(channels);
  return Object.freeze({ ...c, routes, channels, live: Object.freeze({ ...c.live }) });
}

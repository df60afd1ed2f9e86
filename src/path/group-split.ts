// Identity mode: which linked members of one channel key get a live
// datagram as one group frame (they acknowledged the current group key) and
// which get it under their own link key, as outlet groups cached until
// anything that decides it changes (group-keys.ts `version`, or the key
// group itself, which the channel rebuilds when membership changes).
//
// Invariants:
// - A member without a confirmed link now (not linked yet, or revoked) is in
//   neither part: it gets nothing.
// - The member a datagram came from (`origin`) is in neither part.
// - A cached split never outlives a key: rotation bumps the version, so the
//   split is recomputed with the new (unheld) key before anything is sealed.

import type { GroupCipher } from '../crypto/group-cipher.js';
import type { Fanout, OutletGroup } from '../net/io.js';
import type { KeyGroup, Subscriber } from './channel.js';
import { groupScope } from './group-keys.js';
import type { LinkDoor } from './link-door.js';

export interface Split {
  /** The key's cipher and the one outlet group of the members holding it; null when none does. */
  readonly cipher: GroupCipher | null;
  readonly holders: OutletGroup | null;
  /** Members with a link that do not hold it yet: sealed per link. */
  readonly rest: readonly Subscriber[];
}

/** Splits cached per key group and origin (a small bound: a busy channel has few writers). */
const PER_GROUP = 64;

export class GroupSplits {
  private readonly cache = new WeakMap<KeyGroup, { version: number; byOrigin: Map<bigint | null, Split> }>();

  constructor(private readonly fanout: Fanout) {}

  of(channel: string, g: KeyGroup, origin: bigint | null, links: LinkDoor): Split {
    const version = links.groups.version;
    let c = this.cache.get(g);
    if (c === undefined || c.version !== version) this.cache.set(g, (c = { version, byOrigin: new Map() }));
    const known = c.byOrigin.get(origin);
    if (known !== undefined) return known;
    const split = this.compute(groupScope(channel, g.key), g, origin, links);
    // compute() may draw the key (a new version): cache under the version it was computed at.
    if (links.groups.version !== version) this.cache.set(g, (c = { version: links.groups.version, byOrigin: new Map() }));
    if (c.byOrigin.size >= PER_GROUP) c.byOrigin.clear();
    c.byOrigin.set(origin, split);
    return split;
  }

  private compute(scope: string, g: KeyGroup, origin: bigint | null, links: LinkDoor): Split {
    const current = links.groups.current(scope);
    const holders: Subscriber[] = [];
    const rest: Subscriber[] = [];
    for (const m of g.linked) {
      if (origin !== null && m.origin === origin) continue;
      const link = links.linkOf(m);
      if (link === null) continue;
      if (current !== null && links.groups.holds(link, scope)) holders.push(m);
      else rest.push(m);
    }
    return {
      cipher: holders.length > 0 ? current!.cipher : null,
      holders: holders.length > 0 ? this.fanout.group(holders.map((m) => m.outlet)) : null,
      rest,
    };
  }
}

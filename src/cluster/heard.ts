// Who heard which subscriber, as the other repeaters announce it on the bus
// (bus 'subscriber' messages), and the one form fact the cluster shares:
// whether an address is served sealed by any repeater.
//
// Invariants:
// - Bounded: at most `cap()` subscriber ids; an announcement of a new id
//   past it is refused (the caller counts it). Entries only come from peers
//   the cluster tracks (at most MAX_PEERS), and go with them.
// - Deadlines are on our clock (the cluster converts the sender's).
// - The sealed index holds exactly the sealed ids of `byId`, by address, so
//   the form check costs a lookup, not a walk of the table.

/** A subscriber's identity across repeaters. */
export function idOf(channel: string, sealed: boolean, address: string): string {
  return `${channel}|${sealed ? 'sealed' : 'plain'}|${address}`;
}

interface Heard {
  readonly address: string;
  readonly sealed: boolean;
  /** The peers that heard it, with their deadlines on our clock. */
  readonly by: Map<bigint, number>;
}

export class HeardTable {
  /** Subscriber id -> who heard it. */
  private readonly byId = new Map<string, Heard>();
  /** Address -> the sealed subscriber ids (any channel) peers heard for it. */
  private readonly sealedIds = new Map<string, Set<string>>();

  constructor(private readonly cap: () => number) {}

  /** `peer` heard the subscriber until `deadline` (our clock). False when the table is full. */
  heard(channel: string, sealed: boolean, address: string, peer: bigint, deadline: number): boolean {
    const id = idOf(channel, sealed, address);
    let h = this.byId.get(id);
    if (h === undefined) {
      if (this.byId.size >= this.cap()) return false;
      this.byId.set(id, (h = { address, sealed, by: new Map() }));
      if (sealed) {
        let ids = this.sealedIds.get(address);
        if (ids === undefined) this.sealedIds.set(address, (ids = new Set()));
        ids.add(id);
      }
    }
    h.by.set(peer, deadline);
    return true;
  }

  /** `peer` no longer hears the subscriber. */
  gone(channel: string, sealed: boolean, address: string, peer: bigint): void {
    const id = idOf(channel, sealed, address);
    const h = this.byId.get(id);
    h?.by.delete(peer);
    if (h?.by.size === 0) this.drop(id, h);
  }

  /** The peers that heard `id` with their deadlines (empty when none). */
  peersOf(id: string): Iterable<[bigint, number]> {
    return this.byId.get(id)?.by ?? [];
  }

  /**
   * True when a peer heard a sealed subscriber for `address` (canonical
   * text), in any channel, with a deadline still ahead.
   */
  sealedAnywhere(address: string, now: number): boolean {
    for (const id of this.sealedIds.get(address) ?? []) {
      for (const deadline of this.byId.get(id)!.by.values()) if (deadline > now) return true;
    }
    return false;
  }

  /** Forgets everything `peer` said. */
  forgetPeer(peer: bigint): void {
    for (const [id, h] of this.byId) {
      h.by.delete(peer);
      if (h.by.size === 0) this.drop(id, h);
    }
  }

  /** Drops what is past its deadline or from a peer no longer tracked. */
  expire(now: number, tracked: (peer: bigint) => boolean): void {
    for (const [id, h] of this.byId) {
      for (const [peer, deadline] of h.by) if (deadline <= now || !tracked(peer)) h.by.delete(peer);
      if (h.by.size === 0) this.drop(id, h);
    }
  }

  get size(): number {
    return this.byId.size;
  }

  private drop(id: string, h: Heard): void {
    this.byId.delete(id);
    if (!h.sealed) return;
    const ids = this.sealedIds.get(h.address);
    ids?.delete(id);
    if (ids?.size === 0) this.sealedIds.delete(h.address);
  }
}

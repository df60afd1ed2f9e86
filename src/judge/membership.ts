// What a sealed subscriber (an agent, the TLS session cache) knows of its
// place in one repeater's frames: the name that repeater calls it by, and,
// per repeater origin, the first sequence of that origin's group frames it is
// a member for. A repeater seals each live datagram once for every sealed
// subscriber of a channel key (a group frame), so a frame sealed before we
// joined, captured at another member, would otherwise be new to us; the
// repeater says in a MEMBERSHIP frame naming us from which sequence we are a
// member, and crypto/session.ts refuses older frames of that origin
// (`before_join`). SECURITY.md, "Secure mode".
//
// Invariants: only authenticated MEMBERSHIP frames that named us and passed
// the replay window reach raise(); a fence only rises; the table is bounded
// (origins are repeater processes: a restart is a new origin).

/** Origins fenced at most; the one least recently raised is forgotten first (its fence lost, nothing refused). */
export const MAX_FENCED_ORIGINS = 64;

export class Membership {
  private readonly from = new Map<bigint, number>();

  /**
   * @param nameOf the receiver name our repeater puts in frames sealed for
   *   us: the address our subscription names, canonical (null: none yet).
   */
  constructor(private readonly nameOf: () => string | null) {}

  /** True when a frame's receiver is us. */
  named(name: string): boolean {
    return name === this.nameOf();
  }

  /** Frames of `origin` below this sequence were sealed before we were a member (0: none known). */
  fence(origin: bigint): number {
    return this.from.get(origin) ?? 0;
  }

  /** A MEMBERSHIP frame: we receive `origin`'s group frames from `memberFrom` on. */
  raise(origin: bigint, memberFrom: number): void {
    const had = this.from.get(origin);
    if (had !== undefined) this.from.delete(origin);
    else if (this.from.size >= MAX_FENCED_ORIGINS) this.from.delete(this.from.keys().next().value!);
    this.from.set(origin, Math.max(had ?? 0, memberFrom));
  }

  get origins(): number {
    return this.from.size;
  }
}

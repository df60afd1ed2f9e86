// The order of a live state's entries (or tombstones): the order they were
// last set in, kept as an array of slots that only grows at its end, so that
// taking the oldest, moving one to the newest end and dropping one are O(1)
// amortised whatever the size. (A Map re-inserted on every set keeps the same
// order, but finding its oldest entry walks over every slot deleted since the
// Map last rehashed: ~15 us per eviction at 70k entries.)
//
// Invariants:
// - an item is in at most one slot, `item.slot`; a slot left by an item that
//   moved or went away holds null (a hole) and is never reused;
// - along the array, from `head` on, the slots' versions (`vers`, kept for
//   holes too) strictly increase: an item is placed only with a version newer
//   than every slot's, so the order is oldest first and versions increase;
// - everything below `head` is a hole; holes are dropped by compaction (the
//   survivors moved down, in order) once they outnumber the live items and
//   COMPACT_MIN: each compaction costs O(slots) and comes after at least as
//   many moves or removals, so every operation is O(1) amortised;
// - a walk (OrderWalk) keeps the last version it visited: a compaction moves
//   items, so a walk that finds the array compacted since its last step
//   seeks its place again by version (binary search over `vers`). Like a
//   Map's iterator it is live: an item moved to the end is visited again
//   there, one removed before the walk reaches it is not visited, and once
//   it said done it stays done.

/** What the order holds: its key, its version, and the slot the order gave it. */
export interface Placed {
  readonly key: string;
  readonly version: number;
  slot: number;
}

/** Holes tolerated before the first compaction: small orders never compact. */
export const COMPACT_MIN = 1024;

export class SetOrder<T extends Placed> {
  /** Items by slot, holes as null; slots at or past `tail` are unused (never shrunk: no allocation in the steady state). */
  private items: Array<T | null> = [];
  /** Version of each slot when it was filled (kept when it becomes a hole). */
  private vers: number[] = [];
  /** Slots below it are holes. */
  private head = 0;
  private tail = 0;
  private live = 0;
  /** Bumped by every compaction and clear: walks must seek again. */
  private gen = 0;
  /** Slots stepped over (holes skipped by first(), items moved by compactions) so far: the work, counted for tests. */
  work = 0;

  /** `compactMin`: holes tolerated before compacting (COMPACT_MIN; tests make it small). */
  constructor(private readonly compactMin = COMPACT_MIN) {}

  get size(): number {
    return this.live;
  }

  /** Places `item` (not in the order) at the newest end; `item.version` must be newer than every slot's. */
  push(item: T): void {
    const holes = this.tail - this.live;
    if (holes > this.compactMin && holes > this.live) this.compact();
    const t = this.tail++;
    item.slot = t;
    if (t === this.items.length) {
      this.items.push(item);
      this.vers.push(item.version);
    } else {
      this.items[t] = item;
      this.vers[t] = item.version;
    }
    this.live++;
  }

  /** Takes `item` (in the order) out. */
  remove(item: T): void {
    this.items[item.slot] = null;
    item.slot = -1;
    this.live--;
  }

  /** The oldest item, or undefined when empty. */
  first(): T | undefined {
    const items = this.items;
    let h = this.head;
    while (h < this.tail && items[h] === null) h++;
    this.work += h - this.head;
    this.head = h;
    return h < this.tail ? items[h]! : undefined;
  }

  clear(): void {
    for (let i = this.head; i < this.tail; i++) {
      const x = this.items[i];
      if (x !== null && x !== undefined) x.slot = -1;
    }
    this.items = [];
    this.vers = [];
    this.head = this.tail = this.live = 0;
    this.gen++;
  }

  walk(): OrderWalk<T> {
    return new OrderWalk(this);
  }

  /** For OrderWalk: the item in slot `i`, the slots in use, the generation. */
  at(i: number): T | null {
    return this.items[i]!;
  }
  get start(): number {
    return this.head;
  }
  get end(): number {
    return this.tail;
  }
  get generation(): number {
    return this.gen;
  }

  /** The first slot (from head) whose version is newer than `v`. */
  seek(v: number): number {
    let lo = this.head;
    let hi = this.tail;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.vers[mid]! <= v) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private compact(): void {
    const items = this.items;
    const vers = this.vers;
    let j = 0;
    for (let i = this.head; i < this.tail; i++) {
      const x = items[i]!;
      if (x === null) continue;
      items[j] = x;
      vers[j] = vers[i]!;
      x.slot = j++;
    }
    this.work += this.tail - this.head;
    for (let i = j; i < this.tail; i++) items[i] = null;
    this.head = 0;
    this.tail = j;
    this.gen++;
  }
}

/** A live walk over a SetOrder, oldest first (see the invariants above). */
export class OrderWalk<T extends Placed> implements IterableIterator<[string, T]> {
  private pos: number;
  private gen: number;
  /** The version last visited (-1: none yet). */
  private last = -1;

  constructor(private readonly order: SetOrder<T>) {
    this.pos = order.start;
    this.gen = order.generation;
  }

  next(): IteratorResult<[string, T], undefined> {
    if (this.pos < 0) return { value: undefined, done: true };
    const o = this.order;
    let i: number;
    if (this.gen === o.generation) i = Math.max(this.pos, o.start);
    else {
      i = o.seek(this.last);
      this.gen = o.generation;
    }
    const end = o.end;
    for (; i < end; i++) {
      const x = o.at(i);
      if (x === null) continue;
      this.pos = i + 1;
      this.last = x.version;
      return { value: [x.key, x], done: false };
    }
    this.pos = -1; // done for good, like a Map's iterator
    return { value: undefined, done: true };
  }

  [Symbol.iterator](): OrderWalk<T> {
    return this;
  }
}

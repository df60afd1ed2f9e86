// The live cache state of one channel: the latest set of every key as a node
// sent it (its content, without any trace), so that a subscriber new to the
// channel can be sent the cache it missed (repeater/warm-join.ts). Pure
// bookkeeping over a clock the caller passes in: no I/O, no timers.
//
// Invariants:
// - at most one entry per key, holding the content of the latest set
//   accepted for it; a delete removes it, and so does the absolute expiry
//   the set carried (unix seconds, the node's clock; 0 = never) once the
//   caller's clock reaches it (live-expiry.ts finds those);
// - entries are kept in the order they were last set (live-order.ts): the
//   first is the oldest, and the oldest go first when the cost of all
//   entries would pass `maxBytes` (each one counted). Setting, moving,
//   evicting and deleting are O(1) amortised whatever the number of entries,
//   so a full state costs no more per update than an empty one;
// - `bytes` is the sum of every entry's cost: its datagram, its key again
//   (the map key) and ENTRY_OVERHEAD for the objects around them;
// - the content of an entry lives in storage of its own (an ArrayBuffer of
//   slotSize() bytes, never a view of a shared pool slab that other, dead
//   values would keep alive), so what `bytes` counts is what the entries
//   hold. A set of a key whose storage fits it (the same slotSize) is copied
//   into that storage: no allocation. The storage of an entry that went away
//   is zeroed and kept for a new entry of its size (at most spareLimit()
//   bytes of it, uncounted), so a full state that takes new keys allocates
//   nothing but their key strings;
// - every change takes the next `version` and stamps the entry it leaves
//   behind, so the walk (oldest first) visits versions in increasing order:
//   a warm join compares an entry's version with the one at its own start
//   to recognise what the live path has delivered since (an update applied
//   without being delivered is marked so: a join sends it whatever its
//   version), and a destination's mark ("sent up to version V") stays valid
//   as the state changes (warm-budget.ts);
// - the contents are TLS session secrets in clear (SECURITY.md, "Live
//   state"): an entry's bytes are zeroed when it is replaced, deleted,
//   expired or evicted, so a dead session does not linger in the heap; a
//   caller reads an entry within the turn it got it in (its storage is
//   reused);
// - a delete leaves a tombstone (the key and when, no value) for
//   TOMBSTONE_MS, so that a state fetched from a peer that missed the delete,
//   or an older copy of the state, cannot bring the key back (the cluster
//   sends tombstones with its state, and refuses a fetched set older than
//   one). Tombstones are never walked by warm joins: they reach no
//   subscriber. They count in `bytes` (key + TOMBSTONE_OVERHEAD each), at
//   most a quarter of `maxBytes`: past it the oldest go first (in delete
//   order, like entries). A set of the key removes its tombstone: a key has
//   an entry or a tombstone, never both.

import { cacheExpires, cacheKeyText } from '../wire/cache-fields.js';
import { CACHE_DELETE, type CacheShape, inspectCacheUpdate, newShape } from '../wire/cache.js';
import { HEADER_SIZE, type WireError } from '../wire/uwsgi.js';
import { ExpiryIndex } from './live-expiry.js';
import { type Placed, SetOrder } from './live-order.js';

/**
 * What an entry costs beyond its datagram and key bytes: the map slot, the
 * entry object, the Buffer and ArrayBuffer objects around its storage, the
 * allocator's bookkeeping and the slack of slotSize(), as measured on Node 20
 * with 20,000 and 65,000 entries of 300-byte values (heap and external memory
 * after a full GC: test/load/live-state-memory.test.ts). An estimate:
 * `--state-max-bytes` bounds memory to within tens of percent, not to the byte.
 */
export const ENTRY_OVERHEAD = 640;
/** What a tombstone costs beyond its key: the map slot and its small object. */
export const TOMBSTONE_OVERHEAD = 96;
/** How long a delete is remembered: far past a restart or a fetch from a peer that was cut off meanwhile. */
export const TOMBSTONE_MS = 10 * 60_000;
/** Storage sizes are multiples of this: a value that changes size by a few bytes keeps its storage. */
export const SLOT_ALIGN = 32;
/** Freed storage kept for reuse, at most (and at most a sixteenth of the bound). */
export const SPARE_MAX_BYTES = 256 << 10;

/** Bytes of storage an entry of `len` datagram bytes gets. */
export function slotSize(len: number): number {
  return Math.ceil(len / SLOT_ALIGN) * SLOT_ALIGN;
}

/** A delete remembered (no value). */
export interface Tombstone {
  /** When the delete was learnt (ms, the state's clock), or earlier when a peer said so. */
  readonly atMs: number;
  /** The state's version when it was learnt. */
  readonly version: number;
  readonly cost: number;
}

/**
 * Read-only to everyone but LiveState, which overwrites an entry in place when
 * its key is set again with a value that fits its storage, and reuses the
 * entry (and storage) of a key that went away for another key: read it
 * within the turn you got it in (the bytes it replaced are zeroed anyway).
 */
export interface LiveEntry {
  /** The set as the node sent it (no trace): a view of storage the state owns, never of a shared or reused buffer. */
  readonly content: Buffer;
  /** Absolute unix seconds; 0 = never. */
  readonly expires: number;
  /** The state's version when this set was applied. */
  readonly version: number;
  /** The live path sent it to every subscriber (false: applied from elsewhere, e.g. a peer's state). */
  readonly delivered: boolean;
  readonly cost: number;
  /** When it was learnt (ms, the state's clock), or earlier when a peer said so. */
  readonly atMs: number;
}

/** An entry as the state keeps it; `content` is a view of its own storage of `cap` bytes. */
class Entry implements LiveEntry, Placed {
  key = '';
  expires = 0;
  version = 0;
  delivered = true;
  cost = 0;
  atMs = 0;
  slot = -1;
  constructor(
    public content: Buffer,
    readonly cap: number,
  ) {}
}

class Tomb implements Tombstone, Placed {
  slot = -1;
  constructor(
    public key: string,
    public atMs: number,
    public version: number,
    public cost: number,
  ) {}
}

/** What happened to an update offered to the state. */
export type LiveChange = 'set' | 'deleted' | 'absent' | 'expired' | 'too_large';

export class LiveState {
  private readonly entries = new Map<string, Entry>();
  private readonly order = new SetOrder<Entry>();
  private readonly expiry = new ExpiryIndex<Entry>();
  private readonly shape: CacheShape = newShape();
  /** Deletes remembered, in delete order. */
  private readonly tombstones = new Map<string, Tomb>();
  private readonly tombOrder = new SetOrder<Tomb>();
  private tombstoneBytes = 0;
  /** Zeroed storage of entries that went away, by slotSize / SLOT_ALIGN, for new entries. */
  private spares: Array<Entry[] | undefined> = [];
  private spareBytes = 0;
  private spareTomb: Tomb | null = null;

  bytes = 0;
  version = 0;
  /** Entries dropped to stay under maxBytes (or refused for being larger than it alone). */
  evictions = 0;
  /** Entries dropped because their expiry passed (sets that arrived expired included). */
  expired = 0;
  /** Tombstones forgotten before TOMBSTONE_MS to stay under their share of maxBytes. */
  tombstonesEvicted = 0;

  /** `clock`: ms, for tombstones and the age of entries. */
  constructor(
    public maxBytes: number,
    private readonly clock: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Deletes remembered. */
  get tombstoneCount(): number {
    return this.tombstones.size;
  }

  /** Bytes of freed storage kept for reuse (not in `bytes`; at most spareLimit()). */
  get spareStorage(): number {
    return this.spareBytes;
  }

  /** Slots the orders stepped over so far (live-order.ts): O(1) amortised per change, whatever the size. */
  get orderWork(): number {
    return this.order.work + this.tombOrder.work;
  }

  /** The key's tombstone, if its delete is remembered. */
  tombstone(key: string): Tombstone | undefined {
    return this.tombstones.get(key);
  }

  /** Tombstones, oldest first (live, like walk()). */
  walkTombstones(): IterableIterator<[string, Tombstone]> {
    return this.tombOrder.walk();
  }

  /** A peer says it learnt this key's value (or delete) earlier than we did: keep the earlier time. */
  backdate(key: string, atMs: number): void {
    const e = this.entries.get(key) ?? this.tombstones.get(key);
    if (e !== undefined && atMs < e.atMs) e.atMs = atMs;
  }

  get(key: string): LiveEntry | undefined {
    return this.entries.get(key);
  }

  /**
   * Keys and entries, oldest first. The iterator is live (like a Map's): an
   * entry set again while it runs moves to the end and is visited again
   * there with a newer version; a deleted one is not visited.
   */
  walk(): IterableIterator<[string, LiveEntry]> {
    return this.order.walk();
  }

  /**
   * Applies a cache update inspected into `s` (trace or not): a set replaces
   * the key's entry with a copy of its content, a delete removes it.
   * `delivered`: the update was (or is being) sent to every subscriber.
   */
  learn(buf: Buffer, s: CacheShape, nowSec: number, delivered = true): LiveChange {
    const key = cacheKeyText(buf);
    if (s.cmd === CACHE_DELETE) return this.delete(key) ? 'deleted' : 'absent';
    return this.store(key, buf, s.contentEnd, cacheExpires(buf, s), nowSec, delivered);
  }

  /**
   * An update from elsewhere (saved state, another repeater): validated as a
   * datagram from the network would be. Returns why it was refused, or what
   * it changed.
   */
  apply(datagram: Buffer, nowSec: number, delivered = true): LiveChange | WireError {
    const bad = inspectCacheUpdate(datagram, this.shape);
    if (bad !== undefined) return bad;
    return this.learn(datagram, this.shape, nowSec, delivered);
  }

  /** Stores a copy of `content` (a set without trace) as the key's latest set; `content` is zeroed (owned from now on). */
  set(key: string, content: Buffer, expires: number, nowSec: number, delivered = true): LiveChange {
    const r = this.store(key, content, content.length, expires, nowSec, delivered);
    content.fill(0);
    return r;
  }

  /**
   * The key's latest set is `src[0, len)`, the content of a set (`src` may
   * go on with a trace: the copy gets the length of the content alone).
   */
  private store(key: string, src: Buffer, len: number, expires: number, nowSec: number, delivered: boolean): LiveChange {
    const old = this.entries.get(key);
    // Already expired: the node's cache drops it too; keeping it would only spread a dead session.
    const expired = expires !== 0 && expires <= nowSec;
    const cost = len + key.length + ENTRY_OVERHEAD;
    if (expired || cost > this.maxBytes) {
      if (old !== undefined) this.drop(old);
      this.untomb(key);
      this.version++;
      if (expired) this.expired++;
      else this.evictions++;
      return expired ? 'expired' : 'too_large';
    }
    let e: Entry | undefined;
    if (old !== undefined && old.cap === slotSize(len)) {
      // The hot path (every set a node sends): the storage fits, the bytes are overwritten in place.
      e = old;
      this.order.remove(e);
      this.bytes -= e.cost;
    } else {
      if (old !== undefined) this.drop(old);
      else this.untomb(key);
    }
    this.version++;
    // Before taking storage: an evicted entry's may be the one that fits.
    this.evictDownTo(this.maxBytes - cost);
    if (e === undefined) {
      e = this.take(len);
      e.key = key;
      this.entries.set(key, e);
    }
    let c = e.content;
    if (c.length !== len) {
      if (len < c.length) c.fill(0, len);
      c = e.content = Buffer.from(c.buffer, c.byteOffset, len);
    }
    src.copy(c, 0, 0, len);
    if (len !== src.length) c.writeUInt16LE(len - HEADER_SIZE, 1);
    if (e.expires !== expires) {
      if (e.expires !== 0) this.expiry.delete(e.expires, e);
      if (expires !== 0) this.expiry.add(expires, e);
      e.expires = expires;
    }
    e.cost = cost;
    e.version = this.version;
    e.delivered = delivered;
    e.atMs = this.clock();
    this.bytes += cost;
    this.order.push(e);
    // Tombstones count too: when they leave no room even for this entry alone, it goes as well.
    this.evictDownTo(this.maxBytes);
    return 'set';
  }

  /** Removes the key's entry (true when there was one) and remembers the delete either way. */
  delete(key: string): boolean {
    const old = this.entries.get(key);
    if (old !== undefined) this.drop(old);
    this.version++;
    this.untomb(key);
    const cost = key.length + TOMBSTONE_OVERHEAD;
    let t = this.spareTomb;
    this.spareTomb = null;
    if (t === null) t = new Tomb(key, this.clock(), this.version, cost);
    else {
      t.key = key;
      t.atMs = this.clock();
      t.version = this.version;
      t.cost = cost;
    }
    this.tombstones.set(key, t);
    this.tombOrder.push(t);
    this.tombstoneBytes += cost;
    this.bytes += cost;
    this.evictTombstones();
    this.evictDownTo(this.maxBytes);
    return old !== undefined;
  }

  private untomb(key: string): void {
    const t = this.tombstones.get(key);
    if (t !== undefined) this.forget(t);
  }

  private forget(t: Tomb): void {
    this.tombstones.delete(t.key);
    this.tombOrder.remove(t);
    this.tombstoneBytes -= t.cost;
    this.bytes -= t.cost;
    this.spareTomb = t;
  }

  private evictTombstones(): void {
    while (this.tombstoneBytes > this.maxBytes / 4) {
      const t = this.tombOrder.first();
      if (t === undefined) break;
      this.forget(t);
      this.tombstonesEvicted++;
    }
  }

  /** Changes the bound, evicting the oldest entries (and tombstones past their share) when it shrank. */
  setMaxBytes(maxBytes: number): void {
    this.maxBytes = maxBytes;
    this.evictTombstones();
    this.evictDownTo(maxBytes);
    this.dropSpares();
  }

  /** Drops every entry whose expiry is at or before `nowSec`, and tombstones past TOMBSTONE_MS; returns how many entries. */
  sweep(nowSec: number): number {
    const limit = this.clock() - TOMBSTONE_MS;
    for (let t = this.tombOrder.first(); t !== undefined && t.atMs <= limit; t = this.tombOrder.first()) this.forget(t);
    let n = 0;
    this.expiry.popExpired(nowSec, (e) => {
      e.expires = 0; // out of the index already
      this.drop(e);
      n++;
    });
    if (n > 0) {
      this.version++;
      this.expired += n;
    }
    return n;
  }

  clear(): void {
    for (const e of this.entries.values()) e.content.fill(0);
    this.entries.clear();
    this.order.clear();
    this.tombstones.clear();
    this.tombOrder.clear();
    this.tombstoneBytes = 0;
    this.expiry.clear();
    this.dropSpares();
    this.spareTomb = null;
    this.bytes = 0;
    this.version++;
  }

  private evictDownTo(limit: number): void {
    while (this.bytes > limit) {
      const e = this.order.first();
      if (e === undefined) break;
      this.drop(e);
      this.evictions++;
    }
  }

  /** Takes an entry out of everything, zeroes its bytes and keeps its storage for reuse (within spareLimit()). */
  private drop(e: Entry): void {
    this.entries.delete(e.key);
    this.order.remove(e);
    this.bytes -= e.cost;
    if (e.expires !== 0) this.expiry.delete(e.expires, e);
    e.content.fill(0);
    e.key = '';
    e.expires = 0;
    if (this.spareBytes + e.cap > this.spareLimit()) return;
    const list = (this.spares[e.cap / SLOT_ALIGN] ??= []);
    list.push(e);
    this.spareBytes += e.cap;
  }

  /** Storage for an entry of `len` bytes: a spare one of its size, or new (zeroed). */
  private take(len: number): Entry {
    const cap = slotSize(len);
    const e = this.spares[cap / SLOT_ALIGN]?.pop();
    if (e !== undefined) {
      this.spareBytes -= cap;
      return e;
    }
    return new Entry(Buffer.from(new ArrayBuffer(cap), 0, len), cap);
  }

  /** Freed storage kept for reuse, at most. */
  private spareLimit(): number {
    return Math.min(SPARE_MAX_BYTES, this.maxBytes / 16);
  }

  private dropSpares(): void {
    this.spares = [];
    this.spareBytes = 0;
  }
}

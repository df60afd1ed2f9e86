// The live cache state of one channel: the latest set of every key as a node
// sent it (its content, without any trace), so that a subscriber new to the
// channel can be sent the cache it missed (repeater/warm-join.ts). Pure
// bookkeeping over a clock the caller passes in: no I/O, no timers.
//
// Invariants:
// - at most one entry per key, holding the content of the latest set
//   accepted for it; a delete removes it, and so does the absolute expiry
//   the set carried (unix seconds, the node's clock; 0 = never) once the
//   caller's clock reaches it;
// - entries are kept in the order they were last set (a Map re-inserted on
//   every set): the first is the oldest, and the oldest go first when the
//   cost of all entries would pass `maxBytes` (each one counted);
// - `bytes` is the sum of every entry's cost: its datagram, its key again
//   (the map key) and ENTRY_OVERHEAD for the objects around them;
// - every change takes the next `version` and stamps the entry it leaves
//   behind, so the walk (oldest first) visits versions in increasing order:
//   a warm join compares an entry's version with the one at its own start
//   to recognise what the live path has delivered since (an update applied
//   without being delivered is marked so: a join sends it whatever its
//   version), and a destination's mark ("sent up to version V") stays valid
//   as the state changes (warm-budget.ts);
// - the contents are TLS session secrets in clear (SECURITY.md, "Live
//   state"): an entry's bytes are zeroed when it is replaced, deleted,
//   expired or evicted, so a dead session does not linger in the heap;
// - a delete leaves a tombstone (the key and when, no value) for
//   TOMBSTONE_MS, so that a state fetched from a peer that missed the delete,
//   or an older copy of the state, cannot bring the key back (the cluster
//   sends tombstones with its state, and refuses a fetched set older than
//   one). Tombstones are never walked by warm joins: they reach no
//   subscriber. They count in `bytes` (key + TOMBSTONE_OVERHEAD each), at
//   most a quarter of `maxBytes`: past it the oldest go first. A set of the
//   key removes its tombstone.

import { cacheExpires, cacheKeyText } from '../wire/cache-fields.js';
import { CACHE_DELETE, type CacheShape, contentOf, inspectCacheUpdate, newShape } from '../wire/cache.js';
import type { WireError } from '../wire/uwsgi.js';

/**
 * What an entry costs beyond its datagram and key bytes: the Map slot, the
 * entry object, the Buffer object and allocator slack, as measured on Node 20
 * with 20,000 entries of 300-byte values (heap and external memory after a
 * full GC). An estimate: `--state-max-bytes` bounds memory to within tens of
 * percent, not to the byte.
 */
export const ENTRY_OVERHEAD = 640;
/** What a tombstone costs beyond its key: the Map slot and its small object. */
export const TOMBSTONE_OVERHEAD = 96;
/** How long a delete is remembered: far past a restart or a fetch from a peer that was cut off meanwhile. */
export const TOMBSTONE_MS = 10 * 60_000;

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
 * its key is set again with a value of the same size: read it within the turn
 * you got it in (as the replaced bytes are zeroed anyway).
 */
export interface LiveEntry {
  /** The set as the node sent it (no trace); owned by the state, never a view of a reused buffer. */
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

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** What happened to an update offered to the state. */
export type LiveChange = 'set' | 'deleted' | 'absent' | 'expired' | 'too_large';

export class LiveState {
  private readonly entries = new Map<string, Mutable<LiveEntry>>();
  /** Keys by the second they expire in, and a min-heap of those seconds (possibly stale: see sweep). */
  private readonly buckets = new Map<number, Set<string>>();
  private heap: number[] = [];
  private readonly shape: CacheShape = newShape();
  /** Deletes remembered, oldest first (a Map re-inserted on every delete). */
  private readonly tombstones = new Map<string, Mutable<Tombstone>>();
  private tombstoneBytes = 0;

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

  /** The key's tombstone, if its delete is remembered. */
  tombstone(key: string): Tombstone | undefined {
    return this.tombstones.get(key);
  }

  /** Tombstones, oldest first (live, like walk()). */
  walkTombstones(): IterableIterator<[string, Tombstone]> {
    return this.tombstones.entries();
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
   * Keys and entries, oldest first. The iterator is live (Map semantics): an
   * entry set again while it runs moves to the end and is visited again there
   * with a newer version; a deleted one is not visited.
   */
  walk(): IterableIterator<[string, LiveEntry]> {
    return this.entries.entries();
  }

  /**
   * Applies a cache update inspected into `s` (trace or not): a set replaces
   * the key's entry with a copy of its content, a delete removes it.
   * `delivered`: the update was (or is being) sent to every subscriber.
   */
  learn(buf: Buffer, s: CacheShape, nowSec: number, delivered = true): LiveChange {
    const key = cacheKeyText(buf);
    if (s.cmd === CACHE_DELETE) return this.delete(key) ? 'deleted' : 'absent';
    const expires = cacheExpires(buf, s);
    const own = contentOf(buf, s);
    if (own !== buf) return this.set(key, own, expires, nowSec, delivered);
    // The hot path (every set a node sends): a key set again with a value of
    // the same size overwrites its entry's bytes, with no allocation and
    // nothing to zero; otherwise a copy, as the datagram may be a view of the
    // listener's receive arena.
    const old = this.entries.get(key);
    if (old !== undefined && old.content.length === buf.length && (expires === 0 || expires > nowSec)) {
      buf.copy(old.content);
      this.renew(key, old, expires, delivered);
      return 'set';
    }
    return this.set(key, Buffer.from(buf), expires, nowSec, delivered);
  }

  /** `e`, whose content was just overwritten, becomes the key's latest set (moved to the end). */
  private renew(key: string, e: Mutable<LiveEntry>, expires: number, delivered: boolean): void {
    this.entries.delete(key);
    this.entries.set(key, e);
    e.atMs = this.clock();
    if (e.expires !== expires) {
      if (e.expires !== 0) this.bucketDelete(e.expires, key);
      if (expires !== 0) this.bucketAdd(expires, key);
      e.expires = expires;
    }
    this.version++;
    e.version = this.version;
    e.delivered = delivered;
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

  /** Stores `content` (owned from now on) as the key's latest set. */
  set(key: string, content: Buffer, expires: number, nowSec: number, delivered = true): LiveChange {
    const old = this.entries.get(key);
    if (old !== undefined) this.remove(key, old);
    this.untomb(key);
    this.version++;
    // Already expired: the node's cache drops it too; keeping it would only spread a dead session.
    if (expires !== 0 && expires <= nowSec) {
      content.fill(0);
      this.expired++;
      return 'expired';
    }
    const cost = content.length + key.length + ENTRY_OVERHEAD;
    if (cost > this.maxBytes) {
      content.fill(0);
      this.evictions++;
      return 'too_large';
    }
    this.entries.set(key, { content, expires, version: this.version, delivered, cost, atMs: this.clock() });
    this.bytes += cost;
    if (expires !== 0) this.bucketAdd(expires, key);
    this.evictDownTo(this.maxBytes);
    return 'set';
  }

  /** Removes the key's entry (true when there was one) and remembers the delete either way. */
  delete(key: string): boolean {
    const old = this.entries.get(key);
    if (old !== undefined) this.remove(key, old);
    this.version++;
    this.untomb(key);
    const cost = key.length + TOMBSTONE_OVERHEAD;
    this.tombstones.set(key, { atMs: this.clock(), version: this.version, cost });
    this.tombstoneBytes += cost;
    this.bytes += cost;
    while (this.tombstoneBytes > this.maxBytes / 4 && this.tombstones.size > 0) {
      this.untomb(this.tombstones.keys().next().value as string);
      this.tombstonesEvicted++;
    }
    this.evictDownTo(this.maxBytes);
    return old !== undefined;
  }

  private untomb(key: string): void {
    const t = this.tombstones.get(key);
    if (t === undefined) return;
    this.tombstones.delete(key);
    this.tombstoneBytes -= t.cost;
    this.bytes -= t.cost;
  }

  /** Changes the bound, evicting the oldest entries (and tombstones past their share) when it shrank. */
  setMaxBytes(maxBytes: number): void {
    this.maxBytes = maxBytes;
    while (this.tombstoneBytes > maxBytes / 4 && this.tombstones.size > 0) {
      this.untomb(this.tombstones.keys().next().value as string);
      this.tombstonesEvicted++;
    }
    this.evictDownTo(maxBytes);
  }

  /** Drops every entry whose expiry is at or before `nowSec`, and tombstones past TOMBSTONE_MS; returns how many entries. */
  sweep(nowSec: number): number {
    const limit = this.clock() - TOMBSTONE_MS;
    for (const [key, t] of this.tombstones) {
      if (t.atMs > limit) break;
      this.untomb(key);
    }
    let n = 0;
    const h = this.heap;
    while (h.length > 0 && h[0]! <= nowSec) {
      const second = heapPop(h);
      const keys = this.buckets.get(second);
      if (keys === undefined) continue; // emptied since it was pushed
      this.buckets.delete(second);
      for (const key of keys) {
        const e = this.entries.get(key)!;
        this.entries.delete(key);
        this.bytes -= e.cost;
        e.content.fill(0);
        n++;
      }
    }
    if (n > 0) {
      this.version++;
      this.expired += n;
    }
    return n;
  }

  clear(): void {
    for (const e of this.entries.values()) e.content.fill(0);
    this.entries.clear();
    this.tombstones.clear();
    this.tombstoneBytes = 0;
    this.buckets.clear();
    this.heap = [];
    this.bytes = 0;
    this.version++;
  }

  private evictDownTo(limit: number): void {
    while (this.bytes > limit && this.entries.size > 0) {
      const [key, e] = this.entries.entries().next().value as [string, LiveEntry];
      this.remove(key, e);
      this.evictions++;
    }
  }

  private remove(key: string, e: LiveEntry): void {
    this.entries.delete(key);
    this.bytes -= e.cost;
    e.content.fill(0);
    if (e.expires !== 0) this.bucketDelete(e.expires, key);
  }

  private bucketDelete(second: number, key: string): void {
    const keys = this.buckets.get(second)!;
    keys.delete(key);
    if (keys.size === 0) this.buckets.delete(second);
  }

  private bucketAdd(second: number, key: string): void {
    let keys = this.buckets.get(second);
    if (keys === undefined) {
      this.buckets.set(second, (keys = new Set()));
      // Seconds whose bucket emptied stay in the heap until popped; rebuilt
      // when they outnumber live buckets, so the heap stays O(entries).
      if (this.heap.length > 2 * this.buckets.size + 64) this.heap = heapOf([...this.buckets.keys()]);
      else heapPush(this.heap, second);
    }
    keys.add(key);
  }
}

function heapPush(h: number[], v: number): void {
  let i = h.push(v) - 1;
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (h[p]! <= v) break;
    h[i] = h[p]!;
    i = p;
  }
  h[i] = v;
}

function heapPop(h: number[]): number {
  const top = h[0]!;
  const last = h.pop()!;
  if (h.length > 0) {
    let i = 0;
    const n = h.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const c = l + 1 < n && h[l + 1]! < h[l]! ? l + 1 : l;
      if (h[c]! >= last) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
  }
  return top;
}

function heapOf(values: number[]): number[] {
  const h: number[] = [];
  for (const v of values) heapPush(h, v);
  return h;
}

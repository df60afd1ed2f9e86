// The session cache's local store: what `resumeSession` answers from, with no
// network round trip. Bounded twice (entries and bytes, oldest used evicted
// first) because what fills it comes from the network; every entry carries
// its own deadline and is never returned after it. Pure bookkeeping over a
// clock the caller passes in.

export interface StoreLimits {
  /** Most entries held (uWSGI's `items`). */
  readonly maxEntries: number;
  /** Most bytes of keys and values held. */
  readonly maxBytes: number;
}

interface Slot {
  readonly value: Buffer;
  readonly expiresAt: number;
  readonly size: number;
}

export class SessionStore {
  /** Insertion order is use order: the first entry is the least recently used. */
  private readonly map = new Map<string, Slot>();
  private bytes = 0;
  evictions = 0;
  expirations = 0;

  constructor(private readonly limits: StoreLimits) {}

  get size(): number {
    return this.map.size;
  }

  get byteSize(): number {
    return this.bytes;
  }

  /**
   * Stores a copy of `value` under `key` until `expiresAt` (ms). Refused
   * (false) when it is already expired or alone larger than the byte bound.
   */
  set(key: Uint8Array, value: Uint8Array, expiresAt: number, now: number): boolean {
    const size = key.length + value.length;
    if (expiresAt <= now || size > this.limits.maxBytes) return false;
    const k = Buffer.from(key).toString('latin1');
    this.remove(k);
    this.map.set(k, { value: Buffer.from(value), expiresAt, size });
    this.bytes += size;
    while (this.map.size > this.limits.maxEntries || this.bytes > this.limits.maxBytes) {
      const oldest = this.map.keys().next().value as string;
      this.remove(oldest);
      this.evictions++;
    }
    return true;
  }

  /** The value, or undefined when absent or expired (an expired entry is dropped). */
  get(key: Uint8Array, now: number): Buffer | undefined {
    const k = Buffer.from(key).toString('latin1');
    const slot = this.map.get(k);
    if (slot === undefined) return undefined;
    if (slot.expiresAt <= now) {
      this.remove(k);
      this.expirations++;
      return undefined;
    }
    // Used: now the most recently used.
    this.map.delete(k);
    this.map.set(k, slot);
    return slot.value;
  }

  delete(key: Uint8Array): boolean {
    return this.remove(Buffer.from(key).toString('latin1'));
  }

  /** Drops every expired entry; returns how many went. */
  sweep(now: number): number {
    let n = 0;
    for (const [k, slot] of this.map) {
      if (slot.expiresAt > now) continue;
      this.remove(k);
      n++;
    }
    this.expirations += n;
    return n;
  }

  /** Zeroes and drops everything (session data is secret). */
  clear(): void {
    for (const slot of this.map.values()) slot.value.fill(0);
    this.map.clear();
    this.bytes = 0;
  }

  private remove(k: string): boolean {
    const slot = this.map.get(k);
    if (slot === undefined) return false;
    slot.value.fill(0);
    this.map.delete(k);
    this.bytes -= slot.size;
    return true;
  }
}

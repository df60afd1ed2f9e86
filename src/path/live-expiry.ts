// When a live state's entries expire: items grouped by the second their
// expiry names, and a min-heap of those seconds, so that a sweep finds what
// expired without looking at anything else.
//
// Invariants:
// - an item is in the bucket of its expiry second (the caller adds and
//   deletes it as its expiry changes; 0 = never is never added);
// - every second with a bucket is in the heap; a second whose bucket emptied
//   may stay there until popped (stale), and the heap is rebuilt from the
//   live buckets when stale seconds outnumber them, so it stays
//   O(buckets) in size and each operation O(log buckets) amortised.

export class ExpiryIndex<T> {
  private readonly buckets = new Map<number, Set<T>>();
  private heap: number[] = [];

  /** Seconds in the heap, stale ones included (for tests). */
  get heapSize(): number {
    return this.heap.length;
  }

  add(second: number, item: T): void {
    let items = this.buckets.get(second);
    if (items === undefined) {
      this.buckets.set(second, (items = new Set()));
      if (this.heap.length > 2 * this.buckets.size + 64) this.heap = heapOf([...this.buckets.keys()]);
      else heapPush(this.heap, second);
    }
    items.add(item);
  }

  delete(second: number, item: T): void {
    const items = this.buckets.get(second)!;
    items.delete(item);
    if (items.size === 0) this.buckets.delete(second);
  }

  /** Takes out, and hands to `each`, every item whose second is at or before `nowSec`. */
  popExpired(nowSec: number, each: (item: T) => void): void {
    const h = this.heap;
    while (h.length > 0 && h[0]! <= nowSec) {
      const second = heapPop(h);
      const items = this.buckets.get(second);
      if (items === undefined) continue; // emptied since it was pushed
      this.buckets.delete(second);
      for (const item of items) each(item);
    }
  }

  clear(): void {
    this.buckets.clear();
    this.heap = [];
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

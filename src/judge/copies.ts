// Cluster mode's exactly-once: a node that lists two repeaters (node=R1;R2)
// sends each update to both, both put it on the bus, and every repeater sees
// it twice, once per ingress (a repeater's own listeners, or the repeater
// that published it on the bus). This memory pairs the copies.
//
// The rule: for a (cache key, content) seen within the memory, copies are
// counted per ingress; the n-th copy from ingress X is a duplicate only when
// another ingress already brought at least n copies. So:
// - a node's own repetitions are never suppressed: a set A, B, A through one
//   repeater reaches everyone as A, B, A (all from one ingress);
// - the same datagram through a second repeater is suppressed, in whichever
//   order the copies arrive, and so is the second of each pair when a node
//   listing two repeaters sends A, B, A (the merge of two ordered streams,
//   each occurrence once);
// - what is still suppressed: identical bytes (same key, same value, same
//   expiry) that another ingress brought as often within the memory, e.g. two
//   nodes on two repeaters writing the same session the same second.
//
// The memory of a (key, content) lasts `memoryMs` after its last copy; the
// cluster sets it past the oldest a bus datagram may be when it is delivered,
// so a late second copy still finds its pair.
//
// Bounded whatever arrives: at most MAX_KEYS keys (the least recently
// updated forgotten first), MAX_CONTENTS contents per key (the oldest
// forgotten first) and MAX_INGRESSES ingresses per content (a copy from one
// more is then taken for a duplicate if any other brought one).

import { KeyedHash } from './keyed-hash.js';

export const MAX_KEYS = 1 << 17;
export const MAX_CONTENTS = 8;
export const MAX_INGRESSES = 8;

/** Copies of one content of one key, per ingress. */
interface Copies {
  readonly content: number;
  last: number;
  readonly ingress: bigint[];
  readonly counts: number[];
}

export class CopyMemory {
  /** Per key hash, the contents seen within the memory (oldest first); the Map's order: least recently updated key first. */
  private readonly seen = new Map<number, Copies[]>();
  readonly hasher = new KeyedHash();

  constructor(public memoryMs: number) {}

  /**
   * Counts one copy of `content` for `key` from `ingress`; true when it is
   * to be delivered, false for a duplicate of a copy another ingress brought.
   */
  admit(key: number, content: number, ingress: bigint, now: number): boolean {
    let list = this.seen.get(key);
    if (list === undefined) {
      if (this.seen.size >= MAX_KEYS) this.seen.delete(this.seen.keys().next().value as number);
      list = [];
    } else {
      this.seen.delete(key);
      // Forget what is past the memory: its copies are all in (or stale).
      let keep = 0;
      for (const c of list) if (now - c.last <= this.memoryMs) list[keep++] = c;
      list.length = keep;
    }
    this.seen.set(key, list);
    let c = list.find((x) => x.content === content);
    if (c === undefined) {
      if (list.length >= MAX_CONTENTS) list.shift();
      list.push({ content, last: now, ingress: [ingress], counts: [1] });
      return true;
    }
    c.last = now;
    let i = c.ingress.indexOf(ingress);
    let others = 0;
    for (let j = 0; j < c.counts.length; j++) if (j !== i && c.counts[j]! > others) others = c.counts[j]!;
    if (i < 0) {
      if (c.ingress.length >= MAX_INGRESSES) return others < 1;
      i = c.ingress.push(ingress) - 1;
      c.counts.push(0);
    }
    const n = ++c.counts[i]!;
    return others < n;
  }

  get keys(): number {
    return this.seen.size;
  }
}

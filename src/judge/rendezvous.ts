// Rendezvous (highest random weight) hashing: every repeater that knows the
// same candidates picks the same owner for a subscriber, with no
// coordination, and when a candidate goes only its subscribers move.

import { createHash } from 'node:crypto';

/** The weight of `candidate` for `item`: the first 6 bytes of SHA-256 over both. */
export function weight(candidate: bigint, item: string): number {
  const h = createHash('sha256');
  const id = Buffer.allocUnsafe(8);
  id.writeBigUInt64LE(candidate);
  h.update(id);
  h.update(item);
  return h.digest().readUIntLE(0, 6);
}

/** The candidate with the highest weight for `item` (ties: the larger id); null when there is none. */
export function owner(candidates: Iterable<bigint>, item: string): bigint | null {
  let best: bigint | null = null;
  let bestWeight = -1;
  for (const c of candidates) {
    const w = weight(c, item);
    if (w > bestWeight || (w === bestWeight && best !== null && c > best)) {
      best = c;
      bestWeight = w;
    }
  }
  return best;
}

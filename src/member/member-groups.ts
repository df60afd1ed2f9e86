// Identity mode, the member's side of group keys (docs/PROTOCOL.md, "Group
// keys and revocation"): the keys each linked repeater handed over under the link, and the
// group frames they open.
//
// Invariants:
// - A key is taken only from a GROUP_KEY that opened under the link with
//   that repeater (the caller's check); a group frame opens only under a key
//   that repeater gave, so a node (which holds no repeater's link key) cannot
//   hand out keys, and a key from one repeater opens nothing from another.
// - A group frame is believed only as a cache datagram (the caller's check).
// - A replacement (higher epoch) keeps the replaced key for GRACE_MS, and
//   then only for counters below the one the repeater says it stopped at:
//   frames sealed before the revocation still in flight are delivered, no
//   frame sealed under the old key after it is.
// - Bounded: two keys per configured repeater (the caller passes configured
//   repeaters only). A new link with a repeater (it restarted, or a periodic
//   re-handshake) makes the next key it hands over replace the held one
//   whatever its epoch (a restarted repeater counts epochs from 1 again);
//   until then the held key keeps opening, so a re-handshake loses nothing.

import { GroupCipher, type GroupRefusal } from '../crypto/group-cipher.js';
import type { GroupKeyFields } from '../wire/envelope.js';

const GRACE_MS = 2_000;

interface Held {
  readonly cipher: GroupCipher;
  readonly epoch: number;
}

interface Previous extends Held {
  /** Its first counter the repeater never sealed (Infinity: not said). */
  readonly until: number;
  readonly expiresAt: number;
}

export class MemberGroups {
  private readonly byRepeater = new Map<string, { current: Held; previous: Previous | null; relinked: boolean }>();

  /**
   * A GROUP_KEY from repeater `r`: 'new' when installed, 'same' when it is
   * the key held now (acknowledge again: the ack was lost), 'stale' when
   * older than the one held (ignored, not acknowledged).
   */
  take(r: string, g: GroupKeyFields, nowMs: number): 'new' | 'same' | 'stale' {
    const held = this.byRepeater.get(r);
    if (held !== undefined) {
      if (held.current.cipher.keyId === g.keyId && held.current.epoch === g.epoch) {
        held.relinked = false;
        return 'same';
      }
      if (g.epoch <= held.current.epoch && !held.relinked) return 'stale';
      held.previous?.cipher.destroy();
      const until = g.replacesKeyId === held.current.cipher.keyId && g.replacesUntilCounter > 0 ? g.replacesUntilCounter : Infinity;
      held.previous = { ...held.current, until, expiresAt: nowMs + GRACE_MS };
      held.current = { cipher: new GroupCipher(g.keyId, g.key), epoch: g.epoch };
      held.relinked = false;
      return 'new';
    }
    this.byRepeater.set(r, { current: { cipher: new GroupCipher(g.keyId, g.key), epoch: g.epoch }, previous: null, relinked: false });
    return 'new';
  }

  /** A group frame from repeater `r`: its plaintext, or why not. */
  open(r: string, frame: Uint8Array, nowMs: number): Uint8Array | GroupRefusal {
    const held = this.byRepeater.get(r);
    if (held === undefined) return 'unknown_key';
    const cur = held.current.cipher.open(frame);
    if (cur !== 'unknown_key') return typeof cur === 'string' ? cur : cur.plain;
    const prev = held.previous;
    if (prev === null) return 'unknown_key';
    if (nowMs >= prev.expiresAt) {
      prev.cipher.destroy();
      held.previous = null;
      return 'unknown_key';
    }
    const old = prev.cipher.open(frame);
    if (typeof old === 'string') return old;
    return old.counter < prev.until ? old.plain : 'unknown_key';
  }

  /** Whether `keyId` is a key `r` handed over (picks the repeater among several on one host; the frame must still open). */
  holds(r: string, keyId: number): boolean {
    const held = this.byRepeater.get(r);
    return held !== undefined && (held.current.cipher.keyId === keyId || held.previous?.cipher.keyId === keyId);
  }

  /** A new link with `r`: the next key it hands over replaces the held one whatever its epoch. */
  relinked(r: string): void {
    const held = this.byRepeater.get(r);
    if (held !== undefined) held.relinked = true;
  }

  /** `r` is no longer trusted (a peers reload): its keys are zeroed. */
  forget(r: string): void {
    const held = this.byRepeater.get(r);
    if (held === undefined) return;
    held.current.cipher.destroy();
    held.previous?.cipher.destroy();
    this.byRepeater.delete(r);
  }

  destroy(): void {
    for (const r of [...this.byRepeater.keys()]) this.forget(r);
  }
}

// Identity mode's group keys on the repeater (docs/PROTOCOL.md, "Group keys
// and revocation"): one per channel key of each channel, handed to each linked member under its own
// link; a live datagram is sealed once under it for every member whose link
// acknowledged it, and under the member's link key for the others.
//
// Invariants:
// - A link holds a key only once it acknowledged that key and epoch over the
//   link itself: until then it is sent every datagram under its link key, so
//   no update waits for a key to arrive.
// - rotate() (a reload that revoked an identity) replaces every key before
//   the reload returns: the old ones are zeroed and never seal again, the new
//   ones are held by nobody yet; so nothing sealed after the reload opens with
//   what the revoked node holds.
// - One key per scope (groupScope: a channel and one of its channel keys).
// - Bounded: at most MAX_KEYS scopes get a group key (a listed node naming
//   many channel keys costs per-link sealing beyond that, never memory).
// - `version` changes whenever which links hold which key may have changed
//   (an ack, a new key, a new or dropped link): cached holder groups compare it.

import { GroupCipher } from '../crypto/group-cipher.js';
import type { Link } from '../crypto/link-responder.js';
import type { GroupKeyAckFields, GroupKeyFields } from '../wire/envelope.js';

const MAX_KEYS = 4096;

/**
 * What a group key is for: one channel key on one channel. Two channels that
 * happen to use the same channel key get keys of their own.
 */
export function groupScope(channel: string, channelKey: string): string {
  return JSON.stringify([channel, channelKey]);
}

interface Current {
  readonly cipher: GroupCipher;
  readonly epoch: number;
  readonly holders: WeakSet<Link>;
  /** The key this one replaced at a revocation, and its first counter never sealed. */
  readonly replaces: { readonly keyId: number; readonly until: number } | null;
}

export class GroupKeys {
  private readonly byScope = new Map<string, Current>();
  /** The last epoch per scope (epochs only grow within a start). */
  private readonly epochs = new Map<string, number>();
  private readonly replaced = new Map<string, { keyId: number; until: number }>();
  version = 0;
  /** Keys drawn since start (one per scope, and again after each revocation). */
  drawn = 0;

  /** The scope's group key, drawn on first use; null past the bound. */
  current(scope: string): Current | null {
    let c = this.byScope.get(scope);
    if (c !== undefined) return c;
    if (this.byScope.size >= MAX_KEYS || (!this.epochs.has(scope) && this.epochs.size >= MAX_KEYS)) return null;
    const epoch = (this.epochs.get(scope) ?? 0) + 1;
    this.epochs.set(scope, epoch);
    c = { cipher: GroupCipher.draw((id) => this.uses(id)), epoch, holders: new WeakSet(), replaces: this.replaced.get(scope) ?? null };
    this.byScope.set(scope, c);
    this.drawn++;
    this.version++;
    return c;
  }

  private uses(id: number): boolean {
    for (const c of this.byScope.values()) if (c.cipher.keyId === id) return true;
    return false;
  }

  /** Whether `link` acknowledged the scope's current key. */
  holds(link: Link, scope: string): boolean {
    return this.byScope.get(scope)?.holders.has(link) ?? false;
  }

  /** What to hand `link` for `scope` (null: it holds the current key, or there is none). */
  offer(link: Link, scope: string): GroupKeyFields | null {
    const c = this.current(scope);
    if (c === null || c.holders.has(link)) return null;
    return { keyId: c.cipher.keyId, key: c.cipher.secret, epoch: c.epoch, replacesKeyId: c.replaces?.keyId ?? 0, replacesUntilCounter: c.replaces?.until ?? 0 };
  }

  /** An acknowledgement over `link`: it holds the key only if it names the current key and epoch. */
  ack(link: Link, scope: string, a: GroupKeyAckFields): boolean {
    const c = this.byScope.get(scope);
    if (c === undefined || c.cipher.keyId !== a.keyId || c.epoch !== a.epoch) return false;
    if (!c.holders.has(link)) {
      c.holders.add(link);
      this.version++;
    }
    return true;
  }

  /** Every key replaced (a revocation): the old ones zeroed, the new ones drawn on next use and held by nobody. */
  rotate(): void {
    for (const [scope, c] of this.byScope) {
      this.replaced.set(scope, { keyId: c.cipher.keyId, until: c.cipher.nextCounter });
      c.cipher.destroy();
    }
    this.byScope.clear();
    this.version++;
  }

  /** A link was made or dropped: holder groups are recomputed. */
  linksChanged(): void {
    this.version++;
  }

  get size(): number {
    return this.byScope.size;
  }

  destroy(): void {
    for (const c of this.byScope.values()) c.cipher.destroy();
    this.byScope.clear();
  }
}

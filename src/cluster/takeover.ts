// Takeovers (README.md, "Cluster mode", what happens when parts fail): a
// repeater that starts serving subscribers another repeater served sends
// each of them what that repeater may not have delivered, from the live
// state every repeater keeps of the whole cluster (WarmJoins.takeover).
//
// Invariants:
// - A repeater that died was last heard at its last heartbeat; until the
//   others took it for dead (the peer timeout, checked every third of it)
//   nobody served its subscribers. What changed in the live state since
//   then, less REPAIR_MARGIN_MS, is what they may have missed: the margin
//   covers the bus latency between us and it, and updates that had reached
//   its socket when it sent its last heartbeat but were still unread (its
//   event loop reads them after that turn's timers). Far longer than either
//   on a working network; what it costs is duplicates (the same current
//   values, sent again), never an older value.
//   Several repeaters gone at once: the earliest last-heard counts.
// - Its subscribers move when the peer timer notices it is gone, or on a
//   peer's announcement a moment before: either way the repair reaches back
//   to when it was last heard (a departure is remembered for a peer
//   timeout). A subscriber that moves while no repeater left (its server
//   said goodbye, stopped hearing it, or its announcement expired) had its
//   server until a moment ago: the margin alone is repaired.
// - A repeater whose own event loop did not run for a peer timeout (SIGSTOP,
//   a long pause, a starved CPU) may take its peers for dead because it did
//   not hear them, not because they died, and its live state lags the
//   cluster's until it has read what queued meanwhile: it decides at the
//   next turn of the peer timer instead, and repairs only the subscribers
//   still its own then (a peer that was alive is heard again by then and
//   takes its subscribers back). Deferred subscribers are held in a table
//   bounded by the registries, kept until such a turn.
// - Whether a subscriber is owed a whole join (its join never completed
//   anywhere, as far as this repeater heard) is the warm joins' fact; the
//   repeaters tell each other of completed joins in their announcements
//   (`warmed`), so a completed join is not sent again.

import type { Logger } from '../base/log.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { WarmJoins } from '../repeater/warm-join.js';

/** Repaired beyond the dead repeater's last heartbeat. */
export const REPAIR_MARGIN_MS = 500;

export class Takeovers {
  /** The live repeaters as of the last ownership decision. */
  private live = new Set<bigint>();
  /** Peers that left the live set within the last peer timeout: when they were last heard, and when that was noticed. */
  private readonly gone = new Map<bigint, { lastHeard: number; noticed: number }>();
  /** When the last reassignment ran (our clock, ms): the peer timer's. */
  private lastAt = -Infinity;
  /** Taken over while this repeater had not run for a peer timeout: decided at the next turn. */
  private pending = new Map<Subscriber, Channel>();

  constructor(
    private readonly warm: Pick<WarmJoins, 'takeover' | 'onCompleted'>,
    /** When a peer was last heard (our clock), while it is remembered. */
    private readonly lastHeard: (peer: bigint) => number | undefined,
    /** Reassignments come at least this often while the event loop runs (the peer timeout). */
    private readonly stallMs: number,
    private readonly log: Logger,
    /** Announces a subscriber on the bus (its announcement says whether its join completed here). */
    announce: (ch: Channel, e: Subscriber) => void,
  ) {
    // The others learn at once that a join completed: none of them owes it one any more.
    warm.onCompleted = (ch, e) => {
      if (e.owned && ch.registry(e.form).get(e.endpoint.text) === e) announce(ch, e);
    };
  }

  /** After a reassignment at `now`: `gained` the subscribers this repeater serves from now on, `live` who is alive now. */
  moved(gained: ReadonlyMap<Subscriber, Channel>, live: Set<bigint>, now: number): void {
    const stalled = now - this.lastAt > this.stallMs;
    this.lastAt = now;
    this.observe(live, now);
    const due = this.pending;
    this.pending = new Map();
    for (const [e, ch] of gained) due.set(e, ch);
    if (due.size === 0) return;
    // Peers left while this repeater was not running (noticed now, or by an announcement read first).
    if (stalled && this.gone.size > 0) {
      this.pending = due;
      this.log.warn('cluster: this repeater did not run for a peer timeout; the subscribers it took over are repaired at the next turn if still its own', { gained: due.size });
      return;
    }
    const ageMs = now - this.since(now) + REPAIR_MARGIN_MS;
    for (const [e, ch] of due) if (e.owned && ch.registry(e.form).get(e.endpoint.text) === e) this.warm.takeover(ch, e, ageMs);
  }

  /** One subscriber moved to this repeater on a peer's announcement (its server may have died a moment ago, or left). */
  one(ch: Channel, e: Subscriber, live: Set<bigint>, now: number): void {
    this.observe(live, now);
    // The peer timer has not run for a peer timeout: decided at its next turn (above).
    if (now - this.lastAt > this.stallMs) this.pending.set(e, ch);
    else this.warm.takeover(ch, e, now - this.since(now) + REPAIR_MARGIN_MS);
  }

  /** Notes who left the live set since the last decision, and who came back. */
  private observe(live: Set<bigint>, now: number): void {
    for (const id of this.live) if (!live.has(id)) this.gone.set(id, { lastHeard: this.lastHeard(id) ?? now, noticed: now });
    for (const [id, g] of this.gone) if (live.has(id) || now - g.noticed > this.stallMs) this.gone.delete(id);
    this.live = live;
  }

  /** The earliest a repeater that left lately was last heard; `now` when none did. */
  private since(now: number): number {
    let t = now;
    for (const g of this.gone.values()) t = Math.min(t, g.lastHeard);
    return t;
  }
}

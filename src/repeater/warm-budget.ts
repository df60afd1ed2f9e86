// What warm joins may send (README.md, "Warm join"; SECURITY.md, "No
// circulation, and the amplification bound"): the pacers that bound all
// joins together (datagrams and bytes per second), and the accounting per
// destination that bounds what any one address can be made to receive.
//
// Invariants:
// - A Pacer never grants more than its rate over any window plus one burst
//   (BURST_SECONDS of the rate) and one send's debt: a send may take more
//   tokens than are left, and nothing more is granted until the debt is
//   repaid, so a 60 KB datagram is paced like sixty 1 KB ones.
// - A Destination is one IP address in one channel, in canonical form: every
//   port of an address shares it. Within a window of `--warm-cooldown` from
//   the first join toward it, `through` only grows, and every live entry whose
//   version is at most `through` has been sent to that address (by a join, or
//   on the live path to a subscriber there). A join sends
//   only entries above it, so whatever the number of subscriptions, ports,
//   unsubscribes and suspensions, a destination receives each entry version
//   at most once per window from warm joins, plus what `redoLeft` allows: at
//   most REDO_BYTES per window sent again because a closed port lost them.
// - The table holds at most MAX_DESTINATIONS; a record leaves it once its
//   window has passed and no join uses it. When it is full, no join starts
//   toward a new destination: refusing costs a node its warm join, evicting
//   would hand a spoofer a second full join.

import { TokenBucket } from '../judge/token-bucket.js';

/** Tokens per second, at most `burstSeconds` of them saved up (judge/token-bucket.ts). Pure over the clock it is given (ms). */
export class Pacer {
  private readonly bucket = new TokenBucket(0, 0);

  constructor(
    public rate: number,
    private readonly burstSeconds = BURST_SECONDS,
  ) {}

  /** Starts from empty at `nowMs`: a pause is not saved up as a burst. */
  reset(nowMs: number): void {
    this.bucket.tokens = 0;
    this.bucket.last = nowMs;
  }

  /** Whole tokens available at `nowMs` (negative while a debt is being repaid). */
  available(nowMs: number): number {
    return Math.floor(this.bucket.refill(nowMs, this.rate, Math.max(1, this.rate * this.burstSeconds)));
  }

  /** Takes `n` tokens, possibly more than are left (a debt). */
  take(n: number): void {
    this.bucket.take(n);
  }

  /** Milliseconds from the last `available` call until one whole token is there. */
  msUntilOne(): number {
    return this.bucket.msUntilOne(this.rate);
  }
}

/** Tokens saved up at most: 5 ms of the rate (100 datagrams at 20,000/s), so a late timer never bursts much. */
export const BURST_SECONDS = 0.005;

/** Destinations (channel and IP) tracked at most, all channels together. */
export const MAX_DESTINATIONS = 65_536;

/** Bytes a destination may be sent again per window because a closed port lost them (the uWSGI start-up race). */
export const REDO_BYTES = 1 << 20;

export interface Destination {
  /** Every live entry with a version up to this one reached the destination within the window. */
  through: number;
  /** When the window began (clock ms): the join that started from version 0. */
  since: number;
  /** What may still be sent again in this window. */
  redoLeft: number;
  /** Joins toward it in progress: the record stays while one runs. */
  joins: number;
}

/** A destination nobody else shares (sealed subscribers, or --warm-cooldown 0): a full join, on its own. */
export function privateDestination(now: number): Destination {
  return { through: 0, since: now, redoLeft: REDO_BYTES, joins: 0 };
}

export class Destinations {
  private readonly table = new Map<string, Destination>();

  constructor(
    public cooldownMs: number,
    private readonly max = MAX_DESTINATIONS,
  ) {}

  get size(): number {
    return this.table.size;
  }

  /**
   * The record of `host` (canonical IP) in `channel` for a join starting at
   * `now`: the same record within its window (`resumed`: the join sends only
   * what the address was not sent yet), a fresh window after it, or null when
   * the table is full of live windows.
   */
  open(channel: string, host: string, now: number): { dest: Destination; resumed: boolean } | null {
    const id = `${channel}\0${host}`;
    const d = this.table.get(id);
    if (d !== undefined && now - d.since < this.cooldownMs) return { dest: d, resumed: true };
    if (d !== undefined) {
      // A new window, in place: a join of the old window still running keeps
      // the same record, so the two never send the same entry twice.
      d.through = 0;
      d.since = now;
      d.redoLeft = REDO_BYTES;
      return { dest: d, resumed: false };
    }
    if (this.table.size >= this.max) this.prune(now);
    if (this.table.size >= this.max) return null;
    const fresh = privateDestination(now);
    this.table.set(id, fresh);
    return { dest: fresh, resumed: false };
  }

  /** Forgets the records whose window has passed and that no join uses. */
  prune(now: number): void {
    for (const [id, d] of this.table) if (d.joins === 0 && now - d.since >= this.cooldownMs) this.table.delete(id);
  }

  /** Forgets a channel's records (the channel is gone, or warm joins were turned off). */
  dropChannel(channel: string): void {
    const prefix = `${channel}\0`;
    for (const id of this.table.keys()) if (id.startsWith(prefix)) this.table.delete(id);
  }

  clear(): void {
    this.table.clear();
  }
}

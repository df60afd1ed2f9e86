// The warm joins in progress, and the timer that paces them (README.md,
// "Warm join"). warm-join.ts decides who is warmed and from where; this file
// walks the live state for each join, paced, and asks the datagram path's
// out door to deliver each entry (path/out-door.ts builds, seals and sends;
// a slice of the pacer is one batch of the fan-out).
//
// Invariants:
// - A datagram sent by a warm join carries the value current when it is
//   sent, never one read earlier: the join walks the keys and reads each
//   entry at send time. An entry changed since the join started (a newer
//   version) has already reached the subscriber on the live path, which
//   sends every accepted update to every subscriber as it arrives; the join
//   skips it, so a newer live value can never be overwritten by an older one.
// - A join sends only entries above its destination's mark (warm-budget.ts)
//   and raises the mark as it goes: joins toward one address (any port, one
//   after the other or at once) never send it the same entry version twice
//   within a window, except what a closed port is known to have lost.
// - Live traffic is never queued behind a warm join: warm datagrams are sent
//   from a timer, at most `--warm-rate` datagrams and `--warm-byte-rate`
//   bytes per second for all joins together (round robin, so many joins
//   share the rates instead of multiplying them), in slices of about a
//   millisecond's worth; the datagram path runs between slices.
// - Warm datagrams are forwarder outputs like any other: the out door gives
//   each a fresh trace from the path's LoopGuard and the forward form of
//   wire/cache.ts (plain), or seals it under the subscriber's key (sealed),
//   and sends it to that one subscriber only.
// - At most one join per subscriber; a join ends when its subscriber goes
//   away (unsubscribed, expired, evicted, replaced). A suspended subscriber's
//   join waits, and goes on where it was when the subscriber is back.
// - What is known to be lost is sent again, within bounds: when the
//   subscriber answers with ICMP (a closed port: uWSGI announces a moment
//   before its cache-udp-server is bound) or a send fails, the join pauses LOSS_PAUSE_MS,
//   then sends again what the last moments cost (warm-redo.ts), charged to
//   the destination's REDO_BYTES. What a node drops silently (a full
//   receive buffer) nobody can know: see README.md, "Warm join".
// - A repair (cluster mode, warm-repair.ts) is a join that sends only the
//   entries above its floor; the rules above hold for it as for any join.

import { DropSlot } from '../base/stats.js';
import type { Fanout, OutletGroup, SendSink } from '../net/io.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { LiveEntry, LiveState } from '../path/live-state.js';
import type { WarmHost, WarmProgress, WarmStats } from './warm-stats.js';
import { type Destination, Pacer } from './warm-budget.js';
import { emptyRange, inRange, type Range, Redo, RUN_MS, widen } from './warm-redo.js';

/** The pacing timer's period while a join can send. */
const TICK_MS = 1;
/** While every join waits (a start delay, a pause, a suspended subscriber). */
const PAUSED_TICK_MS = 50;
/** Entries walked per tick at most (skipped ones cost no token): bounds a tick's time. */
const MAX_STEPS = 4096;
/** A new join waits this long: uWSGI announces a moment before its cache-udp-server listens. */
export const START_DELAY_MS = 100;
/** After a datagram met a closed port, the join waits this long, then sends again what was lost. */
export const LOSS_PAUSE_MS = 200;

interface Join {
  readonly id: string;
  readonly ch: Channel;
  readonly entry: Subscriber;
  readonly state: LiveState;
  readonly stats: WarmStats;
  readonly group: OutletGroup;
  readonly dest: Destination;
  readonly resumed: boolean;
  iter: Iterator<[string, LiveEntry]>;
  /** The live path delivered what is above this version to the subscriber. */
  readonly startVersion: number;
  readonly total: number;
  sent: number;
  resent: number;
  skipped: number;
  dropped: number;
  bytes: number;
  readonly startedAt: number;
  /** Sends wait until this time (clock ms): the start delay, or the pause after a loss. */
  notBefore: number;
  /** Its outlet's errors when last looked at (they never go down, unlike strikes, which an announce resets): more means a loss. */
  errors: number;
  /** The highest version the walk has passed: below it, only what is sent again is sent. */
  walked: number;
  /** Versions the live path did not deliver to the subscriber (it was suspended): the join sends them. */
  readonly missed: Range;
  /** Only entries above it are sent (a repair); 0: all. */
  readonly floor: number;
  readonly kind: JoinKind;
  /** The state's version when a suspension was first seen; -1: not suspended. */
  suspendedAt: number;
  /** What a closed port may have cost, to send again. */
  readonly redo: Redo;
  /** The walk starts over from the first entry before the next send (to reach what is sent again). */
  rewind: boolean;
  /** When it last sent (clock ms): a join ends RUN_MS after, once an ICMP answer to its last datagrams would have been seen. */
  lastSentAt: number;
  /** Told of a warm datagram lost when its batch went out (counted as sent when queued). */
  readonly sink: SendSink;
}

/** A join of a subscriber new to its channel, a repair, or a join finished for a repeater that died before it completed. */
export type JoinKind = 'join' | 'repair' | 'takeover';

type Step = 'skipped' | 'paused' | 'done' | 'gone' | 'not_served';

/** What starting a join needs. */
export interface JoinStart {
  readonly ch: Channel;
  readonly entry: Subscriber;
  readonly state: LiveState;
  readonly stats: WarmStats;
  readonly dest: Destination;
  readonly resumed: boolean;
  readonly why: 'new' | 'resumed' | 'takeover' | 'repair';
  /** Held during a cluster fetch: the state's version when the subscriber came (the live path delivered what is above). */
  readonly since: number | null;
  /** A repair: only entries above this version (default 0: all). */
  readonly floor?: number;
  readonly kind?: JoinKind;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

export const joinId = (ch: Channel, e: Subscriber) => `${ch.name}\0${e.form}\0${e.endpoint.text}`;

export class WarmRunner {
  private readonly joins = new Map<string, Join>();
  /** Joins in round-robin order; `next` is whose turn it is. */
  private active: Join[] = [];
  private next = 0;
  readonly pacer = new Pacer(1);
  readonly bytePacer = new Pacer(1);
  private timer: NodeJS.Timeout | null = null;
  /** The soonest a paused join may send again (clock ms), found by the last pump. */
  private wake = Infinity;
  private closed = false;

  constructor(
    private readonly host: WarmHost,
    private readonly clock: () => number,
    /** A join reached its last entry. */
    private readonly onComplete: (ch: Channel, e: Subscriber) => void = () => undefined,
  ) {}

  /** Warm joins in progress in a channel. */
  activeIn(channel: string): number {
    let n = 0;
    for (const j of this.active) if (j.ch.name === channel) n++;
    return n;
  }

  /** The subscriber's join in progress, if any. */
  has(ch: Channel, e: Subscriber): boolean {
    return this.joins.get(joinId(ch, e))?.entry === e;
  }

  /** Starts a join (the caller checked it is due); one in progress for the same address with another entry ends first. */
  start(s: JoinStart, fanout: Fanout): void {
    if (this.closed) return;
    const { ch, entry: e, state } = s;
    const id = joinId(ch, e);
    const existing = this.joins.get(id);
    if (existing !== undefined) this.end(existing, 'replaced by a new subscription');
    const now = this.clock();
    const startVersion = s.since ?? state.version;
    const j: Join = {
      id,
      ch,
      entry: e,
      state,
      stats: s.stats,
      group: fanout.group([e.outlet]),
      dest: s.dest,
      resumed: s.resumed,
      iter: state.walk(),
      startVersion,
      total: state.size,
      sent: 0,
      resent: 0,
      skipped: 0,
      dropped: 0,
      bytes: 0,
      startedAt: Date.now(),
      notBefore: now + START_DELAY_MS,
      errors: e.outlet.errors,
      walked: 0,
      missed: emptyRange(),
      floor: s.floor ?? 0,
      kind: s.kind ?? 'join',
      suspendedAt: -1,
      redo: new Redo(now, startVersion),
      rewind: false,
      lastSentAt: -Infinity,
      sink: {
        lateLoss: (full, bytes) => {
          j.sent--;
          j.dropped++;
          j.bytes -= bytes;
          j.stats.datagrams--;
          j.stats.bytes -= bytes;
          ch.stats.dropped[full ? DropSlot.queue_full : DropSlot.send_error]++;
        },
      },
    };
    s.dest.joins++;
    s.stats.started++;
    if (s.resumed) s.stats.resumed++;
    this.joins.set(id, j);
    if (this.active.length === 0) {
      this.pacer.reset(now);
      this.bytePacer.reset(now);
    }
    this.active.push(j);
    this.host.log.info(j.kind === 'repair' ? 'warm repair started' : 'warm join started', {
      channel: ch.name,
      address: e.endpoint.text,
      form: e.form,
      reason: s.why,
      entries: state.size,
      bytes: state.bytes,
      // Resumed: only entries above the destination's mark are sent.
      resumed: s.resumed,
      from: Math.max(s.dest.through, j.floor),
      ...(j.kind === 'join' ? {} : { kind: j.kind, to: startVersion }),
    });
    this.schedule(0);
  }

  /** A join in progress for this subscriber, for /subscribers. */
  progress(ch: Channel, e: Subscriber): WarmProgress | null {
    const j = this.joins.get(joinId(ch, e));
    if (j === undefined || j.entry !== e) return null;
    return { sent: j.sent, skipped: j.skipped, dropped: j.dropped, total: j.total, startedAt: new Date(j.startedAt).toISOString(), resumed: j.resumed };
  }

  /**
   * The subscriber of a join in progress was served elsewhere from versions
   * above `floor` until now (cluster takeover): what was set meanwhile is
   * sent as if it had been suspended.
   */
  missedSince(ch: Channel, e: Subscriber, floor: number): boolean {
    const j = this.joins.get(joinId(ch, e));
    if (j === undefined || j.entry !== e) return false;
    if (j.state.version > floor && widen(j.missed, floor + 1, j.state.version)) j.rewind = true;
    return true;
  }

  /** Ends every join on `state` (turned off, channel removed). */
  endAll(state: LiveState, why: string): void {
    for (const j of [...this.active]) if (j.state === state) this.end(j, why);
  }

  private schedule(ms: number): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setTimeout(this.pump, ms);
  }

  /** One slice: as many datagrams as both pacers allow, round robin over the joins. */
  private readonly pump = (): void => {
    this.timer = null;
    this.wake = Infinity;
    // One slice is one batch of the fan-out: its datagrams leave together at its end.
    this.host.out.begin();
    try {
      this.slice();
    } finally {
      this.host.out.flush();
    }
  };

  private slice(): void {
    const now = this.clock();
    let datagrams = this.pacer.available(now);
    let bytes = this.bytePacer.available(now);
    const nowSec = nowSeconds();
    let steps = 0;
    let pausedInARow = 0;
    while (datagrams > 0 && bytes > 0 && this.active.length > 0 && steps < MAX_STEPS && pausedInARow < this.active.length) {
      if (this.next >= this.active.length) this.next = 0;
      const j = this.active[this.next]!;
      const r = this.step(j, nowSec);
      steps++;
      if (r === 'skipped') continue;
      if (typeof r === 'number') {
        datagrams--;
        bytes -= r;
        this.pacer.take(1);
        this.bytePacer.take(r);
        pausedInARow = 0;
        this.next++;
      } else if (r === 'paused') {
        pausedInARow++;
        this.next++;
      } else {
        this.active.splice(this.next, 1);
        this.joins.delete(j.id);
        j.dest.joins--;
        if (r === 'done') this.complete(j);
        else this.ended(j, r === 'gone' ? 'subscriber gone' : 'served by another repeater');
      }
    }
    if (this.active.length === 0) return;
    if (pausedInARow >= this.active.length) {
      this.schedule(Math.max(TICK_MS, Math.min(PAUSED_TICK_MS, Math.ceil(this.wake - this.clock()))));
      return;
    }
    // Out of tokens: sleep until both pacers have one again (a large datagram leaves a debt).
    this.schedule(Math.max(TICK_MS, Math.min(PAUSED_TICK_MS, Math.ceil(Math.max(this.pacer.msUntilOne(), this.bytePacer.msUntilOne())))));
  }

  /** One entry of a join: the bytes it sent (0: dropped on the way out), or why nothing was sent. */
  private step(j: Join, nowSec: number): number | Step {
    const e = j.entry;
    if (this.host.channels.get(j.ch.name) !== j.ch || j.ch.registry(e.form).get(e.endpoint.text) !== e) return 'gone';
    // Cluster mode: the repeater that serves a subscriber warms it; the others leave it (their live path does not reach it).
    if (!e.owned) return 'not_served';
    const now = this.clock();
    // An ICMP answer or a send error: a datagram (warm or live) was lost.
    if (e.outlet.errors > j.errors) this.lost(j, now);
    j.errors = e.outlet.errors;
    if (e.suspendedUntil !== 0) {
      if (j.suspendedAt < 0) j.suspendedAt = j.state.version;
      return 'paused';
    }
    if (j.suspendedAt >= 0) {
      // Back: what was set meanwhile never reached it (suspended subscribers are sent nothing).
      if (j.state.version > j.suspendedAt && widen(j.missed, j.suspendedAt + 1, j.state.version)) j.rewind = true;
      j.suspendedAt = -1;
    }
    if (now < j.notBefore) {
      this.wake = Math.min(this.wake, j.notBefore);
      return 'paused';
    }
    if (j.rewind) {
      j.rewind = false;
      j.iter = j.state.walk();
    }
    j.redo.tick(now, j.state.version);
    const n = j.iter.next();
    if (n.done === true) {
      // A small state goes out in one slice, before any answer to it could be read: wait for one.
      if (now - j.lastSentAt >= RUN_MS) return 'done';
      this.wake = Math.min(this.wake, j.lastSentAt + RUN_MS);
      return 'paused';
    }
    const entry = n.value[1];
    const v = entry.version;
    // Expired: the sweep has not come yet.
    if (entry.expires !== 0 && entry.expires <= nowSec) {
      j.skipped++;
      return 'skipped';
    }
    // Not sent yet to this address, not passed by this walk, and not delivered by the live path since the join began.
    const fresh = v > j.floor && v > j.dest.through && v > j.walked && (!(entry.delivered && v > j.startVersion) || inRange(j.missed, v));
    j.walked = Math.max(j.walked, v);
    const again = !fresh && j.dest.redoLeft > 0 && j.redo.again(v);
    if (!fresh && !again) {
      j.skipped++;
      return 'skipped';
    }
    const sent = this.send(j, entry);
    j.lastSentAt = now;
    if (again) {
      j.dest.redoLeft -= sent;
      j.resent++;
    } else j.dest.through = Math.max(j.dest.through, Math.min(v, j.startVersion));
    j.redo.sent(v);
    return sent;
  }

  /** A closed port answered: pause, then send again what it may have cost. */
  private lost(j: Join, now: number): void {
    j.notBefore = now + LOSS_PAUSE_MS;
    if (!j.redo.lost(j.notBefore, j.state.version) || j.dest.redoLeft <= 0) return;
    j.rewind = true;
    j.stats.restarted++;
    this.host.log.info('warm join restarted', { channel: j.ch.name, address: j.entry.endpoint.text, form: j.entry.form, reason: 'datagrams met a closed port', sent: j.sent, redoLeft: j.dest.redoLeft });
  }

  /** Asks the out door to send one entry to the join's subscriber; returns the bytes charged (0: dropped). */
  private send(j: Join, entry: LiveEntry): number {
    const r = this.host.out.warm(j.ch, j.entry, j.group, entry.content, j.sink);
    if (r.sent) {
      j.sent++;
      j.bytes += r.bytes;
      j.stats.datagrams++;
      j.stats.bytes += r.bytes;
    } else j.dropped++;
    // Charged whether the kernel takes it or not: the pacers bound what is attempted.
    return r.bytes;
  }

  private complete(j: Join): void {
    // Every entry now live was sent, held already, or delivered by the live path (or sent as missed).
    j.dest.through = Math.max(j.dest.through, j.state.version);
    j.stats.completed++;
    this.onComplete(j.ch, j.entry);
    this.host.log.info('warm join completed', {
      channel: j.ch.name,
      address: j.entry.endpoint.text,
      form: j.entry.form,
      sent: j.sent,
      resent: j.resent,
      skipped: j.skipped,
      dropped: j.dropped,
      bytes: j.bytes,
      entries: j.total,
      resumed: j.resumed,
      ms: Date.now() - j.startedAt,
      ...(j.kind === 'join' ? {} : { kind: j.kind }),
    });
  }

  /** Ends a join from outside the pump (replaced, turned off). */
  private end(j: Join, why: string): void {
    const i = this.active.indexOf(j);
    if (i >= 0) {
      this.active.splice(i, 1);
      if (i < this.next) this.next--;
    }
    this.joins.delete(j.id);
    j.dest.joins--;
    this.ended(j, why);
  }

  private ended(j: Join, why: string): void {
    j.stats.ended++;
    this.host.log.info('warm join ended', { channel: j.ch.name, address: j.entry.endpoint.text, form: j.entry.form, reason: why, sent: j.sent, entries: j.total });
  }

  /** Stops every join. */
  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.active = [];
    this.joins.clear();
  }
}

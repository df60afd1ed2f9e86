// Warm joins (README.md, "Warm join"): every channel keeps its live state
// (live-state.ts), and a subscriber new to its channel is sent that state,
// one datagram per live key, so a node that starts (or restarts) holds the
// cluster's cache at once instead of costing a full handshake per session.
//
// Invariants:
// - A datagram sent by a warm join carries the value current when it is
//   sent, never one read earlier: the join walks the keys and reads each
//   entry at send time. An entry changed since the join started (a newer
//   version) has already reached the subscriber on the live path, which
//   sends every accepted update to every subscriber as it arrives; the join
//   skips it, so a newer live value can never be overwritten by an older one.
// - Live traffic is never queued behind a warm join: warm datagrams are sent
//   from a timer, at most `--warm-rate` per second for all joins together
//   (round robin, so many joins share the rate instead of multiplying it),
//   in slices of about a millisecond's worth; the datagram path runs between
//   slices on the event loop.
// - Warm datagrams are forwarder outputs like any other: each gets a fresh
//   trace from the repeater's LoopGuard and the forward form of
//   wire/cache.ts (plain), or is sealed under the subscriber's key (sealed),
//   and goes to that one subscriber only.
// - At most one join per subscriber: a second subscribe for the same
//   address replaces the first; a join ends when its subscriber goes away
//   (unsubscribed, expired, evicted, replaced).
// - What is known to be lost is sent again: a join starts over when its
//   subscriber answered a datagram with ICMP (a new strike: the port was
//   closed, e.g. a uWSGI node announces before its cache-udp-server is bound)
//   after a pause, and when it comes back from a suspension. What a node
//   drops silently (a full receive buffer) nobody can know: see README.md,
//   "Warm join". A join begins START_DELAY_MS after the subscription, past
//   that uWSGI start-up race.
// - Static outputs (--to) are never warmed: they are not "new".

import type { Logger } from '../base/log.js';
import { D } from '../base/stats.js';
import type { WarmConfig } from '../config/warm-config.js';
import type { LoopGuard } from '../gate/loop-guard.js';
import { type Fanout, newTally, type OutletGroup } from '../net/io.js';
import { type CacheShape, forwardForm, inspectCacheUpdate, newShape } from '../wire/cache.js';
import type { WireError } from '../wire/uwsgi.js';
import type { Channel, FrameSealer, Subscriber } from './channel.js';
import { type LiveChange, type LiveEntry, LiveState } from './live-state.js';

/** What the warm-join service needs of the repeater (structurally: the Repeater itself). */
export interface WarmHost {
  readonly channels: ReadonlyMap<string, Channel>;
  readonly loops: LoopGuard;
  readonly log: Logger;
  /** The sealer of the running config; null without keys. */
  readonly sealedGate: FrameSealer | null;
  /** No output may be larger than this. */
  readonly outLimit: number;
  readonly current: { readonly repairDeletes: boolean };
}

/** Counters of one channel, read by the metrics on scrape. */
export class WarmStats {
  started = 0;
  completed = 0;
  /** Ended before the last entry: subscriber gone, replaced, warm joins turned off. */
  ended = 0;
  /** Started over: the subscriber came back from a suspension. */
  restarted = 0;
  datagrams = 0;
  bytes = 0;
  /** Evictions and expiries of live states since dropped (turned off, then on again). */
  evicted = 0;
  expired = 0;
}

/** A warm join's progress, for /subscribers. */
export interface WarmProgress {
  readonly sent: number;
  readonly skipped: number;
  readonly dropped: number;
  /** Entries in the state when the join (re)started. */
  readonly total: number;
  readonly startedAt: string;
}

/** Tokens per second, at most `burstSeconds` of them saved up. Pure over the clock it is given (ms). */
export class Pacer {
  private tokens = 0;
  private last = 0;

  constructor(
    public rate: number,
    private readonly burstSeconds = BURST_SECONDS,
  ) {}

  /** Starts from empty at `nowMs`: a pause is not saved up as a burst. */
  reset(nowMs: number): void {
    this.tokens = 0;
    this.last = nowMs;
  }

  /** Whole tokens available at `nowMs`. */
  available(nowMs: number): number {
    const burst = Math.max(1, this.rate * this.burstSeconds);
    this.tokens = Math.min(burst, this.tokens + ((nowMs - this.last) * this.rate) / 1000);
    this.last = nowMs;
    return Math.floor(this.tokens);
  }

  take(n: number): void {
    this.tokens -= n;
  }
}

/** Tokens saved up at most: 5 ms of the rate (100 datagrams at 20,000/s), so a late timer never bursts much. */
const BURST_SECONDS = 0.005;
/** The pacing timer's period while a join can send. */
const TICK_MS = 1;
/** While every join waits (a start delay, a pause, a suspended subscriber). */
const PAUSED_TICK_MS = 50;
/** Entries walked per tick at most (skipped ones cost no token): bounds a tick's time. */
const MAX_STEPS = 4096;
/** A new join waits this long: uWSGI announces a moment before its cache-udp-server listens. */
export const START_DELAY_MS = 100;
/** After a datagram met a closed port, the join waits this long, then starts over. */
export const LOSS_PAUSE_MS = 200;
const SWEEP_MS = 1000;

interface Join {
  readonly id: string;
  readonly ch: Channel;
  readonly entry: Subscriber;
  readonly state: LiveState;
  readonly stats: WarmStats;
  readonly group: OutletGroup;
  iter: Iterator<[string, LiveEntry]>;
  startVersion: number;
  total: number;
  sent: number;
  skipped: number;
  dropped: number;
  startedAt: number;
  t0: number;
  /** Start over (the walk, the counts) once the join may send again. */
  interrupted: boolean;
  /** Why, for the log; null: the first start, after START_DELAY_MS (not counted as a restart). */
  why: string | null;
  /** Sends wait until this time (clock ms): the start delay, or the pause after a loss. */
  notBefore: number;
  /** The subscriber's strikes when last looked at: one more means an ICMP answer. */
  strikes: number;
}

type Step = 'sent' | 'skipped' | 'paused' | 'done' | 'gone';

const nowSeconds = () => Math.floor(Date.now() / 1000);

export class WarmJoins {
  private config: WarmConfig = { enabled: false, rate: 1, maxBytes: 0, save: false };
  private fanout: Fanout | null = null;
  private readonly states = new Map<string, LiveState>();
  private readonly stats = new Map<string, WarmStats>();
  private readonly joins = new Map<string, Join>();
  /** Joins in round-robin order; `next` is whose turn it is. */
  private active: Join[] = [];
  private next = 0;
  private readonly pacer = new Pacer(1);
  private timer: NodeJS.Timeout | null = null;
  /** The soonest a paused join may send again (clock ms), found by the last pump. */
  private wake = Infinity;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly shape: CacheShape = newShape();
  private readonly tally = newTally();
  private closed = false;

  constructor(
    private readonly host: WarmHost,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  get enabled(): boolean {
    return this.config.enabled;
  }

  /** Applies a config (first start and reloads), after the repeater's channels were updated. */
  configure(cfg: WarmConfig, fanout: Fanout): void {
    this.fanout = fanout;
    this.config = cfg;
    this.pacer.rate = cfg.rate;
    for (const name of this.host.channels.keys()) if (!this.stats.has(name)) this.stats.set(name, new WarmStats());
    for (const [name, state] of this.states) {
      if (cfg.enabled && this.host.channels.has(name)) {
        state.setMaxBytes(cfg.maxBytes);
        continue;
      }
      // Turned off, or the channel is gone: nothing may keep session secrets for nobody.
      for (const j of [...this.active]) if (j.state === state) this.end(j, cfg.enabled ? 'channel removed' : 'warm joins turned off');
      const stats = this.stats.get(name);
      if (stats !== undefined) {
        stats.evicted += state.evictions;
        stats.expired += state.expired;
      }
      state.clear();
      this.states.delete(name);
    }
    if (!cfg.enabled) {
      if (this.sweeper !== null) clearInterval(this.sweeper);
      this.sweeper = null;
      return;
    }
    for (const name of this.host.channels.keys()) if (!this.states.has(name)) this.states.set(name, new LiveState(cfg.maxBytes));
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(nowSeconds()), SWEEP_MS);
      this.sweeper.unref();
    }
  }

  /** The live state of a channel, when one is kept. */
  state(channel: string): LiveState | undefined {
    return this.states.get(channel);
  }

  /** Per-channel counters (kept across reloads while the channel exists). */
  statsOf(channel: string): WarmStats | undefined {
    return this.stats.get(channel);
  }

  /** Warm joins in progress in a channel. */
  activeIn(channel: string): number {
    let n = 0;
    for (const j of this.active) if (j.ch.name === channel) n++;
    return n;
  }

  /** Hot path: an update the repeater accepted and is about to forward (inspected into `s`). */
  learn(ch: Channel, buf: Buffer, s: CacheShape): void {
    const state = this.states.get(ch.name);
    if (state !== undefined) state.learn(buf, s, nowSeconds());
  }

  /**
   * The hook for updates that reach this repeater another way than through
   * its listeners (cluster mode: a peer repeater's bus, or its state sent as
   * a batch): applies a cache update (set or delete, as a node sends it; a
   * trace is ignored) to the channel's live state only. Forwarding it is the
   * caller's business: with `delivered` false (not forwarded to the
   * channel's subscribers) warm joins in progress still send it.
   */
  applyUpdate(channel: string, datagram: Buffer, delivered = true): LiveChange | WireError | 'no_state' {
    const state = this.states.get(channel);
    if (state === undefined) return 'no_state';
    return state.apply(datagram, nowSeconds(), delivered);
  }

  sweep(nowSec: number): void {
    for (const state of this.states.values()) state.sweep(nowSec);
  }

  /**
   * A subscriber is new to `ch` (a first subscribe, not a refresh), or came
   * back from a suspension by announcing: start its warm join, or start its
   * join in progress over.
   */
  subscribed(ch: Channel, e: Subscriber, why: 'new' | 'resumed'): void {
    if (!this.config.enabled || this.closed || e.isStatic || this.fanout === null) return;
    const state = this.states.get(ch.name);
    if (state === undefined) return;
    const id = `${ch.name}\0${e.form}\0${e.endpoint.text}`;
    const existing = this.joins.get(id);
    if (existing !== undefined) {
      if (existing.entry === e) {
        this.restart(existing, why === 'new' ? 'subscribed again' : 'resumed');
        return;
      }
      this.end(existing, 'replaced by a new subscription');
    }
    const stats = this.stats.get(ch.name)!;
    stats.started++;
    if (state.size === 0) {
      stats.completed++;
      return;
    }
    const now = Date.now();
    const j: Join = {
      id,
      ch,
      entry: e,
      state,
      stats,
      group: this.fanout.group([e.outlet]),
      iter: state.walk(),
      startVersion: state.version,
      total: state.size,
      sent: 0,
      skipped: 0,
      dropped: 0,
      startedAt: now,
      t0: now,
      interrupted: true,
      why: null,
      notBefore: this.clock() + START_DELAY_MS,
      strikes: e.strikes,
    };
    this.joins.set(id, j);
    if (this.active.length === 0) this.pacer.reset(this.clock());
    this.active.push(j);
    this.host.log.info('warm join started', { channel: ch.name, address: e.endpoint.text, form: e.form, reason: why, entries: state.size, bytes: state.bytes });
    this.schedule(0);
  }

  /** A join in progress for this subscriber, for /subscribers. */
  progress(ch: Channel, e: Subscriber): WarmProgress | null {
    const j = this.joins.get(`${ch.name}\0${e.form}\0${e.endpoint.text}`);
    if (j === undefined || j.entry !== e) return null;
    return { sent: j.sent, skipped: j.skipped, dropped: j.dropped, total: j.total, startedAt: new Date(j.startedAt).toISOString() };
  }

  private schedule(ms: number): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setTimeout(this.pump, ms);
  }

  /** One slice: as many datagrams as the pacer allows, round robin over the joins. */
  private readonly pump = (): void => {
    this.timer = null;
    this.wake = Infinity;
    let budget = this.pacer.available(this.clock());
    const nowSec = nowSeconds();
    let steps = 0;
    let pausedInARow = 0;
    while (budget > 0 && this.active.length > 0 && steps < MAX_STEPS && pausedInARow < this.active.length) {
      if (this.next >= this.active.length) this.next = 0;
      const j = this.active[this.next]!;
      const r = this.step(j, nowSec);
      steps++;
      if (r === 'skipped') continue;
      if (r === 'sent') {
        budget--;
        this.pacer.take(1);
        pausedInARow = 0;
        this.next++;
      } else if (r === 'paused') {
        pausedInARow++;
        this.next++;
      } else {
        this.active.splice(this.next, 1);
        this.joins.delete(j.id);
        if (r === 'done') this.complete(j);
        else this.ended(j, 'subscriber gone');
      }
    }
    if (this.active.length === 0) return;
    const allPaused = pausedInARow >= this.active.length;
    this.schedule(allPaused ? Math.max(TICK_MS, Math.min(PAUSED_TICK_MS, Math.ceil(this.wake - this.clock()))) : TICK_MS);
  };

  private step(j: Join, nowSec: number): Step {
    const e = j.entry;
    if (this.host.channels.get(j.ch.name) !== j.ch || j.ch.registry(e.form).get(e.endpoint.text) !== e) return 'gone';
    if (e.suspendedUntil !== 0) {
      j.interrupted = true;
      j.why = 'resumed after a suspension';
      return 'paused';
    }
    if (e.strikes > j.strikes) {
      // An ICMP answer: a datagram (warm or live) met a closed port and was lost.
      j.interrupted = true;
      j.why = 'datagrams met a closed port';
      j.notBefore = this.clock() + LOSS_PAUSE_MS;
    }
    j.strikes = e.strikes; // an announce resets them to 0
    if (this.clock() < j.notBefore) {
      this.wake = Math.min(this.wake, j.notBefore);
      return 'paused';
    }
    if (j.interrupted) this.restart(j, j.why);
    const n = j.iter.next();
    if (n.done === true) return 'done';
    const entry = n.value[1];
    // Newer than the join: the live path delivered it. Expired: the sweep has not come yet.
    if (entry.version > j.startVersion || (entry.expires !== 0 && entry.expires <= nowSec)) {
      j.skipped++;
      return 'skipped';
    }
    this.send(j, entry);
    return 'sent';
  }

  private send(j: Join, entry: LiveEntry): void {
    const st = j.ch.stats;
    const e = j.entry;
    const s = this.shape;
    // Validated when it was learned; checked again because a shape must describe this very buffer.
    if (inspectCacheUpdate(entry.content, s) !== undefined) {
      j.skipped++;
      return;
    }
    const trace = this.host.loops.stamp();
    let out: Buffer;
    if (e.form === 'plain') {
      const f = forwardForm(entry.content, s, this.host.current.repairDeletes, trace, this.host.outLimit);
      if (f === 'too_large') {
        st.dropped[D.too_large]++;
        j.dropped++;
        return;
      }
      out = f;
    } else {
      const frame = this.host.sealedGate?.sealDatagram(e.key, { content: entry.content, trace }) ?? null;
      if (frame === null) {
        st.dropped[D.sealed_too_large]++;
        j.dropped++;
        return;
      }
      out = frame;
    }
    const t = this.tally;
    t.sent = 0;
    t.full = 0;
    t.failed = 0;
    j.group.send(out, true, t);
    if (t.sent > 0) {
      j.sent++;
      j.stats.datagrams++;
      j.stats.bytes += out.length;
    } else j.dropped++;
    st.dropped[D.queue_full] += t.full;
    st.dropped[D.send_error] += t.failed;
  }

  /** Starts the walk (over); `why` null is the first start. */
  private restart(j: Join, why: string | null): void {
    j.iter = j.state.walk();
    j.startVersion = j.state.version;
    j.total = j.state.size;
    j.sent = 0;
    j.skipped = 0;
    j.dropped = 0;
    j.interrupted = false;
    j.why = null;
    j.notBefore = 0;
    if (why === null) return;
    j.t0 = Date.now();
    j.stats.restarted++;
    this.host.log.info('warm join restarted', { channel: j.ch.name, address: j.entry.endpoint.text, form: j.entry.form, reason: why, entries: j.total });
    this.schedule(0);
  }

  private complete(j: Join): void {
    j.stats.completed++;
    this.host.log.info('warm join completed', {
      channel: j.ch.name,
      address: j.entry.endpoint.text,
      form: j.entry.form,
      sent: j.sent,
      skipped: j.skipped,
      dropped: j.dropped,
      entries: j.total,
      ms: Date.now() - j.t0,
    });
  }

  /** Ends a join from outside the pump (replaced, turned off, closed). */
  private end(j: Join, why: string): void {
    const i = this.active.indexOf(j);
    if (i >= 0) {
      this.active.splice(i, 1);
      if (i < this.next) this.next--;
    }
    this.joins.delete(j.id);
    this.ended(j, why);
  }

  private ended(j: Join, why: string): void {
    j.stats.ended++;
    this.host.log.info('warm join ended', { channel: j.ch.name, address: j.entry.endpoint.text, form: j.entry.form, reason: why, sent: j.sent, entries: j.total });
  }

  /** Stops every join and wipes every state. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.timer = null;
    this.sweeper = null;
    this.active = [];
    this.joins.clear();
    for (const state of this.states.values()) state.clear();
    this.states.clear();
  }
}

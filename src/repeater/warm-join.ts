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
// - Cluster mode: a repeater that starts fetches the live state from a peer
//   (cluster/state-fetch.ts) before it warms anyone. Until then joins are
//   held (hold/release: a subscriber that joins meanwhile is warmed after
//   the fetch ends, whatever its outcome; what the live path set after its
//   subscription is not sent again), and a key the live path touched
//   since the fetch began (at start) is never overwritten by a fetched entry: the live
//   value (or delete) is newer than anything the peer sent. Only the
//   repeater that serves a subscriber warms it: its live path is the one
//   that reaches it, so the skip rule above holds; a join whose subscriber
//   is served elsewhere ends (checked at each step, after START_DELAY_MS,
//   by when the repeaters that heard it agree on its server).

import type { Logger } from '../base/log.js';
import { D } from '../base/stats.js';
import type { WarmConfig } from '../config/warm-config.js';
import type { LoopGuard } from '../gate/loop-guard.js';
import { type Fanout, newTally, type OutletGroup } from '../net/io.js';
import { cacheKeyText } from '../wire/cache-fields.js';
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
  /** Cluster mode: the join waits for the live state to be fetched from a peer. */
  readonly waiting?: 'cluster state';
}

/** What a fetched entry did to the live state (applyFetched). */
export type FetchedChange = LiveChange | WireError | 'no_state' | 'live_newer';

/** Keys the live path touched during a fetch, at most: past it the fetch stops (the rest would be unsafe to apply). */
export const MAX_TOUCHED = 1 << 20;

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
  /** A join held during a cluster fetch: the state's version when its subscriber came (the first start counts from it). */
  since: number | null;
}

type Step = 'sent' | 'skipped' | 'paused' | 'done' | 'gone' | 'not_served';

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
  /** Subscribers whose join waits for release() (cluster mode start); null: joins start at once. */
  private held: Map<string, { ch: Channel; e: Subscriber; why: 'new' | 'resumed'; at: number; since: number }> | null = null;
  /** During a fetch: the keys the live path touched, per channel; null: no fetch. */
  private touched: Map<string, Set<string>> | null = null;
  private touchedCount = 0;

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
    if (state === undefined) return;
    if (this.touched !== null) this.touch(ch.name, cacheKeyText(buf));
    state.learn(buf, s, nowSeconds());
  }

  /** Joins wait from now until release(): the cluster's state is being fetched. */
  hold(): void {
    this.held ??= new Map();
  }

  /** Whether joins are held (a fetch is pending or in progress). */
  get holding(): boolean {
    return this.held !== null;
  }

  /** Starts the joins held since hold(), of the subscribers still there. */
  release(): void {
    const held = this.held;
    this.held = null;
    if (held === null) return;
    for (const { ch, e, why, since } of held.values()) {
      if (this.host.channels.get(ch.name) === ch && ch.registry(e.form).get(e.endpoint.text) === e) {
        this.subscribed(ch, e, why);
        // What the live path set since the subscription reached the subscriber already.
        const j = this.joins.get(`${ch.name}\0${e.form}\0${e.endpoint.text}`);
        if (j !== undefined && j.entry === e) j.since = since;
      }
    }
  }

  /** A fetch begins: from now on the keys the live path touches are remembered, so fetched entries never overwrite them. */
  beginFetch(): void {
    this.touched = new Map();
    this.touchedCount = 0;
  }

  /** The fetch is over (any outcome): the remembered keys are forgotten. */
  endFetch(): void {
    this.touched = null;
    this.touchedCount = 0;
  }

  /** Whether the touched-keys bound was passed: the fetch must stop. */
  get fetchOverflowed(): boolean {
    return this.touchedCount > MAX_TOUCHED;
  }

  private touch(channel: string, key: string): void {
    if (this.touchedCount > MAX_TOUCHED) return;
    let keys = this.touched!.get(channel);
    if (keys === undefined) this.touched!.set(channel, (keys = new Set()));
    const before = keys.size;
    keys.add(key);
    this.touchedCount += keys.size - before;
  }

  /**
   * An entry of a peer's live state (cluster warm join): validated as a
   * datagram from the network, applied unless the live path touched its key
   * since the fetch began (at start) ('live_newer'). No join runs meanwhile (they are
   * held), so nothing needs to send it.
   */
  applyFetched(channel: string, datagram: Buffer): FetchedChange {
    const state = this.states.get(channel);
    if (state === undefined) return 'no_state';
    const bad = inspectCacheUpdate(datagram, this.shape);
    if (bad !== undefined) return bad;
    if (this.touched === null || this.touchedCount > MAX_TOUCHED || this.touched.get(channel)?.has(cacheKeyText(datagram)) === true) return 'live_newer';
    // Version 0 (not delivered): older than any join, so joins held since before it send it.
    return state.learn(datagram, this.shape, nowSeconds(), false);
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
    if (this.held !== null) {
      // Bounded: one per subscriber of the registries, and dropped with them at release().
      this.held.set(id, { ch, e, why, at: Date.now(), since: state.version });
      return;
    }
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
      since: null,
    };
    this.joins.set(id, j);
    if (this.active.length === 0) this.pacer.reset(this.clock());
    this.active.push(j);
    this.host.log.info('warm join started', { channel: ch.name, address: e.endpoint.text, form: e.form, reason: why, entries: state.size, bytes: state.bytes });
    this.schedule(0);
  }

  /** A join in progress for this subscriber, for /subscribers. */
  progress(ch: Channel, e: Subscriber): WarmProgress | null {
    const id = `${ch.name}\0${e.form}\0${e.endpoint.text}`;
    const h = this.held?.get(id);
    if (h !== undefined && h.e === e) return { sent: 0, skipped: 0, dropped: 0, total: 0, startedAt: new Date(h.at).toISOString(), waiting: 'cluster state' };
    const j = this.joins.get(id);
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
        else this.ended(j, r === 'gone' ? 'subscriber gone' : 'served by another repeater');
      }
    }
    if (this.active.length === 0) return;
    const allPaused = pausedInARow >= this.active.length;
    this.schedule(allPaused ? Math.max(TICK_MS, Math.min(PAUSED_TICK_MS, Math.ceil(this.wake - this.clock()))) : TICK_MS);
  };

  private step(j: Join, nowSec: number): Step {
    const e = j.entry;
    if (this.host.channels.get(j.ch.name) !== j.ch || j.ch.registry(e.form).get(e.endpoint.text) !== e) return 'gone';
    // Cluster mode: the repeater that serves a subscriber warms it; the others leave it (their live path does not reach it).
    if (!e.owned) return 'not_served';
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
      const frame = this.host.sealedGate?.sealDatagram(e.key, { content: entry.content, trace }, e.endpoint.text) ?? null;
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
    j.startVersion = why === null && j.since !== null ? j.since : j.state.version;
    j.since = null;
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
    this.held = null;
    this.touched = null;
    for (const state of this.states.values()) state.clear();
    this.states.clear();
  }
}

// Warm joins (README.md, "Warm join"): every channel keeps its live state
// (path/live-state.ts, kept and learnt by the datagram path), and a
// subscriber new to its channel is sent that state, one datagram per live
// key, so a node that starts (or restarts) holds the cluster's cache at once
// instead of costing a full handshake per session. This file is the
// scheduler: it decides who is warmed and from where; warm-runner.ts paces
// the joins and asks the path's out door to deliver, and warm-budget.ts
// holds the pacers and the accounting per destination.
//
// Invariants:
// - Warm joins are not an amplifier (SECURITY.md, "No circulation, and the
//   amplification bound"). A plain subscriber is warmed only when its
//   subscription came from the address it names (subscriptions.ts decides;
//   a listener's `warm-any-source` waives it). Its join is accounted to its
//   destination, the channel and IP address (every port alike): within
//   `--warm-cooldown` of the first join toward it, a join goes on from the
//   destination's mark instead of the first entry, so unsubscribing,
//   subscribing again, more ports and suspensions buy no second full state.
// - A sealed subscriber (authenticated: it cannot be spoofed or replayed,
//   and its agent holds the channel key) gets a destination of its own: a
//   full join each time it is new, or is back from a suspension, bounded by
//   the shared rates only. So does everyone with `--warm-cooldown 0`.
// - Static outputs (--to) are never warmed: they are not "new".
// - Cluster mode: a repeater that starts fetches the live state from a peer
//   (cluster/state-fetch.ts) before it warms anyone. Until then joins are
//   held (hold/release: a subscriber that joins meanwhile is warmed after
//   the fetch ends, whatever its outcome; what the live path set after its
//   subscription is not sent again), and a key the live path touched
//   since the fetch began (at start) is never overwritten by a fetched entry: the live
//   value (or delete) is newer than anything the peer sent. Only the
//   repeater that serves a subscriber warms it: its live path is the one
//   that reaches it, so the skip rule of warm-runner.ts holds; a join whose
//   subscriber is served elsewhere ends (checked at each step, after
//   START_DELAY_MS, by when the repeaters that heard it agree on its server).
// - Takeover (cluster mode): a repeater that starts serving a subscriber
//   another repeater served (that one died, left or stopped hearing it)
//   sends it what it may have missed (takeover()): the entries changed since
//   that repeater was last heard (a repair: a join with a floor, on a
//   destination of its own, so a cooldown never blocks it; it is bounded by
//   what changed, which the live path would have sent it anyway), or, when
//   the subscriber's own join never completed anywhere as far as this
//   repeater heard, a whole join, accounted to its destination like any
//   other (warm-repair.ts keeps what is owed).

import type { Logger } from '../base/log.js';
import type { WarmConfig } from '../config/warm-config.js';
import type { Fanout } from '../net/io.js';
import type { Channel, Subscriber } from '../path/channel.js';
import type { LiveChange, LiveState } from '../path/live-state.js';
import type { LiveWatch } from '../path/ports.js';
import { cacheKeyText } from '../wire/cache-fields.js';
import { type CacheShape, inspectCacheUpdate, newShape } from '../wire/cache.js';
import type { WireError } from '../wire/uwsgi.js';
import { Destinations, privateDestination } from './warm-budget.js';
import { WarmRepairs } from './warm-repair.js';
import { joinId, WarmRunner } from './warm-runner.js';
import { type WarmHost, type WarmProgress, WarmStats } from './warm-stats.js';

export { type WarmHost, type WarmProgress, WarmStats } from './warm-stats.js';

/** What a fetched entry did to the live state (applyFetched). */
export type FetchedChange = LiveChange | WireError | 'no_state' | 'live_newer';

/** Keys the live path touched during a fetch, at most: past it the fetch stops (the rest would be unsafe to apply). */
export const MAX_TOUCHED = 1 << 20;

const SWEEP_MS = 1000;

const nowSeconds = () => Math.floor(Date.now() / 1000);

export class WarmJoins implements LiveWatch {
  private config: WarmConfig = { enabled: false, rate: 1, byteRate: 1, cooldownMs: 0, maxBytes: 0, save: false };
  private fanout: Fanout | null = null;
  /** The live states joins were started on, by channel: one the path no longer keeps ends its joins. */
  private readonly states = new Map<string, LiveState>();
  private readonly stats = new Map<string, WarmStats>();
  private readonly runner: WarmRunner;
  /** Plain destinations within their cooldown (warm-budget.ts). */
  readonly destinations = new Destinations(0);
  private sweeper: NodeJS.Timeout | null = null;
  private readonly shape: CacheShape = newShape();
  private closed = false;
  /** Subscribers whose join waits for release() (cluster mode start); null: joins start at once. */
  private held: Map<string, { ch: Channel; e: Subscriber; why: 'new' | 'resumed' | 'takeover'; at: number; since: number }> | null = null;
  /** During a fetch: the keys the live path touched, per channel; null: no fetch. */
  private touchedKeys: Map<string, Set<string>> | null = null;
  private touchedCount = 0;
  /** What takeovers owe (cluster mode). */
  private readonly repairs = new WarmRepairs();
  /** Cluster mode: told when a join completes here, so the others know it is not owed any more. */
  onCompleted: ((ch: Channel, e: Subscriber) => void) | null = null;

  constructor(
    private readonly host: WarmHost,
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.runner = new WarmRunner(host, clock, (ch, e) => {
      this.repairs.completed(e);
      this.onCompleted?.(ch, e);
    });
  }

  get enabled(): boolean {
    return this.config.enabled;
  }

  private get log(): Logger {
    return this.host.log;
  }

  /** Applies a config (first start and reloads), after the path took the new one (it keeps the live states). */
  configure(cfg: WarmConfig, fanout: Fanout): void {
    this.fanout = fanout;
    this.config = cfg;
    this.runner.pacer.rate = cfg.rate;
    this.runner.bytePacer.rate = cfg.byteRate;
    this.destinations.cooldownMs = cfg.cooldownMs;
    for (const name of this.host.channels.keys()) if (!this.stats.has(name)) this.stats.set(name, new WarmStats());
    for (const [name, state] of this.states) {
      if (this.host.live.get(name) === state) continue;
      // Turned off, or the channel is gone (the path wiped its state): its joins end.
      this.runner.endAll(state, cfg.enabled ? 'channel removed' : 'warm joins turned off');
      this.destinations.dropChannel(name);
      const stats = this.stats.get(name);
      if (stats !== undefined) {
        stats.evicted += state.evictions;
        stats.expired += state.expired;
      }
      this.states.delete(name);
    }
    for (const [name, state] of this.host.live.entries()) this.states.set(name, state);
    if (!cfg.enabled) {
      if (this.sweeper !== null) clearInterval(this.sweeper);
      this.sweeper = null;
      return;
    }
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(nowSeconds()), SWEEP_MS);
      this.sweeper.unref();
    }
  }

  /** The live state of a channel, when one is kept. */
  state(channel: string): LiveState | undefined {
    return this.host.live.get(channel);
  }

  /** Per-channel counters (kept across reloads while the channel exists). */
  statsOf(channel: string): WarmStats | undefined {
    return this.stats.get(channel);
  }

  /** Warm joins in progress in a channel. */
  activeIn(channel: string): number {
    return this.runner.activeIn(channel);
  }

  /** LiveWatch: while a fetch runs, every key the live path touches is remembered. */
  get touched(): ((channel: string, datagram: Buffer) => void) | null {
    return this.touchedKeys === null ? null : this.touchKey;
  }

  private readonly touchKey = (channel: string, datagram: Buffer): void => this.touch(channel, cacheKeyText(datagram));

  /** LiveWatch: the live path changed `state` at `nowMs` (once per receive batch). */
  changed(state: LiveState, nowMs: number): void {
    this.repairs.note(state, nowMs);
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
        // What the live path set since the subscription reached the subscriber already.
        this.subscribed(ch, e, why, since);
      }
    }
  }

  /** A fetch begins: from now on the keys the live path touches are remembered, so fetched entries never overwrite them. */
  beginFetch(): void {
    this.touchedKeys = new Map();
    this.touchedCount = 0;
  }

  /** The fetch is over (any outcome): the remembered keys are forgotten. */
  endFetch(): void {
    this.touchedKeys = null;
    this.touchedCount = 0;
  }

  /** Whether the touched-keys bound was passed: the fetch must stop. */
  get fetchOverflowed(): boolean {
    return this.touchedCount > MAX_TOUCHED;
  }

  private touch(channel: string, key: string): void {
    if (this.touchedCount > MAX_TOUCHED) return;
    let keys = this.touchedKeys!.get(channel);
    if (keys === undefined) this.touchedKeys!.set(channel, (keys = new Set()));
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
    const state = this.host.live.get(channel);
    if (state === undefined) return 'no_state';
    const bad = inspectCacheUpdate(datagram, this.shape);
    if (bad !== undefined) return bad;
    if (this.touchedKeys === null || this.touchedCount > MAX_TOUCHED || this.touchedKeys.get(channel)?.has(cacheKeyText(datagram)) === true) return 'live_newer';
    // Not delivered: the joins held since before it send it, whatever its version.
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
    const state = this.host.live.get(channel);
    if (state === undefined) return 'no_state';
    return state.apply(datagram, nowSeconds(), delivered);
  }

  sweep(nowSec: number): void {
    for (const [, state] of this.host.live.entries()) state.sweep(nowSec);
    this.destinations.prune(this.clock());
  }

  /**
   * A subscriber is new to `ch` (a first subscribe, not a refresh), or came
   * back from a suspension by announcing, and may be warmed
   * (subscriptions.ts checked its source): start its join, from its
   * destination's mark. A join in progress for it goes on.
   * `since`: held during a cluster fetch, the state's version when it came.
   */
  subscribed(ch: Channel, e: Subscriber, why: 'new' | 'resumed' | 'takeover', since: number | null = null): void {
    if (!this.config.enabled || this.closed || e.isStatic || this.fanout === null) return;
    const state = this.host.live.get(ch.name);
    if (state === undefined) return;
    if (this.held !== null) {
      // Bounded: one per subscriber of the registries, and dropped with them at release().
      this.held.set(joinId(ch, e), { ch, e, why, at: Date.now(), since: state.version });
      return;
    }
    // Its join goes on where it was: a suspension pauses it, and it sends what was lost meanwhile.
    if (this.runner.has(ch, e)) return;
    const stats = this.stats.get(ch.name)!;
    if (state.size === 0) {
      stats.started++;
      stats.completed++;
      this.repairs.completed(e);
      return;
    }
    const now = this.clock();
    const shared = e.form === 'plain' && this.config.cooldownMs > 0;
    const opened = shared ? this.destinations.open(ch.name, e.endpoint.host, now) : { dest: privateDestination(now), resumed: false };
    if (opened === null) {
      this.refuse(ch, e, 'too many destinations within their cooldown');
      return;
    }
    this.repairs.owe(e);
    if (why === 'takeover') stats.takeovers++;
    this.runner.start({ ch, entry: e, state, stats, dest: opened.dest, resumed: opened.resumed, why, since, kind: why === 'takeover' ? 'takeover' : 'join' }, this.fanout);
  }

  /**
   * Cluster mode: this repeater serves `e` from now on, and the repeater
   * that served it may have sent it nothing for the last `ageMs`. A join it
   * is owed (it started here, and no repeater said it completed) is sent
   * whole; otherwise the entries changed since then (a repair).
   */
  takeover(ch: Channel, e: Subscriber, ageMs: number): void {
    if (!this.config.enabled || this.closed || this.fanout === null) return;
    const state = this.host.live.get(ch.name);
    if (state === undefined) return;
    // Still fetching the state at start: an owed join waits for it like a new one; the state cannot repair yet.
    if (this.held !== null) {
      if (this.repairs.owes(e)) this.subscribed(ch, e, 'takeover');
      return;
    }
    const floor = this.repairs.floor(state, Date.now() - ageMs);
    // A join in progress (it began a moment ago, while another repeater served it): what it missed goes with it.
    if (this.runner.missedSince(ch, e, floor)) return;
    if (this.repairs.owes(e) && !e.isStatic) {
      this.subscribed(ch, e, 'takeover');
      return;
    }
    if (floor >= state.version) return;
    const stats = this.stats.get(ch.name)!;
    stats.repairs++;
    this.runner.start({ ch, entry: e, state, stats, dest: privateDestination(this.clock()), resumed: false, why: 'repair', since: null, floor, kind: 'repair' }, this.fanout);
  }

  /** Cluster mode: another repeater's join toward `e` completed; it is owed none. */
  peerCompleted(e: Subscriber): void {
    this.repairs.paid(e);
  }

  /** Whether a join toward `e` completed here (or it needed none): told to the other repeaters. */
  completed(e: Subscriber): boolean {
    return this.repairs.done(e);
  }

  /** A subscriber new to its channel that gets no warm join (counted, logged). */
  refuse(ch: Channel, e: Subscriber, why: string): void {
    if (!this.config.enabled || e.isStatic) return;
    const stats = this.stats.get(ch.name);
    if (stats !== undefined) stats.refused++;
    this.log.info('warm join not started', { channel: ch.name, address: e.endpoint.text, form: e.form, reason: why, source: e.source });
  }

  /** A join in progress for this subscriber, for /subscribers. */
  progress(ch: Channel, e: Subscriber): WarmProgress | null {
    const h = this.held?.get(joinId(ch, e));
    if (h !== undefined && h.e === e) return { sent: 0, skipped: 0, dropped: 0, total: 0, startedAt: new Date(h.at).toISOString(), waiting: 'cluster state' };
    return this.runner.progress(ch, e);
  }

  /** Stops every join and wipes every state. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.runner.close();
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
    this.held = null;
    this.touchedKeys = null;
    this.destinations.clear();
    // The states are the path's: it wipes them when it closes.
    this.states.clear();
  }
}

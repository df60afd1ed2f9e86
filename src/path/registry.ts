// The subscribers of one channel in one form (plain or sealed): who, since
// when, until when. Pure bookkeeping over a clock the caller passes in; the
// outlet of each entry is opened and closed through the factory so tests can
// run it without sockets. Each form has its own registry, so its own
// capacity: nothing plain can crowd out a sealed subscriber.

import type { Endpoint } from '../wire/address.js';

export type Form = 'plain' | 'sealed';

export interface Closable {
  close(): void;
}

export interface Entry<O extends Closable> {
  readonly endpoint: Endpoint;
  readonly form: Form;
  readonly isStatic: boolean;
  readonly firstSeen: number;
  key: string;
  lastSeen: number;
  /** ms timestamp after which the entry expires; Infinity for static ones. */
  deadline: number;
  /** Address that sent the last announce (null for static entries). */
  source: string | null;
  /** Sealed subscribers: the agent's origin id, so its own frames are not echoed back. */
  origin: bigint | null;
  /** Unreachable errors (ICMP) since the last announce or resume. */
  strikes: number;
  /** While > 0: suspended (no sends) until this ms timestamp, or the next announce. */
  suspendedUntil: number;
  /** Cluster mode: whether this repeater serves it (another that heard it may); always true standalone. */
  owned: boolean;
  readonly outlet: O;
}

/** What happened to an entry, for observers (cluster mode tells the other repeaters). */
export type EntryChange = 'add' | 'refresh' | 'remove';

export interface Announce {
  readonly endpoint: Endpoint;
  readonly key: string;
  readonly source: string;
  readonly origin?: bigint | null;
}

export type UpsertResult<O extends Closable> =
  | { readonly event: 'subscribe' | 'refresh'; readonly entry: Entry<O> }
  | { readonly event: 'full' };

export class Registry<O extends Closable> {
  private readonly entries = new Map<string, Entry<O>>();
  private dynamicCount = 0;
  /** Source addresses of dynamic entries, with how many entries each announced. */
  private readonly sourceCounts = new Map<string, number>();
  /** Bumped when an entry is added or removed. */
  membership = 0;
  /** Bumped when an entry is refreshed. */
  refreshes = 0;

  /** Told of every entry added, refreshed or removed (set by the channel's owner). */
  observer: ((e: Entry<O>, change: EntryChange) => void) | null = null;

  constructor(
    readonly form: Form,
    private readonly open: (endpoint: Endpoint, isStatic: boolean) => O,
    private readonly onChange: () => void,
    public maxDynamic: number,
    public toleranceMs: number,
  ) {}

  /** Marks the entries changed in a way senders must see (ownership moved). */
  touch(): void {
    this.onChange();
  }

  get size(): number {
    return this.entries.size;
  }

  get dynamicSize(): number {
    return this.dynamicCount;
  }

  get(text: string): Entry<O> | undefined {
    return this.entries.get(text);
  }

  values(): IterableIterator<Entry<O>> {
    return this.entries.values();
  }

  /** True when `source` announced a live dynamic entry. */
  hasSource(source: string): boolean {
    return this.sourceCounts.has(source);
  }

  private countSource(source: string | null, delta: number): void {
    if (source === null) return;
    const n = (this.sourceCounts.get(source) ?? 0) + delta;
    if (n <= 0) this.sourceCounts.delete(source);
    else this.sourceCounts.set(source, n);
  }

  /** Adds or refreshes a subscriber announced over the network. */
  upsert(a: Announce, now: number): UpsertResult<O> {
    const existing = this.entries.get(a.endpoint.text);
    if (existing !== undefined) {
      existing.lastSeen = now;
      this.refreshes++;
      // A static entry stays as the operator configured it.
      if (existing.isStatic) return { event: 'refresh', entry: existing };
      this.countSource(existing.source, -1);
      existing.source = a.source;
      this.countSource(a.source, 1);
      existing.deadline = now + this.toleranceMs;
      existing.key = a.key;
      if (a.origin !== undefined) existing.origin = a.origin;
      // An announce proves the node is back: resume a suspended entry.
      existing.strikes = 0;
      if (existing.suspendedUntil !== 0) {
        existing.suspendedUntil = 0;
        this.onChange();
      }
      this.observer?.(existing, 'refresh');
      return { event: 'refresh', entry: existing };
    }
    if (this.dynamicCount >= this.maxDynamic) return { event: 'full' };
    return { event: 'subscribe', entry: this.insert(a.endpoint, a.key, false, now, now + this.toleranceMs, a.source, a.origin ?? null) };
  }

  /**
   * Restores a vetted entry from saved state, keeping its original deadline
   * (the caller checked it lies within one tolerance from now). Returns null
   * when the address is taken or the registry is full.
   */
  restore(a: Announce, firstSeen: number, lastSeen: number, deadline: number): Entry<O> | null {
    if (this.entries.has(a.endpoint.text) || this.dynamicCount >= this.maxDynamic) return null;
    const e = this.insert(a.endpoint, a.key, false, firstSeen, deadline, a.source, a.origin ?? null);
    e.lastSeen = lastSeen;
    return e;
  }

  /** Adds a static subscriber (never expires, not counted against the cap). */
  addStatic(endpoint: Endpoint, now: number, key = ''): Entry<O> {
    const existing = this.entries.get(endpoint.text);
    if (existing !== undefined) {
      if (existing.isStatic) {
        existing.key = key;
        return existing;
      }
      this.remove(endpoint.text);
    }
    return this.insert(endpoint, key, true, now, Infinity, null, null);
  }

  private insert(endpoint: Endpoint, key: string, isStatic: boolean, firstSeen: number, deadline: number, source: string | null, origin: bigint | null): Entry<O> {
    const entry: Entry<O> = {
      endpoint,
      form: this.form,
      isStatic,
      firstSeen,
      key,
      lastSeen: firstSeen,
      deadline,
      source,
      origin,
      strikes: 0,
      suspendedUntil: 0,
      owned: true,
      outlet: this.open(endpoint, isStatic),
    };
    this.entries.set(endpoint.text, entry);
    if (!isStatic) {
      this.dynamicCount++;
      this.countSource(source, 1);
    }
    this.membership++;
    this.onChange();
    this.observer?.(entry, 'add');
    return entry;
  }

  remove(text: string): Entry<O> | undefined {
    const e = this.entries.get(text);
    if (e === undefined) return undefined;
    this.entries.delete(text);
    if (!e.isStatic) {
      this.dynamicCount--;
      this.countSource(e.source, -1);
    }
    this.membership++;
    e.outlet.close();
    this.onChange();
    this.observer?.(e, 'remove');
    return e;
  }

  /** Removes and returns the entries whose deadline has passed. */
  sweep(now: number): Entry<O>[] {
    const gone: Entry<O>[] = [];
    for (const e of this.entries.values()) if (e.deadline <= now) gone.push(e);
    for (const e of gone) this.remove(e.endpoint.text);
    return gone;
  }

  /** Suspends an entry (no sends) until `until`, or its next announce. */
  suspend(e: Entry<O>, until: number): void {
    e.suspendedUntil = until;
    this.onChange();
  }

  /** Resumes suspended entries whose time is up; returns them. */
  resumeDue(now: number): Entry<O>[] {
    const due: Entry<O>[] = [];
    for (const e of this.entries.values()) {
      if (e.suspendedUntil !== 0 && e.suspendedUntil <= now) {
        e.suspendedUntil = 0;
        e.strikes = 0;
        due.push(e);
      }
    }
    if (due.length > 0) this.onChange();
    return due;
  }

  /** Removes every entry matching `pred`, returning them. */
  removeWhere(pred: (e: Entry<O>) => boolean): Entry<O>[] {
    const gone = [...this.entries.values()].filter(pred);
    for (const e of gone) this.remove(e.endpoint.text);
    return gone;
  }

  clear(): void {
    this.removeWhere(() => true);
  }
}
